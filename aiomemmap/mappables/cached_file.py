"""CachedFile: a Mappable that pages a backing into a memory file on demand.

A :class:`CachedFile` keeps a page cache of a :class:`~aiomemmap.backings.base.
Backing` (bytes, a local file, an object behind HTTP or S3) in a
:class:`~aiomemmap.MemoryFile`, the way gVisor's gofer client caches a remote
file: a map from file offsets to memory-file pages (gVisor's ``FileRangeSet``),
a set of dirty offsets (``DirtySet``, with its keep-dirty rule for pages that
are writable through a shared mapping) and a :class:`~aiomemmap.MappingSet` of
the spaces that map the file.

What is not in gVisor is the *fetch engine*. Missing pages are read by
background fetch tasks, one per page range:

* single flight: a page range being fetched is recorded in a map of in-flight
  fetches, and every later access that needs those pages waits for that fetch
  instead of starting another;
* a page becomes present (translatable, readable) only once its bytes have
  landed; the part of the last page past the end of the file is zero;
* a fetch belongs to nobody: a waiter that is cancelled stops waiting, and the
  fetch carries on and inserts its pages for the next access;
* a failed fetch (after the retries of
  :func:`~aiomemmap.backings.base.read_fully`) frees its pages and leaves them
  absent; each waiter gets a :class:`~aiomemmap.BusError` and the next access
  fetches again;
* several fetches run at once (``max_fetches_in_flight``) and neighbouring
  missing pages are fetched together, up to ``max_fetch_bytes`` per fetch, so a
  sequential scan keeps the backing busy;
* a readahead policy (:mod:`aiomemmap.mappables.readahead`) chooses how much to fetch
  around each access; an access waits only for the pages it requires, so the
  rest of the window is fetched in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import (
    AlignmentError,
    BusError,
    ClosedError,
    InvariantError,
    RefCountError,
    check_invariant,
)
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
from aiomemmap._core.ranges import AddrRange, FileRange, MappableRange
from aiomemmap.backings.base import Backing, RetryPolicy, call_with_retry
from aiomemmap.fsutil.dirty_set import DirtySet, sync_dirty
from aiomemmap.fsutil.file_range_set import FileRangeSet, release
from aiomemmap.mappables.cache_units import CacheUnits
from aiomemmap.mappables.fetcher import Fetcher
from aiomemmap.mappables.readahead import (
    AdaptiveReadahead,
    ReadaheadHint,
    ReadaheadPolicy,
)
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.memmap.interfaces import (
    InvalidateOpts,
    MappingSpace,
    TranslateResult,
    Translation,
    check_translate_result,
)
from aiomemmap.memmap.mapping_set import MappingSet
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = [
    "DEFAULT_MAX_FETCHES_IN_FLIGHT",
    "DEFAULT_MAX_FETCH_BYTES",
    "CacheStatistics",
    "CachedFile",
]

DEFAULT_MAX_FETCH_BYTES: Final[int] = 2 * 1024 * 1024
"""The most one fetch reads from the backing (2 MiB).

Big enough that per-request overhead is small next to the transfer, small
enough that an 8 MiB readahead window is split into four fetches that run at
the same time and that a waiter for the first pages of a window is woken
before the whole window has arrived.
"""

DEFAULT_MAX_FETCHES_IN_FLIGHT: Final[int] = 32
"""How many fetches may read from the backing at once.

Enough for 16 concurrent random readers plus a sequential reader's windows,
each fetch waiting out the storage's round trip.
"""

_TRANSLATE_AHEAD: Final[int] = HUGE_PAGE_SIZE
"""How far past the required range translate may hand out present pages."""

_NO_PRIVATE: Final = InvalidateOpts(invalidate_private=False)
_WITH_PRIVATE: Final = InvalidateOpts(invalidate_private=True)
_inode_ids = itertools.count(1)


@final
@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of a cached file's counters.

    Attributes:
        hits: Pages that reads and translations found present.
        misses: Pages that reads and translations found absent (they waited
            for a fetch).
        fetches: Fetches that read from the backing.
        bytes_fetched: Bytes read from the backing by fetches.
        fetches_in_flight: Fetches started and not finished (waiting for a
            slot or reading).
        resident_bytes: Bytes of present pages.
        dirty_bytes: Bytes of offsets newer in the cache than in the backing.
        evictions: Pages of this file evicted under the memory file's
            ``cache_limit`` (counted when revoked from the cache).

    Concurrency:
        Immutable.
    """

    hits: int
    misses: int
    fetches: int
    bytes_fetched: int
    fetches_in_flight: int
    resident_bytes: int
    dirty_bytes: int
    evictions: int


