"""Tests of HttpBacking: the backing contract over HTTP on aiohttp directly.

Most tests run against :class:`RangeHTTPServer`; the odd servers (one that
ignores ``Range``, refuses ``HEAD``, sends the wrong range or a slow body)
are tiny aiohttp applications defined here.
"""

from __future__ import annotations

import asyncio
import errno
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anyio
import pytest
from aiohttp import web

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    CachedFile,
    ClosedError,
    HttpBacking,
    MappableRange,
    MemoryFile,
    RetryPolicy,
    open_backing,
)
from aiomemmap.backings.base import call_with_retry, is_transient, read_fully
from aiomemmap.tools.http_server import RangeHTTPServer

DATA = bytes((i * 13 + 5) % 251 for i in range(3 * PAGE_SIZE + 321))
NEW_DATA = b"replaced " * 500
FAST = RetryPolicy(attempts=4, initial_backoff=0.0, max_backoff=0.0)
DEADLINE = 30


async def read(b: HttpBacking, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    got = await b.read_into(offset, memoryview(buf))
    return bytes(buf[:got])


@pytest.fixture
async def srv() -> AsyncIterator[RangeHTTPServer]:
    async with RangeHTTPServer() as server:
        server.add("obj", DATA)
        yield server


@pytest.fixture
async def backing(srv: RangeHTTPServer) -> AsyncIterator[HttpBacking]:
    b = HttpBacking(srv.url("obj"))
    yield b
    await b.aclose()


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("size", [0, 1, PAGE_SIZE, len(DATA)])
async def test_size(srv: RangeHTTPServer, size: int) -> None:
    srv.add("sized", DATA[:size])
    b = HttpBacking(srv.url("sized"))
    assert await b.size() == size
    assert await read(b, 0, 10) == DATA[: min(size, 10)]
    await b.aclose()


@pytest.mark.parametrize(
    ("offset", "n"),
    [
        (0, PAGE_SIZE),
        (PAGE_SIZE, PAGE_SIZE),
        (3, 1000),
        (PAGE_SIZE - 1, 2),
        (len(DATA) - 100, PAGE_SIZE),  # spans the end: short
        (0, len(DATA)),
        (0, 10 * len(DATA)),
    ],
)
async def test_reads(backing: HttpBacking, offset: int, n: int) -> None:
    assert await read(backing, offset, n) == DATA[offset : offset + n]


async def test_read_past_eof_and_empty(backing: HttpBacking) -> None:
    assert await read(backing, len(DATA), 10) == b""
    assert await read(backing, len(DATA) + 5000, 10) == b""
    assert await read(backing, 10, 0) == b""


async def test_read_fully_spanning_eof(backing: HttpBacking) -> None:
    buf = bytearray(b"\xff" * 2 * PAGE_SIZE)
    start = len(DATA) - 500
    assert await read_fully(backing, start, buf) == 500
    assert bytes(buf[:500]) == DATA[start:]


async def test_reads_go_to_a_memoryview_slice(backing: HttpBacking) -> None:
    buf = bytearray(b"\xee" * 300)
    view = memoryview(buf)[100:200]
    assert await backing.read_into(50, view) == 100
    assert bytes(buf[100:200]) == DATA[50:150]
    assert buf[:100] == b"\xee" * 100
    assert buf[200:] == b"\xee" * 100


async def test_concurrent_reads(backing: HttpBacking) -> None:
    offsets = list(range(0, len(DATA), 577))
    with anyio.fail_after(DEADLINE):
        got = await asyncio.gather(*(read(backing, o, 1500) for o in offsets))
    for o, g in zip(offsets, got, strict=True):
        assert g == DATA[o : o + 1500]


async def test_version_changes_on_replace(
    srv: RangeHTTPServer, backing: HttpBacking
) -> None:
    v1 = await backing.version()
    assert v1 == f"etag:{srv.etag('obj')}"
    assert await backing.version() == v1
    srv.replace("obj", NEW_DATA)
    v2 = await backing.version()
    assert v2 is not None
    assert v2 != v1
    assert await backing.size() == len(NEW_DATA)
    assert await read(backing, 0, 20) == NEW_DATA[:20]


async def test_missing_object_is_file_not_found(srv: RangeHTTPServer) -> None:
    b = HttpBacking(srv.url("missing"))
    for call in (b.size, b.version, lambda: read(b, 0, 10)):
        with pytest.raises(FileNotFoundError) as info:
            await call()
        assert not is_transient(info.value)
        assert isinstance(info.value.__cause__, aiohttp.ClientResponseError)
        assert info.value.__cause__.status == 404
    # read_fully does not retry a permanent error.
    before = srv.requests
    with pytest.raises(FileNotFoundError):
        await read_fully(b, 0, bytearray(10), retry=FAST)
    assert srv.requests - before == 1
    await b.aclose()


@pytest.mark.parametrize("status", [401, 403])
async def test_forbidden_is_permission_error(
    srv: RangeHTTPServer, backing: HttpBacking, status: int
) -> None:
    srv.fail_next(1, status)
    with pytest.raises(PermissionError) as info:
        await read(backing, 0, 10)
    assert not is_transient(info.value)
    srv.fail_next(1, status)
    with pytest.raises(PermissionError):
        await backing.size()


async def test_5xx_is_transient_and_retried(
    srv: RangeHTTPServer, backing: HttpBacking
) -> None:
    srv.fail_next(1, 503)
    with pytest.raises(aiohttp.ClientResponseError) as info:
        await read(backing, 0, 10)
    assert info.value.status == 503
    assert is_transient(info.value)
    srv.fail_next(1, 500)
    with pytest.raises(aiohttp.ClientResponseError) as info2:
        await backing.size()
    assert is_transient(info2.value)
    # read_fully retries through the failures.
    srv.fail_next(FAST.attempts - 1, 503)
    before = srv.range_requests
    buf = bytearray(100)
    assert await read_fully(backing, 7, buf, retry=FAST) == 100
    assert bytes(buf) == DATA[7:107]
    assert srv.range_requests - before == FAST.attempts
    # ... and gives up once the attempts run out.
    srv.fail_next(FAST.attempts, 503)
    with pytest.raises(aiohttp.ClientResponseError):
        await read_fully(backing, 0, bytearray(10), retry=FAST)
    # Questions about the size are retried the same way.
    srv.fail_next(FAST.attempts - 1, 429)
    assert await call_with_retry(backing.size, retry=FAST) == len(DATA)


async def test_read_only(backing: HttpBacking) -> None:
    assert backing.readonly
    with pytest.raises(PermissionError):
        await backing.write_from(0, memoryview(b"x"))
    with pytest.raises(PermissionError):
        await backing.truncate(0)
    assert await read(backing, 0, 10) == DATA[:10]


async def test_aclose_idempotent_then_closed(backing: HttpBacking) -> None:
    assert await read(backing, 0, 10) == DATA[:10]
    session = backing._session
    assert session is not None
    await backing.aclose()
    assert session.closed
    await backing.aclose()
    with pytest.raises(ClosedError):
        await backing.size()
    with pytest.raises(ClosedError):
        await read(backing, 0, 10)
    with pytest.raises(ClosedError):
        await backing.version()
    with pytest.raises(ClosedError):
        await backing.write_from(0, memoryview(b"x"))
    with pytest.raises(ClosedError):
        await backing.truncate(0)


async def test_aclose_before_any_use_creates_nothing(srv: RangeHTTPServer) -> None:
    b = HttpBacking(srv.url("obj"))
    await b.aclose()
    assert b._session is None
    with pytest.raises(ClosedError):
        await b.size()


async def test_caller_session_is_used_and_not_closed(srv: RangeHTTPServer) -> None:
    async with aiohttp.ClientSession() as session:
        b = HttpBacking(srv.url("obj"), session=session)
        assert await read(b, 5, 10) == DATA[5:15]
        assert b._session is session
        await b.aclose()
        assert not session.closed
        async with session.get(srv.url("obj")) as resp:
            assert await resp.read() == DATA


async def test_headers_are_sent() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"abc", headers={"ETag": '"e"'})

    async with serve(handler) as url:
        b = HttpBacking(url, headers={"Authorization": "Bearer t"})
        assert await b.size() == 3
        assert await read(b, 0, 3) == b"abc"
        await b.aclose()
    assert seen == ["Bearer t", "Bearer t"]


