"""A guest address space: mappings, faults, copies and fork, as Linux does them.

:class:`AddressSpace` is gVisor's ``MemoryManager`` made async. It keeps two
segment maps:

* **vmas** (:class:`~aiomemmap.mm.vma.Vma`): what the application mapped, where,
  and with which permissions (changed by ``mmap``, ``munmap``, ``mremap``,
  ``mprotect``, ``brk``, ``mlock``, ``madvise``);
* **pmas** (:class:`~aiomemmap.mm.vma.Pma`): translations cached from faults and
  copies: which pages of which file back which addresses. Each holds one page
  reference on its file range.

Anonymous private memory is allocated straight from the space's
:class:`~aiomemmap.MemoryFile` in 2 MiB-aligned windows around the access;
file mappings ask their Mappable with ``translate(required, optional)``,
where ``optional`` is the whole part of the vma without pmas, so the
Mappable's readahead decides how much it hands back. Private file mappings
are translated read-only and copied on the first write (or taken over when
the space holds the only reference). Mappables call :meth:`invalidate` when
translations go stale.

Locks (the order is written once, in :mod:`aiomemmap._core.locks`):

* the **mapping lock** (``LockRank.MAPPING``, reader/writer) guards the vmas:
  held for writing by everything that changes mappings, for reading by
  faults, copies and ``fork``;
* the **active lock** (``LockRank.ACTIVE``, reader/writer) guards the pmas and
  the resident-set counters: held for writing while pmas are created or
  dropped. :meth:`invalidate` takes only this lock. Unlike gVisor, it is *not*
  held while ``Mappable.translate`` is awaited (a fetch may take
  milliseconds): invalidations that arrive meanwhile are recorded, and a
  translation one of them overlaps is discarded and asked for again.

Faults and copies whose pages are all resident take neither lock: with no
writer holding the active lock, pmas are consistent, and the copy finishes
without awaiting, so no other task can interleave.

Teardown follows gVisor: pmas are invalidated before
``Mappable.remove_mapping`` is called, pages are released right after their
pma is removed, and identities given up under the mapping lock are released
(``MappingIdentity.dec_ref``) only once it is unlocked.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import operator
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import NamedTuple, TypeVar, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq, copy_seq
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import (
    AddressSpaceError,
    BusError,
    ClosedError,
    MemoryFault,
    OutOfMemoryError,
)
from aiomemmap._core.locks import LockRank, OrderedRWLock
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    HUGE_PAGE_MASK,
    HUGE_PAGE_SIZE,
    PAGE_MASK,
    PAGE_SIZE,
    is_int,
)
from aiomemmap._core.ranges import AddrRange, FileRange, MappableRange
from aiomemmap._core.segments import Segment, SegmentMap
from aiomemmap.mappables.readahead import ReadaheadHint
from aiomemmap.mappables.shared_memory import SharedMemory
from aiomemmap.memmap.interfaces import (
    File,
    InvalidateOpts,
    Mappable,
    MappingIdentity,
    MLockMode,
    MMapOpts,
    check_translate_result,
)
from aiomemmap.mm.options import (
    AddressSpaceStatistics,
    Advice,
    Layout,
    Limits,
    MRemapMove,
)
from aiomemmap.mm.vma import Pma, Vma, make_vma_functions, merge_pmas, split_pma
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind

__all__ = ["AddressSpace"]

_T = TypeVar("_T")

_U64 = ADDR_LIMIT  # one past the largest 64-bit value

# Below a stack (a grows-down vma) this much of the gap is kept free.
_GUARD_BYTES = 256 * PAGE_SIZE
# MAP_32BIT places mappings in [1 GiB, 2 GiB).
_MAP32_START = 0x4000_0000
_MAP32_END = 0x8000_0000
# The line /proc/pid/maps always ends with on x86-64.
_VSYSCALL_LINE = (
    "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0"
    + " " * 18
    + "[vsyscall]\n"
)
# The path column of a maps line starts after this many characters.
_MAPS_PATH_COLUMN = 73
_READ = AccessType.READ
_NO_ACCESS = AccessType.NO_ACCESS
_WRITE = AccessType.WRITE
_READ_WRITE = AccessType.READ_WRITE
_READ_EXECUTE = AccessType.READ_EXECUTE
_ANY = AccessType.ANY
_ZEROS = bytes(HUGE_PAGE_SIZE)


def _error(err: int, what: str) -> AddressSpaceError:
    return AddressSpaceError(err, f"{what}: {os.strerror(err)}")


def _round_up(n: int) -> int | None:
    """Round up to a page; ``None`` if that leaves the 64-bit range."""
    r = (n + PAGE_MASK) & ~PAGE_MASK
    return r if r < _U64 else None


def _huge_down(n: int) -> int:
    return n & ~HUGE_PAGE_MASK


def _huge_up(n: int) -> int:
    return min((n + HUGE_PAGE_MASK) & ~HUGE_PAGE_MASK, _U64)


def _check_addr(what: str, name: str, value: object) -> int:
    if not is_int(value):
        raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    v = operator.index(value)  # type: ignore[arg-type]
    if not 0 <= v < _U64:
        raise ValueError(f"{what}: {name} must be in [0, 2**64), got {v:#x}")
    return v


async def _complete(aw: Awaitable[_T]) -> _T:
    """Await ``aw`` to the end even if cancelled meanwhile, then re-raise.

    Used for steps that must not be abandoned half way (removing a
    mapping, dropping an identity): the work finishes, and a cancellation
    that arrived during it is delivered afterwards.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


@final
class _TranslateNeed(NamedTuple):
    """A translation :meth:`AddressSpace._ensure_pmas` found still missing.

    ``[req_start, req_end)`` must be translated, ``[opt_start, opt_end)``
    may be, with ``perms``, in the vma ``vseg``; ``upgrade`` means existing
    shared pmas get more permissions.
    """

    vseg: Segment[Vma]
    req_start: int
    req_end: int
    opt_start: int
    opt_end: int
    perms: AccessType
    upgrade: bool


@final
class _SharedMemoryFile:
    """A memory file an address space made, shared with its forks."""

    __slots__ = ("mf", "users")

    def __init__(self, mf: MemoryFile) -> None:
        self.mf = mf
        self.users = 1


