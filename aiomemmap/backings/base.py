"""Backings: where a cached file's bytes really live.

A :class:`Backing` is random-access storage behind a
:class:`~aiomemmap.CachedFile`: bytes in memory, a local file, an object on
HTTP or S3, anything an fsspec filesystem can read. Every method is a
coroutine, so a backing may wait for the network without blocking the loop.

Transient failures (a dropped connection, a timeout, a 5xx answer) are retried
by the caller through :func:`read_fully` with a :class:`RetryPolicy`; a
backing's own methods make one attempt each.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import random
import stat
import typing
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import aiohttp
import fsspec
import fsspec.core
import yarl

from aiomemmap._core.errors import ClosedError
from aiomemmap._core.pages import is_int

__all__ = [
    "Backing",
    "BytesBacking",
    "FaultInjectingBacking",
    "FsspecBacking",
    "HttpBacking",
    "LocalFileBacking",
    "RetryPolicy",
    "call_with_retry",
    "is_transient",
    "open_backing",
    "read_fully",
]

_T = TypeVar("_T")


class Backing(Protocol):
    """Random-access storage of a file's bytes.

    Every method may be called concurrently with any other from tasks of one
    event loop; implementations serialise internally if they must.

    Attributes:
        readonly: Whether :meth:`write_from` and :meth:`truncate` always fail.
    """

    readonly: bool

    async def size(self) -> int:
        """Return the current size of the file in bytes.

        Raises:
            OSError: The storage could not be asked (e.g. ``ConnectionError``).
            ClosedError: The backing was closed.
        """
        ...

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` into ``buf``.

        Returns:
            The number of bytes read. It is short only at the end of the file
            (0 at or past the end).

        Raises:
            OSError: The read failed; nothing is promised about ``buf``.
            ClosedError: The backing was closed.

        Preconditions:
            ``offset >= 0``; ``buf`` is writable.
        """
        ...

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset``, extending the file if needed.

        Returns:
            ``len(data)``: writes are never short without an error.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The write failed.
            ClosedError: The backing was closed.
        """
        ...

    async def truncate(self, size: int) -> None:
        """Set the file's size to ``size``, zero-filling when it grows.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The storage refused.
            ClosedError: The backing was closed.
        """
        ...

    async def version(self) -> str | None:
        """Return a token that changes whenever the contents change.

        An ETag, a generation number or size plus modification time;
        ``None`` if the storage offers nothing of the kind.

        Raises:
            OSError: The storage could not be asked.
            ClosedError: The backing was closed.
        """
        ...

    async def aclose(self) -> None:
        """Release the backing's resources. Idempotent."""
        ...


# ---------------------------------------------------------------------------
# Retry classification and the read loop.
# ---------------------------------------------------------------------------

# errno values an OSError may carry when the failure is worth retrying: the
# peer went away, the request timed out, the service asked us to slow down.
_TRANSIENT_ERRNOS: Final[frozenset[int]] = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.EREMOTEIO,
        errno.ETIMEDOUT,
    }
)

# Exceptions that are never transient, whatever they wrap.
_PERMANENT: Final[tuple[type[BaseException], ...]] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
)


def _http_status(exc: BaseException) -> int | None:
    """Return the HTTP status an exception reports, if it reports one.

    Understands aiohttp's ``ClientResponseError`` (``.status``, raised by
    fsspec's HTTP filesystem through ``raise_for_status``) and botocore's
    ``ClientError`` (``.response["ResponseMetadata"]["HTTPStatusCode"]``, the
    ``__cause__`` of the ``OSError`` s3fs raises).
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata")
        if isinstance(meta, dict):
            status = meta.get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """Return ``exc`` and its explicit causes, outermost first (bounded)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 8 and cur not in out:
        out.append(cur)
        cur = cur.__cause__
    return out


def _is_transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def is_transient(exc: BaseException) -> bool:
    """Return whether retrying the operation that raised ``exc`` may succeed.

    Transient: ``ConnectionError`` (refused, reset, aborted, broken pipe),
    ``TimeoutError`` (which ``asyncio.TimeoutError`` and fsspec's
    ``FSTimeoutError`` are), aiohttp's client errors (connection and payload
    errors, a server that disconnected), HTTP 5xx, 408 and 429 answers
    however they are surfaced: fsspec's HTTP filesystem raises aiohttp's
    ``ClientResponseError`` carrying ``.status``; s3fs raises an ``OSError``
    (``EREMOTEIO`` for 500, ``EBUSY`` for 503, ``EIO`` for others) whose
    ``__cause__`` is botocore's ``ClientError`` with the HTTP status. An
    ``OSError`` whose ``errno`` names a network or busy condition is transient
    too.

    Never transient: ``asyncio.CancelledError`` and other non-``Exception``
    exceptions, ``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``,
    ``ValueError``, ``TypeError``, HTTP 4xx other than 408/429, and anything
    unrecognised.

    Args:
        exc: The exception to classify.

    Returns:
        ``True`` if the error is transient.
    """
    if not isinstance(exc, Exception) or isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, aiohttp.ClientResponseError):
        return _is_transient_status(exc.status)
    if isinstance(exc, ConnectionError | TimeoutError | aiohttp.ClientError):
        return True
    for link in _chain(exc):
        status = _http_status(link)
        if status is not None:
            return _is_transient_status(status)
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def _is_range_not_satisfiable(exc: BaseException) -> bool:
    """Return whether ``exc`` says a ranged read started past the end."""
    for link in _chain(exc):
        if _http_status(link) == 416:
            return True
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            error = response.get("Error")
            if isinstance(error, dict) and error.get("Code") == "InvalidRange":
                return True
    return False