async def test_other_loop_is_refused(backing: HttpBacking) -> None:
    assert await backing.size() == len(DATA)

    def elsewhere() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(backing.size())
        with pytest.raises(RuntimeError, match="event loop"):
            asyncio.run(backing.aclose())

    await asyncio.to_thread(elsewhere)
    # Still usable (and closable) on its own loop.
    assert await read(backing, 0, 4) == DATA[:4]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpBacking("ftp://host/x")
    with pytest.raises(ValueError, match="http"):
        HttpBacking("http://")
    with pytest.raises(TypeError):
        HttpBacking(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        HttpBacking("http://h/x", session=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connections"):
        HttpBacking("http://h/x", connections=0)
    with pytest.raises(TypeError):
        HttpBacking("http://h/x", headers={"a": 1})  # type: ignore[dict-item]


async def test_bad_read_arguments(backing: HttpBacking) -> None:
    with pytest.raises(ValueError, match="offset"):
        await backing.read_into(-1, memoryview(bytearray(1)))
    with pytest.raises(TypeError):
        await backing.read_into(0, memoryview(b"readonly"))


def test_open_backing_gives_http_backing() -> None:
    b = open_backing("https://example.invalid/x", headers={"A": "b"})
    assert isinstance(b, HttpBacking)
    assert b.url == "https://example.invalid/x"


# ---------------------------------------------------------------- cancellation


def no_connections_in_use(b: HttpBacking) -> bool:
    session = b._session
    assert session is not None
    connector = session.connector
    assert isinstance(connector, aiohttp.BaseConnector)
    return not connector._acquired


async def test_cancelled_read_waiting_for_latency_releases_connection(
    srv: RangeHTTPServer, backing: HttpBacking
) -> None:
    with anyio.fail_after(DEADLINE):
        assert await read(backing, 0, 1) == DATA[:1]
        srv.latency = 10.0
        before = srv.requests
        task = asyncio.create_task(read(backing, 0, 100))
        while srv.requests == before:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert no_connections_in_use(backing)
        srv.latency = 0.0
        assert await read(backing, 10, 100) == DATA[10:110]
        assert no_connections_in_use(backing)
        await backing.aclose()
    gc.collect()


async def test_cancelled_read_mid_body_closes_the_connection() -> None:
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=206, headers={"Content-Range": f"bytes 0-9999/{10_000}"}
        )
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        started.set()
        await asyncio.sleep(10)
        await resp.write(b"y" * 9_900)
        return resp

    async with serve(handler) as url:
        b = HttpBacking(url)
        with anyio.fail_after(DEADLINE):
            buf = bytearray(10_000)
            task = asyncio.create_task(b.read_into(0, memoryview(buf)))
            await started.wait()
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert no_connections_in_use(b)
            await b.aclose()
    gc.collect()


# ---------------------------------------------------------------- single flight


async def test_single_flight_through_cached_file(srv: RangeHTTPServer) -> None:
    # Larger than the tail read with the size, so page 2 is fetched.
    srv.add("one", DATA * 40)
    b = HttpBacking(srv.url("one"))
    with MemoryFile("test-http-backing") as mf:
        cf = CachedFile(b, mf)
        try:
            with anyio.fail_after(DEADLINE):
                await cf.read(0, 1)  # learn the size first
                srv.latency = 0.05
                before = srv.range_requests
                page = MappableRange(2 * PAGE_SIZE, 3 * PAGE_SIZE)
                results = await asyncio.gather(
                    *(cf.translate(page, page, AccessType.READ) for _ in range(64))
                )
                assert srv.range_requests - before == 1
                for ts, err in results:
                    assert err is None
                    assert ts
                assert (
                    await cf.read(2 * PAGE_SIZE, 10)
                    == (DATA * 40)[2 * PAGE_SIZE : 2 * PAGE_SIZE + 10]
                )
        finally:
            await cf.aclose()
            await b.aclose()


# ---------------------------------------------------------------- odd servers


class serve:
    """Serve ``handler`` for every method and path on 127.0.0.1."""

    def __init__(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> None:
        self._handler = handler
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{name:.*}", self._handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = int(runner.addresses[0][1])
        return f"http://127.0.0.1:{port}/obj"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def range_ignoring(request: web.Request) -> web.StreamResponse:
    return web.Response(body=DATA, headers={"Last-Modified": "Tue, 1 Jan 2030"})


async def test_server_ignoring_range_at_offset_zero_is_accepted() -> None:
    async with serve(range_ignoring) as url:
        b = HttpBacking(url)
        with anyio.fail_after(DEADLINE):
            assert await b.size() == len(DATA)
            assert await b.version() == "last-modified:Tue, 1 Jan 2030"
            assert await read(b, 0, 100) == DATA[:100]
            assert await read(b, 0, 10 * len(DATA)) == DATA
            assert no_connections_in_use(b)
            with pytest.raises(OSError, match="ignored the byte range") as info:
                await read(b, 100, 10)
            assert info.value.errno == errno.EIO
            assert not is_transient(info.value)
            assert no_connections_in_use(b)
            # read_fully gets a whole buffer from offset 0 in one request.
            buf = bytearray(500)
            assert await read_fully(b, 0, buf, retry=FAST) == 500
            assert bytes(buf) == DATA[:500]
            await b.aclose()


async def test_server_refusing_head_is_asked_with_get() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        if request.headers.get("Range") == "bytes=0-0":
            return web.Response(
                status=206,
                body=DATA[:1],
                headers={"Content-Range": f"bytes 0-0/{len(DATA)}", "ETag": '"v"'},
            )
        return web.Response(status=500)

    async with serve(handler) as url:
        b = HttpBacking(url)
        assert await b.size() == len(DATA)
        assert await b.version() == 'etag:"v"'
        await b.aclose()


async def test_server_refusing_head_on_an_empty_object() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=501)
        return web.Response(status=416, headers={"Content-Range": "bytes */0"})

    async with serve(handler) as url:
        b = HttpBacking(url)
        assert await b.size() == 0
        assert await b.version() is None
        assert await read(b, 0, 10) == b""
        await b.aclose()


async def test_server_sending_the_wrong_range_is_an_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=206,
            body=DATA[:10],
            headers={"Content-Range": f"bytes 0-9/{len(DATA)}"},
        )

    async with serve(handler) as url:
        b = HttpBacking(url)
        with pytest.raises(OSError, match="range from 0") as info:
            await read(b, 50, 10)
        assert info.value.errno == errno.EIO
        # The right start but more bytes than asked: also an error.
        with pytest.raises(OSError, match="sent more"):
            await read(b, 0, 5)
        await b.aclose()


async def test_short_body_is_a_short_read_that_read_fully_continues() -> None:
    requests: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        requests.append(rng)
        assert rng is not None
        first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        last = min(last, first + 99, len(DATA) - 1)  # at most 100 bytes a time
        return web.Response(
            status=206,
            body=DATA[first : last + 1],
            headers={"Content-Range": f"bytes {first}-{last}/{len(DATA)}"},
        )

    async with serve(handler) as url:
        b = HttpBacking(url)
        assert await read(b, 0, 250) == DATA[:100]
        buf = bytearray(250)
        assert await read_fully(b, 10, buf) == 250
        assert bytes(buf) == DATA[10:260]
        assert len(requests) == 4
        await b.aclose()