@final
class AddressSpace:
    """A guest address space with gVisor's (and Linux's) memory semantics.

    Args:
        memory_file: Where anonymous memory and private copies live. If
            ``None``, the space makes its own, shares it with its forks, and
            closes it when the last of them is closed. A given memory file is
            the caller's to close, after every space using it.
        layout: Which addresses are handed out; see :class:`Layout`.
        limits: The resource limits; see :class:`Limits`.

    Raises:
        TypeError: An argument has the wrong type.
        ClosedError: ``memory_file`` is closed.

    Usage::

        async with AddressSpace() as asp:
            addr = await asp.mmap(MMapOpts(length=2 * PAGE_SIZE, private=True))
            await asp.copy_out(addr, b"hello")
            assert await asp.copy_in(addr, 5) == b"hello"

    Errors:
        The syscall-like methods raise :class:`~aiomemmap.AddressSpaceError`
        with the ``errno`` Linux (as gVisor models it) returns, checked in
        gVisor's order; errors of a Mappable's ``add_mapping`` or
        ``copy_mapping`` propagate unchanged. Arguments of the wrong type
        raise ``TypeError`` and out-of-range ints ``ValueError``, naming the
        argument; nothing is changed then.

    Locking:
        See the module docstring. Every method must be called from tasks of
        one event loop.

    Cancellation:
        Cancelling a method leaves the space consistent: steps that cannot be
        undone (removing a mapping from its Mappable, releasing references)
        finish first, then ``CancelledError`` is raised.
    """

    __slots__ = (
        "_active_lock",
        "_brk_end",
        "_brk_start",
        "_capture",
        "_closed",
        "_cow_copies",
        "_data_as",
        "_def_mlock_mode",
        "_dropped_ids",
        "_faults",
        "_invalidation_log",
        "_layout",
        "_limits",
        "_locked_as",
        "_mapping_lock",
        "_max_rss",
        "_mf",
        "_owned",
        "_pmas",
        "_rss",
        "_translates_in_flight",
        "_usage_as",
        "_vmas",
    )

    def __init__(
        self,
        memory_file: MemoryFile | None = None,
        *,
        layout: Layout | None = None,
        limits: Limits | None = None,
    ) -> None:
        if memory_file is not None and not isinstance(memory_file, MemoryFile):
            raise TypeError(
                f"AddressSpace: memory_file must be a MemoryFile or None, "
                f"got {memory_file!r}"
            )
        if layout is not None and not isinstance(layout, Layout):
            raise TypeError(
                f"AddressSpace: layout must be a Layout or None, got {layout!r}"
            )
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(
                f"AddressSpace: limits must be a Limits or None, got {limits!r}"
            )
        if memory_file is not None and memory_file.closed:
            raise ClosedError(f"AddressSpace: memory_file {memory_file!r} is closed")
        self._owned: _SharedMemoryFile | None = None
        if memory_file is None:
            self._owned = _SharedMemoryFile(MemoryFile("aiomemmap-address-space"))
            memory_file = self._owned.mf
        self._mf = memory_file
        self._layout = layout if layout is not None else Layout()
        self._limits = limits if limits is not None else Limits()
        self._mapping_lock = OrderedRWLock(LockRank.MAPPING, "AddressSpace.mapping")
        self._active_lock = OrderedRWLock(LockRank.ACTIVE, "AddressSpace.active")
        # Identity references given up while the mapping lock is held for
        # writing; released by whoever holds it, after unlocking.
        self._dropped_ids: list[MappingIdentity] = []
        merge, split = make_vma_functions(self._dropped_ids_append)
        self._vmas: SegmentMap[Vma] = SegmentMap(merge, split)
        self._pmas: SegmentMap[Pma] = SegmentMap(merge_pmas, split_pma)
        self._usage_as = 0
        self._data_as = 0
        self._locked_as = 0
        self._rss = 0
        self._max_rss = 0
        self._faults = 0
        self._cow_copies = 0
        self._brk_start = 0
        self._brk_end = 0
        self._def_mlock_mode = MLockMode.NONE
        # While translations are awaited without the active lock: the ranges
        # invalidated meanwhile (see _get_pmas).
        self._translates_in_flight = 0
        self._invalidation_log: list[tuple[int, int]] = []
        # While a fork builds this space: invalidations to apply afterwards.
        self._capture: list[tuple[int, int, bool]] | None = None
        self._closed = False

    def _dropped_ids_append(self, identity: MappingIdentity) -> None:
        self._dropped_ids.append(identity)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"vmas={len(self._vmas)}"
        return f"<AddressSpace {state} usage_as={self._usage_as:#x} rss={self._rss:#x}>"

    # ------------------------------------------------------------------
    # Properties and lifecycle

    @property
    def memory_file(self) -> MemoryFile:
        """The memory file holding anonymous memory and private copies."""
        return self._mf

    @property
    def layout(self) -> Layout:
        """The address-space layout."""
        return self._layout

    @property
    def limits(self) -> Limits:
        """The resource limits."""
        return self._limits

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    async def __aenter__(self) -> AddressSpace:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unmap everything and return every reference the space holds.

        Afterwards every method but :meth:`aclose`, :meth:`maps`,
        :meth:`statistics` and :meth:`check_invariants` raises
        :class:`~aiomemmap.ClosedError`. Closing twice is a no-op.

        Postconditions:
            No pma or vma is left; every page reference and identity
            reference is returned; every Mappable was told of the removal;
            a memory file the space made is closed with its last user.

        Locking:
            Takes the mapping lock (writing), then the active lock.

        Cancellation:
            Once the mapping lock is held, closing finishes before the
            cancellation is delivered.
        """
        if self._closed:
            return
        async with self._mapping_write():
            if self._is_closed():
                return
            await _complete(self._unmap_locked(0, _U64))
            self._closed = True
            self._brk_start = self._brk_end = 0
        owned = self._owned
        if owned is not None:
            self._owned = None
            owned.users -= 1
            if owned.users == 0:
                owned.mf.close()

    def _is_closed(self) -> bool:
        # A method, so that checks after an await are not narrowed away.
        return self._closed

    def _page_range(
        self, what: str, addr: int, length: int, overflow_errno: int
    ) -> int | None:
        """Check a syscall's ``[addr, addr + length)``; return its rounded end.

        Returns ``None`` for a zero length. Raises ``EINVAL`` for an unaligned
        ``addr`` and ``overflow_errno`` when the rounded range overflows.
        """
        self._check_open(what)
        if addr & PAGE_MASK:
            raise _error(_errno.EINVAL, f"{what}: addr not page-aligned")
        if length == 0:
            return None
        rounded = _round_up(length)
        if rounded is None or addr + rounded > _U64:
            raise _error(overflow_errno, f"{what}: range overflows")
        return addr + rounded

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: the address space is closed")

    @asynccontextmanager
    async def _mapping_write(self) -> AsyncIterator[None]:
        """Hold the mapping lock for writing; release dropped identities after."""
        await self._mapping_lock.acquire_write()
        dropped: list[MappingIdentity] = []
        self._dropped_ids = dropped
        try:
            yield
        finally:
            self._dropped_ids = []
            self._mapping_lock.release_write()
            if dropped:
                await _complete(_release_identities(dropped))

    # ------------------------------------------------------------------
    # Statistics and checks

    def statistics(self) -> AddressSpaceStatistics:
        """Return a snapshot of the accounting (see :class:`AddressSpaceStatistics`)."""
        return AddressSpaceStatistics(
            usage_as=self._usage_as,
            data_as=self._data_as,
            locked_as=self._locked_as,
            rss=self._rss,
            max_rss=self._max_rss,
            vmas=len(self._vmas),
            pmas=len(self._pmas),
            faults=self._faults,
            cow_copies=self._cow_copies,
        )

    def check_invariants(self) -> None:
        """Check the vmas, pmas and counters against each other.

        Raises:
            AssertionError: An invariant does not hold; the message says which.
        """
        self._vmas.check_invariants()
        self._pmas.check_invariants()
        usage = data = locked = 0
        for seg in self._vmas:
            vma = seg.value
            n = seg.end - seg.start
            usage += n
            if vma.is_private_data:
                data += n
            if vma.mlock_mode is not MLockMode.NONE:
                locked += n
            assert not (vma.grows_down and vma.mappable is not None), seg
            assert vma.effective_perms == vma.real_perms.effective(), seg
            assert vma.max_perms.superset_of(vma.effective_perms), seg
            assert (vma.identity is None) == (vma.mappable is None), seg
        assert usage == self._usage_as, (usage, self._usage_as)
        assert data == self._data_as, (data, self._data_as)
        assert locked == self._locked_as, (locked, self._locked_as)
        rss = 0
        for pseg in self._pmas:
            pma = pseg.value
            rss += pseg.end - pseg.start
            hole = self._vmas.first_hole(pseg.start, pseg.end)
            assert hole is None, f"pma {pseg} outside every vma at {hole}"
            assert pma.offset % PAGE_SIZE == 0, pseg
            if pma.private:
                assert pma.file is self._mf, pseg
            if pma.need_cow:
                assert not pma.effective_perms.write, pseg
                assert not pma.max_perms.write, pseg
            assert pma.translate_perms.superset_of(pma.effective_perms), pseg
            if pma.blocks is not None:
                assert pma.blocks.num_bytes == pseg.end - pseg.start, pseg
        assert rss == self._rss, (rss, self._rss)
        assert self._max_rss >= self._rss

    # ------------------------------------------------------------------
    # /proc/pid/maps

    def maps(self) -> str:
        """Return the mappings in Linux's ``/proc/pid/maps`` format.

        One line per vma, in address order, then the ``[vsyscall]`` line::

            00400000-00401000 rw-p 00000000 00:00 0
            7f0000000000-7f0000001000 r--s 00000000 00:00 5      /data/file

        Columns: range, permissions as requested plus ``p`` (private) or
        ``s`` (shared), offset, device ``major:minor``, inode, and the name
        (the mapping's name, else its identity's ``mapped_name()``) starting
        at column 74.
        """
        lines = []
        for seg in self._vmas:
            vma = seg.value
            ident = vma.identity
            dev = ident.device_id() if ident is not None else 0
            ino = ident.inode_id() if ident is not None else 0
            offset = vma.offset if vma.mappable is not None else 0
            line = (
                f"{seg.start:08x}-{seg.end:08x} {vma.real_perms}"
                f"{'p' if vma.private else 's'} {offset:08x} "
                f"{dev >> 20:02x}:{dev & 0xFFFFF:02x} {ino} "
            )
            name = vma.name or (ident.mapped_name() if ident is not None else "")
            if name:
                line = line.ljust(_MAPS_PATH_COLUMN) + name
            lines.append(line + "\n")
        lines.append(_VSYSCALL_LINE)
        return "".join(lines)

    # ------------------------------------------------------------------
    # Invalidation (MappingSpace)

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        """Drop the cached translations of ``ar`` (``MappingSpace.invalidate``).

        Shared translations are always dropped; private copies only with
        ``opts.invalidate_private``. Later accesses translate again.

        Args:
            ar: Page-aligned, non-empty addresses.
            opts: The invalidation options.

        Raises:
            TypeError: ``ar`` is not an ``AddrRange`` or ``opts`` not an
                ``InvalidateOpts``.

        Locking:
            Takes only the active lock (writing). Called by Mappables, which
            may hold ``LockRank.MAPPABLE`` locks.

        Cancellation:
            Nothing is dropped before the lock is held; after that the
            invalidation completes without awaiting.
        """
        if type(ar) is not AddrRange:
            raise TypeError(f"invalidate: ar must be an AddrRange, got {ar!r}")
        if type(opts) is not InvalidateOpts:
            raise TypeError(f"invalidate: opts must be an InvalidateOpts, got {opts!r}")
        start, end = ar.start, ar.end
        private = opts.invalidate_private
        if self._capture is not None:
            self._capture.append((start, end, private))
            return
        lock = self._active_lock
        if not lock.locked() and not is_debug():
            # Nobody holds the lock and nothing below awaits: the work is
            # atomic, exactly as if the lock had been taken and released.
            self._invalidate_locked(start, end, private)
            return
        await lock.acquire_write()
        try:
            capture = self._capture_list()
            if capture is not None:
                capture.append((start, end, private))
            else:
                self._invalidate_locked(start, end, private)
        finally:
            lock.release_write()

    def _capture_list(self) -> list[tuple[int, int, bool]] | None:
        return self._capture

    def _invalidate_locked(self, start: int, end: int, private: bool) -> None:
        """Drop pmas in ``[start, end)`` (private ones only if ``private``)."""
        if self._translates_in_flight:
            self._invalidation_log.append((start, end))
        pmas = self._pmas
        seg = pmas.lower_bound_segment(start)
        while seg is not None and seg.start < end:
            # Taken before seg changes; seg is split at end only if it is last.
            nxt = pmas.next_segment(seg) if seg.end < end else None
            if private or not seg.value.private:
                if seg.start < start or end < seg.end:
                    seg = pmas.isolate(seg, start, end)
                self._remove_pma(seg)
            seg = nxt

    def _remove_pma(self, seg: Segment[Pma]) -> None:
        """Remove a pma and release its pages."""
        self._pmas.delete(seg)
        pma = seg.value
        n = seg.end - seg.start
        self._rss -= n
        fr = pma.fr
        pma.file.dec_ref(
            fr if fr is not None else FileRange(pma.offset, pma.offset + n)
        )

    # ------------------------------------------------------------------
    # Finding addresses

    def _available_end(self, gap_start: int, gap_end: int) -> int:
        """Return the end of the usable part of a vma gap (guard pages excluded)."""
        nxt = self._vmas.find(gap_end) if gap_end < _U64 else None
        if nxt is not None and nxt.value.grows_down:
            if gap_end - gap_start < _GUARD_BYTES:
                return gap_start
            return gap_end - _GUARD_BYTES
        return gap_end

    def _find_available_locked(
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
    ) -> int:
        """Find where a new mapping of ``length`` bytes goes (gVisor's rules).

        Raises:
            AddressSpaceError: ``EEXIST`` (``no_replace`` and the hint is
                taken), ``ENOMEM`` (``fixed`` and the hint is not usable, or
                no room).
        """
        if fixed:
            map_32bit = False
        lo, hi = self._layout.min_addr, self._layout.max_addr
        if map_32bit:
            lo, hi = max(lo, _MAP32_START), min(hi, _MAP32_END)
        end = addr + length
        if lo <= addr and end <= hi and addr < end:
            if unmap:
                return addr
            gap = self._vmas.find_gap(addr)
            if no_replace:
                if gap is not None and end <= gap.end:
                    return addr
                raise _error(_errno.EEXIST, "mmap: the range is already mapped")
            if gap is not None and end <= self._available_end(gap.start, gap.end):
                return addr
        if fixed:
            raise _error(_errno.ENOMEM, "mmap: the fixed range is not available")
        align = PAGE_SIZE
        if length % HUGE_PAGE_SIZE == 0 and private and not grows_down:
            align = HUGE_PAGE_SIZE
        if map_32bit or not self._layout.top_down:
            base = lo if map_32bit else max(lo, self._layout.bottom_up_base)
            found = self._search_up(length, align, base, hi)
        else:
            top = min(hi, self._layout.top_down_base)
            found = self._search_down(length, align, lo, top)
        if found is None:
            raise _error(_errno.ENOMEM, "mmap: no room in the address space")
        return found

    def _search_up(self, length: int, align: int, lo: int, hi: int) -> int | None:
        """Return the lowest fitting address in ``[lo, hi)``, aligned if possible."""
        for gap in self._vmas.gaps(lo, hi):
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
        vmas = self._vmas
        s = hi
        while s > lo:
            gap = vmas.find_gap(s - 1)
            if gap is None:
                seg = vmas.find(s - 1)
                assert seg is not None
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
    # Creating and removing vmas

    async def _create_vma_locked(
        self,
        opts: MMapOpts,
        length: int,
        offset: int,
        addr: int,
        mlock_mode: MLockMode,
        mappable: Mappable | None,
        identity: MappingIdentity | None,
        name: str,
    ) -> tuple[int, int]:
        """Create a vma (gVisor's ``createVMALocked``); return its range.

        Preconditions: the mapping lock is held for writing; the arguments
        passed ``mmap``'s checks.
        """
        try:
            start = self._find_available_locked(
                length,
                addr=addr,
                fixed=opts.fixed,
                unmap=opts.unmap,
                no_replace=opts.no_replace,
                map_32bit=opts.map_32bit,
                private=opts.private,
                grows_down=opts.grows_down,
            )
        except AddressSpaceError:
            if not (opts.force and opts.unmap and opts.fixed):
                raise
            start = addr
        end = start + length
        limit = self._limits.address_space
        if limit is not None:
            usage = self._usage_as + length
            if opts.unmap:
                usage -= self._vmas.span_range(start, end)
            if usage > limit:
                raise _error(_errno.ENOMEM, "mmap")
        if mlock_mode is not MLockMode.NONE:
            memlock = self._limits.memlock
            if memlock is not None:
                if memlock == 0:
                    raise _error(_errno.EPERM, "mmap")
                locked = self._locked_as + length
                if opts.unmap:
                    locked -= self._locked_bytes(start, end)
                if locked > memlock:
                    raise _error(_errno.EAGAIN, "mmap")
        if opts.unmap:
            await _complete(self._unmap_locked(start, end))
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
        self._account_vma(vma, length)
        return start, end

    def _account_vma(self, vma: Vma, n: int) -> None:
        """Add ``n`` bytes of ``vma`` to the counters (negative to remove)."""
        self._usage_as += n
        if vma.is_private_data:
            self._data_as += n
        if vma.mlock_mode is not MLockMode.NONE:
            self._locked_as += n

    def _locked_bytes(self, start: int, end: int) -> int:
        total = 0
        for seg in self._vmas.segments(start, end):
            if seg.value.mlock_mode is not MLockMode.NONE:
                total += min(seg.end, end) - max(seg.start, start)
        return total

    async def _unmap_locked(self, start: int, end: int) -> None:
        """Unmap ``[start, end)`` (gVisor's ``unmapLocked``).

        Drops the pmas first (with private ones), then the vmas, then tells
        each Mappable. The identities go to the dropped list.

        Preconditions: the mapping lock is held for writing.

        Cancellation: only while waiting for the active lock, before anything
        changed; callers that must finish wrap it in :func:`_complete`.
        """
        if self._vmas.is_empty_range(start, end) and self._pmas.is_empty_range(
            start, end
        ):
            return
        async with self._active_lock.write():
            self._invalidate_locked(start, end, True)
        removed = self._vmas.remove_range(start, end)
        for seg in removed:
            vma = seg.value
            self._account_vma(vma, -(seg.end - seg.start))
            if vma.identity is not None:
                self._dropped_ids.append(vma.identity)
        first_error: BaseException | None = None
        for seg in removed:
            vma = seg.value
            if vma.mappable is None:
                continue
            try:
                await _complete(
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

    # ------------------------------------------------------------------
    # mmap / munmap

    async def mmap(self, opts: MMapOpts) -> int:
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
                file offset not page-aligned); ``EOVERFLOW`` (offset + length
                overflows); ``EINVAL`` (unaligned ``addr`` with ``fixed``);
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
        length = _check_addr("mmap", "opts.length", opts.length)
        offset = _check_addr("mmap", "opts.offset", opts.offset)
        addr = _check_addr("mmap", "opts.addr", opts.addr)
        mappable, identity = opts.mappable, opts.mapping_identity
        if (mappable is None) != (identity is None):
            raise TypeError(
                "mmap: opts.mappable and opts.mapping_identity must both be set "
                f"or both be None, got {mappable!r} and {identity!r}"
            )
        self._check_open("mmap")
        if length == 0:
            raise _error(_errno.EINVAL, "mmap: length is 0")
        rounded = _round_up(length)
        if rounded is None:
            raise _error(_errno.ENOMEM, "mmap: length overflows")
        if mappable is not None:
            if offset & PAGE_MASK:
                raise _error(_errno.EINVAL, "mmap: offset not page-aligned")
            if offset + rounded > _U64:
                raise _error(_errno.EOVERFLOW, "mmap: offset + length overflows")
        else:
            offset = 0
        if addr & PAGE_MASK:
            if opts.fixed:
                raise _error(_errno.EINVAL, "mmap: fixed addr not page-aligned")
            addr &= ~PAGE_MASK
        if not opts.max_perms.superset_of(opts.perms):
            raise _error(_errno.EACCES, "mmap: perms exceed max_perms")
        if opts.unmap and not opts.fixed:
            raise _error(_errno.EINVAL, "mmap: unmap without fixed")
        if opts.no_replace and (not opts.fixed or opts.unmap):
            raise _error(_errno.EINVAL, "mmap: no_replace needs fixed without unmap")
        if opts.grows_down and mappable is not None:
            raise _error(_errno.EINVAL, "mmap: grows_down on a file mapping")
        mlock_mode = max(opts.mlock_mode, self._def_mlock_mode)
        creator_ref: SharedMemory | None = None
        if mappable is None and not opts.private:
            try:
                creator_ref = SharedMemory(
                    self._mf, rounded, name="/dev/zero (deleted)"
                )
            except ValueError:
                raise _error(_errno.ENOMEM, "mmap: shared memory too large") from None
            mappable = identity = creator_ref
        try:
            async with self._mapping_write():
                self._check_open("mmap")
                start, end = await self._create_vma_locked(
                    opts,
                    rounded,
                    offset,
                    addr,
                    mlock_mode,
                    mappable,
                    identity,
                    opts.hint,
                )
                populate = (
                    opts.precommit
                    or mlock_mode is MLockMode.EAGER
                    or (
                        opts.mappable is None
                        and opts.private
                        and rounded <= HUGE_PAGE_SIZE
                    )
                )
                if populate and opts.perms.effective().any():
                    try:
                        await self._populate(start, end)
                    except asyncio.CancelledError:
                        await _complete(self._unmap_locked(start, end))
                        raise
        finally:
            if creator_ref is not None:
                await _complete(creator_ref.dec_ref())
        return start

    async def _populate(self, start: int, end: int) -> None:
        """Create pmas for ``[start, end)`` without breaking copy-on-write.

        Errors are ignored (population is best effort). Preconditions: the
        mapping lock is held and ``[start, end)`` is mapped.
        """
        with suppress(BusError, OutOfMemoryError):
            await self._get_pmas(start, end, _NO_ACCESS, _reached_and_error)

    async def munmap(self, addr: int, length: int) -> None:
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
        addr = _check_addr("munmap", "addr", addr)
        length = _check_addr("munmap", "length", length)
        if length == 0 and not addr & PAGE_MASK:
            raise _error(_errno.EINVAL, "munmap: length is 0")
        end = self._page_range("munmap", addr, length, _errno.EINVAL)
        assert end is not None
        async with self._mapping_write():
            self._check_open("munmap")
            await self._unmap_locked(addr, end)

    # ------------------------------------------------------------------
    # mremap

    async def mremap(
        self,
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

        A move carries the cached pages (private data included) to the new
        addresses; a copy (``old_size`` 0, shared mappings) maps the same
        offsets again.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An int argument is outside ``[0, 2**64)``.
            AddressSpaceError: ``EINVAL`` (``old_addr`` unaligned,
                ``new_size`` rounds to 0 or overflows, the old range
                overflows; for ``MUST_MOVE``: ``new_addr`` unaligned,
                overflowing, or overlapping the old range); ``EFAULT`` (no
                mapping at ``old_addr``, or the old range is not one
                mapping); ``EAGAIN`` (``RLIMIT_MEMLOCK``); ``ENOMEM``
                (``NO_MOVE`` cannot grow, no room, ``RLIMIT_AS``).
            Exception: Whatever the Mappable's ``copy_mapping`` raises.
            ClosedError: The space is closed.

        Locking:
            Takes the mapping lock (writing) and the active lock.
        """
        old_addr = _check_addr("mremap", "old_addr", old_addr)
        old_size = _check_addr("mremap", "old_size", old_size)
        new_size = _check_addr("mremap", "new_size", new_size)
        new_addr = _check_addr("mremap", "new_addr", new_addr)
        if type(move) is not MRemapMove:
            raise TypeError(f"mremap: move must be an MRemapMove, got {move!r}")
        self._check_open("mremap")
        if old_addr & PAGE_MASK:
            raise _error(_errno.EINVAL, "mremap: old_addr not page-aligned")
        old_size = (old_size + PAGE_MASK) & ~PAGE_MASK
        if old_size >= _U64:
            old_size = 0
        rounded_new = _round_up(new_size)
        if rounded_new is None or rounded_new == 0:
            raise _error(_errno.EINVAL, "mremap: bad new_size")
        new_size = rounded_new
        old_end = old_addr + old_size
        if old_end > _U64:
            raise _error(_errno.EINVAL, "mremap: old range overflows")
        async with self._mapping_write():
            self._check_open("mremap")
            return await self._mremap_locked(
                old_addr, old_end, new_size, move, new_addr
            )

    async def _mremap_locked(
        self,
        old_addr: int,
        old_end: int,
        new_size: int,
        move: MRemapMove,
        new_addr: int,
    ) -> int:
        old_size = old_end - old_addr
        vseg = self._vmas.find(old_addr)
        if vseg is None:
            raise _error(_errno.EFAULT, "mremap: nothing mapped at old_addr")
        vma = vseg.value
        if new_size > old_size and vma.mlock_mode is not MLockMode.NONE:
            memlock = self._limits.memlock
            if memlock is not None and self._locked_as - old_size + new_size > memlock:
                raise _error(_errno.EAGAIN, "mremap: RLIMIT_MEMLOCK")
        if move is not MRemapMove.MUST_MOVE:
            if new_size <= old_size:
                if new_size < old_size:
                    await _complete(self._unmap_locked(old_addr + new_size, old_end))
                return old_addr
            if vseg.end < old_end:
                raise _error(_errno.EFAULT, "mremap: old range spans mappings")
            grow_error: AddressSpaceError | None = None
            try:
                await self._grow_in_place_locked(vseg, old_end, new_size - old_size)
            except AddressSpaceError as exc:
                if move is MRemapMove.NO_MOVE:
                    raise
                grow_error = exc
            if grow_error is None:
                return old_addr
        if move is MRemapMove.MAY_MOVE:
            start = self._find_available_locked(new_size)
            new_start, new_end = start, start + new_size
        else:
            if new_addr & PAGE_MASK:
                raise _error(_errno.EINVAL, "mremap: new_addr not page-aligned")
            new_start, new_end = new_addr, new_addr + new_size
            if new_end > _U64:
                raise _error(_errno.EINVAL, "mremap: new range overflows")
            if new_start < old_end and old_addr < new_end:
                raise _error(_errno.EINVAL, "mremap: new range overlaps the old")
            self._find_available_locked(
                new_size, addr=new_start, fixed=True, unmap=True
            )
            await _complete(self._unmap_locked(new_start, new_end))
            if new_size < old_size:
                await _complete(self._unmap_locked(old_addr + new_size, old_end))
                old_end = old_addr + new_size
            found = self._vmas.find(old_addr)
            if found is None:
                raise _error(_errno.EFAULT, "mremap: nothing mapped at old_addr")
            vseg = found
        if vseg.end < old_end:
            raise _error(_errno.EFAULT, "mremap: old range spans mappings")
        new_len = new_end - new_start
        old_len = old_end - old_addr
        limit = self._limits.address_space
        if limit is not None and self._usage_as - old_len + new_len > limit:
            raise _error(_errno.ENOMEM, "mremap: RLIMIT_AS")
        vma = vseg.value
        old_offset = vma.offset_at(vseg.start, old_addr)
        if vma.mappable is not None:
            if vma.offset + new_len > _U64:
                raise _error(_errno.EINVAL, "mremap: offset overflows")
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
            self._account_vma(copy, new_len)
            if copy.mlock_mode is MLockMode.EAGER:
                await self._populate(new_start, new_end)
            return new_start
        # Move: the vma keeps its identity reference; pmas move with it.
        piece = self._vmas.isolate(vseg, old_addr, old_end)
        self._vmas.remove(piece)
        moved = piece.value
        self._account_vma(moved, -old_len)
        self._vmas.insert(new_start, new_end, moved)
        self._account_vma(moved, new_len)
        async with self._active_lock.write():
            self._move_pmas_locked(old_addr, old_end, new_start)
        if moved.mappable is not None:
            await _complete(
                moved.mappable.remove_mapping(
                    self,
                    AddrRange(old_addr, old_end),
                    moved.offset,
                    moved.writable_mapping,
                )
            )
        if moved.mlock_mode is MLockMode.EAGER:
            await self._populate(new_start, new_end)
        return new_start

    async def _grow_in_place_locked(
        self, vseg: Segment[Vma], old_end: int, grow: int
    ) -> None:
        vma = vseg.value
        offset = vma.offset_at(vseg.start, old_end) if vma.mappable is not None else 0
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
        start, end = await self._create_vma_locked(
            opts,
            grow,
            offset,
            old_end,
            vma.mlock_mode,
            vma.mappable,
            vma.identity,
            vma.name,
        )
        if vma.mlock_mode is MLockMode.EAGER:
            await self._populate(start, end)

    def _move_pmas_locked(self, old_start: int, old_end: int, new_start: int) -> None:
        """Re-key the pmas of ``[old_start, old_end)`` to start at ``new_start``."""
        pmas = self._pmas
        pmas.split_at(old_start)
        pmas.split_at(old_end)
        moved = pmas.remove_range(old_start, old_end)
        delta = new_start - old_start
        for seg in moved:
            pmas.insert(seg.start + delta, seg.end + delta, seg.value)

    # ------------------------------------------------------------------
    # mprotect

    async def mprotect(
        self, addr: int, length: int, perms: AccessType, *, grows_down: bool = False
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
        addr = _check_addr("mprotect", "addr", addr)
        length = _check_addr("mprotect", "length", length)
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
            vseg = self._vmas.lower_bound_segment(start)
            if vseg is None:
                raise _error(_errno.ENOMEM, "mprotect: nothing mapped")
            if grows_down:
                if not vseg.value.grows_down:
                    raise _error(_errno.EINVAL, "mprotect: mapping does not grow down")
                if end <= vseg.start:
                    raise _error(_errno.ENOMEM, "mprotect: nothing mapped")
                start = vseg.start
            elif start < vseg.start:
                raise _error(_errno.ENOMEM, "mprotect: range not mapped")
            async with self._active_lock.write():
                try:
                    self._mprotect_locked(vseg, start, end, perms, effective)
                finally:
                    for smap in (self._vmas, self._pmas):
                        smap.merge_inside_range(start, end)
                        smap.merge_outside_range(start, end)

    def _mprotect_locked(
        self,
        vseg: Segment[Vma],
        start: int,
        end: int,
        perms: AccessType,
        effective: AccessType,
    ) -> None:
        vmas, pmas = self._vmas, self._pmas
        while True:
            if not vseg.value.max_perms.superset_of(effective):
                raise _error(_errno.EACCES, "mprotect: perms exceed max_perms")
            vseg = vmas.isolate(vseg, max(start, vseg.start), min(end, vseg.end))
            old = vseg.value
            new = old.replace(real_perms=perms)
            n = vseg.end - vseg.start
            if old.is_private_data:
                self._data_as -= n
            if new.is_private_data:
                self._data_as += n
            vseg = vmas.set_value(vseg, new)
            for pseg in list(pmas.segments(vseg.start, vseg.end)):
                pseg = pmas.isolate(pseg, vseg.start, vseg.end)
                pma = pseg.value
                eff = effective.intersect(pma.translate_perms)
                if pma.need_cow and eff.write:
                    eff = AccessType(eff.read, False, eff.execute)
                pmas.set_value(
                    pseg, pma.with_perms(eff, pma.max_perms, need_cow=pma.need_cow)
                )
            if end <= vseg.end:
                return
            nxt = vmas.next_segment(vseg)
            if nxt is None or nxt.start != vseg.end:
                raise _error(_errno.ENOMEM, "mprotect: range not mapped")
            vseg = nxt

    # ------------------------------------------------------------------
    # brk

    async def brk_setup(self, addr: int) -> None:
        """Place an empty program break at ``addr``, unmapping any old heap.

        Raises:
            TypeError: ``addr`` is not an int.
            ValueError: ``addr`` is outside ``[0, 2**64)``.
            ClosedError: The space is closed.
        """
        addr = _check_addr("brk_setup", "addr", addr)
        self._check_open("brk_setup")
        async with self._mapping_write():
            self._check_open("brk_setup")
            if self._brk_end > self._brk_start:
                start = self._brk_start & ~PAGE_MASK
                end = (self._brk_end + PAGE_MASK) & ~PAGE_MASK
                await _complete(self._unmap_locked(start, min(end, _U64)))
            self._brk_start = self._brk_end = addr

    async def brk(self, addr: int) -> int:
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
        addr = _check_addr("brk", "addr", addr)
        self._check_open("brk")
        async with self._mapping_write():
            self._check_open("brk")
            if addr < self._brk_start:
                return self._brk_end
            data_limit = self._limits.data
            if data_limit is not None and addr - self._brk_start > data_limit:
                return self._brk_end
            old_page = (self._brk_end + PAGE_MASK) & ~PAGE_MASK
            new_page = _round_up(addr)
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
                    start, end = await self._create_vma_locked(
                        opts,
                        new_page - old_page,
                        0,
                        old_page,
                        self._def_mlock_mode,
                        None,
                        None,
                        "[heap]",
                    )
                except AddressSpaceError:
                    return self._brk_end
                self._brk_end = addr
                if self._def_mlock_mode is MLockMode.EAGER:
                    await self._populate(start, end)
            else:
                if new_page < old_page:
                    await _complete(self._unmap_locked(new_page, old_page))
                self._brk_end = addr
            return self._brk_end

    # ------------------------------------------------------------------
    # mlock

    async def mlock(
        self, addr: int, length: int, mode: MLockMode = MLockMode.EAGER
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
        addr = _check_addr("mlock", "addr", addr)
        length = _check_addr("mlock", "length", length)
        if type(mode) is not MLockMode:
            raise TypeError(f"mlock: mode must be an MLockMode, got {mode!r}")
        self._check_open("mlock")
        la = length + (addr & PAGE_MASK)
        la = (la + PAGE_MASK) & ~PAGE_MASK
        if la >= _U64:
            la = 0
        start = addr & ~PAGE_MASK
        end = start + la
        if end > _U64:
            raise _error(_errno.EINVAL, "mlock: range overflows")
        async with self._mapping_write():
            self._check_open("mlock")
            if mode is not MLockMode.NONE:
                memlock = self._limits.memlock
                if memlock is not None:
                    if memlock == 0:
                        raise _error(_errno.EPERM, "mlock: RLIMIT_MEMLOCK is 0")
                    locked = self._locked_as + la - self._locked_bytes(start, end)
                    if locked > memlock:
                        raise _error(_errno.ENOMEM, "mlock: RLIMIT_MEMLOCK")
            if la == 0:
                return
            unmapped = self._set_mlock_range(start, end, mode)
            if unmapped:
                raise _error(_errno.ENOMEM, "mlock: range not mapped")
            if mode is MLockMode.EAGER:
                await self._populate_locked_range(start, end)

    def _set_mlock_range(self, start: int, end: int, mode: MLockMode) -> bool:
        """Set the lock mode of vmas in a range; return whether a hole stopped it."""
        vmas = self._vmas
        unmapped = False
        vseg = vmas.find(start)
        while True:
            if vseg is None:
                unmapped = True
                break
            vseg = vmas.isolate(vseg, max(start, vseg.start), min(end, vseg.end))
            self._set_vma_mlock(vseg, mode)
            if end <= vseg.end:
                break
            nxt = vmas.next_segment(vseg)
            vseg = nxt if nxt is not None and nxt.start == vseg.end else None
        vmas.merge_inside_range(start, end)
        vmas.merge_outside_range(start, end)
        return unmapped

    def _set_vma_mlock(self, vseg: Segment[Vma], mode: MLockMode) -> Segment[Vma]:
        old = vseg.value
        n = vseg.end - vseg.start
        if mode is not MLockMode.NONE and old.mlock_mode is MLockMode.NONE:
            self._locked_as += n
        elif mode is MLockMode.NONE and old.mlock_mode is not MLockMode.NONE:
            self._locked_as -= n
        if old.mlock_mode is mode:
            return vseg
        return self._vmas.set_value(vseg, old.replace(mlock_mode=mode))

    async def _populate_locked_range(self, start: int, end: int) -> None:
        """Populate every vma in ``[start, end)`` for ``mlock`` (errors as Linux)."""
        for vseg in list(self._vmas.segments(start, end)):
            if not vseg.value.effective_perms.any():
                raise _error(_errno.ENOMEM, "mlock: mapping without permissions")
            s, e = max(start, vseg.start), min(end, vseg.end)
            try:
                _reached, err = await self._get_pmas(
                    s, e, _NO_ACCESS, _reached_and_error
                )
            except OutOfMemoryError:
                raise _error(_errno.EAGAIN, "mlock: out of memory") from None
            if err is not None:
                raise err

    async def munlock(self, addr: int, length: int) -> None:
        """Unlock ``[addr, addr + length)``: ``mlock`` with ``MLockMode.NONE``."""
        await self.mlock(addr, length, MLockMode.NONE)

    async def mlockall(
        self, mode: MLockMode, *, current: bool = True, future: bool = False
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
            raise _error(_errno.EINVAL, "mlockall: neither current nor future")
        async with self._mapping_write():
            self._check_open("mlockall")
            if current:
                memlock = self._limits.memlock
                if mode is not MLockMode.NONE and memlock is not None:
                    if memlock == 0:
                        raise _error(_errno.EPERM, "mlockall: RLIMIT_MEMLOCK is 0")
                    if self._vmas.span() > memlock:
                        raise _error(_errno.ENOMEM, "mlockall: RLIMIT_MEMLOCK")
                for vseg in list(self._vmas):
                    current_seg = self._vmas.find(vseg.start)
                    if current_seg is not None:
                        self._set_vma_mlock(current_seg, mode)
                self._vmas.merge_all()
            if future:
                self._def_mlock_mode = mode
            if current and mode is MLockMode.EAGER:
                for vseg in list(self._vmas):
                    if vseg.value.effective_perms.any():
                        await self._populate(vseg.start, vseg.end)

    async def munlockall(self) -> None:
        """Unlock every mapping, now and for later mappings."""
        await self.mlockall(MLockMode.NONE, current=True, future=True)

    # ------------------------------------------------------------------
    # msync

    async def msync(
        self, addr: int, length: int, *, invalidate: bool = False, sync: bool = True
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
        addr = _check_addr("msync", "addr", addr)
        length = _check_addr("msync", "length", length)
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
            vseg = self._vmas.lower_bound_segment(start)
            if vseg is None:
                raise _error(_errno.ENOMEM, "msync: nothing mapped")
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
                    raise _error(_errno.EBUSY, "msync: invalidating locked memory")
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
                        await _complete(ident.dec_ref())
                    if last_end >= end:
                        break
                    await lock.acquire_read()
                    locked = True
                    self._check_open("msync")
                    vseg = self._vmas.lower_bound_segment(last_end)
                else:
                    if last_end >= end:
                        break
                    vseg = self._vmas.next_segment(vseg)
        finally:
            if locked:
                lock.release_read()
        if unmapped:
            raise _error(_errno.ENOMEM, "msync: range not mapped")

    # ------------------------------------------------------------------
    # madvise

    async def madvise(self, addr: int, length: int, advice: Advice) -> None:
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
        addr = _check_addr("madvise", "addr", addr)
        length = _check_addr("madvise", "length", length)
        if type(advice) is not Advice:
            raise TypeError(f"madvise: advice must be an Advice, got {advice!r}")
        range_end = self._page_range("madvise", addr, length, _errno.EINVAL)
        if range_end is None:
            return
        start, end = addr, range_end
        if advice is Advice.DONTNEED:
            await self._dontneed(start, end)
        elif advice in (Advice.DONTFORK, Advice.DOFORK):
            dontfork = advice is Advice.DONTFORK
            async with self._mapping_write():
                self._check_open("madvise")
                hole = self._vmas.first_hole(start, end) is not None
                for vseg in list(self._vmas.segments(start, end)):
                    cur = self._vmas.find(max(start, vseg.start))
                    if cur is None or cur.value.dontfork == dontfork:
                        continue
                    cur = self._vmas.isolate(
                        cur, max(start, cur.start), min(end, cur.end)
                    )
                    self._vmas.set_value(cur, cur.value.replace(dontfork=dontfork))
                self._vmas.merge_inside_range(start, end)
                self._vmas.merge_outside_range(start, end)
                if hole:
                    raise _error(_errno.ENOMEM, "madvise: range not mapped")
        else:
            await self._advise_mappables(start, end, advice)

    async def _dontneed(self, start: int, end: int) -> None:
        async with self._mapping_lock.read():
            self._check_open("madvise")
            vseg = self._vmas.lower_bound_segment(start)
            if vseg is None or vseg.start >= end:
                raise _error(_errno.ENOMEM, "madvise: nothing mapped")
            hole = start < vseg.start
            async with self._active_lock.write():
                while vseg is not None and vseg.start < end:
                    if vseg.value.mlock_mode is not MLockMode.NONE:
                        raise _error(
                            _errno.EINVAL, "madvise: DONTNEED on locked memory"
                        )
                    s, e = max(start, vseg.start), min(end, vseg.end)
                    self._invalidate_locked(s, e, True)
                    if end <= vseg.end:
                        break
                    nxt = self._vmas.next_segment(vseg)
                    if nxt is None or nxt.start != vseg.end:
                        hole = True
                    vseg = nxt
                else:
                    hole = True
            if hole:
                raise _error(_errno.ENOMEM, "madvise: range not mapped")

    async def _advise_mappables(self, start: int, end: int, advice: Advice) -> None:
        targets: list[tuple[Mappable, MappingIdentity, MappableRange]] = []
        async with self._mapping_lock.read():
            self._check_open("madvise")
            hole = self._vmas.first_hole(start, end) is not None
            for vseg in self._vmas.segments(start, end):
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
            await _complete(_release_identities([t[1] for t in targets]))
        if hole:
            raise _error(_errno.ENOMEM, "madvise: range not mapped")

    # ------------------------------------------------------------------
    # Getting pmas

    def _pma_blocks(self, seg: Segment[Pma]) -> BlockSeq:
        """Return (and cache) the pma's pages mapped into this process."""
        pma = seg.value
        blocks = pma.blocks
        if blocks is None:
            at = _READ_WRITE if pma.max_perms.write else _READ
            blocks = pma.file.map_internal(
                FileRange(pma.offset, pma.offset + (seg.end - seg.start)), at
            )
            pma.blocks = blocks
        return blocks

    async def _get_pmas(
        self,
        start: int,
        end: int,
        at: AccessType,
        use: Callable[[int, BaseException | None], _T],
    ) -> _T:
        """Make pmas cover ``[start, end)`` for ``at``, then call ``use`` on them.

        gVisor's ``getPMAsLocked``, with one change: the active lock is not
        held while a Mappable's ``translate`` is awaited, so faults on
        different pages (and their fetches) proceed concurrently. A
        translation that an invalidation overlapped while it was in flight
        is thrown away and asked for again.

        ``use(reached, err)`` runs with the active lock held for writing,
        right after the pmas of ``[start, reached)`` were checked, without
        awaiting in between; ``reached < end`` only with ``err`` saying why.

        Preconditions: the mapping lock is held (either mode), the active
        lock is not; ``[start, end)`` is page-aligned and wholly mapped by
        vmas that allow ``at``.

        Raises:
            OutOfMemoryError: The memory file is full (nothing is lost).
        """
        lock = self._active_lock
        limit, limit_err = end, None
        while True:
            await lock.acquire_write()
            try:
                need = self._ensure_pmas(start, limit, at)
                if need is None:
                    return use(limit, limit_err)
                log_pos = self._begin_translate()
            finally:
                lock.release_write()
            try:
                new, err = await self._translate(need)
            except BaseException:
                self._end_translate(log_pos, need.opt_start, need.opt_end)
                raise
            try:
                await lock.acquire_write()
            except BaseException:
                self._end_translate(log_pos, need.opt_start, need.opt_end)
                raise
            try:
                # Only the translated range matters (the whole optional range
                # if the Mappable gave nothing, to retry after a truncation).
                t_start = new[0][0] if new else need.opt_start
                t_end = new[-1][1] if new else need.opt_end
                stale = self._end_translate(log_pos, t_start, t_end)
                if not stale:
                    self._install(need, new)
                    if err is not None:
                        reached = new[-1][1] if new else need.req_start
                        if reached < need.req_end:
                            limit = max(reached, need.req_start)
                            limit_err = _as_bus_error(err)
            finally:
                lock.release_write()

    def _begin_translate(self) -> int:
        self._translates_in_flight += 1
        return len(self._invalidation_log)

    def _end_translate(self, log_pos: int, start: int, end: int) -> bool:
        """Finish an in-flight translate; return whether an invalidation hit it."""
        log = self._invalidation_log
        stale = any(s < end and start < e for s, e in log[log_pos:])
        self._translates_in_flight -= 1
        if self._translates_in_flight == 0:
            log.clear()
        return stale

    def _ensure_pmas(
        self, start: int, end: int, at: AccessType
    ) -> _TranslateNeed | None:
        """Do what needs no awaiting to make pmas cover ``[start, end)`` for ``at``.

        Allocates anonymous memory and breaks copy-on-write. Returns the
        first translation still needed, or ``None`` when the range is done.

        Preconditions: the mapping lock and the active lock (writing) are
        held.
        """
        vmas, pmas = self._vmas, self._pmas
        addr = start
        while addr < end:
            vseg = vmas.find(addr)
            assert vseg is not None, f"no vma at {addr:#x}"
            vend = min(vseg.end, end)
            vma = vseg.value
            while addr < vend:
                pseg = pmas.find(addr)
                if pseg is None:
                    gap = pmas.find_gap(addr)
                    assert gap is not None
                    opt_start = max(gap.start, vseg.start)
                    opt_end = min(gap.end, vseg.end)
                    if vma.mappable is None:
                        self._allocate_anonymous(
                            vma,
                            max(opt_start, _huge_down(start)),
                            min(opt_end, _huge_up(end)),
                        )
                        continue
                    if vma.private:
                        perms = _READ_EXECUTE if at.execute else _READ
                    else:
                        perms = at
                    return _TranslateNeed(
                        vseg, addr, min(opt_end, end), opt_start, opt_end, perms, False
                    )
                pma = pseg.value
                if at.write and pma.need_cow:
                    if pma.private and self._mf.has_unique_ref(
                        FileRange(pma.offset, pma.offset + (pseg.end - pseg.start))
                    ):
                        self._take_over(pseg, vma)
                    else:
                        self._break_cow(pseg, vseg, start, end)
                    continue
                if not pma.translate_perms.superset_of(at):
                    o_start, o_end = (
                        max(pseg.start, vseg.start),
                        min(pseg.end, vseg.end),
                    )
                    return _TranslateNeed(
                        vseg,
                        max(o_start, start),
                        min(o_end, end),
                        o_start,
                        o_end,
                        pma.translate_perms.union(at),
                        True,
                    )
                addr = min(pseg.end, vend)
        return None

    def _install(
        self, need: _TranslateNeed, new: list[tuple[int, int, Pma, FileRange]]
    ) -> None:
        """Insert translated pmas where the ranges are still free.

        For an upgrade (more permissions for an existing translation), shared
        pmas in the way are replaced; private pmas (the space's own copies)
        always stay. Each installed piece takes its own page reference.
        """
        pmas = self._pmas
        for a0, a1, pma, fr in new:
            if need.upgrade:
                for seg in list(pmas.segments(a0, a1)):
                    if not seg.value.private:
                        self._remove_pma(pmas.isolate(seg, a0, a1))
            for gap in list(pmas.gaps(a0, a1)):
                g0, g1 = max(gap.start, a0), min(gap.end, a1)
                if g0 == a0 and g1 == a1:
                    piece, piece_fr = pma, fr
                else:
                    off = pma.offset + (g0 - a0)
                    piece_fr = FileRange(off, off + (g1 - g0))
                    piece = Pma(
                        pma.file,
                        off,
                        pma.translate_perms,
                        pma.effective_perms,
                        pma.max_perms,
                        need_cow=pma.need_cow,
                        private=False,
                        fr=piece_fr,
                    )
                pma.file.inc_ref(piece_fr)
                self._insert_pma(g0, g1, piece)

    def _insert_pma(self, start: int, end: int, pma: Pma) -> None:
        self._pmas.insert(start, end, pma)
        self._rss += end - start
        if self._rss > self._max_rss:
            self._max_rss = self._rss

    def _allocate_anonymous(self, vma: Vma, start: int, end: int) -> None:
        fr = self._mf.allocate(end - start, kind=MemoryKind.ANONYMOUS)
        self._insert_pma(
            start,
            end,
            Pma(
                self._mf,
                fr.start,
                _ANY,
                vma.effective_perms,
                vma.max_perms,
                need_cow=False,
                private=True,
                fr=fr,
            ),
        )

    def _pma_for_translation(
        self, vma: Vma, perms: AccessType, file: File, fr: FileRange
    ) -> Pma:
        eff = vma.effective_perms.intersect(perms)
        mx = vma.max_perms.intersect(perms)
        if vma.private:
            eff = AccessType(eff.read, False, eff.execute)
            mx = AccessType(mx.read, False, mx.execute)
        return Pma(
            file, fr.start, perms, eff, mx, need_cow=vma.private, private=False, fr=fr
        )

    async def _translate(
        self, need: _TranslateNeed
    ) -> tuple[list[tuple[int, int, Pma, FileRange]], BaseException | None]:
        """Ask the vma's Mappable to translate; return the new pmas (not inserted)."""
        vseg = need.vseg
        vma = vseg.value
        mappable = vma.mappable
        assert mappable is not None
        base = vseg.start
        required = MappableRange(
            vma.offset_at(base, need.req_start), vma.offset_at(base, need.req_end)
        )
        optional = MappableRange(
            vma.offset_at(base, need.opt_start), vma.offset_at(base, need.opt_end)
        )
        perms = need.perms
        translations, err = await mappable.translate(required, optional, perms)
        if is_debug():
            problem = check_translate_result(
                required, optional, perms, translations, err
            )
            if problem is not None:
                raise AssertionError(
                    f"{mappable!r}.translate broke its contract: {problem}"
                )
        out = []
        for t in translations:
            a0 = base + (t.source.start - vma.offset)
            a1 = a0 + t.source.length
            fr = t.file_range()
            out.append(
                (a0, a1, self._pma_for_translation(vma, t.perms, t.file, fr), fr)
            )
        if err is None and not out:
            err = BusError(RuntimeError("translate returned nothing"))
        return out, err

    def _take_over(self, pseg: Segment[Pma], vma: Vma) -> None:
        """Make a private copy-on-write pma writable: the space owns its pages."""
        pma = pseg.value
        pseg = self._pmas.set_value(
            pseg, pma.with_perms(vma.effective_perms, vma.max_perms, need_cow=False)
        )
        self._pmas.merge_next(self._pmas.merge_prev(pseg))

    def _break_cow(
        self, pseg: Segment[Pma], vseg: Segment[Vma], start: int, end: int
    ) -> None:
        """Copy a copy-on-write pma's pages around ``[start, end)`` and use the copy."""
        vma = vseg.value
        if vma.effective_perms.execute:
            c_start, c_end = start, end
        elif vma.grows_down:
            c_start, c_end = max(start - PAGE_SIZE, 0), min(end + PAGE_SIZE, _U64)
        else:
            c_start, c_end = _huge_down(start), _huge_up(end)
        c_start = max(c_start, pseg.start, vseg.start)
        c_end = min(c_end, pseg.end, vseg.end)
        pseg = self._pmas.isolate(pseg, c_start, c_end)
        old = pseg.value
        n = c_end - c_start
        src = self._pma_blocks(pseg)
        fr = self._mf.allocate(n, kind=MemoryKind.ANONYMOUS)
        dst = self._mf.map_internal(fr, _READ_WRITE)
        copy_seq(dst, src)
        new = Pma(
            self._mf,
            fr.start,
            _ANY,
            vma.effective_perms,
            vma.max_perms,
            need_cow=False,
            private=True,
            blocks=dst if vma.max_perms.write else None,
        )
        pseg = self._pmas.set_value(pseg, new)
        old.file.dec_ref(FileRange(old.offset, old.offset + n))
        self._cow_copies += n // PAGE_SIZE
        self._pmas.merge_next(self._pmas.merge_prev(pseg))

    # ------------------------------------------------------------------
    # Faults

    async def handle_fault(self, addr: int, at: AccessType) -> None:
        """Make the page at ``addr`` accessible for ``at``, as a page fault does.

        Resident pages with the right permissions return at once. Otherwise
        the page is allocated (anonymous memory, in a 2 MiB-aligned window),
        translated by the Mappable (which may fetch more, up to the whole
        unmapped part of the vma), or copied (a write to a copy-on-write
        page).

        Args:
            addr: Any address in the page.
            at: The access that faulted.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``addr`` is outside ``[0, 2**64)``.
            MemoryFault: ``EFAULT`` (nothing mapped at ``addr``) or ``EPERM``
                (the mapping does not allow ``at``): a guest's ``SIGSEGV``.
            BusError: The Mappable could not provide the page: ``SIGBUS``.
            OutOfMemoryError: The memory file is full.
            ClosedError: The space is closed.

        Locking:
            Resident pages: none. Otherwise the mapping lock (reading) and the
            active lock (writing).

        Cancellation:
            Safe at every await; pmas made before it stay valid.
        """
        if type(at) is not AccessType:
            raise TypeError(f"handle_fault: at must be an AccessType, got {at!r}")
        if type(addr) is not int:
            addr = _check_addr("handle_fault", "addr", addr)
        elif not 0 <= addr < _U64:
            raise ValueError(f"handle_fault: addr must be in [0, 2**64), got {addr:#x}")
        if not self._active_lock.write_locked() and not self._closed:
            seg = self._pmas.find(addr)
            if seg is not None and seg.value.effective_perms.superset_of(at):
                self._faults += 1
                return
        await self._fault_slow(addr, at)

    async def _fault_slow(self, addr: int, at: AccessType) -> None:
        self._check_open("handle_fault")
        start = addr & ~PAGE_MASK
        end = start + PAGE_SIZE
        async with self._mapping_lock.read():
            self._check_open("handle_fault")
            vseg = self._vmas.find(addr)
            if vseg is None:
                raise MemoryFault(
                    _errno.EFAULT, f"handle_fault: nothing mapped at {addr:#x}"
                )
            if not vseg.value.effective_perms.superset_of(at):
                raise MemoryFault(
                    _errno.EPERM,
                    f"handle_fault: {at} access to {addr:#x} not allowed "
                    f"({vseg.value.effective_perms})",
                )
            self._faults += 1
            _reached, err = await self._get_pmas(start, end, at, _reached_and_error)
        if err is not None:
            raise err

    # ------------------------------------------------------------------
    # Copies

    def _check_io(self, what: str, addr: object, length: object) -> tuple[int, int]:
        if type(addr) is not int:
            addr = _check_addr(what, "addr", addr)
        if type(length) is not int:
            length = _check_addr(what, "length", length)
        if addr < 0:
            raise ValueError(f"{what}: addr must be in [0, 2**64), got {addr:#x}")
        if length < 0:
            raise ValueError(f"{what}: length must not be negative, got {length}")
        end = addr + length
        if end > self._layout.max_addr:
            raise MemoryFault(
                _errno.EFAULT,
                f"{what}: [{addr:#x}, {end:#x}) is beyond the address space",
            )
        return addr, end

    def _resident_view(
        self, addr: int, end: int, write: bool, ignore_permissions: bool
    ) -> memoryview | None:
        """Return a view of ``[addr, end)`` if one usable resident pma covers it."""
        if self._active_lock.write_locked() or self._closed:
            return None
        seg = self._pmas.find(addr)
        if seg is None or seg.end < end:
            return None
        pma = seg.value
        perms = pma.max_perms if ignore_permissions else pma.effective_perms
        if not (perms.write if write else perms.read):
            return None
        view = pma.view
        if view is None:
            blocks = self._pma_blocks(seg)
            if len(blocks) != 1:
                return None
            view = pma.view = blocks[0]
        off = addr - seg.start
        return view[off : off + (end - addr)]

    async def copy_in(
        self, addr: int, length: int, *, ignore_permissions: bool = False
    ) -> bytes:
        """Read ``length`` bytes of guest memory at ``addr``.

        Pages are faulted in as needed (never breaking copy-on-write).

        Args:
            addr: The first address.
            length: How many bytes.
            ignore_permissions: Use the mappings' ``max_perms`` instead of
                their current permissions (like ``PTRACE_PEEKDATA``).

        Returns:
            The bytes.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``addr`` or ``length`` is negative.
            MemoryFault: ``EFAULT``: the range reaches past the layout's
                ``max_addr`` (nothing read), or a part of it is not mapped or
                not readable; ``.bytes_done`` bytes were read and are in
                ``.data``.
            BusError: A Mappable failed; ``.bytes_done``/``.data`` as above.
            ClosedError: The space is closed.

        Locking:
            Resident pages: none. Otherwise the mapping lock (reading) and
            the active lock (writing).
        """
        if (
            type(addr) is int
            and type(length) is int
            and addr >= 0
            and length > 0
            and not self._active_lock.write_locked()
        ):
            # The resident fast path: one lookup and one slice copy.
            seg = self._pmas.find(addr)
            end = addr + length
            if seg is not None and end <= seg.end and end <= self._layout.max_addr:
                pma = seg.value
                view = pma.view
                if (
                    view is not None
                    and not self._closed
                    and (
                        pma.max_perms if ignore_permissions else pma.effective_perms
                    ).read
                ):
                    off = addr - seg.start
                    return bytes(view[off : off + length])
        addr, end = self._check_io("copy_in", addr, length)
        if addr == end:
            return b""
        view = self._resident_view(addr, end, False, ignore_permissions)
        if view is not None:
            return bytes(view)
        out = bytearray()

        def read(blocks: BlockSeq) -> None:
            for b in blocks:
                out.extend(b)

        try:
            await self._io(addr, end, _READ, ignore_permissions, read, "copy_in")
        except (MemoryFault, BusError) as exc:
            exc.data = bytes(out)
            raise
        return bytes(out)

    async def copy_out(
        self,
        addr: int,
        data: bytes | bytearray | memoryview,
        *,
        ignore_permissions: bool = False,
    ) -> int:
        """Write ``data`` into guest memory at ``addr``; return ``len(data)``.

        Writing a copy-on-write page copies it first.

        Args:
            addr: The first address.
            data: The bytes to write (any C-contiguous buffer).
            ignore_permissions: Use the mappings' ``max_perms`` (like
                ``PTRACE_POKEDATA``); still cannot write a shared mapping
                whose ``max_perms`` lack write.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``addr`` is negative.
            MemoryFault: ``EFAULT`` as for :meth:`copy_in`; ``.bytes_done``
                bytes were written.
            BusError: A Mappable failed; ``.bytes_done`` as above.
            ClosedError: The space is closed.

        Locking:
            As :meth:`copy_in`.
        """
        try:
            src = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(
                f"copy_out: data must be a bytes-like object, got {type(data).__name__}"
            ) from None
        addr, end = self._check_io("copy_out", addr, len(src))
        if addr == end:
            return 0
        view = self._resident_view(addr, end, True, ignore_permissions)
        if view is not None:
            view[:] = src
            return end - addr
        pos = 0

        def write(blocks: BlockSeq) -> None:
            nonlocal pos
            for b in blocks:
                n = len(b)
                b[:] = src[pos : pos + n]
                pos += n

        await self._io(addr, end, _WRITE, ignore_permissions, write, "copy_out")
        return end - addr

    async def zero_out(
        self, addr: int, length: int, *, ignore_permissions: bool = False
    ) -> int:
        """Write ``length`` zero bytes at ``addr``; return ``length``.

        Raises:
            As :meth:`copy_out`.
        """
        addr, end = self._check_io("zero_out", addr, length)
        if addr == end:
            return 0

        def zero(blocks: BlockSeq) -> None:
            for b in blocks:
                n = len(b)
                pos = 0
                while pos < n:
                    k = min(n - pos, len(_ZEROS))
                    b[pos : pos + k] = _ZEROS[:k]
                    pos += k

        await self._io(addr, end, _WRITE, ignore_permissions, zero, "zero_out")
        return end - addr

    async def _io(
        self,
        addr: int,
        end: int,
        at: AccessType,
        ignore_permissions: bool,
        fn: Callable[[BlockSeq], None],
        what: str,
    ) -> None:
        """Fault in ``[addr, end)`` as far as possible and apply ``fn`` to it.

        ``fn`` gets the pages in order (possibly in several calls) for the
        longest usable prefix; then an error is raised for the rest, with
        ``bytes_done`` set.
        """
        self._check_open(what)
        done = 0
        error: BaseException | None = None
        async with self._mapping_lock.read():
            self._check_open(what)
            vend, verr = self._covered_prefix(addr, end, at, ignore_permissions)
            if vend > addr:
                p_start = addr & ~PAGE_MASK
                p_end = min((vend + PAGE_MASK) & ~PAGE_MASK, _U64)
                self._faults += 1

                def use(reached: int, perr: BaseException | None) -> int:
                    limit = min(reached, vend)
                    done = self._apply(addr, limit, fn, at, ignore_permissions)
                    if limit < end:
                        nonlocal error
                        error = perr if perr is not None else verr
                    return done

                try:
                    done = await self._get_pmas(p_start, p_end, at, use)
                except OutOfMemoryError as exc:
                    error = exc
            else:
                error = verr
        if done < end - addr:
            if not isinstance(error, BusError):
                error = MemoryFault(
                    _errno.EFAULT, f"{what}: {addr + done:#x} is not accessible"
                )
            error.bytes_done = done
            raise error

    def _covered_prefix(
        self, start: int, end: int, at: AccessType, ignore_permissions: bool
    ) -> tuple[int, MemoryFault | None]:
        """Return how far vmas allowing ``at`` cover ``[start, end)``, and why."""
        addr = start
        vmas = self._vmas
        while addr < end:
            seg = vmas.find(addr)
            if seg is None:
                return addr, MemoryFault(_errno.EFAULT)
            perms = (
                seg.value.max_perms if ignore_permissions else seg.value.effective_perms
            )
            if not perms.superset_of(at):
                return addr, MemoryFault(_errno.EPERM)
            addr = seg.end
        return end, None

    def _apply(
        self,
        addr: int,
        end: int,
        fn: Callable[[BlockSeq], None],
        at: AccessType,
        ignore_permissions: bool,
    ) -> int:
        """Apply ``fn`` to the pages of ``[addr, end)``; return the bytes done."""
        pos = addr
        while pos < end:
            seg = self._pmas.find(pos)
            if seg is None:
                break
            pma = seg.value
            perms = pma.max_perms if ignore_permissions else pma.effective_perms
            if not perms.superset_of(at):
                break
            blocks = self._pma_blocks(seg)
            stop = min(seg.end, end)
            fn(blocks.drop_first(pos - seg.start).take_first(stop - pos))
            pos = stop
        return pos - addr

    # ------------------------------------------------------------------
    # fork

    async def fork(self) -> AddressSpace:
        """Return a copy of this space, as ``fork(2)`` makes for a child.

        Private memory is shared copy-on-write (written pages are copied on
        the first write by either side, or taken over by the last holder);
        shared mappings map the same Mappable offsets; ``DONTFORK`` mappings
        are left out; locks (``mlock``) are not inherited. Invalidations
        that arrive while the child is being built are applied to it after.

        Returns:
            The child, which shares this space's memory file; close it too.

        Raises:
            Exception: Whatever a Mappable's ``add_mapping`` raises; the
                child is closed again then.
            ClosedError: The space is closed.

        Locking:
            Takes the mapping lock (reading), then this space's active lock
            and the child's active lock (nested).

        Cancellation:
            The partly built child is closed, then ``CancelledError`` is
            raised.
        """
        self._check_open("fork")
        async with self._mapping_lock.read():
            self._check_open("fork")
            if self._owned is not None:
                self._owned.users += 1
                child = AddressSpace(self._mf, layout=self._layout, limits=self._limits)
                child._owned = self._owned
            else:
                child = AddressSpace(self._mf, layout=self._layout, limits=self._limits)
            child._capture = []
            try:
                await self._fork_into(child)
            except BaseException:
                child._capture = None
                await _complete(child.aclose())
                raise
            finally:
                # Vmas that merge in the child (their lock modes were reset)
                # gave up identity references.
                dropped, child._dropped_ids = child._dropped_ids, []
        if dropped:
            await _complete(_release_identities(dropped))
        return child

    async def _fork_into(self, child: AddressSpace) -> None:
        child._brk_start, child._brk_end = self._brk_start, self._brk_end
        copied: list[tuple[int, int]] = []
        for vseg in list(self._vmas):
            vma = vseg.value
            if vma.dontfork:
                continue
            copy = vma.replace(mlock_mode=MLockMode.NONE)
            if vma.mappable is not None:
                await vma.mappable.add_mapping(
                    child,
                    AddrRange(vseg.start, vseg.end),
                    vma.offset,
                    vma.writable_mapping,
                )
            if vma.identity is not None:
                vma.identity.inc_ref()
            child._vmas.insert(vseg.start, vseg.end, copy)
            child._account_vma(copy, vseg.end - vseg.start)
            copied.append((vseg.start, vseg.end))
        async with self._active_lock.write(), child._active_lock.write(nested=True):
            for start, end in copied:
                self._share_private_pmas(child, start, end)
            captured, child._capture = child._capture, None
            for start, end, private in captured or ():
                child._invalidate_locked(start, end, private)

    def _share_private_pmas(self, child: AddressSpace, start: int, end: int) -> None:
        pmas = self._pmas
        for pseg in list(pmas.segments(start, end)):
            if not pseg.value.private:
                continue
            pseg = pmas.isolate(pseg, max(start, pseg.start), min(end, pseg.end))
            pma = pseg.value
            eff, mx = pma.effective_perms, pma.max_perms
            ro_eff = AccessType(eff.read, False, eff.execute)
            ro_max = AccessType(mx.read, False, mx.execute)
            shared = pma.with_perms(ro_eff, ro_max, need_cow=True)
            pmas.set_value(pseg, shared)
            n = pseg.end - pseg.start
            self._mf.inc_ref(FileRange(pma.offset, pma.offset + n))
            child._insert_pma(
                pseg.start, pseg.end, shared.with_perms(ro_eff, ro_max, need_cow=True)
            )
        pmas.merge_inside_range(start, end)
        pmas.merge_outside_range(start, end)


def _reached_and_error(
    reached: int, err: BaseException | None
) -> tuple[int, BaseException | None]:
    return reached, err


def _as_bus_error(err: BaseException) -> BaseException:
    if isinstance(err, (BusError, OutOfMemoryError)):
        return err
    return BusError(err)


async def _release_identities(ids: list[MappingIdentity]) -> None:
    """Drop one reference on each identity, all of them even if some fail."""
    first: BaseException | None = None
    for ident in ids:
        try:
            await ident.dec_ref()
        except Exception as exc:  # the rest must still be dropped
            if first is None:
                first = exc
    if first is not None:
        raise first
