"""Tests of the loopback range-serving HTTP server."""

from __future__ import annotations

import asyncio

import aiohttp
import anyio
import pytest

from aiomemmap.tools.http_server import RangeHTTPServer, _parse_range

DATA = bytes(range(256)) * 4  # 1024 bytes


async def get(
    session: aiohttp.ClientSession,
    url: str,
    rng: str | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Range": rng} if rng is not None else {}
    async with session.request(method, url, headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def test_server_full_range_head_and_counters() -> None:
    with anyio.fail_after(30):
        async with RangeHTTPServer() as srv, aiohttp.ClientSession() as s:
            srv.add("a", DATA)
            url = srv.url("a")
            assert url.startswith("http://127.0.0.1:")
            status, h, body = await get(s, url)
            assert (status, body) == (200, DATA)
            assert h["content-length"] == "1024"
            assert h["accept-ranges"] == "bytes"
            assert h["etag"] == srv.etag("a")
            status, h, body = await get(s, url, "bytes=10-19")
            assert (status, body) == (206, DATA[10:20])
            assert h["content-range"] == "bytes 10-19/1024"
            status, h, body = await get(s, url, "bytes=1000-")
            assert (status, body) == (206, DATA[1000:])
            status, h, body = await get(s, url, "bytes=-4")
            assert (status, body) == (206, DATA[-4:])
            status, h, body = await get(s, url, "bytes=1000-5000")
            assert (status, body) == (206, DATA[1000:])
            status, h, body = await get(s, url, "bytes=1024-2000")
            assert status == 416
            assert h["content-range"] == "bytes */1024"
            status, h, body = await get(s, url, method="HEAD")
            assert (status, body) == (200, b"")
            assert h["content-length"] == "1024"
            assert srv.requests == 7
            assert srv.range_requests == 5
            assert srv.bytes_sent == 1024 + 10 + 24 + 4 + 24


async def test_server_replace_remove_and_404() -> None:
    async with RangeHTTPServer() as srv, aiohttp.ClientSession() as s:
        srv.add("a", DATA)
        e1 = srv.etag("a")
        srv.replace("a", b"xyz")
        assert srv.etag("a") != e1
        assert (await get(s, srv.url("a")))[2] == b"xyz"
        srv.remove("a")
        assert (await get(s, srv.url("a")))[0] == 404
        with pytest.raises(KeyError):
            srv.replace("a", b"")
        with pytest.raises(KeyError):
            srv.remove("a")
        srv.add("b", b"")
        with pytest.raises(ValueError, match="already exists"):
            srv.add("b", b"")
        status, _, _ = await get(s, srv.url("b"), "bytes=0-10")
        assert status == 416


async def test_server_fail_next_and_latency() -> None:
    with anyio.fail_after(30):
        async with RangeHTTPServer() as srv, aiohttp.ClientSession() as s:
            srv.add("a", DATA)
            srv.fail_next(2, status=500)
            assert (await get(s, srv.url("a")))[0] == 500
            assert (await get(s, srv.url("a")))[0] == 500
            assert (await get(s, srv.url("a")))[0] == 200
            srv.fail_next(1)
            assert (await get(s, srv.url("a")))[0] == 503
            # Latency: a slow request finishes after a later fast one.
            srv.latency = 0.3
            order: list[str] = []

            async def slow() -> None:
                await get(s, srv.url("a"))
                order.append("slow")

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.05)
            srv.latency = 0.0
            await get(s, srv.url("a"))
            order.append("fast")
            await task
            assert order == ["fast", "slow"]
            with pytest.raises(ValueError, match="status"):
                srv.fail_next(1, status=200)
            with pytest.raises(ValueError, match="n must"):
                srv.fail_next(-1)


async def test_server_lifecycle() -> None:
    srv = RangeHTTPServer()
    with pytest.raises(RuntimeError):
        srv.url("a")
    await srv.start()
    with pytest.raises(RuntimeError, match="already running"):
        await srv.start()
    port = srv.port
    assert port > 0
    await srv.stop()
    await srv.stop()
    with pytest.raises(RuntimeError):
        _ = srv.port
    with pytest.raises(ValueError, match="name"):
        srv.add("/abs", b"")
    with pytest.raises(TypeError):
        srv.add("x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        RangeHTTPServer(port=70000)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=5-", (5, 10)),
        ("bytes=-3", (7, 10)),
        ("bytes=-30", (0, 10)),
        ("bytes=9-100", (9, 10)),
        ("bytes=10-", (-1, -1)),
        ("bytes=-0", (-1, -1)),
        ("bytes=5-2", None),
        ("bytes=0-1,3-4", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert _parse_range(header, 10) == expected


async def test_server_honours_if_match_if_unmodified_since_and_if_range() -> None:
    with anyio.fail_after(30):
        async with RangeHTTPServer() as srv, aiohttp.ClientSession() as s:
            srv.add("a", DATA)
            url, etag, date = srv.url("a"), srv.etag("a"), srv.modified("a")
            assert etag is not None

            async def ask(**headers: str) -> tuple[int, bytes]:
                async with s.get(url, headers=headers) as r:
                    return r.status, await r.read()

            assert await ask(Range="bytes=0-3", **{"If-Match": etag}) == (206, DATA[:4])
            assert (await ask(**{"If-Unmodified-Since": date}))[0] == 200
            assert await ask(Range="bytes=4-5", **{"If-Range": etag}) == (
                206,
                DATA[4:6],
            )
            srv.replace("a", DATA[::-1])
            assert srv.etag("a") != etag
            assert srv.modified("a") != date
            assert (await ask(Range="bytes=0-3", **{"If-Match": etag}))[0] == 412
            assert (await ask(**{"If-Unmodified-Since": date}))[0] == 412
            assert srv.precondition_failures == 2
            # If-Range that does not match: the whole new object.
            assert await ask(Range="bytes=0-3", **{"If-Range": etag}) == (
                200,
                DATA[::-1],
            )
            assert await ask(Range="bytes=0-3", **{"If-Range": date}) == (
                200,
                DATA[::-1],
            )
            assert srv.full_answers_to_if_range == 2
            # Weak tags never match If-Match; a server ignoring conditions.
            srv.etags = "weak"
            weak = srv.etag("a")
            assert weak is not None
            assert weak.startswith("W/")
            assert (await ask(**{"If-Match": weak}))[0] == 412
            srv.conditionals = False
            assert (await ask(**{"If-Match": weak}))[0] == 200
            srv.etags = "none"
            assert srv.etag("a") is None
            with pytest.raises(ValueError, match="etags"):
                srv.etags = "sometimes"


async def test_server_same_bytes_same_etag() -> None:
    async with RangeHTTPServer() as srv:
        srv.add("a", DATA)
        etag = srv.etag("a")
        srv.remove("a")
        srv.add("a", DATA)
        assert srv.etag("a") == etag
