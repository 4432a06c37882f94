"""A sorted map of non-overlapping ranges to values: gVisor's segment set.

A :class:`SegmentMap` maps non-empty, pairwise disjoint half-open integer
ranges ("segments") to values. The keys not covered by any segment form the
"gaps". Between two segments that touch there is still a gap, of length zero,
exactly as in gVisor's ``pkg/segment``; :meth:`SegmentMap.gaps` reports only
non-empty gaps, and :meth:`SegmentMap.next_gap` reports zero-length ones too.

Keys are plain ints: the map serves address ranges, Mappable offsets and file
offsets alike, and the layers above convert to their own range types at their
boundaries.

Merging and splitting are value-specific. A merge function decides whether two
touching segments may become one (and with which value); a split function
gives the values of the two halves when a segment is cut. The map never merges
segments whose ranges do not touch, whatever their values.

Segments are returned as :class:`Segment` snapshots. A snapshot stays a correct
description only until the next mutation of the map; methods that take a
segment check that it is still current and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, NamedTuple, TypeAlias, TypeVar, cast, final

from sortedcontainers import SortedDict

from aiomemmap._core.pages import ADDR_LIMIT, is_int

__all__ = [
    "NO_MERGE",
    "Gap",
    "MergeFn",
    "NoMerge",
    "Segment",
    "SegmentMap",
    "SplitFn",
    "merge_equal",
    "merge_never",
    "split_copy",
]

V = TypeVar("V")


class NoMerge(enum.Enum):
    """The type of :data:`NO_MERGE`."""

    TOKEN = 0


NO_MERGE: Final = NoMerge.TOKEN
"""Returned by a merge function to refuse a merge."""

MergeFn: TypeAlias = Callable[[int, int, int, V, V], "V | NoMerge"]
"""``merge(start, mid, end, left, right)`` for ``[start, mid)`` and ``[mid, end)``.

Returns the value of the merged segment ``[start, end)``, or :data:`NO_MERGE`.
"""

SplitFn: TypeAlias = Callable[[int, int, V, int], tuple[V, V]]
"""``split(start, end, value, at)`` gives the values of the two halves."""


def merge_never(start: int, mid: int, end: int, left: object, right: object) -> NoMerge:
    """A merge function that refuses every merge."""
    return NO_MERGE


def merge_equal(start: int, mid: int, end: int, left: V, right: V) -> V | NoMerge:
    """A merge function that merges touching segments with equal values."""
    return left if left == right else NO_MERGE


def split_copy(start: int, end: int, value: V, at: int) -> tuple[V, V]:
    """A split function that gives both halves the same value.

    Suitable for immutable values only: both halves share the object.
    """
    return value, value


class Segment(NamedTuple, Generic[V]):
    """A snapshot of one segment: the range ``[start, end)`` and its value."""

    start: int
    end: int
    value: V

    @property
    def length(self) -> int:
        """``end - start``."""
        return self.end - self.start


class Gap(NamedTuple):
    """A range ``[start, end)`` of keys covered by no segment (may be empty)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """``end - start``."""
        return self.end - self.start


