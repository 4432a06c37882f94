"""CachedFile: gVisor's caching-inode tests, the fetch engine, invalidation, races."""

from __future__ import annotations

import asyncio
import random

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AdaptiveReadahead,
    AddrRange,
    AlignmentError,
    BusError,
    BytesBacking,
    CachedFile,
    CacheStatistics,
    ClosedError,
    FaultInjectingBacking,
    FileRange,
    FixedReadahead,
    InvalidateOpts,
    InvalidationBus,
    LockOrderError,
    LockRank,
    MappableRange,
    MemoryFile,
    MemoryKind,
    NoReadahead,
    OrderedLock,
    ReadaheadHint,
    RetryPolicy,
    check_translate_result,
)
from aiomemmap.memmap.bus import default_bus

P = PAGE_SIZE
KiB = 1024
MiB = 1024 * KiB
NO_RETRY = RetryPolicy(attempts=2, initial_backoff=0.0, max_backoff=0.0)


def M(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class RecordingSpace:
    """A mapping space that records invalidations; may block in them."""

    def __init__(self) -> None:
        self.inv: list[tuple[AddrRange, InvalidateOpts]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.inv.append((ar, opts))


class GatedBacking:
    """A BytesBacking whose reads and writes can be held, failed and recorded."""

    def __init__(self, data: bytes, *, readonly: bool = False) -> None:
        self.inner = BytesBacking(data, readonly=readonly)
        self.readonly = readonly
        self.read_gate: asyncio.Event | None = None
        self.write_gate: asyncio.Event | None = None
        self.read_entered = asyncio.Event()
        self.write_entered = asyncio.Event()
        self.reads: list[tuple[int, int]] = []
        self.active = 0
        self.max_active = 0

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        self.reads.append((offset, len(buf)))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.read_entered.set()
            if self.read_gate is not None:
                await self.read_gate.wait()
            await asyncio.sleep(0)
            return await self.inner.read_into(offset, buf)
        finally:
            self.active -= 1

    async def write_from(self, offset: int, data: memoryview) -> int:
        self.write_entered.set()
        if self.write_gate is not None:
            await self.write_gate.wait()
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def data(self) -> bytes:
        return self.inner.data


@pytest.fixture
def mf():
    with MemoryFile("test-cached-file", chunk_size=64 * MiB) as f:
        yield f


def cache_bytes(mf: MemoryFile) -> int:
    return mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]


def translated_bytes(ts) -> bytes:
    return b"".join(
        t.file.map_internal(t.file_range(), AccessType.READ).tobytes() for t in ts
    )


async def closed_and_balanced(f: CachedFile, mf: MemoryFile) -> None:
    await f.aclose()
    assert mf.statistics().used_bytes == 0
    assert f.statistics().fetches_in_flight == 0


# ----------------------------------------------------------------------
# gVisor's legacy caching-inode tests (inode_cached_test.go)


async def test_cached_file_gvisor_read(mf):
    data = b"a" * P + b"b" * P + b"c" * P
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, readahead=NoReadahead())
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x11000), P, False)
    ts, err = await f.translate(M(P, 2 * P), M(P, 2 * P), AccessType.READ)
    assert err is None
    assert (
        check_translate_result(M(P, 2 * P), M(P, 2 * P), AccessType.READ, ts, err)
        is None
    )
    assert f.statistics().resident_bytes == P
    assert translated_bytes(ts) == b"b" * P
    assert await f.read(0, 4 * P) == data
    await f.remove_mapping(ms, AddrRange(0x10000, 0x11000), P, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_gvisor_write(mf):
    data = b"a" * P + b"b" * P + b"c" * P + b"d" * P
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, readahead=NoReadahead(), writable=True)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x12000), P, True)
    _, err = await f.translate(M(P, 3 * P), M(P, 3 * P), AccessType.READ)
    assert err is None
    assert f.statistics().resident_bytes == 2 * P
    assert await f.write(0, b"e" * P + b"f" * P) == 2 * P
    # Page 0 was not cached: it went straight to the backing.
    assert backing.data[:P] == b"e" * P
    # Page 1 was cached: the backing sees it only after write-back.
    assert backing.data[P : 2 * P] == b"b" * P
    assert await f.read(0, 2 * P) == b"e" * P + b"f" * P
    await f.sync()
    assert backing.data == b"e" * P + b"f" * P + b"c" * P + b"d" * P
    await f.remove_mapping(ms, AddrRange(0x10000, 0x12000), P, True)
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# translate


