"""Ranged ``GET``s over a pool of plain HTTP/1.1 keep-alive connections.

:class:`~aiomemmap.backings.http.HttpBacking` sends its ranged reads here:
a read of a few kilobytes is dominated by what the client does per request,
and a general client (headers objects, cookie jars, tracing hooks, a stream
reader that copies every piece of the body into its own buffers) spends
several times what the request needs. A :class:`WirePool` writes the request
line and headers itself, parses the status line and headers of the answer,
and hands each piece of the body, as the connection delivers it, to the
caller's ``land`` function. The socket is read straight into a buffer of
the connection's own, reused for every read: no object is allocated for
the bytes that arrive, and the only copy before ``land`` is the kernel's.

Only what a byte-range read needs is spoken: HTTP/1.1, ``Content-Length``
bodies, keep-alive. An answer this module does not handle (a redirect, a
``Transfer-Encoding`` body, an informational status) raises
:class:`WireUnsupported` before any byte of it is landed, and the caller
asks through its general client instead.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import typing
from collections.abc import Callable, Mapping
from typing import Final, final

__all__ = ["WireAnswer", "WirePool", "WireUnsupported"]

# The most bytes of status line and headers an answer may have.
_MAX_HEAD: Final[int] = 64 * 1024
# The most bytes one read from a connection takes: the size of its buffer,
# and so of the largest piece of a body handed to ``land`` at once.
_READ_SIZE: Final[int] = 256 * 1024


class WireUnsupported(Exception):
    """The answer is one the wire pool does not speak; nothing was landed."""


@final
class WireAnswer:
    """The status and headers of one answer.

    Attributes:
        status: The status code.
        reason: The reason phrase.
        headers: The header fields, by lower-case name (repeated fields
            joined with ``", "``).
        content_length: The body's length, or ``None`` if not given.
    """

    __slots__ = ("content_length", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None else None

    def get(self, name: str) -> str | None:
        """Return header ``name`` (any case), or ``None``."""
        return self.headers.get(name.lower())


def _parse_head(head: bytes) -> WireAnswer:
    """Parse a status line and header fields (without the blank line).

    Raises:
        OSError: ``EPROTO``: the head is not an HTTP/1.x answer.
    """
    try:
        text = head.decode("latin-1")
        status_line, *lines = text.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code_text, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code_text) != 3:
            raise ValueError(status_line)
        status = int(code_text)
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ValueError(line)
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError("negative Content-Length")
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"malformed HTTP answer ({exc})") from exc
    return WireAnswer(status, reason, headers)


@final
class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: one request and its answer at a time.

    The transport reads straight into the connection's own buffer
    (``asyncio.BufferedProtocol``): an answer's head is gathered there, and
    each piece of its body is handed to ``land`` as a view of the buffer,
    valid for that call only. No ``bytes`` object is made for what
    arrives, and reading never pauses unless the buffer fills up before the
    body is asked for.
    """

    __slots__ = (
        "_asking",
        "_body_left",
        "_buffer",
        "_done",
        "_error",
        "_filled",
        "_head_end",
        "_land",
        "_landed",
        "_loop",
        "_paused",
        "_progress",
        "_timer",
        "_view",
        "_waiter",
        "closed",
        "reusable",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        # Bytes of the answer's head (and whatever came with it) in the
        # buffer, and where the head ends (-1 until it has all arrived).
        self._filled = 0
        self._head_end = -1
        # A request was sent whose answer has not been wholly read.
        self._asking = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Bumped on every read: what the timer looks at to tell a slow
        # answer from a stalled one.
        self._progress = 0
        self._land: Callable[[memoryview, int], None] | None = None
        self._landed = 0
        self._body_left = 0
        self._done = False
        self._error: BaseException | None = None

    # -- asyncio.BufferedProtocol -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving
        # from it.
        self.transport = typing.cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._land is not None:
            # Never read past the body: what follows it is not this answer's.
            left = self._body_left
            return self._view[:left] if 0 < left < _READ_SIZE else self._view
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._progress += 1
        land = self._land
        if land is not None:
            self._feed(land, self._view[:nbytes])
            return
        if not self._asking:
            # Bytes nobody asked for (past a body, or between exchanges): the
            # connection can no longer be trusted to frame an answer.
            self.close()
            return
        start = self._filled
        filled = self._filled = start + nbytes
        if self._head_end < 0:
            end = self._buffer.find(b"\r\n\r\n", max(0, start - 3), filled)
            if end >= 0:
                self._head_end = end
                self._wake()
            elif filled > _MAX_HEAD:
                self._wake()
        if filled == _READ_SIZE:
            # Full before the body was asked for: wait for receive().
            self._pause()

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    # -- helpers ----------------------------------------------------------

    def _lost(self) -> None:
        self.closed = True
        self.reusable = False
        self._wake()

    def _body_pending(self) -> bool:
        return not self._done and not self.closed

    def _pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, land: Callable[[memoryview, int], None], data: memoryview) -> None:
        n = len(data)
        if n >= self._body_left:
            if n > self._body_left:
                # More than the body: a broken answer, or a pipelined one we
                # never asked for. Either way the connection is done for.
                self.reusable = False
                data = data[: self._body_left]
                n = self._body_left
            self._done = True
            self._asking = False
        if n:
            try:
                land(data, self._landed)
            except BaseException as exc:
                # Raised to the caller of receive(), not into the transport.
                self._error = exc
                self._done = True
                self._asking = False
                self.close()
            else:
                self._landed += n
                self._body_left -= n
        if self._done:
            self._land = None
            self._wake()

    async def _wait(self, wait_bound: float | None) -> None:
        """Wait until woken; ``TimeoutError`` after ``wait_bound`` s without a read."""
        loop = self._loop
        if loop is None:
            raise ConnectionResetError(errno.ECONNRESET, "connection not made")
        waiter = loop.create_future()
        self._waiter = waiter
        if wait_bound is not None:
            self._timer = loop.call_later(
                wait_bound, self._expire, waiter, self._progress, wait_bound
            )
        try:
            await waiter
        finally:
            self._waiter = None
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()

    def _expire(
        self, waiter: asyncio.Future[None], progress: int, wait_bound: float
    ) -> None:
        """The wait bound passed: fail the wait unless something arrived."""
        if waiter.done():
            return
        if self._progress != progress and self._loop is not None:
            self._timer = self._loop.call_later(
                wait_bound, self._expire, waiter, self._progress, wait_bound
            )
            return
        self._timer = None
        waiter.set_exception(
            TimeoutError(errno.ETIMEDOUT, f"nothing arrived for {wait_bound:g} s")
        )

    # -- one exchange -------------------------------------------------------

    async def send(self, request: bytes, wait_bound: float | None) -> WireAnswer:
        """Send ``request`` and return the answer's head; the body waits.

        Raises:
            ConnectionResetError: The connection closed before a head came.
            OSError: ``EPROTO`` for a malformed or oversized head.
            TimeoutError: Nothing arrived for ``wait_bound`` seconds.
        """
        transport = self.transport
        if transport is None or self.closed:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed")
        self.reusable = False
        self._filled = 0
        self._head_end = -1
        self._asking = True
        transport.write(request)
        while self._head_end < 0:
            if self._filled > _MAX_HEAD:
                raise OSError(errno.EPROTO, "HTTP answer head too large")
            if self.closed:
                raise ConnectionResetError(
                    errno.ECONNRESET, "the server closed the connection"
                )
            await self._wait(wait_bound)
        return _parse_head(bytes(self._view[: self._head_end]))

    async def receive(
        self,
        length: int,
        land: Callable[[memoryview, int], None],
        wait_bound: float | None,
    ) -> int:
        """Land a body of ``length`` bytes; return how many arrived.

        Fewer than ``length`` means the connection closed early.

        Preconditions:
            :meth:`send` returned the head of this body.

        Raises:
            Exception: What ``land`` raised (the connection is then closed).
            TimeoutError: Nothing arrived for ``wait_bound`` seconds.
        """
        self._landed = 0
        self._body_left = length
        self._done = length == 0
        self._error = None
        start, filled = self._head_end + 4, self._filled
        self._filled = 0
        self._head_end = -1
        try:
            if filled > start:
                if self._done:
                    self.reusable = False
                else:
                    # What came with the head, fed from the buffer as is.
                    self._feed(land, self._view[start:filled])
            if self._done:
                self._asking = False
            else:
                self._land = land
                self._unpause()
                while self._body_pending():
                    await self._wait(wait_bound)
        finally:
            self._land = None
            if not self._done:
                self._asking = False
        self._unpause()
        self._raise_landing_error()
        return self._landed

    def _raise_landing_error(self) -> None:
        """Raise what ``land`` raised during the last body, if anything."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        self.reusable = False
        self.closed = True
        self._asking = False
        if self.transport is not None:
            self.transport.close()


@final
class WirePool:
    """Keep-alive HTTP/1.1 connections to one origin, for ranged ``GET``s.

    Args:
        host: The origin's host name or address.
        port: Its port.
        tls: An SSL context for ``https``, or ``None`` for ``http``.
        limit: The most connections open at once.
        timeout: Seconds any one wait for the server may last (connecting,
            then each wait for more of the answer); ``None`` for no bound.

    Concurrency:
        Task-safe on the loop of its first use; each exchange has a
        connection of its own.
    """

    __slots__ = (
        "_host",
        "_host_header",
        "_idle",
        "_port",
        "_slots",
        "_timeout",
        "_tls",
        "closed",
    )

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        limit: int,
        timeout: float | None,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        default_port = 443 if tls is not None else 80
        shown = f"[{host}]" if ":" in host else host
        self._host_header = shown if port == default_port else f"{shown}:{port}"
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._timeout = timeout
        self.closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            _Connection,
            self._host,
            self._port,
            ssl=self._tls,
            server_hostname=self._host if self._tls is not None else None,
        )
        if self._timeout is None:
            _transport, conn = await connecting
        else:
            async with asyncio.timeout(self._timeout):
                _transport, conn = await connecting
        return conn

    def _request(self, target: str, headers: Mapping[str, str]) -> bytes:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self._host_header}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    async def get(
        self,
        target: str,
        headers: Mapping[str, str],
        check: Callable[[WireAnswer], int],
        land: Callable[[memoryview, int], None],
    ) -> tuple[WireAnswer, int]:
        """Send ``GET target`` and land the answer's body.

        ``check(answer)`` sees the head before any byte of the body is
        landed: it raises to refuse the answer (the connection is then
        closed) or returns how many bytes of the body to land (the rest, if
        any, is not read and the connection is closed after them).

        Args:
            target: The request target (path and query).
            headers: Header fields to send besides ``Host``.
            check: Judges the head; returns the bytes to land.
            land: Called with each piece of the body and the bytes landed
                before it. The piece is a view of the connection's buffer,
                valid only during the call: ``land`` copies it out (or
                writes it somewhere) before it returns.

        Returns:
            The answer's head and the bytes landed: fewer than ``check``
            asked for if the body ended early (the connection closed).

        Raises:
            WireUnsupported: A redirect, an informational status or a body
                in a transfer coding; nothing was landed.
            ConnectionError: The connection failed.
            TimeoutError: The server sent nothing for ``timeout`` seconds
                (or a connection took longer to open).
            OSError: ``EPROTO`` for a malformed answer.
            Exception: What ``check`` or ``land`` raised.

        Cancellation:
            The connection in use is closed, never reused half read.
        """
        request = self._request(target, headers)
        async with self._slots:
            while True:
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    try:
                        answer = await conn.send(request, self._timeout)
                    except ConnectionResetError:
                        if reused:
                            # The server closed a connection that sat idle;
                            # nothing of the request was answered: ask again
                            # on a fresh one.
                            conn.close()
                            continue
                        raise
                    return answer, await self._finish(conn, answer, check, land)
                except BaseException:
                    conn.close()
                    raise

    async def _finish(
        self,
        conn: _Connection,
        answer: WireAnswer,
        check: Callable[[WireAnswer], int],
        land: Callable[[memoryview, int], None],
    ) -> int:
        status = answer.status
        if status < 200 or 300 <= status < 400:
            raise WireUnsupported(f"HTTP {status}")
        coding = answer.get("transfer-encoding")
        if coding is not None and coding.lower() != "identity":
            raise WireUnsupported(f"Transfer-Encoding: {coding}")
        length = answer.content_length
        if length is None:
            raise WireUnsupported("no Content-Length")
        want = check(answer)
        got = await conn.receive(min(want, length), land, self._timeout)
        keep = (
            got == length
            and not conn.closed
            and answer.get("connection") != "close"
            and not self.closed
        )
        if keep:
            conn.reusable = True
            self._idle.append(conn)
        else:
            conn.close()
        return got

    def close(self) -> None:
        """Close every idle connection; later exchanges are refused."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
