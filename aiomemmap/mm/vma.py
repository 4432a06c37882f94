r"""Vmas: the mappings an application asked for, and the map that holds them.

A *vma* is a mapping made by ``mmap``: what is mapped there (a Mappable and
an offset, or anonymous memory), with which permissions, and how. Vmas are
immutable values kept in a :class:`~aiomemmap._core.segments.SegmentMap`;
a change replaces the value. Touching vmas merge only when they are the same
mapping in every respect (the same identity object, contiguous offsets...),
as in gVisor. A vma owns one reference on its
:class:`~aiomemmap.MappingIdentity`, so splitting one takes a reference and
merging two gives one up; given-up references are collected in
:attr:`VmaMap.dropped`, because ``MappingIdentity.dec_ref`` may only run once
the mapping lock is released.

:class:`VmaMap` is an address space's vma map (gVisor's ``vma.go``): the
segments, their accounting (``usage_as``, ``data_as``, ``locked_as``) and
placement (where a new mapping goes).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Iterator
from typing import final

from aiomemmap._core.access import AccessType
from aiomemmap._core.errors import InvariantError, check_invariant
from aiomemmap._core.pages import HUGE_PAGE_SIZE, PAGE_SIZE
from aiomemmap._core.segments import NO_MERGE, NoMerge, Segment, SegmentMap
from aiomemmap.memmap.interfaces import Mappable, MappingIdentity, MLockMode
from aiomemmap.mm.args import U64, syscall_error
from aiomemmap.mm.options import Layout, Limits

__all__ = ["Vma", "VmaMap", "make_vma_functions", "release_identities"]

# Below a stack (a grows-down vma) this much of the gap is kept free.
_GUARD_BYTES = 256 * PAGE_SIZE
# MAP_32BIT places mappings in [1 GiB, 2 GiB).
_MAP32_START = 0x4000_0000
_MAP32_END = 0x8000_0000


@final
class Vma:
    """One application mapping (a run of addresses mapped the same way).

    Attributes:
        mappable: What is mapped, or ``None`` for private anonymous memory.
        offset: The Mappable offset mapped at the vma's start (0 if
            anonymous).
        real_perms: The permissions as requested (reported by ``maps()``).
        effective_perms: ``real_perms.effective()``: what is enforced.
        max_perms: The most that ``mprotect`` may grant; also what accesses
            that ignore permissions may use.
        private: Writes go to private copies (copy-on-write).
        grows_down: A stack-like mapping.
        dontfork: Not copied into a child by ``fork`` (``MADV_DONTFORK``).
        mlock_mode: The memory-locking mode.
        identity: The identity the vma holds one reference on, or ``None``.
        name: The name ``maps()`` shows; empty to ask the identity.
        writable_mapping: Whether the Mappable was told the mapping may write
            its data (shared and ``max_perms`` allows writing).
    """

    __slots__ = (
        "dontfork",
        "effective_perms",
        "grows_down",
        "identity",
        "mappable",
        "max_perms",
        "mlock_mode",
        "name",
        "offset",
        "private",
        "real_perms",
        "writable_mapping",
    )

    def __init__(
        self,
        *,
        mappable: Mappable | None,
        offset: int,
        real_perms: AccessType,
        max_perms: AccessType,
        private: bool,
        grows_down: bool,
        dontfork: bool,
        mlock_mode: MLockMode,
        identity: MappingIdentity | None,
        name: str,
    ) -> None:
        self.mappable = mappable
        self.offset = offset
        self.real_perms = real_perms
        self.effective_perms = real_perms.effective()
        self.max_perms = max_perms
        self.private = private
        self.grows_down = grows_down
        self.dontfork = dontfork
        self.mlock_mode = mlock_mode
        self.identity = identity
        self.name = name
        self.writable_mapping = not private and max_perms.write

    def replace(self, **changes: object) -> Vma:
        """Return a copy with some attributes changed (no reference is taken)."""
        fields: dict[str, object] = {
            "mappable": self.mappable,
            "offset": self.offset,
            "real_perms": self.real_perms,
            "max_perms": self.max_perms,
            "private": self.private,
            "grows_down": self.grows_down,
            "dontfork": self.dontfork,
            "mlock_mode": self.mlock_mode,
            "identity": self.identity,
            "name": self.name,
        }
        fields.update(changes)
        return Vma(**fields)  # type: ignore[arg-type]

    @property
    def is_private_data(self) -> bool:
        """Whether the vma counts towards ``data_as`` (Linux's ``data_vm``)."""
        return self.private and self.real_perms.write and not self.grows_down

    def offset_at(self, vma_start: int, addr: int) -> int:
        """Return the Mappable offset mapped at ``addr``, for a vma at ``vma_start``."""
        return self.offset + (addr - vma_start)

    def __repr__(self) -> str:
        kind = (
            "anon" if self.mappable is None else f"{self.mappable!r}+{self.offset:#x}"
        )
        return (
            f"Vma({kind} {self.real_perms}{'p' if self.private else 's'} "
            f"max={self.max_perms} mlock={self.mlock_mode.name}"
            f"{' growsdown' if self.grows_down else ''}"
            f"{' dontfork' if self.dontfork else ''})"
        )


def make_vma_functions(
    drop_identity: Callable[[MappingIdentity], None],
) -> tuple[
    Callable[[int, int, int, Vma, Vma], Vma | NoMerge],
    Callable[[int, int, Vma, int], tuple[Vma, Vma]],
]:
    """Return the merge and split functions of an address space's vma map.

    Args:
        drop_identity: Called with the identity reference a merge gives up;
            the address space releases it after unlocking.

    Returns:
        ``(merge, split)`` for :class:`~aiomemmap._core.segments.SegmentMap`.
    """

    def merge(start: int, mid: int, end: int, left: Vma, right: Vma) -> Vma | NoMerge:
        if (
            left.mappable is not right.mappable
            or left.identity is not right.identity
            or (
                left.mappable is not None
                and left.offset + (mid - start) != right.offset
            )
            or left.real_perms != right.real_perms
            or left.max_perms != right.max_perms
            or left.private != right.private
            or left.grows_down != right.grows_down
            or left.dontfork != right.dontfork
            or left.mlock_mode != right.mlock_mode
            or left.name != right.name
        ):
            return NO_MERGE
        if right.identity is not None:
            drop_identity(right.identity)
        return left

    def split(start: int, end: int, vma: Vma, at: int) -> tuple[Vma, Vma]:
        if vma.identity is not None:
            vma.identity.inc_ref()
        offset = vma.offset + (at - start) if vma.mappable is not None else 0
        return vma, vma.replace(offset=offset)

    return merge, split


@final
class VmaMap:
    """An address space's vmas, their accounting, and where new ones go.

    Attributes:
        segs: The vmas. Read it freely; change it through the methods here
            when the accounting changes (inserting, removing, changing
            ``private``, ``real_perms`` or ``mlock_mode``).
        dropped: Identity references that merges and removals gave up, to be
            released once the mapping lock is unlocked (the address space
            swaps in a fresh list each time it takes the lock for writing).
        usage_as: The bytes mapped (``RLIMIT_AS``).
        data_as: The bytes of private writable mappings (``RLIMIT_DATA``).
        locked_as: The bytes of locked mappings (``RLIMIT_MEMLOCK``).

    Invariants:
        The counters are the sums over ``segs``; no file mapping grows down.

    Concurrency:
        Task-compatible: caller holds the address space's mapping lock
        (for writing to change anything).
    """

    __slots__ = (
        "data_as",
        "dropped",
        "layout",
        "limits",
        "locked_as",
        "segs",
        "usage_as",
    )

    def __init__(self, layout: Layout, limits: Limits) -> None:
        self.layout = layout
        self.limits = limits
        self.dropped: list[MappingIdentity] = []
        merge, split = make_vma_functions(self._drop_identity)
        self.segs: SegmentMap[Vma] = SegmentMap(merge, split)
        self.usage_as = 0
        self.data_as = 0
        self.locked_as = 0

    def _drop_identity(self, identity: MappingIdentity) -> None:
        self.dropped.append(identity)

    def __len__(self) -> int:
        return len(self.segs)

    def __iter__(self) -> Iterator[Segment[Vma]]:
        return iter(self.segs)

    # ------------------------------------------------------------------
    # Changes with accounting

    def insert(self, start: int, end: int, vma: Vma) -> None:
        """Map ``vma`` at ``[start, end)`` (a gap) and count it.

        The vma's identity reference, if any, must already be taken.
        """
        self.segs.insert(start, end, vma)
        self.account(vma, end - start)

    def remove_range(self, start: int, end: int) -> list[Segment[Vma]]:
        """Remove the vmas in ``[start, end)`` and return them (clipped).

        Their identity references go to :attr:`dropped`.
        """
        removed = self.segs.remove_range(start, end)
        for seg in removed:
            vma = seg.value
            self.account(vma, -(seg.end - seg.start))
            if vma.identity is not None:
                self.dropped.append(vma.identity)
        return removed

    def account(self, vma: Vma, n: int) -> None:
        """Add ``n`` bytes of ``vma`` to the counters (negative to remove)."""
        self.usage_as += n
        if vma.is_private_data:
            self.data_as += n
        if vma.mlock_mode is not MLockMode.NONE:
            self.locked_as += n

    def set_perms(self, vseg: Segment[Vma], perms: AccessType) -> Segment[Vma]:
        """Give ``vseg`` the requested permissions ``perms``; return its segment."""
        old = vseg.value
        new = old.replace(real_perms=perms)
        n = vseg.end - vseg.start
        if old.is_private_data:
            self.data_as -= n
        if new.is_private_data:
            self.data_as += n
        return self.segs.set_value(vseg, new)

    def set_mlock(self, vseg: Segment[Vma], mode: MLockMode) -> Segment[Vma]:
        """Give ``vseg`` the lock mode ``mode``; return its segment."""
        old = vseg.value
        n = vseg.end - vseg.start
        if mode is not MLockMode.NONE and old.mlock_mode is MLockMode.NONE:
            self.locked_as += n
        elif mode is MLockMode.NONE and old.mlock_mode is not MLockMode.NONE:
            self.locked_as -= n
        if old.mlock_mode is mode:
            return vseg
        return self.segs.set_value(vseg, old.replace(mlock_mode=mode))

    def set_mlock_range(self, start: int, end: int, mode: MLockMode) -> bool:
        """Set the lock mode of the vmas in ``[start, end)``, in address order.

        Returns:
            Whether a hole stopped it (the vmas before the hole are changed).
        """
        segs = self.segs
        unmapped = False
        vseg = segs.find(start)
        while True:
            if vseg is None:
                unmapped = True
                break
            vseg = segs.isolate(vseg, max(start, vseg.start), min(end, vseg.end))
            self.set_mlock(vseg, mode)
            if end <= vseg.end:
                break
            nxt = segs.next_segment(vseg)
            vseg = nxt if nxt is not None and nxt.start == vseg.end else None
        segs.merge_inside_range(start, end)
        segs.merge_outside_range(start, end)
        return unmapped

    def locked_bytes(self, start: int, end: int) -> int:
        """Return how many bytes of ``[start, end)`` locked vmas map."""
        total = 0
        for seg in self.segs.segments(start, end):
            if seg.value.mlock_mode is not MLockMode.NONE:
                total += min(seg.end, end) - max(seg.start, start)
        return total

    # ------------------------------------------------------------------
    # Placement

    def find_available(
        self,
        length: int,
        *,
        addr: int = 0,
        fixed: bool = False,
        unmap: bool = False,
        no_replace: bool = False,
        map_32bit: bool = False,
        private: bool = False,
        grows_down: bool = False,
        what: str = "mmap",
    ) -> int:
        """Find where a new mapping of ``length`` bytes goes (gVisor's rules).

        The hint ``addr`` is used if the mapping fits there (or, with
        ``unmap``, replaces what is there); otherwise the layout's direction
        decides, with 2 MiB alignment for private mappings whose length is a
        multiple of it. ``what`` names the syscall in error messages.

        Raises:
            AddressSpaceError: ``EEXIST`` (``no_replace`` and the hint is
                taken), ``ENOMEM`` (``fixed`` and the hint is not usable, or
                no room).
        """
        if fixed:
            map_32bit = False
        layout = self.layout
        lo, hi = layout.min_addr, layout.max_addr
        if map_32bit:
            lo, hi = max(lo, _MAP32_START), min(hi, _MAP32_END)
        end = addr + length
        if lo <= addr and end <= hi and addr < end:
            if unmap:
                return addr
            gap = self.segs.find_gap(addr)
            if no_replace:
                if gap is not None and end <= gap.end:
                    return addr
                raise syscall_error(
                    _errno.EEXIST, f"{what}: the range is already mapped"
                )
            if gap is not None and end <= self._available_end(gap.start, gap.end):
                return addr
        if fixed:
            raise syscall_error(
                _errno.ENOMEM, f"{what}: the fixed range is not available"
            )
        align = PAGE_SIZE
        if length % HUGE_PAGE_SIZE == 0 and private and not grows_down:
            align = HUGE_PAGE_SIZE
        if map_32bit or not layout.top_down:
            base = lo if map_32bit else max(lo, layout.bottom_up_base)
            found = self._search_up(length, align, base, hi)
        else:
            top = min(hi, layout.top_down_base)
            found = self._search_down(length, align, lo, top)
        if found is None:
            raise syscall_error(_errno.ENOMEM, f"{what}: no room in the address space")
        return found

    def _available_end(self, gap_start: int, gap_end: int) -> int:
        """Return the end of the usable part of a gap (guard pages excluded)."""
        nxt = self.segs.find(gap_end) if gap_end < U64 else None
        if nxt is not None and nxt.value.grows_down:
            if gap_end - gap_start < _GUARD_BYTES:
                return gap_start
            return gap_end - _GUARD_BYTES
        return gap_end

    def _search_up(self, length: int, align: int, lo: int, hi: int) -> int | None:
        """Return the lowest fitting address in ``[lo, hi)``, aligned if possible."""
        for gap in self.segs.gaps(lo, hi):
            g_start = max(gap.start, lo)
            g_end = min(self._available_end(gap.start, gap.end), hi)
            if g_end - g_start < length:
                continue
            aligned = (g_start + align - 1) & ~(align - 1)
            if aligned + length <= g_end:
                return aligned
            return g_start
        return None

    def _search_down(self, length: int, align: int, lo: int, hi: int) -> int | None:
        """Return the highest fitting address in ``[lo, hi)``, aligned if possible."""
        segs = self.segs
        s = hi
        while s > lo:
            gap = segs.find_gap(s - 1)
            if gap is None:
                seg = segs.find(s - 1)
                assert seg is not None  # no gap at s - 1, so a vma holds it
                s = seg.start
                continue
            g_start = max(gap.start, lo)
            g_end = min(self._available_end(gap.start, gap.end), hi)
            if g_end - g_start >= length:
                top = g_end - length
                aligned = top & ~(align - 1)
                return aligned if aligned >= g_start else top
            s = gap.start
        return None

    # ------------------------------------------------------------------
    # Checks

    def check_invariants(self) -> None:
        """Check the vmas and the counters against each other.

        Raises:
            InvariantError: An invariant does not hold; the message says which.
        """
        self.segs.check_invariants()
        usage = data = locked = 0
        for seg in self.segs:
            vma = seg.value
            n = seg.end - seg.start
            usage += n
            if vma.is_private_data:
                data += n
            if vma.mlock_mode is not MLockMode.NONE:
                locked += n
            check_invariant(
                not (vma.grows_down and vma.mappable is not None),
                f"file vma {seg} grows down",
            )
            check_invariant(
                vma.effective_perms == vma.real_perms.effective(),
                f"vma {seg}: effective permissions do not follow the real ones",
            )
            check_invariant(
                vma.max_perms.superset_of(vma.effective_perms),
                f"vma {seg}: effective permissions exceed max_perms",
            )
            check_invariant(
                (vma.identity is None) == (vma.mappable is None),
                f"vma {seg}: a mappable without an identity or the reverse",
            )
        for name, counted, kept in (
            ("usage_as", usage, self.usage_as),
            ("data_as", data, self.data_as),
            ("locked_as", locked, self.locked_as),
        ):
            if counted != kept:
                raise InvariantError(
                    f"{name} is {kept:#x}, the vmas add to {counted:#x}"
                )


async def release_identities(ids: list[MappingIdentity]) -> None:
    """Drop one reference on each identity, all of them even if some fail.

    Raises:
        Exception: The first error a ``dec_ref`` raised.
    """
    first: BaseException | None = None
    for ident in ids:
        try:
            await ident.dec_ref()
        except Exception as exc:  # the rest must still be dropped
            if first is None:
                first = exc
    if first is not None:
        raise first
