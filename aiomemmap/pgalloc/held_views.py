"""Held views: a ``memoryview`` of memory-file pages that keeps the pages alive.

A cache that hands out a view of its pages, rather than a copy, must not free
or reuse those pages while the view can still be read: not when the cache
evicts them, drops them, or is closed. A :class:`HeldView` takes one
reference on each page it shows, and drops them only once nothing can read
the pages through it any more.

Python gives no notice when a ``memoryview`` and the views sliced from it (or
the arrays exported from them, such as ``numpy.frombuffer(view)``) are all
gone: slices share their parent's buffer, and releasing the parent does not
release them. So the view handed out is built one step removed: a private
*base* view of the pages, exported (through :class:`pickle.PickleBuffer`) to
the view handed out. Everything derived from that view keeps the base
exported, and the base alive. :meth:`HeldView.release` releases the handed-out
view; if the base then has no export left, the references are dropped at
once; otherwise they are dropped when the base is collected, which is when the
last derived view or export is gone.
"""

from __future__ import annotations

import contextlib
import pickle
import weakref
from collections.abc import Sequence
from typing import final

from aiomemmap._core.errors import ClosedError
from aiomemmap._core.ranges import FileRange
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = ["HeldView"]


def _drop_refs(mf: MemoryFile, ranges: tuple[FileRange, ...]) -> None:
    """Drop the references a held view took (any thread; never raises)."""
    for fr in ranges:
        # A closed memory file has forgotten every reference.
        with contextlib.suppress(ClosedError):
            mf.dec_ref(fr)


@final
class HeldView:
    """A read-only view of bytes that holds references on the pages it shows.

    Args:
        block: The bytes to show: a view of pages of ``mf`` (as
            :meth:`~aiomemmap.MemoryFile.map_internal` returns them), or of
            any other memory when ``ranges`` is empty (a copy).
        mf: The memory file holding the pages.
        ranges: The pages ``block`` shows. One reference is taken on each
            page here, all or nothing.

    Raises:
        RefCountError: A page of ``ranges`` is not allocated (nothing is
            held).
        ClosedError: ``mf`` is closed.

    Preconditions:
        The caller holds a reference on every page of ``ranges`` (the call
        does not wait, so that reference cannot go meanwhile).

    Postconditions:
        The pages of ``ranges`` are neither freed nor reused before
        :meth:`release` has run and every view and export derived from
        :attr:`view` is released or collected.

    Concurrency:
        :meth:`release` is for the owner's task. The references may be
        dropped on whatever thread collects the last derived view;
        :meth:`~aiomemmap.MemoryFile.dec_ref` is thread-safe.
    """

    __slots__ = ("_base", "_drop", "_view")

    def __init__(
        self, block: memoryview, mf: MemoryFile, ranges: Sequence[FileRange] = ()
    ) -> None:
        taken: list[FileRange] = []
        try:
            for fr in ranges:
                mf.inc_ref(fr)
                taken.append(fr)
        except BaseException:
            _drop_refs(mf, tuple(taken))
            raise
        base = block.toreadonly()
        self._drop = weakref.finalize(base, _drop_refs, mf, tuple(taken))
        relay = pickle.PickleBuffer(base)
        # The view handed out exports ``base``, not the chunk's buffer:
        # slices of it keep ``base`` exported.
        self._view: memoryview | None = memoryview(relay)
        relay.release()
        self._base: memoryview | None = base

    @property
    def view(self) -> memoryview:
        """The read-only, one-dimensional bytes view (format ``"B"``).

        Raises:
            ValueError: :meth:`release` has run.
        """
        view = self._view
        if view is None:
            raise ValueError("the view was released")
        return view

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run."""
        return self._view is None

    def release(self) -> bool:
        """Release :attr:`view`; drop the references once nothing reads them.

        Later calls do nothing.

        Returns:
            Whether the references were dropped now. ``False`` when a view
            sliced from :attr:`view`, or an export of it, is still alive:
            the references are then dropped when the last of those goes.

        Postconditions:
            :attr:`view` raises ``ValueError``; reading any derived view
            still alive shows the held pages.
        """
        view, self._view = self._view, None
        base, self._base = self._base, None
        if view is None or base is None:
            return not self._drop.alive
        with contextlib.suppress(BufferError):
            # Still exported (e.g. to an array): released when collected.
            view.release()
        del view
        try:
            base.release()
        except BufferError:
            # Derived views still export ``base``: the finalizer drops the
            # references when the last of them lets go of it.
            return False
        self._drop()
        return True
