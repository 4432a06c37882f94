"""The cache budget: LRU eviction of cached pages under MemoryFile.cache_limit."""

from __future__ import annotations

import asyncio
import random

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddrRange,
    BusError,
    BytesBacking,
    CachedFile,
    FileRange,
    FixedReadahead,
    InvalidateOpts,
    MappableRange,
    MemoryFile,
    MemoryKind,
    NoReadahead,
    StaleVersionError,
)

P = PAGE_SIZE
KiB = 1024
MiB = 1024 * KiB
LIMIT = 1 * MiB
WINDOW = 256 * KiB
FETCH = 64 * KiB


def M(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def cache_bytes(mf: MemoryFile) -> int:
    return mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]


@pytest.fixture
def mf():
    with MemoryFile("test-cache-budget", cache_limit=LIMIT, chunk_size=64 * MiB) as f:
        yield f


def cached(backing, mf: MemoryFile, **kw) -> CachedFile:
    kw.setdefault("readahead", FixedReadahead(WINDOW))
    kw.setdefault("max_fetch_bytes", FETCH)
    return CachedFile(backing, mf, **kw)


class GatedBacking:
    """A BytesBacking whose reads of chosen offsets can be held."""

    def __init__(self, data: bytes, *, readonly: bool = False) -> None:
        self.inner = BytesBacking(data, readonly=readonly)
        self.readonly = readonly
        self.gated: tuple[int, int] | None = None
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.writes: list[tuple[int, int]] = []

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        g = self.gated
        if g is not None and offset < g[1] and g[0] < offset + len(buf):
            self.entered.set()
            await self.gate.wait()
        await asyncio.sleep(0)
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        self.writes.append((offset, len(data)))
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def data(self) -> bytes:
        return self.inner.data


class CheckingSpace:
    """A mapping space that checks, when invalidated, that its pages still exist.

    It records the translations it was given; on each invalidation it reads
    them through the memory file (which raises RefCountError for freed
    pages) and compares them with the expected contents.
    """

    def __init__(self, mf: MemoryFile, f: CachedFile, data: bytes, base: int) -> None:
        self.mf, self.f, self.data, self.base = mf, f, data, base
        self.held: list[tuple[MappableRange, FileRange]] = []
        self.events: list[tuple[str, AddrRange]] = []
        self.checked_bytes = 0

    async def fault(self, mr: MappableRange) -> None:
        ts, err = await self.f.translate(mr, mr, AccessType.READ)
        assert err is None
        for t in ts:
            self.held.append((t.source, t.file_range()))

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        assert opts.invalidate_private is False
        lo, hi = ar.start - self.base, ar.end - self.base
        keep = []
        for src, fr in self.held:
            if src.start < hi and lo < src.end:
                got = self.mf.map_internal(fr, AccessType.READ).tobytes()
                assert got == self.data[src.start : src.end]
                self.checked_bytes += len(got)
            else:
                keep.append((src, fr))
        self.held = keep
        self.events.append(("invalidate", ar))


async def test_budget_scan_stays_within_limit(mf):
    data = pattern(4 * LIMIT)
    f = cached(BytesBacking(data), mf)
    with anyio.fail_after(30):
        off = 0
        peak = 0
        while off < len(data):
            n = random.Random(off).choice([P, 3 * P + 5, 16 * KiB, 40 * KiB])
            chunk = await f.read(off, n)
            assert chunk == data[off : off + n]
            off += len(chunk)
            peak = max(peak, f.statistics().resident_bytes, cache_bytes(mf))
            assert f.statistics().resident_bytes <= LIMIT + WINDOW
            assert cache_bytes(mf) <= LIMIT + WINDOW
            f.check_invariants()
    assert peak <= LIMIT + WINDOW
    st = f.statistics()
    assert st.evictions > 0
    assert st.evictions == mf.statistics().evictions
    # Every page fetched was either evicted or is still resident.
    assert st.bytes_fetched == len(data)
    assert st.evictions * P + st.resident_bytes == len(data)
    # A later access to an evicted range fetches it again.
    assert await f.read(0, P) == data[:P]
    assert f.statistics().bytes_fetched > len(data)
    await f.aclose()
    assert mf.statistics().used_bytes == 0
    mf.check_invariants()


async def test_budget_without_limit_never_evicts():
    with MemoryFile("no-limit", chunk_size=64 * MiB) as mf:
        data = pattern(2 * MiB)
        f = cached(BytesBacking(data), mf)
        assert await f.read(0, len(data)) == data
        assert f.statistics().evictions == 0
        assert f.statistics().resident_bytes == len(data)
        await f.aclose()
        assert mf.statistics().evictions == 0


