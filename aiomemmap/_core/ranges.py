"""Half-open ranges of addresses, Mappable offsets and file offsets.

There is one range type per kind of number, as in gVisor: :class:`AddrRange`
for virtual addresses, :class:`MappableRange` for offsets into a Mappable and
:class:`FileRange` for offsets into a host file. Mixing kinds is a
``TypeError``; equality across kinds is simply ``False``.

The gVisor quirks are kept on purpose:

* the intersection of disjoint ranges is the empty range at the larger start;
* an empty range strictly inside another overlaps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self, final

from aiomemmap._core.pages import ADDR_LIMIT, PAGE_MASK, is_int

__all__ = ["AddrRange", "FileRange", "MappableRange"]


@dataclass(frozen=True, slots=True, order=True, repr=False)
class _Range:
    """The shared behaviour of the three range kinds.

    Invariants:
        ``0 <= start <= end <= 2**64``.

    Concurrency:
        Immutable.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        start, end = self.start, self.end
        if type(start) is not int or type(end) is not int:
            for name, v in (("start", start), ("end", end)):
                if not is_int(v):
                    raise TypeError(
                        f"{type(self).__name__}: {name} must be an int, got {v!r}"
                    )
            object.__setattr__(self, "start", int(start))
            object.__setattr__(self, "end", int(end))
            start, end = self.start, self.end
        if not 0 <= start <= end <= ADDR_LIMIT:
            raise ValueError(
                f"{type(self).__name__}: need 0 <= start <= end <= 2**64, "
                f"got start={start:#x}, end={end:#x}"
            )

    @property
    def length(self) -> int:
        """The number of values in the range, ``end - start``."""
        return self.end - self.start

    def well_formed(self) -> bool:
        """Return whether ``start <= end`` (always true for a constructed range)."""
        return self.start <= self.end

    def contains(self, x: int) -> bool:
        """Return whether ``start <= x < end``."""
        return self.start <= x < self.end

    def overlaps(self, r: Self) -> bool:
        """Return whether the two ranges share a value.

        An empty range strictly inside another counts as overlapping it, as
        in gVisor.

        Raises:
            TypeError: ``r`` is a range of another kind.
        """
        self._check_kind(r)
        return self.start < r.end and r.start < self.end

    def is_superset_of(self, r: Self) -> bool:
        """Return whether every value of ``r`` lies in this range.

        Raises:
            TypeError: ``r`` is a range of another kind.
        """
        self._check_kind(r)
        return self.start <= r.start and self.end >= r.end

    def intersect(self, r: Self) -> Self:
        """Return the values common to both ranges.

        If they are disjoint the result is the empty range at the larger
        start, as in gVisor.

        Raises:
            TypeError: ``r`` is a range of another kind.
        """
        self._check_kind(r)
        start = max(self.start, r.start)
        end = max(min(self.end, r.end), start)
        return type(self)(start, end)

    def can_split_at(self, x: int) -> bool:
        """Return whether ``start < x < end``."""
        return self.start < x < self.end

    def is_page_aligned(self) -> bool:
        """Return whether both ends are multiples of ``PAGE_SIZE``."""
        return (self.start | self.end) & PAGE_MASK == 0

    def _check_kind(self, r: object) -> None:
        if type(r) is not type(self):
            raise TypeError(
                f"cannot combine {type(self).__name__} with {type(r).__name__}: {r!r}"
            )

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.start:#x}, {self.end:#x})"


@final
@dataclass(frozen=True, slots=True, order=True, repr=False)
class AddrRange(_Range):
    """A half-open range ``[start, end)`` of virtual addresses.

    Raises:
        TypeError: ``start`` or ``end`` is not an int.
        ValueError: Unless ``0 <= start <= end <= 2**64``.
    """


@final
@dataclass(frozen=True, slots=True, order=True, repr=False)
class MappableRange(_Range):
    """A half-open range ``[start, end)`` of offsets into a Mappable.

    Raises:
        TypeError: ``start`` or ``end`` is not an int.
        ValueError: Unless ``0 <= start <= end <= 2**64``.
    """


@final
@dataclass(frozen=True, slots=True, order=True, repr=False)
class FileRange(_Range):
    """A half-open range ``[start, end)`` of offsets into a host file.

    Raises:
        TypeError: ``start`` or ``end`` is not an int.
        ValueError: Unless ``0 <= start <= end <= 2**64``.
    """
