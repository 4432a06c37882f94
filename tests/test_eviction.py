"""Eviction through the EvictableUser protocol: any owner of cache pages."""

from __future__ import annotations

import pytest

from aiomemmap import (
    PAGE_SIZE,
    BytesBacking,
    CachedFile,
    EvictableUser,
    FileRange,
    MappableRange,
    MemoryFile,
    MemoryKind,
)
from aiomemmap.pgalloc.eviction import Evictor

P = PAGE_SIZE
MiB = 1024 * 1024


class PageHoarder:
    """An evictable user that is not a CachedFile: it keeps cache pages by offset.

    Each page it holds is registered as its own evictable range; evicting
    frees what of the range it still holds, through the memory file's
    eviction books.
    """

    def __init__(self, mf: MemoryFile) -> None:
        self.mf = mf
        self.pages: dict[int, FileRange] = {}
        self.evicted: list[MappableRange] = []

    def take(self, offset: int) -> None:
        self.pages[offset] = self.mf.allocate(P, kind=MemoryKind.PAGE_CACHE)
        self.mf.mark_evictable(self, offset, offset + P)

    async def evict(self, er: MappableRange) -> None:
        self.evicted.append(er)
        gone = [o for o in self.pages if er.start <= o < er.end]
        self.mf.begin_eviction(len(gone) * P)
        for o in gone:
            self.mf.dec_ref(self.pages.pop(o))
        self.mf.end_eviction(len(gone) * P)


def cache_bytes(mf: MemoryFile) -> int:
    return mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]


def test_the_test_user_is_an_evictable_user():
    def accepts(user: EvictableUser) -> EvictableUser:
        return user

    with MemoryFile("t", chunk_size=2 * MiB) as mf:
        assert accepts(PageHoarder(mf)) is not None


async def test_reserve_evicts_any_user_least_recently_used_first():
    with MemoryFile("t", cache_limit=4 * P, chunk_size=2 * MiB) as mf:
        user = PageHoarder(mf)
        for i in range(4):
            user.take(i * P)
        mf.touch_evictable(user, 0)  # page 0 is now the most recently used
        await mf.evictor.reserve(2 * P)
        assert user.evicted == [MappableRange(P, 2 * P), MappableRange(2 * P, 3 * P)]
        assert sorted(user.pages) == [0, 3 * P]
        assert mf.statistics().evictions == 2
        mf.release_cache_reservation(2 * P)
        assert cache_bytes(mf) == 2 * P
        mf.check_invariants()


async def test_reserve_forces_when_nothing_can_go():
    with MemoryFile("t", cache_limit=P, chunk_size=2 * MiB) as mf:
        user = PageHoarder(mf)
        user.take(0)
        mf.mark_unevictable(user, 0)
        await mf.evictor.reserve(P)
        assert user.evicted == []
        assert mf.cache_over_budget() == P
        mf.release_cache_reservation(P)


async def test_a_cached_file_fetch_evicts_another_kind_of_user():
    with MemoryFile("t", cache_limit=8 * P, chunk_size=2 * MiB) as mf:
        user = PageHoarder(mf)
        for i in range(8):
            user.take(i * P)
        data = bytes(range(256)) * (4 * P // 256)
        f = CachedFile(BytesBacking(data), mf, max_fetch_bytes=4 * P)
        assert await f.read(0, 4 * P) == data
        assert len(user.pages) == 4
        assert [er.start for er in user.evicted] == [0, P, 2 * P, 3 * P]
        assert cache_bytes(mf) == 8 * P
        # The other way round: after the hoarder's older pages, the file's
        # unit is next in line, before the hoarder's newer pages.
        for i in range(8, 12):
            user.take(i * P)
        await mf.evictor.reserve(4 * P)
        assert f.statistics().resident_bytes == 0
        assert f.statistics().evictions == 4
        assert sorted(user.pages) == [i * P for i in range(8, 12)]
        mf.release_cache_reservation(4 * P)
        await f.aclose()
        for fr in user.pages.values():
            mf.dec_ref(fr)
        assert mf.statistics().used_bytes == 0


def test_evictor_books_refuse_bad_counts():
    with MemoryFile("t", cache_limit=2 * P, chunk_size=2 * MiB) as mf:
        ev = mf.evictor
        assert isinstance(ev, Evictor)
        assert ev.limit == 2 * P
        with pytest.raises(ValueError, match="reserved"):
            ev.release(P)
        with pytest.raises(ValueError, match="evicted"):
            ev.end_eviction(P)
        with pytest.raises(ValueError, match="bad length"):
            ev.begin_eviction(1)
        with pytest.raises(ValueError, match="bad range"):
            ev.mark_evictable(object(), P, P)  # type: ignore[arg-type]
