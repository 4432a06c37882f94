"""Checking the arguments of an address space's syscalls, and their errors.

The syscall-like methods of :class:`~aiomemmap.AddressSpace` check their
ints here (``TypeError`` for a wrong type, ``ValueError`` outside the 64-bit
range) and raise :class:`~aiomemmap.AddressSpaceError` with Linux's
``errno`` through :func:`syscall_error`.
"""

from __future__ import annotations

import operator
import os

from aiomemmap._core.errors import AddressSpaceError
from aiomemmap._core.pages import ADDR_LIMIT, HUGE_PAGE_MASK, PAGE_MASK, is_int

__all__ = [
    "FILE_END_MAX",
    "U64",
    "check_addr",
    "huge_round_down",
    "huge_round_up",
    "round_up",
    "syscall_error",
]

U64 = ADDR_LIMIT
"""One past the largest 64-bit value: the end of every address range."""

FILE_END_MAX = (1 << 63) - 1
"""The farthest a file mapping may reach: its offset plus its rounded length.

Files hold at most ``2**63 - 1`` bytes (Linux's ``MAX_LFS_FILESIZE``,
gVisor's ``math.MaxInt64``), so a mapping past that is ``EOVERFLOW``.
"""


def syscall_error(err: int, what: str) -> AddressSpaceError:
    """Return the error a syscall raises for ``err``, its message led by ``what``."""
    return AddressSpaceError(err, f"{what}: {os.strerror(err)}")


def round_up(n: int) -> int | None:
    """Round ``n`` up to a page; ``None`` if that leaves the 64-bit range."""
    r = (n + PAGE_MASK) & ~PAGE_MASK
    return r if r < U64 else None


def huge_round_down(n: int) -> int:
    """Round ``n`` down to a huge page."""
    return n & ~HUGE_PAGE_MASK


def huge_round_up(n: int) -> int:
    """Round ``n`` up to a huge page, at most to :data:`U64`."""
    return min((n + HUGE_PAGE_MASK) & ~HUGE_PAGE_MASK, U64)


def check_addr(what: str, name: str, value: object) -> int:
    """Return ``value`` as an int in ``[0, 2**64)``.

    Args:
        what: The syscall, for the message.
        name: The argument, for the message.
        value: The argument.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is outside ``[0, 2**64)``.
    """
    if not is_int(value):
        raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    v = operator.index(value)  # type: ignore[arg-type]
    if not 0 <= v < U64:
        raise ValueError(f"{what}: {name} must be in [0, 2**64), got {v:#x}")
    return v