def _consume(task: asyncio.Task[Any]) -> None:
    """Mark a task's outcome as seen, so that asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def _check_offset(what: str, name: str, value: object) -> int:
    if type(value) is int and 0 <= value <= ADDR_LIMIT:
        return value
    if not is_int(value):
        raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    assert isinstance(value, int)
    if not 0 <= value <= ADDR_LIMIT:
        raise ValueError(f"{what}: {name} must be in [0, 2**64], got {value:#x}")
    return int(value)


def _check_page_range(what: str, mr: object) -> MappableRange:
    if not isinstance(mr, MappableRange):
        raise TypeError(f"{what}: mr must be a MappableRange, got {mr!r}")
    if mr.length == 0:
        raise ValueError(f"{what}: mr {mr} is empty")
    if (mr.start | mr.end) & PAGE_MASK:
        raise AlignmentError(f"{what}: mr {mr} is not page-aligned")
    return mr


@final
class CachedFile:
    """A lazily paged, cached view of a :class:`~aiomemmap.backings.base.Backing`.

    A :class:`~aiomemmap.Mappable` and a :class:`~aiomemmap.MappingIdentity`:
    address spaces map it shared or private, and read it, through
    :meth:`translate`; programs read and write it through :meth:`read` and
    :meth:`write`. Contents are paged into ``memory_file`` (as
    ``MemoryKind.PAGE_CACHE``) on first use.

    The size of the file is learned from the backing on first use (the
    constructor cannot await) and tracked from then on; :meth:`revalidate`
    picks up changes made to the backing by others.

    Args:
        backing: Where the bytes live.
        memory_file: Where cached pages are allocated.
        readahead: The readahead policy; ``None`` means
            :class:`~aiomemmap.mappables.readahead.AdaptiveReadahead` with its
            defaults.
        writable: Whether :meth:`write`, :meth:`truncate` and writable shared
            mappings are allowed. Requires a backing that is not read-only.
        name: The name shown for mappings of the file (``/proc/pid/maps``).
        retry: How transient backing errors are retried: those of reads and
            of the first questions for the size and version; ``None`` uses
            the default :class:`~aiomemmap.backings.base.RetryPolicy`.
        max_fetch_bytes: The most one fetch reads: a positive multiple of
            ``PAGE_SIZE``.
        max_fetches_in_flight: How many fetches may read at once: positive.
        bus: The bus this file publishes invalidations of its mappings on;
            ``None`` means the process-wide default bus.

    Raises:
        TypeError: An argument has the wrong type (``bus`` included: it
            must be an :class:`~aiomemmap.InvalidationBus` or None).
        ValueError: A size is out of range (``AlignmentError`` if not a
            multiple of ``PAGE_SIZE``).
        PermissionError: ``writable`` with a read-only backing.

    Invariants:
        * ``_cache`` maps page-aligned offsets to memory-file offsets; each of
          its pages holds one reference owned by this file, and its bytes are
          the file's contents (zero past the size).
        * ``_fetches`` maps page ranges to the fetch reading them; no offset
          is both cached and being fetched.
        * ``_dirty`` covers only offsets that are cached, below the page-
          rounded size.
        * Every offset ever translated was cached at the time, below the
          page-rounded size; a page leaves ``_cache`` before the spaces that
          may have translated it are invalidated, and its reference is
          dropped only after that invalidation.

    Concurrency:
        Task-safe within one event loop. Two kinds of synchronisation:

        * The cache state (``_cache``, ``_dirty``, ``_fetches``, ``_size``,
          ``_generation``, the readahead state and the counters) is only
          changed in code that does not await, so each change is atomic on
          the event loop. :meth:`translate` and :meth:`read` therefore take
          no lock at all: they never hold a lock, of ``TRANSLATE`` rank or
          any other, while they wait for a fetch (backing I/O), and they
          never publish invalidations.
        * ``_lock`` (``LockRank.MAPPABLE``, "CachedFile.lock") guards the
          mapping set and serialises the operations that change the file or
          the backing: :meth:`add_mapping`, :meth:`remove_mapping`,
          :meth:`copy_mapping`, :meth:`write`, :meth:`truncate`,
          :meth:`sync`, :meth:`msync`, :meth:`revalidate`, :meth:`aclose`. It
          is held across backing writes, waits for fetches and invalidation
          publishing; that is allowed at ``MAPPABLE`` rank (invalidation
          takes only ``ACTIVE``), and it is never taken by :meth:`translate`,
          which runs under an address space's ``ACTIVE`` lock.

        Cache budget. When ``memory_file`` has a ``cache_limit``, cached
        pages are evicted least recently used first, across every cached
        file of that memory file:

        * Unit: the pages one fetch inserted (at most ``max_fetch_bytes``),
          kept in ``_units`` and registered with the memory file's registry
          of evictable ranges. A hit (read or translate) makes the units it
          touches the most recently used. Parts of a unit that outlive an
          eviction or a truncation become units of their own.
        * Who evicts: a fetch, before allocating its pages, reserves room
          with the memory file's evictor (:meth:`~aiomemmap.pgalloc.eviction.
          Evictor.reserve`), which pops victims of any evictable user and
          calls their :meth:`evict` until the reservation is granted.
        * What goes: the cached, clean pages of the victim that no access in
          progress is waiting for (``_pins``: the required ranges of every
          :meth:`_populate` call). Dirty pages are first written back, but
          only if this file's lock is free right now (it is taken, never
          waited for, since its holder may be waiting for the very fetch
          that evicts); pages still dirty afterwards (the lock was busy,
          the backing failed, or they stay writable through a shared
          mapping) are not evicted. Pages being fetched are not in the cache
          and so are never evicted.
        * Protocol, revoke first: in one step without awaiting, the pages
          leave ``_cache`` (so no translate or read can find them any more)
          and the memory file counts them as evicting; then every space
          mapping them is invalidated (``invalidate_private=False``); only
          then is this file's reference dropped, punching the hole. Pages
          nobody maps are freed at once; for mapped pages the invalidation
          and the freeing run in a background task, which the fetch does
          not wait for: a space may be inside a translate that waits for
          that very fetch while holding the lock the invalidation needs.
          Until such a task ends, the memory file's page-cache bytes exceed
          what the budget counts.
        * A later access finds a hole and fetches again.

        Fetches run in tasks created with ``detached_context()``; they take
        no lock. A fetch that lands after the file was truncated or dropped
        (the generation changed) discards its pages. A fetch never reads
        offsets that a write is sending straight to the backing: writes
        through to the backing happen only for offsets neither cached nor
        being fetched, and a fetch created meanwhile waits for them.
    """

    __slots__ = (
        "__weakref__",
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
        "_policy",
        "_ra",
        "_refs",
        "_retry",
        "_size",
        "_size_task",
        "_units",
        "_version",
        "_whole",
        "_writable",
    )

    def __init__(
        self,
        backing: Backing,
        memory_file: MemoryFile,
        *,
        readahead: ReadaheadPolicy | None = None,
        writable: bool = False,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_fetches_in_flight: int = DEFAULT_MAX_FETCHES_IN_FLIGHT,
        bus: InvalidationBus | None = None,
    ) -> None:
        owner = "CachedFile"
        missing = [
            m
            for m in ("size", "read_into", "version", "truncate", "write_from")
            if not callable(getattr(backing, m, None))
        ]
        if missing:
            raise TypeError(
                f"{owner}: backing must be a Backing, got {backing!r} "
                f"(missing {', '.join(missing)})"
            )
        if not isinstance(memory_file, MemoryFile):
            raise TypeError(
                f"{owner}: memory_file must be a MemoryFile, got {memory_file!r}"
            )
        if readahead is not None and not (
            callable(getattr(readahead, "window", None))
            and callable(getattr(readahead, "new_state", None))
        ):
            raise TypeError(
                f"{owner}: readahead must be a readahead policy or None, "
                f"got {readahead!r}"
            )
        if type(writable) is not bool:
            raise TypeError(f"{owner}: writable must be a bool, got {writable!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{owner}: name must be a str or None, got {name!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(
                f"{owner}: retry must be a RetryPolicy or None, got {retry!r}"
            )
        if not is_int(max_fetch_bytes):
            raise TypeError(
                f"{owner}: max_fetch_bytes must be an int, got {max_fetch_bytes!r}"
            )
        if max_fetch_bytes <= 0:
            raise ValueError(
                f"{owner}: max_fetch_bytes must be positive, got {max_fetch_bytes}"
            )
        if max_fetch_bytes & PAGE_MASK:
            raise AlignmentError(
                f"{owner}: max_fetch_bytes must be a multiple of PAGE_SIZE "
                f"({PAGE_SIZE}), got {max_fetch_bytes:#x}"
            )
        if not is_int(max_fetches_in_flight):
            raise TypeError(
                f"{owner}: max_fetches_in_flight must be an int, "
                f"got {max_fetches_in_flight!r}"
            )
        if max_fetches_in_flight <= 0:
            raise ValueError(
                f"{owner}: max_fetches_in_flight must be positive, "
                f"got {max_fetches_in_flight}"
            )
        if writable and getattr(backing, "readonly", False):
            raise PermissionError(
                errno.EACCES,
                f"{owner}: cannot open {backing!r} writable: the backing is read-only",
            )
        self._backing = backing
        self._mf = memory_file
        self._policy: ReadaheadPolicy = (
            readahead if readahead is not None else AdaptiveReadahead()
        )
        self._ra = self._policy.new_state()
        self._writable = writable
        self._name = name
        self._retry = retry
        self._lock = OrderedLock(LockRank.MAPPABLE, "CachedFile.lock")
        # Protected by self._lock.
        self._mappings = MappingSet(bus=bus)
        # The cache state below changes only between awaits (see Concurrency).
        self._cache = FileRangeSet()
        self._dirty = DirtySet()
        self._size: int | None = None
        self._version: str | None = None
        self._size_task: asyncio.Task[None] | None = None
        self._refs = 1
        self._closed = False
        self._inode = next(_inode_ids)
        self._hits = 0
        self._misses = 0
        # The cache budget (see Concurrency); no units without a limit.
        self._budget = memory_file.cache_limit is not None
        self._units = CacheUnits(self, memory_file) if self._budget else None
        self._fetcher = Fetcher(
            self,
            backing,
            memory_file,
            self._cache,
            size=self._current_size,
            retry=retry,
            max_fetch_bytes=int(max_fetch_bytes),
            max_fetches_in_flight=int(max_fetches_in_flight),
            budget=self._budget,
            on_land=self._landed,
        )
        self._evictions = 0
        self._evict_tasks: set[asyncio.Task[None]] = set()
        # (size, MappableRange(0, page-rounded size)) as read() last built it.
        self._whole: tuple[int, MappableRange] | None = None

    def __repr__(self) -> str:
        size = "?" if self._size is None else f"{self._size:#x}"
        state = "closed" if self._closed else f"size={size}"
        return f"<CachedFile {self.mapped_name()!r} {state}>"

    # ------------------------------------------------------------------
    # Properties and identity

    @property
    def size(self) -> int | None:
        """The file size last learned, or ``None`` before the first use."""
        return self._size

    @property
    def writable(self) -> bool:
        """Whether the file may be written."""
        return self._writable

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    @property
    def readahead(self) -> ReadaheadPolicy:
        """The readahead policy."""
        return self._policy

    def inc_ref(self) -> None:
        """Take one more reference on the file (a new mapping of it).

        The file starts with one reference, its creator's.

        Locking:
            Takes no lock and never waits.
        """
        self._refs += 1

    async def dec_ref(self) -> None:
        """Drop one reference; dropping the last one closes the file.

        Raises:
            RefCountError: No reference was held.
            OSError: Writing back dirty pages on close failed.

        Locking:
            As :meth:`aclose` when it closes.
        """
        if self._refs <= 0:
            raise RefCountError(f"{self!r}: dec_ref without a reference")
        self._refs -= 1
        if self._refs == 0:
            await self.aclose()

    def mapped_name(self) -> str:
        """Return the name shown for mappings of the file."""
        return self._name if self._name is not None else f"cachedfile:{self._inode}"

    def device_id(self) -> int:
        """Return the device number shown for mappings of the file (0)."""
        return 0

    def inode_id(self) -> int:
        """Return the inode number shown for mappings of the file."""
        return self._inode

    def advise(self, hint: ReadaheadHint) -> None:
        """Pass ``madvise`` advice to the readahead policy.

        Args:
            hint: The advice.

        Raises:
            TypeError: ``hint`` is not a ``ReadaheadHint``.
        """
        self._ra.advise(hint)

    def statistics(self) -> CacheStatistics:
        """Return the file's counters.

        Complexity:
            O(n) in the numbers of cached and dirty segments.
        """
        return CacheStatistics(
            hits=self._hits,
            misses=self._misses,
            fetches=self._fetcher.fetches_done,
            bytes_fetched=self._fetcher.bytes_fetched,
            fetches_in_flight=self._fetcher.in_flight(),
            resident_bytes=self._cache.span(),
            dirty_bytes=self._dirty.span(),
            evictions=self._evictions,
        )

    def is_mapped(self) -> bool:
        """Return whether any mapping of the file is recorded."""
        return not self._mappings.is_empty()

    def check_invariants(self) -> None:
        """Check the class invariants.

        Raises:
            InvariantError: An invariant does not hold.
        """
        self._cache.check_invariants()
        self._dirty.check_invariants()
        self._fetcher.check_invariants()
        for dseg in self._dirty:
            hole = self._cache.first_hole(dseg.start, dseg.end)
            check_invariant(hole is None, f"dirty offsets {hole} are not cached")
        if self._units is not None:
            self._units.check_invariants(self._cache)

    # ------------------------------------------------------------------
    # Lifetime

    async def __aenter__(self) -> CachedFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write dirty pages back, then drop every page; later calls do nothing.

        Fetches in flight are cancelled (their waiters get a ``BusError``
        wrapping ``ClosedError``), every mapping is invalidated (the spaces
        keep the references they took), and every cached page is freed. The
        backing itself is not closed: it belongs to the caller.

        Raises:
            OSError: Writing back failed. The file is closed anyway and the
                unwritten data is lost.

        Postconditions:
            ``closed``; this file holds no page of the memory file.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes invalidations under it.

        Cancellation:
            A cancellation during the write-back leaves the file open with the
            pages not yet written still dirty. Once closing has started, it is
            completed before the cancellation propagates.
        """
        if self._closed:
            return
        async with self._lock:
            if self._is_closed():
                return
            error: Exception | None = None
            if self._dirty:
                try:
                    await self._writeback(0, ADDR_LIMIT)
                except Exception as exc:
                    error = exc
            self._closed = True
            self._fetcher.close()
            await finish_shielded(self._shutdown())
        if error is not None:
            raise error

    async def _shutdown(self) -> None:
        tasks = self._fetcher.cancel_all()
        if self._size_task is not None:
            self._size_task.cancel()
            tasks.append(self._size_task)
        if tasks:
            await asyncio.wait(tasks)
        if self._evict_tasks:
            # Evictions of pages revoked earlier: let them free their pages.
            await asyncio.wait(list(self._evict_tasks))
        dropped = self._cache.drop_all()
        self._dirty.drop_all()
        self._forget_units()
        try:
            if not self._mappings.is_empty():
                await self._mappings.invalidate_all(_NO_PRIVATE)
        finally:
            release(self._mf, dropped)

    def _is_closed(self) -> bool:
        # A method call, so that a check after an await is not judged
        # redundant by the type checker.
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: {self!r} is closed")

    # ------------------------------------------------------------------
    # Size

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
                task.add_done_callback(_consume)
                self._size_task = task
            await asyncio.shield(task)

    async def _learn_size(self) -> None:
        generation = self._fetcher.generation
        try:
            # The version first: a change after it is then seen as a change.
            backing, retry = self._backing, self._retry
            version = await call_with_retry(backing.version, retry=retry)
            size = await call_with_retry(backing.size, retry=retry)
        finally:
            self._size_task = None
        if not is_int(size) or size < 0:
            raise ValueError(f"backing {self._backing!r} reported a bad size {size!r}")
        if self._size is None and generation == self._fetcher.generation:
            self._size = int(size)
            self._version = version

    async def _size_or_bus_error(self) -> int:
        try:
            return await self._ensure_size()
        except ClosedError:
            raise
        except Exception as exc:
            raise BusError(exc) from exc

    # ------------------------------------------------------------------
    # Filling the cache (the fetcher does the fetching)

    def _current_size(self) -> int | None:
        return self._size

    def _landed(self, start: int, end: int) -> None:
        """Register pages a fetch has just inserted into the cache."""
        if self._units is not None:
            self._units.land(start, end)

    async def _populate(
        self, start: int, end: int, wstart: int, wend: int, *, clip: bool
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

        Raises:
            BusError: A fetch of a required page failed (or the file shrank
                below ``start``: the cause is an ``EOFError``).
            ClosedError: The file is closed.

        Cancellation:
            Only the waiting stops; fetches carry on.

        While it waits, ``[start, end)`` is pinned: the cache budget does not
        evict those pages, so that a large access cannot have its first
        pages evicted while it waits for the last ones.
        """
        if self._units is None:
            await self._fetcher.fill(start, end, wstart, wend, clip=clip)
            return
        with self._units.pinned(start, end):
            await self._fetcher.fill(start, end, wstart, wend, clip=clip)

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

    # ------------------------------------------------------------------
    # The cache budget (see Concurrency in the class docstring)

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

    async def evict(self, er: MappableRange) -> None:
        """Evict what can go of the offsets ``er``: a range the budget picked.

        The :class:`~aiomemmap.memmap.interfaces.EvictableUser` method, called
        by the memory file's evictor. Dirty pages are written back first if
        this file's lock is free right now; then :meth:`_revoke` does the
        rest. Tolerates any range: what is not cached, or no longer this
        file's, is ignored.

        Args:
            er: The offsets.

        Locking:
            Called holding no lock. Takes ``_lock`` only if it is free.

        Cancellation:
            Pages not yet written back stay dirty and cached.
        """
        start, end = er.start, er.end
        if self._closed or self._units is None:
            return
        if not self._dirty.is_empty_range(start, end) and not self._lock.locked():
            await self._lock.acquire()
            try:
                if not self._closed:
                    # A failed write-back leaves the pages dirty: not evicted.
                    with contextlib.suppress(Exception):
                        await self._writeback(start, end)
            finally:
                self._lock.release()
        if not self._closed:
            self._revoke(start, end)

    def _revoke(self, start: int, end: int) -> None:
        """Take the evictable pages of ``[start, end)`` out of the cache.

        Evictable: cached, clean, and not pinned by a waiting access. Does
        not await: once it returns, no read or translate can find those
        pages. Pages no space maps are freed at once; mapped ones after the
        spaces were invalidated, in a background task.
        """
        if self._units is None:
            return
        pieces = self._units.evictable(start, end, self._dirty)
        if not pieces:
            # Nothing can go now: register the range again.
            self._resync_units(start, end)
            return
        dropped: list[FileRange] = []
        total = 0
        for a, b in pieces:
            got = self._cache.drop(a, b)
            dropped.extend(got)
            total += sum(fr.length for fr in got)
        self._resync_units(start, end)
        if not total:
            return
        self._evictions += total // PAGE_SIZE
        self._mf.begin_eviction(total)
        mapped = [
            (a, b)
            for a, b in pieces
            if not self._mappings.is_empty() and self._is_mapped(a, b)
        ]
        if not mapped:
            self._free_evicted(dropped, total)
            return
        task = asyncio.get_running_loop().create_task(
            self._finish_evict(dropped, mapped, total),
            name=f"CachedFile eviction [{start:#x}, {end:#x})",
            context=detached_context(),
        )
        self._evict_tasks.add(task)
        task.add_done_callback(self._evict_tasks.discard)
        task.add_done_callback(_consume)

    async def _finish_evict(
        self, dropped: list[FileRange], mapped: list[tuple[int, int]], total: int
    ) -> None:
        """Invalidate the spaces mapping evicted pages, then free the pages."""
        try:
            for a, b in mapped:
                await self._mappings.invalidate(MappableRange(a, b), _NO_PRIVATE)
        finally:
            self._free_evicted(dropped, total)

    def _free_evicted(self, dropped: list[FileRange], total: int) -> None:
        if self._mf.closed:
            return
        release(self._mf, dropped)
        self._mf.end_eviction(total)

    # ------------------------------------------------------------------
    # Mappable

    async def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Record that ``ms`` maps ``ar`` to offsets from ``offset``.

        Args:
            ms: The mapping space.
            ar: The addresses mapped.
            offset: The offset mapped at ``ar.start``.
            writable: Whether the mapping is shared and may write the file.

        Raises:
            PermissionError: ``writable`` and the file is not writable.
            TypeError: An argument has the wrong type.
            ValueError: A range is empty, unaligned or overflows.
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``).

        Cancellation:
            Nothing is recorded if cancelled.
        """
        if type(writable) is not bool:
            raise TypeError(f"add_mapping: writable must be a bool, got {writable!r}")
        async with self._lock:
            self._check_open("add_mapping")
            if writable and not self._writable:
                raise PermissionError(
                    errno.EACCES,
                    f"add_mapping: {self!r} is not writable, so it cannot be "
                    "mapped shared with write permission",
                )
            self._mappings.add_mapping(ms, ar, offset, writable)

    async def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Forget a mapping recorded by :meth:`add_mapping`.

        Offsets no longer mapped by anyone may become clean after their next
        write-back (gVisor's ``AllowClean``).

        Raises:
            LookupError: Nothing is mapped at ``offset`` (a caller bug).
            TypeError: An argument has the wrong type.
            ValueError: A range is empty, unaligned or overflows.

        Locking:
            Takes ``_lock`` (``MAPPABLE``).
        """
        async with self._lock:
            for mr in self._mappings.remove_mapping(ms, ar, offset, writable):
                self._dirty.allow_clean(mr.start, mr.end)

    async def copy_mapping(
        self,
        ms: MappingSpace,
        src_ar: AddrRange,
        dst_ar: AddrRange,
        offset: int,
        writable: bool,
    ) -> None:
        """Record the copy of a mapping within ``ms`` (``mremap``).

        Recorded as :meth:`add_mapping` of ``dst_ar``.

        Raises:
            As :meth:`add_mapping`.

        Locking:
            As :meth:`add_mapping`.
        """
        await self.add_mapping(ms, dst_ar, offset, writable)

    async def invalidate_unsavable(self) -> None:
        """Do nothing: cached pages live in the memory file, which is saved."""

    async def translate(
        self, required: MappableRange, optional: MappableRange, at: AccessType
    ) -> TranslateResult:
        """Return the memory-file pages holding offsets ``required``.

        The file is clipped to its page-rounded size: offsets wholly past it
        get ``BusError(EOFError)``, as tmpfs does. Missing pages in the
        window chosen by the readahead policy (never outside ``optional``)
        are fetched; the call waits only for the required ones. Translations
        cover the present pages from ``required.start``, contiguous, and may
        run past ``required`` up to the window (or 2 MiB past ``required``).

        Permissions are read and execute, plus write when ``at.write``; a
        write translation keeps its pages dirty until the mapping is removed
        (gVisor's ``KeepDirty``), since they can change at any time.

        Args:
            required: The offsets that must be translated.
            optional: The offsets that may be translated and filled.
            at: The accesses needed.

        Returns:
            ``(translations, error)``: a ``BusError`` wraps the cause when
            not all of ``required`` is translated (``EOFError`` past the end,
            the backing's error after retries, ``PermissionError`` for write
            access to a file that is not writable, ``ClosedError``).

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The ranges break the preconditions (as
                :func:`~aiomemmap.check_translate_result` checks them).

        Postconditions:
            The result passes ``check_translate_result``; this file holds a
            reference on every translated page until it invalidates the
            spaces that map it.

        Locking:
            Takes no lock: it may run under an address space's ``ACTIVE``
            lock and waits for fetches without holding any lock of its own.

        Cancellation:
            Nothing is handed out and nothing leaks; fetches that were
            started carry on and insert their pages.
        """
        # Raises for bad input exactly as the postcondition checker does.
        check_translate_result(required, optional, at, [], None)
        if self._closed:
            return TranslateResult([], BusError(ClosedError(f"{self!r} is closed")))
        if at.write and not self._writable:
            return TranslateResult(
                [],
                BusError(PermissionError(errno.EACCES, f"{self!r} is not writable")),
            )
        try:
            size = await self._size_or_bus_error()
        except (BusError, ClosedError) as exc:
            return TranslateResult(
                [], exc if isinstance(exc, BusError) else BusError(exc)
            )
        rounded = page_round_up(size)
        if required.start >= rounded:
            return TranslateResult(
                [], BusError(EOFError(f"{required} is past the end of {self!r}"))
            )
        req = MappableRange(required.start, min(required.end, rounded))
        opt = MappableRange(optional.start, min(optional.end, rounded))
        self._count(req.start, req.end)
        window = self._policy.window(self._ra, req, opt, size)
        error: BaseException | None = None
        try:
            await self._populate(
                req.start, req.end, window.start, window.end, clip=True
            )
        except (BusError, ClosedError) as exc:
            error = exc if isinstance(exc, BusError) else BusError(exc)
        # From here on nothing awaits: the pages found stay cached.
        translations = self._translations(required, optional, window, at)
        if translations:
            self._touch(required.start, translations[-1].source.end)
        end = translations[-1].source.end if translations else required.start
        if error is None and end < required.end:
            error = BusError(EOFError(f"{required} extends past the end of {self!r}"))
        if at.write and translations:
            self._dirty.keep_dirty(required.start, end)
        if is_debug():
            problem = check_translate_result(
                required, optional, at, translations, error
            )
            if problem is not None:
                raise InvariantError(problem)
        return TranslateResult(translations, error)

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
            max(window.end, required.end + _TRANSLATE_AHEAD),
        )
        if limit <= required.start:
            # Truncated below the required pages while they were fetched.
            return []
        perms = AccessType.ANY if at.write else AccessType.READ_EXECUTE
        return self._cache.translations(
            required, MappableRange(required.start, limit), self._mf, perms
        )

    # ------------------------------------------------------------------
    # Reads and writes

    async def read(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset`` through the cache.

        Present pages are served from the cache; missing ones are fetched,
        together with whatever the readahead policy adds (fetched in the
        background: the call waits only for the pages it reads).

        Args:
            offset: Where to start.
            n: How many bytes to read at most.

        Returns:
            The bytes; short only at the end of the file (empty at or past
            it, also when a truncation racing the read moved the end there).

        Raises:
            TypeError: ``offset`` or ``n`` is not an int.
            ValueError: ``offset`` or ``n`` is negative or too large.
            BusError: The backing failed (after retries); ``.err`` is the
                cause.
            ClosedError: The file is closed.

        Locking:
            Takes no lock.

        Cancellation:
            Nothing changes; fetches that were started carry on.
        """
        offset = _check_offset("read", "offset", offset)
        n = _check_offset("read", "n", n)
        if self._closed:
            self._check_open("read")
        size = self._size
        if size is None:
            size = await self._size_or_bus_error()
        end = min(offset + n, size)
        if end <= offset:
            return b""
        start_p, end_p = offset & ~PAGE_MASK, (end + PAGE_MASK) & ~PAGE_MASK
        if end_p >= ADDR_LIMIT:
            end_p = page_round_up(end)  # Raises OverflowError.
        cached = self._count(start_p, end_p)
        window = self._policy.window(
            self._ra, MappableRange(start_p, end_p), self._whole_file(size), size
        )
        try:
            if cached:
                # Nothing to wait for (so nothing to pin either): what
                # _populate does when it finds the pages present.
                if self._closed:
                    self._check_open("fetch")
                self._fetcher.start(window.start, window.end)
            elif self._units is not None:
                await self._populate(
                    start_p, end_p, window.start, window.end, clip=True
                )
            else:
                await self._fetcher.fill(
                    start_p, end_p, window.start, window.end, clip=True
                )
        except BusError as exc:
            # A truncation racing this read moved the end of the file to or
            # below it: as at the end of any file, that reads nothing.
            if (
                isinstance(exc.err, EOFError)
                and self._size is not None
                and self._size <= offset
            ):
                return b""
            raise
        # Nothing awaits from here on.
        assert self._size is not None
        end = min(end, self._size)
        if end <= offset:
            return b""
        if self._budget:
            self._touch(start_p, page_round_up(end))
        return self._copy_out(offset, end)

    def _copy_out(self, start: int, end: int) -> bytes:
        return self._cache.read(self._mf, start, end)

    def _copy_in(self, start: int, data: memoryview) -> None:
        self._cache.write(self._mf, start, data)
        self._dirty.mark_dirty(page_round_down(start), page_round_up(start + len(data)))

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``, extending the file if needed.

        Cached pages are changed in the cache and marked dirty (written back
        by :meth:`sync`). Offsets that are neither cached nor mapped go
        straight to the backing, as gVisor's caching inode did; mapped ones
        are fetched first and written in the cache.

        Args:
            offset: Where to write.
            data: The bytes.

        Returns:
            ``len(data)``.

        Raises:
            TypeError: ``offset`` is not an int or ``data`` not bytes-like.
            ValueError: The write would end past ``2**64``.
            PermissionError: The file is not writable.
            BusError: Fetching a page to update failed.
            OSError: Writing straight to the backing failed (earlier parts
                may have been written).
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and holds it while waiting for
            fetches and backing writes.

        Cancellation:
            A write cancelled while waiting for a fetch changed nothing; one
            cancelled during a write to the backing may have written part of
            the data there. The cache is consistent either way.
        """
        offset = _check_offset("write", "offset", offset)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write: data must be bytes-like, got {type(data)!r}")
        view = memoryview(data).cast("B") if memoryview(data).contiguous else None
        if view is None:
            view = memoryview(bytes(data))
        if offset + len(view) > ADDR_LIMIT - PAGE_SIZE:
            raise ValueError(
                f"write: {len(view)} bytes at {offset:#x} end past the offset space"
            )
        if not self._writable:
            raise PermissionError(errno.EACCES, f"write: {self!r} is not writable")
        if not len(view):
            return 0
        async with self._lock:
            self._check_open("write")
            await self._size_or_bus_error()
            await self._write_mixed(offset, view)
        return len(view)

    def _is_mapped(self, start: int, end: int) -> bool:
        return any(
            mr.start < end and start < mr.end for mr in self._mappings.mapped_ranges()
        )

    def _grow(self, end: int) -> None:
        assert self._size is not None
        self._size = max(self._size, end)

    async def _write_mixed(self, offset: int, view: memoryview) -> None:
        """Write cached parts in the cache and the rest straight to the backing."""
        pos, end = offset, offset + len(view)
        while pos < end:
            seg = self._cache.find(pos)
            if seg is not None:
                stop = min(end, seg.end)
                self._copy_in(pos, view[pos - offset : stop - offset])
                self._grow(stop)
                pos = stop
                continue
            fetch = self._fetcher.find(pos)
            if fetch is not None:
                # Being fetched: wait, then look again (cached or a hole).
                await fetch.done.wait()
                continue
            stop = end
            nxt = self._cache.lower_bound_segment(pos)
            if nxt is not None:
                stop = min(stop, nxt.start)
            nxt_fetch = self._fetcher.next_start(pos)
            if nxt_fetch is not None:
                stop = min(stop, nxt_fetch)
            if self._is_mapped(pos, stop):
                # Mapped offsets are written in the cache, so that the
                # spaces mapping them see the write once they translate.
                lo, hi = page_round_down(pos), page_round_up(stop)
                await self._populate(lo, hi, lo, hi, clip=False)
                continue
            with self._fetcher.writing_through(page_round_down(pos), stop):
                n = await self._backing.write_from(
                    pos, view[pos - offset : stop - offset]
                )
            if n != stop - pos:
                raise OSError(
                    errno.EIO, f"backing wrote {n} of {stop - pos} bytes at {pos:#x}"
                )
            self._grow(stop)
            pos = stop
            await self._own_change()

    async def prefetch(self, mr: MappableRange) -> None:
        """Fetch the pages of ``mr`` (clipped to the file) and wait for them.

        Args:
            mr: Page-aligned, non-empty offsets.

        Raises:
            TypeError: ``mr`` is not a ``MappableRange``.
            ValueError: ``mr`` is empty or unaligned.
            BusError: A fetch failed.
            ClosedError: The file is closed.

        Locking:
            Takes no lock.

        Cancellation:
            Only the waiting stops; the fetches carry on.
        """
        mr = _check_page_range("prefetch", mr)
        self._check_open("prefetch")
        size = await self._size_or_bus_error()
        end = min(mr.end, page_round_up(size))
        if end <= mr.start:
            return
        await self._populate(mr.start, end, mr.start, end, clip=True)

    # ------------------------------------------------------------------
    # Write-back, truncation, revalidation

    async def sync(self) -> None:
        """Write every dirty page back to the backing.

        Pages that stay writable through a shared mapping are written but
        stay dirty (gVisor's keep-dirty rule).

        Raises:
            OSError: The backing failed; unwritten pages stay dirty.
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and holds it across backing
            writes.

        Cancellation:
            Pages not yet written stay dirty; nothing leaks.
        """
        async with self._lock:
            self._check_open("sync")
            await self._writeback(0, ADDR_LIMIT)

    async def msync(self, mr: MappableRange) -> None:
        """Write the dirty pages of ``mr`` back to the backing.

        Raises:
            TypeError: ``mr`` is not a ``MappableRange``.
            ValueError: ``mr`` is empty or unaligned.
            OSError: The backing failed; unwritten pages stay dirty.
            ClosedError: The file is closed.

        Locking:
            As :meth:`sync`.
        """
        mr = _check_page_range("msync", mr)
        async with self._lock:
            self._check_open("msync")
            await self._writeback(mr.start, mr.end)

    async def _writeback(self, start: int, end: int) -> None:
        """Write dirty offsets in ``[start, end)`` back (gVisor's ``SyncDirty``).

        Locking:
            The caller holds ``_lock``, so no write, truncation or drop
            changes the cache meanwhile; a page being written is also held by
            an extra reference while its bytes are in use.
        """
        size = self._size if self._size is not None else 0
        if await sync_dirty(
            start,
            end,
            self._cache,
            self._dirty,
            size,
            self._mf,
            self._backing.write_from,
        ):
            await self._own_change()

    async def _own_change(self) -> None:
        """Remember the backing's version after a change made through this file.

        So that :meth:`revalidate` does not take this file's own writes for a
        change made by somebody else. (A change by somebody else that lands
        between the write and this question goes unnoticed.)

        Locking:
            The caller holds ``_lock``.
        """
        self._version = await self._backing.version()

    async def truncate(self, size: int) -> None:
        """Set the file's size, as ``ftruncate`` does.

        Mappings of the pages past the new end are invalidated, private
        copies included (``invalidate_private=True``); those cached pages are
        dropped; the tail of the last page past the new end is zeroed; then
        the backing is truncated. Growing the file adds zeros.

        Args:
            size: The new size in bytes.

        Raises:
            TypeError: ``size`` is not an int.
            ValueError: ``size`` is negative or too large.
            PermissionError: The file is not writable.
            BusError: The size could not be learned from the backing.
            OSError: The backing refused (the cache already has the new size;
                :meth:`revalidate` resynchronises).
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes the invalidation
            while holding only it.

        Cancellation:
            Once the new size is set, the invalidation, the freeing of pages
            and the backing's truncation complete before the cancellation
            propagates.
        """
        size = _check_offset("truncate", "size", size)
        if size > ADDR_LIMIT - PAGE_SIZE:
            raise ValueError(f"truncate: size {size:#x} is too large")
        if not self._writable:
            raise PermissionError(errno.EACCES, f"truncate: {self!r} is not writable")
        async with self._lock:
            self._check_open("truncate")
            old = await self._size_or_bus_error()
            # All at once, without awaiting: the new size, and the pages past
            # it out of the cache (still referenced until spaces forget them).
            self._fetcher.generation += 1
            self._size = size
            self._ra.reset()
            new_r, old_r = page_round_up(size), page_round_up(old)
            dropped = self._cache.drop(new_r, ADDR_LIMIT)
            self._dirty.drop(new_r, ADDR_LIMIT)
            self._resync_units(new_r, ADDR_LIMIT)
            # The tail of the last page past the new end reads as zero.
            self._cache.zero(self._mf, size, new_r)
            await finish_shielded(self._finish_truncate(dropped, new_r, old_r, size))

    async def _finish_truncate(
        self, dropped: list[FileRange], new_r: int, old_r: int, size: int
    ) -> None:
        try:
            if old_r > new_r:
                await self._mappings.invalidate(
                    MappableRange(new_r, old_r), _WITH_PRIVATE
                )
        finally:
            release(self._mf, dropped)
        await self._backing.truncate(size)
        await self._own_change()

    async def revalidate(self) -> bool:
        """Drop the cache if the backing changed behind the file's back.

        Compares the backing's :meth:`~aiomemmap.backings.base.Backing.version`
        with the one seen when the size was learned (or the size, when the
        backing has no versions). If it changed: every mapping is
        invalidated (private copies are kept, as Linux keeps them), the
        cache is dropped without writing anything back (dirty data is lost:
        it is older than the new contents), and the new size is picked up.

        Returns:
            Whether the backing had changed.

        Raises:
            OSError: The backing could not be asked.
            ClosedError: The file is closed.

        Locking:
            Takes ``_lock`` (``MAPPABLE``) and publishes invalidations while
            holding only it.

        Cancellation:
            Before the change is acted on, nothing changes; after, the drop
            completes before the cancellation propagates.
        """
        async with self._lock:
            self._check_open("revalidate")
            if self._size is None:
                await self._size_or_bus_error()
                return False
            version = await self._backing.version()
            if version is None:
                new_size = await self._backing.size()
                if new_size == self._size:
                    return False
            else:
                if version == self._version:
                    return False
                new_size = await self._backing.size()
            if not is_int(new_size) or new_size < 0:
                raise ValueError(
                    f"backing {self._backing!r} reported a bad size {new_size!r}"
                )
            self._fetcher.generation += 1
            self._size = int(new_size)
            self._version = version
            self._ra.reset()
            dropped = self._cache.drop_all()
            self._dirty.drop_all()
            self._forget_units()
            await finish_shielded(self._finish_drop(dropped))
            return True

    async def _finish_drop(self, dropped: list[FileRange]) -> None:
        try:
            if not self._mappings.is_empty():
                await self._mappings.invalidate_all(_NO_PRIVATE)
        finally:
            release(self._mf, dropped)
