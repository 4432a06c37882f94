"""A read-only backing on one HTTP(S) URL, spoken to with aiohttp directly.

The only backing module that imports aiohttp and yarl;
:func:`~aiomemmap.open_backing` loads it only for an ``http(s)`` URL.
"""

from __future__ import annotations

import asyncio
import errno
import os
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
import multidict
import yarl

from aiomemmap._core.errors import ClosedError, StaleVersionError, WrongLoopError
from aiomemmap._core.pages import is_int
from aiomemmap.backings.base import (
    check_offset,
    check_size,
    check_timeout,
    writable_byte_view,
)
from aiomemmap.backings.http_wire import WireAnswer, WirePool, WireUnsupported

__all__ = ["HttpBacking"]


# Statuses that mean "the object is not there" and "you may not read it".
_NOT_FOUND_STATUSES: Final[frozenset[int]] = frozenset({404, 410})
_FORBIDDEN_STATUSES: Final[frozenset[int]] = frozenset({401, 403})
# Statuses a server uses to refuse HEAD; the size is then asked with a GET.
_HEAD_REFUSED_STATUSES: Final[frozenset[int]] = frozenset({405, 501})
# What to do about a backing used from another event loop.
_LOOP_ADVICE: Final[str] = (
    "An HttpBacking's connections belong to the loop of its first call: open "
    "one backing per event loop, or read through aiomemmap.open() or an "
    "EngineThread, whose loop outlives each caller's."
)
# The default bound, in seconds, on each wait for the server.
_DEFAULT_TIMEOUT: Final[float] = 60.0


def _client_timeout(seconds: float | None) -> aiohttp.ClientTimeout:
    """No bound on a whole (possibly large) answer, but on every wait in it.

    Connecting and each wait for more of the answer (its headers, the next
    bytes of its body) are bounded; waiting for a free connection of the
    pool is not.
    """
    return aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=seconds, sock_read=seconds
    )


def _opaque(etag: str) -> str:
    """Return an entity tag without its weakness mark, for weak comparison."""
    return etag[2:] if etag.startswith("W/") else etag


class _Headers(typing.Protocol):
    """An answer's header fields, looked up by name in any case."""

    def get(self, name: str, /) -> str | None: ...