async def test_cached_file_translate_points_at_the_right_bytes(mf):
    data = pattern(40 * P + 123)
    f = CachedFile(GatedBacking(data), mf, readahead=FixedReadahead(8 * P))
    for start in (0, 3 * P, 17 * P, 40 * P):
        required = M(start, start + P)
        optional = M(0, 64 * P)
        ts, err = await f.translate(required, optional, AccessType.READ)
        assert err is None
        assert (
            check_translate_result(required, optional, AccessType.READ, ts, err) is None
        )
        got = translated_bytes(ts)
        first = ts[0].source.start
        expect = data[first : ts[-1].source.end].ljust(len(got), b"\0")
        assert got == expect
        assert all(t.perms == AccessType.READ_EXECUTE for t in ts)
    await closed_and_balanced(f, mf)


async def test_cached_file_translate_past_eof_is_bus_error(mf):
    f = CachedFile(GatedBacking(pattern(2 * P + 5)), mf)
    ts, err = await f.translate(M(3 * P, 4 * P), M(0, 8 * P), AccessType.READ)
    assert ts == []
    assert isinstance(err, BusError)
    assert isinstance(err.err, EOFError)
    # Partly past the end: the valid part is translated, with an error.
    required, optional = M(P, 5 * P), M(0, 8 * P)
    ts, err = await f.translate(required, optional, AccessType.READ)
    assert isinstance(err, BusError)
    assert ts[-1].source.end == 3 * P
    assert check_translate_result(required, optional, AccessType.READ, ts, err) is None
    await closed_and_balanced(f, mf)


