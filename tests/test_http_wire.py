"""Tests of the keep-alive connection pool that HttpBacking's ranged reads use.

The servers here are small asyncio servers written for each behaviour (keep
connections, close them, send coded or broken answers, stall), so that
connections and requests can be counted exactly.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from aiomemmap import HttpBacking, RetryPolicy, StaleVersionError
from aiomemmap.backings.base import read_fully
from aiomemmap.backings.http_wire import WireAnswer, WirePool, WireUnsupported
from aiomemmap.tools.http_server import RangeHTTPServer

DATA = random.Random(99).randbytes(50_000)
DEADLINE = 30

Answer = Callable[[int, int, "WireServer"], Awaitable[bytes | None]]


class WireServer:
    """Answers ranged GETs of DATA as ``answer`` decides, counting everything."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.closed_by_client = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                self.requests += 1
                first, last = 0, len(DATA) - 1
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("range: bytes="):
                        a, _, b = line.split("=", 1)[1].partition("-")
                        first, last = int(a), int(b)
                out = await self.answer(first, last, self)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/obj"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WireServer]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


def partial(
    first: int, last: int, *, extra: str = "", body: bytes | None = None
) -> bytes:
    last = min(last, len(DATA) - 1)
    payload = DATA[first : last + 1] if body is None else body
    head = (
        "HTTP/1.1 206 Partial Content\r\n"
        f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        'ETag: "v1"\r\n'
        f"{extra}\r\n"
    )
    return head.encode() + payload


async def good(first: int, last: int, srv: WireServer) -> bytes:
    return partial(first, last)


async def read(backing: HttpBacking, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    got = await read_fully(backing, offset, buf, retry=RetryPolicy(attempts=1))
    return bytes(buf[:got])


async def test_sequential_reads_reuse_one_connection() -> None:
    async with WireServer(good).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE):
                for off in range(0, 40_000, 4_000):
                    assert await read(backing, off, 4_000) == DATA[off : off + 4_000]
        finally:
            await backing.aclose()
    assert (srv.connections, srv.requests) == (1, 10)


async def test_concurrent_reads_each_get_a_connection_and_all_bytes() -> None:
    async with WireServer(good).running() as srv:
        backing = HttpBacking(srv.url, connections=4)
        try:
            with anyio.fail_after(DEADLINE):
                offsets = list(range(0, 48_000, 3_000))
                got = await asyncio.gather(*(read(backing, o, 3_000) for o in offsets))
        finally:
            await backing.aclose()
    assert got == [DATA[o : o + 3_000] for o in offsets]
    assert srv.requests == len(offsets)
    assert 1 <= srv.connections <= 4


async def test_a_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async with WireServer(good, close_after=True).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE):
                for off in (0, 10_000, 20_000, 30_000):
                    assert await read(backing, off, 500) == DATA[off : off + 500]
        finally:
            await backing.aclose()
    # Every answer came on a fresh connection; no request was answered twice.
    assert (srv.connections, srv.requests) == (4, 4)


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    async def closing(first: int, last: int, srv: WireServer) -> bytes:
        return partial(first, last, extra="Connection: close\r\n")

    async with WireServer(closing).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE):
                assert await read(backing, 0, 100) == DATA[:100]
                assert await read(backing, 100, 100) == DATA[100:200]
        finally:
            await backing.aclose()
    assert (srv.connections, srv.requests) == (2, 2)


async def test_a_chunked_answer_makes_the_backing_use_aiohttp_from_then_on() -> None:
    async def chunked(first: int, last: int, srv: WireServer) -> bytes:
        body = DATA[first : last + 1]
        head = (
            "HTTP/1.1 206 Partial Content\r\n"
            f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"

    async with WireServer(chunked).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE):
                assert await read(backing, 5, 1000) == DATA[5:1005]
                after_first = srv.requests
                assert await read(backing, 2000, 1000) == DATA[2000:3000]
        finally:
            await backing.aclose()
    # The first read asked twice (the wire refused the coding), then once.
    assert (after_first, srv.requests) == (2, 3)


