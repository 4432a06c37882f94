"""The memory syscalls of an address space, but ``mremap``.

These are methods of :class:`~aiomemmap.AddressSpace` (gVisor's
``syscalls.go``), defined here and bound to the class, with the vma-level
steps they share (:func:`create_vma_locked` and :func:`unmap_locked`,
gVisor's ``createVMALocked`` and ``unmapLocked``). ``mremap`` has a module
of its own, :mod:`aiomemmap.mm.mremap`.

Each checks its arguments in gVisor's order before it takes a lock, then
works on the vma map under the mapping lock, and on the pma cache under the
active lock.
"""

from __future__ import annotations

import asyncio
import errno as _errno
from contextlib import suppress
from typing import TYPE_CHECKING

from aiomemmap._core.access import AccessType
from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import AddressSpaceError, BusError, OutOfMemoryError
from aiomemmap._core.pages import HUGE_PAGE_SIZE, PAGE_MASK
from aiomemmap._core.ranges import AddrRange, MappableRange
from aiomemmap._core.segments import Segment
from aiomemmap.mappables.readahead import ReadaheadHint
from aiomemmap.mappables.shared_memory import SharedMemory
from aiomemmap.memmap.interfaces import (
    Mappable,
    MappingIdentity,
    MLockMode,
    MMapOpts,
)
from aiomemmap.mm.args import (
    FILE_END_MAX,
    U64,
    check_addr,
    round_up,
    syscall_error,
)
from aiomemmap.mm.io import reached_and_error
from aiomemmap.mm.options import Advice
from aiomemmap.mm.vma import Vma, release_identities

if TYPE_CHECKING:
    from aiomemmap.mm.address_space import AddressSpace

__all__ = [
    "brk",
    "brk_setup",
    "create_vma_locked",
    "madvise",
    "mlock",
    "mlockall",
    "mmap",
    "mprotect",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "populate",
    "unmap_locked",
]

_NO_ACCESS = AccessType.NO_ACCESS
_READ_WRITE = AccessType.READ_WRITE
_ANY = AccessType.ANY


async def create_vma_locked(
    self: AddressSpace,
    opts: MMapOpts,
    length: int,
    offset: int,
    addr: int,
    mlock_mode: MLockMode,
    mappable: Mappable | None,
    identity: MappingIdentity | None,
    name: str,
    what: str = "mmap",
) -> tuple[int, int]:
    """Create a vma (gVisor's ``createVMALocked``); return its range.

    ``what`` names the syscall in error messages.

    Preconditions: the mapping lock is held for writing; the arguments
    passed ``mmap``'s checks.
    """
    try:
        start = self._vmas.find_available(
            length,
            addr=addr,
            fixed=opts.fixed,
            unmap=opts.unmap,
            no_replace=opts.no_replace,
            map_32bit=opts.map_32bit,
            private=opts.private,
            grows_down=opts.grows_down,
            what=what,
        )
    except AddressSpaceError:
        if not (opts.force and opts.unmap and opts.fixed):
            raise
        start = addr
    end = start + length
    limit = self._limits.address_space
    if limit is not None:
        usage = self._vmas.usage_as + length
        if opts.unmap:
            usage -= self._vmas.segs.span_range(start, end)
        if usage > limit:
            raise syscall_error(_errno.ENOMEM, f"{what}: RLIMIT_AS")
    if mlock_mode is not MLockMode.NONE:
        memlock = self._limits.memlock
        if memlock is not None:
            if memlock == 0:
                raise syscall_error(_errno.EPERM, f"{what}: RLIMIT_MEMLOCK is 0")
            locked = self._vmas.locked_as + length
            if opts.unmap:
                locked -= self._vmas.locked_bytes(start, end)
            if locked > memlock:
                raise syscall_error(_errno.EAGAIN, f"{what}: RLIMIT_MEMLOCK")
    if opts.unmap:
        await finish_shielded(unmap_locked(self, start, end))
    private = opts.private
    if mappable is not None:
        writable = not private and opts.max_perms.write
        await mappable.add_mapping(self, AddrRange(start, end), offset, writable)
    if identity is not None:
        identity.inc_ref()
    vma = Vma(
        mappable=mappable,
        offset=offset if mappable is not None else 0,
        real_perms=opts.perms,
        max_perms=opts.max_perms,
        private=private,
        grows_down=opts.grows_down,
        dontfork=False,
        mlock_mode=mlock_mode,
        identity=identity,
        name=name,
    )
    self._vmas.insert(start, end, vma)
    return start, end


