"""Where sequences run, and the file they map: shared by both sides.

The window is a stretch of address space far from anything a Python process
maps (16 TiB up, below where the kernel places mappings by itself), fenced
on the real side by a one-page shared ``PROT_NONE`` guard on each side, so
that nothing grows or moves out of it unnoticed. Operations address it by
offset.

The file is a memory file (``memfd_create``) on the real side and a
:class:`~aiomemmap.SharedMemory` on ours: both have tmpfs semantics. Its size
is not a multiple of the page size, so its last page is partly past the end
and the pages after it are beyond it.
"""

from __future__ import annotations

__all__ = [
    "FILE_NAME",
    "FILE_SIZE",
    "MEMFD_NAME",
    "SHARED_ANON_NAME",
    "WINDOW_BASE",
    "WINDOW_PAGES",
    "WINDOW_SIZE",
    "P",
    "file_contents",
]

P = 4096
WINDOW_BASE = 0x1000_0000_0000
WINDOW_PAGES = 16
WINDOW_SIZE = WINDOW_PAGES * P
FILE_SIZE = 6 * P + 1234
MEMFD_NAME = "aiomemmap-oracle"
# What /proc/pid/maps shows for the memory file.
FILE_NAME = f"/memfd:{MEMFD_NAME} (deleted)"
# What /proc/pid/maps shows for shared anonymous memory.
SHARED_ANON_NAME = "/dev/zero (deleted)"


def file_contents() -> bytes:
    """Return what the file holds at the start of every sequence."""
    return bytes((i * 13 + i // P) % 256 for i in range(FILE_SIZE))