@typing.final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently :func:`read_fully` retries transient errors.

    The delay before retry ``k`` (1-based) is
    ``min(max_backoff, initial_backoff * multiplier ** (k - 1))``. There is no
    random jitter, so a policy always produces the same schedule.

    Attributes:
        attempts: Attempts in a row that may fail before the last error is
            raised; ``1`` means no retry.
        initial_backoff: Seconds to wait before the first retry.
        max_backoff: Upper bound of any one wait, in seconds.
        multiplier: Growth factor of the wait between retries.

    Concurrency:
        immutable.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not is_int(self.attempts) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff!r}) must be >= "
                f"initial_backoff ({self.initial_backoff!r})"
            )

    def backoff(self, retry: int) -> float:
        """Return the delay in seconds before retry number ``retry`` (1-based).

        Args:
            retry: Which retry; ``1`` is the first.

        Raises:
            ValueError: ``retry < 1``.
        """
        if not is_int(retry) or retry < 1:
            raise ValueError(f"retry must be an int >= 1, got {retry!r}")
        # Cap the exponent so huge retry numbers cannot overflow a float.
        exponent = min(retry - 1, 1024)
        try:
            delay = self.initial_backoff * self.multiplier**exponent
        except OverflowError:
            delay = self.max_backoff
        return float(min(self.max_backoff, delay))


_DEFAULT_RETRY: Final[RetryPolicy] = RetryPolicy()


async def call_with_retry(
    fn: Callable[[], Awaitable[_T]], *, retry: RetryPolicy | None = None
) -> _T:
    """Await ``fn()``, retrying transient errors as :func:`read_fully` does.

    For a backing's questions that are not reads (``size()``, ``version()``):
    a transient failure (see :func:`is_transient`) is retried with the
    policy's backoff; any other error, or the last transient one once
    ``retry.attempts`` calls in a row failed, propagates.

    Args:
        fn: Makes one attempt; called again for each retry.
        retry: The retry policy; ``None`` means ``RetryPolicy()``.

    Raises:
        TypeError: ``retry`` is not a ``RetryPolicy`` or ``None``.
        Exception: What the last attempt raised.

    Cancellation:
        Propagates at once, from the call or the backoff sleep; it is never
        retried.
    """
    policy = _DEFAULT_RETRY if retry is None else retry
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
    failures = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
        await asyncio.sleep(policy.backoff(failures))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_nonempty_str(x: object) -> bool:
    return isinstance(x, str) and bool(x)


def _check_offset(offset: object) -> int:
    if not is_int(offset):
        raise TypeError(f"offset must be an int, got {offset!r}")
    assert isinstance(offset, int)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def _check_size(size: object) -> int:
    if not is_int(size):
        raise TypeError(f"size must be an int, got {size!r}")
    assert isinstance(size, int)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return size


def _as_view(buf: memoryview | bytearray, *, writable: bool) -> memoryview:
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if writable and view.readonly:
        raise TypeError("buf must be writable")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _as_writable_view(buf: memoryview | bytearray) -> memoryview:
    """``_as_view(buf, writable=True)``, with a fast path for a byte view."""
    if (
        type(buf) is memoryview
        and buf.itemsize == 1
        and buf.ndim == 1
        and not buf.readonly
    ):
        return buf
    return _as_view(buf, writable=True)


async def read_fully(
    backing: Backing,
    offset: int,
    buf: memoryview | bytearray,
    *,
    retry: RetryPolicy | None = None,
) -> int:
    """Fill ``buf`` from ``backing`` at ``offset``, stopping only at end of file.

    A short read is not trusted to mean end of file: reading goes on from
    where it stopped. A read that returns ``0`` ends the loop only if
    ``backing.size()`` confirms that the position is at or past the end;
    otherwise the zero-byte read counts as a failed attempt (it may be an
    eventually consistent store catching up) and, once attempts run out,
    raises ``OSError(EIO)``. Zero bytes are never passed off as data.

    Transient errors (see :func:`is_transient`) are retried with the
    policy's deterministic exponential backoff. The budget counts failures
    in a row: a read that makes progress resets it, so a long read through a
    flaky backing is not failed by errors spread across many chunks.
    Permanent errors are raised at once.

    Args:
        backing: Where to read from.
        offset: File offset of ``buf[0]``.
        buf: Writable destination.
        retry: The retry policy; ``None`` means ``RetryPolicy()``. Use
            ``RetryPolicy(attempts=1)`` for no retries.

    Returns:
        Bytes read: ``len(buf)``, or fewer only if the end of file came first.

    Raises:
        TypeError: ``buf`` is not writable or ``offset`` is not an int.
        ValueError: ``offset`` is negative.
        OSError: A permanent error, or the last transient error once
            ``retry.attempts`` attempts in a row failed. ``buf[:k]`` may
            already hold bytes read before the error.
        ClosedError: The backing was closed.

    Preconditions:
        ``offset >= 0``; ``buf`` is writable.

    Postconditions:
        ``buf[:result]`` holds the file's bytes at
        ``[offset, offset + result)``.

    Cancellation:
        ``CancelledError`` is never retried; it propagates at once from the
        backing call or backoff sleep it lands in. ``buf`` may be partly
        filled.
    """
    if type(offset) is not int or offset < 0:
        offset = _check_offset(offset)
    view = _as_writable_view(buf)
    policy = _DEFAULT_RETRY if retry is None else retry
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
    want = len(view)
    done = 0
    failures = 0
    while done < want:
        pos = offset + done
        size = -1
        try:
            n = await backing.read_into(pos, view[done:])
            if n == 0:
                size = await backing.size()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
            await asyncio.sleep(policy.backoff(failures))
            continue
        if n < 0 or n > want - done:
            raise OSError(
                errno.EIO,
                f"backing returned {n} bytes for a read of {want - done}",
            )
        if n == 0:
            if pos >= size:
                return done
            failures += 1
            if failures >= policy.attempts:
                raise OSError(
                    errno.EIO,
                    f"backing returned no bytes at offset {pos} "
                    f"before its end at {size}",
                )
            await asyncio.sleep(policy.backoff(failures))
            continue
        done += n
        failures = 0
    return done


# ---------------------------------------------------------------------------
# In-memory backing.
# ---------------------------------------------------------------------------