@final
class SegmentMap(Generic[V]):
    """A sorted map from non-overlapping ranges of ints to values.

    Args:
        merge: Decides whether touching segments merge; by default none do.
        split: Gives the values of the halves of a split segment; by default
            both halves keep the same value.
        min_key: The smallest key the map may hold.
        max_key: One past the largest key the map may hold.

    Raises:
        TypeError: A bound is not an int or a function is not callable.
        ValueError: Unless ``0 <= min_key <= max_key <= 2**64``.

    Invariants:
        Segments are non-empty, pairwise disjoint, sorted, and lie within
        ``[min_key, max_key)``. Touching segments may exist (merging is only
        done where an operation says it merges).

    Concurrency:
        Task-compatible: the owner serialises access (it never awaits).
    """

    __slots__ = ("_keys", "_max_key", "_merge", "_min_key", "_sd", "_split")

    def __init__(
        self,
        merge: MergeFn[V] | None = None,
        split: SplitFn[V] | None = None,
        *,
        min_key: int = 0,
        max_key: int = ADDR_LIMIT,
    ) -> None:
        for name, fn in (("merge", merge), ("split", split)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {fn!r}")
        for name, k in (("min_key", min_key), ("max_key", max_key)):
            if not is_int(k):
                raise TypeError(f"{name} must be an int, got {k!r}")
        if not 0 <= min_key <= max_key <= ADDR_LIMIT:
            raise ValueError(
                f"need 0 <= min_key <= max_key <= 2**64, got "
                f"min_key={min_key:#x}, max_key={max_key:#x}"
            )
        self._merge: MergeFn[V] = merge if merge is not None else merge_never
        self._split: SplitFn[V] = split if split is not None else split_copy
        self._min_key = min_key
        self._max_key = max_key
        # start -> (end, value), kept sorted by start.
        self._sd: SortedDict[int, tuple[int, V]] = SortedDict()
        # The SortedList of starts inside the SortedDict (see _floor).
        self._keys: Any = cast(Any, self._sd)._list

    # ------------------------------------------------------------------
    # Queries

    @property
    def min_key(self) -> int:
        """The smallest key the map may hold."""
        return self._min_key

    @property
    def max_key(self) -> int:
        """One past the largest key the map may hold."""
        return self._max_key

    def __len__(self) -> int:
        """The number of segments."""
        return len(self._sd)

    def __bool__(self) -> bool:
        return bool(self._sd)

    def __iter__(self) -> Iterator[Segment[V]]:
        """Iterate over all segments in ascending order."""
        sd = self._sd
        for s in sd:
            e, v = sd[s]
            yield Segment(s, e, v)

    def __repr__(self) -> str:
        body = ", ".join(f"[{s:#x}, {e:#x}): {v!r}" for s, e, v in self)
        return f"SegmentMap({{{body}}})"

    def is_empty(self) -> bool:
        """Return whether the map has no segments."""
        return not self._sd

    def is_empty_range(self, start: int, end: int) -> bool:
        """Return whether no segment overlaps ``[start, end)``.

        An empty range is always empty.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        self._check_range(start, end, allow_empty=True)
        if start == end:
            return True
        s, nxt = self._neighbours(start)
        if s is not None and self._sd[s][0] > start:
            return False  # The segment containing start overlaps.
        return nxt is None or nxt >= end

    def span(self) -> int:
        """Return the total length of all segments.

        Complexity:
            O(n).
        """
        return sum(e - s for s, (e, _) in self._sd.items())

    def span_range(self, start: int, end: int) -> int:
        """Return how many keys of ``[start, end)`` are covered by segments.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        self._check_range(start, end, allow_empty=True)
        total = 0
        for s, e, _ in self.segments(start, end):
            total += min(e, end) - max(s, start)
        return total

    def export(self) -> list[Segment[V]]:
        """Return every segment, in ascending order."""
        return list(self)

    def find(self, key: int) -> Segment[V] | None:
        """Return the segment containing ``key``, or ``None`` if it is in a gap.

        Complexity:
            O(log n).
        """
        s = self._floor(key)
        if s is not None:
            e, v = self._sd[s]
            if key < e:
                return Segment(s, e, v)
        return None

    def find_gap(self, key: int) -> Gap | None:
        """Return the gap containing ``key``, or ``None`` if a segment holds it.

        Raises:
            ValueError: ``key`` is outside ``[min_key, max_key)``.
        """
        self._check_key(key)
        s = self._floor(key)
        if s is not None and key < self._sd[s][0]:
            return None
        return self._gap_after(s)

    def lower_bound_segment(self, key: int) -> Segment[V] | None:
        """Return the segment containing ``key``, else the first one after it."""
        sd = self._sd
        s = self._floor(key)
        if s is not None:
            e, v = sd[s]
            if key < e:
                return Segment(s, e, v)
        s = self._higher(key)
        if s is None:
            return None
        e, v = sd[s]
        return Segment(s, e, v)

    def upper_bound_segment(self, key: int) -> Segment[V] | None:
        """Return the segment containing ``key``, else the last one before it."""
        s = self._floor(key)
        if s is None:
            return None
        e, v = self._sd[s]
        return Segment(s, e, v)

    def lower_bound_gap(self, key: int) -> Gap:
        """Return the gap containing ``key``, else the first gap after it.

        The gap after a segment may be empty if the next segment touches it.

        Raises:
            ValueError: ``key`` is outside ``[min_key, max_key]``.
        """
        self._check_key(key, allow_max=True)
        return self._gap_after(self._floor(key))

    def upper_bound_gap(self, key: int) -> Gap:
        """Return the gap containing ``key``, else the last gap before it.

        Raises:
            ValueError: ``key`` is outside ``[min_key, max_key]``.
        """
        self._check_key(key, allow_max=True)
        s = self._floor(key)
        if s is not None and key < self._sd[s][0]:
            return self._gap_after(self._lower(s))
        return self._gap_after(s)

    def first_segment(self) -> Segment[V] | None:
        """Return the lowest segment, or ``None`` if the map is empty."""
        s = self._higher(-1)
        if s is None:
            return None
        e, v = self._sd[s]
        return Segment(s, e, v)

    def last_segment(self) -> Segment[V] | None:
        """Return the highest segment, or ``None`` if the map is empty."""
        s = self._last_key()
        if s is None:
            return None
        e, v = self._sd[s]
        return Segment(s, e, v)

    def first_gap(self) -> Gap:
        """Return the gap before the first segment (maybe empty)."""
        return self._gap_after(None)

    def last_gap(self) -> Gap:
        """Return the gap after the last segment (maybe empty)."""
        return self._gap_after(self._last_key())

    def next_segment(self, seg: Segment[V]) -> Segment[V] | None:
        """Return the segment after ``seg``, or ``None``.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        s = self._higher(seg.start)
        if s is None:
            return None
        e, v = self._sd[s]
        return Segment(s, e, v)

    def prev_segment(self, seg: Segment[V]) -> Segment[V] | None:
        """Return the segment before ``seg``, or ``None``.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        s = self._lower(seg.start)
        if s is None:
            return None
        e, v = self._sd[s]
        return Segment(s, e, v)

    def next_gap(self, seg: Segment[V]) -> Gap:
        """Return the gap right after ``seg`` (empty if the next segment touches).

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        return self._gap_after(seg.start)

    def prev_gap(self, seg: Segment[V]) -> Gap:
        """Return the gap right before ``seg`` (empty if the previous one touches).

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        return self._gap_after(self._lower(seg.start))

    def segments(
        self, start: int | None = None, end: int | None = None
    ) -> Iterator[Segment[V]]:
        """Iterate over the segments overlapping ``[start, end)``, ascending.

        The segments are not clipped to the range. The map must not be
        mutated while the iterator is in use.

        Args:
            start: Lower bound; ``None`` means ``min_key``.
            end: Upper bound; ``None`` means ``max_key``.

        Raises:
            ValueError: The bounds do not form a well-formed range.
        """
        start = self._min_key if start is None else start
        end = self._max_key if end is None else end
        self._check_range(start, end, allow_empty=True)
        if start >= end:
            return
        sd = self._sd
        for s in sd.irange(self._first_overlapping(start), end, (True, False)):
            e, v = sd[s]
            yield Segment(s, e, v)

    def gaps(self, start: int | None = None, end: int | None = None) -> Iterator[Gap]:
        """Iterate over the non-empty gaps overlapping ``[start, end)``, ascending.

        The gaps are not clipped to the range. The map must not be mutated
        while the iterator is in use.

        Raises:
            ValueError: The bounds do not form a well-formed range.
        """
        start = self._min_key if start is None else start
        end = self._max_key if end is None else end
        self._check_range(start, end, allow_empty=True)
        if start >= end:
            return
        sd = self._sd
        s = self._floor(start)
        while True:
            gap = self._gap_after(s)
            if gap.start >= end:
                return
            if gap.end > start and gap.start < gap.end:
                yield gap
            # A gap ends where the next segment starts, or at max_key.
            if gap.end >= end or gap.end not in sd:
                return
            s = gap.end

    def first_hole(self, start: int, end: int) -> Gap | None:
        """Return the first part of ``[start, end)`` no segment covers, or ``None``.

        The returned gap is clipped to ``[start, end)``.

        Raises:
            TypeError: ``start`` or ``end`` is not an int.
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        # gaps() reads None as "unbounded"; here both bounds are required.
        self._check_range(start, end, allow_empty=True)
        for g in self.gaps(start, end):
            return Gap(max(g.start, start), min(g.end, end))
        return None

    def first_large_enough_gap(
        self, length: int, start: int | None = None, end: int | None = None
    ) -> Gap | None:
        """Return the lowest gap whose part inside ``[start, end)`` is ``length`` long.

        The returned gap is clipped to ``[start, end)``.

        Complexity:
            O(n) in the number of segments in the range.
        """
        for g in self.gaps(start, end):
            lo = g.start if start is None else max(g.start, start)
            hi = g.end if end is None else min(g.end, end)
            if hi - lo >= length:
                return Gap(lo, hi)
        return None

    def last_large_enough_gap(
        self, length: int, start: int | None = None, end: int | None = None
    ) -> Gap | None:
        """Return the highest gap whose part inside ``[start, end)`` is ``length`` long.

        The returned gap is clipped to ``[start, end)``.

        Complexity:
            O(k log n) for the k gaps above the one returned: the walk goes
            down from ``end``.
        """
        lo_bound = self._min_key if start is None else start
        hi_bound = self._max_key if end is None else end
        self._check_range(lo_bound, hi_bound, allow_empty=True)
        if lo_bound >= hi_bound:
            return None
        # The segment holding or preceding end - 1; the gap after it is the
        # highest one that can reach into the range.
        s = self._floor(hi_bound - 1)
        while True:
            gap = self._gap_after(s)
            if gap.end <= lo_bound:
                return None
            lo, hi = max(gap.start, lo_bound), min(gap.end, hi_bound)
            if lo < hi and hi - lo >= length:
                return Gap(lo, hi)
            if s is None or gap.start <= lo_bound:
                return None
            s = self._lower(s)

    # ------------------------------------------------------------------
    # Insertion and removal

    def insert(self, start: int, end: int, value: V) -> Segment[V]:
        """Insert ``[start, end)`` with ``value``, merging with its neighbours.

        The new segment first merges with the previous segment (if it touches
        and the merge function agrees), then the result with the next one.

        Returns:
            The segment that now contains ``[start, end)``.

        Raises:
            ValueError: The range is empty, outside the key space, or
                overlaps an existing segment. Nothing is changed.
        """
        ps, ns = self._check_insertable(start, end)
        sd = self._sd
        merge = self._merge
        # Both merge decisions are made before the map is touched, so a merge
        # function that raises leaves the map as it was.
        if ps is not None:
            pe, pv = sd[ps]
            if pe == start:
                mv = merge(ps, start, end, pv, value)
                if mv is not NO_MERGE:
                    # The merged segment keeps the key ps, which is simply
                    # overwritten below.
                    start, value = ps, mv
        merged_next: int | None = None
        if ns is not None:  # noqa: SIM102 - two conditions, two reasons
            if ns == end:
                ne, nv = sd[ns]
                mv = merge(start, end, ne, value, nv)
                if mv is not NO_MERGE:
                    merged_next = ns
                    end, value = ne, mv
        if merged_next is not None:
            del sd[merged_next]
        sd[start] = (end, value)
        return Segment(start, end, value)

    def insert_without_merging(self, start: int, end: int, value: V) -> Segment[V]:
        """Insert ``[start, end)`` with ``value`` and merge nothing.

        Raises:
            ValueError: The range is empty, outside the key space, or
                overlaps an existing segment. Nothing is changed.
        """
        self._check_insertable(start, end)
        self._sd[start] = (end, value)
        return Segment(start, end, value)

    def set_value(self, seg: Segment[V], value: V) -> Segment[V]:
        """Replace the value of ``seg`` without merging or splitting.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        self._sd[seg.start] = (seg.end, value)
        return Segment(seg.start, seg.end, value)

    def remove(self, seg: Segment[V]) -> Gap:
        """Remove ``seg`` and return the gap it leaves (joined with its neighbours).

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        del self._sd[seg.start]
        return self._gap_after(self._lower(seg.start))

    def delete(self, seg: Segment[V]) -> None:
        """Remove ``seg``; like :meth:`remove` without computing the gap left.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        del self._sd[seg.start]

    def remove_range(self, start: int, end: int) -> list[Segment[V]]:
        """Remove every key in ``[start, end)``.

        Segments straddling either end are split first, so their parts
        outside the range survive.

        Returns:
            The removed pieces, clipped to the range, in ascending order.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        self._check_range(start, end, allow_empty=True)
        if start == end:
            return []
        self.split_at(start)
        self.split_at(end)
        removed = list(self.segments(start, end))
        sd = self._sd
        for s, _, _ in removed:
            del sd[s]
        return removed

    def remove_all(self) -> list[Segment[V]]:
        """Remove every segment and return them in ascending order."""
        removed = list(self)
        self._sd.clear()
        return removed

    # ------------------------------------------------------------------
    # Splitting

    def split_at(self, key: int) -> bool:
        """Split the segment straddling ``key`` there, if one does.

        Returns:
            Whether a split happened (no split at a boundary or in a gap).

        Raises:
            TypeError: ``key`` is not an int.
        """
        _check_int("key", key)
        seg = self.find(key)
        if seg is None or seg.start == key:
            return False
        self._split_unchecked(seg, key)
        return True

    def split(self, seg: Segment[V], at: int) -> tuple[Segment[V], Segment[V]]:
        """Split ``seg`` at ``at`` and return the two halves.

        Raises:
            TypeError: ``at`` is not an int.
            ValueError: ``seg`` is not current, or ``at`` is not strictly
                inside it.
        """
        _check_int("at", at)
        self._check_current(seg)
        if not seg.start < at < seg.end:
            raise ValueError(f"cannot split [{seg.start:#x}, {seg.end:#x}) at {at:#x}")
        return self._split_unchecked(seg, at)

    def _split_unchecked(
        self, seg: Segment[V], at: int
    ) -> tuple[Segment[V], Segment[V]]:
        s, e = seg.start, seg.end
        sd = self._sd
        # Split the value the map holds now: a snapshot taken before a
        # set_value() still names the segment, but its value is outdated.
        v = sd[s][1]
        v1, v2 = self._split(s, e, v, at)
        sd[s] = (at, v1)
        sd[at] = (e, v2)
        return Segment(s, at, v1), Segment(at, e, v2)

    def isolate(self, seg: Segment[V], start: int, end: int) -> Segment[V]:
        """Split ``seg`` so that the piece of it inside ``[start, end)`` stands alone.

        Splits happen only where ``start`` or ``end`` falls strictly inside
        the segment.

        Returns:
            The piece of ``seg`` inside ``[start, end)``.

        Raises:
            TypeError: ``start`` or ``end`` is not an int.
            ValueError: ``seg`` is not current, the range is empty or
                inverted, or it does not overlap ``seg``.
        """
        _check_int("start", start)
        _check_int("end", end)
        if start >= end:
            raise ValueError(f"empty or inverted range [{start:#x}, {end:#x})")
        self._check_current(seg)
        if not (seg.start < end and start < seg.end):
            raise ValueError(
                f"segment [{seg.start:#x}, {seg.end:#x}) does not overlap "
                f"[{start:#x}, {end:#x})"
            )
        if seg.start < start:
            seg = self._split_unchecked(seg, start)[1]
        if end < seg.end:
            seg = self._split_unchecked(seg, end)[0]
        return seg

    # ------------------------------------------------------------------
    # Merging

    def merge(self, first: Segment[V]) -> Segment[V] | None:
        """Merge ``first`` with the segment right after it, if they touch and agree.

        Returns:
            The merged segment, or ``None`` if no merge happened.

        Raises:
            ValueError: ``first`` is not a current segment of the map.
        """
        self._check_current(first)
        return self._merge_next_key(first.start)

    def merge_prev(self, seg: Segment[V]) -> Segment[V]:
        """Merge ``seg`` into its predecessor if possible; return the result.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        prev = self._lower(seg.start)
        merged = None if prev is None else self._merge_next_key(prev)
        return seg if merged is None else merged

    def merge_next(self, seg: Segment[V]) -> Segment[V]:
        """Merge ``seg`` with its successor if possible; return the result.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        self._check_current(seg)
        merged = self._merge_next_key(seg.start)
        return seg if merged is None else merged

    def unisolate(self, seg: Segment[V]) -> Segment[V]:
        """Merge ``seg`` with both neighbours where possible; return the result.

        Raises:
            ValueError: ``seg`` is not a current segment of the map.
        """
        return self.merge_next(self.merge_prev(seg))

    def merge_all(self) -> None:
        """Merge every pair of touching segments the merge function accepts."""
        s = self._higher(-1)
        while s is not None:
            if self._merge_next_key(s) is None:
                s = self._higher(s)

    def merge_inside_range(self, start: int, end: int) -> None:
        """Merge touching segments whose shared boundary lies in ``(start, end)``.

        Starting from the segment containing ``start`` (or the first after
        it), each segment is merged with its successor while the successor
        starts before ``end``.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        self._check_range(start, end, allow_empty=True)
        first = self._first_overlapping(start)
        s = first if first in self._sd else self._higher(first)
        while s is not None:
            nxt = self._higher(s)
            if nxt is None or nxt >= end:
                return
            if self._merge_next_key(s) is None:
                s = nxt

    def merge_outside_range(self, start: int, end: int) -> None:
        """Try the two merges across the edges of ``[start, end)``.

        The segment containing ``start`` is merged with its predecessor, and
        the segment containing ``end - 1`` with its successor; nothing else.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        self._check_range(start, end, allow_empty=True)
        if start == end:
            return
        seg = self.find(start)
        if seg is not None:
            self.merge_prev(seg)
        seg = self.find(end - 1)
        if seg is not None:
            self.merge_next(seg)

    def mutate_range(self, start: int, end: int, fn: Callable[[Segment[V]], V]) -> None:
        """Replace the value of every segment piece inside ``[start, end)``.

        Segments straddling the ends are split first; ``fn`` gets each piece
        in ascending order and returns its new value. Each piece is merged
        with its predecessor afterwards, and the last with its successor, so
        results are re-merged on both sides.

        Raises:
            ValueError: ``[start, end)`` is not a well-formed range. Exceptions
                from ``fn`` propagate; pieces already handled keep their new
                values.
        """
        self._check_range(start, end, allow_empty=True)
        if start == end:
            return
        self.split_at(start)
        self.split_at(end)
        sd = self._sd
        # After the splits, every piece inside the range starts at or after
        # ``start``.
        s: int | None = start if start in sd else self._higher(start)
        last: int | None = None
        while s is not None and s < end:
            e, v = sd[s]
            sd[s] = (e, fn(Segment(s, e, v)))
            prev = self._lower(s)
            if prev is not None and self._merge_next_key(prev) is not None:
                s = prev
            last = s
            s = self._higher(s)
        if last is not None:
            self._merge_next_key(last)

    def mutate_full_range(
        self, start: int, end: int, fn: Callable[[Segment[V]], V]
    ) -> None:
        """Like :meth:`mutate_range`, but every key in the range must be covered.

        Raises:
            KeyError: Part of ``[start, end)`` is in no segment; nothing is
                changed. The message names the first uncovered part.
            ValueError: ``[start, end)`` is not a well-formed range.
        """
        hole = self.first_hole(start, end)
        if hole is not None:
            raise KeyError(
                f"[{hole.start:#x}, {hole.end:#x}) of [{start:#x}, {end:#x}) "
                "is not covered"
            )
        self.mutate_range(start, end, fn)

    # ------------------------------------------------------------------
    # Checks

    def check_invariants(self) -> None:
        """Check the map's invariants; raise ``AssertionError`` if one fails.

        Complexity:
            O(n).
        """
        prev_end = self._min_key
        for s, (e, _) in self._sd.items():
            if s >= e:
                raise AssertionError(f"empty or inverted segment [{s:#x}, {e:#x})")
            if s < prev_end:
                raise AssertionError(
                    f"segment [{s:#x}, {e:#x}) overlaps or precedes {prev_end:#x}"
                )
            prev_end = e
        if prev_end > self._max_key:
            raise AssertionError(f"segment ends at {prev_end:#x} past max_key")
        sl = self._keys
        if len(sl) != len(self._sd) or any(
            a > b for a, b in zip(sl._maxes, sl._maxes[1:], strict=False)
        ):
            raise AssertionError("the sorted key index disagrees with the map")

    # ------------------------------------------------------------------
    # Helpers

    # The sorted order of segment starts is kept by the SortedList inside the
    # SortedDict. Positional indexing of a SortedList is several times slower
    # than a bisect, so the neighbours of a key are found from its two internal
    # lists: ``_maxes`` (the largest key of each sublist) and ``_lists`` (the
    # sorted sublists). These have been the structure of sortedcontainers
    # since its first release; the dependency is pinned below version 3.

    def _floor(self, key: int) -> int | None:
        """The largest segment start ``<= key``, or ``None``."""
        sl = self._keys
        maxes = sl._maxes
        if not maxes:
            return None
        pos = bisect_right(maxes, key)
        if pos == len(maxes):
            return maxes[-1]  # type: ignore[no-any-return]
        sub = sl._lists[pos]
        j = bisect_right(sub, key)
        if j:
            return sub[j - 1]  # type: ignore[no-any-return]
        return maxes[pos - 1] if pos else None

    def _neighbours(self, key: int) -> tuple[int | None, int | None]:
        """``(_floor(key), _higher(key))``, found with one descent."""
        sl = self._keys
        maxes = sl._maxes
        pos = bisect_right(maxes, key)
        if pos == len(maxes):
            return (maxes[-1] if maxes else None), None
        sub = sl._lists[pos]
        j = bisect_right(sub, key)
        if j:
            return sub[j - 1], sub[j]
        return (maxes[pos - 1] if pos else None), sub[j]

    def _higher(self, key: int) -> int | None:
        """The smallest segment start ``> key``, or ``None``."""
        sl = self._keys
        maxes = sl._maxes
        pos = bisect_right(maxes, key)
        if pos == len(maxes):
            return None
        sub = sl._lists[pos]
        return sub[bisect_right(sub, key)]  # type: ignore[no-any-return]

    def _lower(self, key: int) -> int | None:
        """The largest segment start ``< key``, or ``None``."""
        return self._floor(key - 1)

    def _last_key(self) -> int | None:
        maxes = self._keys._maxes
        return maxes[-1] if maxes else None

    def _first_overlapping(self, start: int) -> int:
        """The start of the segment containing ``start``, else ``start`` itself."""
        s = self._floor(start)
        if s is not None and self._sd[s][0] > start:
            return s
        return start

    def _merge_next_key(self, s1: int) -> Segment[V] | None:
        """Merge the segment starting at ``s1`` with its successor if possible."""
        sd = self._sd
        s2 = self._higher(s1)
        if s2 is None:
            return None
        e1, v1 = sd[s1]
        if e1 != s2:
            return None
        e2, v2 = sd[s2]
        mv = self._merge(s1, s2, e2, v1, v2)
        if mv is NO_MERGE:
            return None
        del sd[s2]
        sd[s1] = (e2, mv)
        return Segment(s1, e2, mv)

    def _gap_after(self, s: int | None) -> Gap:
        """The gap after the segment starting at ``s`` (``None``: before all)."""
        if s is None:
            start = self._min_key
            nxt = self._higher(-1)
        else:
            start = self._sd[s][0]
            nxt = self._higher(s)
        return Gap(start, self._max_key if nxt is None else nxt)

    def _check_current(self, seg: Segment[V]) -> None:
        cur = self._sd.get(seg.start)
        if cur is None or cur[0] != seg.end:
            raise ValueError(
                f"[{seg.start:#x}, {seg.end:#x}) is not a current segment of the map"
            )

    def _check_key(self, key: int, *, allow_max: bool = False) -> None:
        _check_int("key", key)
        hi = self._max_key if allow_max else self._max_key - 1
        if not self._min_key <= key <= hi:
            raise ValueError(
                f"key {key:#x} is outside [{self._min_key:#x}, {self._max_key:#x})"
            )

    def _check_range(self, start: int, end: int, *, allow_empty: bool) -> None:
        if type(start) is not int or type(end) is not int:
            _check_int("start", start)
            _check_int("end", end)
        if not self._min_key <= start <= end <= self._max_key:
            raise ValueError(
                f"[{start:#x}, {end:#x}) is not a range within "
                f"[{self._min_key:#x}, {self._max_key:#x})"
            )
        if not allow_empty and start == end:
            raise ValueError(f"empty range [{start:#x}, {end:#x})")

    def _check_insertable(self, start: int, end: int) -> tuple[int | None, int | None]:
        """Validate an insertion; return the starts of its two neighbours."""
        self._check_range(start, end, allow_empty=False)
        sd = self._sd
        ps, ns = self._neighbours(start)
        if ps is not None and sd[ps][0] > start:
            raise ValueError(
                f"[{start:#x}, {end:#x}) overlaps segment [{ps:#x}, {sd[ps][0]:#x})"
            )
        if ns is not None and ns < end:
            raise ValueError(
                f"[{start:#x}, {end:#x}) overlaps segment [{ns:#x}, {sd[ns][0]:#x})"
            )
        return ps, ns


def _check_int(name: str, k: object) -> None:
    """Raise ``TypeError`` unless ``k`` is an int (and not a bool)."""
    if type(k) is not int and not is_int(k):
        raise TypeError(f"{name} must be an int, got {k!r}")
