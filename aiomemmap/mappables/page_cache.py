"""The page cache of a cached file: its state, its size, filling and reading it.

:class:`PageCache` is the base of :class:`~aiomemmap.CachedFile`: it holds the
state every part of a cached file shares (the
:class:`~aiomemmap.fsutil.file_range_set.FileRangeSet` of cached pages, the
:class:`~aiomemmap.fsutil.dirty_set.DirtySet`, the size and version learned
from the backing, the :class:`~aiomemmap.mappables.fetcher.Fetcher` and the
budget's :class:`~aiomemmap.mappables.cache_units.CacheUnits`) and the
operations on the cache that the others build on: learning the size once,
waiting for pages (pinned against eviction), counting hits, translating and
copying present pages, and writing dirty pages back.

The rest of the file lives beside it, one concern a module: writes and
truncation (:mod:`~aiomemmap.mappables.writeback`), revalidation
(:mod:`~aiomemmap.mappables.revalidation`), eviction
(:mod:`~aiomemmap.mappables.cache_eviction`), and the public class with its
Mappable methods (:mod:`~aiomemmap.mappables.cached_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Iterator
from typing import Any, Final

from aiomemmap._core.access import AccessType
from aiomemmap._core.errors import AlignmentError, BusError, ClosedError
from aiomemmap._core.locks import LockRank, OrderedLock, detached_context
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    HUGE_PAGE_SIZE,
    PAGE_MASK,
    PAGE_SIZE,
    is_int,
    page_round_down,
    page_round_up,
)
from aiomemmap._core.ranges import FileRange, MappableRange
from aiomemmap.backings.base import Backing, RetryPolicy, call_with_retry
from aiomemmap.fsutil.dirty_set import DirtySet, sync_dirty
from aiomemmap.fsutil.file_range_set import FileRangeSet
from aiomemmap.mappables.cache_units import CacheUnits
from aiomemmap.mappables.fetcher import Fetcher
from aiomemmap.mappables.readahead import ReadaheadPolicy, ReadaheadState
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.memmap.interfaces import InvalidateOpts, Translation
from aiomemmap.memmap.mapping_set import MappingSet
from aiomemmap.pgalloc.access_pins import current_access
from aiomemmap.pgalloc.memory_file import MemoryFile

# How many bytes of the end of a file the request that learns its size reads
# (from a backing that can): a table file's footer, a small object whole.
_TAIL_BYTES: Final[int] = 64 * 1024

__all__ = [
    "NO_PRIVATE",
    "TRANSLATE_AHEAD",
    "WITH_PRIVATE",
    "PageCache",
    "check_offset",
    "check_page_range",
    "consume",
    "join_blocks",
    "writable_bytes",
]

_READ: Final = AccessType.READ

TRANSLATE_AHEAD: Final[int] = HUGE_PAGE_SIZE
"""How far past the required range translate may hand out present pages."""

NO_PRIVATE: Final = InvalidateOpts(invalidate_private=False)
"""Invalidation that keeps private copies (eviction, dropping the cache)."""

WITH_PRIVATE: Final = InvalidateOpts(invalidate_private=True)
"""Invalidation that drops private copies too (truncation)."""

_inode_ids = itertools.count(1)


def consume(task: asyncio.Task[Any]) -> None:
    """Mark a task's outcome as seen, so that asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def check_offset(what: str, name: str, value: object) -> int:
    """Return ``value`` as an offset in ``[0, 2**64]``, or raise.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is out of range.
    """
    if type(value) is int and 0 <= value <= ADDR_LIMIT:
        return value
    if not is_int(value):
        raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    assert isinstance(value, int)  # is_int() said so; for the type checker
    if not 0 <= value <= ADDR_LIMIT:
        raise ValueError(f"{what}: {name} must be in [0, 2**64], got {value:#x}")
    return int(value)


