"""Benchmarks of lazily paged remote files (rows P3, P4, P6, P7).

Every row runs against a :class:`~aiomemmap.tools.http_server.RangeHTTPServer` on
127.0.0.1 with an injected per-request latency, and measures its baselines
against the same server in the same run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable

import aiohttp
import fsspec

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import MappableRange
from aiomemmap.backings.opener import open_backing
from aiomemmap.backings.testing import FaultInjectingBacking
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.mappables.readahead import DEFAULT_MAXIMUM_WINDOW
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind
from aiomemmap.tools.bench import BenchRow, register
from aiomemmap.tools.http_server import RangeHTTPServer

_SEED = 20261125
_MIB = 1 << 20

#: Workload sizes; the environment may shrink them (used by the tests).
SCAN_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_SCAN_BYTES", 256 * _MIB))
RANDOM_READS = int(os.environ.get("AIOMEMMAP_BENCH_RANDOM_READS", 2048))
RANDOM_FILE_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_RANDOM_FILE_BYTES", 256 * _MIB))
BUDGET_SCAN_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_BUDGET_SCAN_BYTES", 1 << 30))
BUDGET_LIMIT = int(os.environ.get("AIOMEMMAP_BENCH_BUDGET_LIMIT", 64 * _MIB))
LATENCY = 0.002
READERS = 16


def _payload(size: int) -> bytes:
    rng = random.Random(_SEED)
    whole, rest = divmod(size, _MIB)
    return b"".join([rng.randbytes(_MIB) for _ in range(whole)] + [rng.randbytes(rest)])


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def _http_fs() -> object:
    return fsspec.filesystem("http", skip_instance_cache=True)


def _close_http_fs(fs: object) -> None:
    """Close the aiohttp session a synchronous fsspec HTTP filesystem opened."""
    session = getattr(fs, "_session", None)
    if session is not None:
        fsspec.asyn.sync(fs.loop, session.close)  # type: ignore[attr-defined]


def _fsspec_scan(url: str, size: int, cache_type: str) -> float:
    """Read the whole file sequentially through fsspec's HTTP file; return seconds."""
    fs = _http_fs()
    try:
        t0 = time.perf_counter()
        with fs.open(url, "rb", cache_type=cache_type, block_size=4 * _MIB) as f:  # type: ignore[attr-defined]
            while f.read(_MIB):
                pass
        return time.perf_counter() - t0
    finally:
        _close_http_fs(fs)


def _in_thread(fn: Callable[[], float]) -> Awaitable[float]:
    return asyncio.to_thread(fn)


@register("P3,P3b")
async def sequential_scan() -> list[BenchRow]:
    """P3: a cold sequential scan over HTTP with 2 ms latency."""
    size = SCAN_BYTES
    data = _payload(size)
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("scan.bin", data)
        url = srv.url("scan.bin")

        async def whole_get() -> None:
            async with (
                aiohttp.ClientSession() as s,
                s.get(url) as resp,
            ):
                async for _ in resp.content.iter_chunked(_MIB):
                    pass

        async def ours() -> None:
            with MemoryFile("bench-p3") as mf:
                backing = open_backing(url)
                cf = CachedFile(backing, mf)
                try:
                    off = 0
                    while off < size:
                        chunk = await cf.read(off, _MIB)
                        off += len(chunk)
                finally:
                    await cf.aclose()
                    await backing.aclose()

        t_get = await _timed(whole_get)
        t_ours = await _timed(ours)
        # fsspec's "mmap" cache type is left out: at the end of a file it asks
        # for an empty range ("bytes=N-(N-1)"), which HTTP servers ignore
        # and answer with the whole body, and fsspec then gives up.
        fsspec_times = {
            ct: await _in_thread(functools.partial(_fsspec_scan, url, size, ct))
            for ct in ("blockcache", "readahead", "bytes")
        }
    best_ct, t_fs = min(fsspec_times.items(), key=lambda kv: kv[1])
    mbps = size / _MIB
    ours_rate, get_rate, fs_rate = mbps / t_ours, mbps / t_get, mbps / t_fs
    return [
        BenchRow(
            "P3",
            f"cold sequential scan, {size // _MIB} MiB over HTTP, 2 ms latency",
            "MiB/s",
            ours_rate,
            get_rate,
            "one whole-file aiohttp GET",
            ours_rate / get_rate,
            target=">= 0.80 of the GET",
            met=ours_rate >= 0.8 * get_rate,
        ),
        BenchRow(
            "P3b",
            "the same scan against fsspec's best cache type",
            "MiB/s",
            ours_rate,
            fs_rate,
            f"fsspec HTTPFileSystem, cache_type={best_ct}",
            ours_rate / fs_rate,
            target=">= 2.5x fsspec",
            met=ours_rate >= 2.5 * fs_rate,
        ),
    ]