@typing.final
class BytesBacking:
    """A backing that keeps the file's bytes in memory.

    Attributes:
        readonly: Whether writes and truncates raise ``PermissionError``.

    Concurrency:
        task-safe: every method completes without awaiting in between, so
        each call is atomic with respect to other tasks of the loop.
    """

    def __init__(
        self, data: bytes | bytearray = b"", *, readonly: bool = False
    ) -> None:
        """Create a backing holding a copy of ``data``.

        Args:
            data: Initial contents (copied).
            readonly: Refuse writes and truncates.

        Raises:
            TypeError: ``data`` is not bytes-like.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes or bytearray, got {type(data)!r}")
        self._data = bytearray(data)
        self.readonly = bool(readonly)
        self._generation = 0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"BytesBacking(size={len(self._data)}, readonly={self.readonly}, "
            f"closed={self._closed})"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("BytesBacking is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise PermissionError(errno.EACCES, "BytesBacking is read-only")

    @property
    def data(self) -> bytes:
        """A copy of the current contents (for tests and debugging)."""
        return bytes(self._data)

    async def size(self) -> int:
        """Return the number of bytes held.

        Raises:
            ClosedError: The backing was closed.
        """
        self._check_open()
        return len(self._data)

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Copy up to ``len(buf)`` bytes at ``offset`` into ``buf``.

        Returns:
            Bytes copied; short only at the end (0 at or past it).

        Raises:
            TypeError: Bad argument types.
            ValueError: ``offset`` is negative.
            ClosedError: The backing was closed.
        """
        offset = _check_offset(offset)
        view = _as_view(buf, writable=True)
        self._check_open()
        chunk = self._data[offset : offset + len(view)]
        view[: len(chunk)] = chunk
        return len(chunk)

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset``, zero-filling any gap past the end.

        Returns:
            ``len(data)``.

        Raises:
            PermissionError: The backing is read-only.
            ClosedError: The backing was closed.
        """
        offset = _check_offset(offset)
        view = _as_view(data, writable=False)
        self._check_writable()
        end = offset + len(view)
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))
        self._data[offset:end] = view
        self._generation += 1
        return len(view)

    async def truncate(self, size: int) -> None:
        """Set the size to ``size``, zero-filling when it grows.

        Raises:
            PermissionError: The backing is read-only.
            ClosedError: The backing was closed.
        """
        size = _check_size(size)
        self._check_writable()
        if size < len(self._data):
            del self._data[size:]
        else:
            self._data.extend(bytes(size - len(self._data)))
        self._generation += 1

    async def version(self) -> str:
        """Return a counter, as a string, bumped by every write and truncate.

        Raises:
            ClosedError: The backing was closed.
        """
        self._check_open()
        return str(self._generation)

    async def aclose(self) -> None:
        """Mark the backing closed. Idempotent."""
        self._closed = True


# ---------------------------------------------------------------------------
# Local file backing.
# ---------------------------------------------------------------------------


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    """Read up to ``n`` bytes at ``offset``, looping over short reads."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``, looping over short writes."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@typing.final
class LocalFileBacking:
    """A backing on a local file, read and written with ``pread``/``pwrite``.

    The file is opened in the constructor, so a missing file or a
    permission problem is reported at once, synchronously. Every system call
    that may block (``pread``, ``pwrite``, ``ftruncate``) runs in the loop's
    default executor, never on the event loop. The bytes are copied into the
    caller's buffer on the loop after the thread finished, so a cancelled
    read never writes into a buffer its caller gave up.

    :meth:`aclose` waits for no one: it marks the backing closed at once and
    the descriptor is closed when the last system call still running in a
    thread (including those of cancelled callers) returns, so a descriptor
    number is never reused under a running call.

    Attributes:
        readonly: ``not writable``.
        path: The file's path.

    Concurrency:
        task-safe.
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        """Open ``path``.

        Args:
            path: A regular file.
            writable: Open for reading and writing; otherwise writes raise
                ``PermissionError``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            IsADirectoryError: ``path`` is a directory.
            PermissionError: The file cannot be opened in the asked mode.
            OSError: Another failure to open.
        """
        self.path = os.fspath(path)
        self.readonly = not writable
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"no such file: {self.path!r}", self.path
            ) from exc
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(
                    errno.EISDIR, f"is a directory: {self.path!r}", self.path
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._closed = False
        self._in_flight = 0

    def __repr__(self) -> str:
        return (
            f"LocalFileBacking({self.path!r}, writable={not self.readonly}, "
            f"closed={self._closed})"
        )

    def _acquire(self) -> int:
        if self._closed or self._fd is None:
            raise ClosedError(f"LocalFileBacking({self.path!r}) is closed")
        self._in_flight += 1
        return self._fd

    def _release(self) -> None:
        self._in_flight -= 1
        if self._closed and self._in_flight == 0:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def _run(self, func: Callable[[int], _T]) -> _T:
        """Run ``func(fd)`` in a worker thread, keeping the fd open meanwhile."""
        fd = self._acquire()
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(None, func, fd)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(lambda _f: self._release())
        # The shield keeps the thread's future (and the fd reference) alive
        # when the caller is cancelled; the callback releases it later.
        return await asyncio.shield(fut)

    async def size(self) -> int:
        """Return the file's size from ``fstat``.

        Raises:
            OSError: ``fstat`` failed.
            ClosedError: The backing was closed.
        """
        fd = self._acquire()
        try:
            return os.fstat(fd).st_size
        finally:
            self._release()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` with ``pread``.

        Returns:
            Bytes read; short only at the end of the file.

        Raises:
            OSError: The read failed.
            ClosedError: The backing was closed.

        Cancellation:
            The thread finishes in the background; ``buf`` is not touched.
        """
        offset = _check_offset(offset)
        view = _as_view(buf, writable=True)
        n = len(view)
        if n == 0:
            self._acquire()
            self._release()
            return 0
        data = await self._run(lambda fd: _pread_all(fd, n, offset))
        view[: len(data)] = data
        return len(data)

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset`` with ``pwrite``.

        Returns:
            ``len(data)``.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The write failed.
            ClosedError: The backing was closed.

        Cancellation:
            The write may still complete in the background.
        """
        offset = _check_offset(offset)
        payload = bytes(_as_view(data, writable=False))
        self._check_writable()
        await self._run(lambda fd: _pwrite_all(fd, payload, offset))
        return len(payload)

    async def truncate(self, size: int) -> None:
        """Set the file's size with ``ftruncate``.

        Raises:
            PermissionError: The backing is read-only.
            OSError: ``ftruncate`` failed.
            ClosedError: The backing was closed.
        """
        size = _check_size(size)
        self._check_writable()
        await self._run(lambda fd: os.ftruncate(fd, size))

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"LocalFileBacking({self.path!r}) is closed")
        if self.readonly:
            raise PermissionError(
                errno.EACCES, f"LocalFileBacking({self.path!r}) is read-only"
            )

    async def version(self) -> str:
        """Return ``f"{size}-{mtime_ns}"`` from ``fstat``.

        Raises:
            OSError: ``fstat`` failed.
            ClosedError: The backing was closed.
        """
        fd = self._acquire()
        try:
            st = os.fstat(fd)
        finally:
            self._release()
        return f"{st.st_size}-{st.st_mtime_ns}"

    async def aclose(self) -> None:
        """Close the file descriptor (once no thread uses it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight == 0:
            self._close_fd()


# ---------------------------------------------------------------------------
# fsspec backing.
# ---------------------------------------------------------------------------

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


def _unwrap_info_error(exc: Exception) -> Exception:
    """Undo the HTTP filesystem's habit of turning every failure into 404.

    fsspec's HTTP ``_info`` raises ``FileNotFoundError`` from *any* error of
    its HEAD-then-GET probe, including a 503 or a reset connection. Reporting
    that as "not found" would make a transient outage permanent, so when the
    cause is transient the cause is returned instead.
    """
    cause = exc.__cause__
    if (
        isinstance(exc, FileNotFoundError)
        and isinstance(cause, Exception)
        and is_transient(cause)
    ):
        return cause
    return exc


@typing.final
class FsspecBacking:
    """A backing on one object of any fsspec filesystem.

    How calls run depends on the filesystem:

    * An async filesystem created with ``asynchronous=True``: its coroutine
      methods (``_cat_file``, ``_info``, ``_pipe_file``) are awaited directly
      on the caller's running loop. Such a filesystem binds its client
      session (aiohttp, aiobotocore) to the loop it first runs on, so the
      backing must be used from one loop only: it remembers the loop of its
      first call and raises ``RuntimeError`` if called from another one. Do
      not share such a filesystem between loops either; fsspec caches
      filesystem instances by their arguments and thread, not by loop, so
      create it with ``skip_instance_cache=True`` (:func:`open_backing` does).
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
    ) -> None:
        """Wrap ``path`` on ``fs``. Does no I/O.

        Args:
            fs: An ``fsspec.AbstractFileSystem`` instance. The caller keeps
                ownership: :meth:`aclose` does not close it.
            path: The object's path as ``fs`` understands it.
            readonly: Force read-only (``True``) or writable (``False``);
                ``None`` picks writable for sync memory/local filesystems.
            block_size_hint: Preferred request size in bytes.

        Raises:
            TypeError: ``fs`` is not an fsspec filesystem or ``path`` not a str.
            ValueError: ``block_size_hint`` is not positive.
        """
        if not isinstance(fs, fsspec.AbstractFileSystem):
            raise TypeError(f"fs must be an fsspec filesystem, got {fs!r}")
        if not _is_nonempty_str(path):
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
                raise RuntimeError(
                    f"{self!r} is bound to another event loop: an asynchronous "
                    "fsspec filesystem can only be used from the loop it first "
                    "ran on"
                )

    async def _info(self) -> dict[str, object]:
        self._check_open()
        fs = self._fs
        fs.invalidate_cache(self.path)
        try:
            if self._native:
                info = await fs._info(self.path)
            else:
                info = await asyncio.to_thread(fs.info, self.path)
        except Exception as exc:
            unwrapped = _unwrap_info_error(exc)
            if unwrapped is exc:
                raise
            raise unwrapped from exc
        if not isinstance(info, dict):
            raise OSError(errno.EIO, f"{self!r}: info() returned {info!r}")
        if info.get("type") == "directory":
            raise IsADirectoryError(errno.EISDIR, f"is a directory: {self.path!r}")
        return info

    async def _cat(self, start: int | None, end: int | None) -> bytes:
        fs = self._fs
        if self._native:
            data = await fs._cat_file(self.path, start=start, end=end)
        else:
            data = await asyncio.to_thread(fs.cat_file, self.path, start, end)
        if not isinstance(data, bytes | bytearray):
            raise OSError(errno.EIO, f"{self!r}: cat_file returned {type(data)!r}")
        return bytes(data)

    async def _pipe(self, data: bytes) -> None:
        fs = self._fs
        if self._native:
            await fs._pipe_file(self.path, data)
        else:
            await asyncio.to_thread(fs.pipe_file, self.path, data)
        fs.invalidate_cache(self.path)

    async def size(self) -> int:
        """Return ``info()["size"]``, asking the storage each time.

        Raises:
            FileNotFoundError: The object does not exist.
            OSError: The storage could not be asked, or reports no size.
            ClosedError: The backing was closed.
        """
        info = await self._info()
        size = info.get("size")
        if not is_int(size) or not isinstance(size, int) or size < 0:
            raise OSError(errno.EIO, f"{self!r}: storage reports no size ({size!r})")
        return size

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read ``[offset, offset + len(buf))`` with one ranged request.

        Returns:
            Bytes read; short at the end of the object, 0 past it.

        Raises:
            FileNotFoundError: The object does not exist.
            OSError: The read failed, or the storage returned more than asked.
            ClosedError: The backing was closed.

        Cancellation:
            The request is abandoned; ``buf`` is not touched.
        """
        offset = _check_offset(offset)
        view = _as_view(buf, writable=True)
        self._check_open()
        n = len(view)
        if n == 0:
            return 0
        try:
            data = await self._cat(offset, offset + n)
        except Exception as exc:
            if _is_range_not_satisfiable(exc):
                return 0
            raise
        if len(data) > n:
            raise OSError(
                errno.EIO,
                f"{self!r}: asked for {n} bytes at {offset}, got {len(data)} "
                "(the storage ignored the byte range)",
            )
        view[: len(data)] = data
        return len(data)

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
        offset = _check_offset(offset)
        payload = bytes(_as_view(data, writable=False))
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
        size = _check_size(size)
        self._check_writable()

        def change(buf: bytearray) -> None:
            if size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))

        await self._rewrite(change)

    async def version(self) -> str | None:
        """Return the object's ETag, else its time and size, else its size.

        Raises:
            FileNotFoundError: The object does not exist.
            OSError: The storage could not be asked.
            ClosedError: The backing was closed.
        """
        info = await self._info()
        token: str | None = None
        for key in _ETAG_KEYS:
            value = info.get(key)
            if value not in (None, ""):
                token = f"etag:{value}"
                break
        size = info.get("size")
        if token is None:
            for key in _MTIME_KEYS:
                value = info.get(key)
                if value not in (None, ""):
                    token = f"mtime:{value}:size:{size}"
                    break
        if token is None and is_int(size):
            token = f"size:{size}"
        if token is not None and self._writes:
            token = f"{token}:w{self._writes}"
        return token

    async def aclose(self) -> None:
        """Mark the backing closed; close the filesystem's session if owned.

        Only filesystems created by :func:`open_backing` are owned. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_fs and self._native:
            await _close_async_fs(self._fs)


async def _close_async_fs(fs: Any) -> None:  # noqa: ANN401
    """Close the client session of an asynchronous fsspec filesystem.

    fsspec has no public coroutine for this: HTTP keeps an aiohttp session
    in ``_session``, s3fs an aiobotocore client context in ``_s3creator``.
    Both are closed here on the running loop, which is the loop they were
    created on.
    """
    session = getattr(fs, "_session", None)
    if isinstance(session, aiohttp.ClientSession) and not session.closed:
        await session.close()
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        fs._s3creator = None
        fs._s3 = None
        await creator.__aexit__(None, None, None)


# ---------------------------------------------------------------------------
# HTTP backing on aiohttp.
# ---------------------------------------------------------------------------

# Statuses that mean "the object is not there" and "you may not read it".
_NOT_FOUND_STATUSES: Final[frozenset[int]] = frozenset({404, 410})
_FORBIDDEN_STATUSES: Final[frozenset[int]] = frozenset({401, 403})
# Statuses a server uses to refuse HEAD; the size is then asked with a GET.
_HEAD_REFUSED_STATUSES: Final[frozenset[int]] = frozenset({405, 501})
# Timeouts of an owned session: no bound on a whole (possibly large) read,
# but a connection attempt or a silent socket does not hang forever.
_HTTP_TIMEOUT: Final[aiohttp.ClientTimeout] = aiohttp.ClientTimeout(
    total=None, sock_connect=30.0, sock_read=60.0
)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``Content-Range: bytes first-last/total`` (or ``bytes */total``).

    Returns:
        ``(first, total)``; either is ``None`` when absent or ``*``.

    Raises:
        ValueError: The header is missing or malformed.
    """
    if value is None:
        raise ValueError("no Content-Range header")
    unit, _, rest = value.strip().partition(" ")
    span, slash, total_text = rest.strip().partition("/")
    if unit.lower() != "bytes" or not slash:
        raise ValueError(f"malformed Content-Range {value!r}")
    total = None if total_text == "*" else int(total_text)
    if span == "*":
        return None, total
    first_text, dash, _last = span.partition("-")
    if not dash:
        raise ValueError(f"malformed Content-Range {value!r}")
    return int(first_text), total


