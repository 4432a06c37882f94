"""Ranged reads of objects through an engine, for the fsspec faces.

:class:`EngineReads` is what the ``aiomemmap`` filesystem and the
``"aiomemmap"`` cache type of fsspec read with. It names objects by URL and
storage options, exactly as :meth:`~aiomemmap.Engine.open_file` does, so
every reader of the same object shares one cache and one fetch per page; it
keeps the objects it read recently open in the engine (a bounded number of
them), so that a reader that reads one object many times does not reopen it
each time; and it merges nearby ranges of a batch into one read.

Every read runs on the engine's loop: from code on that loop it is awaited
directly, from another loop it crosses over (the caller's loop waits on a
future, never blocks), and from synchronous code it blocks the calling
thread only.
"""

from __future__ import annotations

import asyncio
import typing
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, TypeVar

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.pages import is_int
from aiomemmap.engine.default import default_engine
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.file_key import FileKey, file_key
from aiomemmap.engine.thread import EngineThread
from aiomemmap.mappables.cached_file import CachedFile

__all__ = [
    "DEFAULT_GAP",
    "DEFAULT_KEEP_OPEN",
    "EngineReads",
    "byte_bounds",
    "merge_ranges",
]

_T = TypeVar("_T")

DEFAULT_KEEP_OPEN: Final[int] = 256
"""How many recently read objects stay open in the engine by default."""

DEFAULT_GAP: Final[int] = 64 * 1024
"""Ranges of one object closer than this are read as one by default."""


def _known_size(cached_file: CachedFile) -> int:
    size = cached_file.size
    if size is None:
        raise OSError(f"{cached_file!r}: the engine opened it without its size")
    return size


