"""Which mapping spaces map which offsets of a Mappable: gVisor's MappingSet.

A Mappable keeps one :class:`MappingSet` to know whom to tell when the data at
some of its offsets changes. It is a segment map keyed by Mappable offset. The
value of each segment is the set of mappings of exactly that segment's
offsets; a mapping is identified by the triple ``(space, address range,
writable)``, so one space mapping the same addresses twice with different
``writable`` flags holds two mappings.

The exact gVisor semantics are kept, including the ones callers can observe:

* ``add_mapping`` never merges segments, so boundaries it creates stay until a
  removal merges around its range;
* ``remove_mapping`` of a triple that is not there is silently ignored, unless
  no segment at all contains the first offset, which is a caller bug
  (``LookupError``);
* ``remove_mapping`` returns one range per removed segment, not coalesced;
* invalidation sends one delivery per (segment, mapping) pair, so callers may
  rely only on the union of ranges each space receives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, TypeAlias, final

from aiomemmap._core.errors import AlignmentError, InvariantError
from aiomemmap._core.pages import ADDR_LIMIT, PAGE_MASK, is_int
from aiomemmap._core.ranges import AddrRange, MappableRange
from aiomemmap._core.segments import NO_MERGE, NoMerge, SegmentMap
from aiomemmap.memmap.bus import InvalidationBus, default_bus
from aiomemmap.memmap.interfaces import InvalidateOpts, MappingSpace

__all__ = ["MappingSet"]

# One mapping of a whole segment: (space, address start, address end, writable).
_Mapping: TypeAlias = tuple[MappingSpace, int, int, bool]
# The mappings of one segment, as an insertion-ordered set.
_Mappings: TypeAlias = dict[_Mapping, None]

_MAX_OFFSET: Final = ADDR_LIMIT - 1


def _merge(
    start: int, mid: int, end: int, left: _Mappings, right: _Mappings
) -> _Mappings | NoMerge:
    """Merge two touching segments if every mapping continues into the second."""
    if len(left) != len(right):
        return NO_MERGE
    right_len = end - mid
    merged: _Mappings = {}
    for ms, a, b, w in left:
        if (ms, b, b + right_len, w) not in right:
            return NO_MERGE
        merged[(ms, a, b + right_len, w)] = None
    return merged


def _split(
    start: int, end: int, value: _Mappings, at: int
) -> tuple[_Mappings, _Mappings]:
    """Split every mapping of a segment at the address matching offset ``at``."""
    delta = at - start
    left: _Mappings = {}
    right: _Mappings = {}
    for ms, a, b, w in value:
        left[(ms, a, a + delta, w)] = None
        right[(ms, a + delta, b, w)] = None
    return left, right


@final
class MappingSet:
    """The set of mappings of a Mappable's offsets, for invalidation.

    Args:
        bus: The bus that delivers invalidations; it must be the bus of the
            event loop the set is used on (see :class:`InvalidationBus`). By
            default the set publishes on the default bus of whichever loop is
            running when it publishes (:func:`~aiomemmap.memmap.bus.default_bus`),
            so a set created outside any loop, or used under successive loops,
            works; that bus orders invalidations to each space across the
            Mappables of its loop.

    Raises:
        TypeError: ``bus`` is neither an ``InvalidationBus`` nor ``None``.

    Invariants:
        Every segment has at least one mapping; each mapping's address range
        has the length of its segment.

    Concurrency:
        Task-compatible: the owning Mappable serialises calls, normally under
        a ``LockRank.MAPPABLE`` lock. ``invalidate`` and ``invalidate_all``
        compute their deliveries before their first await.
    """

    __slots__ = ("_bus", "_set")

    def __init__(self, bus: InvalidationBus | None = None) -> None:
        if bus is not None and not isinstance(bus, InvalidationBus):
            raise TypeError(f"bus must be an InvalidationBus or None, got {bus!r}")
        # None: the default bus of the loop running at each publish.
        self._bus = bus
        self._set: SegmentMap[_Mappings] = SegmentMap(_merge, _split)

    @property
    def bus(self) -> InvalidationBus:
        """The bus this set publishes invalidations on.

        For a set created without a bus, the default bus of the running event
        loop.

        Raises:
            RuntimeError: The set was created without a bus and no event loop
                is running in the calling thread.
        """
        bus = self._bus
        return bus if bus is not None else default_bus()

    async def _publish(
        self, deliveries: list[tuple[MappingSpace, AddrRange]], opts: InvalidateOpts
    ) -> None:
        """Publish ``deliveries`` on this set's bus."""
        bus = self._bus
        if bus is None:
            bus = default_bus()
        await bus.publish(deliveries, opts)

    def is_empty(self) -> bool:
        """Return whether no offset is mapped."""
        return self._set.is_empty()

    def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> list[MappableRange]:
        """Record that ``ms`` maps ``ar`` to offsets ``[offset, offset + len(ar))``.

        Args:
            ms: The mapping space; it must be hashable.
            ar: The mapped addresses: non-empty and page-aligned.
            offset: The Mappable offset mapped at ``ar.start``: page-aligned.
            writable: Whether the mapping may write the Mappable's data.

        Returns:
            The sub-ranges of the mapped offsets that had no mapping before,
            ascending, one per gap that was filled.

        Raises:
            TypeError: An argument has the wrong type.
            AlignmentError: ``ar`` or ``offset`` is not page-aligned.
            ValueError: ``ar`` is empty or ``offset + len(ar)`` overflows.

        Postconditions:
            Segments are split where the new mapping begins and ends inside
            them; nothing is merged. On error nothing changed.

        Complexity:
            O(k log n) for k segments overlapping the mapped offsets.
        """
        start, end = self._check_args(ms, ar, offset, writable)
        base = ar.start - start
        added: list[MappableRange] = []
        segs = self._set
        pos = start
        while pos < end:
            seg = segs.find(pos)
            if seg is not None:
                seg = segs.isolate(seg, start, end)
                seg.value[(ms, seg.start + base, seg.end + base, writable)] = None
                pos = seg.end
            else:
                gap = segs.lower_bound_gap(pos)
                gap_end = min(gap.end, end)
                added.append(MappableRange(pos, gap_end))
                segs.insert_without_merging(
                    pos, gap_end, {(ms, pos + base, gap_end + base, writable): None}
                )
                pos = gap_end
        return added

    def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> list[MappableRange]:
        """Forget that ``ms`` maps ``ar`` to offsets ``[offset, offset + len(ar))``.

        Sub-mappings that are not recorded (for example with the other
        ``writable`` flag), and offsets in no segment, are skipped silently.

        Args:
            ms: The mapping space.
            ar: The mapped addresses: non-empty and page-aligned.
            offset: The Mappable offset mapped at ``ar.start``: page-aligned.
            writable: The flag the mapping was added with.

        Returns:
            The offset ranges that no longer have any mapping, ascending, one
            per removed segment (adjacent ranges are not coalesced).

        Raises:
            TypeError: An argument has the wrong type.
            AlignmentError: ``ar`` or ``offset`` is not page-aligned.
            ValueError: ``ar`` is empty or ``offset + len(ar)`` overflows.
            LookupError: No segment contains ``offset``: nothing was ever
                mapped there, a caller bug. Nothing changed.

        Postconditions:
            Touching segments are merged across the two ends of the range
            where their mappings continue.
        """
        start, end = self._check_args(ms, ar, offset, writable)
        segs = self._set
        first = segs.find(start)
        if first is None:
            raise LookupError(
                f"no mapping at offset {start:#x}: cannot remove {ar} at "
                f"{MappableRange(start, end)}"
            )
        base = ar.start - start
        removed: list[MappableRange] = []
        pending = list(segs.segments(start, end))
        for seg in pending:
            piece = segs.isolate(seg, start, end)
            piece.value.pop((ms, piece.start + base, piece.end + base, writable), None)
            if not piece.value:
                segs.remove(piece)
                removed.append(MappableRange(piece.start, piece.end))
        segs.merge_outside_range(start, end)
        return removed

    async def invalidate(self, mr: MappableRange, opts: InvalidateOpts) -> None:
        """Tell every space that maps offsets in ``mr`` to drop their translations.

        Each space receives the addresses at which it maps the offsets of
        ``mr`` (one delivery per segment and mapping).

        Args:
            mr: The offsets whose translations are no longer valid: non-empty
                and page-aligned.
            opts: Whether private copies must be dropped too.

        Raises:
            TypeError: An argument has the wrong type.
            AlignmentError: ``mr`` is not page-aligned.
            ValueError: ``mr`` is empty.
            ExceptionGroup: Some spaces failed; every other space was still
                invalidated.
            WrongLoopError: The set's bus is bound to another event loop;
                nothing was delivered.

        Locking:
            The caller may hold ``LockRank.MAPPABLE`` locks but no
            ``LockRank.TRANSLATE`` lock: spaces take their ``ACTIVE`` lock.

        Cancellation:
            As :meth:`InvalidationBus.publish`: once started, every delivery
            completes before ``CancelledError`` propagates.
        """
        if not isinstance(mr, MappableRange):
            raise TypeError(f"mr must be a MappableRange, got {mr!r}")
        _check_aligned_nonempty("mr", mr.start, mr.end)
        _check_opts(opts)
        deliveries = list(self._deliveries(mr.start, mr.end))
        if deliveries:
            await self._publish(deliveries, opts)

    async def invalidate_all(self, opts: InvalidateOpts) -> None:
        """Tell every space that maps anything to drop its translations.

        Raises:
            TypeError: ``opts`` is not an ``InvalidateOpts``.
            ExceptionGroup: Some spaces failed; every other space was still
                invalidated.
            WrongLoopError: As for :meth:`invalidate`.

        Locking:
            As :meth:`invalidate`.

        Cancellation:
            As :meth:`invalidate`.
        """
        _check_opts(opts)
        deliveries = [
            (ms, AddrRange(a, b)) for seg in self._set for ms, a, b, _ in seg.value
        ]
        if deliveries:
            await self._publish(deliveries, opts)

    def mapped_ranges(self) -> Iterator[MappableRange]:
        """Iterate over the mapped offset ranges, one per segment, ascending."""
        for seg in self._set:
            yield MappableRange(seg.start, seg.end)

    def mappings(self) -> Iterator[tuple[MappableRange, MappingSpace, AddrRange, bool]]:
        """Iterate over ``(offsets, space, addresses, writable)`` of each mapping."""
        for seg in self._set:
            mr = MappableRange(seg.start, seg.end)
            for ms, a, b, w in seg.value:
                yield mr, ms, AddrRange(a, b), w

    def check_invariants(self) -> None:
        """Check the set's invariants.

        Raises:
            InvariantError: An invariant does not hold (an ``AssertionError``).
        """
        self._set.check_invariants()
        for seg in self._set:
            if not seg.value:
                raise InvariantError(f"segment [{seg.start:#x}, {seg.end:#x}) is empty")
            for ms, a, b, _ in seg.value:
                if b - a != seg.end - seg.start:
                    raise InvariantError(
                        f"mapping {a:#x}-{b:#x} of {ms!r} does not match segment "
                        f"[{seg.start:#x}, {seg.end:#x})"
                    )

    def _deliveries(
        self, start: int, end: int
    ) -> Iterator[tuple[MappingSpace, AddrRange]]:
        for seg in self._set.segments(start, end):
            lo = max(seg.start, start) - seg.start
            hi = min(seg.end, end) - seg.start
            for ms, a, _, _ in seg.value:
                yield ms, AddrRange(a + lo, a + hi)

    @staticmethod
    def _check_args(
        ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> tuple[int, int]:
        if not isinstance(ar, AddrRange):
            raise TypeError(f"ar must be an AddrRange, got {ar!r}")
        if not is_int(offset):
            raise TypeError(f"offset must be an int, got {offset!r}")
        if not isinstance(writable, bool):
            raise TypeError(f"writable must be a bool, got {writable!r}")
        try:
            hash(ms)
        except TypeError:
            raise TypeError(f"ms must be hashable, got {ms!r}") from None
        _check_aligned_nonempty("ar", ar.start, ar.end)
        if offset & PAGE_MASK:
            raise AlignmentError(f"offset {offset:#x} is not page-aligned")
        end = offset + ar.length
        if offset < 0 or end > _MAX_OFFSET:
            raise ValueError(
                f"offset {offset:#x} + length {ar.length:#x} is outside the "
                "64-bit offset space"
            )
        return offset, end


def _check_aligned_nonempty(name: str, start: int, end: int) -> None:
    if start == end:
        raise ValueError(f"{name} [{start:#x}, {end:#x}) is empty")
    if (start | end) & PAGE_MASK:
        raise AlignmentError(f"{name} [{start:#x}, {end:#x}) is not page-aligned")


def _check_opts(opts: InvalidateOpts) -> None:
    if not isinstance(opts, InvalidateOpts):
        raise TypeError(f"opts must be an InvalidateOpts, got {opts!r}")
