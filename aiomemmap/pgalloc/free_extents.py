"""The free pages of a memory file, indexed for lowest-first fit.

A memory file allocates the lowest free range that fits a request. Its free
pages are the gaps between its used runs; :class:`FreeExtents` mirrors them as
maximal extents, indexed by start, by end and by size class, so that freeing
joins neighbours in constant time and finding a fit is logarithmic, not a
scan of the gaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

from sortedcontainers import SortedList

from aiomemmap._core.errors import InvariantError
from aiomemmap._core.pages import PAGE_MASK, PAGE_SHIFT

__all__ = ["FreeExtents"]


def _size_class(length: int) -> int:
    """The class of a free extent: ``floor(log2(pages))``."""
    return (length >> PAGE_SHIFT).bit_length() - 1


@final
class FreeExtents:
    """The free pages of a memory file as maximal extents, for lowest-first fit.

    Extents are kept in two dicts (by start and by end), so that a freed range
    joins its free neighbours with two lookups, and in one sorted list of
    starts per size class (class ``k`` holds the extents of ``2**k`` to
    ``2**(k+1) - 1`` pages), with a bit mask of the non-empty classes. Every
    extent of a class above that of a request fits it, so only the first of
    each such class is a candidate; in the request's own class the extents
    are tried in address order, and only below the best candidate so far.

    Invariants:
        Extents are non-empty, page-aligned, pairwise disjoint and never
        touch (touching extents are joined). ``_by_end`` is the inverse of
        ``_by_start``; each start is in exactly the list of its extent's
        class; bit ``k`` of ``_mask`` is set iff list ``k`` is non-empty.

    Concurrency:
        Thread-compatible: the owning memory file holds its lock.
    """

    __slots__ = ("_by_end", "_by_start", "_classes", "_mask")

    def __init__(self) -> None:
        self._by_start: dict[int, int] = {}
        self._by_end: dict[int, int] = {}
        self._classes: list[SortedList[int]] = [SortedList() for _ in range(64)]
        self._mask = 0

    def __len__(self) -> int:
        return len(self._by_start)

    def extents(self) -> list[tuple[int, int]]:
        """Return every extent as ``(start, end)``, ascending."""
        return sorted(self._by_start.items())

    def start_of_extent_ending_at(self, end: int) -> int | None:
        """Return the start of the extent that ends at ``end``, if there is one."""
        return self._by_end.get(end)

    def add(self, start: int, end: int) -> None:
        """Make ``[start, end)`` free, joining it with touching free extents.

        Preconditions:
            ``[start, end)`` is non-empty, page-aligned and overlaps no extent.
        """
        prev_start = self._by_end.get(start)
        if prev_start is not None:
            self._delete(prev_start, start)
            start = prev_start
        next_end = self._by_start.get(end)
        if next_end is not None:
            self._delete(end, next_end)
            end = next_end
        self._insert(start, end)

    def take(self, start: int, length: int) -> None:
        """Remove ``[start, start + length)`` from the extent starting at ``start``.

        Preconditions:
            An extent starts at ``start`` and is at least ``length`` long.
        """
        end = self._by_start[start]
        self._delete(start, end)
        if start + length < end:
            self._insert(start + length, end)

    def find(self, length: int) -> int | None:
        """Return the lowest start of an extent at least ``length`` long.

        Complexity:
            O(log n) per non-empty size class above the request's (at most
            52), plus the extents of the request's own class that lie below
            the best candidate and are too short. When ``length`` is a power
            of two pages, the first extent of its class always fits.
        """
        c = _size_class(length)
        classes = self._classes
        best = -1
        higher = self._mask >> (c + 1)
        while higher:
            low = higher & -higher
            s = classes[c + low.bit_length()][0]
            if best < 0 or s < best:
                best = s
            higher ^= low
        if self._mask >> c & 1:
            by_start = self._by_start
            own = classes[c]
            candidates: Iterable[int] = (
                own if best < 0 else own.irange(maximum=best, inclusive=(True, False))
            )
            for s in candidates:
                if by_start[s] - s >= length:
                    return s
        return best if best >= 0 else None

    def clear(self) -> None:
        """Forget every extent."""
        self._by_start.clear()
        self._by_end.clear()
        for lst in self._classes:
            lst.clear()
        self._mask = 0

    def check_invariants(self) -> None:
        """Raise ``InvariantError`` unless the invariants hold.

        Complexity:
            O(n log n).
        """
        by_start, by_end = self._by_start, self._by_end
        if len(by_end) != len(by_start):
            raise InvariantError("free extents: the two dicts differ in size")
        prev_end = -1
        for start, end in sorted(by_start.items()):
            if not start < end or (start | end) & PAGE_MASK:
                raise InvariantError(f"free extent [{start:#x}, {end:#x}) is bad")
            if start <= prev_end:
                raise InvariantError(
                    f"free extent [{start:#x}, {end:#x}) touches or overlaps "
                    f"the one ending at {prev_end:#x}"
                )
            if by_end.get(end) != start:
                raise InvariantError(
                    f"free extent [{start:#x}, {end:#x}) lacks its end"
                )
            if start not in self._classes[_size_class(end - start)]:
                raise InvariantError(f"free extent [{start:#x}, {end:#x}) not indexed")
            prev_end = end
        mask = 0
        for k, lst in enumerate(self._classes):
            if lst:
                mask |= 1 << k
        if mask != self._mask:
            raise InvariantError(f"free class mask {self._mask:#x} != {mask:#x}")
        if sum(map(len, self._classes)) != len(by_start):
            raise InvariantError("free extents: stale entries in the size classes")

    def _insert(self, start: int, end: int) -> None:
        self._by_start[start] = end
        self._by_end[end] = start
        c = _size_class(end - start)
        self._classes[c].add(start)
        self._mask |= 1 << c

    def _delete(self, start: int, end: int) -> None:
        del self._by_start[start]
        del self._by_end[end]
        c = _size_class(end - start)
        lst = self._classes[c]
        lst.remove(start)
        if not lst:
            self._mask &= ~(1 << c)