def byte_bounds(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """Resolve fsspec's ``start``/``end`` against an object of ``size`` bytes.

    ``None`` means the object's start (or end); a negative value counts from
    the end; an end past the object is the object's end.

    Returns:
        ``(start, end)``, with ``0 <= start`` and ``start <= end <= size``.
    """
    lo = 0 if start is None else (start if start >= 0 else max(0, size + start))
    hi = size if end is None else (end if end >= 0 else max(0, size + end))
    lo, hi = min(lo, size), min(hi, size)
    return lo, max(lo, hi)


def merge_ranges(
    ranges: Sequence[tuple[int, int]], gap: int
) -> list[tuple[int, int, list[int]]]:
    """Merge ``(start, end)`` ranges that overlap or lie within ``gap`` bytes.

    Args:
        ranges: Half-open byte ranges, in any order.
        gap: The largest hole between two ranges that are still merged.

    Returns:
        ``(start, end, members)`` spans in increasing order, ``members`` the
        indices into ``ranges`` of the ranges each span covers.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    spans: list[tuple[int, int, list[int]]] = []
    for i in order:
        lo, hi = ranges[i]
        if spans and lo - spans[-1][1] <= gap:
            s_lo, s_hi, members = spans[-1]
            members.append(i)
            spans[-1] = (s_lo, max(s_hi, hi), members)
        else:
            spans.append((lo, hi, [i]))
    return spans


@typing.final
class EngineReads:
    """Reads of objects named by URL through an engine.

    Args:
        engine: The :class:`~aiomemmap.EngineThread` to read through, an
            :class:`~aiomemmap.Engine` running on the loop of the callers
            (for asynchronous use on that loop only), or ``None`` for
            :func:`~aiomemmap.default_engine` (looked up at each use, so a
            closed default engine, or one of a parent process, is replaced).
        keep_open: How many recently read objects stay open in the engine.

    Concurrency:
        thread-safe: every call runs on the engine's loop, where the state of
        the recently read objects lives.
    """

    def __init__(
        self,
        engine: Engine | EngineThread | None = None,
        *,
        keep_open: int = DEFAULT_KEEP_OPEN,
    ) -> None:
        if engine is not None and not isinstance(engine, Engine | EngineThread):
            raise TypeError(
                f"engine must be an Engine, an EngineThread or None, got {engine!r}"
            )
        if not is_int(keep_open) or keep_open < 0:
            raise ValueError(f"keep_open must be an int >= 0, got {keep_open!r}")
        self._given = engine
        self._keep_open = keep_open
        # The objects kept open, least recently read first, and the engine
        # they are open in. Touched only on that engine's loop.
        self._kept: OrderedDict[FileKey, CachedFile] = OrderedDict()
        self._kept_engine: Engine | None = None
        # The engine thread of the last call, for release_soon().
        self._last_thread: EngineThread | None = None

    def __repr__(self) -> str:
        return f"EngineReads(engine={self._given!r}, keep_open={self._keep_open})"

    # ------------------------------------------------------------------
    # Where calls run

    def engine_thread(self) -> EngineThread | None:
        """The engine thread reads run on; ``None`` for an in-loop engine."""
        if self._given is None:
            return default_engine()
        return self._given if isinstance(self._given, EngineThread) else None

    def _engine(self, thread: EngineThread | None) -> Engine:
        if thread is not None:
            return thread.engine
        if not isinstance(self._given, Engine):
            raise TypeError(f"{self!r} has no engine")
        return self._given

    async def run(self, func: Callable[[Engine], Awaitable[_T]]) -> _T:
        """Await ``func(engine)`` on the engine's loop, from any loop.

        Raises:
            ClosedError: The engine is closed.
            WrongLoopError: An in-loop engine called from another loop.

        Cancellation:
            Cancels ``func`` on the engine's loop.
        """
        thread = self.engine_thread()
        engine = self._engine(thread)
        self._last_thread = thread
        if thread is None or asyncio.get_running_loop() is thread.loop:
            return await func(engine)
        return await asyncio.wrap_future(thread.start_call(func, engine))

    def call(self, func: Callable[[Engine], Awaitable[_T]]) -> _T:
        """Run ``func(engine)`` on the engine's loop, blocking this thread.

        Raises:
            ClosedError: The engine is closed.
            RuntimeError: Called from the engine's own thread, or with an
                in-loop engine (which only asynchronous code may use).
        """
        thread = self.engine_thread()
        if thread is None:
            raise RuntimeError(
                f"{self!r}: an Engine running on a loop is read only from that "
                "loop's coroutines; give an EngineThread for synchronous reads"
            )
        self._last_thread = thread
        return thread.call(func, thread.engine)

    def release_soon(self) -> None:
        """Start giving back every object kept open; do not wait.

        Works from any thread (a finalizer's included) and starts no engine.
        """
        thread = self._last_thread
        if thread is not None and not thread.closed:
            thread.call_soon(self.release, thread.engine)

    # ------------------------------------------------------------------
    # On the engine's loop

    async def _open(
        self, engine: Engine, url: str, options: Mapping[str, object]
    ) -> CachedFile:
        """Open ``url`` for one read, and keep it open for the next ones."""
        cached_file = await engine.open_file(url, **options)
        try:
            await self._keep(engine, url, options)
        except BaseException:
            await finish_shielded(engine.close_file(cached_file))
            raise
        return cached_file

    async def _keep(
        self, engine: Engine, url: str, options: Mapping[str, object]
    ) -> None:
        if self._kept_engine is not engine:
            # The engine was replaced (closed, or of a parent process): what
            # was kept open in it is gone with it.
            self._kept = OrderedDict()
            self._kept_engine = engine
        if self._keep_open == 0:
            return
        key = file_key(url, options)
        if key in self._kept:
            self._kept.move_to_end(key)
            return
        kept = await engine.open_file(url, **options)
        if key in self._kept or self._kept_engine is not engine:
            # A concurrent read kept it open meanwhile.
            await finish_shielded(engine.close_file(kept))
            return
        self._kept[key] = kept
        while len(self._kept) > self._keep_open:
            _, oldest = self._kept.popitem(last=False)
            await finish_shielded(engine.close_file(oldest))

    async def release(self, engine: Engine) -> None:
        """Give back every object kept open (on the engine's loop)."""
        if self._kept_engine is not engine:
            return
        kept, self._kept = self._kept, OrderedDict()
        for cached_file in kept.values():
            await finish_shielded(engine.close_file(cached_file))

    async def size(
        self, engine: Engine, url: str, options: Mapping[str, object]
    ) -> int:
        """The size of ``url`` (on the engine's loop)."""
        cached_file = await self._open(engine, url, options)
        try:
            return _known_size(cached_file)
        finally:
            await finish_shielded(engine.close_file(cached_file))

    async def read(
        self,
        engine: Engine,
        url: str,
        options: Mapping[str, object],
        start: int | None,
        end: int | None,
    ) -> bytes:
        """Read ``[start, end)`` of ``url`` as fsspec's ``cat_file`` does.

        Runs on the engine's loop.

        Raises:
            FileNotFoundError, OSError: The object cannot be opened.
            BusError: The object's bytes cannot be fetched.
        """
        cached_file = await self._open(engine, url, options)
        try:
            size = _known_size(cached_file)
            lo, hi = byte_bounds(start, end, size)
            return await cached_file.read(lo, hi - lo) if hi > lo else b""
        finally:
            await finish_shielded(engine.close_file(cached_file))

    async def read_ranges(
        self,
        engine: Engine,
        url: str,
        options: Mapping[str, object],
        ranges: Sequence[tuple[int | None, int | None]],
        gap: int,
    ) -> list[bytes]:
        """Read several ranges of ``url``, nearby ones as one read.

        Runs on the engine's loop; the merged reads run concurrently.

        Returns:
            The bytes of each range, in the order of ``ranges``.
        """
        cached_file = await self._open(engine, url, options)
        try:
            size = _known_size(cached_file)
            bounds = [byte_bounds(lo, hi, size) for lo, hi in ranges]
            spans = merge_ranges([b for b in bounds if b[1] > b[0]], gap)
            nonempty = [i for i, b in enumerate(bounds) if b[1] > b[0]]
            out = [b""] * len(bounds)

            async def read_span(lo: int, hi: int, members: list[int]) -> None:
                data = await cached_file.read(lo, hi - lo)
                for m in members:
                    i = nonempty[m]
                    b_lo, b_hi = bounds[i]
                    out[i] = data[b_lo - lo : b_hi - lo]

            async with asyncio.TaskGroup() as tg:
                for lo, hi, members in spans:
                    tg.create_task(read_span(lo, hi, members))
            return out
        finally:
            await finish_shielded(engine.close_file(cached_file))
