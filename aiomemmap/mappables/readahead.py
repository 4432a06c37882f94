"""Readahead policies: how much of a file to fetch around an access.

When a :class:`~aiomemmap.CachedFile` misses, it may fetch more than the pages
the access needs. A *readahead policy* decides how much: given the pages the
access requires, the pages it may fill (the ``optional`` range of a
translation, or the whole file for a read), the file size and the history of
earlier accesses, it returns the *fill window*. The window always contains the
required pages and never leaves ``optional`` or the page-rounded file size.

The history lives in a small :class:`ReadaheadState` kept per file; the policy
object itself is immutable and may be shared by many files. An address space's
``madvise`` passes hints through :meth:`ReadaheadState.advise`.

Three policies are provided:

* :class:`NoReadahead`: the window is the required range;
* :class:`FixedReadahead`: a fixed number of bytes from the start of the
  access (gVisor's page cache fills 64 KiB this way);
* :class:`AdaptiveReadahead`: reads ahead only once accesses prove
  sequential, grows the window geometrically while they stay so, and stops
  reading ahead on a random access, like the kernel's on-demand readahead.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol, final

from aiomemmap._core.errors import AlignmentError
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    PAGE_MASK,
    PAGE_SIZE,
    is_int,
    page_round_up,
)
from aiomemmap._core.ranges import MappableRange

__all__ = [
    "DEFAULT_INITIAL_WINDOW",
    "DEFAULT_MAXIMUM_WINDOW",
    "AdaptiveReadahead",
    "FixedReadahead",
    "NoReadahead",
    "ReadaheadHint",
    "ReadaheadPolicy",
    "ReadaheadState",
]

DEFAULT_INITIAL_WINDOW: Final[int] = 64 * 1024
"""The first window of :class:`AdaptiveReadahead` (64 KiB, as gVisor fills)."""

DEFAULT_MAXIMUM_WINDOW: Final[int] = 16 * 1024 * 1024
"""The largest window of :class:`AdaptiveReadahead` (16 MiB).