async def test_cached_file_translate_write_requires_writable(mf):
    f = CachedFile(GatedBacking(pattern(4 * P)), mf)
    ts, err = await f.translate(M(0, P), M(0, P), AccessType.WRITE)
    assert ts == []
    assert isinstance(err, BusError)
    assert isinstance(err.err, PermissionError)
    with pytest.raises(PermissionError, match="not writable"):
        await f.add_mapping(RecordingSpace(), AddrRange(0, P), 0, True)
    # Private (non-writable) mappings of a read-only file are fine.
    await f.add_mapping(RecordingSpace(), AddrRange(0, P), 0, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_translate_write_keeps_pages_dirty(mf):
    data = pattern(8 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, readahead=NoReadahead(), writable=True)
    ms = RecordingSpace()
    ar = AddrRange(0x40000, 0x42000)
    await f.add_mapping(ms, ar, 0, True)
    ts, err = await f.translate(M(0, 2 * P), M(0, 2 * P), AccessType.READ_WRITE)
    assert err is None
    assert all(t.perms.write for t in ts)
    # The space writes through its mapping of the pages.
    view = ts[0].file.map_internal(
        FileRange(ts[0].offset, ts[0].offset + 4), AccessType.WRITE
    )
    view[0][:4] = b"XYZW"
    await f.msync(M(0, P))
    assert backing.data[:4] == b"XYZW"
    # Still writable through the mapping: the page stays dirty.
    assert f.statistics().dirty_bytes == 2 * P
    await f.remove_mapping(ms, ar, 0, True)
    await f.sync()
    assert f.statistics().dirty_bytes == 0
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_translate_under_active_lock_keeps_lock_order(mf):
    f = CachedFile(GatedBacking(pattern(16 * P)), mf)
    active = OrderedLock(LockRank.ACTIVE, "test.active")
    async with active:
        _, err = await f.translate(M(0, P), M(0, 16 * P), AccessType.READ)
    assert err is None
    # A MAPPABLE lock may not be taken under ACTIVE: add_mapping is refused.
    async with active:
        with pytest.raises(LockOrderError):
            await f.add_mapping(RecordingSpace(), AddrRange(0, P), 0, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_translate_rejects_bad_input(mf):
    f = CachedFile(GatedBacking(pattern(P)), mf)
    with pytest.raises(ValueError, match="empty"):
        await f.translate(M(0, 0), M(0, P), AccessType.READ)
    with pytest.raises(AlignmentError):
        await f.translate(M(1, P), M(0, P), AccessType.READ)
    with pytest.raises(ValueError, match="does not contain"):
        await f.translate(M(0, 2 * P), M(0, P), AccessType.READ)
    with pytest.raises(TypeError):
        await f.translate((0, P), M(0, P), AccessType.READ)
    assert f.statistics() == CacheStatistics(0, 0, 0, 0, 0, 0, 0, 0)
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# single flight (P7)


async def test_cached_file_64_concurrent_translates_fetch_once(mf):
    inner = BytesBacking(pattern(64 * P))
    backing = FaultInjectingBacking(inner, latency=0.01)
    f = CachedFile(backing, mf)
    with anyio.fail_after(10):
        results = await asyncio.gather(
            *(f.translate(M(0, P), M(0, P), AccessType.READ) for _ in range(64))
        )
    assert backing.reads == 1
    for ts, err in results:
        assert err is None
        assert translated_bytes(ts) == inner.data[:P]
    stats = f.statistics()
    assert stats.fetches == 1
    assert stats.misses >= 1
    await closed_and_balanced(f, mf)


async def test_cached_file_64_concurrent_reads_fetch_once(mf):
    inner = BytesBacking(pattern(64 * P))
    backing = FaultInjectingBacking(inner, latency=0.01)
    f = CachedFile(backing, mf, readahead=NoReadahead())
    with anyio.fail_after(10):
        results = await asyncio.gather(*(f.read(100, 200) for _ in range(64)))
    assert backing.reads == 1
    assert all(r == inner.data[100:300] for r in results)
    await closed_and_balanced(f, mf)


async def test_cached_file_fetch_limit_and_coalescing(mf):
    backing = GatedBacking(pattern(64 * P))
    f = CachedFile(
        backing,
        mf,
        readahead=NoReadahead(),
        max_fetch_bytes=4 * P,
        max_fetches_in_flight=2,
    )
    with anyio.fail_after(10):
        await f.prefetch(M(0, 64 * P))
    # 64 missing pages in fetches of 4 pages each, never more than 2 at once.
    assert sorted(backing.reads) == [(i * 4 * P, 4 * P) for i in range(16)]
    assert backing.max_active <= 2
    assert f.statistics().bytes_fetched == 64 * P
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# cancellation at every await


async def _cancel_translate(f, backing, mf, ms):
    return asyncio.create_task(f.translate(M(0, P), M(0, 4 * P), AccessType.READ))


async def _cancel_read(f, backing, mf, ms):
    return asyncio.create_task(f.read(10, 100))


async def _cancel_prefetch(f, backing, mf, ms):
    return asyncio.create_task(f.prefetch(M(0, 2 * P)))


async def _cancel_write_waiting_for_fetch(f, backing, mf, ms):
    # Offset 0 is mapped, so the write waits for the page to be fetched.
    return asyncio.create_task(f.write(5, b"hello"))


async def _cancel_size(f, backing, mf, ms):
    return asyncio.create_task(f.read(0, 1))


@pytest.mark.parametrize(
    "start_op",
    [
        _cancel_translate,
        _cancel_read,
        _cancel_prefetch,
        _cancel_write_waiting_for_fetch,
    ],
)
async def test_cached_file_cancelled_waiter_does_not_abort_fetch(mf, start_op):
    data = pattern(4 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, readahead=NoReadahead(), writable=True)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x14000), 0, True)
    await f.read(3 * P, 1)  # learn the size; page 3 cached
    backing.read_gate = asyncio.Event()
    backing.read_entered.clear()
    with anyio.fail_after(10):
        victim = await start_op(f, backing, mf, ms)
        other = asyncio.create_task(f.read(0, 2 * P))
        await backing.read_entered.wait()
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        backing.read_gate.set()
        assert await other == data[: 2 * P]
    # The fetch went on and inserted its pages: no second read of page 0.
    assert sum(1 for off, _ in backing.reads if off == 0) == 1
    assert backing.data == data
    f.check_invariants()
    await f.remove_mapping(ms, AddrRange(0x10000, 0x14000), 0, True)
    await closed_and_balanced(f, mf)


async def test_cached_file_cancelled_size_question_is_shared(mf):
    data = pattern(2 * P)

    class SlowSize(GatedBacking):
        gate = None

        async def size(self) -> int:
            await self.size_gate.wait()
            return await super().size()

    backing = SlowSize(data)
    backing.size_gate = asyncio.Event()
    f = CachedFile(backing, mf)
    with anyio.fail_after(10):
        victim = asyncio.create_task(f.read(0, 10))
        other = asyncio.create_task(f.read(0, 10))
        await asyncio.sleep(0.01)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        backing.size_gate.set()
        assert await other == data[:10]
    await closed_and_balanced(f, mf)


