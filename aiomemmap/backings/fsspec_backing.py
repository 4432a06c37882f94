"""A backing on one object of any fsspec filesystem (S3, GCS, HTTP, memory...).

The only backing module that imports fsspec; :func:`~aiomemmap.open_backing`
loads it only for a URL that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sys
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import fsspec
import fsspec.asyn

from aiomemmap._core.errors import ClosedError, StaleVersionError, WrongLoopError
from aiomemmap._core.pages import is_int
from aiomemmap.backings.base import (
    byte_view,
    check_offset,
    check_size,
    check_timeout,
    exception_chain,
    http_status,
    within,
)

_T = TypeVar("_T")

__all__ = ["FsspecBacking"]


# Keys of ``fs.info()`` that identify one version of an object, best first.
_ETAG_KEYS: Final[tuple[str, ...]] = ("ETag", "etag", "e_tag", "md5Hash", "Content-MD5")
# Keys holding a modification or creation time, best first.
_MTIME_KEYS: Final[tuple[str, ...]] = (
    "mtime",
    "LastModified",
    "last_modified",
    "Last-Modified",
    "updated",
    "created",
)
# Protocols whose sync filesystems FsspecBacking writes by default.
_WRITABLE_PROTOCOLS: Final[frozenset[str]] = frozenset({"memory", "file", "local"})


def _protocols(fs: object) -> tuple[str, ...]:
    proto = getattr(fs, "protocol", ())
    return (proto,) if isinstance(proto, str) else tuple(proto)


# HTTP statuses that say "the object is not there" and "you may not read it".
_NOT_FOUND_STATUSES: Final[frozenset[int]] = frozenset({404, 410})
_FORBIDDEN_STATUSES: Final[frozenset[int]] = frozenset({401, 403})


def _status_in_chain(exc: BaseException) -> int | None:
    """Return the first HTTP status ``exc`` or one of its causes reports."""
    for link in exception_chain(exc):
        status = http_status(link)
        if status is not None:
            return status
    return None


def _says_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` itself says the object is missing.

    An answer with an HTTP status says so only with 404 or 410; an error
    without one only if it is a ``FileNotFoundError``.
    """
    status = _status_in_chain(exc)
    if status is not None:
        return status in _NOT_FOUND_STATUSES
    return isinstance(exc, FileNotFoundError)


def _as_builtin_error(exc: Exception, path: str) -> Exception:
    """Return the builtin error a filesystem's error stands for.

    * fsspec's HTTP ``_info`` raises ``FileNotFoundError`` from *any* error
      of its HEAD-then-GET probe, a 503, a 403 or a refused connection
      included. Reporting those as "not found" would make an outage
      permanent and hide the cause, so a ``FileNotFoundError`` whose cause
      does not itself say "not found" is replaced by that cause (then
      translated as below).
    * An error that carries HTTP 404 or 410 and is not a
      ``FileNotFoundError`` becomes one (``ENOENT``); one with 401 or 403
      that is not a ``PermissionError`` becomes one (``EACCES``): fsspec's
      HTTP reads raise aiohttp's ``ClientResponseError`` for those. Both
      are chained to the original.

    Anything else is returned as it is.
    """
    cause = exc.__cause__
    if (
        isinstance(exc, FileNotFoundError)
        and isinstance(cause, Exception)
        and not _says_not_found(cause)
    ):
        exc = cause
    status = _status_in_chain(exc)
    new: Exception
    if status in _NOT_FOUND_STATUSES and not isinstance(exc, FileNotFoundError):
        new = FileNotFoundError(errno.ENOENT, f"HTTP {status} for {path!r}", path)
    elif status in _FORBIDDEN_STATUSES and not isinstance(exc, PermissionError):
        new = PermissionError(errno.EACCES, f"HTTP {status} for {path!r}", path)
    else:
        return exc
    new.__cause__ = exc
    return new


def _is_precondition_failed(exc: BaseException) -> bool:
    """Return whether ``exc`` says a condition of the request did not hold."""
    for link in exception_chain(exc):
        if http_status(link) == 412:
            return True
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            error = response.get("Error")
            if isinstance(error, dict) and error.get("Code") == "PreconditionFailed":
                return True
    return False