async def test_a_redirect_is_followed_through_aiohttp() -> None:
    async with RangeHTTPServer() as target:
        target.add("obj", DATA)

        async def redirect(first: int, last: int, srv: WireServer) -> bytes:
            return (
                "HTTP/1.1 302 Found\r\n"
                f"Location: {target.url('obj')}\r\nContent-Length: 0\r\n\r\n"
            ).encode()

        async with WireServer(redirect).running() as srv:
            backing = HttpBacking(srv.url)
            try:
                with anyio.fail_after(DEADLINE):
                    assert await read(backing, 7, 700) == DATA[7:707]
            finally:
                await backing.aclose()


async def test_a_malformed_answer_is_a_protocol_error() -> None:
    async def garbage(first: int, last: int, srv: WireServer) -> bytes:
        return b"SPEAK FRIEND AND ENTER\r\n\r\n"

    async with WireServer(garbage).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with (
                anyio.fail_after(DEADLINE),
                pytest.raises(OSError, match="malformed") as info,
            ):
                await read(backing, 0, 10)
        finally:
            await backing.aclose()
    assert info.value.errno == errno.EPROTO


async def test_a_range_answer_longer_than_asked_lands_nothing() -> None:
    async def longer(first: int, last: int, srv: WireServer) -> bytes:
        return partial(first, last + 10)

    async with WireServer(longer).running() as srv:
        backing = HttpBacking(srv.url)
        buf = bytearray(100)
        try:
            with (
                anyio.fail_after(DEADLINE),
                pytest.raises(OSError, match="sent more") as info,
            ):
                await backing.read_into(0, memoryview(buf))
        finally:
            await backing.aclose()
    assert info.value.errno == errno.EIO
    assert buf == bytearray(100)


async def test_a_body_cut_short_returns_what_arrived() -> None:
    async def cut(first: int, last: int, srv: WireServer) -> bytes:
        full = partial(first, last)
        return full[: len(full) - 60]

    async with WireServer(cut, close_after=True).running() as srv:
        backing = HttpBacking(srv.url)
        buf = bytearray(1000)
        try:
            with anyio.fail_after(DEADLINE):
                n = await backing.read_into(0, memoryview(buf))
        finally:
            await backing.aclose()
    assert n == 940
    assert bytes(buf[:n]) == DATA[:940]


async def test_another_version_is_refused_before_any_byte_lands() -> None:
    etag = ['"v1"']

    async def versioned(first: int, last: int, srv: WireServer) -> bytes:
        return partial(first, last).replace(b'"v1"', etag[0].encode())

    async with WireServer(versioned).running() as srv:
        backing = HttpBacking(srv.url)
        buf = bytearray(100)
        try:
            with anyio.fail_after(DEADLINE):
                await backing.read_into(0, memoryview(buf))
                etag[0] = '"v2"'
                buf[:] = bytes(100)
                with pytest.raises(StaleVersionError):
                    await backing.read_into(0, memoryview(buf))
        finally:
            await backing.aclose()
    assert buf == bytearray(100)


async def test_a_missing_object_is_file_not_found_after_one_request() -> None:
    async def missing(first: int, last: int, srv: WireServer) -> bytes:
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"

    async with WireServer(missing).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
                await backing.read_into(0, memoryview(bytearray(10)))
        finally:
            await backing.aclose()
    assert srv.requests == 1


async def test_a_cancelled_read_closes_its_connection() -> None:
    started = asyncio.Event()

    async def stall_mid_body(first: int, last: int, srv: WireServer) -> bytes | None:
        full = partial(first, last)
        started.set()
        await asyncio.sleep(3600)
        return full

    async with WireServer(stall_mid_body).running() as srv:
        backing = HttpBacking(srv.url)
        try:
            with anyio.fail_after(DEADLINE):
                task = asyncio.create_task(
                    backing.read_into(0, memoryview(bytearray(100)))
                )
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                wire = backing._wire
                assert wire is not None
                assert wire._idle == []
        finally:
            await backing.aclose()


