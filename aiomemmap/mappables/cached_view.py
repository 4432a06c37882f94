"""Views of a cached file's bytes in place: what :meth:`CachedFile.read_view` returns.

A :class:`CachedView` holds the pages it shows (a reference on each, and a pin
against the cache budget's eviction) from when it is entered until it is
left, so that nothing frees or reuses them while the view is in use.
"""

from __future__ import annotations

import typing
from types import TracebackType
from typing import final

from aiomemmap._core.pages import PAGE_MASK, page_round_up
from aiomemmap.mappables.page_cache import join_blocks
from aiomemmap.pgalloc.held_views import HeldView

if typing.TYPE_CHECKING:
    from aiomemmap.mappables.cached_file import CachedFile

__all__ = ["CachedView"]


def _hold(cf: CachedFile, offset: int, end: int) -> tuple[HeldView, bool]:
    """Return a held view of offsets ``[offset, end)``, and whether it is zero copy.

    Preconditions:
        ``[offset, end)`` is cached (the caller has not awaited since
        :meth:`_resident` said so).
    """
    blocks = cf._blocks(offset, end)
    if len(blocks) == 1 and not isinstance(blocks[0], int):
        start_p, end_p = offset & ~PAGE_MASK, page_round_up(end)
        seg = cf._cache.find(start_p)
        assert seg is not None and seg.end >= end_p
        fr = cf._cache.file_range(seg, start_p, end_p)
        return HeldView(blocks[0], cf._mf, (fr,)), True
    return HeldView(memoryview(join_blocks(blocks)), cf._mf), False


@final
class CachedView:
    """The bytes of a cached file, viewed in place while held.

    Made by :meth:`CachedFile.read_view`, whose docstring gives the rules;
    entered once, as an async context manager whose value is the
    ``memoryview``.

    Concurrency:
        Task-compatible: entered and left by one task.
    """

    __slots__ = ("_entered", "_file", "_held", "_n", "_offset", "_pinned", "_zero_copy")

    def __init__(self, cached_file: CachedFile, offset: int, n: int) -> None:
        self._file = cached_file
        self._offset = offset
        self._n = n
        self._entered = False
        self._held: HeldView | None = None
        # The pages pinned against eviction, page-aligned, or None.
        self._pinned: tuple[int, int] | None = None
        self._zero_copy = False

    def __repr__(self) -> str:
        state = "held" if self._held is not None else "not held"
        return (
            f"<CachedView {self._n:#x} bytes at {self._offset:#x} of "
            f"{self._file!r} {state}>"
        )

    @property
    def zero_copy(self) -> bool:
        """Whether the view shows the cached pages themselves (not a copy).

        False before the view is entered and after it is left.
        """
        return self._zero_copy

    async def __aenter__(self) -> memoryview:
        """Fetch what is missing, then hold the pages and return their view.

        Raises:
            RuntimeError: Entered before.
            BusError, ClosedError: As :meth:`CachedFile.read`.
        """
        if self._entered:
            raise RuntimeError(f"{self!r} was entered before: enter a view once")
        self._entered = True
        cf, offset = self._file, self._offset
        end = await cf._resident("read_view", offset, self._n)
        # Nothing awaits from here on: the pages found stay cached.
        if end <= offset:
            held = HeldView(memoryview(b""), cf._mf)
        else:
            held, self._zero_copy = _hold(cf, offset, end)
            units = cf._units
            if self._zero_copy and units is not None:
                pinned = (offset & ~PAGE_MASK, page_round_up(end))
                units.pin(*pinned)
                self._pinned = pinned
        self._held = held
        return held.view

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the view and the pins (see :meth:`CachedFile.read_view`)."""
        held, self._held = self._held, None
        pinned, self._pinned = self._pinned, None
        self._zero_copy = False
        units = self._file._units
        if pinned is not None and units is not None:
            units.unpin(*pinned)
        if held is not None:
            held.release()