async def unmap_locked(self: AddressSpace, start: int, end: int) -> None:
    """Unmap ``[start, end)`` (gVisor's ``unmapLocked``).

    Drops the pmas first (with private ones), then the vmas, then tells
    each Mappable. The identities go to the dropped list.

    Preconditions: the mapping lock is held for writing.

    Cancellation: only while waiting for the active lock, before anything
    changed; callers that must finish wrap it in
    :func:`~aiomemmap._core.cancel.finish_shielded`.
    """
    if self._vmas.segs.is_empty_range(start, end) and self._pmas.segs.is_empty_range(
        start, end
    ):
        return
    async with self._pmas.lock.write():
        self._pmas.invalidate_locked(start, end, True)
    removed = self._vmas.remove_range(start, end)
    first_error: BaseException | None = None
    for seg in removed:
        vma = seg.value
        if vma.mappable is None:
            continue
        try:
            await finish_shielded(
                vma.mappable.remove_mapping(
                    self,
                    AddrRange(seg.start, seg.end),
                    vma.offset,
                    vma.writable_mapping,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported after the rest are removed
            if first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error


async def mmap(self: AddressSpace, opts: MMapOpts) -> int:  # noqa: D417
    """Create a mapping (``mmap(2)``); return its address.

    Anonymous memory is private (``opts.private``) or shared (then a
    shared-memory object is created for it, shared with forks). A file
    mapping needs both ``opts.mappable`` and ``opts.mapping_identity``;
    the space takes one identity reference per mapping.

    Args:
        opts: The request.

    Returns:
        The start address of the new mapping.

    Raises:
        TypeError: ``opts`` is not an ``MMapOpts``, or only one of
            ``mappable`` and ``mapping_identity`` is set.
        ValueError: ``opts.length``, ``opts.offset`` or ``opts.addr`` is
            outside ``[0, 2**64)``.
        AddressSpaceError: In this order: ``EINVAL`` (length 0);
            ``ENOMEM`` (the rounded length overflows); ``EINVAL`` (a
            file offset not page-aligned); ``EOVERFLOW`` (a file mapping
            reaches past ``2**63 - 1``: offset + rounded length, the
            largest file); ``EINVAL`` (unaligned ``addr`` with ``fixed``);
            ``EACCES`` (``perms`` beyond ``max_perms``); ``EINVAL``
            (``unmap`` without ``fixed``; ``no_replace`` without ``fixed``
            or with ``unmap``; ``grows_down`` on a file); then from
            placement: ``ENOMEM`` (no room, ``fixed`` over a mapping, or
            ``RLIMIT_AS``), ``EEXIST`` (``no_replace`` over a mapping),
            ``EPERM``/``EAGAIN`` (``RLIMIT_MEMLOCK`` zero/exceeded).
        Exception: Whatever the Mappable's ``add_mapping`` raises (with
            ``unmap``, the old mappings are already gone, as in Linux).
        ClosedError: The space is closed.

    Postconditions:
        Small private anonymous mappings (at most 2 MiB), ``precommit``
        and eagerly locked ones are populated (errors ignored).

    Locking:
        Takes the mapping lock (writing), then the active lock to
        populate.

    Cancellation:
        Before the mapping exists, nothing changed (except mappings
        already replaced by ``unmap``); cancelled while populating, the
        new mapping is removed again.
    """
    if type(opts) is not MMapOpts:
        raise TypeError(f"mmap: opts must be an MMapOpts, got {opts!r}")
    length = check_addr("mmap", "opts.length", opts.length)
    offset = check_addr("mmap", "opts.offset", opts.offset)
    addr = check_addr("mmap", "opts.addr", opts.addr)
    mappable, identity = opts.mappable, opts.mapping_identity
    if (mappable is None) != (identity is None):
        raise TypeError(
            "mmap: opts.mappable and opts.mapping_identity must both be set "
            f"or both be None, got {mappable!r} and {identity!r}"
        )
    self._check_open("mmap")
    if length == 0:
        raise syscall_error(_errno.EINVAL, "mmap: length is 0")
    rounded = round_up(length)
    if rounded is None:
        raise syscall_error(_errno.ENOMEM, "mmap: length overflows")
    if mappable is not None:
        if offset & PAGE_MASK:
            raise syscall_error(_errno.EINVAL, "mmap: offset not page-aligned")
        if offset + rounded > FILE_END_MAX:
            raise syscall_error(
                _errno.EOVERFLOW, "mmap: offset + length is past the largest file"
            )
    else:
        offset = 0
    if addr & PAGE_MASK:
        if opts.fixed:
            raise syscall_error(_errno.EINVAL, "mmap: fixed addr not page-aligned")
        addr &= ~PAGE_MASK
    if not opts.max_perms.superset_of(opts.perms):
        raise syscall_error(_errno.EACCES, "mmap: perms exceed max_perms")
    if opts.unmap and not opts.fixed:
        raise syscall_error(_errno.EINVAL, "mmap: unmap without fixed")
    if opts.no_replace and (not opts.fixed or opts.unmap):
        raise syscall_error(_errno.EINVAL, "mmap: no_replace needs fixed without unmap")
    if opts.grows_down and mappable is not None:
        raise syscall_error(_errno.EINVAL, "mmap: grows_down on a file mapping")
    mlock_mode = max(opts.mlock_mode, self._def_mlock_mode)
    creator_ref: SharedMemory | None = None
    if mappable is None and not opts.private:
        try:
            creator_ref = SharedMemory(
                self._mf, rounded, name="/dev/zero (deleted)", bus=self._bus
            )
        except ValueError:
            raise syscall_error(
                _errno.ENOMEM, "mmap: shared memory too large"
            ) from None
        mappable = identity = creator_ref
    try:
        async with self._mapping_write():
            self._check_open("mmap")
            start, end = await create_vma_locked(
                self,
                opts,
                rounded,
                offset,
                addr,
                mlock_mode,
                mappable,
                identity,
                opts.hint,
            )
            eager = (
                opts.precommit
                or mlock_mode is MLockMode.EAGER
                or (
                    opts.mappable is None and opts.private and rounded <= HUGE_PAGE_SIZE
                )
            )
            if eager and opts.perms.effective().any():
                try:
                    await populate(self, start, end)
                except asyncio.CancelledError:
                    await finish_shielded(unmap_locked(self, start, end))
                    raise
    finally:
        if creator_ref is not None:
            await finish_shielded(creator_ref.dec_ref())
    return start


async def populate(self: AddressSpace, start: int, end: int) -> None:
    """Create pmas for ``[start, end)`` without breaking copy-on-write.

    Errors are ignored (population is best effort). Preconditions: the
    mapping lock is held and ``[start, end)`` is mapped.
    """
    with suppress(BusError, OutOfMemoryError):
        await self._pmas.get(self._vmas, start, end, _NO_ACCESS, reached_and_error)


async def munmap(self: AddressSpace, addr: int, length: int) -> None:
    """Remove the mappings in ``[addr, addr + length)`` (``munmap(2)``).

    Unmapping addresses that are not mapped is not an error.

    Raises:
        TypeError: An argument is not an int.
        ValueError: An argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL``: ``addr`` not page-aligned, length
            0, or the range overflows.
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing) and the active lock.

    Cancellation:
        Once anything was removed, the unmapping finishes first.
    """
    addr = check_addr("munmap", "addr", addr)
    length = check_addr("munmap", "length", length)
    if length == 0 and not addr & PAGE_MASK:
        raise syscall_error(_errno.EINVAL, "munmap: length is 0")
    end = self._page_range("munmap", addr, length, _errno.EINVAL)
    assert end is not None
    async with self._mapping_write():
        self._check_open("munmap")
        await unmap_locked(self, addr, end)


async def mprotect(
    self: AddressSpace,
    addr: int,
    length: int,
    perms: AccessType,
    *,
    grows_down: bool = False,
) -> None:
    """Change the permissions of ``[addr, addr + length)`` (``mprotect(2)``).

    Mappings are changed in address order; an error part way leaves the
    earlier ones changed, as Linux does.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An int argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL`` (``addr`` unaligned; ``grows_down``
            and the first mapping does not grow down); ``ENOMEM`` (the
            range overflows, or part of it is not mapped); ``EACCES`` (a
            mapping's ``max_perms`` do not allow ``perms``).
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing), then the active lock.
    """
    addr = check_addr("mprotect", "addr", addr)
    length = check_addr("mprotect", "length", length)
    if type(perms) is not AccessType:
        raise TypeError(f"mprotect: perms must be an AccessType, got {perms!r}")
    if type(grows_down) is not bool:
        raise TypeError(f"mprotect: grows_down must be a bool, got {grows_down!r}")
    range_end = self._page_range("mprotect", addr, length, _errno.ENOMEM)
    if range_end is None:
        return
    start, end = addr, range_end
    effective = perms.effective()
    async with self._mapping_write():
        self._check_open("mprotect")
        vseg = self._vmas.segs.lower_bound_segment(start)
        if vseg is None:
            raise syscall_error(_errno.ENOMEM, "mprotect: nothing mapped")
        if grows_down:
            if not vseg.value.grows_down:
                raise syscall_error(
                    _errno.EINVAL, "mprotect: mapping does not grow down"
                )
            if end <= vseg.start:
                raise syscall_error(_errno.ENOMEM, "mprotect: nothing mapped")
            start = vseg.start
        elif start < vseg.start:
            raise syscall_error(_errno.ENOMEM, "mprotect: range not mapped")
        async with self._pmas.lock.write():
            try:
                _mprotect_locked(self, vseg, start, end, perms, effective)
            finally:
                for smap in (self._vmas.segs, self._pmas.segs):
                    smap.merge_inside_range(start, end)
                    smap.merge_outside_range(start, end)


def _mprotect_locked(
    self: AddressSpace,
    vseg: Segment[Vma],
    start: int,
    end: int,
    perms: AccessType,
    effective: AccessType,
) -> None:
    vmas, pmas = self._vmas, self._pmas
    vsegs = vmas.segs
    while True:
        if not vseg.value.max_perms.superset_of(effective):
            raise syscall_error(_errno.EACCES, "mprotect: perms exceed max_perms")
        vseg = vsegs.isolate(vseg, max(start, vseg.start), min(end, vseg.end))
        vseg = vmas.set_perms(vseg, perms)
        pmas.protect(vseg.start, vseg.end, effective)
        if end <= vseg.end:
            return
        nxt = vsegs.next_segment(vseg)
        if nxt is None or nxt.start != vseg.end:
            raise syscall_error(_errno.ENOMEM, "mprotect: range not mapped")
        vseg = nxt


async def brk_setup(self: AddressSpace, addr: int) -> None:
    """Place an empty program break at ``addr``, unmapping any old heap.

    Raises:
        TypeError: ``addr`` is not an int.
        ValueError: ``addr`` is outside ``[0, 2**64)``.
        ClosedError: The space is closed.
    """
    addr = check_addr("brk_setup", "addr", addr)
    self._check_open("brk_setup")
    async with self._mapping_write():
        self._check_open("brk_setup")
        if self._brk_end > self._brk_start:
            start = self._brk_start & ~PAGE_MASK
            end = (self._brk_end + PAGE_MASK) & ~PAGE_MASK
            await finish_shielded(unmap_locked(self, start, min(end, U64)))
        self._brk_start = self._brk_end = addr


async def brk(self: AddressSpace, addr: int) -> int:
    """Move the program break to ``addr`` (``brk(2)``); return the break.

    Growing past a page boundary maps private read-write ``[heap]``
    memory; shrinking unmaps whole pages. Like the Linux syscall this
    never fails: when ``addr`` is below the start of the heap
    (``EINVAL``), beyond ``Limits.data`` (``ENOMEM``), or the mapping
    cannot be made, the break stays where it was and that is returned.

    Returns:
        The program break afterwards.

    Raises:
        TypeError: ``addr`` is not an int.
        ValueError: ``addr`` is outside ``[0, 2**64)``.
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing), and the active lock to unmap or
        populate.
    """
    addr = check_addr("brk", "addr", addr)
    self._check_open("brk")
    async with self._mapping_write():
        self._check_open("brk")
        if addr < self._brk_start:
            return self._brk_end
        data_limit = self._limits.data
        if data_limit is not None and addr - self._brk_start > data_limit:
            return self._brk_end
        old_page = (self._brk_end + PAGE_MASK) & ~PAGE_MASK
        new_page = round_up(addr)
        if new_page is None:
            return self._brk_end
        if old_page < new_page:
            opts = MMapOpts(
                length=new_page - old_page,
                addr=old_page,
                fixed=True,
                perms=_READ_WRITE,
                max_perms=_ANY,
                private=True,
                mlock_mode=self._def_mlock_mode,
                hint="[heap]",
            )
            try:
                start, end = await create_vma_locked(
                    self,
                    opts,
                    new_page - old_page,
                    0,
                    old_page,
                    self._def_mlock_mode,
                    None,
                    None,
                    "[heap]",
                    "brk",
                )
            except AddressSpaceError:
                return self._brk_end
            self._brk_end = addr
            if self._def_mlock_mode is MLockMode.EAGER:
                await populate(self, start, end)
        else:
            if new_page < old_page:
                await finish_shielded(unmap_locked(self, new_page, old_page))
            self._brk_end = addr
        return self._brk_end


async def mlock(
    self: AddressSpace, addr: int, length: int, mode: MLockMode = MLockMode.EAGER
) -> None:
    """Lock (or with ``MLockMode.NONE`` unlock) ``[addr, addr + length)``.

    ``addr`` need not be aligned: the range is widened to whole pages.
    Locking eagerly populates the range.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An int argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL`` (the range overflows); when locking:
            ``EPERM`` (``Limits.memlock`` is 0), ``ENOMEM`` (the limit
            would be exceeded); ``ENOMEM`` (part of the range is not
            mapped — earlier mappings are changed anyway; or populating
            found a mapping without permissions); ``EAGAIN`` (no memory
            to populate).
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing), then the active lock.
    """
    addr = check_addr("mlock", "addr", addr)
    length = check_addr("mlock", "length", length)
    if type(mode) is not MLockMode:
        raise TypeError(f"mlock: mode must be an MLockMode, got {mode!r}")
    self._check_open("mlock")
    la = length + (addr & PAGE_MASK)
    la = (la + PAGE_MASK) & ~PAGE_MASK
    if la >= U64:
        la = 0
    start = addr & ~PAGE_MASK
    end = start + la
    if end > U64:
        raise syscall_error(_errno.EINVAL, "mlock: range overflows")
    async with self._mapping_write():
        self._check_open("mlock")
        if mode is not MLockMode.NONE:
            memlock = self._limits.memlock
            if memlock is not None:
                if memlock == 0:
                    raise syscall_error(_errno.EPERM, "mlock: RLIMIT_MEMLOCK is 0")
                locked = self._vmas.locked_as + la - self._vmas.locked_bytes(start, end)
                if locked > memlock:
                    raise syscall_error(_errno.ENOMEM, "mlock: RLIMIT_MEMLOCK")
        if la == 0:
            return
        unmapped = self._vmas.set_mlock_range(start, end, mode)
        if unmapped:
            raise syscall_error(_errno.ENOMEM, "mlock: range not mapped")
        if mode is MLockMode.EAGER:
            await _populate_locked_range(self, start, end)


async def _populate_locked_range(self: AddressSpace, start: int, end: int) -> None:
    """Populate every vma in ``[start, end)`` for ``mlock`` (errors as Linux)."""
    for vseg in list(self._vmas.segs.segments(start, end)):
        if not vseg.value.effective_perms.any():
            raise syscall_error(_errno.ENOMEM, "mlock: mapping without permissions")
        s, e = max(start, vseg.start), min(end, vseg.end)
        try:
            _reached, err = await self._pmas.get(
                self._vmas, s, e, _NO_ACCESS, reached_and_error
            )
        except OutOfMemoryError:
            raise syscall_error(_errno.EAGAIN, "mlock: out of memory") from None
        if err is not None:
            raise err


async def munlock(self: AddressSpace, addr: int, length: int) -> None:
    """Unlock ``[addr, addr + length)``: ``mlock`` with ``MLockMode.NONE``."""
    await self.mlock(addr, length, MLockMode.NONE)


async def mlockall(
    self: AddressSpace, mode: MLockMode, *, current: bool = True, future: bool = False
) -> None:
    """Lock every mapping (``current``) and/or every later one (``future``).

    Raises:
        TypeError: An argument has the wrong type.
        AddressSpaceError: ``EINVAL`` (neither ``current`` nor
            ``future``); with ``current`` and a mode other than ``NONE``:
            ``EPERM`` (``Limits.memlock`` is 0), ``ENOMEM`` (the mappings
            exceed it).
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock (writing), then the active lock.
    """
    if type(mode) is not MLockMode:
        raise TypeError(f"mlockall: mode must be an MLockMode, got {mode!r}")
    for name, flag in (("current", current), ("future", future)):
        if type(flag) is not bool:
            raise TypeError(f"mlockall: {name} must be a bool, got {flag!r}")
    self._check_open("mlockall")
    if not current and not future:
        raise syscall_error(_errno.EINVAL, "mlockall: neither current nor future")
    async with self._mapping_write():
        self._check_open("mlockall")
        if current:
            memlock = self._limits.memlock
            if mode is not MLockMode.NONE and memlock is not None:
                if memlock == 0:
                    raise syscall_error(_errno.EPERM, "mlockall: RLIMIT_MEMLOCK is 0")
                if self._vmas.segs.span() > memlock:
                    raise syscall_error(_errno.ENOMEM, "mlockall: RLIMIT_MEMLOCK")
            for vseg in list(self._vmas):
                current_seg = self._vmas.segs.find(vseg.start)
                if current_seg is not None:
                    self._vmas.set_mlock(current_seg, mode)
            self._vmas.segs.merge_all()
        if future:
            self._def_mlock_mode = mode
        if current and mode is MLockMode.EAGER:
            for vseg in list(self._vmas):
                if vseg.value.effective_perms.any():
                    await populate(self, vseg.start, vseg.end)


async def munlockall(self: AddressSpace) -> None:
    """Unlock every mapping, now and for later mappings."""
    await self.mlockall(MLockMode.NONE, current=True, future=True)


async def msync(
    self: AddressSpace,
    addr: int,
    length: int,
    *,
    invalidate: bool = False,
    sync: bool = True,
) -> None:
    """Write back shared file mappings in the range (``msync(2)``).

    For each shared file mapping, ``MappingIdentity.msync`` is called on
    its offsets (with ``sync``; ``sync=False`` is ``MS_ASYNC``, which
    does nothing more than the checks).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An int argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL`` (``addr`` unaligned); ``ENOMEM``
            (the range overflows or is not wholly mapped — reported after
            syncing what is); ``EBUSY`` (``invalidate`` on locked memory).
        Exception: Whatever ``MappingIdentity.msync`` raises.
        ClosedError: The space is closed.

    Locking:
        Takes the mapping lock for reading, and releases it around each
        ``MappingIdentity.msync``.
    """
    addr = check_addr("msync", "addr", addr)
    length = check_addr("msync", "length", length)
    for name, flag in (("invalidate", invalidate), ("sync", sync)):
        if type(flag) is not bool:
            raise TypeError(f"msync: {name} must be a bool, got {flag!r}")
    range_end = self._page_range("msync", addr, length, _errno.ENOMEM)
    if range_end is None:
        return
    start, end = addr, range_end
    lock = self._mapping_lock
    await lock.acquire_read()
    locked = True
    try:
        self._check_open("msync")
        vseg = self._vmas.segs.lower_bound_segment(start)
        if vseg is None:
            raise syscall_error(_errno.ENOMEM, "msync: nothing mapped")
        unmapped = False
        last_end = start
        while True:
            if vseg is None:
                unmapped = True
                break
            if last_end < vseg.start:
                unmapped = True
            last_end = vseg.end
            vma = vseg.value
            if invalidate and vma.mlock_mode is not MLockMode.NONE:
                raise syscall_error(_errno.EBUSY, "msync: invalidating locked memory")
            ident = vma.identity
            s, e = max(start, vseg.start), min(end, vseg.end)
            if sync and ident is not None and not vma.private and s < e:
                mr = MappableRange(
                    vma.offset_at(vseg.start, s), vma.offset_at(vseg.start, e)
                )
                ident.inc_ref()
                lock.release_read()
                locked = False
                try:
                    await ident.msync(mr)
                finally:
                    await finish_shielded(ident.dec_ref())
                if last_end >= end:
                    break
                await lock.acquire_read()
                locked = True
                self._check_open("msync")
                vseg = self._vmas.segs.lower_bound_segment(last_end)
            else:
                if last_end >= end:
                    break
                vseg = self._vmas.segs.next_segment(vseg)
    finally:
        if locked:
            lock.release_read()
    if unmapped:
        raise syscall_error(_errno.ENOMEM, "msync: range not mapped")


async def madvise(self: AddressSpace, addr: int, length: int, advice: Advice) -> None:
    """Advise on the use of ``[addr, addr + length)`` (``madvise(2)``).

    * ``DONTNEED`` drops the cached pages: anonymous memory reads back as
      zeros, private file mappings revert to the file's contents, shared
      mappings translate again on the next access.
    * ``WILLNEED`` asks file mappings' Mappables to prefetch (through
      their ``prefetch(MappableRange)`` method when they have one; fetch
      errors are ignored).
    * ``SEQUENTIAL``, ``RANDOM`` and ``NORMAL`` pass the hint to each
      file mapping's Mappable (its ``advise(ReadaheadHint)`` method when
      it has one).
    * ``DONTFORK``/``DOFORK`` mark the mappings to be left out of (or
      again copied into) children made by :meth:`fork`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An int argument is outside ``[0, 2**64)``.
        AddressSpaceError: ``EINVAL`` (``addr`` unaligned, the range
            overflows; ``DONTNEED`` on locked memory — earlier mappings
            are already done); ``ENOMEM`` (part of the range is not
            mapped — reported after the rest was done).
        ClosedError: The space is closed.

    Locking:
        ``DONTFORK``/``DOFORK`` take the mapping lock for writing;
        ``DONTNEED`` takes it for reading plus the active lock; the
        hints take it for reading; ``WILLNEED`` prefetches after
        releasing it.
    """
    addr = check_addr("madvise", "addr", addr)
    length = check_addr("madvise", "length", length)
    if type(advice) is not Advice:
        raise TypeError(f"madvise: advice must be an Advice, got {advice!r}")
    range_end = self._page_range("madvise", addr, length, _errno.EINVAL)
    if range_end is None:
        return
    start, end = addr, range_end
    if advice is Advice.DONTNEED:
        await _dontneed(self, start, end)
    elif advice in (Advice.DONTFORK, Advice.DOFORK):
        dontfork = advice is Advice.DONTFORK
        async with self._mapping_write():
            self._check_open("madvise")
            hole = self._vmas.segs.first_hole(start, end) is not None
            for vseg in list(self._vmas.segs.segments(start, end)):
                cur = self._vmas.segs.find(max(start, vseg.start))
                if cur is None or cur.value.dontfork == dontfork:
                    continue
                cur = self._vmas.segs.isolate(
                    cur, max(start, cur.start), min(end, cur.end)
                )
                self._vmas.segs.set_value(cur, cur.value.replace(dontfork=dontfork))
            self._vmas.segs.merge_inside_range(start, end)
            self._vmas.segs.merge_outside_range(start, end)
            if hole:
                raise syscall_error(_errno.ENOMEM, "madvise: range not mapped")
    else:
        await _advise_mappables(self, start, end, advice)


async def _dontneed(self: AddressSpace, start: int, end: int) -> None:
    async with self._mapping_lock.read():
        self._check_open("madvise")
        vseg = self._vmas.segs.lower_bound_segment(start)
        if vseg is None or vseg.start >= end:
            raise syscall_error(_errno.ENOMEM, "madvise: nothing mapped")
        hole = start < vseg.start
        async with self._pmas.lock.write():
            while vseg is not None and vseg.start < end:
                if vseg.value.mlock_mode is not MLockMode.NONE:
                    raise syscall_error(
                        _errno.EINVAL, "madvise: DONTNEED on locked memory"
                    )
                s, e = max(start, vseg.start), min(end, vseg.end)
                self._pmas.invalidate_locked(s, e, True)
                if end <= vseg.end:
                    break
                nxt = self._vmas.segs.next_segment(vseg)
                if nxt is None or nxt.start != vseg.end:
                    hole = True
                vseg = nxt
            else:
                hole = True
        if hole:
            raise syscall_error(_errno.ENOMEM, "madvise: range not mapped")


async def _advise_mappables(
    self: AddressSpace, start: int, end: int, advice: Advice
) -> None:
    targets: list[tuple[Mappable, MappingIdentity, MappableRange]] = []
    async with self._mapping_lock.read():
        self._check_open("madvise")
        hole = self._vmas.segs.first_hole(start, end) is not None
        for vseg in self._vmas.segs.segments(start, end):
            vma = vseg.value
            if vma.mappable is None or vma.identity is None:
                continue
            s, e = max(start, vseg.start), min(end, vseg.end)
            mr = MappableRange(
                vma.offset_at(vseg.start, s), vma.offset_at(vseg.start, e)
            )
            if advice is Advice.WILLNEED:
                vma.identity.inc_ref()
                targets.append((vma.mappable, vma.identity, mr))
            else:
                advise = getattr(vma.mappable, "advise", None)
                if callable(advise):
                    advise(ReadaheadHint[advice.name])
    try:
        for mappable, _ident, mr in targets:
            prefetch = getattr(mappable, "prefetch", None)
            if callable(prefetch):
                with suppress(BusError, OSError):
                    await prefetch(mr)
    finally:
        await finish_shielded(release_identities([t[1] for t in targets]))
    if hole:
        raise syscall_error(_errno.ENOMEM, "madvise: range not mapped")