@typing.final
class _Pin:
    """One version of the object, as its answers describe it.

    Attributes:
        etag: The ``ETag`` as sent (``W/`` prefix kept), or ``None``.
        modified: The ``Last-Modified`` date as sent, or ``None``.
        size: The object's size, or ``None`` if the answer did not say.
    """

    __slots__ = ("etag", "modified", "size")

    def __init__(
        self, etag: str | None, modified: str | None, size: int | None
    ) -> None:
        self.etag = etag
        self.modified = modified
        self.size = size

    @classmethod
    def of(cls, headers: _Headers, size: int | None) -> _Pin:
        """The version an answer with ``headers`` (and ``size``) describes."""
        return cls(
            headers.get("ETag") or None, headers.get("Last-Modified") or None, size
        )

    @property
    def token(self) -> str | None:
        """The version string :meth:`HttpBacking.version` returns."""
        if self.etag:
            return f"etag:{self.etag}"
        if self.modified:
            return f"last-modified:{self.modified}"
        return None

    def describe(self) -> str:
        token = self.token
        return f"{token or 'no validator'}, size {self.size}"

    def conditions(self) -> dict[str, str]:
        """Request headers that make the server refuse another version.

        ``If-Match`` with a strong ETag; never with a weak one, which
        ``If-Match`` (a strong comparison) would always refuse. Without a
        strong ETag, ``If-Unmodified-Since`` with the modification date.
        """
        if self.etag and not self.etag.startswith("W/"):
            return {"If-Match": self.etag}
        if self.modified:
            return {"If-Unmodified-Since": self.modified}
        return {}

    def differs(self, other: _Pin) -> bool:
        """Whether ``other`` is known to be another version than this one.

        ETags are compared weakly (as equal opaque tags); the date only when
        there is no ETag to compare; sizes when both are known.
        """
        if self.etag and other.etag:
            if _opaque(self.etag) != _opaque(other.etag):
                return True
        elif self.modified and other.modified and self.modified != other.modified:
            return True
        return (
            self.size is not None and other.size is not None and self.size != other.size
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
    is copied into the caller's buffer piece by piece as it arrives: no
    listing cache, no whole-body ``bytes`` object, no thread hop. For an
    ``http`` URL (and an owned session) the ranged ``GET``s go over a lean
    pool of keep-alive HTTP/1.1 connections
    (:mod:`~aiomemmap.backings.http_wire`), which costs about half the CPU
    per request of aiohttp's client; an answer it does not handle (a
    redirect, a body in a transfer coding) makes the backing use aiohttp
    for its reads from then on. ``HEAD`` requests, ``https`` and a caller's
    session always use aiohttp.

    :meth:`version` sends a ``HEAD``, and so does :meth:`size`, except
    right after :meth:`version`, whose answer it reuses (so learning both
    costs one request); a server that refuses ``HEAD`` (405, 501) is asked
    with ``GET`` of ``Range: bytes=0-0`` instead. The version is the
    ``ETag``, else ``Last-Modified``, else ``None``.
    :meth:`read_into_file` lands a range's bytes in a file descriptor
    (``pwrite``) rather than a buffer. :meth:`read_tail` learns the size and
    version and reads the object's last bytes in one ``GET`` (what a cached
    file opens with).

    Versions: reads are tied to the version pinned by the latest
    :meth:`version` (or, before any, by the first :meth:`size` or
    :meth:`read_into`): its ``ETag``, ``Last-Modified`` date and size.
    Each ranged ``GET`` carries ``If-Match`` with a strong ETag, so that a
    server answers ``412 Precondition Failed`` rather than bytes of another
    version; with only a weak ETag (which ``If-Match``, a strong
    comparison, would always refuse) or only a date, it carries
    ``If-Unmodified-Since`` with the date, if there is one. ``If-Range`` is
    not used: a server answers its mismatch with the whole new object, to
    be downloaded and thrown away, where ``If-Match`` answers with a bodyless
    412. Every answer is checked as well, for servers that ignore the
    conditions: an ``ETag`` (compared weakly) or, without one, a
    ``Last-Modified`` other than the pinned one, or a size (the
    ``Content-Range`` total, or a 200's ``Content-Length``) other than the
    pinned one, is another version. A 412, another version, or a 416 for a
    read that starts before the pinned end (the object shrank) raises
    :class:`~aiomemmap._core.errors.StaleVersionError`; no byte of the
    answer reaches ``buf``. A server that sends neither ETag nor
    ``Last-Modified`` is checked by size alone: a same-size change to such
    a server goes unseen.

    Status handling: 206 is checked against the asked start; 416 (a read
    starting at or past the pinned end) reads 0 bytes; a 200 (the server
    ignored ``Range``) is accepted only for a read at offset 0, of which the
    first ``len(buf)`` bytes are taken and the rest dropped with the
    connection. 404 and 410 raise ``FileNotFoundError``, 401 and 403
    ``PermissionError`` (each chained to aiohttp's ``ClientResponseError``);
    any other error status raises ``ClientResponseError`` itself, which
    :func:`~aiomemmap.backings.base.is_transient` classifies (5xx, 408, 429
    transient). Requests ask for ``Accept-Encoding: identity`` so that byte
    ranges address the object's bytes, never a compressed form of them.

    Timeouts: every request, through an owned session or a caller's, bounds
    each wait for the server (connecting, then each wait for more of the
    answer) by ``timeout`` seconds, 60 by default; a whole answer that keeps
    coming is not cut short. Past the bound the call raises
    ``TimeoutError`` (``ETIMEDOUT``, transient) naming the backing.

    Sessions: without ``session=``, the backing owns one
    ``aiohttp.ClientSession`` with a keep-alive ``TCPConnector`` of
    ``connections`` connections, created on the first call and bound to the
    running loop of that call; :meth:`aclose` closes it. A caller-supplied
    session is used as is and never closed. Either way the backing is bound
    to the loop of its first call and raises ``WrongLoopError`` (a
    ``RuntimeError``) from any other.

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
        timeout: float | None = _DEFAULT_TIMEOUT,
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
            timeout: Seconds any one wait for the server may last;
                ``None`` waits as long as it takes.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``url`` is not an HTTP(S) URL with a host,
                ``connections < 1``, or ``timeout`` is not ``None`` or a
                number ``> 0``.
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
        self._timeout = check_timeout(timeout)
        self._client_timeout = _client_timeout(self._timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._pin: _Pin | None = None
        self._conditions: dict[str, str] = {}
        # The size the latest version() learnt, for the size() that follows
        # it (one request to learn both); any later size() asks again.
        self._answered_size: int | None = None
        self._wire: WirePool | None = None
        self._wire_refused = False

    def __repr__(self) -> str:
        return f"HttpBacking({self.url!r}, closed={self._closed})"

    def _session_here(self) -> aiohttp.ClientSession:
        """Return the session for a call on the running loop, creating it once.

        Raises:
            ClosedError: The backing was closed.
            WrongLoopError: The backing is bound to another event loop.
        """
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise WrongLoopError.between(repr(self), self._loop, loop, _LOOP_ADVICE)
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout,
                auto_decompress=False,
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
        return self._status_error(resp.status, cause)

    def _wire_error(
        self, answer: WireAnswer, sent: Mapping[str, str], what: str
    ) -> Exception:
        """Return the exception for an error status of a wire answer."""
        request_info = aiohttp.RequestInfo(
            self._target,
            "GET",
            multidict.CIMultiDictProxy(multidict.CIMultiDict(sent)),
            self._target,
        )
        cause = aiohttp.ClientResponseError(
            request_info,
            (),
            status=answer.status,
            message=f"{what} {self.url}: {answer.reason}".rstrip(": "),
            headers=multidict.CIMultiDictProxy(multidict.CIMultiDict(answer.headers)),
        )
        return self._status_error(answer.status, cause)

    def _status_error(
        self, status: int, cause: aiohttp.ClientResponseError
    ) -> Exception:
        """Return the exception for HTTP ``status``, chained to ``cause``."""
        if status in _NOT_FOUND_STATUSES:
            exc: Exception = FileNotFoundError(
                errno.ENOENT, f"HTTP {status} for {self.url!r}", self.url
            )
        elif status in _FORBIDDEN_STATUSES:
            exc = PermissionError(
                errno.EACCES, f"HTTP {status} for {self.url!r}", self.url
            )
        else:
            return cause
        exc.__cause__ = cause
        return exc

    def _timed_out(self, what: str, exc: BaseException) -> TimeoutError:
        err = TimeoutError(
            errno.ETIMEDOUT,
            f"{self!r}: {what} got no answer within {self._timeout:g} s",
        )
        err.__cause__ = exc
        return err

    def _set_pin(self, pin: _Pin) -> None:
        self._pin = pin
        self._conditions = pin.conditions()

    async def _probe(self) -> tuple[int, _Pin]:
        """Return the object's current size and version.

        A ``HEAD``, or a one-byte ``GET`` if ``HEAD`` is refused.
        """
        session = self._session_here()
        try:
            async with session.request(
                "HEAD",
                self._target,
                headers=self._headers,
                allow_redirects=True,
                timeout=self._client_timeout,
            ) as resp:
                if resp.status < 300:
                    length = resp.content_length
                    if length is not None and length >= 0:
                        return length, _Pin.of(resp.headers, length)
                elif resp.status not in _HEAD_REFUSED_STATUSES:
                    raise self._error(resp, "HEAD")
            return await self._probe_with_get(session)
        except TimeoutError as exc:
            raise self._timed_out("HEAD", exc) from exc

    async def _probe_with_get(self, session: aiohttp.ClientSession) -> tuple[int, _Pin]:
        headers = {**self._headers, "Range": "bytes=0-0"}
        async with session.get(
            self._target, headers=headers, timeout=self._client_timeout
        ) as resp:
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
            pin = _Pin.of(resp.headers, size)
            # Drop the body (one byte, or all of it if Range was ignored).
            resp.close()
            return size, pin

    async def size(self) -> int:
        """Return the object's size from a ``HEAD`` (or a one-byte ``GET``).

        Pins the version seen if none is pinned yet. The first call after
        :meth:`version` returns the size that :meth:`version`'s request
        learnt, without a request of its own: asking for the version and
        then the size (as a cached file does when it opens) costs one
        request, and the two describe the same version.

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            TimeoutError: The server did not answer within ``timeout``.
            OSError: The server reports no size, or the connection failed.
            ClosedError: The backing was closed.
            WrongLoopError: Called from another event loop than the first call.
        """
        size = self._answered_size
        if size is not None:
            self._answered_size = None
            return size
        size, pin = await self._probe()
        if self._pin is None:
            self._set_pin(pin)
        return size

    async def version(self) -> str | None:
        """Return ``"etag:<ETag>"``, else ``"last-modified:<date>"``, else ``None``.

        Pins the version returned (with its size): later reads are tied to
        it.

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            TimeoutError: The server did not answer within ``timeout``.
            OSError: The connection failed.
            ClosedError: The backing was closed.
            WrongLoopError: Called from another event loop than the first call.
        """
        size, pin = await self._probe()
        self._set_pin(pin)
        self._answered_size = size
        return pin.token

    async def read_tail(self, length: int) -> tuple[int, str | None, int, bytes]:
        """Learn the object's size and version, and read its last bytes.

        One ``GET`` with a suffix range (``Range: bytes=-length``): its
        ``Content-Range`` tells the size, its validators the version, and
        its body is the object's last ``length`` bytes (all of an object no
        larger). It does what :meth:`version` then :meth:`size` do (and
        pins the version the same way) in one round trip, and the bytes
        come with it: the footer of a table file, or the whole of a small
        object. A server that ignores the range sends the whole object: it
        is kept if it is no longer than ``length``, and otherwise only its
        size and version are taken.

        Args:
            length: How many bytes of the end to read (``> 0``).

        Returns:
            ``(size, version, start, data)``: the size, the version string
            :meth:`version` would return, and ``data``, the object's bytes
            from offset ``start`` (``data`` may be empty).

        Raises:
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            TimeoutError: The server did not answer within ``timeout``.
            OSError: ``EIO`` if the answer does not tell the size or its
                body does not match its range; connection failures.
            ClosedError: The backing was closed.
            RuntimeError: Called from another event loop than the first call.

        Cancellation:
            The response is closed with its connection; nothing is pinned.
        """
        length = check_size(length)
        if length == 0:
            raise ValueError("length must be > 0")
        session = self._session_here()
        headers = {**self._headers, "Range": f"bytes=-{length}"}
        try:
            async with session.get(
                self._target, headers=headers, timeout=self._client_timeout
            ) as resp:
                size, start, data = await self._tail_answer(resp, length)
                pin = _Pin.of(resp.headers, size)
        except TimeoutError as exc:
            raise self._timed_out("GET of the tail", exc) from exc
        self._set_pin(pin)
        return size, pin.token, start, data

    async def _tail_answer(
        self, resp: aiohttp.ClientResponse, length: int
    ) -> tuple[int, int, bytes]:
        """``(size, start, data)`` from the answer to a suffix-range ``GET``."""
        status = resp.status
        try:
            if status == 206 or status == 416:
                first, total = _parse_content_range(resp.headers.get("Content-Range"))
                if total is None:
                    raise ValueError("no total length in Content-Range")
                if status == 416 or total == 0:
                    return total, total, b""
                if first is None:
                    raise ValueError("no range in Content-Range")
                data = await resp.read()
                if first + len(data) != total or len(data) > length:
                    raise ValueError(
                        f"a body of {len(data)} bytes for a range from {first} "
                        f"of an object of {total}"
                    )
                return total, first, data
            if status == 200:
                size = resp.content_length
                if size is None:
                    raise ValueError("no Content-Length")
                if size > length:
                    resp.close()
                    return size, size, b""
                data = await resp.read()
                if len(data) != size:
                    raise ValueError(
                        f"{len(data)} bytes for a Content-Length of {size}"
                    )
                return size, 0, data
        except ValueError as exc:
            resp.close()
            raise OSError(
                errno.EIO, f"{self!r}: the server's answer to a tail read: {exc}"
            ) from exc
        raise self._error(resp, "GET")

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read ``[offset, offset + len(buf))`` with one ranged ``GET``.

        The request carries the pinned version's condition (see the class
        docstring) and the answer is checked against it.

        Returns:
            Bytes copied into ``buf``: short if the body ended early (the
            object's end, or a cut connection;
            :func:`~aiomemmap.backings.base.read_fully` goes on), 0 at or
            past the pinned end.

        Raises:
            StaleVersionError: The server refused the condition (412) or
                answered with another version, or the object shrank below
                ``offset``; ``buf`` is not touched.
            FileNotFoundError: HTTP 404 or 410.
            PermissionError: HTTP 401 or 403.
            aiohttp.ClientResponseError: Another error status.
            TimeoutError: The server did not answer within ``timeout``.
            OSError: ``EIO`` if the server answered another range than asked,
                or ignored ``Range`` for a read not at offset 0; other
                connection failures.
            ClosedError: The backing was closed.
            WrongLoopError: Called from another event loop than the first call.

        Cancellation:
            The response is closed with its connection, which is therefore
            never returned to the pool half read; ``buf`` may be partly
            filled.
        """
        if type(offset) is not int or offset < 0:
            offset = check_offset(offset)
        view = writable_byte_view(buf)

        def land(chunk: bytes | memoryview, done: int) -> None:
            view[done : done + len(chunk)] = chunk

        return await self._get(offset, len(view), land)

    async def read_into_file(
        self, offset: int, length: int, fd: int, file_offset: int
    ) -> int:
        """Read ``[offset, offset + length)`` into file ``fd`` at ``file_offset``.

        The same request, checks and errors as :meth:`read_into`, but each
        piece of the body is written to ``fd`` with ``os.pwrite`` as it
        arrives instead of being copied into a buffer: for a memfd, the
        kernel then allocates and fills its pages in one step, about twice
        as fast as a copy into fresh pages of a mapping of it.

        Args:
            offset: First byte of the object to read.
            length: How many bytes to read (``>= 0``).
            fd: A file descriptor open for writing that accepts ``pwrite``.
            file_offset: Where in ``fd`` the byte at ``offset`` goes.

        Returns:
            Bytes written: short if the body ended early, 0 at or past the
            pinned end.

        Raises:
            The errors of :meth:`read_into`; ``OSError`` from ``pwrite``.

        Postconditions:
            ``fd`` holds the object's bytes ``[offset, offset + result)`` at
            ``[file_offset, file_offset + result)``; nothing else of ``fd``
            was written.

        Cancellation:
            As :meth:`read_into`; ``fd`` may be partly written.
        """
        if type(offset) is not int or offset < 0:
            offset = check_offset(offset)
        length = check_size(length)
        file_offset = check_offset(file_offset)
        pwrite = os.pwrite

        def land(chunk: bytes | memoryview, done: int) -> None:
            at = file_offset + done
            while True:
                n = pwrite(fd, chunk, at)
                if n == len(chunk):
                    return
                if n <= 0:
                    raise OSError(errno.EIO, f"{self!r}: pwrite wrote nothing")
                chunk, at = memoryview(chunk)[n:], at + n

        return await self._get(offset, length, land)

    async def _get(
        self, offset: int, want: int, land: Callable[[bytes | memoryview, int], None]
    ) -> int:
        """Send one ranged ``GET`` and hand its body to ``land`` piece by piece.

        ``land(piece, done)`` receives each piece of the body with the count
        of bytes landed before it; nothing is landed before the answer has
        been checked against the pinned version.
        """
        session = self._session_here()
        if want == 0:
            return 0
        pin = self._pin
        headers = {
            **self._headers,
            **self._conditions,
            "Range": f"bytes={offset}-{offset + want - 1}",
        }
        try:
            wire = self._wire_here()
            if wire is not None:
                try:
                    return await self._get_on_wire(
                        wire, headers, pin, offset, want, land
                    )
                except WireUnsupported:
                    # A redirect or a coded body: the general client follows
                    # and decodes them, for this object from now on.
                    self._wire_refused = True
            async with session.get(
                self._target, headers=headers, timeout=self._client_timeout
            ) as resp:
                return await self._receive(resp, pin, offset, want, land)
        except TimeoutError as exc:
            raise self._timed_out(f"GET at {offset}", exc) from exc

    def _wire_here(self) -> WirePool | None:
        """The wire pool for ranged reads, created once; ``None`` if unused.

        Used for ``http`` URLs with an owned session; unused with a caller's
        session (whose settings then apply to every request), for ``https``
        (aiohttp's TLS handling applies) and once an answer needed the
        general client.
        """
        if not self._owns_session or self._wire_refused:
            return None
        wire = self._wire
        if wire is None:
            target = self._target
            host, port = target.raw_host, target.port
            if target.scheme != "http" or host is None or port is None:
                self._wire_refused = True
                return None
            wire = WirePool(
                host, port, None, limit=self._connections, timeout=self._timeout
            )
            self._wire = wire
        return wire

    async def _get_on_wire(
        self,
        wire: WirePool,
        headers: dict[str, str],
        pin: _Pin | None,
        offset: int,
        want: int,
        land: Callable[[bytes | memoryview, int], None],
    ) -> int:
        def check(answer: WireAnswer) -> int:
            if answer.status >= 300 and answer.status not in (412, 416):
                raise self._wire_error(answer, headers, "GET")
            return self._judge(
                answer.status, answer, answer.content_length, pin, offset, want
            )

        _answer, done = await wire.get(self._target.raw_path_qs, headers, check, land)
        return done

    def _judge(
        self,
        status: int,
        headers: _Headers,
        content_length: int | None,
        pin: _Pin | None,
        offset: int,
        want: int,
    ) -> int:
        """Check the head of an answer to a ranged ``GET`` of ``want`` bytes.

        Returns:
            How many bytes of the body to land: ``want``, or 0 for a read at
            or past the end (416).

        Raises:
            StaleVersionError: A 412, another version, or a 416 before the
                pinned end.
            OSError: ``EIO`` for another range than asked, a range answer
                longer than asked, or a whole object for a read not at
                offset 0.
        """
        if status == 412:
            raise self._stale(pin, _Pin.of(headers, None), offset, "refused (412)")
        if status == 416:
            try:
                _first, total = _parse_content_range(headers.get("Content-Range"))
            except ValueError:
                total = None
            ref = pin if pin is not None else self._pin
            if ref is not None and ref.size is not None and offset < ref.size:
                raise self._stale(ref, _Pin.of(headers, total), offset, "shrank")
            self._check_version(pin, _Pin.of(headers, total), offset)
            return 0
        if status == 206:
            try:
                first, total = _parse_content_range(headers.get("Content-Range"))
            except ValueError as exc:
                raise OSError(errno.EIO, f"{self!r}: {exc}") from exc
            if first != offset:
                raise OSError(
                    errno.EIO,
                    f"{self!r}: asked for bytes from {offset}, the server "
                    f"sent a range from {first}",
                )
            if content_length is not None and content_length > want:
                raise self._sent_more(want, offset)
        else:
            total = content_length
            if offset != 0:
                if pin is not None and pin.differs(_Pin.of(headers, total)):
                    raise self._stale(pin, _Pin.of(headers, total), offset, "changed")
                raise OSError(
                    errno.EIO,
                    f"{self!r}: the server ignored the byte range of a read at "
                    f"{offset} and sent the whole object",
                )
        self._check_version(pin, _Pin.of(headers, total), offset)
        return want

    def _sent_more(self, want: int, offset: int) -> OSError:
        return OSError(
            errno.EIO,
            f"{self!r}: asked for {want} bytes at {offset}, the server sent more",
        )

    async def _receive(
        self,
        resp: aiohttp.ClientResponse,
        pin: _Pin | None,
        offset: int,
        want: int,
        land: Callable[[bytes | memoryview, int], None],
    ) -> int:
        """Check an aiohttp answer to a ranged ``GET`` and land its body."""
        status = resp.status
        if status != 206 and status != 200 and status != 412 and status != 416:
            raise self._error(resp, "GET")
        try:
            want = self._judge(
                status, resp.headers, resp.content_length, pin, offset, want
            )
        except BaseException:
            resp.close()
            raise
        if want == 0:
            resp.release()
            return 0
        done = 0
        try:
            content = resp.content
            # One piece as it came off the connection at a time: readany()
            # would join whatever is buffered into a new bytes first.
            readchunk = content.readchunk
            while done < want:
                chunk, end_of_http_chunk = await readchunk()
                if not chunk:
                    if end_of_http_chunk:
                        continue
                    break
                n = len(chunk)
                if n > want - done:
                    if status == 206:
                        raise self._sent_more(want, offset)
                    n = want - done
                    land(memoryview(chunk)[:n], done)
                else:
                    land(chunk, done)
                done += n
            # A 206 body must end here; anything more is a broken range.
            if (
                status == 206
                and done == want
                and not content.at_eof()
                and await content.readany()
            ):
                raise self._sent_more(want, offset)
        except BaseException:
            resp.close()
            raise
        if status == 200 and not content.at_eof():
            resp.close()
        return done

    def _check_version(self, pin: _Pin | None, seen: _Pin, offset: int) -> None:
        """Raise if ``seen`` is not the pinned version; pin it if none is.

        ``pin`` is the version the request was tied to, ``None`` if none
        was pinned when it was sent; the check is then against whatever a
        concurrent first call has pinned since.

        Raises:
            StaleVersionError: ``seen`` is another version.
        """
        ref = pin if pin is not None else self._pin
        if ref is None:
            if seen.etag or seen.modified or seen.size is not None:
                self._set_pin(seen)
        elif ref.differs(seen):
            raise self._stale(ref, seen, offset, "changed")

    def _stale(
        self, pin: _Pin | None, seen: _Pin, offset: int, how: str
    ) -> StaleVersionError:
        expected = None if pin is None else pin.describe()
        said = seen.etag or seen.modified or seen.size is not None
        found = seen.describe() if said else None
        return StaleVersionError(
            f"{self!r}: the object {how} under a read at {offset}: "
            f"pinned {expected}, the server answered {found or 'without saying'}",
            expected=None if pin is None else pin.token,
            found=seen.token,
        )

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
        """Close the owned session and connections, if any. Idempotent.

        A caller-supplied session is left open.

        Raises:
            WrongLoopError: Called from another event loop than the one the
                owned session lives on, while that loop still exists (the
                backing stays open). Once that loop is closed, closing from
                another one just marks the backing closed.
        """
        if self._closed:
            return
        session = self._session
        if self._owns_session and session is not None:
            bound, loop = self._loop, asyncio.get_running_loop()
            if bound is not None and bound is not loop:
                if not bound.is_closed():
                    raise WrongLoopError.between(repr(self), bound, loop, _LOOP_ADVICE)
                # Its loop has ended, and with it every connection: there is
                # nothing left to close on it.
                self._closed = True
                self._session = None
                self._wire = None
                return
            self._closed = True
            self._session = None
            wire, self._wire = self._wire, None
            if wire is not None:
                wire.close()
            await session.close()
        self._closed = True