async def test_cached_file_cancel_truncate_during_invalidation(mf):
    data = pattern(8 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x18000), 0, False)
    await f.translate(M(0, 8 * P), M(0, 8 * P), AccessType.READ)
    ms.gate = asyncio.Event()
    with anyio.fail_after(10):
        task = asyncio.create_task(f.truncate(2 * P))
        await ms.entered.wait()
        task.cancel()
        await asyncio.sleep(0.01)
        ms.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The truncation was completed before the cancellation got through.
    assert ms.inv == [(AddrRange(0x12000, 0x18000), InvalidateOpts(True))]
    assert backing.data == data[: 2 * P]
    assert f.statistics().resident_bytes == 2 * P
    await f.remove_mapping(ms, AddrRange(0x10000, 0x18000), 0, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_cancel_sync_keeps_pages_dirty(mf):
    data = pattern(4 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True)
    await f.read(0, 4 * P)
    await f.write(0, b"X" * 10)
    backing.write_gate = asyncio.Event()
    with anyio.fail_after(10):
        task = asyncio.create_task(f.sync())
        await backing.write_entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert f.statistics().dirty_bytes == P
    backing.write_gate.set()
    await f.sync()
    assert f.statistics().dirty_bytes == 0
    assert backing.data == b"X" * 10 + data[10:]
    await closed_and_balanced(f, mf)


async def test_cached_file_cancel_write_through(mf):
    data = pattern(4 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, readahead=NoReadahead(), writable=True)
    await f.read(3 * P, 1)
    backing.write_gate = asyncio.Event()
    with anyio.fail_after(10):
        task = asyncio.create_task(f.write(0, b"Y" * 100))
        await backing.write_entered.wait()
        # A read of the offsets being written waits for the write.
        reader = asyncio.create_task(f.read(0, 200))
        await asyncio.sleep(0.01)
        assert not reader.done()
        # Cancelled once it writes to the backing, the write completes
        # first: all or nothing.
        task.cancel()
        await asyncio.sleep(0.01)
        assert not task.done()
        backing.write_gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        got = await reader
    assert got == backing.data[:200]
    assert got == b"Y" * 100 + data[100:200]
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_aclose_cancels_fetches(mf):
    backing = GatedBacking(pattern(4 * P))
    backing.read_gate = asyncio.Event()
    f = CachedFile(backing, mf)
    with anyio.fail_after(10):
        reader = asyncio.create_task(f.read(0, 10))
        await backing.read_entered.wait()
        await f.aclose()
        with pytest.raises(BusError) as info:
            await reader
    assert isinstance(info.value.err, ClosedError)
    assert mf.statistics().used_bytes == 0
    with pytest.raises(ClosedError):
        await f.read(0, 1)
    ts, err = await f.translate(M(0, P), M(0, P), AccessType.READ)
    assert ts == []
    assert isinstance(err, BusError)


# ----------------------------------------------------------------------
# failures


async def test_cached_file_failed_fetch_is_bus_error_then_recovers(mf):
    data = pattern(16 * P)
    backing = FaultInjectingBacking(BytesBacking(data), fail_ranges=[(P, 2 * P)])
    f = CachedFile(backing, mf, readahead=NoReadahead(), retry=NO_RETRY)
    waiters = [f.read(P, 10) for _ in range(5)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, BusError) for r in results)
    assert all(isinstance(r.err, ConnectionError) for r in results)
    assert backing.reads == 2  # one fetch, retried once
    ts, err = await f.translate(M(P, 2 * P), M(P, 2 * P), AccessType.READ)
    assert ts == []
    assert isinstance(err, BusError)
    assert f.statistics().resident_bytes == 0
    assert cache_bytes(mf) == 0
    # Pages nobody failed on are fine.
    assert await f.read(0, P) == data[:P]
    backing.fail_ranges.clear()
    assert await f.read(P, 10) == data[P : P + 10]
    assert await f.read(0, 16 * P) == data
    await closed_and_balanced(f, mf)


