"""Adaptive fault-around: how many pages one fault installs.

A fault installs a chunk of pages around the faulting one. On a sequential
scan each chunk starts where the previous one ended, and the chunk doubles
(up to the maximum) so the scan takes few faults; a fault elsewhere halves it
(down to the minimum, one page) so random touches do not install, and fetch,
many pages nobody reads. Chunks never leave the region.
"""

from __future__ import annotations

from typing import Final, final

from aiomemmap._core.pages import PAGE_SIZE

__all__ = [
    "DEFAULT_FAULT_AROUND",
    "MAX_FAULT_AROUND",
    "MIN_FAULT_AROUND",
    "FaultAround",
]

DEFAULT_FAULT_AROUND: Final = 64 * 1024
MAX_FAULT_AROUND: Final = 1024 * 1024
MIN_FAULT_AROUND: Final = PAGE_SIZE


def _check(name: str, value: int) -> None:
    if type(value) is not int or value < PAGE_SIZE or value & (value - 1):
        raise ValueError(
            f"FaultAround: {name} must be a power of two of at least {PAGE_SIZE}, "
            f"got {value!r}"
        )


@final
class FaultAround:
    """The chunk policy of one region.

    Args:
        length: The region's length (page-aligned).
        initial: The first chunk size (a power of two, at least a page).
        minimum: The smallest chunk, for random access.
        maximum: The largest chunk, for sequential access.

    Raises:
        ValueError: A size is not a power of two of at least a page, or
            ``minimum <= initial <= maximum`` does not hold.

    Concurrency:
        Task-compatible: one region's faults, on one loop.
    """

    __slots__ = ("_length", "_max", "_min", "_next", "_size")

    def __init__(
        self,
        length: int,
        *,
        initial: int = DEFAULT_FAULT_AROUND,
        minimum: int = MIN_FAULT_AROUND,
        maximum: int = MAX_FAULT_AROUND,
    ) -> None:
        for name, value in (
            ("initial", initial),
            ("minimum", minimum),
            ("maximum", maximum),
        ):
            _check(name, value)
        if not minimum <= initial <= maximum:
            raise ValueError(
                f"FaultAround: need minimum <= initial <= maximum, got "
                f"{minimum}, {initial}, {maximum}"
            )
        self._length = length
        self._size = initial
        self._min = minimum
        self._max = maximum
        self._next = -1

    @property
    def size(self) -> int:
        """The chunk size the next non-sequential fault gets."""
        return self._size

    def chunk(self, offset: int) -> tuple[int, int]:
        """Return the chunk ``[start, end)`` to install for a fault at ``offset``.

        Args:
            offset: The faulting offset in the region, ``0 <= offset < length``.

        Returns:
            Page-aligned offsets with ``start <= offset < end <= length``.
        """
        page = offset - offset % PAGE_SIZE
        if page == self._next:
            self._size = min(self._size * 2, self._max)
            start = page
        else:
            if self._next >= 0:
                self._size = max(self._size // 2, self._min)
            start = offset - offset % self._size
        end = min(start + self._size, self._length)
        self._next = end
        return start, end