def _class_in(fs: object, module: str, name: str) -> bool:
    """Whether ``fs`` is an instance of ``module.name``, if that is loaded."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(fs, cls)


@typing.final
class _Pin:
    """One version of the object, as ``info()`` describes it.

    Attributes:
        token: The version string (as :meth:`FsspecBacking.version` returns
            it, before the local write count), or ``None``.
        size: The object's size, or ``None``.
        etag: The ETag, if ``info()`` has one.
        version_id: The S3 ``VersionId``, if ``info()`` has one.
    """

    __slots__ = ("etag", "size", "token", "version_id")

    def __init__(self, info: dict[str, object]) -> None:
        size = info.get("size")
        self.size = int(size) if is_int(size) and isinstance(size, int) else None
        self.etag: str | None = None
        for key in _ETAG_KEYS:
            value = info.get(key)
            if value not in (None, ""):
                self.etag = str(value)
                break
        token = None if self.etag is None else f"etag:{self.etag}"
        if token is None:
            for key in _MTIME_KEYS:
                value = info.get(key)
                if value not in (None, ""):
                    token = f"mtime:{value}:size:{size}"
                    break
        if token is None and self.size is not None:
            token = f"size:{self.size}"
        self.token = token
        version_id = info.get("VersionId")
        self.version_id = version_id if isinstance(version_id, str) else None

    def differs(self, other: _Pin) -> bool:
        return self.token != other.token or self.size != other.size


def _is_range_not_satisfiable(exc: BaseException) -> bool:
    """Return whether ``exc`` says a ranged read started past the end."""
    for link in exception_chain(exc):
        if http_status(link) == 416:
            return True
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            error = response.get("Error")
            if isinstance(error, dict) and error.get("Code") == "InvalidRange":
                return True
    return False


@typing.final
class FsspecBacking:
    """A backing on one object of any fsspec filesystem.

    How calls run depends on the filesystem:

    * An async filesystem created with ``asynchronous=True``: its coroutine
      methods (``_cat_file``, ``_info``, ``_pipe_file``) are awaited directly
      on the caller's running loop. Such a filesystem binds its client
      session (aiohttp, aiobotocore) to the loop it first runs on, so the
      backing must be used from one loop only: it remembers the loop of its
      first call and raises :class:`~aiomemmap.WrongLoopError` (a
      ``RuntimeError``) if called from another one. Do
      not share such a filesystem between loops either; fsspec caches
      filesystem instances by their arguments and thread, not by loop, so
      create it with ``skip_instance_cache=True``
      (:func:`~aiomemmap.open_backing` does).
    * An async filesystem in its default, non-asynchronous mode, and every
      sync filesystem (memory, local, ...): its blocking methods run in a
      worker thread (``asyncio.to_thread``); an async one then hops to
      fsspec's own IO loop thread as it always does. The event loop is never
      blocked.

    Sizes are never cached: :meth:`size` and :meth:`version` ask the storage
    each time (after dropping fsspec's listing cache for the path), so a
    size can never be staler than the version. Callers that need speed
    (``CachedFile``) keep the size themselves and revalidate via
    :meth:`version`.

    Reads ask for exactly ``[offset, offset + len(buf))``. A read starting
    past the end yields 0 whether the storage answers with empty bytes or
    with "range not satisfiable" (HTTP 416, S3 ``InvalidRange``). A storage
    that returns more bytes than asked (a server ignoring ``Range``) is an
    error, never silently accepted.

    Writes: fsspec cannot write byte ranges in place, so :meth:`write_from`
    and :meth:`truncate` rewrite the whole object (read it, change it,
    ``pipe_file`` it back) under a lock. That is fine for small objects
    only. By default (``readonly=None``) only sync memory and local
    filesystems are writable; pass ``readonly=False`` to allow the rewrite
    elsewhere (e.g. S3).

    Versions: an ETag if ``info()`` has one, else a modification or creation
    time (with the size), else the size alone, else ``None``. Writes made
    through this backing also add a local write count, so they change the
    version even when the storage's clock is coarse.

    Reads are tied to the version pinned by the latest :meth:`version` (or,
    before any, by the first :meth:`size` or :meth:`read_into`), as well as
    the store allows:

    * s3fs with ``version_aware=True`` on a versioned bucket: every read
      asks for the pinned ``VersionId``, so it returns that version's bytes
      even after the object was overwritten (until the version is deleted).
    * s3fs otherwise: every read is a ``GetObject`` with ``IfMatch`` of the
      pinned ETag; a ``412 PreconditionFailed``, or an answer whose ETag or
      ``Content-Range`` total is not the pinned one, is another version.
    * fsspec's HTTP filesystem with a strong ETag: every read carries
      ``If-Match``, and a 412 is another version. A server that ignores
      ``If-Match`` goes unchecked.
    * Any other filesystem (memory, local, gcsfs, ...): after each read,
      ``info()`` is asked again (one more round trip per read) and a
      version or size other than the pinned one is another version. The
      check is as good as the store's ``info()``: a store that reports
      only a size misses same-size changes; one that reports nothing
      versioned checks nothing.

    Another version raises
    :class:`~aiomemmap._core.errors.StaleVersionError`, as does a "range
    not satisfiable" for a read that starts before the pinned end (the
    object shrank); no byte of it reaches ``buf``.

    Timeouts: each call to the filesystem (``info``, one ranged read, one
    whole-object read or upload of a rewrite) is bounded by ``timeout``
    seconds, 60 by default, and raises ``TimeoutError`` (``ETIMEDOUT``,
    transient) past it. A call that runs in a worker thread cannot be
    interrupted: it is abandoned and finishes in the background.

    Attributes:
        readonly: Whether writes raise ``PermissionError``.
        path: The object's path within ``fs``.
        block_size_hint: The preferred request size in bytes, or ``None``;
            a hint for readahead, not used by the backing itself.

    Concurrency:
        task-safe; writes are serialised by an internal lock.
    """

    def __init__(
        self,
        fs: object,
        path: str,
        *,
        readonly: bool | None = None,
        block_size_hint: int | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        """Wrap ``path`` on ``fs``. Does no I/O.

        Args:
            fs: An ``fsspec.AbstractFileSystem`` instance. The caller keeps
                ownership: :meth:`aclose` does not close it.
            path: The object's path as ``fs`` understands it.
            readonly: Force read-only (``True``) or writable (``False``);
                ``None`` picks writable for sync memory/local filesystems.
            block_size_hint: Preferred request size in bytes.
            timeout: Seconds one call to the filesystem may take; ``None``
                waits as long as it takes.

        Raises:
            TypeError: ``fs`` is not an fsspec filesystem or ``path`` not a str.
            ValueError: ``block_size_hint`` is not positive, or ``timeout``
                not ``None`` or a number ``> 0``.
        """
        if not isinstance(fs, fsspec.AbstractFileSystem):
            raise TypeError(f"fs must be an fsspec filesystem, got {fs!r}")
        given_path: object = path
        if not isinstance(given_path, str) or not given_path:
            raise TypeError(f"path must be a non-empty str, got {path!r}")
        if block_size_hint is not None and (
            not is_int(block_size_hint) or block_size_hint <= 0
        ):
            raise ValueError(
                f"block_size_hint must be a positive int, got {block_size_hint!r}"
            )
        self._fs: Any = fs
        self.path = path
        self.block_size_hint = block_size_hint
        self._native = bool(getattr(fs, "async_impl", False)) and bool(
            getattr(fs, "asynchronous", False)
        )
        if readonly is None:
            readonly = self._native or not (set(_protocols(fs)) & _WRITABLE_PROTOCOLS)
        self.readonly = bool(readonly)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_lock: asyncio.Lock | None = None
        self._writes = 0
        self._closed = False
        self._owns_fs = False
        self._timeout = check_timeout(timeout)
        self._pin: _Pin | None = None
        self._s3 = _class_in(fs, "s3fs", "S3FileSystem")
        self._http = _class_in(fs, "fsspec.implementations.http", "HTTPFileSystem")

    def __repr__(self) -> str:
        return (
            f"FsspecBacking({'+'.join(_protocols(self._fs))}:{self.path!r}, "
            f"readonly={self.readonly}, closed={self._closed})"
        )

    @property
    def fs(self) -> object:
        """The fsspec filesystem."""
        return self._fs

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._native:
            loop = asyncio.get_running_loop()
            if self._loop is None:
                self._loop = loop
            elif self._loop is not loop:
                raise self._wrong_loop(loop)

    def _wrong_loop(self, loop: asyncio.AbstractEventLoop) -> WrongLoopError:
        return WrongLoopError.between(
            repr(self),
            self._loop,
            loop,
            "Its asynchronous fsspec filesystem keeps a client session on the "
            "loop it first ran on. Open a backing on each loop that reads "
            "(open_backing() inside the asyncio.run() that uses it), or read "
            "through an EngineThread (aiomemmap.open), whose loop outlives "
            "the callers'.",
        )

    async def _call(
        self, what: str, native: Callable[[], Awaitable[_T]], sync: Callable[[], _T]
    ) -> _T:
        """Run one filesystem call the way it must run, within the time limit.

        Raises:
            Exception: What the filesystem raised, as the builtin error it
                stands for (see :func:`_as_builtin_error`).
        """
        try:
            if self._native:
                return await within(self._timeout, native(), self, what)
            return await within(self._timeout, asyncio.to_thread(sync), self, what)
        except Exception as exc:
            translated = _as_builtin_error(exc, self.path)
            if translated is exc:
                raise
            raise translated from translated.__cause__

    async def _info(self) -> dict[str, object]:
        self._check_open()
        fs = self._fs
        fs.invalidate_cache(self.path)
        info = await self._call(
            "info()", lambda: fs._info(self.path), lambda: fs.info(self.path)
        )
        if not isinstance(info, dict):
            raise OSError(errno.EIO, f"{self!r}: info() returned {info!r}")
        if info.get("type") == "directory":
            raise IsADirectoryError(errno.EISDIR, f"is a directory: {self.path!r}")
        return info

    async def _cat(self, start: int | None, end: int | None, **kwargs: object) -> bytes:
        fs = self._fs
        data = await self._call(
            f"a read of [{start}, {end})",
            lambda: fs._cat_file(self.path, start=start, end=end, **kwargs),
            lambda: fs.cat_file(self.path, start=start, end=end, **kwargs),
        )
        if not isinstance(data, bytes | bytearray):
            raise OSError(errno.EIO, f"{self!r}: cat_file returned {type(data)!r}")
        return bytes(data)

    async def _pipe(self, data: bytes) -> None:
        fs = self._fs
        await self._call(
            "an upload",
            lambda: fs._pipe_file(self.path, data),
            lambda: fs.pipe_file(self.path, data),
        )
        fs.invalidate_cache(self.path)

    async def size(self) -> int:
        """Return ``info()["size"]``, asking the storage each time.

        Pins the version seen if none is pinned yet.

        Raises:
            FileNotFoundError: The object does not exist.
            TimeoutError: The storage did not answer within ``timeout``.
            OSError: The storage could not be asked, or reports no size.
            ClosedError: The backing was closed.
        """
        info = await self._info()
        size = info.get("size")
        if not is_int(size) or not isinstance(size, int) or size < 0:
            raise OSError(errno.EIO, f"{self!r}: storage reports no size ({size!r})")
        if self._pin is None:
            self._pin = _Pin(info)
        return size

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read ``[offset, offset + len(buf))`` with one ranged request.

        Tied to the pinned version as the class docstring describes; the
        first read of a backing with nothing pinned asks ``info()`` first.

        Returns:
            Bytes read; short at the end of the object, 0 past it.

        Raises:
            StaleVersionError: The object is no longer the pinned version,
                or shrank below ``offset``; ``buf`` is not touched.
            FileNotFoundError: The object does not exist.
            TimeoutError: The storage did not answer within ``timeout``.
            OSError: The read failed, or the storage returned more than asked.
            ClosedError: The backing was closed.

        Cancellation:
            The request is abandoned; ``buf`` is not touched.
        """
        offset = check_offset(offset)
        view = byte_view(buf, writable=True)
        self._check_open()
        n = len(view)
        if n == 0:
            return 0
        pin = self._pin
        if pin is None:
            pin = _Pin(await self._info())
            if self._pin is None:
                self._pin = pin
        try:
            data = await self._read_pinned(pin, offset, offset + n)
        except StaleVersionError:
            raise
        except Exception as exc:
            if _is_precondition_failed(exc):
                raise self._stale(pin, None, offset, "refused the condition") from exc
            if not _is_range_not_satisfiable(exc):
                raise
            if pin.size is not None and offset < pin.size:
                raise self._stale(pin, None, offset, "shrank") from exc
            return 0
        if len(data) > n:
            raise OSError(
                errno.EIO,
                f"{self!r}: asked for {n} bytes at {offset}, got {len(data)} "
                "(the storage ignored the byte range)",
            )
        view[: len(data)] = data
        return len(data)

    async def _read_pinned(self, pin: _Pin, start: int, end: int) -> bytes:
        """Read ``[start, end)`` of the pinned version, or raise.

        Raises:
            StaleVersionError: The answer came from another version.
            Exception: What the filesystem raised (a 412 among them).
        """
        if self._s3 and pin.version_id is not None and self._fs.version_aware:
            return await self._cat(start, end, version_id=pin.version_id)
        if self._s3 and pin.etag is not None:
            return await self._s3_read(pin, start, end)
        if self._http and pin.etag is not None and not pin.etag.startswith("W/"):
            return await self._cat(start, end, headers={"If-Match": pin.etag})
        data = await self._cat(start, end)
        seen = _Pin(await self._info())
        if pin.differs(seen):
            raise self._stale(pin, seen, start, "changed")
        return data

    async def _s3_read(self, pin: _Pin, start: int, end: int) -> bytes:
        """A ranged ``GetObject`` with ``IfMatch`` of the pinned ETag."""
        fs = self._fs
        bucket, key, _version = fs.split_path(self.path)

        async def get() -> tuple[bytes, object, object]:
            resp = await fs._call_s3(
                "get_object",
                Bucket=bucket,
                Key=key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=pin.etag,
            )
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return data, resp.get("ETag"), resp.get("ContentRange")

        data, etag, content_range = await self._call(
            f"a read of [{start}, {end})",
            get,
            lambda: fsspec.asyn.sync(fs.loop, get),
        )
        total: int | None = None
        if isinstance(content_range, str) and "/" in content_range:
            text = content_range.rpartition("/")[2]
            total = int(text) if text.isdigit() else None
        if (etag is not None and etag != pin.etag) or (
            total is not None and pin.size is not None and total != pin.size
        ):
            raise StaleVersionError(
                f"{self!r}: the object changed under a read at {start}: "
                f"pinned ETag {pin.etag} of {pin.size} bytes, the store "
                f"answered ETag {etag} of {total} bytes",
                expected=pin.token,
                found=None if etag is None else f"etag:{etag}",
            )
        if not isinstance(data, bytes | bytearray):
            raise OSError(errno.EIO, f"{self!r}: get_object returned {type(data)!r}")
        return bytes(data)

    def _stale(
        self, pin: _Pin, seen: _Pin | None, offset: int, how: str
    ) -> StaleVersionError:
        found = None if seen is None else seen.token
        said = "without saying" if seen is None else f"{found}, size {seen.size}"
        return StaleVersionError(
            f"{self!r}: the object {how} under a read at {offset}: pinned "
            f"{pin.token}, size {pin.size}; the store answered {said}",
            expected=pin.token,
            found=found,
        )

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise PermissionError(errno.EACCES, f"{self!r} is read-only")

    async def _rewrite(self, change: Callable[[bytearray], None]) -> None:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            self._check_writable()
            try:
                current = bytearray(await self._cat(None, None))
            except FileNotFoundError:
                current = bytearray()
            change(current)
            await self._pipe(bytes(current))
            self._writes += 1
            # The version this write made is the one later reads are tied to.
            self._pin = _Pin(await self._info())

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset`` by rewriting the whole object.

        Returns:
            ``len(data)``.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The storage refused.
            ClosedError: The backing was closed.

        Locking:
            Takes the backing's write lock for the read-modify-write.

        Cancellation:
            The object is either rewritten or not; a cancelled upload may
            still have completed.
        """
        offset = check_offset(offset)
        payload = bytes(byte_view(data, writable=False))
        self._check_writable()

        def change(buf: bytearray) -> None:
            end = offset + len(payload)
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
            buf[offset:end] = payload

        await self._rewrite(change)
        return len(payload)

    async def truncate(self, size: int) -> None:
        """Resize the object by rewriting it whole.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The storage refused.
            ClosedError: The backing was closed.

        Locking:
            Takes the backing's write lock for the read-modify-write.
        """
        size = check_size(size)
        self._check_writable()

        def change(buf: bytearray) -> None:
            if size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))

        await self._rewrite(change)

    async def version(self) -> str | None:
        """Return the object's ETag, else its time and size, else its size.

        Pins the version returned: later reads are tied to it.

        Raises:
            FileNotFoundError: The object does not exist.
            TimeoutError: The storage did not answer within ``timeout``.
            OSError: The storage could not be asked.
            ClosedError: The backing was closed.
        """
        pin = _Pin(await self._info())
        self._pin = pin
        token = pin.token
        if token is not None and self._writes:
            token = f"{token}:w{self._writes}"
        return token

    async def aclose(self) -> None:
        """Mark the backing closed; close the filesystem's session if owned.

        Only filesystems created by :func:`~aiomemmap.open_backing` are owned.
        Idempotent. An owned asynchronous filesystem is closed on the loop
        it ran on; once that loop has ended (a finished ``asyncio.run``),
        closing from another loop marks the backing closed and drops the
        session, whose connections ended with their loop.

        Raises:
            WrongLoopError: An owned asynchronous filesystem runs on another
                loop that has not ended (the backing stays open).
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        bound = self._loop
        if self._owns_fs and self._native and bound is not None and bound is not loop:
            if not bound.is_closed():
                raise self._wrong_loop(loop)
            # The session's loop has ended with its connections: nothing is
            # left to close but the session's own bookkeeping.
            self._closed = True
            with contextlib.suppress(Exception):
                await _close_async_fs(self._fs)
            return
        self._closed = True
        if self._owns_fs and self._native:
            await _close_async_fs(self._fs)