async def test_cached_file_flaky_backing_never_returns_wrong_bytes(mf):
    data = pattern(64 * P)
    backing = FaultInjectingBacking(
        BytesBacking(data), error_rate=0.3, seed=7, short_reads=True
    )
    retry = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)
    f = CachedFile(backing, mf, retry=retry, max_fetch_bytes=4 * P)
    rng = random.Random(3)
    failures: list[BaseException] = []
    for _ in range(60):
        off = rng.randrange(0, 64 * P)
        n = rng.randrange(1, 3 * P)
        try:
            got = await f.read(off, n)
        except BusError as exc:
            failures.append(exc.err)
            continue
        assert got == data[off : off + n]
    assert all(isinstance(e, ConnectionError) for e in failures)
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_failed_optional_pages_do_not_fail_required(mf):
    data = pattern(16 * P)
    backing = FaultInjectingBacking(BytesBacking(data), fail_ranges=[(8 * P, 16 * P)])
    f = CachedFile(
        backing,
        mf,
        readahead=FixedReadahead(16 * P),
        retry=NO_RETRY,
        max_fetch_bytes=4 * P,
    )
    ts, err = await f.translate(M(0, P), M(0, 16 * P), AccessType.READ)
    assert err is None
    assert translated_bytes(ts)[:P] == data[:P]
    await asyncio.sleep(0.01)
    assert f.statistics().resident_bytes == 8 * P
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# readahead


async def test_cached_file_readahead_never_fills_outside_optional(mf):
    backing = GatedBacking(pattern(256 * P))
    f = CachedFile(backing, mf, readahead=FixedReadahead(128 * P))
    rng = random.Random(5)
    for _ in range(40):
        a = rng.randrange(0, 250)
        b = rng.randrange(a + 1, min(256, a + 6) + 1)
        lo = rng.randrange(0, a + 1)
        hi = rng.randrange(b, 257)
        before = len(backing.reads)
        _, err = await f.translate(M(a * P, b * P), M(lo * P, hi * P), AccessType.READ)
        assert err is None
        await asyncio.sleep(0)
        for off, n in backing.reads[before:]:
            assert lo * P <= off
            assert off + n <= hi * P
    await closed_and_balanced(f, mf)


async def test_cached_file_sequential_reads_grow_the_window(mf):
    size = 16 * MiB
    backing = GatedBacking(pattern(size))
    f = CachedFile(backing, mf, readahead=AdaptiveReadahead(), max_fetch_bytes=8 * MiB)
    with anyio.fail_after(20):
        off = 0
        while off < size:
            chunk = await f.read(off, 16 * KiB)
            assert len(chunk) == 16 * KiB
            off += 16 * KiB
    sizes = [n for _, n in sorted(backing.reads)]
    # The first read fetches itself; then readahead starts and doubles.
    assert sizes[:4] == [16 * KiB, 128 * KiB, 256 * KiB, 512 * KiB]
    assert max(sizes) == 8 * MiB
    # 1024 reads, a handful of fetches, nothing fetched twice.
    assert len(sizes) < 20
    assert sum(sizes) == size
    stats = f.statistics()
    assert stats.hits > stats.misses
    await closed_and_balanced(f, mf)


async def test_cached_file_random_hint_disables_readahead(mf):
    backing = GatedBacking(pattern(64 * P))
    f = CachedFile(backing, mf)
    f.advise(ReadaheadHint.RANDOM)
    await f.read(10 * P, 10)
    assert backing.reads == [(10 * P, P)]
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# writes, truncation, revalidation, sync


async def test_cached_file_write_extends_and_syncs(mf):
    backing = GatedBacking(b"abc")
    f = CachedFile(backing, mf, writable=True)
    assert await f.read(0, 10) == b"abc"
    await f.write(2, b"XYZ")
    assert f.size == 5
    assert await f.read(0, 10) == b"abXYZ"
    await f.write(3 * P, b"far")
    assert await f.read(0, 4 * P) == b"abXYZ" + bytes(3 * P - 5) + b"far"
    await f.sync()
    assert backing.data == b"abXYZ" + bytes(3 * P - 5) + b"far"
    await closed_and_balanced(f, mf)


