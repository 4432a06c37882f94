"""A small HTTP server of in-memory objects with byte-range support.

:class:`RangeHTTPServer` serves named byte strings on 127.0.0.1 for tests,
benchmarks, the demo and the examples: ``GET`` and ``HEAD``, single
``Range: bytes=`` requests (``206`` with ``Content-Range``, ``416`` past the
end), ``ETag``, ``Last-Modified``, ``Content-Length`` and ``Accept-Ranges``,
the conditions ``If-Match``, ``If-Unmodified-Since`` and ``If-Range`` as
RFC 9110 orders them, plus injected latency and server errors. It can also
play a less capable server: weak ETags or none, no ``Last-Modified``,
conditions ignored. Every request does a bounded amount of work: one lookup,
one optional sleep, one response.

It is a public tool, imported as
``from aiomemmap.tools.http_server import RangeHTTPServer`` (it needs
aiohttp, so ``import aiomemmap`` does not load it), for anyone who wants to
try an HTTP-backed :class:`~aiomemmap.CachedFile` without a real server.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
import typing
from datetime import datetime
from types import TracebackType

from aiohttp import web

from aiomemmap._core.pages import is_int

__all__ = ["RangeHTTPServer"]

_UNSATISFIABLE: typing.Final[tuple[int, int]] = (-1, -1)
_RANGE_RE: typing.Final = re.compile(r"^bytes=(\d*)-(\d*)$")
# The modification time of generation 0; each new version is a second later,
# so that versions are told apart by their HTTP dates (whole seconds).
_EPOCH: typing.Final[int] = 1_700_000_000
_ETAG_MODES: typing.Final[frozenset[str]] = frozenset({"strong", "weak", "none"})


@typing.final
class _Object:
    __slots__ = ("data", "etag", "modified")

    def __init__(self, data: bytes, generation: int) -> None:
        self.data = data
        # Derived from the bytes, as S3's is: the same bytes, the same tag.
        self.etag = f'"{hashlib.blake2b(data, digest_size=16).hexdigest()}"'
        self.modified = _EPOCH + generation


def _http_date(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _parse_http_date(value: str) -> int | None:
    try:
        when: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(when.timestamp())


def _strong_match(header: str, etag: str | None) -> bool:
    """Whether an ``If-Match``-style list names ``etag`` (strong comparison).

    A weak tag, on either side, never matches; ``*`` matches any object.
    """
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return True
        if etag is not None and not etag.startswith("W/") and tag == etag:
            return True
    return False


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or name.startswith("/"):
        raise ValueError(
            f"name must be a non-empty str not starting with '/': {name!r}"
        )
    return name


def _check_data(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes-like, got {type(data)!r}")
    return bytes(data)


@typing.final
class RangeHTTPServer:
    """An aiohttp server of named in-memory objects on 127.0.0.1.

    Use it as an async context manager::

        async with RangeHTTPServer() as srv:
            srv.add("blob", b"...")
            url = srv.url("blob")

    Every version of an object (each :meth:`add` or :meth:`replace`) has a
    ``Last-Modified`` date of its own, a second after the previous
    version's, and an ETag derived from its bytes (as S3's is): other bytes,
    another ETag; the same bytes served again, the same ETag.

    Attributes:
        latency: Seconds slept before answering each request; may be changed
            while the server runs (a large value makes a server that hangs).
        etags: ``"strong"`` (the default), ``"weak"`` (``W/``-prefixed, as a
            server that compresses or rewrites bodies sends) or ``"none"``.
        last_modified: Whether ``Last-Modified`` is sent.
        conditionals: Whether ``If-Match``, ``If-Unmodified-Since`` and
            ``If-Range`` are honoured; ``False`` plays a server that ignores
            them.
        requests: Requests answered (including injected failures).
        range_requests: Requests that carried a ``Range`` header.
        bytes_sent: Body bytes sent.
        precondition_failures: Requests answered 412.
        full_answers_to_if_range: Ranged requests answered in full (200)
            because their ``If-Range`` did not match.

    Concurrency:
        task-safe; objects may be added, replaced and removed while serving.
        Must be started, used and stopped on one event loop.
    """

    def __init__(self, *, port: int = 0, latency: float = 0.0) -> None:
        """Create the server (not yet listening).

        Args:
            port: TCP port on 127.0.0.1; 0 picks a free one.
            latency: Initial per-request latency in seconds.

        Raises:
            ValueError: ``port`` or ``latency`` out of range.
        """
        if not is_int(port) or not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        self.latency = float(latency)
        self._etags = "strong"
        self.last_modified = True
        self.conditionals = True
        self.requests = 0
        self.range_requests = 0
        self.bytes_sent = 0
        self.precondition_failures = 0
        self.full_answers_to_if_range = 0
        self._objects: dict[str, _Object] = {}
        self._generation = 0
        self._fail_count = 0
        self._fail_status = 503
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The port the server listens on.

        Raises:
            RuntimeError: The server is not running.
        """
        if self._bound_port is None:
            raise RuntimeError("RangeHTTPServer is not running")
        return self._bound_port

    def url(self, name: str) -> str:
        """Return the URL of object ``name``.

        Raises:
            RuntimeError: The server is not running.
        """
        return f"http://127.0.0.1:{self.port}/{_check_name(name)}"

    def _new_version(self, data: bytes) -> _Object:
        self._generation += 1
        return _Object(data, self._generation)

    def add(self, name: str, data: bytes | bytearray) -> None:
        """Serve ``data`` as ``name``.

        Raises:
            ValueError: ``name`` is already served or malformed.
        """
        name = _check_name(name)
        if name in self._objects:
            raise ValueError(f"object {name!r} already exists; use replace()")
        self._objects[name] = self._new_version(_check_data(data))

    def replace(self, name: str, data: bytes | bytearray) -> None:
        """Serve ``data`` as ``name`` from now on, as a new version.

        The new version has a later ``Last-Modified`` and, unless ``data``
        is what was served, a new ETag.

        Raises:
            KeyError: ``name`` is not served.
        """
        name = _check_name(name)
        if name not in self._objects:
            raise KeyError(name)
        self._objects[name] = self._new_version(_check_data(data))

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (later requests get 404).

        Raises:
            KeyError: ``name`` is not served.
        """
        del self._objects[_check_name(name)]

    def etag(self, name: str) -> str | None:
        """Return the current ETag of ``name`` as sent, or ``None`` if none is.

        Raises:
            KeyError: ``name`` is not served.
        """
        return self._etag_of(self._objects[_check_name(name)])

    def modified(self, name: str) -> str:
        """Return the ``Last-Modified`` date of ``name``'s current version.

        Raises:
            KeyError: ``name`` is not served.
        """
        return _http_date(self._objects[_check_name(name)].modified)

    @property
    def etags(self) -> str:
        """How ETags are sent: ``"strong"``, ``"weak"`` or ``"none"``.

        Raises:
            ValueError: Set to another value.
        """
        return self._etags

    @etags.setter
    def etags(self, mode: str) -> None:
        if mode not in _ETAG_MODES:
            raise ValueError(
                f"etags must be one of {sorted(_ETAG_MODES)}, got {mode!r}"
            )
        self._etags = mode

    def _etag_of(self, obj: _Object) -> str | None:
        if self._etags == "none":
            return None
        return obj.etag if self._etags == "strong" else f"W/{obj.etag}"

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` and no body.

        Args:
            n: How many requests fail; 0 cancels pending failures.
            status: An HTTP status in ``[400, 599]``.

        Raises:
            ValueError: ``n`` negative or ``status`` not an error status.
        """
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not is_int(status) or not 400 <= status <= 599:
            raise ValueError(f"status must be in [400, 599], got {status!r}")
        self._fail_count = n
        self._fail_status = status

    async def start(self) -> None:
        """Start listening on 127.0.0.1.

        Raises:
            RuntimeError: Already running.
            OSError: The port could not be bound.
        """
        if self._runner is not None:
            raise RuntimeError("RangeHTTPServer is already running")
        app = web.Application()
        app.router.add_route("GET", "/{name:.+}", self._handle)
        # HEAD is routed separately so it is counted and answered the same way.
        app.router.add_route("HEAD", "/{name:.+}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self._port)
            await site.start()
            self._bound_port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        runner, self._runner = self._runner, None
        self._bound_port = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> RangeHTTPServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        range_header = request.headers.get("Range")
        if range_header is not None:
            self.range_requests += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self._fail_count > 0:
            self._fail_count -= 1
            return web.Response(status=self._fail_status)
        obj = self._objects.get(request.match_info["name"])
        if obj is None:
            return web.Response(status=404)
        etag = self._etag_of(obj)
        size = len(obj.data)
        headers = {"Accept-Ranges": "bytes"}
        if etag is not None:
            headers["ETag"] = etag
        if self.last_modified:
            headers["Last-Modified"] = _http_date(obj.modified)
        if self.conditionals and self._precondition_fails(request, obj, etag):
            self.precondition_failures += 1
            return web.Response(status=412, headers=headers)
        status = 200
        start, end = 0, size
        if range_header is not None and self._range_applies(request, obj, etag):
            parsed = _parse_range(range_header, size)
            if parsed == _UNSATISFIABLE:
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        body = obj.data[start:end]
        # For HEAD, aiohttp sends the headers (Content-Length included) and
        # leaves the body out.
        if request.method != "HEAD":
            self.bytes_sent += len(body)
        return web.Response(
            status=status,
            body=body,
            headers=headers,
            content_type="application/octet-stream",
        )

    def _precondition_fails(
        self, request: web.Request, obj: _Object, etag: str | None
    ) -> bool:
        """``If-Match``, else ``If-Unmodified-Since`` (RFC 9110, 13.2.2)."""
        if_match = request.headers.get("If-Match")
        if if_match is not None:
            return not _strong_match(if_match, etag)
        since = request.headers.get("If-Unmodified-Since")
        if since is not None and self.last_modified:
            when = _parse_http_date(since)
            return when is not None and obj.modified > when
        return False

    def _range_applies(
        self, request: web.Request, obj: _Object, etag: str | None
    ) -> bool:
        """Whether ``Range`` is honoured: ``If-Range``, if any, must match.

        An entity tag matches only strongly; a date only if it is exactly
        the ``Last-Modified`` date. A mismatch means the whole object.
        """
        if_range = request.headers.get("If-Range")
        if if_range is None or not self.conditionals:
            return True
        if_range = if_range.strip()
        if if_range.startswith(('"', "W/")):
            ok = _strong_match(if_range, etag) and if_range != "*"
        else:
            ok = self.last_modified and _parse_http_date(if_range) == obj.modified
        if not ok:
            self.full_answers_to_if_range += 1
        return ok


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single-range ``Range`` header against an object of ``size``.

    Returns:
        ``(start, end)`` half-open; ``_UNSATISFIABLE`` for a range starting
        at or past the end; ``None`` for a header to ignore (malformed or
        several ranges), which means a full ``200`` answer.
    """
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0:
            return _UNSATISFIABLE
        return (max(0, size - suffix), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return _UNSATISFIABLE
    end = size if last == "" else min(size, int(last) + 1)
    return (start, end)