def owning_backing(
    fs: object, path: str, *, readonly: bool | None, block_size_hint: int | None
) -> FsspecBacking:
    """Return a :class:`FsspecBacking` that owns ``fs``.

    Its :meth:`~FsspecBacking.aclose` closes the client session of an
    asynchronous filesystem: for a filesystem created for this backing
    alone, as :func:`~aiomemmap.open_backing` does.

    Raises:
        TypeError: As :class:`FsspecBacking`.
        ValueError: As :class:`FsspecBacking`.
    """
    backing = FsspecBacking(
        fs, path, readonly=readonly, block_size_hint=block_size_hint
    )
    backing._owns_fs = True
    return backing


async def _close_async_fs(fs: Any) -> None:  # noqa: ANN401
    """Close the client session of an asynchronous fsspec filesystem.

    fsspec has no public coroutine for this: HTTP keeps an aiohttp session
    in ``_session``, s3fs an aiobotocore client context in ``_s3creator``.
    Both are closed here on the running loop, which is the loop they were
    created on.
    """
    aiohttp = sys.modules.get("aiohttp")
    session = getattr(fs, "_session", None)
    if (
        aiohttp is not None
        and isinstance(session, aiohttp.ClientSession)
        and not session.closed
    ):
        await session.close()
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        fs._s3creator = None
        fs._s3 = None
        await creator.__aexit__(None, None, None)