async def test_budget_never_evicts_anonymous_or_tmpfs(mf):
    anon = mf.allocate(LIMIT, kind=MemoryKind.ANONYMOUS)
    tmpfs = mf.allocate(LIMIT, kind=MemoryKind.TMPFS)
    data = pattern(2 * LIMIT)
    f = cached(BytesBacking(data), mf)
    off = 0
    while off < len(data):
        assert await f.read(off, 32 * KiB) == data[off : off + 32 * KiB]
        off += 32 * KiB
    st = mf.statistics()
    assert st.bytes_by_kind[MemoryKind.ANONYMOUS] == LIMIT
    assert st.bytes_by_kind[MemoryKind.TMPFS] == LIMIT
    assert st.bytes_by_kind[MemoryKind.PAGE_CACHE] <= LIMIT
    await f.aclose()
    mf.dec_ref(anon)
    mf.dec_ref(tmpfs)
    assert mf.statistics().used_bytes == 0


async def test_budget_lru_order_and_hits_refresh_recency(mf):
    data = pattern(2 * LIMIT)
    f = cached(BytesBacking(data), mf, readahead=NoReadahead())
    # Fill the budget exactly with 16 fetch units, 0 first.
    for u in range(LIMIT // FETCH):
        await f.read(u * FETCH, FETCH)
    assert f.statistics().resident_bytes == LIMIT
    # Touch unit 0: unit 1 is now the least recently used.
    await f.read(0, 10)
    await f.read(LIMIT, FETCH)
    assert f.statistics().evictions == FETCH // P
    await f.translate(M(0, P), M(0, P), AccessType.READ)
    assert f.statistics().bytes_fetched == LIMIT + FETCH  # unit 0 still cached
    assert f._cache.is_empty_range(FETCH, 2 * FETCH)
    # A translate hit refreshes recency too (of every page it hands out, here
    # only unit 2's): touch unit 2, so unit 3 goes next.
    r2 = M(2 * FETCH, 2 * FETCH + P)
    await f.translate(r2, r2, AccessType.READ)
    await f.read(LIMIT + FETCH, FETCH)
    assert f._cache.is_empty_range(3 * FETCH, 4 * FETCH)
    assert not f._cache.is_empty_range(2 * FETCH, 3 * FETCH)
    f.check_invariants()
    await f.aclose()
    assert mf.statistics().used_bytes == 0


async def test_budget_lru_across_two_files_sharing_the_memory_file(mf):
    a_data, b_data = pattern(LIMIT, 1), pattern(LIMIT, 2)
    a = cached(BytesBacking(a_data), mf, readahead=NoReadahead())
    b = cached(BytesBacking(b_data), mf, readahead=NoReadahead())
    half = LIMIT // 2
    # a's first half, then b's first half: the budget is full.
    await a.read(0, half)
    await b.read(0, half)
    assert cache_bytes(mf) == LIMIT
    # Refresh a's first unit; then b's second half evicts a's oldest units.
    await a.read(0, 1)
    await b.read(half, 2 * FETCH)
    assert a.statistics().evictions == 2 * FETCH // P
    assert b.statistics().evictions == 0
    assert not a._cache.is_empty_range(0, FETCH)  # refreshed: kept
    assert a._cache.is_empty_range(FETCH, 3 * FETCH)  # the LRU ones went
    # a's next read evicts a's own oldest units, which are older than b's.
    await a.read(half, 2 * FETCH)
    assert a._cache.is_empty_range(3 * FETCH, 5 * FETCH)
    assert b.statistics().evictions == 0
    # Touch every unit a still has; now b's units are the oldest.
    await a.read(5 * FETCH, 5 * FETCH)
    await a.read(0, 1)
    await a.read(3 * FETCH, 2 * FETCH)
    assert b.statistics().evictions == 2 * FETCH // P
    assert b._cache.is_empty_range(0, 2 * FETCH)
    assert cache_bytes(mf) <= LIMIT
    assert mf.statistics().evictions == 6 * FETCH // P
    assert await a.read(0, LIMIT) == a_data
    assert await b.read(0, LIMIT) == b_data
    for f in (a, b):
        f.check_invariants()
        await f.aclose()
    assert mf.statistics().used_bytes == 0


async def test_budget_mapped_pages_are_invalidated_before_they_are_freed(mf):
    data = pattern(2 * LIMIT)
    f = cached(BytesBacking(data), mf, readahead=NoReadahead())
    base = 0x100000
    ms = CheckingSpace(mf, f, data, base)
    await f.add_mapping(ms, AddrRange(base, base + LIMIT), 0, False)
    with anyio.fail_after(30):
        for u in range(LIMIT // FETCH):
            await ms.fault(M(u * FETCH, (u + 1) * FETCH))
        # Evict the mapped pages by reading the unmapped second half.
        off = LIMIT
        while off < 2 * LIMIT:
            assert await f.read(off, FETCH) == data[off : off + FETCH]
            off += FETCH
        # Mapped pages are freed only once the invalidations are delivered.
        if f._evict_tasks:
            await asyncio.wait(list(f._evict_tasks))
    assert ms.checked_bytes >= LIMIT // 2
    assert ms.events
    assert all(e == "invalidate" for e, _ in ms.events)
    assert f.statistics().evictions * P >= LIMIT // 2
    # Faulting again re-fetches the right bytes.
    await ms.fault(M(0, FETCH))
    assert (
        mf.map_internal(ms.held[-1][1], AccessType.READ).tobytes()
        == data[: ms.held[-1][0].length]
    )
    ms.held.clear()
    await f.remove_mapping(ms, AddrRange(base, base + LIMIT), 0, False)
    await f.aclose()
    assert mf.statistics().used_bytes == 0


async def test_budget_writes_dirty_pages_back_before_evicting(mf):
    data = pattern(2 * LIMIT)
    backing = GatedBacking(data)
    f = cached(backing, mf, readahead=NoReadahead(), writable=True)
    new = pattern(FETCH, 99)
    await f.read(0, FETCH)
    await f.write(0, new)
    assert f.statistics().dirty_bytes == FETCH
    assert backing.data[:FETCH] == data[:FETCH]
    with anyio.fail_after(30):
        off = FETCH
        while off < 2 * LIMIT:
            await f.read(off, FETCH)
            off += FETCH
    # The dirty unit was written back, then evicted.
    assert backing.data[:FETCH] == new
    assert (0, FETCH) in backing.writes
    assert f._cache.is_empty_range(0, FETCH)
    assert f.statistics().dirty_bytes == 0
    assert await f.read(0, FETCH) == new
    f.check_invariants()
    await f.aclose()
    assert mf.statistics().used_bytes == 0


async def test_budget_keeps_dirty_pages_when_the_lock_is_busy(mf):
    data = pattern(2 * LIMIT)
    backing = GatedBacking(data)
    f = cached(backing, mf, readahead=NoReadahead(), writable=True)
    new = pattern(FETCH, 7)
    await f.read(0, FETCH)
    await f.write(0, new)
    await f._lock.acquire()
    try:
        with anyio.fail_after(30):
            off = FETCH
            while off < 2 * LIMIT:
                await f.read(off, FETCH)
                off += FETCH
        # Write-back was impossible: the dirty unit stays, nothing was lost.
        assert f.statistics().dirty_bytes == FETCH
        assert not f._cache.is_empty_range(0, FETCH)
        assert backing.data[:FETCH] == data[:FETCH]
    finally:
        f._lock.release()
    assert await f.read(0, FETCH) == new
    await f.aclose()
    assert backing.data[:FETCH] == new
    assert mf.statistics().used_bytes == 0


async def test_budget_never_evicts_pages_mid_fetch(mf):
    data = pattern(3 * LIMIT)
    backing = GatedBacking(data)
    f = cached(backing, mf, readahead=NoReadahead())
    other = cached(BytesBacking(pattern(2 * LIMIT, 5)), mf, readahead=NoReadahead())
    backing.gated = (0, FETCH)
    with anyio.fail_after(30):
        waiter = asyncio.create_task(f.read(0, FETCH))
        await backing.entered.wait()
        # The gated fetch's pages are allocated but not cached: fill and churn
        # the budget from another file meanwhile.
        off = 0
        while off < 2 * LIMIT:
            await other.read(off, FETCH)
            off += FETCH
        assert cache_bytes(mf) <= LIMIT
        backing.gate.set()
        assert await waiter == data[:FETCH]
    assert f.statistics().bytes_fetched == FETCH
    assert f.statistics().evictions == 0
    await other.aclose()
    await f.aclose()
    assert mf.statistics().used_bytes == 0


async def test_budget_large_read_is_pinned_and_may_overshoot(mf):
    # A read larger than the budget cannot evict its own pages while it waits:
    # the cache exceeds the limit for it, then shrinks back.
    data = pattern(3 * LIMIT)
    f = cached(BytesBacking(data), mf, readahead=NoReadahead())
    with anyio.fail_after(30):
        assert await f.read(0, 2 * LIMIT) == data[: 2 * LIMIT]
        assert await f.read(2 * LIMIT, FETCH) == data[2 * LIMIT : 2 * LIMIT + FETCH]
    assert cache_bytes(mf) <= LIMIT
    f.check_invariants()
    await f.aclose()
    assert mf.statistics().used_bytes == 0


@pytest.mark.parametrize("op", ["truncate", "revalidate", "aclose"])
async def test_budget_eviction_races(mf, op):
    data = pattern(4 * LIMIT)
    backing = GatedBacking(data)
    f = cached(backing, mf, writable=True)
    other_data = pattern(4 * LIMIT, 3)
    other = cached(BytesBacking(other_data), mf)
    rng = random.Random(op)
    errors: list[BaseException] = []

    async def churn(target: CachedFile, src: bytes, seed: int) -> None:
        r = random.Random(seed)
        for _ in range(60):
            off = r.randrange(0, len(src) - 1)
            n = r.choice([1, P, 20 * KiB, 70 * KiB])
            try:
                got = await target.read(off, n)
            except Exception as exc:
                errors.append(exc)
                return
            size = target.size
            assert size is not None
            if target is f and op == "truncate":
                assert got == src[off : min(off + n, size)] or len(got) < n
            elif target is f and op == "revalidate":
                continue
            else:
                assert got == src[off : off + n]

    with anyio.fail_after(30):
        async with asyncio.TaskGroup() as tg:
            for i in range(3):
                tg.create_task(churn(f, data, i))
                tg.create_task(churn(other, other_data, 10 + i))
            for _ in range(5):
                await asyncio.sleep(0.001 * rng.random())
            if op == "truncate":
                await f.truncate(LIMIT + 3)
            elif op == "revalidate":
                await backing.inner.truncate(2 * LIMIT)  # behind f's back
                await f.revalidate()
            else:
                await f.aclose()
    if op == "aclose":
        assert all(type(e).__name__ in {"ClosedError", "BusError"} for e in errors)
    else:
        if op == "revalidate":
            # A read in flight that came up short of the old size fails
            # clearly (never zeros); the others see one size or the other.
            assert all(
                isinstance(e, BusError) and isinstance(e.err, StaleVersionError)
                for e in errors
            )
        else:
            assert not errors
        f.check_invariants()
        size = f.size
        assert size is not None
        assert await f.read(0, size) == backing.data[:size]
    other.check_invariants()
    assert await other.read(0, len(other_data)) == other_data
    await f.aclose()
    await other.aclose()
    st = mf.statistics()
    assert st.used_bytes == 0
    mf.check_invariants()


async def test_memory_file_budget_books(mf):
    assert mf.try_reserve_cache(LIMIT)
    assert not mf.try_reserve_cache(P)
    assert mf.cache_over_budget() == 0
    mf.force_reserve_cache(P)
    assert mf.cache_over_budget() == P
    mf.release_cache_reservation(LIMIT + P)
    with pytest.raises(ValueError, match="are reserved"):
        mf.release_cache_reservation(P)
    fr = mf.allocate(LIMIT, kind=MemoryKind.PAGE_CACHE)
    assert not mf.try_reserve_cache(P)
    mf.begin_eviction(2 * P)
    assert mf.statistics().evictions == 2
    assert mf.try_reserve_cache(2 * P)
    mf.release_cache_reservation(2 * P)
    mf.end_eviction(2 * P)
    with pytest.raises(ValueError, match="being evicted"):
        mf.end_eviction(P)
    user_a, user_b = object(), object()
    mf.mark_evictable(user_a, 0, P)
    mf.mark_evictable(user_b, 0, 2 * P)
    mf.mark_evictable(user_a, P, 3 * P)
    mf.touch_evictable(user_a, 0)
    mf.touch_evictable(user_a, 12345)  # unknown: ignored
    assert mf.evictable_count() == 3
    assert mf.pop_evictable() == (user_b, 0, 2 * P)
    mf.mark_unevictable(user_a, P)
    assert mf.pop_evictable() == (user_a, 0, P)
    assert mf.pop_evictable() is None
    mf.dec_ref(fr)
    with MemoryFile("unlimited") as free:
        assert free.try_reserve_cache(1 << 40)
        assert free.cache_over_budget() == 0


def test_bench_p6_row_in_process(monkeypatch):
    from aiomemmap.tools.bench import _remote, run_benchmarks

    monkeypatch.setattr(_remote, "BUDGET_SCAN_BYTES", 24 * MiB + 12345)
    monkeypatch.setattr(_remote, "BUDGET_LIMIT", 4 * MiB)
    rows = run_benchmarks(["P6"])
    (row,) = rows
    assert row.id == "P6"
    assert row.met is True
    assert 0 < row.ours <= 4 + 8