def check_page_range(what: str, mr: object) -> MappableRange:
    """Return ``mr`` if it is a non-empty, page-aligned ``MappableRange``, or raise.

    Raises:
        TypeError: ``mr`` is not a ``MappableRange``.
        ValueError: ``mr`` is empty (``AlignmentError`` if unaligned).
    """
    if not isinstance(mr, MappableRange):
        raise TypeError(f"{what}: mr must be a MappableRange, got {mr!r}")
    if mr.length == 0:
        raise ValueError(f"{what}: mr {mr} is empty")
    if (mr.start | mr.end) & PAGE_MASK:
        raise AlignmentError(f"{what}: mr {mr} is not page-aligned")
    return mr


def join_blocks(blocks: list[memoryview | int]) -> bytes:
    """Return the bytes of ``blocks`` (views, and lengths of zeros) in one copy."""
    if len(blocks) == 1:
        only = blocks[0]
        return bytes(only) if isinstance(only, int) else only.tobytes()
    return b"".join(bytes(b) if isinstance(b, int) else b for b in blocks)


@contextlib.contextmanager
def writable_bytes(what: str, buf: object) -> Iterator[memoryview]:
    """View ``buf`` as writable, one-dimensional bytes for the ``with`` block.

    Raises:
        TypeError: ``buf`` is not a buffer, or it is read-only.
        ValueError: ``buf`` is not C-contiguous.
    """
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what}: buf must be a writable bytes-like object, "
            f"got {type(buf).__name__}"
        ) from None
    with view:
        if view.readonly:
            raise TypeError(
                f"{what}: buf must be writable, got a read-only {type(buf).__name__}"
            )
        if not view.c_contiguous:
            raise ValueError(f"{what}: buf must be C-contiguous")
        with view.cast("B") as target:
            yield target