async def test_cached_file_truncate_invalidates_with_private(mf):
    data = pattern(8 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x18000), 0, False)
    await f.translate(M(0, 8 * P), M(0, 8 * P), AccessType.READ)
    await f.truncate(2 * P + 100)
    assert ms.inv == [(AddrRange(0x13000, 0x18000), InvalidateOpts(True))]
    assert f.statistics().resident_bytes == 3 * P
    assert backing.data == data[: 2 * P + 100]
    # The tail of the last page reads as zero in the cache.
    ts, err = await f.translate(M(2 * P, 3 * P), M(2 * P, 3 * P), AccessType.READ)
    assert err is None
    assert translated_bytes(ts) == data[2 * P : 2 * P + 100] + bytes(P - 100)
    ts, err = await f.translate(M(3 * P, 4 * P), M(0, 8 * P), AccessType.READ)
    assert ts == []
    assert isinstance(err.err, EOFError)
    # Growing again gives zeros, not the old bytes.
    await f.truncate(4 * P)
    assert await f.read(0, 4 * P) == data[: 2 * P + 100] + bytes(2 * P - 100)
    await f.remove_mapping(ms, AddrRange(0x10000, 0x18000), 0, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_truncate_discards_fetch_in_flight(mf):
    data = pattern(8 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
    await f.read(7 * P, 1)
    backing.read_gate = asyncio.Event()
    with anyio.fail_after(10):
        reader = asyncio.create_task(f.read(P, 2 * P))
        await backing.read_entered.wait()
        await f.truncate(P + 10)
        backing.read_gate.set()
        assert await reader == data[P : P + 10]
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_read_past_a_racing_truncate_reads_nothing(mf):
    data = pattern(8 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
    await f.read(0, 1)
    backing.read_gate = asyncio.Event()
    with anyio.fail_after(10):
        reader = asyncio.create_task(f.read(5 * P, 2 * P))
        await backing.read_entered.wait()
        await f.truncate(3 * P)
        backing.read_gate.set()
        # Like a read at the end of a file: nothing, not an error.
        assert await reader == b""
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_revalidate_after_version_change(mf):
    data = pattern(4 * P)
    backing = GatedBacking(data)
    f = CachedFile(backing, mf, writable=True)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x14000), 0, False)
    assert await f.read(0, 4 * P) == data
    assert await f.revalidate() is False
    await f.write(0, b"dirty")  # cached: stays in the cache until written back
    # Somebody else changes the object.
    new = pattern(6 * P, seed=9)
    await backing.inner.truncate(0)
    await backing.inner.write_from(0, memoryview(new))
    assert await f.revalidate() is True
    assert ms.inv == [(AddrRange(0x10000, 0x14000), InvalidateOpts(False))]
    assert f.size == 6 * P
    assert f.statistics().resident_bytes == 0
    # Like a network file system's page cache, the file writes its dirty
    # pages back before it drops the cache: a write it accepted is never
    # lost, and it lands over the new version. Dirty state is kept per page,
    # so the whole dirty page is written: the rest of page 0 is that page as
    # the file had it.
    expected = b"dirty" + data[5:P] + new[P:]
    assert await f.read(0, 6 * P) == expected
    assert backing.data == expected
    assert await f.revalidate() is False
    await f.remove_mapping(ms, AddrRange(0x10000, 0x14000), 0, False)
    await closed_and_balanced(f, mf)


async def test_cached_file_aclose_writes_back(mf):
    backing = GatedBacking(pattern(4 * P))
    f = CachedFile(backing, mf, writable=True)
    await f.read(0, 4 * P)
    await f.write(P, b"Q" * P)
    async with f:
        pass
    assert backing.data[P : 2 * P] == b"Q" * P
    assert mf.statistics().used_bytes == 0
    with pytest.raises(ClosedError):
        await f.write(0, b"x")
    await f.aclose()


async def test_cached_file_identity_and_refs(mf):
    f = CachedFile(GatedBacking(b"x"), mf, name="/data/x")
    assert f.mapped_name() == "/data/x"
    assert f.device_id() == 0
    assert f.inode_id() != CachedFile(GatedBacking(b""), mf).inode_id()
    f.inc_ref()
    await f.dec_ref()
    assert not f.closed
    await f.dec_ref()
    assert f.closed
    assert "closed" in repr(f)


async def test_cached_file_rejects_bad_input(mf):
    backing = GatedBacking(b"abc")
    with pytest.raises(TypeError):
        CachedFile(object(), mf)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CachedFile(backing, object())  # type: ignore[arg-type]
    with pytest.raises(AlignmentError):
        CachedFile(backing, mf, max_fetch_bytes=100)
    with pytest.raises(ValueError, match="max_fetches_in_flight"):
        CachedFile(backing, mf, max_fetches_in_flight=0)
    with pytest.raises(PermissionError):
        CachedFile(GatedBacking(b"", readonly=True), mf, writable=True)
    f = CachedFile(backing, mf)
    with pytest.raises(PermissionError):
        await f.write(0, b"x")
    with pytest.raises(PermissionError):
        await f.truncate(0)
    with pytest.raises(ValueError, match="offset"):
        await f.read(-1, 1)
    with pytest.raises(TypeError):
        await f.read(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(AlignmentError):
        await f.prefetch(M(1, P))
    with pytest.raises(ValueError, match="empty"):
        await f.msync(M(0, 0))
    assert f.size is None
    assert await f.read(0, 10) == b"abc"
    assert await f.read(3, 10) == b""
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# everything at once


async def test_cached_file_concurrent_operations_match_model(mf):
    rng = random.Random(11)
    initial = pattern(24 * P, seed=4)
    inner = BytesBacking(initial)
    backing = FaultInjectingBacking(inner, latency=0.0005, jitter=0.0005, seed=2)
    f = CachedFile(
        backing, mf, writable=True, max_fetch_bytes=4 * P, max_fetches_in_flight=3
    )
    model = bytearray(initial)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x100000, 0x108000), 0, False)
    # The model tracks the file as the CachedFile sees it. Mutations are
    # serialised among themselves; readers run concurrently with everything
    # and check their result whenever no mutation overlapped their call.
    mutation = asyncio.Lock()
    epoch = [0]
    checked = [0]

    def quiet() -> int | None:
        return None if mutation.locked() else epoch[0]

    async def reader(seed):
        r = random.Random(seed)
        for _ in range(40):
            off = r.randrange(0, 30 * P)
            n = r.randrange(1, 2 * P)
            before = quiet()
            expect = bytes(model[off : off + n])
            got = await f.read(off, n)
            if before is not None and quiet() == before:
                assert got == expect
                checked[0] += 1
            await asyncio.sleep(0)

    async def translator(seed):
        r = random.Random(seed)
        for _ in range(40):
            page = r.randrange(0, 8)
            required = M(page * P, (page + 1) * P)
            optional = M(0, 8 * P)
            before = quiet()
            expect = bytes(model[page * P : (page + 1) * P]).ljust(P, b"\0")
            ts, err = await f.translate(required, optional, AccessType.READ)
            assert (
                check_translate_result(required, optional, AccessType.READ, ts, err)
                is None
            )
            if err is None and before is not None and quiet() == before:
                assert translated_bytes(ts)[:P] == expect
                checked[0] += 1
            await asyncio.sleep(0)

    async def mutator(seed):
        r = random.Random(seed)
        for _ in range(30):
            op = r.random()
            async with mutation:
                if op < 0.5:
                    off = r.randrange(0, 28 * P)
                    data = r.randbytes(r.randrange(1, 3 * P))
                    await f.write(off, data)
                    end = off + len(data)
                    if end > len(model):
                        model.extend(bytes(end - len(model)))
                    model[off:end] = data
                elif op < 0.7:
                    size = r.randrange(P, 28 * P)
                    await f.truncate(size)
                    del model[size:]
                    if size > len(model):
                        model.extend(bytes(size - len(model)))
                elif op < 0.9:
                    await f.sync()
                else:
                    assert await f.revalidate() is False
                epoch[0] += 1
            await asyncio.sleep(0.002)

    eofs: list[BaseException] = []

    async def background_reads():
        # Unsynchronised reads: must not fail, crash or deadlock.
        r = random.Random(99)
        for _ in range(60):
            try:
                await f.read(r.randrange(0, 30 * P), r.randrange(1, P))
            except BusError as exc:
                # Only a truncation racing the read may fail it.
                eofs.append(exc.err)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reader, rng.random())
            tg.start_soon(translator, 5)
            tg.start_soon(mutator, 6)
            tg.start_soon(mutator, 7)
            tg.start_soon(background_reads)
    f.check_invariants()
    assert all(isinstance(e, EOFError) for e in eofs)
    # How many calls ran with no mutation overlapping them depends on the
    # interleaving; a few suffice to show the comparison ran.
    assert checked[0] > 4
    assert await f.read(0, len(model) + P) == bytes(model)
    await f.sync()
    assert inner.data == bytes(model)
    await f.remove_mapping(ms, AddrRange(0x100000, 0x108000), 0, False)
    await closed_and_balanced(f, mf)