def _fsspec_random(url: str, offsets: list[int]) -> float:
    """16 threads, each with its own blockcache file, reading its share."""
    fs = _http_fs()
    shares = [offsets[i::READERS] for i in range(READERS)]

    def reader(share: list[int]) -> None:
        with fs.open(url, "rb", cache_type="blockcache", block_size=64 * 1024) as f:  # type: ignore[attr-defined]
            for off in share:
                f.seek(off)
                f.read(PAGE_SIZE)

    threads = [threading.Thread(target=reader, args=(s,)) for s in shares]
    try:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0
    finally:
        _close_http_fs(fs)


@register("P4,P4b,P4c")
async def random_reads() -> list[BenchRow]:
    """P4: cold random 4 KiB reads, 16 concurrent readers, 2 ms latency."""
    size = RANDOM_FILE_BYTES
    n = RANDOM_READS
    rng = random.Random(_SEED)
    offsets = [rng.randrange(0, size // PAGE_SIZE) * PAGE_SIZE for _ in range(n)]
    data = _payload(size)
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("random.bin", data)
        url = srv.url("random.bin")

        async def raw() -> None:
            async with aiohttp.ClientSession() as s:

                async def reader(share: list[int]) -> None:
                    for off in share:
                        hdr = {"Range": f"bytes={off}-{off + PAGE_SIZE - 1}"}
                        async with s.get(url, headers=hdr) as resp:
                            await resp.read()

                async with asyncio.TaskGroup() as tg:
                    for i in range(READERS):
                        tg.create_task(reader(offsets[i::READERS]))

        fetched = 0

        async def ours() -> None:
            nonlocal fetched
            with MemoryFile("bench-p4") as mf:
                backing = open_backing(url)
                cf = CachedFile(backing, mf)
                try:

                    async def reader(share: list[int]) -> None:
                        for off in share:
                            await cf.read(off, PAGE_SIZE)

                    async with asyncio.TaskGroup() as tg:
                        for i in range(READERS):
                            tg.create_task(reader(offsets[i::READERS]))
                    fetched = cf.statistics().bytes_fetched
                finally:
                    await cf.aclose()
                    await backing.aclose()

        t_raw = await _timed(raw)
        t_ours = await _timed(ours)
        t_fs = await _in_thread(lambda: _fsspec_random(url, offsets))
    ours_rate, raw_rate, fs_rate = n / t_ours, n / t_raw, n / t_fs
    amplification = fetched / (n * PAGE_SIZE)
    return [
        BenchRow(
            "P4",
            f"cold random 4 KiB reads x{n}, {READERS} readers, 2 ms latency",
            "reads/s",
            ours_rate,
            raw_rate,
            f"{READERS} concurrent raw range GETs",
            ours_rate / raw_rate,
            target=">= 0.90 of raw GETs",
            met=ours_rate >= 0.9 * raw_rate,
        ),
        BenchRow(
            "P4b",
            "the same reads against fsspec blockcache",
            "reads/s",
            ours_rate,
            fs_rate,
            f"fsspec blockcache, {READERS} threads",
            ours_rate / fs_rate,
            target=">= 5x fsspec",
            met=ours_rate >= 5 * fs_rate,
        ),
        BenchRow(
            "P4c",
            "bytes fetched per byte read in those reads",
            "x",
            amplification,
            4.0,
            "the target's bound",
            4.0 / amplification if amplification else float("inf"),
            target="<= 4x",
            met=amplification <= 4.0,
        ),
    ]


def _stamped_block(index: int, block: bytes) -> bytes:
    """``block`` with its first 8 bytes replaced by ``index``."""
    return index.to_bytes(8, "little") + block[8:]


def _stamped_payload(size: int) -> tuple[bytes, bytes]:
    """A cheap large payload: one seeded 1 MiB block, repeated, each stamped.

    Returns:
        ``(payload, block)``; MiB ``i`` of the payload is
        ``_stamped_block(i, block)`` (cut short at the end).
    """
    block = random.Random(_SEED).randbytes(_MIB)
    whole, rest = divmod(size, _MIB)
    parts = [_stamped_block(i, block) for i in range(whole)]
    if rest:
        parts.append(_stamped_block(whole, block)[:rest])
    return b"".join(parts), block


@register("P6")
async def budget_scan() -> list[BenchRow]:
    """P6: a sequential scan under a cache budget stays within it."""
    size = BUDGET_SCAN_BYTES
    limit = BUDGET_LIMIT
    window = DEFAULT_MAXIMUM_WINDOW
    data, block = _stamped_payload(size)
    peak = 0
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("budget.bin", data)
        del data
        with MemoryFile("bench-p6", cache_limit=limit) as mf:
            backing = open_backing(srv.url("budget.bin"))
            cf = CachedFile(backing, mf)
            try:
                off = 0
                while off < size:
                    chunk = await cf.read(off, _MIB)
                    if not chunk:
                        raise RuntimeError(f"P6: the scan stopped at {off:#x}")
                    want = _stamped_block(off // _MIB, block)[: len(chunk)]
                    if chunk != want:
                        raise RuntimeError(f"P6: wrong bytes at {off:#x}")
                    off += len(chunk)
                    cached = mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]
                    peak = max(peak, cf.statistics().resident_bytes, cached)
            finally:
                await cf.aclose()
                await backing.aclose()
    bound = limit + window
    return [
        BenchRow(
            "P6",
            f"{size // _MIB} MiB scan with cache_limit {limit // _MIB} MiB: "
            "peak resident cache",
            "MiB",
            peak / _MIB,
            bound / _MIB,
            f"the limit plus one readahead window ({window // _MIB} MiB)",
            bound / peak if peak else float("inf"),
            target="peak <= limit + window",
            met=peak <= bound,
        )
    ]


@register("P7")
async def single_flight() -> list[BenchRow]:
    """P7: 64 concurrent faults on one cold page cause one backing fetch."""
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("one.bin", _payload(16 * PAGE_SIZE))
        with MemoryFile("bench-p7") as mf:
            backing = FaultInjectingBacking(open_backing(srv.url("one.bin")))
            cf = CachedFile(backing, mf)
            try:
                page = MappableRange(3 * PAGE_SIZE, 4 * PAGE_SIZE)
                async with asyncio.TaskGroup() as tg:
                    for _ in range(64):
                        tg.create_task(cf.translate(page, page, AccessType.READ))
                reads = backing.reads
            finally:
                await cf.aclose()
                await backing.aclose()
    return [
        BenchRow(
            "P7",
            "backing fetches for 64 concurrent faults on one cold page",
            "fetches",
            float(reads),
            64.0,
            "one fetch per fault",
            64.0 / reads if reads else float("inf"),
            target="exactly 1",
            met=reads == 1,
        )
    ]
