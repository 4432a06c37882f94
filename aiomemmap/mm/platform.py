"""The platform seam: where an address space's pmas meet the host.

An :class:`~aiomemmap.AddressSpace` keeps its translations (pmas) for
itself; a real guest also needs them in a host address space, so that its
loads and stores reach the same pages without asking the space. That host
side is a :class:`Platform` (gVisor's ``platform.AddressSpace``): the space
maps every pma it installs into it, and unmaps every pma it removes, always
while it still holds the pma's page reference. The platform's mappings are
therefore, at every moment the space's active lock is free, exactly its pmas:
the same addresses, file pages and effective permissions.

The default, :class:`NoPlatform`, has no host address space and does
nothing.
"""

from __future__ import annotations

from typing import Protocol, final, runtime_checkable

from aiomemmap._core.access import AccessType
from aiomemmap._core.ranges import FileRange
from aiomemmap.memmap.interfaces import File

__all__ = ["NoPlatform", "Platform"]


@runtime_checkable
class Platform(Protocol):
    """A host address space that mirrors one address space's pmas.

    The address space calls these methods with its active lock held for
    writing, while it changes its pmas; they are plain functions and must not
    wait. They must not raise either: the space cannot undo a change half
    made, so an exception propagates out of the operation that made the call
    and leaves the two out of step.

    Order (as in gVisor's ``mapASLocked``/``unmapASLocked``):

    * a pma is mapped with :meth:`map_file` after the space took its page
      reference;
    * a pma is unmapped with :meth:`unmap` before the space drops its page
      reference, so the host never maps a page that may be freed or reused;
    * a pma whose permissions change is mapped again over itself.

    Concurrency:
        Task-compatible: the address space serialises calls under its active
        lock.
    """

    def map_file(self, addr: int, file: File, fr: FileRange, at: AccessType) -> None:
        """Map the pages ``fr`` of ``file`` at ``addr`` for the accesses ``at``.

        Whatever was mapped in ``[addr, addr + fr.length)`` is replaced (like
        ``mmap`` with ``MAP_FIXED``).

        Args:
            addr: The page-aligned address of the first page.
            file: The file holding the pages.
            fr: The non-empty, page-aligned pages; the address space holds a
                reference on each until it unmaps them.
            at: The accesses the mapping allows; ``NO_ACCESS`` reserves the
                pages without allowing any access.
        """
        ...

    def unmap(self, addr: int, length: int) -> None:
        """Remove the mappings in ``[addr, addr + length)``.

        Args:
            addr: The page-aligned start.
            length: The positive, page-aligned length.
        """
        ...

    def fork(self) -> Platform:
        """Return an empty platform for a child of the address space.

        The child maps its own pmas into it, starting with the ones it
        shares copy-on-write with its parent.
        """
        ...

    def release(self) -> None:
        """Give the host address space up; the space will not call again.

        Called once the address space is closed, after it unmapped
        everything.
        """
        ...


@final
class NoPlatform:
    """The platform of an address space that only the space itself reads.

    Every method does nothing (and :meth:`fork` returns another
    ``NoPlatform``).

    Concurrency:
        Immutable.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NoPlatform()"

    def map_file(self, addr: int, file: File, fr: FileRange, at: AccessType) -> None:
        """Do nothing (see :meth:`Platform.map_file`)."""

    def unmap(self, addr: int, length: int) -> None:
        """Do nothing (see :meth:`Platform.unmap`)."""

    def fork(self) -> NoPlatform:
        """Return another ``NoPlatform``."""
        return NoPlatform()

    def release(self) -> None:
        """Do nothing (see :meth:`Platform.release`)."""
