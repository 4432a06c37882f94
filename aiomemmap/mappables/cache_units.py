"""A cached file's side of the cache budget: its evictable units and pins.

When its memory file has a ``cache_limit``, a cached file registers what it
caches with the memory file's :class:`~aiomemmap.pgalloc.eviction.Evictor`, in
*units*: the pages one fetch landed. A hit makes the units it touches the most
recently used; parts of a unit that outlive an eviction or a truncation become
units of their own. An access waiting for pages *pins* them, so that the
budget does not evict the first pages of a large access while it waits for
the last ones. :class:`CacheUnits` keeps both and answers which pages of a
range the budget picked may go.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import final

from aiomemmap._core.errors import InvariantError
from aiomemmap._core.segments import SegmentMap
from aiomemmap.fsutil.dirty_set import DirtySet
from aiomemmap.fsutil.file_range_set import FileRangeSet
from aiomemmap.memmap.interfaces import EvictableUser
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = ["CacheUnits", "subtract"]


def subtract(
    start: int, end: int, holes: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Return the parts of ``[start, end)`` outside every range of ``holes``."""
    out: list[tuple[int, int]] = []
    pos = start
    for a, b in sorted(holes):
        if b <= pos or a >= end:
            continue
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
        if pos >= end:
            break
    if pos < end:
        out.append((pos, end))
    return out


@final
class CacheUnits:
    """The evictable units and the pinned ranges of one cached file.

    Args:
        user: The cached file: the evictable user the units are registered
            for.
        mf: The memory file whose evictor keeps the registry.

    Invariants:
        The units cover exactly the cached offsets (checked against the
        cache by :meth:`check_invariants`).

    Concurrency:
        Task-compatible: no method awaits.
    """

    __slots__ = ("_mf", "_pin_tokens", "_pins", "_units", "_user")

    def __init__(self, user: EvictableUser, mf: MemoryFile) -> None:
        self._user = user
        self._mf = mf
        self._units: SegmentMap[None] = SegmentMap()
        self._pins: dict[int, tuple[int, int]] = {}
        self._pin_tokens = itertools.count()

    def land(self, start: int, end: int) -> None:
        """Register the pages one fetch landed as a unit, most recently used."""
        self._units.insert(start, end, None)
        self._mf.evictor.mark_evictable(self._user, start, end)

    def touch(self, start: int, end: int) -> None:
        """Make the units overlapping ``[start, end)`` the most recently used."""
        self._mf.evictor.touch_all(
            self._user, [useg.start for useg in self._units.segments(start, end)]
        )

    def forget_all(self) -> None:
        """Forget every unit (the whole cache was dropped)."""
        units = self._units.remove_all()
        if units and not self._mf.closed:
            self._mf.evictor.forget(self._user, [u.start for u in units])

    def resync(self, cache: FileRangeSet, start: int, end: int) -> None:
        """Re-cut the units overlapping ``[start, end)`` after pages left ``cache``.

        Each such unit is replaced by its parts that are still cached, which
        are registered as the most recently used.
        """
        units = list(self._units.segments(start, end))
        if not units:
            return
        evictor = self._mf.evictor
        evictor.forget(self._user, [u.start for u in units])
        for useg in units:
            self._units.remove(useg)
        for useg in units:
            for cseg in list(cache.segments(useg.start, useg.end)):
                lo, hi = max(cseg.start, useg.start), min(cseg.end, useg.end)
                self._units.insert_without_merging(lo, hi, None)
                evictor.mark_evictable(self._user, lo, hi)

    @contextlib.contextmanager
    def pinned(self, start: int, end: int) -> Iterator[None]:
        """Keep ``[start, end)`` from being evicted while the block runs."""
        token = next(self._pin_tokens)
        self._pins[token] = (start, end)
        try:
            yield
        finally:
            del self._pins[token]

    def evictable(self, start: int, end: int, dirty: DirtySet) -> list[tuple[int, int]]:
        """Return the parts of ``[start, end)`` that may be evicted now.

        Those in a unit (so cached), clean, and not pinned by a waiting
        access.
        """
        keep = [(d.start, d.end) for d in dirty.segments(start, end)]
        keep.extend(self._pins.values())
        pieces: list[tuple[int, int]] = []
        for useg in self._units.segments(start, end):
            lo, hi = max(useg.start, start), min(useg.end, end)
            pieces.extend(subtract(lo, hi, keep))
        return pieces

    def check_invariants(self, cache: FileRangeSet) -> None:
        """Check that the units cover exactly ``cache``.

        Raises:
            InvariantError: They do not.
        """
        self._units.check_invariants()
        if self._units.span() != cache.span():
            raise InvariantError(
                f"units span {self._units.span():#x}, the cache {cache.span():#x}"
            )
        for useg in self._units:
            hole = cache.first_hole(useg.start, useg.end)
            if hole is not None:
                raise InvariantError(f"unit offsets {hole} are not cached")
