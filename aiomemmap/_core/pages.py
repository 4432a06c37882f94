"""Page sizes and page rounding.

All quantities are unsigned 64-bit values, as addresses and offsets are in the
kernel. Ranges may end at ``2**64`` (:data:`ADDR_LIMIT`), the first value past
the 64-bit space, so rounding accepts it as an input; a rounded result must
still fit in 64 bits.
"""

from __future__ import annotations

import mmap
from typing import Final

__all__ = [
    "ADDR_LIMIT",
    "HUGE_PAGE_MASK",
    "HUGE_PAGE_SIZE",
    "PAGE_MASK",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "huge_page_round_down",
    "huge_page_round_up",
    "is_huge_page_aligned",
    "is_int",
    "is_page_aligned",
    "page_round_down",
    "page_round_up",
]

PAGE_SIZE: Final[int] = mmap.PAGESIZE
"""The host's page size in bytes (4096 on x86-64)."""

HUGE_PAGE_SIZE: Final[int] = 2 * 1024 * 1024
"""The size of a transparent huge page in bytes (2 MiB)."""

ADDR_LIMIT: Final[int] = 1 << 64
"""One past the largest 64-bit value; the largest possible range end."""

PAGE_MASK: Final[int] = PAGE_SIZE - 1
"""The bits of an address below the page size: ``x & PAGE_MASK`` is the offset
within its page."""

PAGE_SHIFT: Final[int] = PAGE_SIZE.bit_length() - 1
"""``log2(PAGE_SIZE)``: ``x >> PAGE_SHIFT`` is the number of the page holding ``x``."""

HUGE_PAGE_MASK: Final[int] = HUGE_PAGE_SIZE - 1
"""The bits of an address below the huge page size."""


def is_int(x: object) -> bool:
    """Return whether ``x`` is an int and not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _check_value(name: str, x: object) -> int:
    if type(x) is not int:
        if isinstance(x, int) and not isinstance(x, bool):
            return _check_value(name, int(x))
        raise TypeError(f"{name} must be an int, got {x!r}")
    if x < 0 or x > ADDR_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**64], got {x:#x}")
    return x


def page_round_down(x: int) -> int:
    """Return ``x`` rounded down to a multiple of :data:`PAGE_SIZE`.

    Args:
        x: A value in ``[0, 2**64]``.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
    """
    return _check_value("x", x) & ~PAGE_MASK


def page_round_up(x: int) -> int:
    """Return ``x`` rounded up to a multiple of :data:`PAGE_SIZE`.

    Args:
        x: A value in ``[0, 2**64]``.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
        OverflowError: The result would not fit in 64 bits.
    """
    r = (_check_value("x", x) + PAGE_MASK) & ~PAGE_MASK
    if r >= ADDR_LIMIT:
        raise OverflowError(f"rounding {x:#x} up to a page does not fit in 64 bits")
    return r


def is_page_aligned(x: int) -> bool:
    """Return whether ``x`` is a multiple of :data:`PAGE_SIZE`.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
    """
    return _check_value("x", x) & PAGE_MASK == 0


def huge_page_round_down(x: int) -> int:
    """Return ``x`` rounded down to a multiple of :data:`HUGE_PAGE_SIZE`.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
    """
    return _check_value("x", x) & ~HUGE_PAGE_MASK


def huge_page_round_up(x: int) -> int:
    """Return ``x`` rounded up to a multiple of :data:`HUGE_PAGE_SIZE`.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
        OverflowError: The result would not fit in 64 bits.
    """
    r = (_check_value("x", x) + HUGE_PAGE_MASK) & ~HUGE_PAGE_MASK
    if r >= ADDR_LIMIT:
        raise OverflowError(
            f"rounding {x:#x} up to a huge page does not fit in 64 bits"
        )
    return r


def is_huge_page_aligned(x: int) -> bool:
    """Return whether ``x`` is a multiple of :data:`HUGE_PAGE_SIZE`.

    Raises:
        TypeError: ``x`` is not an int.
        ValueError: ``x`` is negative or above ``2**64``.
    """
    return _check_value("x", x) & HUGE_PAGE_MASK == 0
