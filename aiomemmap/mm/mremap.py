"""``mremap``: resizing, moving and copying a mapping.

A method of :class:`~aiomemmap.AddressSpace` (part of gVisor's
``syscalls.go``), defined here and bound to the class. A move carries the
vma and its pmas to the new addresses: the pmas keep their page references,
and the platform sees each unmapped at the old address and mapped at the
new one.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import AddressSpaceError
from aiomemmap._core.pages import PAGE_MASK
from aiomemmap._core.ranges import AddrRange
from aiomemmap._core.segments import Segment
from aiomemmap.memmap.interfaces import MLockMode, MMapOpts
from aiomemmap.mm.args import U64, check_addr, round_up, syscall_error
from aiomemmap.mm.options import MRemapMove
from aiomemmap.mm.syscalls import create_vma_locked, populate, unmap_locked
from aiomemmap.mm.vma import Vma

if TYPE_CHECKING:
    from aiomemmap.mm.address_space import AddressSpace

__all__ = ["mremap"]


async def mremap(
    self: AddressSpace,
    old_addr: int,
    old_size: int,
    new_size: int,
    *,
    move: MRemapMove = MRemapMove.NO_MOVE,
    new_addr: int = 0,
) -> int:
    """Resize and/or move a mapping (``mremap(2)``); return its new address.

    The behaviour follows Linux's matrix:

    ========== ============ ============== ========= ===============
    move       old_size = 0 old < new      old = new old > new
    ========== ============ ============== ========= ===============
    NO_MOVE    ENOMEM       grow in place  no-op     shrink in place
    MAY_MOVE   copy         grow or move   no-op     shrink in place
    MUST_MOVE  copy         move and grow  move      shrink and move
    ========== ============ ============== ========= ===============

    ``old_size`` 0 is allowed only for shared mappings (``EINVAL`` for a
    private one, as Linux has it). A move carries the cached pages
    (private data included) to the new addresses; a copy maps the same
    offsets again. ``MUST_MOVE`` checks everything before it unmaps the
    destination (and, when shrinking, the old range's tail), so when it
    fails nothing has changed; as in Linux, the one exception is a copy
    whose destination covers ``old_addr``: the destination is unmapped,
    then there is nothing to copy (``EFAULT``).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An int argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL`` (``old_addr`` unaligned,
            ``new_size`` rounds to 0 or overflows, the old range
            overflows; ``old_size`` 0 of a private mapping; for
            ``MUST_MOVE``: ``new_addr`` unaligned, overflowing, or
            overlapping the old range; file offsets past ``2**64``);
            ``EFAULT`` (no mapping at ``old_addr``, or the part of the
            old range that is kept is not one mapping); ``EAGAIN``
            (``RLIMIT_MEMLOCK``); ``ENOMEM`` (``NO_MOVE`` cannot grow,
            no room, ``RLIMIT_AS``).
        Exception: Whatever the Mappable's ``copy_mapping`` raises.
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing) and the active lock.
    """
    old_addr = check_addr("mremap", "old_addr", old_addr)
    old_size = check_addr("mremap", "old_size", old_size)
    new_size = check_addr("mremap", "new_size", new_size)
    new_addr = check_addr("mremap", "new_addr", new_addr)
    if type(move) is not MRemapMove:
        raise TypeError(f"mremap: move must be an MRemapMove, got {move!r}")
    self._check_open("mremap")
    if old_addr & PAGE_MASK:
        raise syscall_error(_errno.EINVAL, "mremap: old_addr not page-aligned")
    old_size = (old_size + PAGE_MASK) & ~PAGE_MASK
    if old_size >= U64:
        old_size = 0
    rounded_new = round_up(new_size)
    if rounded_new is None or rounded_new == 0:
        raise syscall_error(_errno.EINVAL, "mremap: bad new_size")
    new_size = rounded_new
    old_end = old_addr + old_size
    if old_end > U64:
        raise syscall_error(_errno.EINVAL, "mremap: old range overflows")
    async with self._mapping_write():
        self._check_open("mremap")
        return await _mremap_locked(self, old_addr, old_end, new_size, move, new_addr)


async def _mremap_locked(
    self: AddressSpace,
    old_addr: int,
    old_end: int,
    new_size: int,
    move: MRemapMove,
    new_addr: int,
) -> int:
    old_size = old_end - old_addr
    vseg = self._vmas.segs.find(old_addr)
    if vseg is None:
        raise syscall_error(_errno.EFAULT, "mremap: nothing mapped at old_addr")
    vma = vseg.value
    if old_size == 0 and vma.private:
        # A copy of private memory would share nothing with the original.
        raise syscall_error(_errno.EINVAL, "mremap: old_size 0 of a private mapping")
    if new_size > old_size and vma.mlock_mode is not MLockMode.NONE:
        memlock = self._limits.memlock
        if memlock is not None and self._vmas.locked_as - old_size + new_size > memlock:
            raise syscall_error(_errno.EAGAIN, "mremap: RLIMIT_MEMLOCK")
    if move is MRemapMove.MUST_MOVE:
        return await _move_to_locked(self, vseg, old_addr, old_end, new_size, new_addr)
    if new_size <= old_size:
        if new_size < old_size:
            await finish_shielded(unmap_locked(self, old_addr + new_size, old_end))
        return old_addr
    if vseg.end < old_end:
        raise syscall_error(_errno.EFAULT, "mremap: old range spans mappings")
    try:
        await _grow_in_place_locked(self, vseg, old_end, new_size - old_size)
    except AddressSpaceError:
        if move is MRemapMove.NO_MOVE:
            raise
    else:
        return old_addr
    new_start = self._vmas.find_available(new_size, what="mremap")
    _check_move(self, vseg, old_addr, old_end, new_size)
    return await _move_locked(self, vseg, old_addr, old_end, new_start, new_size)


async def _move_to_locked(
    self: AddressSpace,
    vseg: Segment[Vma],
    old_addr: int,
    old_end: int,
    new_size: int,
    new_addr: int,
) -> int:
    """``MUST_MOVE``: move (or copy) to ``new_addr``, replacing what is there.

    Everything is checked before anything is unmapped, as Linux does, so a
    failing call changes nothing (except a copy whose destination covers
    ``old_addr``). Then the destination is unmapped, and a shrinking move
    unmaps the old range's tail, before the rest moves.
    """
    if new_addr & PAGE_MASK:
        raise syscall_error(_errno.EINVAL, "mremap: new_addr not page-aligned")
    new_start, new_end = new_addr, new_addr + new_size
    if new_end > U64:
        raise syscall_error(_errno.EINVAL, "mremap: new range overflows")
    if new_start < old_end and old_addr < new_end:
        raise syscall_error(_errno.EINVAL, "mremap: new range overlaps the old")
    self._vmas.find_available(
        new_size, addr=new_start, fixed=True, unmap=True, what="mremap"
    )
    kept_end = min(old_end, old_addr + new_size)
    if vseg.end < kept_end:
        raise syscall_error(_errno.EFAULT, "mremap: old range spans mappings")
    _check_move(self, vseg, old_addr, old_end, new_size)
    await finish_shielded(unmap_locked(self, new_start, new_end))
    if kept_end < old_end:
        await finish_shielded(unmap_locked(self, kept_end, old_end))
    found = self._vmas.segs.find(old_addr)
    if found is None:
        # A copy (old_size 0) whose destination covered old_addr: Linux
        # too unmaps the destination, then finds nothing to copy.
        raise syscall_error(_errno.EFAULT, "mremap: nothing mapped at old_addr")
    return await _move_locked(self, found, old_addr, kept_end, new_start, new_size)


def _check_move(
    self: AddressSpace,
    vseg: Segment[Vma],
    old_addr: int,
    old_end: int,
    new_size: int,
) -> None:
    """Check that ``[old_addr, old_end)`` of ``vseg`` may become ``new_size`` bytes.

    ``RLIMIT_AS`` counts the growth against what is mapped now (as Linux's
    ``may_expand_vm`` does, before a destination is unmapped); the file
    offsets of the new range must not overflow.
    """
    limit = self._limits.address_space
    if (
        limit is not None
        and self._vmas.usage_as - (old_end - old_addr) + new_size > limit
    ):
        raise syscall_error(_errno.ENOMEM, "mremap: RLIMIT_AS")
    vma = vseg.value
    if (
        vma.mappable is not None
        and vma.offset_at(vseg.start, old_addr) + new_size > U64
    ):
        raise syscall_error(_errno.EINVAL, "mremap: offset overflows")


async def _move_locked(
    self: AddressSpace,
    vseg: Segment[Vma],
    old_addr: int,
    old_end: int,
    new_start: int,
    new_size: int,
) -> int:
    """Move ``[old_addr, old_end)`` of ``vseg`` to the free ``new_start``.

    An empty old range (``old_size`` 0, a shared mapping) is a copy: the
    same offsets are mapped again. Returns ``new_start``.
    """
    new_end = new_start + new_size
    old_len = old_end - old_addr
    vma = vseg.value
    old_offset = vma.offset_at(vseg.start, old_addr)
    if vma.mappable is not None:
        await vma.mappable.copy_mapping(
            self,
            AddrRange(old_addr, old_end),
            AddrRange(new_start, new_end),
            old_offset,
            vma.writable_mapping,
        )
    if old_len == 0:
        # Copy: map the same offsets again (no pmas are copied).
        copy = vma.replace(offset=old_offset if vma.mappable is not None else 0)
        if copy.identity is not None:
            copy.identity.inc_ref()
        self._vmas.insert(new_start, new_end, copy)
        if copy.mlock_mode is MLockMode.EAGER:
            await populate(self, new_start, new_end)
        return new_start
    # Move: the vma keeps its identity reference; pmas move with it.
    piece = self._vmas.segs.isolate(vseg, old_addr, old_end)
    self._vmas.segs.remove(piece)
    moved = piece.value
    self._vmas.account(moved, -old_len)
    self._vmas.insert(new_start, new_end, moved)
    async with self._pmas.lock.write():
        self._pmas.move(old_addr, old_end, new_start)
    if moved.mappable is not None:
        await finish_shielded(
            moved.mappable.remove_mapping(
                self,
                AddrRange(old_addr, old_end),
                moved.offset,
                moved.writable_mapping,
            )
        )
    if moved.mlock_mode is MLockMode.EAGER:
        await populate(self, new_start, new_end)
    return new_start


async def _grow_in_place_locked(
    self: AddressSpace, vseg: Segment[Vma], old_end: int, grow: int
) -> None:
    vma = vseg.value
    offset = vma.offset_at(vseg.start, old_end) if vma.mappable is not None else 0
    if offset + grow > U64:
        raise syscall_error(_errno.EINVAL, "mremap: offset overflows")
    opts = MMapOpts(
        length=grow,
        mapping_identity=vma.identity,
        mappable=vma.mappable,
        offset=offset,
        addr=old_end,
        fixed=True,
        perms=vma.real_perms,
        max_perms=vma.max_perms,
        private=vma.private,
        grows_down=vma.grows_down,
        mlock_mode=vma.mlock_mode,
    )
    start, end = await create_vma_locked(
        self,
        opts,
        grow,
        offset,
        old_end,
        vma.mlock_mode,
        vma.mappable,
        vma.identity,
        vma.name,
        "mremap",
    )
    if vma.mlock_mode is MLockMode.EAGER:
        await populate(self, start, end)
