"""aiomemmap.open_async: a file for asyncio code, on the caller's loop."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import anyio
import pytest

import aiomemmap
from aiomemmap import PAGE_SIZE, AsyncRemoteFile, Engine
from aiomemmap.faces.async_file import _loop_engines
from aiomemmap.tools.http_server import RangeHTTPServer

MiB = 1 << 20
DEADLINE = 30


def pattern(n: int) -> bytes:
    return bytes(i * 17 % 251 for i in range(n))


async def test_read_seek_and_pread_over_http():
    data = pattern(MiB + 5)
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        with anyio.fail_after(DEADLINE):
            async with await aiomemmap.open_async(srv.url("obj")) as f:
                assert isinstance(f, AsyncRemoteFile)
                assert f.size == len(data)
                assert await f.read(4) == data[:4]
                assert f.tell() == 4
                buf = bytearray(6)
                assert await f.readinto(buf) == 6
                assert bytes(buf) == data[4:10]
                assert f.seek(-5, io.SEEK_END) == len(data) - 5
                assert await f.read() == data[-5:]
                assert await f.read(3) == b""
                assert await f.pread(100, 10) == data[100:110]
                f.seek(0)
                assert await f.read() == data
                # Each byte once, but for the part of a page before the tail
                # that came with the size.
                fetched = (await f.statistics()).bytes_fetched
                assert len(data) <= fetched < len(data) + PAGE_SIZE
                with pytest.raises(ValueError, match="negative seek"):
                    f.seek(-1)
                with pytest.raises(ValueError, match=">= 0"):
                    await f.pread(0, -1)
            assert f.closed
            with pytest.raises(ValueError, match="closed file"):
                await f.read(1)
            await f.aclose()


async def test_files_of_one_loop_share_its_engine_which_closes_with_the_last():
    data = pattern(300_000)
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        url = srv.url("obj")
        a = await aiomemmap.open_async(url)
        b = await aiomemmap.open_async(url)
        assert a._file is b._file
        engine = _loop_engines[asyncio.get_running_loop()].engine
        assert engine.users_of(a._file) == 2
        assert await a.read() == data
        assert await b.read() == data
        # Fetched once for both (but for the part of a page before the tail
        # that came with the size).
        fetched = (await b.statistics()).bytes_fetched
        assert len(data) <= fetched < len(data) + PAGE_SIZE
        await a.aclose()
        assert not engine.closed
        await b.aclose()
        assert engine.closed
        assert engine.memory_file.closed
        assert asyncio.get_running_loop() not in _loop_engines


def test_asyncio_run_twice(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(pattern(50_000))

    async def main() -> bytes:
        async with RangeHTTPServer() as srv:
            srv.add("obj", path.read_bytes())
            async with await aiomemmap.open_async(srv.url("obj")) as f:
                first = await f.read(1000)
            async with await aiomemmap.open_async(str(path)) as g:
                return first + await g.read()

    expected = path.read_bytes()[:1000] + path.read_bytes()
    assert asyncio.run(main()) == expected
    assert asyncio.run(main()) == expected


async def test_a_cancelled_read_moves_nothing_and_leaks_nothing():
    data = pattern(MiB)
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        f = await aiomemmap.open_async(srv.url("obj"))
        memory_file = _loop_engines[asyncio.get_running_loop()].engine.memory_file
        f.seek(MiB // 2)
        srv.latency = 1.0
        with anyio.move_on_after(0.05) as scope:
            await f.read(100)
        assert scope.cancelled_caught
        assert f.tell() == MiB // 2
        srv.latency = 0.0
        with anyio.fail_after(DEADLINE):
            assert await f.read(100) == data[MiB // 2 : MiB // 2 + 100]
            await f.aclose()
        assert memory_file.closed


async def test_an_engine_of_the_callers_loop_or_an_engine_thread(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(pattern(70_000))
    async with Engine() as engine:
        async with await aiomemmap.open_async(str(path), engine=engine) as f:
            assert await f.read() == path.read_bytes()
        assert not engine.closed  # Not the loop's engine: it stays.
    et = Engine().start_thread()
    try:
        async with await aiomemmap.open_async(str(path), engine=et) as f:
            assert await f.pread(5, 5) == path.read_bytes()[5:10]
            assert et.statistics().users == 1
        assert et.statistics().open_files == 0
    finally:
        await asyncio.to_thread(et.close)


async def test_bad_input_changes_nothing(tmp_path: Path):
    with pytest.raises(TypeError, match="url_or_path"):
        await aiomemmap.open_async(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine"):
        await aiomemmap.open_async(str(tmp_path), engine=1)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        await aiomemmap.open_async(str(tmp_path / "missing"))
    assert asyncio.get_running_loop() not in _loop_engines