Large enough that a sequential scan over a network with a few milliseconds of
round-trip time keeps eight fetches in flight (a scan over HTTP with 2 ms of
latency ran about 7% faster than with 8 MiB here, and no faster with 32 MiB),
small enough that a scan over a bounded cache overshoots its budget by at most
one window.
"""


class ReadaheadHint(enum.Enum):
    """What the user said about the coming accesses (``madvise``)."""

    NORMAL = "normal"
    """No advice: the policy judges from the access history."""

    SEQUENTIAL = "sequential"
    """``MADV_SEQUENTIAL``: treat every access as part of a sequential scan."""

    RANDOM = "random"
    """``MADV_RANDOM``: fetch only what each access requires."""


@final
class ReadaheadState:
    """The access history of one file, as a readahead policy records it.

    Attributes:
        hint: The current advice; see :meth:`advise`.
        last_start: Start of the previous access, or ``-1`` before the first.
        last_end: End of the previous access, or ``-1`` before the first.
        ahead_end: End of the last window handed out (how far ahead the
            file has been asked to fill).
        window: The current window size in bytes; ``0`` until a policy that
            grows windows has seen an access.

    Invariants:
        ``window`` is a non-negative multiple of ``PAGE_SIZE``.

    Concurrency:
        Task-compatible: the owning file changes it only in code that does not
        await, so each update is atomic on the event loop.
    """

    __slots__ = ("ahead_end", "hint", "last_end", "last_start", "window")

    def __init__(self) -> None:
        self.hint = ReadaheadHint.NORMAL
        self.last_start = -1
        self.last_end = -1
        self.ahead_end = 0
        self.window = 0

    def __repr__(self) -> str:
        return (
            f"ReadaheadState(hint={self.hint.value}, last=[{self.last_start:#x}, "
            f"{self.last_end:#x}), ahead_end={self.ahead_end:#x}, "
            f"window={self.window:#x})"
        )

    def advise(self, hint: ReadaheadHint) -> None:
        """Record advice about the coming accesses.

        Any advice forgets the access history, so the next access starts a
        fresh window.

        Args:
            hint: The advice.

        Raises:
            TypeError: ``hint`` is not a :class:`ReadaheadHint`.
        """
        if not isinstance(hint, ReadaheadHint):
            raise TypeError(f"hint must be a ReadaheadHint, got {hint!r}")
        self.hint = hint
        self.reset()

    def reset(self) -> None:
        """Forget the access history but keep the advice.

        Called by the file when its contents were dropped (truncation, a
        changed backing), since earlier windows no longer describe the cache.
        """
        self.last_start = -1
        self.last_end = -1
        self.ahead_end = 0
        self.window = 0

    def _record(self, required: MappableRange) -> bool:
        """Record an access; return whether it continues the previous one.

        An access is sequential if it starts inside the previous access or
        anywhere up to the end of the last window handed out: a reader that
        went on from where it stopped, or a fault just past the pages the
        previous window translated.
        """
        sequential = self.last_start >= 0 and (
            self.last_start <= required.start <= max(self.last_end, self.ahead_end)
        )
        self.last_start = required.start
        self.last_end = required.end
        return sequential


class ReadaheadPolicy(Protocol):
    """Decides which pages to fill around an access.

    Implementations are immutable and may be shared between files; each file
    keeps its own :class:`ReadaheadState`.
    """

    def new_state(self) -> ReadaheadState:
        """Return a fresh history for a new file."""
        ...

    def window(
        self,
        state: ReadaheadState,
        required: MappableRange,
        optional: MappableRange,
        file_size: int,
    ) -> MappableRange:
        """Return the pages to fill for an access, and record the access.

        Args:
            state: The file's history; updated.
            required: The pages the access needs: non-empty, page-aligned,
                within ``optional`` and the page-rounded file size.
            optional: The pages that may be filled: page-aligned.
            file_size: The file's size in bytes.

        Returns:
            A page-aligned range that contains ``required`` and lies within
            ``optional`` and ``[0, page_round_up(file_size))``.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The preconditions on the ranges do not hold
                (``AlignmentError`` for unaligned ones); ``state`` is unchanged.
        """
        ...


def _bounds(
    state: ReadaheadState,
    required: MappableRange,
    optional: MappableRange,
    file_size: int,
) -> tuple[int, int]:
    """Validate a window request; return ``optional ∩ [0, rounded size)``."""
    if not isinstance(state, ReadaheadState):
        raise TypeError(f"state must be a ReadaheadState, got {state!r}")
    if not isinstance(required, MappableRange):
        raise TypeError(f"required must be a MappableRange, got {required!r}")
    if not isinstance(optional, MappableRange):
        raise TypeError(f"optional must be a MappableRange, got {optional!r}")
    if not is_int(file_size):
        raise TypeError(f"file_size must be an int, got {file_size!r}")
    if file_size < 0:
        raise ValueError(f"file_size must not be negative, got {file_size}")
    # Plain arithmetic on the bounds: this runs on every access.
    rs, re_, os_, oe = required.start, required.end, optional.start, optional.end
    if rs == re_:
        raise ValueError(f"required {required} is empty")
    if (rs | re_ | os_ | oe) & PAGE_MASK:
        raise AlignmentError(
            f"required {required} and optional {optional} must be page-aligned"
        )
    if not (os_ <= rs and oe >= re_):
        raise ValueError(f"optional {optional} does not contain required {required}")
    rounded = (file_size + PAGE_MASK) & ~PAGE_MASK
    if rounded >= ADDR_LIMIT:
        rounded = page_round_up(file_size)  # Raises, as it should.
    hi = min(oe, rounded)
    if re_ > hi:
        raise ValueError(
            f"required {required} extends past the page-rounded file size {rounded:#x}"
        )
    return os_, hi


def _check_window_size(owner: str, name: str, value: object) -> int:
    if not is_int(value):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    assert isinstance(value, int)
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value}")
    if value & PAGE_MASK:
        raise AlignmentError(
            f"{owner}: {name} must be a multiple of PAGE_SIZE ({PAGE_SIZE}), "
            f"got {value:#x}"
        )
    return int(value)


@final
class NoReadahead:
    """Fill exactly the pages each access requires.

    Concurrency:
        Immutable.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NoReadahead()"

    def new_state(self) -> ReadaheadState:
        """Return a fresh history for a new file."""
        return ReadaheadState()

    def window(
        self,
        state: ReadaheadState,
        required: MappableRange,
        optional: MappableRange,
        file_size: int,
    ) -> MappableRange:
        """Return ``required``; see :meth:`ReadaheadPolicy.window`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The range preconditions do not hold.
        """
        _bounds(state, required, optional, file_size)
        state._record(required)
        state.ahead_end = required.end
        return required


@final
class FixedReadahead:
    """Fill a fixed number of bytes from the start of each access.

    The window is ``[required.start, required.start + nbytes)``, extended to
    the end of ``required`` if that is longer, and clipped to ``optional`` and
    the file. Under :attr:`ReadaheadHint.RANDOM` it is ``required``.

    Args:
        nbytes: The window size: a positive multiple of ``PAGE_SIZE``.

    Raises:
        TypeError: ``nbytes`` is not an int.
        ValueError: ``nbytes`` is not positive (``AlignmentError`` if it is
            not a multiple of ``PAGE_SIZE``).

    Concurrency:
        Immutable.
    """

    __slots__ = ("_nbytes",)

    def __init__(self, nbytes: int) -> None:
        self._nbytes = _check_window_size("FixedReadahead", "nbytes", nbytes)

    def __repr__(self) -> str:
        return f"FixedReadahead({self._nbytes:#x})"

    @property
    def nbytes(self) -> int:
        """The window size in bytes."""
        return self._nbytes

    def new_state(self) -> ReadaheadState:
        """Return a fresh history for a new file."""
        return ReadaheadState()

    def window(
        self,
        state: ReadaheadState,
        required: MappableRange,
        optional: MappableRange,
        file_size: int,
    ) -> MappableRange:
        """Return the fixed window at ``required``; see :meth:`ReadaheadPolicy.window`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The range preconditions do not hold.
        """
        _, hi = _bounds(state, required, optional, file_size)
        state._record(required)
        if state.hint is ReadaheadHint.RANDOM:
            state.ahead_end = required.end
            return required
        end = min(hi, max(required.end, required.start + self._nbytes))
        state.ahead_end = end
        return MappableRange(required.start, end)


