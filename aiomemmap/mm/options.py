"""The option and result records of an address space.

:class:`Limits` are the resource limits an :class:`~aiomemmap.AddressSpace`
enforces (``RLIMIT_AS``, ``RLIMIT_DATA``, ``RLIMIT_MEMLOCK``,
``RLIMIT_STACK``); :class:`Layout` says which addresses it hands out and in
which direction it searches; :class:`MRemapMove` and :class:`Advice` are the
``mremap`` and ``madvise`` choices; :class:`AddressSpaceStatistics` is what
:meth:`~aiomemmap.AddressSpace.statistics` reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

from aiomemmap._core.pages import ADDR_LIMIT, PAGE_SIZE, is_int

__all__ = [
    "AddressSpaceStatistics",
    "Advice",
    "Layout",
    "Limits",
    "MRemapMove",
]


@final
class MRemapMove(enum.Enum):
    """Whether ``mremap`` may or must move the mapping."""

    NO_MOVE = "no-move"
    """Resize in place or fail (no ``MREMAP_MAYMOVE``)."""

    MAY_MOVE = "may-move"
    """Resize in place if possible, otherwise move (``MREMAP_MAYMOVE``)."""

    MUST_MOVE = "must-move"
    """Move to ``new_addr`` (``MREMAP_MAYMOVE | MREMAP_FIXED``)."""


@final
class Advice(enum.IntEnum):
    """The ``madvise`` advice an address space understands (Linux values)."""

    NORMAL = 0
    """No special treatment: the Mappable's readahead judges by itself."""

    RANDOM = 1
    """Expect random access: the Mappable fetches only what is needed."""

    SEQUENTIAL = 2
    """Expect sequential access: the Mappable reads ahead aggressively."""

    WILLNEED = 3
    """Expect access soon: file mappings prefetch the range."""

    DONTNEED = 4
    """Drop the pages: anonymous memory reads back as zeros, private file
    mappings revert to the file's contents, shared mappings re-translate."""

    DONTFORK = 10
    """Do not copy the mappings into a child at ``fork``."""

    DOFORK = 11
    """Undo ``DONTFORK``."""


def _check_limit(name: str, value: object) -> None:
    if value is None:
        return
    if not is_int(value):
        raise TypeError(f"Limits: {name} must be an int or None, got {value!r}")
    if value < 0:  # type: ignore[operator]
        raise ValueError(f"Limits: {name} must not be negative, got {value}")


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of an address space, in bytes; ``None`` is unlimited.

    They are applied as Linux applies them to a process without
    ``CAP_IPC_LOCK``.

    Attributes:
        address_space: ``RLIMIT_AS``: the total length of all mappings.
            ``mmap``, ``mremap`` and ``brk`` fail with ``ENOMEM`` past it.
        data: ``RLIMIT_DATA``: how far ``brk`` may grow the heap past its
            start (``brk`` then leaves the heap unchanged).
        memlock: ``RLIMIT_MEMLOCK``: the total length of locked mappings. Zero
            makes locking fail with ``EPERM``; exceeding it fails with
            ``EAGAIN`` (``mmap``, ``mremap``) or ``ENOMEM`` (``mlock``,
            ``mlockall``).
        stack: ``RLIMIT_STACK``: recorded for the supervisor's stack setup;
            the address space itself never grows a stack.

    Raises:
        TypeError: A limit is neither an int nor ``None``.
        ValueError: A limit is negative.

    Concurrency:
        Immutable.
    """

    address_space: int | None = None
    data: int | None = None
    memlock: int | None = None
    stack: int | None = None

    def __post_init__(self) -> None:
        for name in ("address_space", "data", "memlock", "stack"):
            _check_limit(name, getattr(self, name))


# The x86-64 user address space: 47 bits, minus the last page.
_DEFAULT_MAX_ADDR = 0x7FFF_FFFF_F000
# Linux refuses to map below vm.mmap_min_addr (64 KiB by default).
_DEFAULT_MIN_ADDR = 0x10000
# Linux's legacy (bottom-up) mmap base: a third of the user address space.
_DEFAULT_BOTTOM_UP_BASE = 0x2AAA_AAAA_B000
# Where a top-down search starts: below room for a 128 MiB stack.
_DEFAULT_TOP_DOWN_BASE = 0x7FFF_F7FF_F000


@final
@dataclass(frozen=True, slots=True)
class Layout:
    """Which addresses an address space hands out, and how it searches.

    Attributes:
        min_addr: The lowest address a mapping may use.
        max_addr: One past the highest address a mapping may use.
        bottom_up_base: Where a bottom-up search for free space starts.
        top_down_base: Where a top-down search for free space starts
            (searching downwards from it).
        top_down: Search top-down instead of bottom-up by default.

    Raises:
        TypeError: An address is not an int or ``top_down`` not a bool.
        ValueError: An address is not page-aligned, or the addresses are not
            ordered ``min_addr <= bottom_up_base, top_down_base <= max_addr``
            with ``min_addr < max_addr <= 2**64``.

    Concurrency:
        Immutable.
    """

    min_addr: int = _DEFAULT_MIN_ADDR
    max_addr: int = _DEFAULT_MAX_ADDR
    bottom_up_base: int = _DEFAULT_BOTTOM_UP_BASE
    top_down_base: int = _DEFAULT_TOP_DOWN_BASE
    top_down: bool = False

    def __post_init__(self) -> None:
        names = ("min_addr", "max_addr", "bottom_up_base", "top_down_base")
        for name in names:
            value = getattr(self, name)
            if not is_int(value):
                raise TypeError(f"Layout: {name} must be an int, got {value!r}")
            if value % PAGE_SIZE:
                raise ValueError(f"Layout: {name} must be page-aligned, got {value:#x}")
        if type(self.top_down) is not bool:
            raise TypeError(f"Layout: top_down must be a bool, got {self.top_down!r}")
        lo, hi = self.min_addr, self.max_addr
        if not 0 <= lo < hi <= ADDR_LIMIT:
            raise ValueError(
                f"Layout: need 0 <= min_addr < max_addr <= 2**64, got "
                f"min_addr={lo:#x}, max_addr={hi:#x}"
            )
        for name in ("bottom_up_base", "top_down_base"):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(
                    f"Layout: {name} {value:#x} is outside "
                    f"[min_addr, max_addr] = [{lo:#x}, {hi:#x}]"
                )


@final
@dataclass(frozen=True, slots=True)
class AddressSpaceStatistics:
    """A snapshot of an address space's accounting.

    Attributes:
        usage_as: Bytes mapped (the span of all mappings; ``RLIMIT_AS``).
        data_as: Bytes of private writable mappings that do not grow down
            (Linux's ``data_vm``; ``RLIMIT_DATA``).
        locked_as: Bytes of locked mappings.
        rss: Bytes with a cached translation (resident).
        max_rss: The highest ``rss`` seen.
        vmas: Number of mappings (lines of :meth:`AddressSpace.maps`).
        pmas: Number of cached translation runs.
        faults: Faults handled (by :meth:`AddressSpace.handle_fault` and by
            copies that had to fault pages in).
        cow_copies: Pages copied to break copy-on-write.

    Concurrency:
        Immutable.
    """

    usage_as: int
    data_as: int
    locked_as: int
    rss: int
    max_rss: int
    vmas: int
    pmas: int
    faults: int
    cow_copies: int
