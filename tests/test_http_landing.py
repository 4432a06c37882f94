"""Tests of landing remote bytes in the memory file and of learning a size.

``HttpBacking.read_into_file`` writes a range's bytes into a file
descriptor as they arrive; a cached file's fetches use it to fill their
pages. ``version()`` followed by ``size()`` costs one request.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    BytesBacking,
    CachedFile,
    ClosedError,
    HttpBacking,
    MemoryFile,
    StaleVersionError,
)
from aiomemmap.tools.http_server import RangeHTTPServer

DATA = random.Random(20261203).randbytes(5 * PAGE_SIZE + 777)
DEADLINE = 30


@pytest.fixture
async def server() -> AsyncIterator[RangeHTTPServer]:
    async with RangeHTTPServer() as srv:
        srv.add("obj.bin", DATA)
        yield srv


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("landing-test")
    os.ftruncate(fd, 2 * len(DATA))
    yield fd
    os.close(fd)


def _contents(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


@pytest.mark.parametrize(
    ("offset", "length", "at"),
    [
        (0, len(DATA), 0),
        (PAGE_SIZE - 3, 2 * PAGE_SIZE + 9, 12345),
        (len(DATA) - 5, 5, 1),
    ],
)
async def test_read_into_file_lands_exactly_the_range(
    server: RangeHTTPServer, memfd: int, offset: int, length: int, at: int
) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            n = await backing.read_into_file(offset, length, memfd, at)
    finally:
        await backing.aclose()
    assert n == length
    expected = bytearray(2 * len(DATA))
    expected[at : at + length] = DATA[offset : offset + length]
    assert _contents(memfd) == bytes(expected)


async def test_read_into_file_is_short_at_the_end_and_empty_past_it(
    server: RangeHTTPServer, memfd: int
) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            short = await backing.read_into_file(len(DATA) - 10, 100, memfd, 0)
            past = await backing.read_into_file(len(DATA) + 10, 100, memfd, 500)
            none = await backing.read_into_file(0, 0, memfd, 0)
    finally:
        await backing.aclose()
    assert (short, past, none) == (10, 0, 0)
    assert os.pread(memfd, 10, 0) == DATA[-10:]
    assert os.pread(memfd, 700, 10) == bytes(700)


async def test_read_into_file_of_another_version_writes_nothing(
    server: RangeHTTPServer, memfd: int
) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            await backing.version()
            server.replace("obj.bin", bytes(len(DATA)))
            with pytest.raises(StaleVersionError):
                await backing.read_into_file(0, PAGE_SIZE, memfd, 0)
    finally:
        await backing.aclose()
    assert _contents(memfd) == bytes(2 * len(DATA))


@pytest.mark.parametrize(
    ("offset", "length", "at", "error"),
    [
        (-1, 1, 0, ValueError),
        (0, -1, 0, ValueError),
        (0, 1, -1, ValueError),
        ("0", 1, 0, TypeError),
    ],
)
async def test_read_into_file_rejects_bad_arguments_and_sends_nothing(
    server: RangeHTTPServer,
    memfd: int,
    offset: object,
    length: object,
    at: object,
    error: type[Exception],
) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    try:
        with pytest.raises(error):
            await backing.read_into_file(offset, length, memfd, at)  # type: ignore[arg-type]
    finally:
        await backing.aclose()
    assert server.requests == 0
    assert _contents(memfd) == bytes(2 * len(DATA))


async def test_read_into_file_after_close_raises_closed(
    server: RangeHTTPServer, memfd: int
) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    await backing.aclose()
    with pytest.raises(ClosedError):
        await backing.read_into_file(0, 10, memfd, 0)


async def test_version_then_size_costs_one_request(server: RangeHTTPServer) -> None:
    backing = HttpBacking(server.url("obj.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            version = await backing.version()
            size = await backing.size()
            assert (version is not None, size, server.requests) == (True, len(DATA), 1)
            # Any later size() asks again: it may have changed.
            server.replace("obj.bin", DATA + b"more")
            assert await backing.size() == len(DATA) + 4
            assert server.requests == 2
    finally:
        await backing.aclose()


async def test_a_cached_file_opens_with_one_request(server: RangeHTTPServer) -> None:
    with MemoryFile() as mf:
        backing = HttpBacking(server.url("obj.bin"))
        try:
            async with CachedFile(backing, mf) as cf:
                with anyio.fail_after(DEADLINE):
                    data = await cf.read(0, 100)
                    stats = cf.statistics()
        finally:
            await backing.aclose()
    assert data == DATA[:100]
    # One request learnt the size and version and brought the whole (small)
    # object; the read found it cached.
    assert (server.requests, stats.fetches, stats.misses) == (1, 1, 0)


class _RecordingFileBacking:
    """Bytes in memory that can land in a file, recording each landing."""

    readonly = True

    def __init__(self, data: bytes) -> None:
        self._inner = BytesBacking(data)
        self.landings: list[tuple[int, int]] = []

    async def size(self) -> int:
        return await self._inner.size()

    async def version(self) -> str | None:
        return await self._inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        return await self._inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError("read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError("read-only")

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def read_into_file(
        self, offset: int, length: int, fd: int, file_offset: int
    ) -> int:
        buf = bytearray(length)
        n = await self._inner.read_into(offset, memoryview(buf))
        os.pwrite(fd, memoryview(buf)[:n], file_offset)
        self.landings.append((offset, n))
        return n


async def test_fetches_land_through_read_into_file_when_the_backing_has_it() -> None:
    backing = _RecordingFileBacking(DATA)
    with MemoryFile() as mf:
        async with CachedFile(backing, mf) as cf:
            with anyio.fail_after(DEADLINE):
                got = await cf.read(0, len(DATA))
                again = await cf.read(PAGE_SIZE + 1, 2 * PAGE_SIZE)
        assert mf.statistics().used_bytes == 0
    assert got == DATA
    assert again == DATA[PAGE_SIZE + 1 : 3 * PAGE_SIZE + 1]
    assert backing.landings
    assert sum(n for _, n in backing.landings) == len(DATA)


async def test_a_cached_file_over_http_reads_every_byte(
    server: RangeHTTPServer,
) -> None:
    rng = random.Random(7)
    with MemoryFile() as mf:
        backing = HttpBacking(server.url("obj.bin"))
        try:
            async with CachedFile(backing, mf, max_fetch_bytes=2 * PAGE_SIZE) as cf:
                with anyio.fail_after(DEADLINE):
                    for _ in range(40):
                        off = rng.randrange(len(DATA))
                        n = rng.randrange(1, 3 * PAGE_SIZE)
                        assert await cf.read(off, n) == DATA[off : off + n]
        finally:
            await backing.aclose()


BIG_DATA = random.Random(11).randbytes(300_000)


@pytest.mark.parametrize(
    ("data", "start"),
    [(BIG_DATA, len(BIG_DATA) - 65536), (DATA, 0), (b"", 0)],
    ids=["large", "small", "empty"],
)
async def test_read_tail_learns_size_and_version_with_the_last_bytes(
    server: RangeHTTPServer, data: bytes, start: int
) -> None:
    server.add("t.bin", data)
    backing = HttpBacking(server.url("t.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            size, version, got_start, got = await backing.read_tail(65536)
            assert (size, got_start, got) == (len(data), start, data[start:])
            assert version == await backing.version()
    finally:
        await backing.aclose()


async def test_read_tail_pins_the_version_it_saw(server: RangeHTTPServer) -> None:
    server.add("t.bin", BIG_DATA)
    backing = HttpBacking(server.url("t.bin"))
    try:
        with anyio.fail_after(DEADLINE):
            await backing.read_tail(4096)
            server.replace("t.bin", bytes(len(BIG_DATA)))
            with pytest.raises(StaleVersionError):
                await backing.read_into(0, memoryview(bytearray(10)))
    finally:
        await backing.aclose()


async def test_read_tail_of_a_missing_object_is_file_not_found(
    server: RangeHTTPServer,
) -> None:
    backing = HttpBacking(server.url("nothing"))
    try:
        with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
            await backing.read_tail(4096)
    finally:
        await backing.aclose()
    assert server.requests == 1


async def test_a_table_footer_is_read_with_the_size(server: RangeHTTPServer) -> None:
    # What a parquet reader does: the size, then the footer, then a column.
    server.add("t.bin", BIG_DATA)
    size = len(BIG_DATA)
    with MemoryFile() as mf:
        backing = HttpBacking(server.url("t.bin"))
        try:
            async with CachedFile(backing, mf) as cf:
                with anyio.fail_after(DEADLINE):
                    footer = await cf.read(size - 8, 8)
                    assert server.requests == 1
                    meta = await cf.read(size - 20_000, 12_000)
                    assert server.requests == 1
                    column = await cf.read(1000, 5000)
                    assert server.requests == 2
        finally:
            await backing.aclose()
        assert mf.statistics().used_bytes == 0
    assert footer == BIG_DATA[-8:]
    assert meta == BIG_DATA[size - 20_000 : size - 8_000]
    assert column == BIG_DATA[1000:6000]


async def test_read_tail_from_a_server_that_ignores_ranges() -> None:
    from aiohttp import web

    def whole_of(data: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def whole(request: web.Request) -> web.Response:
            return web.Response(body=data)

        return whole

    for data, expected in ((DATA[:1000], DATA[:1000]), (BIG_DATA, b"")):
        app = web.Application()
        app.router.add_get("/obj", whole_of(data))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        backing = HttpBacking(f"http://127.0.0.1:{port}/obj")
        try:
            with anyio.fail_after(DEADLINE):
                size, _version, start, got = await backing.read_tail(65536)
        finally:
            await backing.aclose()
            await runner.cleanup()
        # Kept when it is no longer than asked; otherwise only the size.
        assert (size, got) == (len(data), expected)
        assert start == (0 if expected else len(data))
