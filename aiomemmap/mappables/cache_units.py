"""A cached file's side of the cache budget: its evictable units and pins.

When its memory file has a ``cache_limit``, a cached file registers what it
caches with the memory file's :class:`~aiomemmap.pgalloc.eviction.Evictor`, in
*units*: the pages one fetch landed. A hit makes the units it touches the most
recently used; parts of a unit that outlive an eviction or a truncation become
units of their own. An access *pins* the pages it is about to copy, from
before it waits for them until it has copied them (see
:mod:`~aiomemmap.pgalloc.access_pins`), so that the budget does not evict the
first pages of a large access while it waits for the last ones. Pins are
counted per offset (several accesses may pin the same pages), and the bytes
pinned at least once are reported to the evictor's books.
:class:`CacheUnits` keeps units and pins and answers which pages of a range
the budget picked may go.
"""

from __future__ import annotations

from typing import final

from aiomemmap._core.errors import InvariantError
from aiomemmap._core.segments import Segment, SegmentMap, merge_equal
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
        cache by :meth:`check_invariants`). Pin counts are positive; the
        evictor's pinned books include the span of this file's pins.

    Concurrency:
        Task-compatible: no method awaits.
    """

    __slots__ = ("_mf", "_pins", "_units", "_user")

    def __init__(self, user: EvictableUser, mf: MemoryFile) -> None:
        self._user = user
        self._mf = mf
        self._units: SegmentMap[None] = SegmentMap()
        # Offset -> how many accesses pin it.
        self._pins: SegmentMap[int] = SegmentMap(merge_equal)

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

    def pin(self, start: int, end: int) -> None:
        """Keep ``[start, end)`` from being evicted until :meth:`unpin`.

        Each call must be matched by one :meth:`unpin` of the same range.
        """
        if start >= end:
            return
        pins = self._pins
        gaps = [(max(g.start, start), min(g.end, end)) for g in pins.gaps(start, end)]
        pins.mutate_range(start, end, _more)
        newly = 0
        for lo, hi in gaps:
            if lo < hi:
                pins.insert(lo, hi, 1)
                newly += hi - lo
        if newly:
            self._mf.evictor.pin(newly)

    def unpin(self, start: int, end: int) -> None:
        """Drop one pin of ``[start, end)``, taken by :meth:`pin`."""
        if start >= end:
            return
        pins = self._pins
        pins.mutate_range(start, end, _fewer)
        freed = 0
        for seg in list(pins.segments(start, end)):
            if seg.value <= 0:
                pins.remove(seg)
                freed += seg.end - seg.start
        if freed:
            self._mf.evictor.unpin(freed)

    def pinned_span(self) -> int:
        """Return how many offsets are pinned by at least one access."""
        return self._pins.span()

    def evictable(self, start: int, end: int, dirty: DirtySet) -> list[tuple[int, int]]:
        """Return the parts of ``[start, end)`` that may be evicted now.

        Those in a unit (so cached), clean, and not pinned by an access.
        """
        keep = [(d.start, d.end) for d in dirty.segments(start, end)]
        keep.extend((p.start, p.end) for p in self._pins.segments(start, end))
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
        self._pins.check_invariants()
        for pseg in self._pins:
            if pseg.value <= 0:
                raise InvariantError(f"pin count {pseg.value} at {pseg.start:#x}")
        if self._units.span() != cache.span():
            raise InvariantError(
                f"units span {self._units.span():#x}, the cache {cache.span():#x}"
            )
        for useg in self._units:
            hole = cache.first_hole(useg.start, useg.end)
            if hole is not None:
                raise InvariantError(f"unit offsets {hole} are not cached")


def _more(seg: Segment[int]) -> int:
    return seg.value + 1


def _fewer(seg: Segment[int]) -> int:
    return seg.value - 1
