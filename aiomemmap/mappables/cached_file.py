"""CachedFile: a Mappable that pages a backing into a memory file on demand.

A :class:`CachedFile` keeps a page cache of a :class:`~aiomemmap.backings.base.
Backing` (bytes, a local file, an object behind HTTP or S3) in a
:class:`~aiomemmap.MemoryFile`, the way gVisor's gofer client caches a remote
file: a map from file offsets to memory-file pages (gVisor's ``FileRangeSet``),
a set of dirty offsets (``DirtySet``, with its keep-dirty rule for pages that
are writable through a shared mapping) and a :class:`~aiomemmap.MappingSet` of
the spaces that map the file.

What is not in gVisor is the *fetcher* (:mod:`~aiomemmap.mappables.fetcher`):
missing pages are read by background fetch tasks, single flight per page
range, that belong to no waiter; a readahead policy
(:mod:`aiomemmap.mappables.readahead`) chooses how much to fetch around each
access, and an access waits only for the pages it requires.

The class is made of parts, one concern a module: the page cache and its state
(:mod:`~aiomemmap.mappables.page_cache`), writes, write-back and truncation
(:mod:`~aiomemmap.mappables.writeback`), revalidation
(:mod:`~aiomemmap.mappables.revalidation`) and eviction under the cache budget
(:mod:`~aiomemmap.mappables.cache_eviction`, with the units and pins of
:mod:`~aiomemmap.mappables.cache_units`), and the views that
:meth:`CachedFile.read_view` holds (:mod:`~aiomemmap.mappables.cached_view`).
This module holds the public class: construction, identity, lifetime, the
Mappable methods and reads.
"""

from __future__ import annotations

import asyncio
import errno
import typing
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, final

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
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    PAGE_MASK,
    PAGE_SIZE,
    is_int,
    page_round_up,
)
from aiomemmap._core.ranges import AddrRange, MappableRange
from aiomemmap.backings.base import Backing, RetryPolicy
from aiomemmap.backings.opener import open_backing
from aiomemmap.fsutil.file_range_set import release
from aiomemmap.mappables.cache_eviction import CacheEviction
from aiomemmap.mappables.cache_units import CacheUnits
from aiomemmap.mappables.cached_view import CachedView
from aiomemmap.mappables.page_cache import (
    NO_PRIVATE,
    check_offset,
    check_page_range,
    writable_bytes,
)
from aiomemmap.mappables.readahead import (
    AdaptiveReadahead,
    ReadaheadHint,
    ReadaheadPolicy,
)
from aiomemmap.mappables.revalidation import Revalidation
from aiomemmap.mappables.writeback import WriteBack
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.memmap.interfaces import (
    MappingSpace,
    TranslateResult,
    check_translate_result,
)
from aiomemmap.pgalloc.memory_file import MemoryFile

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_MAX_FETCHES_IN_FLIGHT",
    "DEFAULT_MAX_FETCH_BYTES",
    "CacheStatistics",
    "CachedFile",
    "ReadableBacking",
]

DEFAULT_MAX_FETCH_BYTES: Final[int] = 2 * 1024 * 1024
"""The most one fetch reads from the backing (2 MiB).

Big enough that per-request overhead is small next to the transfer, small
enough that a 16 MiB readahead window is split into eight fetches that run at
the same time and that a waiter for the first pages of a window is woken
before the whole window has arrived.
"""

DEFAULT_MAX_FETCHES_IN_FLIGHT: Final[int] = 32
"""How many fetches may read from the backing at once.

Enough for 16 concurrent random readers plus a sequential reader's windows,
each fetch waiting out the storage's round trip.
"""


_READ_METHODS: Final = ("size", "read_into", "version")
"""The backing methods every cached file uses."""

_WRITE_METHODS: Final = ("write_from", "truncate")
"""The backing methods a writable cached file uses besides."""