@typing.final
class HttpBacking:
    """A read-only backing on one HTTP(S) URL, spoken to with aiohttp directly.

    Each :meth:`read_into` is one ``GET`` with a ``Range`` header whose body
    is copied into the caller's buffer chunk by chunk as it arrives. There is
    no per-request work beyond what aiohttp itself does: no listing cache, no
    whole-body ``bytes`` object, no thread hop.

    :meth:`size` and :meth:`version` send a ``HEAD`` each time (nothing is
    cached); a server that refuses ``HEAD`` (405, 501) is asked with
    ``GET`` of ``Range: bytes=0-0`` instead. The version is the ``ETag``,
    else ``Last-Modified``, else ``None``.

    Status handling: 206 is checked against the asked start; 416 (a read
    starting past the end) reads 0 bytes; a 200 (the server ignored
    ``Range``) is accepted only for a read at offset 0, of which the first
    ``len(buf)`` bytes are taken and the rest dropped with the connection.
    404 and 410 raise ``FileNotFoundError``, 401 and 403 ``PermissionError``
    (each chained to aiohttp's ``ClientResponseError``); any other error
    status raises ``ClientResponseError`` itself, which :func:`is_transient`
    classifies (5xx, 408, 429 transient). Requests ask for
    ``Accept-Encoding: identity`` so that byte ranges address the object's
    bytes, never a compressed form of them.

    Sessions: without ``session=``, the backing owns one
    ``aiohttp.ClientSession`` with a keep-alive ``TCPConnector`` of
    ``connections`` connections, created on the first call and bound to the
    running loop of that call; :meth:`aclose` closes it. A caller-supplied
    session is used as is and never closed. Either way the backing is bound
    to the loop of its first call and raises ``RuntimeError`` from any other.

    Attributes:
        readonly: Always ``True``.
        url: The object's URL.

    Concurrency:
        task-safe; concurrent reads use separate connections of the pool.
    """

    readonly: bool

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        connections: int = 64,
    ) -> None:
        """Describe the object at ``url``. Does no I/O.

        Args:
            url: An ``http://`` or ``https://`` URL with a host.
            session: A session to use instead of an owned one; the caller
                keeps it and closes it after the backing.
            headers: Extra headers sent with every request (e.g.
                ``Authorization``).
            connections: Connection limit of the owned session's pool;
                ignored with ``session=``.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``url`` is not an HTTP(S) URL with a host, or
                ``connections < 1``.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {url!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(
                f"session must be an aiohttp.ClientSession, got {session!r}"
            )
        if not is_int(connections) or connections < 1:
            raise ValueError(f"connections must be an int >= 1, got {connections!r}")
        base: dict[str, str] = {}
        if headers is not None:
            given: object = headers
            if not isinstance(given, Mapping):
                raise TypeError(f"headers must be a mapping, got {headers!r}")
            for key, value in typing.cast("Mapping[object, object]", given).items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError(
                        f"headers must map str to str, got {key!r}: {value!r}"
                    )
                base[key] = value
        if not any(k.lower() == "accept-encoding" for k in base):
            base["Accept-Encoding"] = "identity"
        self.url = url
        self.readonly = True
        self._target = yarl.URL(url)
        self._headers = base
        self._connections = int(connections)
        self._session = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpBacking({self.url!r}, closed={self._closed})"

    def _session_here(self) -> aiohttp.ClientSession:
        """Return the session for a call on the running loop, creating it once.

        Raises:
            ClosedError: The backing was closed.
            RuntimeError: The backing is bound to another event loop.
        """
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                f"{self!r} is bound to another event loop: its HTTP session "
                "can only be used from the loop it was first used on"
            )
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            session = aiohttp.ClientSession(
                connector=connector, timeout=_HTTP_TIMEOUT, auto_decompress=False
            )
            self._session = session
        return session

    def _error(self, resp: aiohttp.ClientResponse, what: str) -> Exception:
        """Return the exception for an error status of ``resp`` (released)."""
        resp.release()
        cause = aiohttp.ClientResponseError(
            resp.request_info,
            resp.history,
            status=resp.status,
            message=f"{what} {self.url}: {resp.reason or ''}".rstrip(": "),
            headers=resp.headers,
        )
        if resp.status in _NOT_FOUND_STATUSES:
            exc: Exception = FileNotFoundError(
                errno.ENOENT, f"HTTP {resp.status} for {self.url!r}", self.url
            )
        elif resp.status in _FORBIDDEN_STATUSES:
            exc = PermissionError(
                errno.EACCES, f"HTTP {resp.status} for {self.url!r}", self.url
            )
        else:
            return cause
        exc.__cause__ = cause
        return exc

    async def _probe(self) -> tuple[int, str | None]:
        """Return ``(size, version)`` from a HEAD, or a one-byte GET if refused."""
        session = self._session_here()
        async with session.request(
            "HEAD", self._target, headers=self._headers, allow_redirects=True
        ) as resp:
            if resp.status < 300:
                length = resp.content_length
                if length is not None and length >= 0:
                    return length, self._version_of(resp)
            elif resp.status not in _HEAD_REFUSED_STATUSES:
                raise self._error(resp, "HEAD")
        return await self._probe_with_get(session)

    async def _probe_with_get(
        self, session: aiohttp.ClientSession
    ) -> tuple[int, str | None]:
        headers = {**self._headers, "Range": "bytes=0-0"}
        async with session.get(self._target, headers=headers) as resp:
            try:
                if resp.status == 206 or resp.status == 416:
                    _first, total = _parse_content_range(
                        resp.headers.get("Content-Range")
                    )
                    if total is None:
                        raise ValueError("no total length")
                    size = total
                elif resp.status < 300 and resp.content_length is not None:
                    size = resp.content_length
                else:
                    if resp.status >= 300:
                        raise self._error(resp, "GET")
                    raise ValueError("no Content-Length")
            except ValueError as exc:
                resp.close()
                raise OSError(
                    errno.EIO, f"{self!r}: the server reports no size ({exc})"
                ) from exc
            version = self._version_of(resp)
            # Drop the body (one byte, or all of it if Range was ignored).
            resp.close()
            return size, version

    @staticmethod
    def _version_of(resp: aiohttp.ClientResponse) -> str | None:
        etag = resp.headers.get("ETag")
        if etag:
            return f"etag:{etag}"
        modified = resp.headers.get("Last-Modified")
        if modified:
            return f"last-modified:{modified}"
        return None

    async def size(self) -> int:
        """Return the object's size from a ``HEAD`` (or a one-byte ``GET``).

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            OSError: The server reports no size, or the connection failed.
            ClosedError: The backing was closed.
            RuntimeError: Called from another event loop than the first call.
        """
        size, _version = await self._probe()
        return size

    async def version(self) -> str | None:
        """Return ``"etag:<ETag>"``, else ``"last-modified:<date>"``, else ``None``.

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            OSError: The connection failed.
            ClosedError: The backing was closed.
            RuntimeError: Called from another event loop than the first call.
        """
        _size, version = await self._probe()
        return version

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read ``[offset, offset + len(buf))`` with one ranged ``GET``.

        Returns:
            Bytes copied into ``buf``: short if the body ended early (the
            object's end, or a cut connection; :func:`read_fully` goes on),
            0 past the end.

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            OSError: ``EIO`` if the server answered another range than asked,
                or ignored ``Range`` for a read not at offset 0; other
                connection failures.
            ClosedError: The backing was closed.
            RuntimeError: Called from another event loop than the first call.

        Cancellation:
            The response is closed with its connection, which is therefore
            never returned to the pool half read; ``buf`` may be partly
            filled.
        """
        if type(offset) is not int or offset < 0:
            offset = _check_offset(offset)
        view = _as_writable_view(buf)
        session = self._session_here()
        want = len(view)
        if want == 0:
            return 0
        headers = {**self._headers, "Range": f"bytes={offset}-{offset + want - 1}"}
        async with session.get(self._target, headers=headers) as resp:
            status = resp.status
            if status == 416:
                resp.release()
                return 0
            if status != 206 and status != 200:
                raise self._error(resp, "GET")
            if status == 206:
                try:
                    first, _total = _parse_content_range(
                        resp.headers.get("Content-Range")
                    )
                except ValueError as exc:
                    resp.close()
                    raise OSError(errno.EIO, f"{self!r}: {exc}") from exc
                if first != offset:
                    resp.close()
                    raise OSError(
                        errno.EIO,
                        f"{self!r}: asked for bytes from {offset}, the server "
                        f"sent a range from {first}",
                    )
            elif offset != 0:
                resp.close()
                raise OSError(
                    errno.EIO,
                    f"{self!r}: the server ignored the byte range of a read at "
                    f"{offset} and sent the whole object",
                )
            done = 0
            try:
                content = resp.content
                while done < want:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    n = len(chunk)
                    if n > want - done:
                        if status == 206:
                            raise OSError(
                                errno.EIO,
                                f"{self!r}: asked for {want} bytes at {offset}, "
                                "the server sent more",
                            )
                        n = want - done
                        view[done:want] = memoryview(chunk)[:n]
                    else:
                        view[done : done + n] = chunk
                    done += n
                # A 206 body must end here; anything more is a broken range.
                if (
                    status == 206
                    and done == want
                    and not content.at_eof()
                    and await content.readany()
                ):
                    raise OSError(
                        errno.EIO,
                        f"{self!r}: asked for {want} bytes at {offset}, "
                        "the server sent more",
                    )
            except BaseException:
                resp.close()
                raise
            if status == 200 and not content.at_eof():
                resp.close()
            return done

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Refuse: an HTTP object is read-only.

        Raises:
            PermissionError: Always (``ClosedError`` once closed).
        """
        self._refuse_write()

    async def truncate(self, size: int) -> None:
        """Refuse: an HTTP object is read-only.

        Raises:
            PermissionError: Always (``ClosedError`` once closed).
        """
        self._refuse_write()

    def _refuse_write(self) -> typing.NoReturn:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        raise PermissionError(errno.EACCES, f"{self!r} is read-only")

    async def aclose(self) -> None:
        """Close the owned session, if one was created. Idempotent.

        A caller-supplied session is left open.

        Raises:
            RuntimeError: Called from another event loop than the one the
                owned session lives on (the backing stays open).
        """
        if self._closed:
            return
        session = self._session
        if self._owns_session and session is not None:
            if self._loop is not None and self._loop is not asyncio.get_running_loop():
                raise RuntimeError(
                    f"{self!r} must be closed on the event loop it was used on"
                )
            self._closed = True
            self._session = None
            await session.close()
        self._closed = True


# ---------------------------------------------------------------------------
# open_backing.
# ---------------------------------------------------------------------------

# URL schemes that name a host: a URL of theirs without one is malformed.
_NEEDS_NETLOC: Final[frozenset[str]] = frozenset(
    {"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "ftp", "sftp", "ssh"}
)


def open_backing(url_or_path: str, **storage_options: object) -> Backing:
    """Return a backing for a local path or a URL. Does no network I/O.

    * A plain path or a ``file://`` URL gives a :class:`LocalFileBacking`
      (opened at once); the only option accepted is ``writable``.
    * An ``http://`` or ``https://`` URL gives an :class:`HttpBacking`
      (aiohttp directly, a session of its own) when the only option given, if
      any, is ``headers``. With any other option it goes through fsspec like
      the URLs below and gives an :class:`FsspecBacking` over fsspec's HTTP
      filesystem, with every option (``headers`` included) passed on.
    * Any other URL goes through ``fsspec.core.url_to_fs(url,
      **storage_options)`` and gives an :class:`FsspecBacking`. Async-capable
      protocols (``http``, ``https``, ``s3``...) are created with
      ``asynchronous=True`` and ``skip_instance_cache=True``: the backing then
      owns a private filesystem whose client session binds to the loop the
      backing is first used on, and :meth:`FsspecBacking.aclose` closes it.
      ``readonly`` and ``block_size_hint`` are taken out of
      ``storage_options`` and passed to :class:`FsspecBacking`.

    Args:
        url_or_path: A path, or a URL such as ``http://host/x`` or
            ``s3://bucket/key``.
        **storage_options: Options for the filesystem (e.g.
            ``endpoint_url``, ``key``, ``secret`` for S3; ``headers`` for
            HTTP).

    Returns:
        The backing.

    Raises:
        TypeError: ``url_or_path`` is not a str.
        ValueError: Empty or malformed URL, or an unknown protocol; the
            message names the URL.
        ImportError: The protocol needs a package that is not installed.
        FileNotFoundError: A local file does not exist.
    """
    if not isinstance(url_or_path, str):
        raise TypeError(f"url_or_path must be a str, got {url_or_path!r}")
    if not url_or_path or "\x00" in url_or_path:
        raise ValueError(f"not a path or URL: {url_or_path!r}")
    scheme, sep, _rest = url_or_path.partition("://")
    if not sep:
        return _open_local(url_or_path, url_or_path, storage_options)
    if scheme.lower() in ("file", "local"):
        parts = urllib.parse.urlsplit(url_or_path)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"malformed file URL: {url_or_path!r}")
        path = urllib.parse.unquote(parts.path)
        return _open_local(url_or_path, path, storage_options)
    chained = "::" in url_or_path
    if not chained:
        if not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
            raise ValueError(f"malformed URL: {url_or_path!r}")
        protocol = scheme.lower()
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except ValueError as exc:
            raise ValueError(
                f"unknown protocol {protocol!r} in URL {url_or_path!r}"
            ) from exc
        except ImportError as exc:
            raise ImportError(
                f"the protocol {protocol!r} of {url_or_path!r} needs a package "
                f"that is not installed: {exc}"
            ) from exc
        parts = urllib.parse.urlsplit(url_or_path)
        if protocol in _NEEDS_NETLOC and not parts.netloc:
            raise ValueError(f"malformed URL (no host or bucket): {url_or_path!r}")
        if protocol in ("s3", "s3a", "gs", "gcs") and parts.path.strip("/") == "":
            raise ValueError(f"malformed URL (no object key): {url_or_path!r}")
        if protocol in ("http", "https") and storage_options.keys() <= {"headers"}:
            headers = storage_options.get("headers")
            return HttpBacking(
                url_or_path,
                headers=typing.cast("Mapping[str, str] | None", headers),
            )
        if getattr(cls, "async_impl", False):
            storage_options.setdefault("asynchronous", True)
            storage_options.setdefault("skip_instance_cache", True)
    readonly = storage_options.pop("readonly", None)
    hint = storage_options.pop("block_size_hint", None)
    if readonly is not None and not isinstance(readonly, bool):
        raise TypeError(f"readonly must be a bool or None, got {readonly!r}")
    if hint is not None and not is_int(hint):
        raise TypeError(f"block_size_hint must be an int or None, got {hint!r}")
    try:
        fs, path = fsspec.core.url_to_fs(url_or_path, **storage_options)
    except ValueError as exc:
        raise ValueError(f"cannot open {url_or_path!r}: {exc}") from exc
    backing = FsspecBacking(
        fs,
        path,
        readonly=readonly,
        block_size_hint=typing.cast("int | None", hint),
    )
    backing._owns_fs = True
    return backing


def _open_local(url: str, path: str, options: dict[str, object]) -> LocalFileBacking:
    writable = options.pop("writable", False)
    if options:
        raise ValueError(
            f"unsupported options for local file {url!r}: {sorted(options)}"
        )
    if not isinstance(writable, bool):
        raise TypeError(f"writable must be a bool, got {writable!r}")
    return LocalFileBacking(path, writable=writable)


# ---------------------------------------------------------------------------
# Fault injection.
# ---------------------------------------------------------------------------

_FAULT_OPS: Final[frozenset[str]] = frozenset(
    {"size", "read_into", "write_from", "truncate", "version"}
)


@typing.final
class FaultInjectingBacking:
    """Wrap a backing and inject latency, errors and short reads.

    Every call (except :meth:`aclose`) first draws from a
    ``random.Random(seed)``, in call order and before awaiting anything:
    one draw for the latency jitter, then one for the error decision. The
    same seed and the same sequence of calls therefore give the same
    latencies and the same errors. The call then sleeps
    ``max(0, latency + uniform(-jitter, jitter))`` seconds (always yielding
    to the loop at least once), then raises ``error_factory()`` (default: a
    transient ``ConnectionError``) if the error draw fell below
    ``error_rate`` and the method is in ``ops``.

    Reads overlapping any ``(start, end)`` of :attr:`fail_ranges` raise a
    ``ConnectionError`` (or ``error_factory()``); the list may be changed
    at any time, e.g. cleared to let the storage "recover". With
    ``short_reads`` each read asks the inner backing for half of what was
    asked (at least one byte), so it is short but never empty mid-file.

    Attributes:
        inner: The wrapped backing.
        readonly: The inner backing's.
        latency: Seconds slept per call (may be changed at runtime).
        jitter: Half-width of the uniform jitter added to ``latency``.
        error_rate: Probability of an injected error per call.
        fail_ranges: ``[start, end)`` byte ranges whose reads fail.
        short_reads: Whether reads are cut short.
        ops: Method names subject to ``error_rate``.
        calls: Calls made (every method but ``aclose``).
        reads: ``read_into`` calls made, including those that failed.
        bytes_read: Bytes returned by successful reads.
        errors_injected: Errors raised on purpose.

    Concurrency:
        task-safe as far as the inner backing is.
    """

    def __init__(
        self,
        inner: Backing,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        fail_ranges: Iterable[tuple[int, int]] = (),
        short_reads: bool = False,
        error_factory: Callable[[], BaseException] | None = None,
        ops: Iterable[str] | None = None,
    ) -> None:
        """Create the wrapper.

        Args:
            inner: The backing to wrap.
            latency: Seconds to sleep before each call (``>= 0``).
            jitter: Up to this many seconds more or less (``>= 0``).
            error_rate: Probability in ``[0, 1]`` of an injected error.
            seed: Seed of the random sequence.
            fail_ranges: Byte ranges ``(start, end)`` whose reads fail.
            short_reads: Return fewer bytes than asked.
            error_factory: Makes the injected exception; default
                ``ConnectionError``.
            ops: Methods subject to ``error_rate``; default all but
                ``aclose``.

        Raises:
            ValueError: A parameter is out of range.
        """
        for name, value in (("latency", latency), ("jitter", jitter)):
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not _is_number(error_rate) or not 0 <= error_rate <= 1:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
        self.inner = inner
        self.readonly = inner.readonly
        self.latency = float(latency)
        self.jitter = float(jitter)
        self.error_rate = float(error_rate)
        self.fail_ranges: list[tuple[int, int]] = [_check_range(r) for r in fail_ranges]
        self.short_reads = bool(short_reads)
        self.ops = _FAULT_OPS if ops is None else frozenset(ops)
        if not self.ops <= _FAULT_OPS:
            raise ValueError(f"unknown ops: {sorted(self.ops - _FAULT_OPS)}")
        self._error_factory = error_factory
        self._rng = random.Random(seed)
        self.calls = 0
        self.reads = 0
        self.bytes_read = 0
        self.errors_injected = 0

    def __repr__(self) -> str:
        return f"FaultInjectingBacking({self.inner!r})"

    def _make_error(self, message: str) -> BaseException:
        self.errors_injected += 1
        if self._error_factory is not None:
            return self._error_factory()
        return ConnectionError(errno.ECONNRESET, message)

    async def _enter(self, op: str) -> None:
        self.calls += 1
        delay = self.latency + self._rng.uniform(-self.jitter, self.jitter)
        fail = self._rng.random() < self.error_rate
        await asyncio.sleep(max(0.0, delay))
        if fail and op in self.ops:
            raise self._make_error(f"injected error in {op} (call {self.calls})")

    async def size(self) -> int:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        await self._enter("size")
        return await self.inner.size()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Forward to the inner backing, maybe failing or cutting it short.

        Returns:
            Bytes read.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        self.reads += 1
        await self._enter("read_into")
        view = _as_view(buf, writable=True)
        end = offset + len(view)
        for start, stop in list(self.fail_ranges):
            if start < end and offset < stop and len(view) > 0:
                raise self._make_error(
                    f"injected failure of read [{offset}, {end}) "
                    f"overlapping [{start}, {stop})"
                )
        if self.short_reads and len(view) > 1:
            view = view[: len(view) // 2]
        n = await self.inner.read_into(offset, view)
        self.bytes_read += n
        return n

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Forward to the inner backing after the injected faults.

        Returns:
            ``len(data)``.

        Raises:
            ConnectionError: An injected error.
            PermissionError: The inner backing is read-only.
            OSError: The inner backing's error.
        """
        await self._enter("write_from")
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            PermissionError: The inner backing is read-only.
            OSError: The inner backing's error.
        """
        await self._enter("truncate")
        await self.inner.truncate(size)

    async def version(self) -> str | None:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        await self._enter("version")
        return await self.inner.version()

    async def aclose(self) -> None:
        """Close the inner backing. Idempotent if the inner one is."""
        await self.inner.aclose()


def _check_range(r: object) -> tuple[int, int]:
    if (
        not isinstance(r, tuple | list)
        or len(r) != 2
        or not all(is_int(x) for x in r)
        or not 0 <= r[0] <= r[1]
    ):
        raise ValueError(
            f"fail range must be (start, end) with 0 <= start <= end, got {r!r}"
        )
    return (int(r[0]), int(r[1]))
