"""The ``aiomemmap`` fsspec filesystem and cache type, on their own."""

from __future__ import annotations

import asyncio
import random

import anyio
import fsspec
import fsspec.caching
import pytest

import aiomemmap
from aiomemmap.faces.fsspec_cache import AiomemmapCache
from aiomemmap.faces.fsspec_fs import AiomemmapFileSystem
from aiomemmap.faces.fsspec_reads import byte_bounds, merge_ranges
from aiomemmap.tools.http_server import RangeHTTPServer

DATA = random.Random(7).randbytes(300_000)


@pytest.fixture
def engine_thread():
    with aiomemmap.Engine().start_thread() as thread:
        yield thread


def test_the_protocol_and_cache_type_are_registered():
    assert fsspec.get_filesystem_class("aiomemmap") is AiomemmapFileSystem
    assert fsspec.caching.caches["aiomemmap"] is AiomemmapCache


def test_merge_ranges_joins_close_ranges_and_keeps_members():
    spans = merge_ranges([(120, 200), (0, 50), (250, 300), (10_000, 10_010)], 64)
    assert spans == [(0, 50, [1]), (120, 300, [0, 2]), (10_000, 10_010, [3])]


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (None, None, (0, 100)),
        (-10, None, (90, 100)),
        (5, -5, (5, 95)),
        (50, 500, (50, 100)),
        (80, 20, (80, 80)),
        (200, None, (100, 100)),
    ],
)
def test_byte_bounds_follow_fsspec(start, end, want):
    assert byte_bounds(start, end, 100) == want


def test_ls_and_info_are_the_targets(engine_thread):
    target = fsspec.filesystem("memory")
    target.pipe("/aiomemmap-ls/a.bin", b"a" * 10)
    target.pipe("/aiomemmap-ls/b.bin", b"b" * 20)
    try:
        fs = fsspec.filesystem(
            "aiomemmap",
            target_protocol="memory",
            engine=engine_thread,
            skip_instance_cache=True,
        )
        assert sorted(fs.ls("/aiomemmap-ls", detail=False)) == [
            "/aiomemmap-ls/a.bin",
            "/aiomemmap-ls/b.bin",
        ]
        assert fs.info("/aiomemmap-ls/b.bin")["size"] == 20
        assert fs.exists("/aiomemmap-ls/a.bin")
        assert not fs.exists("/aiomemmap-ls/none.bin")
        assert fs.cat_file("/aiomemmap-ls/b.bin", start=-5) == b"b" * 5
        with pytest.raises(FileNotFoundError):
            fs.cat_file("/aiomemmap-ls/none.bin")
    finally:
        target.rm("/aiomemmap-ls", recursive=True)


async def test_cat_ranges_merges_nearby_ranges_into_one_fetch(engine_thread):
    async with RangeHTTPServer() as srv:
        srv.add("blob", DATA)
        fs = AiomemmapFileSystem(
            "http", engine=engine_thread, asynchronous=True, skip_instance_cache=True
        )
        url = srv.url("blob")
        opened = srv.requests
        assert await fs._cat_file(url, start=0, end=1) == DATA[:1]
        before = srv.requests
        assert before > opened
        starts = [100_000, 100_500, 101_000, 250_000]
        ends = [100_100, 100_600, 101_100, 250_010]
        got = await fs._cat_ranges([url] * 4, starts, ends, max_gap=4096)
        assert got == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]
        # The three close ranges are one read; the far one another.
        stats = engine_thread.statistics()
        assert stats.cache.fetches <= 3
        assert srv.requests - before <= 2


async def test_cat_ranges_returns_errors_in_place(engine_thread):
    async with RangeHTTPServer() as srv:
        srv.add("blob", DATA)
        fs = AiomemmapFileSystem(
            "http", engine=engine_thread, asynchronous=True, skip_instance_cache=True
        )
        got = await fs._cat_ranges(
            [srv.url("blob"), srv.url("missing")], [0, 0], [10, 10]
        )
        assert got[0] == DATA[:10]
        assert isinstance(got[1], FileNotFoundError)


async def test_async_use_from_another_loop_never_blocks_it(engine_thread):
    async with RangeHTTPServer(latency=0.05) as srv:
        srv.add("blob", DATA)
        fs = AiomemmapFileSystem(
            "http", engine=engine_thread, asynchronous=True, skip_instance_cache=True
        )
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            with anyio.fail_after(30):
                data = await fs._cat_file(srv.url("blob"), start=1000, end=2000)
            tg.cancel_scope.cancel()
        assert data == DATA[1000:2000]
        # The caller's loop ran its other task while the engine fetched.
        assert ticks > 0


async def test_readers_of_one_url_share_one_cache(engine_thread):
    async with RangeHTTPServer() as srv:
        srv.add("blob", DATA)
        url = srv.url("blob")
        fs = AiomemmapFileSystem(
            "http", engine=engine_thread, asynchronous=True, skip_instance_cache=True
        )
        first = await fs._cat_file(url)
        requests = srv.requests

        def through_cache_type() -> bytes:
            http = fsspec.filesystem("http", skip_instance_cache=True)
            with http.open(
                url,
                "rb",
                cache_type="aiomemmap",
                cache_options={"engine": engine_thread},
            ) as f:
                return bytes(f.read())

        second = await asyncio.to_thread(through_cache_type)
        assert first == second == DATA
        # The second reader found every page cached: the only requests it
        # caused are fsspec's own size probe.
        assert engine_thread.statistics().open_files == 1
        assert srv.requests - requests <= 1


def test_a_file_of_a_wrapped_filesystem_is_served_through_its_fetcher(engine_thread):
    target = fsspec.filesystem("memory")
    target.pipe("/aiomemmap-dir/x.bin", DATA)
    try:
        dirfs = fsspec.filesystem("dir", path="/aiomemmap-dir", fs=target)
        with dirfs.open(
            "x.bin",
            "rb",
            cache_type="aiomemmap",
            cache_options={"engine": engine_thread},
        ) as f:
            f.seek(12_345)
            assert f.read(1000) == DATA[12_345:13_345]
    finally:
        target.rm("/aiomemmap-dir", recursive=True)


def test_the_open_file_reads_through_the_engine(engine_thread):
    target = fsspec.filesystem("memory")
    target.pipe("/aiomemmap-open/x.bin", DATA)
    try:
        with fsspec.open(
            "aiomemmap::memory://aiomemmap-open/x.bin",
            "rb",
            aiomemmap={"engine": engine_thread, "skip_instance_cache": True},
        ) as f:
            assert isinstance(f.cache, AiomemmapCache)
            assert f.size == len(DATA)
            f.seek(-100, 2)
            assert f.read() == DATA[-100:]
        assert engine_thread.statistics().files_opened == 1
        with pytest.raises(ValueError, match="only reads"):
            fsspec.open(
                "aiomemmap::memory://aiomemmap-open/x.bin",
                "wb",
                aiomemmap={"engine": engine_thread},
            ).open()
    finally:
        target.rm("/aiomemmap-open", recursive=True)