class PageCache:
    """The shared state and cache operations of a cached file.

    Not used alone: :class:`~aiomemmap.CachedFile` validates its arguments
    and builds on it. Its class docstring states the invariants and the
    concurrency rules of this state.

    Args:
        backing: Where the bytes live.
        memory_file: Where cached pages are allocated.
        policy: The readahead policy.
        writable: Whether the file may be written.
        name: The name shown for mappings of the file, or ``None``.
        retry: How transient backing errors are retried.
        max_fetch_bytes: The most one fetch reads.
        max_fetches_in_flight: How many fetches may read at once.
        bus: The bus invalidations are published on (``None``: the default).
    """

    __slots__ = (
        "__weakref__",
        "_backed_size",
        "_backing",
        "_budget",
        "_cache",
        "_closed",
        "_dirty",
        "_evict_tasks",
        "_evictions",
        "_fetcher",
        "_hits",
        "_inode",
        "_lock",
        "_mappings",
        "_mf",
        "_misses",
        "_name",
        "_owns_backing",
        "_policy",
        "_ra",
        "_refs",
        "_retry",
        "_size",
        "_size_task",
        "_stale_dropped",
        "_stale_task",
        "_units",
        "_version",
        "_version_unlearnt",
        "_wb_pending",
        "_wb_task",
        "_whole",
        "_writable",
    )

    def __init__(
        self,
        backing: Backing,
        memory_file: MemoryFile,
        *,
        policy: ReadaheadPolicy,
        writable: bool,
        name: str | None,
        retry: RetryPolicy | None,
        max_fetch_bytes: int,
        max_fetches_in_flight: int,
        bus: InvalidationBus | None,
    ) -> None:
        self._backing = backing
        self._mf = memory_file
        self._policy = policy
        self._ra: ReadaheadState = policy.new_state()
        self._writable = writable
        # Whether aclose() closes the backing too (CachedFile.open made it).
        self._owns_backing = False
        self._name = name
        self._retry = retry
        self._lock = OrderedLock(LockRank.MAPPABLE, "CachedFile.lock")
        # Protected by self._lock.
        self._mappings = MappingSet(bus=bus)
        # The cache state below changes only between awaits (see Concurrency).
        self._cache = FileRangeSet()
        self._dirty = DirtySet()
        self._size: int | None = None
        # How far the backing is known to hold bytes: the size learned from
        # it, grown by what this file wrote there since.
        self._backed_size = 0
        self._version: str | None = None
        # The version after this file's own last change could not be learnt:
        # the next version seen is taken for that change (see _own_change).
        self._version_unlearnt = False
        self._size_task: asyncio.Task[None] | None = None
        self._refs = 1
        self._closed = False
        self._inode = next(_inode_ids)
        self._hits = 0
        self._misses = 0
        # The cache budget (see Concurrency); no units without a limit.
        self._budget = memory_file.cache_limit is not None
        # Set by the complete file, which is the evictable user they name.
        self._units: CacheUnits | None = None
        self._fetcher = Fetcher(
            self,
            backing,
            memory_file,
            self._cache,
            size=self._current_size,
            backed_size=self._current_backed_size,
            version=self._current_version,
            on_stale=None,
            retry=retry,
            max_fetch_bytes=max_fetch_bytes,
            max_fetches_in_flight=max_fetches_in_flight,
            budget=self._budget,
            on_land=self._landed,
        )
        self._evictions = 0
        self._evict_tasks: set[asyncio.Task[None]] = set()
        # After a fetch found the object changed: the pages dropped then,
        # and the task that invalidates, frees them and learns the new size.
        self._stale_dropped: list[FileRange] = []
        self._stale_task: asyncio.Task[None] | None = None
        # Dirty ranges the budget picked, each once, in the order picked;
        # written back by one task, one range at a time.
        self._wb_pending: dict[tuple[int, int], None] = {}
        self._wb_task: asyncio.Task[None] | None = None
        # (size, MappableRange(0, page-rounded size)) as read() last built it.
        self._whole: tuple[int, MappableRange] | None = None

    def _is_closed(self) -> bool:
        # A method call, so that a check after an await is not judged
        # redundant by the type checker.
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: {self!r} is closed")

    async def _ensure_size(self) -> int:
        """Return the file size, asking the backing once if it is not known.

        Raises:
            ClosedError: The file is closed.
            Exception: The backing could not be asked (the next call asks
                again).

        Cancellation:
            The question to the backing is shared by every caller and is not
            abandoned when one of them is cancelled.
        """
        while True:
            self._check_open("size")
            size = self._size
            if size is not None:
                return size
            task = self._size_task
            if task is None:
                task = asyncio.get_running_loop().create_task(
                    self._learn_size(), context=detached_context()
                )
                task.add_done_callback(consume)
                self._size_task = task
            await asyncio.shield(task)

    async def _learn_size(self) -> None:
        """Ask the backing for the file's size and version (one task at a time).

        A backing that can read its tail (``read_tail``, e.g. an HTTP
        object) is asked once, and the bytes that come with the answer are
        cached; otherwise the version is asked, then the size.
        """
        generation = self._fetcher.generation
        tail: tuple[int, bytes] | None = None
        try:
            backing, retry = self._backing, self._retry
            read_tail = getattr(backing, "read_tail", None)
            if callable(read_tail):
                size, version, start, data = await call_with_retry(
                    functools.partial(read_tail, _TAIL_BYTES), retry=retry
                )
                tail = (start, data)
            else:
                # The version first: a change after it is then seen as a
                # change.
                version = await call_with_retry(backing.version, retry=retry)
                size = await call_with_retry(backing.size, retry=retry)
        finally:
            self._size_task = None
        if not is_int(size) or size < 0:
            raise ValueError(f"backing {self._backing!r} reported a bad size {size!r}")
        if self._size is None and generation == self._fetcher.generation:
            self._size = self._backed_size = int(size)
            self._version = version
            if tail is not None and tail[1]:
                await self._fetcher.land_read(tail[0], tail[1], int(size))

    async def _size_or_bus_error(self) -> int:
        try:
            return await self._ensure_size()
        except ClosedError:
            raise
        except Exception as exc:
            raise BusError(exc) from exc

    def _current_size(self) -> int | None:
        return self._size

    def _current_backed_size(self) -> int:
        return self._backed_size

    def _current_version(self) -> str | None:
        return self._version

    def _backed_to(self, end: int) -> None:
        """Record that the backing now holds bytes up to ``end`` at least."""
        self._backed_size = max(self._backed_size, end)

    def _landed(self, start: int, end: int) -> None:
        """Register pages a fetch has just inserted into the cache."""
        if self._units is not None:
            self._units.land(start, end)

    async def _populate(
        self,
        start: int,
        end: int,
        wstart: int,
        wend: int,
        *,
        clip: bool,
        for_access: bool = False,
    ) -> None:
        """Wait until pages ``[start, end)`` are cached, fetching ``[wstart, wend)``.

        Args:
            start: First required offset (page-aligned).
            end: End of the required offsets (page-aligned).
            wstart: Start of the fill window, at most ``start``.
            wend: End of the fill window, at least ``end``.
            clip: Re-clip the required range to the page-rounded size after
                each wait (reads and translations); without it pages past the
                end of the file are filled with zeros (writes).
            for_access: The pages are wanted by the access the current task
                is inside (:func:`~aiomemmap.pgalloc.access_pins.
                current_access`), which copies them later: they stay pinned
                until it ends.

        Raises:
            BusError: A fetch of a required page failed (or the file shrank
                below ``start``: the cause is an ``EOFError``).
            ClosedError: The file is closed.

        Cancellation:
            Only the waiting stops; fetches carry on.

        While it waits, ``[start, end)`` is pinned: the cache budget does not
        evict those pages, so that a large access cannot have its first
        pages evicted while it waits for the last ones. With ``for_access``
        the pin is handed to the access and outlives the call.
        """
        units = self._units
        if units is None:
            await self._fetcher.fill(start, end, wstart, wend, clip=clip)
            return
        units.pin(start, end)
        try:
            await self._fetcher.fill(start, end, wstart, wend, clip=clip)
        finally:
            access = current_access() if for_access else None
            if access is None:
                units.unpin(start, end)
            else:
                access.defer(functools.partial(units.unpin, start, end))

    def _count(self, start: int, end: int) -> bool:
        """Count the hits and misses of ``[start, end)``; return whether all hit."""
        seg = self._cache.find(start)
        if seg is not None and seg.end >= end:
            self._hits += (end - start) // PAGE_SIZE
            return True
        if seg is None and end - start == PAGE_SIZE:
            self._misses += 1
            return False
        present = self._cache.span_range(start, end)
        self._hits += present // PAGE_SIZE
        self._misses += (end - start - present) // PAGE_SIZE
        return present == end - start

    def _whole_file(self, size: int) -> MappableRange:
        """Return ``MappableRange(0, page_round_up(size))``, reusing the last one."""
        whole = self._whole
        if whole is None or whole[0] != size:
            whole = self._whole = (size, MappableRange(0, page_round_up(size)))
        return whole[1]

    def _touch(self, start: int, end: int) -> None:
        """Make the units overlapping ``[start, end)`` the most recently used."""
        if self._units is not None:
            self._units.touch(start, end)

    def _forget_units(self) -> None:
        """Forget every unit (the whole cache was dropped)."""
        if self._units is not None:
            self._units.forget_all()

    def _resync_units(self, start: int, end: int) -> None:
        """Re-cut the units overlapping ``[start, end)`` after pages left the cache."""
        if self._units is not None:
            self._units.resync(self._cache, start, end)

    def _translations(
        self,
        required: MappableRange,
        optional: MappableRange,
        window: MappableRange,
        at: AccessType,
    ) -> list[Translation]:
        """Translate the present pages from ``required.start``; does not await."""
        assert self._size is not None
        limit = min(
            optional.end,
            page_round_up(self._size),
            max(window.end, required.end + TRANSLATE_AHEAD),
        )
        if limit <= required.start:
            # Truncated below the required pages while they were fetched.
            return []
        perms = AccessType.ANY if at.write else AccessType.READ_EXECUTE
        return self._cache.translations(
            required, MappableRange(required.start, limit), self._mf, perms
        )

    def _blocks(self, start: int, end: int) -> list[memoryview | int]:
        """Return the bytes of offsets ``[start, end)``, in order, without copying.

        Each item is a read-only view of cached bytes (one per run of
        contiguous memory-file pages, and per chunk of the memory file), or
        the length of a hole, which reads as zero. Valid until the caller
        next awaits.
        """
        mf = self._mf
        cache = self._cache
        seg = cache.find(start)
        if seg is not None and seg.end >= end:
            # One run holds it all: the common case.
            return list(mf.map_internal(cache.file_range(seg, start, end), _READ))
        out: list[memoryview | int] = []
        pos = start
        for seg in cache.segments(start, end):
            lo, hi = max(seg.start, start), min(seg.end, end)
            if lo > pos:
                out.append(lo - pos)
            out.extend(mf.map_internal(cache.file_range(seg, lo, hi), _READ))
            pos = hi
        if pos < end:
            out.append(end - pos)
        return out

    def _copy_out(self, start: int, end: int) -> bytes:
        """Return the bytes of offsets ``[start, end)`` in one new object.

        One copy: a single run is copied out as is, several runs are joined
        straight into the result. Holes read as zero.
        """
        return join_blocks(self._blocks(start, end))

    def _copy_into(self, start: int, end: int, dst: memoryview) -> None:
        """Copy the bytes of offsets ``[start, end)`` to ``dst[: end - start]``.

        Holes read as zero. ``dst`` is a writable, one-dimensional bytes
        view of at least ``end - start`` bytes.
        """
        pos = 0
        for block in self._blocks(start, end):
            if isinstance(block, int):
                dst[pos : pos + block] = bytes(block)
                pos += block
            else:
                n = len(block)
                dst[pos : pos + n] = block
                pos += n

    def _copy_in(self, start: int, data: memoryview) -> None:
        self._cache.write(self._mf, start, data)
        self._dirty.mark_dirty(page_round_down(start), page_round_up(start + len(data)))

    async def _writeback(self, start: int, end: int) -> None:
        """Write dirty offsets in ``[start, end)`` back (gVisor's ``SyncDirty``).

        Locking:
            The caller holds ``_lock``, so no write, truncation or drop
            changes the cache meanwhile; a page being written is also held by
            an extra reference while its bytes are in use.
        """
        if self._dirty.is_empty_range(start, end):
            # Nothing to write (and a read-only backing has no write_from).
            return
        size = self._size if self._size is not None else 0
        last = max(
            (min(d.end, end, size) for d in self._dirty.segments(start, end)),
            default=0,
        )
        if await sync_dirty(
            start,
            end,
            self._cache,
            self._dirty,
            size,
            self._mf,
            self._backing.write_from,
        ):
            self._backed_to(last)
            await self._own_change()

    async def _own_change(self) -> None:
        """Remember the backing's version after a change made through this file.

        So that :meth:`revalidate` does not take this file's own writes for a
        change made by somebody else. (A change by somebody else that lands
        between the write and this question goes unnoticed.) The question is
        retried as the file's retry policy says; if it still fails, the
        change stands (its bytes are in the backing) and the file is marked
        so that the next revalidation takes the version it finds for this
        change rather than for somebody else's. (A change that fails part way
        leaves the old version: the next revalidation then sees a change and
        drops the cache, after writing its dirty pages back.)

        Locking:
            The caller holds ``_lock``.

        Cancellation:
            Propagates; the file is then marked as when the question fails.
        """
        self._version_unlearnt = True
        try:
            version = await call_with_retry(self._backing.version, retry=self._retry)
        except Exception:
            return
        self._version = version
        self._version_unlearnt = False

    def _is_mapped(self, start: int, end: int) -> bool:
        return any(
            mr.start < end and start < mr.end for mr in self._mappings.mapped_ranges()
        )
