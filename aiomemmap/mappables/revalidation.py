"""Revalidation: noticing that a cached file's backing changed behind its back.

The cache remembers the backing's version (or, for backings without versions,
its size) as of the last time it learned it or changed the backing itself.
:meth:`Revalidation.revalidate` asks again; on a change, the dirty pages are
written back, the cache is dropped and every space mapping the file is told,
as gVisor's gofer client does when a remote file's attributes change.

A fetch can find out first: the backing answers a read with
:class:`~aiomemmap.StaleVersionError` (the object is not the version the
file was opened at), or comes up short of the size it had.
:meth:`Revalidation._react_to_stale` then does what :meth:`revalidate` does,
without waiting for the file's lock (its holder may be waiting for a fetch):
at once, in one step, every fetch in flight is outdated, new ones are held
before reading, and the cache is dropped but for its dirty pages (this
file's own writes, kept over the new version and written back as usual);
then a task of the file invalidates the spaces mapping it, frees the pages,
learns the new size and version, and lets the fetches go. The cache
therefore never holds clean pages of two versions, and no space maps an old
page once a new one can land: the access whose fetch failed gets a
``BusError`` wrapping the ``StaleVersionError``; the others in flight wait
and get the new version's bytes.
"""

from __future__ import annotations

import asyncio

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import StaleVersionError
from aiomemmap._core.locks import detached_context
from aiomemmap._core.pages import ADDR_LIMIT, is_int
from aiomemmap._core.ranges import FileRange
from aiomemmap.backings.base import call_with_retry
from aiomemmap.fsutil.file_range_set import release
from aiomemmap.mappables.page_cache import NO_PRIVATE, PageCache, consume

__all__ = ["Revalidation"]


class Revalidation(PageCache):
    """The revalidation of a cached file.

    A part of :class:`~aiomemmap.CachedFile`.
    """

    __slots__ = ()

    async def revalidate(self) -> bool:
        """Drop the cache if the backing changed behind the file's back.

        Compares the backing's :meth:`~aiomemmap.backings.base.Backing.version`
        with the one seen when the size was learned or when this file last
        changed the backing (or the size, when the backing has no versions).
        If it changed: the dirty pages are written back first, as a page
        cache never discards them (Linux writes them back before it
        invalidates a revalidated mapping); then every mapping is invalidated
        (private copies are kept, as Linux keeps them), the cache is dropped,
        and the new size and version are picked up. If the version after
        this file's own last change could not be learnt, the version found
        is taken as that change's (no change is reported). If the backing
        told a new version but the rest failed (its size, the write-back),
        the cache keeps the old version's pages, but fetches fail as if they
        had found the object changed, which learns the new version: the
        backing may already be tied to it, and its bytes must not land in
        the old version's extent.

        Returns:
            Whether the backing had changed.

        Raises:
            OSError: The backing could not be asked, or a dirty page could
                not be written back (then nothing was dropped).
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes invalidations while
            holding only it.

        Cancellation:
            Before the cache is dropped, nothing is lost (dirty pages not
            yet written stay dirty); after, the drop completes before the
            cancellation propagates.
        """
        async with self._lock:
            self._check_open("revalidate")
            if self._size is None:
                await self._size_or_bus_error()
                return False
            version = await self._backing.version()
            if version is not None and self._version_unlearnt:
                self._version = version
                self._version_unlearnt = False
                return False
            if version is not None and version == self._version:
                return False
            try:
                new_size = await self._backing.size()
                if version is None and new_size == self._size:
                    return False
                if self._dirty:
                    # Written back first; the backing is then asked again, as
                    # the write-back changed it.
                    await self._writeback(0, ADDR_LIMIT)
                    version = await self._backing.version()
                    new_size = await self._backing.size()
                if not is_int(new_size) or new_size < 0:
                    raise ValueError(
                        f"backing {self._backing!r} reported a bad size {new_size!r}"
                    )
            except BaseException:
                if version is not None and version != self._version:
                    # The backing told a new version and may be tied to it
                    # now (its reads checked against it): fetches must not
                    # read with the old size. Each fails as if it found the
                    # object changed, which learns the new version.
                    self._fetcher.unlearnt = True
                raise
            self._fetcher.generation += 1
            self._size = self._backed_size = int(new_size)
            self._version = version
            self._version_unlearnt = False
            self._fetcher.unlearnt = False
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
            if not self._mf.closed:
                release(self._mf, dropped)

    def _react_to_stale(self, exc: StaleVersionError) -> None:
        """Drop the cache of a version a fetch found replaced; learn the new one.

        Called by the fetcher, without awaiting, when a fetch of the current
        generation failed with ``exc``. Dirty pages are kept (see
        :meth:`_drop_clean`); the rest of the cache is dropped. See the module
        docstring.

        Locking:
            Takes no lock; the task it starts takes none either (eviction
            invalidates the same way).
        """
        if self._closed:
            return
        self._fetcher.generation += 1
        self._fetcher.hold()
        self._ra.reset()
        self._stale_dropped.extend(self._drop_clean())
        if self._stale_task is None:
            task = asyncio.get_running_loop().create_task(
                self._learn_new_version(),
                name=f"CachedFile revalidation of {self!r}",
                context=detached_context(),
            )
            self._stale_task = task
            task.add_done_callback(consume)

    def _drop_clean(self) -> list[FileRange]:
        """Drop every cached page but the dirty ones; return the pages dropped.

        Dirty pages are this file's own writes, not yet in the backing: they
        stay, over whatever version the backing now holds, and are written
        back as usual.
        """
        if not self._dirty:
            self._forget_units()
            return self._cache.drop_all()
        dropped: list[FileRange] = []
        pos = 0
        for seg in list(self._dirty):
            if pos < seg.start:
                dropped.extend(self._cache.drop(pos, seg.start))
            pos = seg.end
        dropped.extend(self._cache.drop(pos, ADDR_LIMIT))
        self._resync_units(0, ADDR_LIMIT)
        return dropped

    async def _learn_new_version(self) -> None:
        try:
            while self._stale_dropped:
                dropped, self._stale_dropped = self._stale_dropped, []
                await finish_shielded(self._finish_drop(dropped))
            if self._is_closed():
                return
            backing, retry = self._backing, self._retry
            version = await call_with_retry(backing.version, retry=retry)
            size = await call_with_retry(backing.size, retry=retry)
            if not is_int(size) or size < 0:
                raise ValueError(f"backing {backing!r} reported a bad size {size!r}")
            if not self._is_closed():
                # Dirty pages kept from before stay inside the file.
                old = self._size if self._size is not None else 0
                kept = max((min(d.end, old) for d in self._dirty), default=0)
                self._size = max(int(size), kept)
                self._backed_size = int(size)
                self._version = version
                self._version_unlearnt = False
                self._fetcher.unlearnt = False
        except Exception:
            # Fetches must not read with the old size (the backing may be
            # tied to the new version already): each fails as if it found
            # the object changed, which starts this again.
            self._fetcher.unlearnt = True
        finally:
            # Fetches made while held were sized for the old version.
            self._fetcher.generation += 1
            self._stale_task = None
            self._fetcher.release()
