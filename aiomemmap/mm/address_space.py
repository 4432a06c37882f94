"""A guest address space: mappings, faults, copies and fork, as Linux does them.

:class:`AddressSpace` is gVisor's ``MemoryManager`` made async. It is a
composition along gVisor's seams:

* the **vma map** (:class:`~aiomemmap.mm.vma.VmaMap`): what the application
  mapped, where, and with which permissions (changed by ``mmap``,
  ``munmap``, ``mremap``, ``mprotect``, ``brk``, ``mlock``, ``madvise``),
  with the accounting and placement;
* the **pma cache** (:class:`~aiomemmap.mm.pma.PmaCache`): translations
  cached from faults and copies: which pages of which file back which
  addresses. Each holds one page reference on its file range;
* the **platform** (:class:`~aiomemmap.mm.platform.Platform`): the host
  address space every pma is mirrored into;
* the methods, by concern: the syscalls (:mod:`aiomemmap.mm.syscalls`,
  :mod:`aiomemmap.mm.mremap`), faults and copies (:mod:`aiomemmap.mm.io`),
  fork and close (:mod:`aiomemmap.mm.lifecycle`) and ``maps()``
  (:mod:`aiomemmap.mm.procfs`), each defined in its module and bound to
  the class here.

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
* the **active lock** (``LockRank.ACTIVE``, reader/writer, owned by the pma
  cache) guards the pmas, the resident-set counters and the platform: held
  for writing while pmas are created or dropped. :meth:`invalidate` takes
  only this lock. Unlike gVisor, it is *not* held while
  ``Mappable.translate`` is awaited (a fetch may take milliseconds):
  invalidations that arrive meanwhile are recorded, and a translation one of
  them overlaps is discarded and asked for again.

Faults and copies whose pages are all resident take neither lock: with no
writer holding the active lock, pmas are consistent, and the copy finishes
without awaiting, so no other task can interleave. One helper,
:meth:`~aiomemmap.mm.pma.PmaCache.resident`, decides this for all of them.

Teardown follows gVisor: pmas are invalidated before
``Mappable.remove_mapping`` is called, each pma is unmapped from the
platform before its pages are released, and identities given up under the
mapping lock are released (``MappingIdentity.dec_ref``) only once it is
unlocked.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import final

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import ClosedError, InvariantError
from aiomemmap._core.locks import LockRank, OrderedRWLock
from aiomemmap._core.pages import PAGE_MASK
from aiomemmap._core.ranges import AddrRange
from aiomemmap.memmap.bus import InvalidationBus, default_bus
from aiomemmap.memmap.interfaces import InvalidateOpts, MappingIdentity, MLockMode
from aiomemmap.mm import io as _io
from aiomemmap.mm import lifecycle as _lifecycle
from aiomemmap.mm import mremap as _mremap
from aiomemmap.mm import procfs as _procfs
from aiomemmap.mm import syscalls as _syscalls
from aiomemmap.mm.args import U64, round_up, syscall_error
from aiomemmap.mm.lifecycle import OwnedMemoryFile
from aiomemmap.mm.options import AddressSpaceStatistics, Layout, Limits
from aiomemmap.mm.platform import NoPlatform, Platform
from aiomemmap.mm.pma import PmaCache
from aiomemmap.mm.vma import VmaMap, release_identities
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = ["AddressSpace"]


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
        platform: The host address space that mirrors the space's pmas; see
            :class:`~aiomemmap.mm.platform.Platform`. ``None`` means none
            (:class:`~aiomemmap.mm.platform.NoPlatform`). The space releases
            it when closed.
        bus: The invalidation bus the space belongs to: the shared memory it
            makes for shared anonymous mappings publishes on it, and its
            forks belong to it too. ``None`` means the default bus (of the
            event loop running at each use).

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

    Invariants:
        A closed space has no vma and no pma (so the lock-free resident
        path never finds one).

    Locking:
        See the module docstring. Every method must be called from tasks of
        one event loop.

    Cancellation:
        Cancelling a method leaves the space consistent: steps that cannot be
        undone (removing a mapping from its Mappable, releasing references)
        finish first, then ``CancelledError`` is raised.
    """

    __slots__ = (
        "_brk_end",
        "_brk_start",
        "_bus",
        "_capture",
        "_closed",
        "_def_mlock_mode",
        "_faults",
        "_faults_in_flight",
        "_layout",
        "_limits",
        "_mapping_lock",
        "_mf",
        "_owned",
        "_pmas",
        "_vmas",
    )

    def __init__(
        self,
        memory_file: MemoryFile | None = None,
        *,
        layout: Layout | None = None,
        limits: Limits | None = None,
        platform: Platform | None = None,
        bus: InvalidationBus | None = None,
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
        if platform is not None and not isinstance(platform, Platform):
            raise TypeError(
                f"AddressSpace: platform must be a Platform or None, got {platform!r}"
            )
        if bus is not None and not isinstance(bus, InvalidationBus):
            raise TypeError(
                f"AddressSpace: bus must be an InvalidationBus or None, got {bus!r}"
            )
        if memory_file is not None and memory_file.closed:
            raise ClosedError(f"AddressSpace: memory_file {memory_file!r} is closed")
        self._owned: OwnedMemoryFile | None = None
        if memory_file is None:
            self._owned = OwnedMemoryFile(MemoryFile("aiomemmap-address-space"))
            memory_file = self._owned.mf
        self._mf = memory_file
        self._layout = layout if layout is not None else Layout()
        self._limits = limits if limits is not None else Limits()
        # None: the default bus of the loop running at each use.
        self._bus = bus
        self._mapping_lock = OrderedRWLock(LockRank.MAPPING, "AddressSpace.mapping")
        self._vmas = VmaMap(self._layout, self._limits)
        self._pmas = PmaCache(
            memory_file, platform if platform is not None else NoPlatform()
        )
        self._faults = 0
        # Slow-path faults and copies waiting for a Mappable under the
        # mapping lock (mm.io's in-flight records), which a writer of the
        # mapping lock or aclose() interrupts.
        self._faults_in_flight: set[_io.InFlight] = set()
        self._brk_start = 0
        self._brk_end = 0
        self._def_mlock_mode = MLockMode.NONE
        # While a fork builds this space: invalidations to apply afterwards.
        self._capture: list[tuple[int, int, bool]] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"vmas={len(self._vmas)}"
        return (
            f"<AddressSpace {state} usage_as={self._vmas.usage_as:#x} "
            f"rss={self._pmas.rss:#x}>"
        )

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
    def platform(self) -> Platform:
        """The platform mirroring the space's pmas."""
        return self._pmas.platform

    @property
    def bus(self) -> InvalidationBus:
        """The invalidation bus the space belongs to.

        For a space created without a bus, the default bus of the running
        event loop.

        Raises:
            RuntimeError: The space was created without a bus and no event
                loop is running in the calling thread.
        """
        bus = self._bus
        return bus if bus is not None else default_bus()

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

    aclose = _lifecycle.aclose
    fork = _lifecycle.fork

    # ------------------------------------------------------------------
    # The syscalls

    mmap = _syscalls.mmap
    munmap = _syscalls.munmap
    mremap = _mremap.mremap
    mprotect = _syscalls.mprotect
    brk_setup = _syscalls.brk_setup
    brk = _syscalls.brk
    mlock = _syscalls.mlock
    munlock = _syscalls.munlock
    mlockall = _syscalls.mlockall
    munlockall = _syscalls.munlockall
    msync = _syscalls.msync
    madvise = _syscalls.madvise

    # ------------------------------------------------------------------
    # Faults and copies

    handle_fault = _io.handle_fault
    copy_in = _io.copy_in
    copy_out = _io.copy_out
    zero_out = _io.zero_out

    # ------------------------------------------------------------------
    # /proc/pid/maps

    maps = _procfs.maps

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
        pmas = self._pmas
        lock = pmas.lock
        if not lock.locked() and not is_debug():
            # Nobody holds the lock and nothing below awaits: the work is
            # atomic, exactly as if the lock had been taken and released.
            pmas.invalidate_locked(start, end, private)
            return
        await lock.acquire_write()
        try:
            capture = self._capture_list()
            if capture is not None:
                capture.append((start, end, private))
            else:
                pmas.invalidate_locked(start, end, private)
        finally:
            lock.release_write()

    def _capture_list(self) -> list[tuple[int, int, bool]] | None:
        return self._capture

    # ------------------------------------------------------------------
    # Statistics and checks

    def statistics(self) -> AddressSpaceStatistics:
        """Return a snapshot of the accounting (see :class:`AddressSpaceStatistics`)."""
        vmas, pmas = self._vmas, self._pmas
        return AddressSpaceStatistics(
            usage_as=vmas.usage_as,
            data_as=vmas.data_as,
            locked_as=vmas.locked_as,
            rss=pmas.rss,
            max_rss=pmas.max_rss,
            vmas=len(vmas),
            pmas=len(pmas),
            faults=self._faults,
            cow_copies=pmas.cow_copies,
        )

    def check_invariants(self) -> None:
        """Check the vmas, pmas and counters against each other.

        Raises:
            InvariantError: An invariant does not hold; the message says which.
        """
        self._vmas.check_invariants()
        self._pmas.check_invariants(self._vmas)
        if self._closed and (len(self._vmas) or len(self._pmas)):
            raise InvariantError(
                f"closed space keeps {len(self._vmas)} vmas and {len(self._pmas)} pmas"
            )

    # ------------------------------------------------------------------
    # Shared by the methods

    def _is_closed(self) -> bool:
        # A method, so that checks after an await are not narrowed away.
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: the address space is closed")

    def _page_range(
        self, what: str, addr: int, length: int, overflow_errno: int
    ) -> int | None:
        """Check a syscall's ``[addr, addr + length)``; return its rounded end.

        Returns ``None`` for a zero length. Raises ``EINVAL`` for an unaligned
        ``addr`` and ``overflow_errno`` when the rounded range overflows.
        """
        self._check_open(what)
        if addr & PAGE_MASK:
            raise syscall_error(errno.EINVAL, f"{what}: addr not page-aligned")
        if length == 0:
            return None
        rounded = round_up(length)
        if rounded is None or addr + rounded > U64:
            raise syscall_error(overflow_errno, f"{what}: range overflows")
        return addr + rounded

    @asynccontextmanager
    async def _mapping_write(self) -> AsyncIterator[None]:
        """Hold the mapping lock for writing; release dropped identities after."""
        # A fault waiting for its Mappable under the mapping lock would keep
        # this writer out for as long as the Mappable takes (forever, if its
        # storage hung): have it let go and start over after the writer, as
        # a Linux fault drops mmap_lock and retries.
        _io.interrupt_faults(self, closing=False)
        await self._mapping_lock.acquire_write()
        dropped: list[MappingIdentity] = []
        self._vmas.dropped = dropped
        try:
            yield
        finally:
            self._vmas.dropped = []
            self._mapping_lock.release_write()
            if dropped:
                await finish_shielded(release_identities(dropped))
