"""Benchmarks of the address-space layer (rows P1, P2, P5, P5b and P5c)."""

from __future__ import annotations

import gc
import mmap
import os
import resource
import statistics
import time

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import AddrRange
from aiomemmap.mappables.shared_memory import SharedMemory
from aiomemmap.memmap.interfaces import InvalidateOpts, MMapOpts
from aiomemmap.mm.address_space import AddressSpace
from aiomemmap.pgalloc.memory_file import MemoryFile
from aiomemmap.tools.bench import BenchRow, measure_async_rate, measure_rate, register

_P1_TARGET = 300_000


def _kernel_minor_fault_rate(size: int, repeats: int = 5) -> float:
    """Return the kernel's minor-fault rate on a memfd whose pages are cached.

    Each repeat maps the memfd afresh and writes one byte per page: a write
    fault on a resident shared page is one minor fault per page (reads would
    be served several pages per fault by the kernel's fault-around). The
    rate counts the faults the kernel reports (``ru_minflt``).
    """
    fd = os.memfd_create("bench-p1-kernel", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            for off in range(0, size, PAGE_SIZE):
                m[off] = 1
        rates = []
        offsets = range(0, size, PAGE_SIZE)
        for _ in range(repeats):
            with mmap.mmap(fd, size) as m:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                for off in offsets:
                    m[off] = 2
                elapsed = time.perf_counter() - t0
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            rates.append(max(faults, 1) / elapsed)
        return statistics.median(rates)
    finally:
        os.close(fd)


@register("P1")
async def resident_faults() -> list[BenchRow]:
    """handle_fault on resident pages 4 KiB apart, against the kernel's minor faults."""
    size = 64 << 20
    with MemoryFile("bench-p1") as mf:
        async with AddressSpace(mf) as asp:
            addr = await asp.mmap(MMapOpts(length=size, private=True))
            pages = size // PAGE_SIZE
            for i in range(pages):
                await asp.handle_fault(addr + i * PAGE_SIZE, AccessType.WRITE)
            addrs = [addr + i * PAGE_SIZE for i in range(pages)]
            state = [0]
            fault = asp.handle_fault
            read = AccessType.READ

            async def ours() -> None:
                i = state[0]
                state[0] = (i + 1) % pages
                await fault(addrs[i], read)

            ours_rate = await measure_async_rate(ours, batch=2000)
    base_rate = _kernel_minor_fault_rate(size)
    return [
        BenchRow(
            "P1",
            "handle_fault on resident pages, 4 KiB apart",
            "faults/s",
            ours_rate,
            base_rate,
            "kernel minor faults (write) on a cached memfd",
            ours_rate / base_rate,
            ">= 300,000 faults/s",
            ours_rate >= _P1_TARGET,
        )
    ]


@register("P2")
async def copy_in_resident() -> list[BenchRow]:
    """copy_in of 64 KiB from resident pages, against a memoryview copy of the memfd."""
    size = 64 * 1024
    span = 16 << 20
    with MemoryFile("bench-p2") as mf:
        async with AddressSpace(mf) as asp:
            addr = await asp.mmap(MMapOpts(length=span, private=True))
            payload = os.urandom(span)
            await asp.copy_out(addr, payload)
            offsets = [addr + off for off in range(0, span, size)]
            state = [0]
            copy_in = asp.copy_in

            async def ours() -> None:
                i = state[0]
                state[0] = (i + 1) % len(offsets)
                await copy_in(offsets[i], size)

            ours_rate = await measure_async_rate(ours, batch=200)
        fd = mf.fd()
        with mmap.mmap(fd, span, offset=0) as m:
            view = memoryview(m)
            plain = list(range(0, span, size))
            bstate = [0]

            def baseline() -> None:
                i = bstate[0]
                bstate[0] = (i + 1) % len(plain)
                off = plain[i]
                bytes(view[off : off + size])

            base_rate = measure_rate(baseline, batch=200)
            view.release()
    mib = size / (1 << 20)
    ratio = ours_rate / base_rate
    return [
        BenchRow(
            "P2",
            "copy_in of 64 KiB from resident pages",
            "MiB/s",
            ours_rate * mib,
            base_rate * mib,
            "bytes() of a 64 KiB memoryview slice of the memfd",
            ratio,
            ">= 0.50 of the memoryview copy",
            ratio >= 0.5,
        )
    ]


async def _map_spaces(
    mf: MemoryFile, shm: SharedMemory, count: int
) -> list[AddressSpace]:
    spaces = []
    for _ in range(count):
        asp = AddressSpace(mf)
        await asp.mmap(
            MMapOpts(
                length=PAGE_SIZE,
                mappable=shm,
                mapping_identity=shm,
                perms=AccessType.READ,
                max_perms=AccessType.READ,
            )
        )
        spaces.append(asp)
    return spaces


async def _truncate_cost(
    shm: SharedMemory, spaces: list[AddressSpace], repeats: int = 3
) -> float:
    """Return the median microseconds per delivered invalidation of a truncate."""
    costs = []
    for _ in range(repeats):
        await shm.truncate(PAGE_SIZE)
        for asp in spaces:
            await asp.handle_fault(asp.layout.bottom_up_base, AccessType.READ)
        # The garbage of the set-up above is collected now, not inside the
        # measurement (a full collection over 10,000 spaces would dominate
        # it, at whichever moment the collector's thresholds fall).
        gc.collect()
        t0 = time.perf_counter()
        await shm.truncate(0)
        elapsed = time.perf_counter() - t0
        costs.append(elapsed / len(spaces) * 1e6)
        if any(asp.statistics().rss for asp in spaces):
            raise AssertionError("truncate left translations behind")
    return statistics.median(costs)


async def _time_invalidations(
    spaces: list[AddressSpace], ranges: list[AddrRange], opts: InvalidateOpts
) -> float:
    """Microseconds per space to await each space's invalidate() of its range."""
    gc.collect()
    t0 = time.perf_counter()
    for asp, ar in zip(spaces, ranges, strict=True):
        await asp.invalidate(ar, opts)
    return (time.perf_counter() - t0) / len(spaces) * 1e6


async def _direct_invalidate_cost(
    shm: SharedMemory, spaces: list[AddressSpace]
) -> float:
    """Microseconds per invalidate() awaited directly on each space in turn."""
    opts = InvalidateOpts(invalidate_private=True)
    costs = []
    await shm.truncate(PAGE_SIZE)
    for _ in range(3):
        for asp in spaces:
            await asp.handle_fault(asp.layout.bottom_up_base, AccessType.READ)
        ranges = [
            AddrRange(asp.layout.bottom_up_base, asp.layout.bottom_up_base + PAGE_SIZE)
            for asp in spaces
        ]
        costs.append(await _time_invalidations(spaces, ranges, opts))
    return statistics.median(costs)


@register("P5,P5b")
async def truncate_fan_out() -> list[BenchRow]:
    """Truncate a file mapped by 10,000 spaces; then again beside 10,000 others."""
    count = 10_000
    with MemoryFile("bench-p5") as mf:
        target = SharedMemory(mf, PAGE_SIZE, name="target")
        other = SharedMemory(mf, PAGE_SIZE, name="other")
        spaces = await _map_spaces(mf, target, count)
        try:
            alone = await _truncate_cost(target, spaces)
            direct = await _direct_invalidate_cost(target, spaces)
            unrelated = await _map_spaces(mf, other, count)
            try:
                crowded = await _truncate_cost(target, spaces)
            finally:
                for asp in unrelated:
                    await asp.aclose()
        finally:
            for asp in spaces:
                await asp.aclose()
            await target.aclose()
            await other.aclose()
    return [
        BenchRow(
            "P5",
            "truncate of a file mapped by 10,000 spaces, per invalidation",
            "us",
            alone,
            direct,
            "awaiting each space's invalidate() in turn",
            direct / alone,
            "<= 10 us per delivered invalidation",
            alone <= 10.0,
        ),
        BenchRow(
            "P5b",
            "the same with 10,000 unrelated spaces mapped",
            "us",
            crowded,
            alone,
            "P5 without the unrelated spaces",
            alone / crowded,
            "unrelated spaces add <= 20%",
            crowded <= alone * 1.2,
        ),
    ]


# P5c: every space maps the whole file and has faulted all of it (one pma per
# space); the file is then cut to a size inside its third page, not page
# aligned, so every space keeps its first pages and drops the rest.
_P5C_PAGES = 4
_P5C_CUT = 2 * PAGE_SIZE + 100
_P5C_KEEP = 3 * PAGE_SIZE


async def _fault_whole_file(shm: SharedMemory, spaces: list[AddressSpace]) -> None:
    """Give every space one pma over the whole file, made afresh."""
    await shm.truncate(0)
    await shm.truncate(_P5C_PAGES * PAGE_SIZE)
    for asp in spaces:
        await asp.handle_fault(asp.layout.bottom_up_base, AccessType.READ)
    if any(asp.statistics().pmas != 1 for asp in spaces):
        raise AssertionError("a space's pages are not one pma")


async def _partial_truncate_cost(
    shm: SharedMemory, spaces: list[AddressSpace], repeats: int = 3
) -> float:
    """Return the median microseconds per delivered invalidation of a cut."""
    costs = []
    for _ in range(repeats):
        await _fault_whole_file(shm, spaces)
        gc.collect()
        t0 = time.perf_counter()
        await shm.truncate(_P5C_CUT)
        elapsed = time.perf_counter() - t0
        costs.append(elapsed / len(spaces) * 1e6)
        if any(asp.statistics().rss != _P5C_KEEP for asp in spaces):
            raise AssertionError("the cut left the wrong pages mapped")
    return statistics.median(costs)


async def _partial_direct_cost(
    shm: SharedMemory, spaces: list[AddressSpace], repeats: int = 3
) -> float:
    """Microseconds per partial invalidate() awaited on each space in turn."""
    opts = InvalidateOpts(invalidate_private=True)
    costs = []
    for _ in range(repeats):
        await _fault_whole_file(shm, spaces)
        ranges = [
            AddrRange(
                asp.layout.bottom_up_base + _P5C_KEEP,
                asp.layout.bottom_up_base + _P5C_PAGES * PAGE_SIZE,
            )
            for asp in spaces
        ]
        costs.append(await _time_invalidations(spaces, ranges, opts))
    return statistics.median(costs)


@register("P5c")
async def partial_truncate_fan_out() -> list[BenchRow]:
    """Cut a file mapped by 10,000 spaces through every space's mapped pages."""
    count = 10_000
    size = _P5C_PAGES * PAGE_SIZE
    with MemoryFile("bench-p5c") as mf:
        target = SharedMemory(mf, size, name="target")
        spaces = []
        try:
            for _ in range(count):
                asp = AddressSpace(mf)
                spaces.append(asp)
                await asp.mmap(
                    MMapOpts(
                        length=size,
                        mappable=target,
                        mapping_identity=target,
                        perms=AccessType.READ,
                        max_perms=AccessType.READ,
                    )
                )
            cut = await _partial_truncate_cost(target, spaces)
            direct = await _partial_direct_cost(target, spaces)
        finally:
            for asp in spaces:
                await asp.aclose()
            await target.aclose()
    return [
        BenchRow(
            "P5c",
            "truncate through every space's mapped pages (10,000 spaces), "
            "per invalidation",
            "us",
            cut,
            direct,
            "awaiting each space's invalidate() of the cut pages in turn",
            direct / cut,
            "<= 10 us per delivered invalidation",
            cut <= 10.0,
        )
    ]
