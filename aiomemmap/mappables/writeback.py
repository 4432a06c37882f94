"""Changes to a cached file that reach its backing: writes, write-back, truncation.

A write changes cached pages in the cache (they become dirty, in the
:class:`~aiomemmap.fsutil.dirty_set.DirtySet`) and sends offsets that are
neither cached nor mapped straight to the backing, as gVisor's caching inode
did. :meth:`WriteBack.sync` and :meth:`WriteBack.msync` write dirty pages back
(gVisor's ``SyncDirty``, with its keep-dirty rule for pages writable through a
shared mapping); :meth:`WriteBack.truncate` sets the size, revoking the pages
past the new end from every space first.
"""

from __future__ import annotations

import contextlib
import errno

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import StaleVersionError
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    PAGE_SIZE,
    page_round_down,
    page_round_up,
)
from aiomemmap._core.ranges import FileRange, MappableRange
from aiomemmap.fsutil.file_range_set import release
from aiomemmap.mappables.page_cache import (
    WITH_PRIVATE,
    PageCache,
    check_offset,
    check_page_range,
)

__all__ = ["WriteBack"]


class WriteBack(PageCache):
    """The writing operations of a cached file.

    A part of :class:`~aiomemmap.CachedFile`, whose docstring states the
    locking rules they follow.
    """

    __slots__ = ()

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``, extending the file if needed.

        Cached pages are changed in the cache and marked dirty (written back
        by :meth:`sync`). Offsets that are neither cached nor mapped go
        straight to the backing, as gVisor's caching inode did; mapped ones
        are fetched first and written in the cache.

        The write is made in two steps. First it waits, changing nothing,
        until every page it will change in the cache is present (pinned
        against eviction from then on) and no fetch overlaps it. Then it
        commits: the parts going to the backing are written there (fetches
        of those offsets wait), and the cached parts are changed in one step
        without awaiting.

        Args:
            offset: Where to write.
            data: The bytes.

        Returns:
            ``len(data)``.

        Raises:
            TypeError: ``offset`` is not an int or ``data`` not bytes-like.
            ValueError: The write would end past ``2**64``.
            PermissionError: The file is not writable.
            BusError: Fetching a page to update failed (nothing was
                written).
            OSError: Writing straight to the backing failed: the parts
                written to it before the failure stay written, the cache is
                unchanged. :class:`~aiomemmap.StaleVersionError` if the
                object was replaced while the backing was being written (the
                cache was dropped meanwhile, so the cached parts were not
                changed).
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and holds it while waiting for
            fetches and backing writes.

        Cancellation:
            All or nothing: a write cancelled while it waits for pages or
            for the lock changed nothing; once it commits, it completes
            before the cancellation propagates.
        """
        offset = check_offset("write", "offset", offset)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write: data must be bytes-like, got {type(data)!r}")
        view = memoryview(data).cast("B") if memoryview(data).contiguous else None
        if view is None:
            view = memoryview(bytes(data))
        if offset + len(view) > ADDR_LIMIT - PAGE_SIZE:
            raise ValueError(
                f"write: {len(view)} bytes at {offset:#x} end past the offset space"
            )
        if not self._writable:
            raise PermissionError(errno.EACCES, f"write: {self!r} is not writable")
        if not len(view):
            return 0
        end = offset + len(view)
        lo, hi = page_round_down(offset), page_round_up(end)
        async with self._lock:
            self._check_open("write")
            await self._size_or_bus_error()
            units = self._units
            if units is not None:
                units.pin(lo, hi)
            try:
                plan = await self._plan_write(offset, end)
                await finish_shielded(self._commit_write(offset, view, plan))
            finally:
                if units is not None:
                    units.unpin(lo, hi)
        return len(view)

    def _grow(self, end: int) -> None:
        assert self._size is not None
        self._size = max(self._size, end)

    async def _plan_write(self, offset: int, end: int) -> list[tuple[bool, int, int]]:
        """Wait until ``[offset, end)`` can be written without waiting; say how.

        Returns, in order, ``(through, start, stop)`` parts covering the
        range: ``through`` parts go straight to the backing (neither cached,
        nor mapped, nor being fetched), the others are cached. Valid until
        the caller next awaits (the caller's pin keeps cached parts cached
        after that, and ``_lock`` keeps the mappings).

        Cancellation:
            Changes nothing.
        """
        while True:
            plan: list[tuple[bool, int, int]] = []
            pos = offset
            while pos < end:
                seg = self._cache.find(pos)
                if seg is not None:
                    stop = min(end, seg.end)
                    plan.append((False, pos, stop))
                    pos = stop
                    continue
                fetch = self._fetcher.find(pos)
                if fetch is not None:
                    # Being fetched: wait, then look again (cached or a hole).
                    await fetch.done.wait()
                    break
                stop = end
                nxt = self._cache.lower_bound_segment(pos)
                if nxt is not None:
                    stop = min(stop, nxt.start)
                nxt_fetch = self._fetcher.next_start(pos)
                if nxt_fetch is not None:
                    stop = min(stop, nxt_fetch)
                if self._is_mapped(pos, stop):
                    # Mapped offsets are written in the cache, so that the
                    # spaces mapping them see the write once they translate.
                    lo, hi = page_round_down(pos), page_round_up(stop)
                    await self._populate(lo, hi, lo, hi, clip=False)
                    break
                plan.append((True, pos, stop))
                pos = stop
            else:
                return plan

    async def _commit_write(
        self, offset: int, view: memoryview, plan: list[tuple[bool, int, int]]
    ) -> None:
        """Write the parts of ``plan``: the backing's first, then the cache's."""
        generation = self._fetcher.generation
        through = [(a, b) for t, a, b in plan if t]
        if through:
            with contextlib.ExitStack() as stack:
                for a, b in through:
                    stack.enter_context(
                        self._fetcher.writing_through(page_round_down(a), b)
                    )
                for a, b in through:
                    n = await self._backing.write_from(a, view[a - offset : b - offset])
                    if n != b - a:
                        raise OSError(
                            errno.EIO,
                            f"backing wrote {n} of {b - a} bytes at {a:#x}",
                        )
                    self._backed_to(b)
                    self._grow(b)
            if self._fetcher.generation != generation:
                raise StaleVersionError(
                    f"write: {self!r} was replaced in its backing while being "
                    "written; the cached parts of the write were not made",
                    expected=self._version,
                    found=None,
                )
        for t, a, b in plan:
            if not t:
                self._copy_in(a, view[a - offset : b - offset])
                self._grow(b)
        if through:
            await self._own_change()

    async def sync(self) -> None:
        """Write every dirty page back to the backing.

        Pages that stay writable through a shared mapping are written but
        stay dirty (gVisor's keep-dirty rule).

        Raises:
            OSError: The backing failed; unwritten pages stay dirty.
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and holds it across backing
            writes.

        Cancellation:
            Pages not yet written stay dirty; nothing leaks.
        """
        async with self._lock:
            self._check_open("sync")
            await self._writeback(0, ADDR_LIMIT)

    async def msync(self, mr: MappableRange) -> None:
        """Write the dirty pages of ``mr`` back to the backing.

        Raises:
            TypeError: ``mr`` is not a ``MappableRange``.
            ValueError: ``mr`` is empty or unaligned.
            OSError: The backing failed; unwritten pages stay dirty.
            ClosedError: The file is closed.

        Locking:
            As :meth:`sync`.
        """
        mr = check_page_range("msync", mr)
        async with self._lock:
            self._check_open("msync")
            await self._writeback(mr.start, mr.end)

    async def truncate(self, size: int) -> None:
        """Set the file's size, as ``ftruncate`` does.

        Mappings of the pages past the new end are invalidated, private
        copies included (``invalidate_private=True``); those cached pages are
        dropped; the tail of the last page past the new end is zeroed; then
        the backing is truncated. Growing the file adds zeros.

        Args:
            size: The new size in bytes.

        Raises:
            TypeError: ``size`` is not an int.
            ValueError: ``size`` is negative or too large.
            PermissionError: The file is not writable.
            BusError: The size could not be learned from the backing.
            OSError: The backing refused (the cache already has the new size;
                :meth:`revalidate` resynchronises).
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes the invalidation
            while holding only it.

        Cancellation:
            Once the new size is set, the invalidation, the freeing of pages
            and the backing's truncation complete before the cancellation
            propagates.
        """
        size = check_offset("truncate", "size", size)
        if size > ADDR_LIMIT - PAGE_SIZE:
            raise ValueError(f"truncate: size {size:#x} is too large")
        if not self._writable:
            raise PermissionError(errno.EACCES, f"truncate: {self!r} is not writable")
        async with self._lock:
            self._check_open("truncate")
            old = await self._size_or_bus_error()
            # All at once, without awaiting: the new size, and the pages past
            # it out of the cache (still referenced until spaces forget them).
            self._fetcher.generation += 1
            self._size = size
            self._backed_size = min(self._backed_size, size)
            self._ra.reset()
            new_r, old_r = page_round_up(size), page_round_up(old)
            dropped = self._cache.drop(new_r, ADDR_LIMIT)
            self._dirty.drop(new_r, ADDR_LIMIT)
            self._resync_units(new_r, ADDR_LIMIT)
            # The tail of the last page past the new end reads as zero.
            self._cache.zero(self._mf, size, new_r)
            await finish_shielded(self._finish_truncate(dropped, new_r, old_r, size))

    async def _finish_truncate(
        self, dropped: list[FileRange], new_r: int, old_r: int, size: int
    ) -> None:
        try:
            if old_r > new_r:
                await self._mappings.invalidate(
                    MappableRange(new_r, old_r), WITH_PRIVATE
                )
        finally:
            release(self._mf, dropped)
        await self._backing.truncate(size)
        self._backed_size = size
        await self._own_change()