class ReadableBacking(Protocol):
    """What a cached file needs of a backing it only reads.

    The read half of :class:`~aiomemmap.backings.base.Backing`: a backing
    written for reading alone needs no ``write_from`` nor ``truncate`` (a
    cached file over it is read-only). ``aclose`` is called only on a
    backing the file owns (see :meth:`CachedFile.open`).
    """

    async def size(self) -> int:
        """Return the size of the file in bytes."""
        ...

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset``; short only at the end."""
        ...

    async def version(self) -> str | None:
        """Return the version of the object (ETag, mtime...), or ``None``."""
        ...

    async def aclose(self) -> None:
        """Release what the backing holds."""
        ...


def _is_local(url_or_path: str) -> bool:
    """Return whether :func:`~aiomemmap.open_backing` opens a local file for it."""
    scheme, sep, _ = url_or_path.partition("://")
    return not sep or scheme.lower() in ("file", "local")


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


@final
class CachedFile(WriteBack, Revalidation, CacheEviction):
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
        backing: Where the bytes live: a
            :class:`~aiomemmap.backings.base.Backing`, or a backing that is
            only read (``size``, ``read_into``, ``version``; see
            :class:`ReadableBacking`), which makes a read-only file. The
            backing stays the caller's: :meth:`aclose` does not close it
            (:meth:`open` makes a file that owns its backing).
        memory_file: Where cached pages are allocated.
        readahead: The readahead policy; ``None`` means
            :class:`~aiomemmap.mappables.readahead.AdaptiveReadahead` with its
            defaults.
        writable: Whether :meth:`write`, :meth:`truncate` and writable shared
            mappings are allowed. Requires a backing that is not read-only
            and has ``write_from`` and ``truncate``.
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
            must be an :class:`~aiomemmap.InvalidationBus` or None), or
            ``writable`` with a backing that has no ``write_from`` or
            ``truncate``.
        ValueError: A size is out of range (``AlignmentError`` if not a
            multiple of ``PAGE_SIZE``).
        PermissionError: ``writable`` with a read-only backing.

    Invariants:
        * ``_cache`` maps page-aligned offsets to memory-file offsets; each of
          its pages holds one reference owned by this file, and its bytes are
          the file's contents (zero past the size).
        * The fetcher's in-flight fetches are disjoint page ranges; no
          offset is both cached and being fetched.
        * ``_dirty`` covers only offsets that are cached, below the page-
          rounded size.
        * Every offset ever translated was cached at the time, below the
          page-rounded size; a page leaves ``_cache`` before the spaces that
          may have translated it are invalidated, and its reference is
          dropped only after that invalidation.

    Concurrency:
        Task-safe within one event loop. Two kinds of synchronisation:

        * The cache state (``_cache``, ``_dirty``, the fetcher's in-flight
          fetches and generation, ``_size``, the readahead state and the
          counters) is only
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
          kept in ``_units`` (:class:`~aiomemmap.mappables.cache_units.
          CacheUnits`) and registered with the memory file's registry
          of evictable ranges. A hit (read or translate) makes the units it
          touches the most recently used. Parts of a unit that outlive an
          eviction or a truncation become units of their own.
        * Who evicts: a fetch, before allocating its pages, reserves room
          with the memory file's evictor (:meth:`~aiomemmap.pgalloc.eviction.
          Evictor.reserve`), which pops victims of any evictable user and
          calls their :meth:`evict` until the reservation is granted.
        * What goes: the cached, clean pages of the victim that no access in
          progress has pinned. A read pins the pages it reads while it waits
          for them; a :meth:`read_view` pins its pages while the view is
          held (and takes a page reference of its own, so that dropping
          the pages from the cache never frees them under the view); a
          :meth:`translate` made for an access through an
          address space (a copy or a fault, inside an
          :class:`~aiomemmap.pgalloc.access_pins.Access`) pins its required
          pages until that access has copied them, so an access larger than
          the budget is not evicted piecemeal and started over. When
          everything cached is pinned or dirty, the budget is exceeded until
          the accesses end (the evictor forces the reservation). Dirty
          pages are never evicted, and eviction never waits for storage: a
          dirty page the budget picks gets a write-back started on its own
          (a task of this file, taking this file's lock), and is evicted
          once it is clean, by that write-back if the cache is still over
          budget then, otherwise when the budget picks it again. Pages being
          fetched are not in the cache and so are never evicted.
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

    __slots__ = ()

    def __init__(
        self,
        backing: Backing | ReadableBacking,
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
        missing = [m for m in _READ_METHODS if not callable(getattr(backing, m, None))]
        if missing:
            raise TypeError(
                f"{owner}: backing must be a Backing, got {backing!r} "
                f"(missing {', '.join(missing)})"
            )
        no_writes = [
            m for m in _WRITE_METHODS if not callable(getattr(backing, m, None))
        ]
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
        if writable and no_writes:
            raise TypeError(
                f"{owner}: cannot open {backing!r} writable: a writable file "
                f"needs a backing with {' and '.join(_WRITE_METHODS)}, and it "
                f"has no {', '.join(no_writes)}"
            )
        if writable and getattr(backing, "readonly", False):
            raise PermissionError(
                errno.EACCES,
                f"{owner}: cannot open {backing!r} writable: the backing is read-only",
            )
        super().__init__(
            typing.cast("Backing", backing),
            memory_file,
            policy=readahead if readahead is not None else AdaptiveReadahead(),
            writable=writable,
            name=name,
            retry=retry,
            max_fetch_bytes=int(max_fetch_bytes),
            max_fetches_in_flight=int(max_fetches_in_flight),
            bus=bus,
        )
        if self._budget:
            self._units = CacheUnits(self, memory_file)
        self._fetcher.on_stale = self._react_to_stale

    @classmethod
    async def open(
        cls,
        url_or_path: str,
        memory_file: MemoryFile,
        *,
        readahead: ReadaheadPolicy | None = None,
        writable: bool = False,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_fetches_in_flight: int = DEFAULT_MAX_FETCHES_IN_FLIGHT,
        bus: InvalidationBus | None = None,
        **storage_options: object,
    ) -> CachedFile:
        """Open a path or URL as a cached file that owns its backing.

        The backing is opened with :func:`~aiomemmap.open_backing` and
        belongs to the file: :meth:`aclose` closes it, and so does a failed
        open. The size is asked for here (one request), so that a missing
        object or refused credentials fail here rather than at the first
        read.

        Options: the keyword arguments named like the constructor's
        (``readahead``, ``writable``, ``name``, ``retry``,
        ``max_fetch_bytes``, ``max_fetches_in_flight``, ``bus``) are the
        file's; every other keyword is a storage option, passed to
        :func:`~aiomemmap.open_backing` as it is (``headers`` for HTTP;
        ``endpoint_url``, ``key``, ``secret`` for S3...). ``writable=True``
        opens a local file's backing writable too; for other storage pass
        the backing's own option as well (``readonly=False`` for fsspec
        URLs).

        Args:
            url_or_path: A local path or a URL (``https://``, ``s3://``, any
                fsspec URL).
            memory_file: Where cached pages are allocated.
            readahead: As for the constructor.
            writable: As for the constructor.
            name: As for the constructor; ``None`` names mappings of the
                file after ``url_or_path``.
            retry: As for the constructor.
            max_fetch_bytes: As for the constructor.
            max_fetches_in_flight: As for the constructor.
            bus: As for the constructor.
            **storage_options: Options of the backing.

        Returns:
            The open file, its size known.

        Raises:
            TypeError, ValueError: A bad path, URL or option (nothing is
                left open).
            ImportError: The protocol needs a package that is not installed.
            FileNotFoundError, PermissionError, OSError: The object cannot
                be opened or its size not read (the backing's error).
            PermissionError: ``writable`` and the backing is read-only.

        Postconditions:
            The caller owns the file and closes it with :meth:`aclose` (or
            ``async with``); nothing else needs closing.

        Locking:
            Takes no lock.

        Cancellation:
            Whatever was opened is closed again before the cancellation
            propagates.
        """
        if writable and _is_local(url_or_path):
            storage_options.setdefault("writable", True)
        backing = open_backing(url_or_path, **storage_options)
        try:
            cached_file = cls(
                backing,
                memory_file,
                readahead=readahead,
                writable=writable,
                name=url_or_path if name is None else name,
                retry=retry,
                max_fetch_bytes=max_fetch_bytes,
                max_fetches_in_flight=max_fetches_in_flight,
                bus=bus,
            )
        except BaseException:
            await finish_shielded(backing.aclose())
            raise
        cached_file._owns_backing = True
        try:
            await cached_file._size_or_bus_error()
        except BaseException as exc:
            await finish_shielded(cached_file.aclose())
            if isinstance(exc, BusError) and isinstance(exc.err, Exception):
                raise exc.err from exc
            raise
        return cached_file

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
        keep the references they took), and every cached page is freed
        (pages held by a :meth:`read_view` are freed when it lets go of
        them). The backing is closed last if the file owns it (it was made
        by :meth:`open`); a backing given to the constructor belongs to the
        caller and stays open.

        Raises:
            OSError: Writing back, or closing an owned backing, failed. The
                file is closed anyway and the unwritten data is lost.

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
            if self._owns_backing:
                try:
                    await finish_shielded(self._backing.aclose())
                except Exception as exc:
                    if error is None:
                        error = exc
        if error is not None:
            raise error

    async def _shutdown(self) -> None:
        tasks = self._fetcher.cancel_all()
        for task in (self._size_task, self._stale_task, self._wb_task):
            if task is not None:
                # A revalidation cancelled here still finishes the
                # invalidation it started (and frees those pages).
                task.cancel()
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks)
        if self._evict_tasks:
            # Evictions of pages revoked earlier: let them free their pages.
            await asyncio.wait(list(self._evict_tasks))
        dropped = self._cache.drop_all()
        dropped.extend(self._stale_dropped)
        self._stale_dropped = []
        self._wb_pending.clear()
        self._dirty.drop_all()
        self._forget_units()
        try:
            if not self._mappings.is_empty():
                await self._mappings.invalidate_all(NO_PRIVATE)
        finally:
            release(self._mf, dropped)

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
                req.start, req.end, window.start, window.end, clip=True, for_access=True
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

    # ------------------------------------------------------------------
    # Reads

    async def read(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset`` through the cache.

        Present pages are served from the cache; missing ones are fetched,
        together with whatever the readahead policy adds (fetched in the
        background: the call waits only for the pages it reads). The bytes
        are copied once, straight from the cached pages into the result; to
        read into a buffer of your own use :meth:`readinto`, to read the
        cached pages without copying :meth:`read_view`.

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
        offset = check_offset("read", "offset", offset)
        n = check_offset("read", "n", n)
        end = await self._resident("read", offset, n)
        if end <= offset:
            return b""
        return self._copy_out(offset, end)

    async def readinto(self, offset: int, buf: WriteableBuffer) -> int:
        """Read into ``buf`` the bytes at ``offset``, as many as it holds.

        As :meth:`read`, but the bytes are copied straight from the cached
        pages into the caller's buffer: nothing is allocated for them. A
        buffer used again and again (a scan) therefore costs one copy a
        byte and no allocation.

        Args:
            offset: Where to start.
            buf: A writable, C-contiguous buffer (``bytearray``,
                ``memoryview``, ``array``, a NumPy array...); its size in
                bytes is how many bytes are wanted.

        Returns:
            How many bytes were copied to the start of ``buf``; fewer than
            its size only at the end of the file (0 at or past it). The rest
            of ``buf`` is left as it was.

        Raises:
            TypeError: ``offset`` is not an int, ``buf`` is not a buffer, or
                it is read-only.
            ValueError: ``offset`` is negative or too large, or ``buf`` is
                not contiguous.
            BusError: The backing failed (after retries); ``.err`` is the
                cause.
            ClosedError: The file is closed.

        Postconditions:
            ``buf`` is written only by a call that returns, and only in the
            bytes it counts; a call that raises leaves it unchanged.

        Locking:
            Takes no lock.

        Cancellation:
            ``buf`` is unchanged; fetches that were started carry on.
        """
        offset = check_offset("readinto", "offset", offset)
        with writable_bytes("readinto", buf) as dst:
            end = await self._resident("readinto", offset, len(dst))
            if end <= offset:
                return 0
            self._copy_into(offset, end, dst)
            return end - offset

    def read_view(self, offset: int, n: int) -> CachedView:
        """Return an async context manager viewing up to ``n`` bytes at ``offset``.

        Used as ``async with cf.read_view(offset, n) as view:``. Entering
        fetches the pages as :meth:`read` does and gives a read-only,
        one-dimensional ``memoryview`` (format ``"B"``) of the bytes, short
        only at the end of the file.

        Zero copy when it can be: if the bytes lie in one run of contiguous
        pages of the memory file, the view shows those pages themselves
        (``CachedView.zero_copy`` is true). That is the rule within the pages
        one fetch landed (up to ``max_fetch_bytes``) and usual for a file
        fetched in order; otherwise (pages spread over the memory file, or
        holes) the bytes are copied once into a new buffer, which the view
        shows.

        While the view is held, its pages are pinned: the cache budget does
        not evict them, and each page holds a reference of the view, so that
        nothing frees or reuses it: not eviction, a truncation, a
        revalidation, nor closing the file. The view shows the pages, not a
        snapshot: a :meth:`write` to those offsets is seen through it. Pages
        that leave the file meanwhile (truncated, dropped by
        :meth:`revalidate`, or the file closed) keep the bytes they had,
        except that a truncation zeroes the tail past the new end of the
        page it keeps, as the file then reads.

        Holding costs a few tens of microseconds (the page references), so
        a view pays for itself from about a MiB: smaller reads are cheaper
        with :meth:`readinto`.

        Leaving the block releases the view (using it afterwards raises
        ``ValueError``) and the pins. Views sliced from it and arrays made
        from it keep the pages referenced, and valid, for as long as they
        live; keep them inside the block, as the budget no longer pins
        those pages after it.

        Args:
            offset: Where to start.
            n: How many bytes to view at most. All of them are held at once:
                a view larger than the cache budget exceeds it while held.

        Returns:
            A :class:`CachedView`, entered once.

        Raises:
            TypeError: ``offset`` or ``n`` is not an int.
            ValueError: ``offset`` or ``n`` is negative or too large.

            Entering raises as :meth:`read` does.

        Locking:
            Takes no lock.

        Cancellation:
            Cancelling the entry holds nothing; fetches that were started
            carry on.
        """
        offset = check_offset("read_view", "offset", offset)
        n = check_offset("read_view", "n", n)
        return CachedView(self, offset, n)

    async def _resident(self, what: str, offset: int, n: int) -> int:
        """Wait until the pages of up to ``n`` bytes at ``offset`` are cached.

        If the file changes while the call waits (a revalidation learnt a
        new version, or a truncation), the bytes to read are worked out
        again from the new size and waited for: the result never mixes the
        extent of one version with the bytes of another.

        Returns:
            The end of the bytes to read, clipped to the file's size (at
            most ``offset`` when there is nothing to read). Until the caller
            next awaits, ``[offset, end)`` is cached.

        Raises:
            BusError, ClosedError: As :meth:`read`.
        """
        while True:
            generation = self._fetcher.generation
            end = await self._resident_once(what, offset, n)
            if end <= offset or self._fetcher.generation == generation:
                return end

    async def _resident_once(self, what: str, offset: int, n: int) -> int:
        """One attempt of :meth:`_resident`, for the file as it is now."""
        if self._closed:
            self._check_open(what)
        size = self._size
        if size is None:
            size = await self._size_or_bus_error()
        end = min(offset + n, size)
        if end <= offset:
            return offset
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
                return offset
            raise
        # Nothing awaits from here on.
        assert self._size is not None
        end = min(end, self._size)
        if end > offset and self._budget:
            self._touch(start_p, page_round_up(end))
        return end

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
        mr = check_page_range("prefetch", mr)
        self._check_open("prefetch")
        size = await self._size_or_bus_error()
        end = min(mr.end, page_round_up(size))
        if end <= mr.start:
            return
        await self._populate(mr.start, end, mr.start, end, clip=True)
