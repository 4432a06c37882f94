"""Engine on the caller's loop: one cached file per object, shared by its users.

Real parts only: the RangeHTTPServer on 127.0.0.1, local files, S3 through
moto's server. Every test runs on asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    CachedFile,
    ClosedError,
    Engine,
    EngineStatistics,
    MemoryFile,
    WrongLoopError,
)
from aiomemmap.engine.file_key import file_key
from aiomemmap.tools.http_server import RangeHTTPServer
from tests.s3_server import moto_s3

P = PAGE_SIZE
MiB = 1 << 20
DEADLINE = 30


def pattern(n: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(n))


@pytest.fixture
def local_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = pattern(3 * MiB + 123)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


async def test_two_opens_of_one_url_share_one_file_and_one_fetch_per_page():
    data = pattern(4 * MiB)
    async with RangeHTTPServer() as srv, Engine() as engine:
        srv.add("obj", data)
        url = srv.url("obj")
        with anyio.fail_after(DEADLINE):
            first, second = await asyncio.gather(
                engine.open_file(url), engine.open_file(url)
            )
            assert first is second
            assert isinstance(first, CachedFile)
            assert engine.users_of(first) == 2
            assert first.size == len(data)
            before = srv.range_requests
            # The request that learnt the size brought the file's tail.
            fetches_before = first.statistics().fetches
            chunks = await asyncio.gather(
                *(f.read(off, 64 * 1024) for f in (first, second) for off in (0, MiB))
            )
            assert chunks == [data[:65536], data[MiB : MiB + 65536]] * 2
            stats = first.statistics()
            # Every byte fetched once, however many users asked for it.
            assert stats.bytes_fetched <= len(data)
            assert srv.range_requests - before == stats.fetches - fetches_before
            assert await second.read(0, len(data)) == data
            assert first.statistics().bytes_fetched == len(data)
            es = engine.statistics()
            assert isinstance(es, EngineStatistics)
            assert (es.open_files, es.users, es.files_opened) == (1, 2, 1)
            assert es.cache.bytes_fetched == len(data)
            assert es.files == {url: first.statistics()}
            await engine.close_file(first)
            await engine.close_file(second)


async def test_the_last_close_closes_the_file_and_its_backing(local_file):
    path, data = local_file
    async with Engine() as engine:
        f = await engine.open_file(str(path))
        again = await engine.open_file(f"file://{path}")
        assert again is f
        await engine.close_file(f)
        assert not f.closed
        assert engine.users_of(f) == 1
        assert await f.read(10, 5) == data[10:15]
        await engine.close_file(again)
        assert f.closed
        assert engine.users_of(f) == 0
        assert engine.statistics().open_files == 0
        with pytest.raises(ValueError, match="not open"):
            await engine.close_file(f)
        # Opened again: a new file, read from scratch.
        g = await engine.open_file(str(path))
        assert g is not f
        assert await g.read(0, 4) == data[:4]
        assert engine.statistics().files_opened == 2
        await engine.close_file(g)


async def test_closing_the_engine_frees_every_page(local_file):
    path, data = local_file
    with MemoryFile("given") as mf:
        engine = Engine(memory_file=mf)
        async with engine:
            f = await engine.open_file(str(path))
            await engine.open_file(str(path))
            assert await f.read(0, len(data)) == data
            assert mf.statistics().used_bytes >= len(data)
        assert engine.closed
        assert f.closed
        assert mf.statistics().used_bytes == 0
        assert not mf.closed  # Given, not owned.
        with pytest.raises(ClosedError):
            await f.read(0, 1)
        with pytest.raises(ClosedError):
            await engine.open_file(str(path))
        # Giving back a file of a closed engine is harmless.
        await engine.close_file(f)
        await engine.aclose()
    owned = Engine()
    async with owned:
        await owned.open_file(str(path))
    assert owned.memory_file.closed
    assert owned.statistics().memory is None


async def test_storage_options_are_part_of_the_key():
    data = pattern(10_000)
    async with RangeHTTPServer() as srv, Engine() as engine:
        srv.add("obj", data)
        url = srv.url("obj")
        plain = await engine.open_file(url)
        a = await engine.open_file(url, headers={"X-A": "1", "X-B": "2"})
        b = await engine.open_file(url, headers={"X-B": "2", "X-A": "1"})
        assert a is b
        assert a is not plain
        assert await a.read(0, 100) == await plain.read(0, 100) == data[:100]
        assert engine.statistics().open_files == 2
        await engine.aclose()


def test_file_keys_normalise_paths_urls_and_options(tmp_path: Path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"x")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    assert file_key(str(link), {}) == file_key(f"file://{target}", {})
    assert file_key("HTTP://Host:80/a/B", {}) == file_key("http://host:80/a/B", {})
    assert file_key("http://h/a", {}) != file_key("http://h/A", {})
    assert file_key("s3://b/k", {"key": "k"}) != file_key("s3://b/k", {})
    assert file_key("s3://b/k", {"a": 1}) != file_key("s3://b/k", {"a": True})
    opaque = object()
    unhashable = bytearray(b"x")
    k1 = file_key("s3://b/k", {"session": opaque, "buf": unhashable})
    assert k1 == file_key("s3://b/k", {"buf": unhashable, "session": opaque})
    assert k1 != file_key("s3://b/k", {"session": opaque, "buf": bytearray(b"x")})
    with pytest.raises(TypeError):
        file_key(b"/x", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a path"):
        file_key("", {})


async def test_bad_input_raises_clear_errors_and_changes_nothing(tmp_path: Path):
    async with RangeHTTPServer() as srv, Engine() as engine:
        before = engine.statistics()
        with pytest.raises(TypeError, match="url_or_path"):
            await engine.open_file(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a path"):
            await engine.open_file("")
        with pytest.raises(FileNotFoundError):
            await engine.open_file(str(tmp_path / "missing.bin"))
        with pytest.raises(ValueError, match="unsupported options"):
            await engine.open_file(str(tmp_path), color="red")
        with pytest.raises(ValueError, match="unknown protocol"):
            await engine.open_file("nosuchproto://x/y")
        with pytest.raises(FileNotFoundError):
            await engine.open_file(srv.url("missing"))
        after = engine.statistics()
        assert (after.open_files, after.users) == (before.open_files, before.users)
        assert after.memory is not None
        assert after.memory.used_bytes == 0
    with pytest.raises(TypeError, match="cache_limit"):
        Engine(cache_limit="1M")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="memory_file"):
        Engine(memory_file="mf")  # type: ignore[arg-type]
    with MemoryFile() as mf, pytest.raises(ValueError, match="not both"):
        Engine(cache_limit=MiB, memory_file=mf)


async def test_an_open_cancelled_while_asking_the_size_leaves_nothing_behind():
    async with RangeHTTPServer(latency=5.0) as srv, Engine() as engine:
        srv.add("obj", b"abc")
        with anyio.move_on_after(0.05) as scope:
            await engine.open_file(srv.url("obj"))
        assert scope.cancelled_caught
        stats = engine.statistics()
        assert (stats.open_files, stats.users) == (0, 0)
        srv.latency = 0.0
        with anyio.fail_after(DEADLINE):
            f = await engine.open_file(srv.url("obj"))
            assert await f.read(0, 3) == b"abc"
        await engine.close_file(f)


async def test_a_cancelled_read_leaks_nothing(local_file):
    _, data = local_file
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        with MemoryFile() as mf:
            async with Engine(memory_file=mf) as engine:
                f = await engine.open_file(srv.url("obj"))
                srv.latency = 1.0
                with anyio.move_on_after(0.05) as scope:
                    await f.read(MiB, 100)
                assert scope.cancelled_caught
                srv.latency = 0.0
                with anyio.fail_after(DEADLINE):
                    assert await f.read(MiB, 100) == data[MiB : MiB + 100]
                assert engine.users_of(f) == 1
            assert f.closed
            assert mf.statistics().used_bytes == 0


async def test_the_cache_budget_applies_across_files(tmp_path: Path):
    files = []
    for i in range(3):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(pattern(4 * MiB + i))
        files.append(p)
    limit = 2 * MiB
    async with Engine(cache_limit=limit) as engine:
        opened = [await engine.open_file(str(p)) for p in files]
        for p, f in zip(files, opened, strict=True):
            assert await f.read(0, 4 * MiB) == p.read_bytes()[: 4 * MiB]
        stats = engine.statistics()
        assert stats.cache.evictions > 0
        assert stats.cache.resident_bytes <= limit + 8 * MiB
        assert stats.memory is not None
        assert stats.memory.evictions > 0


async def test_an_engine_serves_one_loop(local_file):
    path, _ = local_file
    engine = Engine()
    await engine.open_file(str(path))

    def elsewhere() -> None:
        async def use() -> None:
            await engine.open_file(str(path))

        asyncio.run(use())

    with pytest.raises(WrongLoopError, match="another event loop"):
        await asyncio.to_thread(elsewhere)
    with pytest.raises(WrongLoopError):
        await asyncio.to_thread(engine.statistics)
    with pytest.raises(RuntimeError, match="already runs"):
        engine.start_thread()
    await engine.aclose()
    with pytest.raises(ClosedError):
        engine.start_thread()


async def test_s3_objects_are_shared_through_moto():
    data = pattern(300_000)
    with moto_s3("aiomemmap-engine") as (endpoint, client, bucket):
        client.put_object(Bucket=bucket, Key="obj.bin", Body=data)
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        async with Engine() as engine:
            with anyio.fail_after(DEADLINE):
                a = await engine.open_file(f"s3://{bucket}/obj.bin", **opts)
                b = await engine.open_file(f"s3://{bucket}/obj.bin", **opts)
                assert a is b
                assert await a.read(0, len(data)) == data
                assert a.statistics().bytes_fetched == len(data)
                with pytest.raises(FileNotFoundError):
                    await engine.open_file(f"s3://{bucket}/missing.bin", **opts)
                assert engine.statistics().open_files == 1
