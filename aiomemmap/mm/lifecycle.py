"""The life of an address space: forking a child, and closing.

:func:`fork` and :func:`aclose` are methods of
:class:`~aiomemmap.AddressSpace` (gVisor's ``lifecycle.go``), defined here
and bound to the class. A space that made its own memory file shares it
with its forks through an :class:`OwnedMemoryFile`; the last of them to
close closes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.ranges import AddrRange
from aiomemmap.memmap.interfaces import MLockMode
from aiomemmap.mm.args import U64
from aiomemmap.mm.io import interrupt_faults
from aiomemmap.mm.syscalls import unmap_locked
from aiomemmap.mm.vma import release_identities
from aiomemmap.pgalloc.memory_file import MemoryFile

if TYPE_CHECKING:
    from aiomemmap.mm.address_space import AddressSpace

__all__ = ["OwnedMemoryFile", "aclose", "fork"]


@final
class OwnedMemoryFile:
    """A memory file an address space made, shared with its forks.

    Attributes:
        mf: The memory file.
        users: How many open spaces use it.

    Concurrency:
        Task-compatible: used by the spaces of one event loop.
    """

    __slots__ = ("mf", "users")

    def __init__(self, mf: MemoryFile) -> None:
        self.mf = mf
        self.users = 1


async def aclose(self: AddressSpace) -> None:
    """Unmap everything and return every reference the space holds.

    Afterwards every method but :meth:`aclose`, :meth:`maps`,
    :meth:`statistics` and :meth:`check_invariants` raises
    :class:`~aiomemmap.ClosedError`. Closing twice is a no-op.

    Postconditions:
        No pma or vma is left; every page reference and identity
        reference is returned; every Mappable was told of the removal;
        the platform has unmapped everything and is released; a memory
        file the space made is closed with its last user.

    Faults and copies in flight are not waited for: those waiting for a
    Mappable (a fetch from storage that may never answer) are interrupted
    first and raise :class:`~aiomemmap.BusError` wrapping
    :class:`~aiomemmap.ClosedError`, so closing takes bounded time
    whatever the backings do. What they started (fetches) carries on and
    belongs to the Mappables, which their own ``aclose`` stops.

    Locking:
        Interrupts the faults holding the mapping lock for reading (see
        :mod:`aiomemmap.mm.io`), then takes the mapping lock (writing),
        then the active lock.

    Cancellation:
        Once the mapping lock is held, closing finishes before the
        cancellation is delivered.
    """
    if self._closed:
        return
    # Before waiting for the lock: faults arriving later queue behind it.
    interrupt_faults(self, closing=True)
    async with self._mapping_write():
        if self._is_closed():
            return
        await finish_shielded(unmap_locked(self, 0, U64))
        self._closed = True
        self._brk_start = self._brk_end = 0
        self._pmas.platform.release()
    owned = self._owned
    if owned is not None:
        self._owned = None
        owned.users -= 1
        if owned.users == 0:
            owned.mf.close()


async def fork(self: AddressSpace) -> AddressSpace:
    """Return a copy of this space, as ``fork(2)`` makes for a child.

    Private memory is shared copy-on-write (written pages are copied on
    the first write by either side, or taken over by the last holder);
    shared mappings map the same Mappable offsets; ``DONTFORK`` mappings
    are left out; locks (``mlock``) are not inherited. Invalidations
    that arrive while the child is being built are applied to it after.
    The child belongs to the same bus, and maps its pmas into the
    platform this space's platform forks.

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
        child = type(self)(
            self._mf,
            layout=self._layout,
            limits=self._limits,
            platform=self._pmas.platform.fork(),
            bus=self._bus,
        )
        if self._owned is not None:
            self._owned.users += 1
            child._owned = self._owned
        child._capture = []
        try:
            await _fork_into(self, child)
        except BaseException:
            child._capture = None
            await finish_shielded(child.aclose())
            raise
        finally:
            # Vmas that merge in the child (their lock modes were reset)
            # gave up identity references.
            dropped, child._vmas.dropped = child._vmas.dropped, []
    if dropped:
        await finish_shielded(release_identities(dropped))
    return child


async def _fork_into(self: AddressSpace, child: AddressSpace) -> None:
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
        copied.append((vseg.start, vseg.end))
    pmas, child_pmas = self._pmas, child._pmas
    async with pmas.lock.write(), child_pmas.lock.write(nested=True):
        for start, end in copied:
            pmas.share_private(child_pmas, start, end)
        captured, child._capture = child._capture, None
        for start, end, private in captured or ():
            child_pmas.invalidate_locked(start, end, private)