class FlakyQuestions(GatedBacking):
    """A backing whose size and version questions fail transiently at first."""

    def __init__(self, data: bytes, failures: int) -> None:
        super().__init__(data)
        self.failures = failures
        self.questions = 0

    def _maybe_fail(self) -> None:
        self.questions += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("connection reset by peer")

    async def size(self) -> int:
        self._maybe_fail()
        return await super().size()

    async def version(self) -> str | None:
        self._maybe_fail()
        return await super().version()


async def test_cached_file_retries_transient_size_questions(mf):
    data = pattern(3 * P)
    backing = FlakyQuestions(data, failures=3)
    retry = RetryPolicy(attempts=5, initial_backoff=0.0, max_backoff=0.0)
    f = CachedFile(backing, mf, retry=retry)
    assert await f.read(0, 3 * P) == data
    assert backing.questions == 5  # three failures, then version and size
    await closed_and_balanced(f, mf)


async def test_cached_file_size_question_failing_past_retries_is_bus_error(mf):
    data = pattern(P)
    backing = FlakyQuestions(data, failures=2)
    retry = RetryPolicy(attempts=2, initial_backoff=0.0, max_backoff=0.0)
    f = CachedFile(backing, mf, retry=retry)
    with pytest.raises(BusError) as info:
        await f.read(0, 10)
    assert isinstance(info.value.err, ConnectionResetError)
    # The next access asks again, and the backing has recovered.
    assert await f.read(0, 10) == data[:10]
    await closed_and_balanced(f, mf)


