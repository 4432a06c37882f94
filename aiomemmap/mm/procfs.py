"""``/proc/pid/maps``: the mappings of an address space as text.

:func:`maps` is a method of :class:`~aiomemmap.AddressSpace` (gVisor's
``procfs.go``), defined here and bound to the class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiomemmap.mm.address_space import AddressSpace

__all__ = ["maps"]

# The line /proc/pid/maps always ends with on x86-64.
_VSYSCALL_LINE = (
    "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0"
    + " " * 18
    + "[vsyscall]\n"
)
# The path column of a maps line starts after this many characters.
_MAPS_PATH_COLUMN = 73


def maps(self: AddressSpace) -> str:
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
