"""Revalidation: noticing that a cached file's backing changed behind its back.

The cache remembers the backing's version (or, for backings without versions,
its size) as of the last time it learned it or changed the backing itself.
:meth:`Revalidation.revalidate` asks again; on a change, the cache is dropped
and every space mapping the file is told, as gVisor's gofer client does when
a remote file's attributes change.
"""

from __future__ import annotations

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.pages import is_int
from aiomemmap._core.ranges import FileRange
from aiomemmap.fsutil.file_range_set import release
from aiomemmap.mappables.page_cache import NO_PRIVATE, PageCache

__all__ = ["Revalidation"]


class Revalidation(PageCache):
    """The revalidation of a cached file.

    A part of :class:`~aiomemmap.CachedFile`.
    """

    __slots__ = ()

    async def revalidate(self) -> bool:
        """Drop the cache if the backing changed behind the file's back.

        Compares the backing's :meth:`~aiomemmap.backings.base.Backing.version`
        with the one seen when the size was learned (or the size, when the
        backing has no versions). If it changed: every mapping is
        invalidated (private copies are kept, as Linux keeps them), the
        cache is dropped without writing anything back (dirty data is lost:
        it is older than the new contents), and the new size is picked up.

        Returns:
            Whether the backing had changed.

        Raises:
            OSError: The backing could not be asked.
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes invalidations while
            holding only it.

        Cancellation:
            Before the change is acted on, nothing changes; after, the drop
            completes before the cancellation propagates.
        """
        async with self._lock:
            self._check_open("revalidate")
            if self._size is None:
                await self._size_or_bus_error()
                return False
            version = await self._backing.version()
            if version is None:
                new_size = await self._backing.size()
                if new_size == self._size:
                    return False
            else:
                if version == self._version:
                    return False
                new_size = await self._backing.size()
            if not is_int(new_size) or new_size < 0:
                raise ValueError(
                    f"backing {self._backing!r} reported a bad size {new_size!r}"
                )
            self._fetcher.generation += 1
            self._size = int(new_size)
            self._version = version
            self._ra.reset()
            dropped = self._cache.drop_all()
            self._dirty.drop_all()
            self._forget_units()
            await finish_shielded(self._finish_drop(dropped))
            return True

    async def _finish_drop(self, dropped: list[FileRange]) -> None:
        try:
            if not self._mappings.is_empty():
                await self._mappings.invalidate_all(NO_PRIVATE)
        finally:
            release(self._mf, dropped)
