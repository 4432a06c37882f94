"""Access types: which of read, write and execute an access or mapping allows."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import ClassVar, final

from aiomemmap._core.pages import is_int

__all__ = ["AccessType"]

_PROT_MASK = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC


@final
@dataclass(frozen=True, slots=True)
class AccessType:
    """A set of access permissions: read, write and execute.

    The class constants ``NO_ACCESS``, ``READ``, ``WRITE``, ``EXECUTE``,
    ``READ_WRITE``, ``READ_EXECUTE`` and ``ANY`` name the common sets.
    ``str()`` is always three characters, such as ``rw-`` or ``r-x``.

    Raises:
        TypeError: A flag is not a ``bool``.

    Concurrency:
        Immutable.
    """

    read: bool = False
    write: bool = False
    execute: bool = False

    NO_ACCESS: ClassVar[AccessType]
    READ: ClassVar[AccessType]
    WRITE: ClassVar[AccessType]
    EXECUTE: ClassVar[AccessType]
    READ_WRITE: ClassVar[AccessType]
    READ_EXECUTE: ClassVar[AccessType]
    ANY: ClassVar[AccessType]

    def __post_init__(self) -> None:
        for name in ("read", "write", "execute"):
            v = getattr(self, name)
            if type(v) is not bool:
                raise TypeError(f"AccessType: {name} must be a bool, got {v!r}")

    @classmethod
    def from_prot(cls, prot: int) -> AccessType:
        """Return the access type of a ``mmap.PROT_*`` mask.

        Raises:
            TypeError: ``prot`` is not an int.
            ValueError: ``prot`` has bits other than ``PROT_READ``,
                ``PROT_WRITE`` and ``PROT_EXEC``.
        """
        if not is_int(prot):
            raise TypeError(f"prot must be an int, got {prot!r}")
        if prot & ~_PROT_MASK or prot < 0:
            raise ValueError(f"prot has unknown bits: {prot:#x}")
        return _BY_PROT[prot]

    def effective(self) -> AccessType:
        """Return the permissions a mapping really has on the host.

        Write or execute permission implies read, as in Linux's protection
        map: ``-w-`` becomes ``rw-`` and ``--x`` becomes ``r-x``.
        """
        if (self.write or self.execute) and not self.read:
            return AccessType(True, self.write, self.execute)
        return self

    def superset_of(self, other: AccessType) -> bool:
        """Return whether every access ``other`` allows is also allowed here."""
        return not (
            (other.read and not self.read)
            or (other.write and not self.write)
            or (other.execute and not self.execute)
        )

    def intersect(self, other: AccessType) -> AccessType:
        """Return the accesses allowed by both."""
        return AccessType(
            self.read and other.read,
            self.write and other.write,
            self.execute and other.execute,
        )

    def union(self, other: AccessType) -> AccessType:
        """Return the accesses allowed by either."""
        return AccessType(
            self.read or other.read,
            self.write or other.write,
            self.execute or other.execute,
        )

    def any(self) -> bool:
        """Return whether any access is allowed."""
        return self.read or self.write or self.execute

    def prot(self) -> int:
        """Return the ``mmap.PROT_*`` mask of these permissions."""
        p = 0
        if self.read:
            p |= mmap.PROT_READ
        if self.write:
            p |= mmap.PROT_WRITE
        if self.execute:
            p |= mmap.PROT_EXEC
        return p

    def __str__(self) -> str:
        return (
            ("r" if self.read else "-")
            + ("w" if self.write else "-")
            + ("x" if self.execute else "-")
        )

    def __repr__(self) -> str:
        return f"AccessType({self})"


AccessType.NO_ACCESS = AccessType()
AccessType.READ = AccessType(read=True)
AccessType.WRITE = AccessType(write=True)
AccessType.EXECUTE = AccessType(execute=True)
AccessType.READ_WRITE = AccessType(read=True, write=True)
AccessType.READ_EXECUTE = AccessType(read=True, execute=True)
AccessType.ANY = AccessType(read=True, write=True, execute=True)

_BY_PROT = {
    p: AccessType(
        bool(p & mmap.PROT_READ), bool(p & mmap.PROT_WRITE), bool(p & mmap.PROT_EXEC)
    )
    for p in range(_PROT_MASK + 1)
    if not p & ~_PROT_MASK
}
