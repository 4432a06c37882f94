"""FileRangeSet: where a Mappable's offsets live in a memory file.

gVisor's ``fsutil.FileRangeSet``: a segment map from page-aligned
:class:`~aiomemmap.MappableRange` offsets to offsets in a
:class:`~aiomemmap.MemoryFile`. Touching segments merge when their memory-file
offsets are contiguous too, so one segment describes one run of offsets that
is one run of pages, and one :class:`~aiomemmap.Translation`.

Every page the set names holds one reference owned by the set's owner; the
helpers here keep that rule: :meth:`FileRangeSet.fill` allocates references,
:meth:`FileRangeSet.drop` and :meth:`FileRangeSet.drop_all` remove offsets and
hand their file ranges back, for the owner to release with :func:`release`
once no mapping space can still use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq, copy_seq, zero_seq
from aiomemmap._core.errors import InvariantError
from aiomemmap._core.pages import PAGE_MASK
from aiomemmap._core.ranges import FileRange, MappableRange
from aiomemmap._core.segments import NO_MERGE, Gap, NoMerge, Segment, SegmentMap
from aiomemmap.memmap.interfaces import Translation
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind

__all__ = ["FileRangeSet", "release"]


def _merge(start: int, mid: int, end: int, left: int, right: int) -> int | NoMerge:
    """Merge touching segments whose memory-file pages are contiguous."""
    return left if left + (mid - start) == right else NO_MERGE


def _split(start: int, end: int, value: int, at: int) -> tuple[int, int]:
    """Split a segment; the second half starts further into the memory file."""
    return value, value + (at - start)


def release(mf: MemoryFile, ranges: list[FileRange]) -> None:
    """Drop one reference on every page of ``ranges``, unless ``mf`` is closed.

    Args:
        mf: The memory file holding the pages.
        ranges: File ranges as :meth:`FileRangeSet.drop` returns them.

    Locking:
        Takes the memory file's lock once per range.
    """
    if mf.closed:
        return
    for fr in ranges:
        mf.dec_ref(fr)


def _coalesce(segs: list[Segment[int]]) -> list[FileRange]:
    """Return the memory-file pages of ``segs``, sorted, contiguous runs joined.

    The same references are named, in fewer ranges: the memory file then
    frees (and punches a hole for) a whole run at once.
    """
    if not segs:
        return []
    runs = sorted((seg.value, seg.value + seg.end - seg.start) for seg in segs)
    out: list[FileRange] = []
    lo, hi = runs[0]
    for a, b in runs[1:]:
        if a == hi:
            hi = b
            continue
        out.append(FileRange(lo, hi))
        lo, hi = a, b
    out.append(FileRange(lo, hi))
    return out


@final
class FileRangeSet:
    """A map from page-aligned Mappable offsets to memory-file offsets.

    Invariants:
        Segments are page-aligned and so are their memory-file offsets;
        touching segments are not contiguous in the memory file (they would
        have merged) unless a caller inserted without merging.

    Concurrency:
        Task-compatible: the owner serialises access; no method awaits.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: SegmentMap[int] = SegmentMap(_merge, _split)

    def __repr__(self) -> str:
        return f"FileRangeSet({self._map!r})"

    # ------------------------------------------------------------------
    # Queries (those of the segment map)

    def __iter__(self) -> Iterator[Segment[int]]:
        return iter(self._map)

    def __bool__(self) -> bool:
        return bool(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def is_empty(self) -> bool:
        """Return whether no offset is present."""
        return self._map.is_empty()

    def is_empty_range(self, start: int, end: int) -> bool:
        """Return whether no offset of ``[start, end)`` is present."""
        return self._map.is_empty_range(start, end)

    def find(self, offset: int) -> Segment[int] | None:
        """Return the segment containing ``offset``, or ``None``."""
        return self._map.find(offset)

    def lower_bound_segment(self, offset: int) -> Segment[int] | None:
        """Return the first segment ending after ``offset``, or ``None``."""
        return self._map.lower_bound_segment(offset)

    def last_segment(self) -> Segment[int] | None:
        """Return the last segment, or ``None``."""
        return self._map.last_segment()

    def segments(self, start: int, end: int) -> Iterator[Segment[int]]:
        """Iterate over the segments overlapping ``[start, end)``."""
        return self._map.segments(start, end)

    def gaps(self, start: int, end: int) -> Iterator[Gap]:
        """Iterate over the non-empty gaps overlapping ``[start, end)``."""
        return self._map.gaps(start, end)

    def first_hole(self, start: int, end: int) -> Gap | None:
        """Return the first gap inside ``[start, end)``, or ``None``."""
        return self._map.first_hole(start, end)

    def span(self) -> int:
        """Return how many offsets are present."""
        return self._map.span()

    def span_range(self, start: int, end: int) -> int:
        """Return how many offsets of ``[start, end)`` are present."""
        return self._map.span_range(start, end)

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """Return the absent parts of ``[start, end)``, in order."""
        return [
            (max(g.start, start), min(g.end, end)) for g in self._map.gaps(start, end)
        ]

    @staticmethod
    def file_range(seg: Segment[int], lo: int, hi: int) -> FileRange:
        """Return the memory-file pages holding offsets ``[lo, hi)`` of ``seg``."""
        base = seg.value + (lo - seg.start)
        return FileRange(base, base + (hi - lo))

    # ------------------------------------------------------------------
    # Changes

    def insert(self, start: int, end: int, file_offset: int) -> Segment[int]:
        """Record that offsets ``[start, end)`` live at ``file_offset`` on.

        Preconditions:
            ``[start, end)`` is absent; the caller hands the set one
            reference on each page.
        """
        return self._map.insert(start, end, file_offset)

    def fill(self, start: int, end: int, mf: MemoryFile, kind: MemoryKind) -> None:
        """Allocate zeroed pages of ``kind`` for every hole in ``[start, end)``.

        All or nothing: on failure the pages allocated here are freed.

        Raises:
            OutOfMemoryError: The memory file could not supply the pages.

        Preconditions:
            The bounds are page-aligned.
        """
        allocated: list[tuple[int, int, FileRange]] = []
        try:
            for lo, hi in self.holes(start, end):
                allocated.append((lo, hi, mf.allocate(hi - lo, kind=kind)))
        except BaseException:
            for _, _, fr in allocated:
                mf.dec_ref(fr)
            raise
        insert = self._map.insert
        for lo, hi, fr in allocated:
            insert(lo, hi, fr.start)

    def drop(self, start: int, end: int) -> list[FileRange]:
        """Remove offsets ``[start, end)``; return the memory-file pages they held.

        The references stay held: the caller releases them (with
        :func:`release`) once no mapping space can use the pages any more.

        Returns:
            The pages, sorted, contiguous runs joined.
        """
        return _coalesce(self._map.remove_range(start, end))

    def drop_all(self) -> list[FileRange]:
        """Remove every offset; return the memory-file pages, as :meth:`drop`."""
        return _coalesce(self._map.remove_all())

    # ------------------------------------------------------------------
    # Translation and contents

    def translations(
        self,
        required: MappableRange,
        window: MappableRange,
        file: MemoryFile,
        perms: AccessType,
    ) -> list[Translation]:
        """Translate the present offsets that run on from ``required.start``.

        Translations are contiguous, start inside the segment holding
        ``required.start`` (no earlier than ``window.start``), stop at the
        first hole, at ``window.end``, or after the segment that reaches
        ``required.end``.

        Args:
            required: The offsets wanted; ``required.start`` must lie in
                ``window``.
            window: The bounds of what may be translated.
            file: The memory file, named by each translation.
            perms: The permissions of each translation.
        """
        out: list[Translation] = []
        pos = required.start
        req_end = required.end
        wstart, wend = window.start, window.end
        for seg in self._map.segments(pos, wend):
            if seg.start > pos or seg.start >= req_end:
                break
            lo, hi = max(seg.start, wstart), min(seg.end, wend)
            out.append(
                Translation(
                    MappableRange(lo, hi), file, seg.value + (lo - seg.start), perms
                )
            )
            pos = hi
        return out

    def read(self, mf: MemoryFile, start: int, end: int) -> bytes:
        """Return the bytes of offsets ``[start, end)``; holes read as zero."""
        seg = self._map.find(start)
        if seg is not None and seg.end >= end:
            # One segment holds it all: one copy, no join.
            return mf.map_internal(
                self.file_range(seg, start, end), AccessType.READ
            ).tobytes()
        buf = bytearray(end - start)
        view = memoryview(buf)
        for seg in self._map.segments(start, end):
            lo, hi = max(seg.start, start), min(seg.end, end)
            copy_seq(
                BlockSeq([view[lo - start : hi - start]]),
                mf.map_internal(self.file_range(seg, lo, hi), AccessType.READ),
            )
        return bytes(buf)

    def write(self, mf: MemoryFile, start: int, data: memoryview) -> int:
        """Copy ``data`` into the present offsets from ``start``; return the count.

        Bytes falling in holes are not written.
        """
        end = start + len(data)
        done = 0
        for seg in self._map.segments(start, end):
            lo, hi = max(seg.start, start), min(seg.end, end)
            done += copy_seq(
                mf.map_internal(self.file_range(seg, lo, hi), AccessType.WRITE),
                BlockSeq([data[lo - start : hi - start]]),
            )
        return done

    def zero(self, mf: MemoryFile, start: int, end: int) -> None:
        """Zero the present bytes of offsets ``[start, end)``."""
        if start >= end:
            return
        for seg in self._map.segments(start, end):
            lo, hi = max(seg.start, start), min(seg.end, end)
            zero_seq(mf.map_internal(self.file_range(seg, lo, hi), AccessType.WRITE))

    # ------------------------------------------------------------------
    # Checks

    def check_invariants(self) -> None:
        """Check the segment map and page alignment; raise :class:`InvariantError`."""
        self._map.check_invariants()
        for seg in self._map:
            if (seg.start | seg.end | seg.value) & PAGE_MASK:
                raise InvariantError(f"file range set segment {seg} is not aligned")
