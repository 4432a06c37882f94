"""Eviction of a cached file's pages: its side of the ``EvictableUser`` protocol.

The memory file's evictor picks the least recently used unit of any
evictable user and calls its ``evict``. For a cached file that means: revoke
what can go (cached, clean, not pinned by an access) in one step without
awaiting, then invalidate the spaces mapping those pages, and only then drop
the references. Eviction never waits for storage: the dirty pages of the
unit are left in place and a write-back of them is started in a task of
this file (:meth:`CacheEviction._start_writeback`), which takes the file's
lock like any write-back, one range at a time. A hung backing then holds up
only its own file's write-back, never the fetch of another file that needed
room; once written, the pages are evicted by that task if the cache is still
over budget, or later when the budget picks them again.
"""

from __future__ import annotations

import asyncio

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
        by the memory file's evictor. :meth:`_revoke` takes out the cached,
        clean pages no access has pinned; dirty pages stay, and a write-back
        of them is started in the background (:meth:`_start_writeback`).
        Tolerates any range: what is not cached, or no longer this file's,
        is ignored.

        Args:
            er: The offsets.

        Locking:
            Takes no lock, and never awaits: it neither waits for this
            file's lock nor for its storage.

        Cancellation:
            Does not await, so it is never cancelled part way.
        """
        start, end = er.start, er.end
        if self._closed or self._units is None:
            return
        if not self._dirty.is_empty_range(start, end):
            self._start_writeback(start, end)
        self._revoke(start, end)

    def _start_writeback(self, start: int, end: int) -> None:
        """Have the dirty pages of ``[start, end)`` written back by a task of this file.

        One task a file: ranges asked for while it runs are added to its
        queue, each range once however often the budget picks it. The task
        takes ``_lock`` for one range at a time, so that the file's own
        operations waiting for the lock go in between (the lock is handed
        to the longest waiter): a slow backing delays them by one range's
        write-back, never by the whole queue. If the cache is over budget
        after a range was written, the pages that became clean are evicted
        at once. A range whose write-back fails stays dirty, so cached,
        until the budget picks it again.
        """
        self._wb_pending[start, end] = None
        if self._wb_task is None:
            task = asyncio.get_running_loop().create_task(
                self._write_back_queued(),
                name=f"CachedFile write-back for eviction of {self!r}",
                context=detached_context(),
            )
            self._wb_task = task
            task.add_done_callback(consume)

    async def _write_back_queued(self) -> None:
        try:
            while self._wb_pending and not self._closed:
                async with self._lock:
                    if self._is_closed() or not self._wb_pending:
                        return
                    start, end = next(iter(self._wb_pending))
                    del self._wb_pending[start, end]
                    try:
                        await self._writeback(start, end)
                    except Exception:
                        continue  # Still dirty; tried again when picked.
                    if self._mf.cache_over_budget() and not self._is_closed():
                        self._revoke(start, end)
        finally:
            self._wb_task = None

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
