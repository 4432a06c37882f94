"""The host calls behind a memory file: memfd, hole punching, chunk mappings.

Everything the package asks of the host kernel about its memory file goes
through these functions, so that the rest of the code speaks in pages and
ranges and one module knows the system calls. Only the standard library is
used: ``os`` and ``mmap`` where they have the call, ``ctypes`` where they do
not (``fallocate`` with ``FALLOC_FL_PUNCH_HOLE``, which ``os.posix_fallocate``
cannot express).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable
from typing import Final, TypeAlias, cast

__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FallocateFn",
    "fallocate",
    "find_fallocate",
    "map_shared",
    "memfd_create",
    "punch_hole",
    "resize",
]

FALLOC_FL_KEEP_SIZE: Final[int] = 0x01
"""``fallocate`` mode bit: do not change the file size."""

FALLOC_FL_PUNCH_HOLE: Final[int] = 0x02
"""``fallocate`` mode bit: deallocate the range (requires ``KEEP_SIZE``)."""

_PROT_RW: Final[int] = mmap.PROT_READ | mmap.PROT_WRITE

FallocateFn: TypeAlias = Callable[[int, int, int, int], int]
"""The C signature ``int fallocate(int fd, int mode, off_t offset, off_t len)``."""


def find_fallocate(lib: object) -> FallocateFn | None:
    """Return the ``fallocate`` function of a loaded C library, or ``None``.

    The 64-bit-offset variant is preferred where the library has both.

    Args:
        lib: A ``ctypes`` library handle (anything with the symbols as
            attributes).
    """
    for symbol in ("fallocate64", "fallocate"):
        fn = getattr(lib, symbol, None)
        if fn is not None:
            fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            fn.restype = ctypes.c_int
            return cast(FallocateFn, fn)
    return None


fallocate: FallocateFn | None = find_fallocate(ctypes.CDLL(None, use_errno=True))
"""The C library's ``fallocate``, or ``None`` if it has none."""


def memfd_create(name: str) -> int:
    """Create an anonymous memory-backed file, close-on-exec; return its descriptor.

    Args:
        name: The name shown as ``/memfd:<name>`` in ``/proc/<pid>/maps``.

    Raises:
        OSError: The host refused.
    """
    return os.memfd_create(name, os.MFD_CLOEXEC)


def resize(fd: int, size: int) -> None:
    """Set the size of the file ``fd`` to ``size`` bytes (``ftruncate``).

    Raises:
        OSError: The host refused.
    """
    os.ftruncate(fd, size)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the pages of ``[offset, offset + length)`` of ``fd`` back to the host.

    Uses ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``: the file
    keeps its size, the range reads as zero afterwards through every mapping,
    and it no longer takes memory.

    Raises:
        OSError: The host refused, or the C library has no ``fallocate``.
    """
    fn = fallocate
    if fn is None:
        raise OSError(errno.ENOSYS, "the C library has no fallocate()")
    if fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


def map_shared(fd: int, offset: int, length: int) -> mmap.mmap:
    """Map ``[offset, offset + length)`` of ``fd`` read/write and shared.

    Raises:
        OSError: The host refused the mapping.
    """
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=_PROT_RW, offset=offset)