# ----------------------------------------------------------------------
# Fast paths of the random-read path


async def test_cached_file_read_fast_paths_count_and_copy(mf):
    data = pattern(16 * P + 123)
    f = CachedFile(BytesBacking(data), mf, readahead=NoReadahead())
    # A cold single page: one miss; then a hit served from one segment.
    assert await f.read(5 * P + 7, 100) == data[5 * P + 7 : 5 * P + 107]
    assert await f.read(5 * P, P) == data[5 * P : 6 * P]
    s = f.statistics()
    assert (s.hits, s.misses, s.fetches) == (1, 1, 1)
    # Pages cached by separate fetches: a read across them is a hit that
    # spans two segments; a read half cached is counted page by page.
    assert await f.read(6 * P, 10) == data[6 * P : 6 * P + 10]
    assert await f.read(5 * P + 10, P) == data[5 * P + 10 : 6 * P + 10]
    assert await f.read(6 * P, 3 * P) == data[6 * P : 9 * P]
    s = f.statistics()
    assert (s.hits, s.misses) == (1 + 0 + 2 + 1, 1 + 1 + 0 + 2)
    # The short last page, past the end and at the very end.
    assert await f.read(16 * P + 100, 1000) == data[16 * P + 100 :]
    assert await f.read(16 * P + 123, 1) == b""
    f.check_invariants()
    await closed_and_balanced(f, mf)


async def test_cached_file_free_coalesces_runs_and_keeps_other_refs(mf):
    data = pattern(32 * P)
    f = CachedFile(BytesBacking(data), mf, readahead=NoReadahead())
    # Pages fetched one by one in random order: their memory-file pages are
    # allocated in fetch order, so the cache maps them out of order.
    order = random.Random(7).sample(range(32), 32)
    for i in order:
        assert await f.read(i * P, P) == data[i * P : (i + 1) * P]
    # Another holder of one page keeps it alive after the file is closed.
    ts, err = await f.translate(M(9 * P, 10 * P), M(9 * P, 10 * P), AccessType.READ)
    assert err is None
    fr = ts[0].file_range()
    mf.inc_ref(fr)
    assert cache_bytes(mf) == 32 * P
    await f.aclose()
    assert mf.statistics().used_bytes == P
    assert mf.map_internal(fr, AccessType.READ).tobytes() == data[9 * P : 10 * P]
    mf.dec_ref(fr)
    assert mf.statistics().used_bytes == 0


# ----------------------------------------------------------------------
# The bus


async def test_cached_file_invalidations_go_to_the_given_bus(mf):
    own = InvalidationBus()
    f = CachedFile(BytesBacking(pattern(4 * P)), mf, writable=True, bus=own)
    ms = RecordingSpace()
    await f.add_mapping(ms, AddrRange(0x10000, 0x14000), 0, True)
    await f.translate(M(0, 4 * P), M(0, 4 * P), AccessType.READ)
    before = default_bus().statistics()
    await f.truncate(P)
    stats = own.statistics()
    assert (stats.publishes, stats.deliveries) == (1, 1)
    assert [ar for ar, _ in ms.inv] == [AddrRange(0x11000, 0x14000)]
    after = default_bus().statistics()
    assert (after.publishes, after.deliveries) == (before.publishes, before.deliveries)
    await f.remove_mapping(ms, AddrRange(0x10000, 0x14000), 0, True)
    await closed_and_balanced(f, mf)


def test_cached_file_bus_must_be_an_invalidation_bus(mf):
    with pytest.raises(TypeError):
        CachedFile(BytesBacking(b""), mf, bus=object())
