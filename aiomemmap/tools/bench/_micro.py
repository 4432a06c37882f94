"""Micro-benchmarks of the foundation layers (rows M1-M5)."""

from __future__ import annotations

import bisect
import mmap
import random

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq, copy_seq
from aiomemmap._core.host import punch_hole
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import AddrRange, FileRange
from aiomemmap._core.segments import SegmentMap
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.memmap.interfaces import InvalidateOpts
from aiomemmap.pgalloc.memory_file import MemoryFile
from aiomemmap.tools.bench import BenchRow, measure_async_rate, measure_rate, register

_SEED = 20261125


@register("M1")
async def segment_lookup() -> list[BenchRow]:
    """Find the segment holding a random key among 10,000 segments."""
    n = 10_000
    segs: SegmentMap[int] = SegmentMap()
    starts = []
    for i in range(n):
        segs.insert(2 * i * PAGE_SIZE, (2 * i + 1) * PAGE_SIZE, i)
        starts.append(2 * i * PAGE_SIZE)
    rng = random.Random(_SEED)
    keys = [rng.randrange(0, 2 * n * PAGE_SIZE) for _ in range(4096)]
    it = iter(range(1 << 62))

    def ours() -> object:
        return segs.find(keys[next(it) & 4095])

    def baseline() -> object:
        return bisect.bisect_right(starts, keys[next(it) & 4095])

    ours_rate = measure_rate(ours, batch=1000)
    base_rate = measure_rate(baseline, batch=1000)
    return [
        BenchRow(
            "M1",
            "segment map find(), 10,000 segments",
            "lookups/s",
            ours_rate,
            base_rate,
            "bisect on a plain list",
            ours_rate / base_rate,
        )
    ]


@register("M2")
async def allocate_free() -> list[BenchRow]:
    """Allocate one page, write it, free it; against the hole punch a free makes."""
    with MemoryFile("bench-m2") as mf:
        warm = mf.allocate(PAGE_SIZE * 64)
        mf.dec_ref(warm)

        def ours() -> None:
            fr = mf.allocate(PAGE_SIZE)
            mf.dec_ref(fr)

        fd = mf.fd()
        scratch = mf.allocate(PAGE_SIZE)

        def baseline() -> None:
            punch_hole(fd, scratch.start, PAGE_SIZE)

        ours_rate = measure_rate(ours, batch=200)
        base_rate = measure_rate(baseline, batch=200)
        mf.dec_ref(scratch)
    return [
        BenchRow(
            "M2",
            "MemoryFile allocate + free of one page",
            "cycles/s",
            ours_rate,
            base_rate,
            "one fallocate(PUNCH_HOLE)",
            ours_rate / base_rate,
        )
    ]


@register("M3")
async def map_internal_copy() -> list[BenchRow]:
    """map_internal + copy of 64 KiB against a plain memoryview copy of the memfd."""
    size = 64 * 1024
    with MemoryFile("bench-m3") as mf:
        fr = mf.allocate(size)
        src = bytes(random.Random(_SEED).randbytes(size))
        mf.map_internal(fr, AccessType.WRITE)
        dst_buf = bytearray(size)
        dst = BlockSeq([memoryview(dst_buf)])
        whole = FileRange(fr.start, fr.end)
        copy_seq(mf.map_internal(whole, AccessType.WRITE), BlockSeq([memoryview(src)]))

        def ours() -> None:
            copy_seq(dst, mf.map_internal(whole, AccessType.READ))

        m = mmap.mmap(mf.fd(), size, mmap.MAP_SHARED, offset=fr.start)
        plain = memoryview(m)
        out = memoryview(dst_buf)

        def baseline() -> None:
            out[:] = plain

        ours_rate = measure_rate(ours, batch=200)
        base_rate = measure_rate(baseline, batch=200)
        plain.release()
        out.release()
        m.close()
        mf.dec_ref(fr)
    mib = size / (1 << 20)
    return [
        BenchRow(
            "M3",
            "map_internal + copy_seq of 64 KiB",
            "MiB/s",
            ours_rate * mib,
            base_rate * mib,
            "memoryview copy of an mmap of the memfd",
            ours_rate / base_rate,
        )
    ]


class _Space:
    """A mapping space whose invalidation does nothing but count."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.count += 1


@register("M4,M5")
async def bus_publish() -> list[BenchRow]:
    """Cost per delivery of publishing one invalidation to many spaces."""
    opts = InvalidateOpts(invalidate_private=True)
    ar = AddrRange(0, PAGE_SIZE)
    rows = []
    for row_id, n in (("M4", 1_000), ("M5", 10_000)):
        spaces = [_Space() for _ in range(n)]
        deliveries = [(s, ar) for s in spaces]
        bus = InvalidationBus()

        async def ours(
            bus: InvalidationBus = bus,
            deliveries: list[tuple[_Space, AddrRange]] = deliveries,
        ) -> None:
            await bus.publish(deliveries, opts)

        async def baseline(spaces: list[_Space] = spaces) -> None:
            for s in spaces:
                await s.invalidate(ar, opts)

        ours_rate = await measure_async_rate(ours, batch=1, repeats=5, min_time=0.2)
        base_rate = await measure_async_rate(baseline, batch=1, repeats=5, min_time=0.2)
        ours_us = 1e6 / (ours_rate * n)
        base_us = 1e6 / (base_rate * n)
        rows.append(
            BenchRow(
                row_id,
                f"InvalidationBus.publish to {n:,} spaces, per delivery",
                "us",
                ours_us,
                base_us,
                "awaiting each invalidate() in turn",
                base_us / ours_us,
                target="<= 10 us per delivery (P5's budget)",
                met=ours_us <= 10.0,
            )
        )
    return rows