async def test_a_server_that_never_answers_times_out() -> None:
    async def silent(first: int, last: int, srv: WireServer) -> bytes | None:
        await asyncio.sleep(3600)
        return None

    async with WireServer(silent).running() as srv:
        backing = HttpBacking(srv.url, timeout=0.2)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(TimeoutError):
                await backing.read_into(0, memoryview(bytearray(10)))
        finally:
            await backing.aclose()


async def test_the_pool_refuses_redirects_before_landing_anything() -> None:
    async def redirect(first: int, last: int, srv: WireServer) -> bytes:
        return b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"

    landed: list[int] = []

    def check(answer: WireAnswer) -> int:
        return 10

    def land(piece: bytes | memoryview, done: int) -> None:
        landed.append(len(piece))

    async with WireServer(redirect).running() as srv:
        pool = WirePool("127.0.0.1", srv.port, None, limit=2, timeout=5.0)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(WireUnsupported):
                await pool.get("/obj", {"Range": "bytes=0-9"}, check, land)
        finally:
            pool.close()
    assert landed == []


@asynccontextmanager
async def trickling_server(body: bytes, piece: int, pause: float) -> AsyncIterator[int]:
    """Answer every request with ``body``, ``piece`` bytes every ``pause`` s."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(
                    b"HTTP/1.1 206 Partial Content\r\n"
                    + f"Content-Range: bytes 0-{len(body) - 1}/{len(body)}\r\n".encode()
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                for at in range(0, len(body), piece):
                    await asyncio.sleep(pause)
                    writer.write(body[at : at + piece])
                    await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_an_answer_that_keeps_coming_outlasts_the_wait_bound() -> None:
    # Twelve pieces 50 ms apart: the whole answer takes longer than the
    # bound, no silence does.
    body = DATA[:12_000]
    got = bytearray(len(body))

    def land(piece: memoryview, done: int) -> None:
        got[done : done + len(piece)] = piece

    async with trickling_server(body, 1_000, 0.05) as port:
        pool = WirePool("127.0.0.1", port, None, limit=1, timeout=0.5)
        try:
            with anyio.fail_after(DEADLINE):
                answer, n = await pool.get(
                    "/obj",
                    {"Range": f"bytes=0-{len(body) - 1}"},
                    lambda a: len(body),
                    land,
                )
        finally:
            pool.close()
    assert (answer.status, n, bytes(got)) == (206, len(body), body)


async def test_a_landing_that_fails_fails_the_read_and_retires_the_connection() -> None:
    calls: list[int] = []

    def failing(piece: memoryview, done: int) -> None:
        calls.append(done)
        raise OSError(errno.ENOSPC, "no room")

    kept: list[bytes] = []

    def keep(piece: memoryview, done: int) -> None:
        kept.append(bytes(piece))

    async with WireServer(good).running() as srv:
        pool = WirePool("127.0.0.1", srv.port, None, limit=2, timeout=5.0)
        try:
            with anyio.fail_after(DEADLINE):
                with pytest.raises(OSError, match="no room") as caught:
                    await pool.get(
                        "/obj", {"Range": "bytes=0-999"}, lambda a: 1000, failing
                    )
                assert caught.value.errno == errno.ENOSPC
                assert pool._idle == []
                _answer, n = await pool.get(
                    "/obj", {"Range": "bytes=0-999"}, lambda a: 1000, keep
                )
        finally:
            pool.close()
    assert calls == [0]
    assert (n, b"".join(kept)) == (1000, DATA[:1000])
    assert (srv.connections, srv.requests) == (2, 2)


async def test_bodies_larger_than_one_read_land_whole_and_in_order() -> None:
    # Several reads' worth per answer, so that the head's read is followed
    # by more of the body before it is asked for.
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
    async with RangeHTTPServer() as srv:
        srv.add("big.bin", data)
        backing = HttpBacking(srv.url("big.bin"))
        try:
            with anyio.fail_after(DEADLINE):
                got = await asyncio.gather(
                    read(backing, 0, len(data)),
                    read(backing, 1_000_000, 2_000_000),
                    read(backing, 5, 1),
                )
        finally:
            await backing.aclose()
    assert list(got) == [data, data[1_000_000:3_000_000], data[5:6]]