@final
class AdaptiveReadahead:
    """A window that grows while accesses are sequential.

    The first access, and every access that does not continue the previous
    one, gets just the range it asked for, so a random reader fetches no more
    than it reads. The next access that continues it gets a window of
    ``initial`` bytes and more. While accesses stay sequential, nothing more
    is filled until an access crosses the middle
    of the last window handed out (the *marker*, as in the kernel's
    asynchronous readahead); then the window is multiplied by ``growth`` (up
    to ``maximum``) and the next window is appended after the last one, so the
    fetch of the next part overlaps the reading of the current one.

    Hints: under :attr:`ReadaheadHint.SEQUENTIAL` every access counts as
    sequential; under :attr:`ReadaheadHint.RANDOM` the window is
    ``required``.

    Args:
        initial: The first window: a positive multiple of ``PAGE_SIZE``
            (default 64 KiB).
        maximum: The largest window: a multiple of ``PAGE_SIZE``, at least
            ``initial`` (default 16 MiB, see :data:`DEFAULT_MAXIMUM_WINDOW`).
        growth: The factor applied on each sequential step: at least 1.0
            (default 2.0).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (``AlignmentError`` for sizes
            that are not multiples of ``PAGE_SIZE``).

    Concurrency:
        Immutable.
    """

    __slots__ = ("_growth", "_initial", "_maximum")

    def __init__(
        self,
        initial: int = DEFAULT_INITIAL_WINDOW,
        maximum: int = DEFAULT_MAXIMUM_WINDOW,
        growth: float = 2.0,
    ) -> None:
        owner = "AdaptiveReadahead"
        self._initial = _check_window_size(owner, "initial", initial)
        self._maximum = _check_window_size(owner, "maximum", maximum)
        if self._maximum < self._initial:
            raise ValueError(
                f"{owner}: maximum ({maximum:#x}) must be at least initial "
                f"({initial:#x})"
            )
        if isinstance(growth, bool) or not isinstance(growth, (int, float)):
            raise TypeError(f"{owner}: growth must be a number, got {growth!r}")
        if not 1.0 <= growth <= 1024.0:
            raise ValueError(f"{owner}: growth must be in [1, 1024], got {growth}")
        self._growth = float(growth)

    def __repr__(self) -> str:
        return (
            f"AdaptiveReadahead(initial={self._initial:#x}, "
            f"maximum={self._maximum:#x}, growth={self._growth})"
        )

    @property
    def initial(self) -> int:
        """The first window size in bytes."""
        return self._initial

    @property
    def maximum(self) -> int:
        """The largest window size in bytes."""
        return self._maximum

    @property
    def growth(self) -> float:
        """The factor by which the window grows on each sequential step."""
        return self._growth

    def new_state(self) -> ReadaheadState:
        """Return a fresh history for a new file."""
        return ReadaheadState()

    def window(
        self,
        state: ReadaheadState,
        required: MappableRange,
        optional: MappableRange,
        file_size: int,
    ) -> MappableRange:
        """Return the adaptive window; see :meth:`ReadaheadPolicy.window`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The range preconditions do not hold.
        """
        _, hi = _bounds(state, required, optional, file_size)
        sequential = state._record(required)
        hint = state.hint
        if hint is ReadaheadHint.RANDOM:
            state.window = 0
            state.ahead_end = required.end
            return required
        if hint is ReadaheadHint.SEQUENTIAL:
            sequential = True
        if not sequential or state.window == 0:
            # A new stream. Unless told it is sequential, fetch only what was
            # asked: a random reader then fetches no more than it reads. The
            # window is armed, so the next access that carries on from here
            # reads ahead, growing from the initial window.
            state.window = self._initial
            end = required.end
            if hint is ReadaheadHint.SEQUENTIAL:
                end = min(hi, max(required.end, required.start + self._initial))
            state.ahead_end = end
            return MappableRange(required.start, end)
        if required.end <= state.ahead_end - state.window // 2:
            # Before the marker: the current window already covers this.
            return required
        grown = page_round_up(int(state.window * self._growth))
        state.window = min(self._maximum, max(grown, state.window))
        end = min(hi, max(state.ahead_end, required.start) + state.window)
        end = max(end, required.end)
        state.ahead_end = end
        return MappableRange(required.start, end)
