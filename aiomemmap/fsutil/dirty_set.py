"""DirtySet: the offsets of a cached file that are newer than its backing.

gVisor's ``fsutil.DirtySet``. Each dirty segment carries one flag, *keep*: the
offsets may change at any time without the cache noticing (they are writable
through a shared mapping), so writing them back does not make them clean.
Removing the last writable mapping allows them to become clean again, after
their next write-back.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Iterator
from typing import final

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import page_round_down, page_round_up
from aiomemmap._core.ranges import FileRange
from aiomemmap._core.segments import Segment, SegmentMap, merge_equal
from aiomemmap.fsutil.file_range_set import FileRangeSet
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = ["DirtySet", "WriteAt", "sync_dirty"]

WriteAt = Callable[[int, memoryview], Awaitable[int]]
"""``write_at(offset, data)``: write ``data`` at ``offset``; return the count."""


def _keep(seg: Segment[bool]) -> bool:
    return True


def _allow(seg: Segment[bool]) -> bool:
    return False


@final
class DirtySet:
    """Dirty offsets, each with a keep-dirty flag (the segment value).

    Invariants:
        Touching segments with the same flag are merged.

    Concurrency:
        Task-compatible: the owner serialises access; no method awaits.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: SegmentMap[bool] = SegmentMap(merge_equal)

    def __repr__(self) -> str:
        return f"DirtySet({self._map!r})"

    def __iter__(self) -> Iterator[Segment[bool]]:
        return iter(self._map)

    def __bool__(self) -> bool:
        return bool(self._map)

    def is_empty_range(self, start: int, end: int) -> bool:
        """Return whether no offset of ``[start, end)`` is dirty."""
        return self._map.is_empty_range(start, end)

    def segments(self, start: int, end: int) -> Iterator[Segment[bool]]:
        """Iterate over the dirty segments overlapping ``[start, end)``."""
        return self._map.segments(start, end)

    def span(self) -> int:
        """Return how many offsets are dirty."""
        return self._map.span()

    def mark_dirty(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` dirty; flags of offsets already dirty stay."""
        dirty = self._map
        gaps = [(max(g.start, start), min(g.end, end)) for g in dirty.gaps(start, end)]
        for lo, hi in gaps:
            dirty.insert(lo, hi, False)

    def keep_dirty(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` dirty and keep it dirty across write-backs."""
        self.mark_dirty(start, end)
        self._map.mutate_range(start, end, _keep)

    def mark_clean(self, start: int, end: int) -> None:
        """Forget the offsets of ``[start, end)`` that are not kept dirty."""
        dirty = self._map
        dirty.split_at(start)
        dirty.split_at(end)
        for seg in list(dirty.segments(start, end)):
            if not seg.value:
                dirty.remove(seg)
        dirty.merge_outside_range(start, end)

    def allow_clean(self, start: int, end: int) -> None:
        """Let ``[start, end)`` become clean at its next write-back."""
        self._map.mutate_range(start, end, _allow)

    def drop(self, start: int, end: int) -> None:
        """Forget ``[start, end)`` whatever its flags (the offsets are gone)."""
        self._map.remove_range(start, end)

    def drop_all(self) -> None:
        """Forget every offset."""
        self._map.remove_all()

    def check_invariants(self) -> None:
        """Check the segment map; raise on a broken invariant."""
        self._map.check_invariants()


async def sync_dirty(
    start: int,
    end: int,
    cache: FileRangeSet,
    dirty: DirtySet,
    size: int,
    mf: MemoryFile,
    write_at: WriteAt,
) -> bool:
    """Write the dirty offsets of ``[start, end)`` back; gVisor's ``SyncDirty``.

    Each dirty range is written from the cache (bytes at or past ``size``
    are not written) and then marked clean (offsets kept dirty stay dirty).

    Args:
        start: First offset to write back.
        end: End of the offsets to write back.
        cache: Where the dirty offsets' bytes are.
        dirty: The dirty set; every dirty offset must be cached.
        size: The file size.
        mf: The memory file holding the cache's pages.
        write_at: Writes bytes to the backing.

    Returns:
        Whether anything was dirty in the range (and so written).

    Raises:
        OSError: A write failed or was short; the range it was in and those
            after it stay dirty.

    Locking:
        The caller keeps the cache and the dirty set from changing meanwhile
        (other than by new dirtying). A page being written is also held by
        an extra reference while its bytes are in use.
    """
    wrote = False
    for dseg in list(dirty.segments(start, end)):
        lo, hi = max(dseg.start, start), min(dseg.end, end)
        for cseg in list(cache.segments(lo, hi)):
            a = max(cseg.start, lo)
            b = min(cseg.end, hi, size)
            if a >= b:
                continue
            pages = FileRange(
                cseg.value + (page_round_down(a) - cseg.start),
                cseg.value + (page_round_up(b) - cseg.start),
            )
            mf.inc_ref(pages)
            try:
                pos = a
                for block in mf.map_internal(
                    cache.file_range(cseg, a, b), AccessType.READ
                ):
                    n = await write_at(pos, block)
                    if n != len(block):
                        raise OSError(
                            errno.EIO,
                            f"backing wrote {n} of {len(block)} bytes at {pos:#x}",
                        )
                    pos += n
            finally:
                mf.dec_ref(pages)
        dirty.mark_clean(lo, hi)
        wrote = True
    return wrote
