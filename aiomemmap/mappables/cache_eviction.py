"""Eviction of a cached file's pages: its side of the ``EvictableUser`` protocol.

The memory file's evictor picks the least recently used unit of any
evictable user and calls its ``evict``. For a cached file that means: write
the unit's dirty pages back if the file's lock is free right now (never wait
for it: its holder may be waiting for the very fetch that evicts), then
revoke what can go (cached, clean, not pinned) in one step without awaiting,
then invalidate the spaces mapping those pages, and only then drop the
references.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiomemmap._core.locks import detached_context
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import FileRange, MappableRange
from aiomemmap.fsutil.file_range_set import release
from aiomemmap.mappables.page_cache import NO_PRIVATE, PageCache, consume

__all__ = ["CacheEviction"]


class CacheEviction(PageCache):
    """The eviction of a cached file's pages.

    A part of :class:`~aiomemmap.CachedFile`, whose docstring describes the
    cache budget as a whole.
    """

    __slots__ = ()

    async def evict(self, er: MappableRange) -> None:
        """Evict what can go of the offsets ``er``: a range the budget picked.

        The :class:`~aiomemmap.memmap.interfaces.EvictableUser` method, called
        by the memory file's evictor. Dirty pages are written back first if
        this file's lock is free right now; then :meth:`_revoke` does the
        rest. Tolerates any range: what is not cached, or no longer this
        file's, is ignored.

        Args:
            er: The offsets.

        Locking:
            Called holding no lock. Takes ``_lock`` only if it is free.

        Cancellation:
            Pages not yet written back stay dirty and cached.
        """
        start, end = er.start, er.end
        if self._closed or self._units is None:
            return
        if not self._dirty.is_empty_range(start, end) and not self._lock.locked():
            await self._lock.acquire()
            try:
                if not self._closed:
                    # A failed write-back leaves the pages dirty: not evicted.
                    with contextlib.suppress(Exception):
                        await self._writeback(start, end)
            finally:
                self._lock.release()
        if not self._closed:
            self._revoke(start, end)

    def _revoke(self, start: int, end: int) -> None:
        """Take the evictable pages of ``[start, end)`` out of the cache.

        Evictable: cached, clean, and not pinned by a waiting access. Does
        not await: once it returns, no read or translate can find those
        pages. Pages no space maps are freed at once; mapped ones after the
        spaces were invalidated, in a background task.
        """
        if self._units is None:
            return
        pieces = self._units.evictable(start, end, self._dirty)
        if not pieces:
            # Nothing can go now: register the range again.
            self._resync_units(start, end)
            return
        dropped: list[FileRange] = []
        total = 0
        for a, b in pieces:
            got = self._cache.drop(a, b)
            dropped.extend(got)
            total += sum(fr.length for fr in got)
        self._resync_units(start, end)
        if not total:
            return
        self._evictions += total // PAGE_SIZE
        self._mf.begin_eviction(total)
        mapped = [
            (a, b)
            for a, b in pieces
            if not self._mappings.is_empty() and self._is_mapped(a, b)
        ]
        if not mapped:
            self._free_evicted(dropped, total)
            return
        task = asyncio.get_running_loop().create_task(
            self._finish_evict(dropped, mapped, total),
            name=f"CachedFile eviction [{start:#x}, {end:#x})",
            context=detached_context(),
        )
        self._evict_tasks.add(task)
        task.add_done_callback(self._evict_tasks.discard)
        task.add_done_callback(consume)

    async def _finish_evict(
        self, dropped: list[FileRange], mapped: list[tuple[int, int]], total: int
    ) -> None:
        """Invalidate the spaces mapping evicted pages, then free the pages."""
        try:
            for a, b in mapped:
                await self._mappings.invalidate(MappableRange(a, b), NO_PRIVATE)
        finally:
            self._free_evicted(dropped, total)

    def _free_evicted(self, dropped: list[FileRange], total: int) -> None:
        if self._mf.closed:
            return
        release(self._mf, dropped)
        self._mf.end_eviction(total)
