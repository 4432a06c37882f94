"""The memory file: one growing memfd, a page allocator and page reference counts.

Every page of memory the engine owns (anonymous memory, cached file contents,
copy-on-write copies) lives in one :class:`MemoryFile`: a close-on-exec
``memfd`` that grows by whole chunks. Each chunk is mapped into this process
once, read/write and shared, when the file grows, and stays mapped until the
file is closed, so :meth:`MemoryFile.map_internal` only slices a
``memoryview`` of the chunk.

Page life cycle. A page beyond the file's size does not exist. Growing the file
makes pages *free*: they hold no data and read as zero. :meth:`~MemoryFile.
allocate` makes free pages *used*, with one reference; ``inc_ref`` and
``dec_ref`` move the count; when it reaches zero the page's memory is handed
back to the host at once (a hole is punched in the file) and the page is free
again, so a page is never handed out with somebody else's old bytes in it.

Bookkeeping. Used pages are kept in a :class:`~aiomemmap._core.segments.SegmentMap`
from file offsets to ``(references, kind)``; touching segments with equal
values are merged, so the map holds one segment per run of pages that share a
count and a kind. The gaps of that map inside the file are the free pages;
they are mirrored in an index of free extents (see :class:`FreeExtents`) so
that finding the lowest free extent that fits is logarithmic, not a scan.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Final, TypeAlias, cast, final

from aiomemmap._core import host
from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import (
    AccessDeniedError,
    AlignmentError,
    ClosedError,
    InvariantError,
    OutOfMemoryError,
    RefCountError,
)
from aiomemmap._core.pages import (
    HUGE_PAGE_SIZE,
    PAGE_MASK,
    PAGE_SIZE,
    is_int,
)
from aiomemmap._core.ranges import FileRange
from aiomemmap._core.segments import Segment, SegmentMap, merge_equal
from aiomemmap.memmap.interfaces import EvictableUser
from aiomemmap.pgalloc.eviction import Evictor
from aiomemmap.pgalloc.free_extents import FreeExtents

if TYPE_CHECKING:
    from aiomemmap.memmap.interfaces import File

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_FILE_SIZE",
    "MemoryFile",
    "MemoryFileStatistics",
    "MemoryKind",
]

DEFAULT_CHUNK_SIZE: Final[int] = 1 << 30
"""How much the file grows at a time unless told otherwise (1 GiB).

Growing costs nothing in memory: the file is sparse, and pages take memory only
once written. What a chunk does cost is one host mapping, one ``memoryview``
and one file descriptor (Python's ``mmap`` keeps a duplicate of the descriptor
it maps), so chunks should be few: 1 GiB keeps a 64 GiB file at 64 mappings
and descriptors. A large chunk also means a :meth:`MemoryFile.map_internal`
request rarely straddles two chunks and so rarely needs two blocks. Chunk
sizes are multiples of :data:`~aiomemmap.HUGE_PAGE_SIZE` so that every chunk
starts on a huge-page boundary of both the file and the address space, which
lets the host back whole chunks with transparent huge pages where shared
memory is configured for them.
"""

MAX_FILE_SIZE: Final[int] = 1 << 46
"""The largest a memory file may grow (64 TiB).

The whole file is mapped into this process, so it can never be larger than
the user address space (128 TiB on x86-64 with 4-level page tables); half of
that is the ceiling, and ``max_size`` may not exceed it.
"""

# The host calls this module makes per chunk and per freed run.
_map_chunk = host.map_shared
_punch_hole = host.punch_hole

_MAX_CHUNK_SIZE: Final[int] = 1 << 40
_MAX_NAME_BYTES: Final[int] = 249  # memfd_create's limit on a name.
_ZERO_CHUNK: Final[int] = 1 << 20
_ZEROS: Final[memoryview] = memoryview(bytes(_ZERO_CHUNK))


class MemoryKind(enum.Enum):
    """What a page of a memory file is used for, for accounting.

    The kind is chosen at allocation and stays with the page until it is
    freed. :meth:`MemoryFile.statistics` reports used bytes by kind.
    """

    SYSTEM = "system"
    """Memory the engine itself needs, charged to no user."""

    ANONYMOUS = "anonymous"
    """Anonymous memory of an address space, and private copies."""

    PAGE_CACHE = "page-cache"
    """Cached contents of files; the only kind the cache budget may evict."""

    TMPFS = "tmpfs"
    """Contents of files that live only in memory (shared memory objects)."""

    MAPPED = "mapped"
    """Memory mapped from elsewhere and only tracked here."""

    def __repr__(self) -> str:
        return f"MemoryKind.{self.name}"


@final
@dataclass(frozen=True, slots=True)
class MemoryFileStatistics:
    """A snapshot of a memory file's sizes.

    Attributes:
        file_size: The size of the file in bytes: every chunk grown so far.
        used_bytes: Bytes of pages that hold at least one reference.
        committed_bytes: Bytes the host backs with memory, as ``fstat``
            reports them (``st_blocks * 512``). Used pages take memory once
            written (or read) and until decommitted; free pages take none
            unless the host refused to punch holes.
        bytes_by_kind: Used bytes per :class:`MemoryKind`, with every kind
            present (zero if unused); the values add up to ``used_bytes``. A
            read-only mapping.
        evictions: How many pages the cache budget has evicted (revoked
            from a cache to make room; counted when revoked, before their
            memory is freed).

    Concurrency:
        Immutable.
    """

    file_size: int
    used_bytes: int
    committed_bytes: int
    bytes_by_kind: Mapping[MemoryKind, int]
    evictions: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "bytes_by_kind", MappingProxyType(dict(self.bytes_by_kind))
        )


_Usage: TypeAlias = tuple[int, MemoryKind]
"""The value kept for a run of used pages: ``(references, kind)``."""


def _add_ref(seg: Segment[_Usage]) -> _Usage:
    refs, kind = seg.value
    return refs + 1, kind


def _check_size_option(name: str, value: object, *, upper: int) -> int | None:
    """Validate ``max_size`` or ``cache_limit``: None or a positive page multiple."""
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(f"MemoryFile: {name} must be an int or None, got {value!r}")
    n = int(cast(int, value))
    if n <= 0:
        raise ValueError(f"MemoryFile: {name} must be positive, got {n}")
    if n & PAGE_MASK:
        raise AlignmentError(
            f"MemoryFile: {name} must be a multiple of PAGE_SIZE ({PAGE_SIZE}), "
            f"got {n:#x}"
        )
    if n > upper:
        raise ValueError(f"MemoryFile: {name} must be at most {upper:#x}, got {n:#x}")
    return n


@final
class MemoryFile:
    """A memfd that holds reference-counted pages: the engine's memory.

    The file starts empty and grows by whole chunks when no free range fits
    an allocation; it never shrinks. Each chunk is mapped into this process
    once, when it is added, and stays mapped until :meth:`close`.

    Args:
        name: The memfd's name, as it appears in ``/proc/<pid>/maps``
            (``/memfd:<name>``). At most 249 bytes encoded, no NUL.
        max_size: The largest the file may grow, in bytes: ``None`` (the
            default: up to :data:`MAX_FILE_SIZE`) or a positive multiple of
            ``PAGE_SIZE``. If it is not a multiple of ``chunk_size``, the last
            chunk is cut short at ``max_size``.
        cache_limit: The budget for :attr:`MemoryKind.PAGE_CACHE` pages, in
            bytes: ``None`` (unlimited) or a positive multiple of
            ``PAGE_SIZE``. Staying within it is the job of the caches that
            own those pages, by evicting their least recently used clean
            pages; the memory file never refuses an allocation because of
            it. See "Cache budget" below.
        chunk_size: How much the file grows at a time: a positive multiple of
            ``HUGE_PAGE_SIZE``, at most 1 TiB. See :data:`DEFAULT_CHUNK_SIZE`
            for why the default is 1 GiB.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (``AlignmentError`` when a
            size is not a multiple of the page or huge page size).
        OSError: The host refused to create the memfd.

    Cache budget. The file's :attr:`evictor` (a
    :class:`~aiomemmap.pgalloc.eviction.Evictor`) keeps the books: the
    page-cache bytes, the room *reserved* for allocations not made yet, the
    bytes being *evicted* (revoked, not yet freed), and the registry of
    evictable ranges of every :class:`~aiomemmap.memmap.interfaces.
    EvictableUser`, least recently used first. The users do the evicting,
    because it awaits (mapping spaces must be invalidated before pages are
    freed) and this class never awaits: :meth:`Evictor.reserve` asks them.
    The budget methods below (:meth:`try_reserve_cache`,
    :meth:`mark_evictable`, :meth:`pop_evictable` and the rest) are the
    evictor's, under the file's lock.

    Invariants:
        * The used pages (``_used``) and the free extents (``_free``) are
          disjoint, page-aligned, and together cover exactly
          ``[0, file_size)``.
        * Every used run holds at least one reference; touching runs differ
          in ``(references, kind)``.
        * Free pages hold no data: they read as zero.
        * ``_bytes_by_kind`` sums the used runs by kind; ``_used_bytes`` is
          their total.
        * There is one mapping and one ``memoryview`` per chunk of the file.

    Concurrency:
        Thread-safe. One ``threading.Lock`` guards all state; it is the bottom
        of the lock order described in :mod:`aiomemmap._core.locks`: it is held
        only inside these methods, none of which awaits or takes another
        lock. The methods are plain functions, so cancellation can never
        interrupt one. Memory viewed through :meth:`map_internal` is not
        guarded: whoever holds the page references coordinates its readers
        and writers.
    """

    def __init__(
        self,
        name: str = "aiomemmap",
        *,
        max_size: int | None = None,
        cache_limit: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"MemoryFile: name must be a str, got {name!r}")
        if "\0" in name:
            raise ValueError(f"MemoryFile: name must not contain NUL, got {name!r}")
        if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
            raise ValueError(
                f"MemoryFile: name must be at most {_MAX_NAME_BYTES} bytes, "
                f"got {name!r}"
            )
        max_size = _check_size_option("max_size", max_size, upper=MAX_FILE_SIZE)
        cache_limit = _check_size_option("cache_limit", cache_limit, upper=1 << 63)
        if not is_int(chunk_size):
            raise TypeError(
                f"MemoryFile: chunk_size must be an int, got {chunk_size!r}"
            )
        chunk_size = int(chunk_size)
        if not 0 < chunk_size <= _MAX_CHUNK_SIZE:
            raise ValueError(
                f"MemoryFile: chunk_size must be in (0, {_MAX_CHUNK_SIZE:#x}], "
                f"got {chunk_size:#x}"
            )
        if chunk_size % HUGE_PAGE_SIZE:
            raise AlignmentError(
                "MemoryFile: chunk_size must be a multiple of HUGE_PAGE_SIZE "
                f"({HUGE_PAGE_SIZE:#x}), got {chunk_size:#x}"
            )

        self._name = name
        self._max_size = max_size
        self._cache_limit = cache_limit
        self._chunk_size = chunk_size
        self._limit = MAX_FILE_SIZE if max_size is None else max_size
        self._lock = threading.Lock()
        # Everything below is protected by self._lock.
        self._fd = host.memfd_create(name)
        # Closes the descriptor if the object is collected without close().
        self._fd_closer = weakref.finalize(self, os.close, self._fd)
        self._closed = False
        self._file_size = 0
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._used: SegmentMap[_Usage] = SegmentMap(merge_equal)
        self._free = FreeExtents()
        self._bytes_by_kind: dict[MemoryKind, int] = dict.fromkeys(MemoryKind, 0)
        self._used_bytes = 0
        # The cache budget (see "Cache budget" above), under self._lock.
        self._evictor = Evictor(
            self._lock,
            cache_limit,
            functools.partial(self._bytes_by_kind.__getitem__, MemoryKind.PAGE_CACHE),
        )

    # ------------------------------------------------------------------
    # Properties and lifetime

    @property
    def name(self) -> str:
        """The memfd's name."""
        return self._name

    @property
    def max_size(self) -> int | None:
        """The largest the file may grow in bytes, or ``None`` for no limit."""
        return self._max_size

    @property
    def cache_limit(self) -> int | None:
        """The page-cache budget in bytes, or ``None`` for no budget."""
        return self._cache_limit

    @property
    def chunk_size(self) -> int:
        """How many bytes the file grows by at a time."""
        return self._chunk_size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def fd(self) -> int:
        """Return the memfd's file descriptor.

        The descriptor stays owned by this object: do not close it. It may be
        mapped (for pages the caller holds references on) or passed to
        another process.

        Raises:
            ClosedError: The file is closed.

        Locking:
            Takes the file's lock briefly.
        """
        with self._lock:
            self._check_open_locked("fd")
            return self._fd

    def close(self) -> None:
        """Unmap the chunks and close the memfd; later calls do nothing.

        References still held are forgotten. Afterwards every method raises
        :class:`~aiomemmap.ClosedError`.

        Memory the caller still views: Python cannot unmap a mapping while
        ``memoryview`` objects of it are alive (for instance the blocks of a
        :meth:`map_internal` result that were not dropped). ``close`` does not
        fail for that and does not wait: it closes everything it can and
        leaves such a chunk mapped, kept alive by those views. The views stay
        valid memory; Python unmaps the chunk when the last of them is
        released, and the host frees the pages once no mapping or descriptor
        refers to them. Nothing else can reach those pages any more.

        Postconditions:
            ``closed`` is true; the descriptor is closed.

        Locking:
            Takes the file's lock.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            views, maps = self._views, self._maps
            self._views = []
            self._maps = []
            for view in views:
                view.release()
            for m in maps:
                # A chunk the caller still views stays mapped; see above.
                with contextlib.suppress(BufferError):
                    m.close()
            self._fd_closer()
            self._fd = -1
            self._used.remove_all()
            self._free.clear()
            self._evictor.clear_locked()

    def __enter__(self) -> MemoryFile:
        with self._lock:
            self._check_open_locked("__enter__")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return (
            f"<MemoryFile {self._name!r} {state} size={self._file_size:#x} "
            f"used={self._used_bytes:#x}>"
        )

    # ------------------------------------------------------------------
    # Allocation and references

    def allocate(
        self, length: int, *, kind: MemoryKind = MemoryKind.ANONYMOUS
    ) -> FileRange:
        """Allocate ``length`` bytes of zeroed pages holding one reference.

        The lowest free range that fits is used; the file grows only when
        none does (and then the free pages at its end, if any, are used).

        Args:
            length: A positive multiple of ``PAGE_SIZE``.
            kind: What the pages are for (accounting only).

        Returns:
            The pages, page-aligned and ``length`` bytes long.

        Raises:
            TypeError: ``length`` is not an int or ``kind`` not a
                :class:`MemoryKind`.
            ValueError: ``length`` is not positive.
            AlignmentError: ``length`` is not a multiple of ``PAGE_SIZE``.
            OutOfMemoryError: The file would have to grow past ``max_size``
                (or the host refused to grow it). Nothing is changed.
            ClosedError: The file is closed.

        Postconditions:
            Every page of the result reads as zero and holds exactly one
            reference, owned by the caller, who must ``dec_ref`` it.

        Locking:
            Takes the file's lock.

        Complexity:
            O(log n) in the numbers of used runs and free extents (see
            :meth:`FreeExtents.find`), plus one ``ftruncate`` and one
            ``mmap`` per chunk when the file grows.
        """
        if not is_int(length):
            raise TypeError(f"allocate: length must be an int, got {length!r}")
        length = int(length)
        if length <= 0:
            raise ValueError(f"allocate: length must be positive, got {length}")
        if length & PAGE_MASK:
            raise AlignmentError(
                f"allocate: length must be a multiple of PAGE_SIZE ({PAGE_SIZE}), "
                f"got {length:#x}"
            )
        if type(kind) is not MemoryKind:
            raise TypeError(f"allocate: kind must be a MemoryKind, got {kind!r}")
        with self._lock:
            self._check_open_locked("allocate")
            if kind is MemoryKind.PAGE_CACHE:
                start = self._allocate_cache_locked(length)
            else:
                start = self._allocate_locked(length, kind)
            if is_debug():
                self._check_invariants_locked()
        return FileRange(start, start + length)

    def inc_ref(self, fr: FileRange, memcg_id: int = 0) -> None:
        """Take one more reference on every page of ``fr``.

        Args:
            fr: Allocated pages: non-empty and page-aligned.
            memcg_id: The memory cgroup to charge. Only validated: pages are
                always tracked here, and cgroups are not accounted.

        Raises:
            TypeError: ``fr`` is not a ``FileRange`` or ``memcg_id`` not an
                int.
            ValueError: ``fr`` is empty or ``memcg_id`` negative.
            AlignmentError: ``fr`` is not page-aligned.
            RefCountError: A page of ``fr`` is not allocated (including pages
                past the end of the file). Nothing is changed.
            ClosedError: The file is closed.

        Preconditions:
            The caller holds a reference on every page of ``fr``.

        Locking:
            Takes the file's lock.

        Complexity:
            O(log n + k) for the k runs ``fr`` overlaps.
        """
        start, end = _check_page_range("inc_ref", fr)
        if not is_int(memcg_id):
            raise TypeError(f"inc_ref: memcg_id must be an int, got {memcg_id!r}")
        if memcg_id < 0:
            raise ValueError(f"inc_ref: memcg_id must not be negative, got {memcg_id}")
        with self._lock:
            self._check_open_locked("inc_ref")
            seg = self._require_used_locked("inc_ref", fr, start, end)
            if seg is not None:
                self._change_run_locked(seg, start, end, 1)
            else:
                self._used.mutate_range(start, end, _add_ref)
            if is_debug():
                self._check_invariants_locked()

    def dec_ref(self, fr: FileRange) -> None:
        """Drop one reference from every page of ``fr``.

        Pages whose count reaches zero are decommitted at once (their memory
        goes back to the host and they read as zero) and become free.

        Args:
            fr: Allocated pages: non-empty and page-aligned.

        Raises:
            TypeError: ``fr`` is not a ``FileRange``.
            ValueError: ``fr`` is empty.
            AlignmentError: ``fr`` is not page-aligned.
            RefCountError: A page of ``fr`` is not allocated (including pages
                past the end of the file). Nothing is changed.
            ClosedError: The file is closed.

        Preconditions:
            The caller holds the reference it drops on every page of ``fr``.

        Locking:
            Takes the file's lock; the hole is punched under it, so a page
            cannot be handed out again before it has been cleared.

        Complexity:
            O(log n + k) for the k runs ``fr`` overlaps, plus one
            ``fallocate`` per run of pages freed.
        """
        # _check_page_range, inlined for valid ranges (it raises otherwise).
        arg: object = fr
        if (
            type(arg) is not FileRange
            or fr.start == fr.end
            or (fr.start | fr.end) & PAGE_MASK
        ):
            _check_page_range("dec_ref", fr)
        start, end = fr.start, fr.end
        with self._lock:
            if self._closed:
                self._check_open_locked("dec_ref")
            used = self._used
            seg = used.find(start) if end <= self._file_size else None
            if seg is None or seg.end < end:
                seg = self._require_used_locked("dec_ref", fr, start, end)
            if seg is not None:
                # One run covers fr: the common case.
                refs, kind = seg.value
                if refs == 1:
                    # The pieces of the run left on either side keep the same
                    # neighbours and value, so nothing new can merge.
                    if seg.start != start or seg.end != end:
                        seg = used.isolate(seg, start, end)
                    used.delete(seg)
                    self._release_locked([seg])
                elif seg.start == start and seg.end == end:
                    # Every holder of a run drops the same range (every
                    # mapping of the same pages): the value changes in place,
                    # and only a neighbour that already has the new value
                    # merges with it.
                    used.merge_next(
                        used.merge_prev(used.set_value(seg, (refs - 1, kind)))
                    )
                else:
                    self._change_run_locked(seg, start, end, -1)
            else:
                self._dec_ref_runs_locked(start, end)
            if is_debug():
                self._check_invariants_locked()

    def has_unique_ref(self, fr: FileRange) -> bool:
        """Return whether every page of ``fr`` holds exactly one reference.

        A caller holding that one reference owns the pages outright (for
        instance, a copy-on-write page it may write instead of copying).

        Raises:
            TypeError: ``fr`` is not a ``FileRange``.
            ValueError: ``fr`` is empty.
            AlignmentError: ``fr`` is not page-aligned.
            RefCountError: A page of ``fr`` is not allocated.
            ClosedError: The file is closed.

        Locking:
            Takes the file's lock.
        """
        start, end = _check_page_range("has_unique_ref", fr)
        with self._lock:
            self._check_open_locked("has_unique_ref")
            seg = self._require_used_locked("has_unique_ref", fr, start, end)
            if seg is not None:
                return seg.value[0] == 1
            return all(s.value[0] == 1 for s in self._used.segments(start, end))

    def decommit(self, fr: FileRange) -> None:
        """Give the memory of ``fr`` back to the host; the pages then read as zero.

        The pages stay allocated with their references; only their contents
        are dropped. Used to discard memory that is no longer needed but is
        still referenced (``madvise(MADV_DONTNEED)`` on shared memory).

        Raises:
            TypeError: ``fr`` is not a ``FileRange``.
            ValueError: ``fr`` is empty.
            AlignmentError: ``fr`` is not page-aligned.
            RefCountError: A page of ``fr`` is not allocated. Nothing is
                changed.
            ClosedError: The file is closed.

        Preconditions:
            The caller holds a reference on every page of ``fr``.

        Postconditions:
            ``fr`` reads as zero through every mapping of the file.

        Locking:
            Takes the file's lock.
        """
        start, end = _check_page_range("decommit", fr)
        with self._lock:
            self._check_open_locked("decommit")
            self._require_used_locked("decommit", fr, start, end)
            self._decommit_locked(start, end)

    # ------------------------------------------------------------------
    # Access

    def map_internal(self, fr: FileRange, at: AccessType) -> BlockSeq:
        """Return the bytes ``fr`` of the file as memory of this process.

        Args:
            fr: A non-empty file range; it need not be page-aligned.
            at: The accesses that will be made through the result. Without
                ``write`` the blocks are read-only views.

        Returns:
            One block per chunk that ``fr`` touches, in order: views of the
            permanent chunk mappings. Nothing is copied.

        Raises:
            TypeError: ``fr`` is not a ``FileRange`` or ``at`` not an
                ``AccessType``.
            ValueError: ``fr`` is empty.
            AccessDeniedError: ``at`` asks for execute access, which memory
                file pages never allow (``EACCES``).
            RefCountError: A page ``fr`` touches is not allocated.
            ClosedError: The file is closed.

        Preconditions:
            The caller holds a reference on every page ``fr`` touches, and
            keeps it for as long as it uses the result.

        Locking:
            Takes the file's lock briefly; the memory is not guarded by it.

        Complexity:
            O(log n) plus one slice per chunk touched.
        """
        if type(fr) is not FileRange:
            raise TypeError(f"map_internal: fr must be a FileRange, got {fr!r}")
        if type(at) is not AccessType:
            raise TypeError(f"map_internal: at must be an AccessType, got {at!r}")
        start, end = fr.start, fr.end
        if start == end:
            raise ValueError(f"map_internal: fr must not be empty, got {fr}")
        if at.execute:
            raise AccessDeniedError(
                f"map_internal: memory file pages cannot be mapped for execution "
                f"(fr={fr}, at={at})"
            )
        with self._lock:
            self._check_open_locked("map_internal")
            self._require_used_locked(
                "map_internal",
                fr,
                start & ~PAGE_MASK,
                (end + PAGE_MASK) & ~PAGE_MASK,
            )
            chunk = self._chunk_size
            views = self._views
            i = start // chunk
            base = i * chunk
            if end - base <= chunk:
                blocks = [views[i][start - base : end - base]]
            else:
                blocks = []
                while base < end:
                    blocks.append(
                        views[i][max(start - base, 0) : min(end - base, chunk)]
                    )
                    i += 1
                    base += chunk
        if not at.write:
            blocks = [b.toreadonly() for b in blocks]
        # Slices of the chunk views are non-empty (start < end), contiguous,
        # one-dimensional bytes: the checks of BlockSeq() would all pass.
        return BlockSeq._trusted(tuple(blocks), end - start)

    # ------------------------------------------------------------------
    # Cache budget (kept by the evictor; see the class docstring)

    @property
    def evictor(self) -> Evictor:
        """The cache budget and the registry of evictable ranges of this file."""
        return self._evictor

    def try_reserve_cache(self, length: int) -> bool:
        """Reserve room for ``length`` bytes of page cache if the budget allows.

        See :meth:`Evictor.try_reserve`.

        Raises:
            ValueError: ``length`` is negative.

        Locking:
            Takes the file's lock briefly.
        """
        return self._evictor.try_reserve(length)

    def force_reserve_cache(self, length: int) -> None:
        """Reserve room for ``length`` bytes even past the budget.

        For a fetch that found nothing left to evict: the cache then exceeds
        the limit by at most that fetch until pages are freed.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.force_reserve(length)

    def release_cache_reservation(self, length: int) -> None:
        """Give back a reservation made by :meth:`try_reserve_cache`.

        Raises:
            ValueError: More is released than is reserved.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.release(length)

    def cache_over_budget(self) -> int:
        """Return how many bytes the page cache would have to shed to fit.

        Counts as :meth:`try_reserve_cache` does (evicting bytes as gone,
        reservations as used); 0 without a limit or when within it.

        Locking:
            Takes the file's lock briefly.
        """
        return self._evictor.over_budget()

    def begin_eviction(self, length: int) -> None:
        """Record that a cache revoked ``length`` bytes of its pages to evict them.

        Counts the pages in ``evictions`` and treats the bytes as gone for the
        budget until :meth:`end_eviction`, called once the pages' references
        are dropped.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.begin_eviction(length)

    def end_eviction(self, length: int) -> None:
        """Record that ``length`` bytes revoked by :meth:`begin_eviction` are freed.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.end_eviction(length)

    def mark_evictable(self, user: EvictableUser, start: int, end: int) -> None:
        """Register ``[start, end)`` of ``user`` as evictable, most recently used.

        Registering an existing ``(user, start)`` again replaces its end and
        makes it the most recently used.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.mark_evictable(user, start, end)

    def touch_evictable(self, user: EvictableUser, start: int) -> None:
        """Make the range of ``user`` starting at ``start`` the most recently used.

        Does nothing if no such range is registered.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.touch(user, start)

    def mark_unevictable(self, user: EvictableUser, start: int) -> None:
        """Forget the range of ``user`` starting at ``start``, if registered.

        Locking:
            Takes the file's lock briefly.
        """
        self._evictor.mark_unevictable(user, start)

    def forget_evictable(self, user: EvictableUser, starts: Iterable[int]) -> None:
        """Forget the ranges of ``user`` that start at ``starts``.

        Locking:
            Takes the file's lock once.
        """
        self._evictor.forget(user, starts)

    def pop_evictable(self) -> tuple[EvictableUser, int, int] | None:
        """Remove and return the least recently used range: ``(user, start, end)``.

        ``None`` when nothing is registered.

        Locking:
            Takes the file's lock briefly.
        """
        return self._evictor.pop()

    def evictable_count(self) -> int:
        """Return how many evictable ranges are registered."""
        return self._evictor.evictable_count()

    # ------------------------------------------------------------------
    # Statistics and checks

    def statistics(self) -> MemoryFileStatistics:
        """Return the file's current sizes.

        Raises:
            ClosedError: The file is closed.

        Locking:
            Takes the file's lock (and calls ``fstat`` under it, so the
            committed size matches the bookkeeping).
        """
        with self._lock:
            self._check_open_locked("statistics")
            st = os.fstat(self._fd)
            return MemoryFileStatistics(
                file_size=self._file_size,
                used_bytes=self._used_bytes,
                committed_bytes=st.st_blocks * 512,
                bytes_by_kind=self._bytes_by_kind,
                evictions=self._evictor.evictions,
            )

    def check_invariants(self) -> None:
        """Check every invariant of the class; raise ``InvariantError`` if one fails.

        Runs after each mutation while debug checks are on
        (:func:`aiomemmap._core.debug.is_debug`).

        Raises:
            InvariantError: An invariant does not hold.
            ClosedError: The file is closed.

        Locking:
            Takes the file's lock.

        Complexity:
            O(n log n) in the numbers of used runs and free extents, plus one
            ``fstat``.
        """
        with self._lock:
            self._check_open_locked("check_invariants")
            self._check_invariants_locked()

    # ------------------------------------------------------------------
    # Internals (all called with self._lock held)

    def _check_open_locked(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: memory file {self._name!r} is closed")

    def _require_used_locked(
        self, what: str, fr: FileRange, start: int, end: int
    ) -> Segment[_Usage] | None:
        """Raise ``RefCountError`` unless every page of ``[start, end)`` is used.

        Returns:
            The run covering the whole range, if one does (the fast path),
            else ``None``.
        """
        if end > self._file_size:
            raise RefCountError(
                f"{what}: {fr} extends past the end of the file "
                f"({self._file_size:#x}); those pages hold no reference"
            )
        used = self._used
        seg = used.find(start)
        if seg is not None and seg.end >= end:
            return seg
        hole = used.first_hole(start, end)
        if hole is not None:
            raise RefCountError(
                f"{what}: pages [{hole.start:#x}, {hole.end:#x}) of {fr} are not "
                "allocated (they hold no reference)"
            )
        return None

    def _allocate_locked(self, length: int, kind: MemoryKind) -> int:
        """Allocate ``length`` bytes of ``kind``, lowest fit first; return the start.

        Raises:
            OutOfMemoryError: The file cannot grow enough; nothing changed.
        """
        free = self._free
        start = free.find(length)
        if start is None:
            size = self._file_size
            tail = free.start_of_extent_ending_at(size)
            start = size if tail is None else tail
            self._grow_locked(start + length, length, kind)
        free.take(start, length)
        self._used.insert(start, start + length, (1, kind))
        self._bytes_by_kind[kind] += length
        self._used_bytes += length
        return start

    def _allocate_cache_locked(self, length: int) -> int:
        """Allocate page-cache pages: the one place the cache budget applies.

        Every :attr:`MemoryKind.PAGE_CACHE` allocation comes through here, and
        ``_bytes_by_kind[PAGE_CACHE]`` counts the cached bytes. Keeping the
        cache within ``cache_limit`` takes the cache that owns the pages:
        evicting a page means revoking every mapping of it first (outside
        this lock, since that awaits), writing it back if it is dirty, and
        only then dropping its reference. That happens before this call:
        the cache first makes room with :meth:`try_reserve_cache` (evicting
        :meth:`pop_evictable` ranges until the reservation is granted), then
        allocates here, then releases the reservation. So this method itself
        never refuses or waits because of the budget.
        """
        return self._allocate_locked(length, MemoryKind.PAGE_CACHE)

    def _grow_locked(self, needed: int, length: int, kind: MemoryKind) -> None:
        """Grow the file by whole chunks so that it is at least ``needed`` long.

        The new pages become free (joining a free extent at the old end).

        Raises:
            OutOfMemoryError: ``needed`` is past the size limit, or the host
                refused to grow or map the file. Nothing is changed.
        """
        if needed > self._limit:
            limit = (
                f"max_size={self._max_size:#x}"
                if self._max_size is not None
                else f"the largest file this process can map ({MAX_FILE_SIZE:#x})"
            )
            raise OutOfMemoryError(
                f"allocate: {length:#x} bytes of {kind.name} memory do not fit: "
                f"the file would grow to at least {needed:#x} bytes, past {limit}"
            )
        chunk = self._chunk_size
        old_size = self._file_size
        new_size = min(-(-needed // chunk) * chunk, self._limit)
        new_maps: list[mmap.mmap] = []
        try:
            host.resize(self._fd, new_size)
            for offset in range(len(self._maps) * chunk, new_size, chunk):
                m = _map_chunk(self._fd, offset, min(chunk, new_size - offset))
                new_maps.append(m)
        except OSError as exc:
            for m in new_maps:
                m.close()
            # Shrinking back cannot lose data: the new tail was never used.
            with contextlib.suppress(OSError):
                host.resize(self._fd, old_size)
            raise OutOfMemoryError(
                f"allocate: could not grow the file from {old_size:#x} to "
                f"{new_size:#x} bytes for {length:#x} bytes of {kind.name} "
                f"memory: {exc}"
            ) from exc
        self._maps.extend(new_maps)
        self._views.extend(memoryview(m) for m in new_maps)
        self._free.add(old_size, new_size)
        self._file_size = new_size

    def _change_run_locked(
        self, seg: Segment[_Usage], start: int, end: int, delta: int
    ) -> None:
        """Add ``delta`` to the count of ``[start, end)``, which lies in ``seg``.

        Preconditions:
            ``seg`` is a current run containing the range, and its count
            plus ``delta`` is positive.
        """
        used = self._used
        refs, kind = seg.value
        if seg.start != start or seg.end != end:
            seg = used.isolate(seg, start, end)
        used.unisolate(used.set_value(seg, (refs + delta, kind)))

    def _dec_ref_runs_locked(self, start: int, end: int) -> None:
        """Drop one reference from ``[start, end)``, which spans several runs.

        Preconditions:
            Every page of the range is used.
        """
        used = self._used
        used.split_at(start)
        used.split_at(end)
        freed: list[Segment[_Usage]] = []
        for seg in list(used.segments(start, end)):
            refs, kind = seg.value
            if refs == 1:
                used.remove(seg)
                freed.append(seg)
            else:
                used.set_value(seg, (refs - 1, kind))
        used.merge_inside_range(start, end)
        used.merge_outside_range(start, end)
        if freed:
            self._release_locked(freed)

    def _release_locked(self, runs: list[Segment[_Usage]]) -> None:
        """Account, decommit and free runs whose last reference was dropped.

        Preconditions:
            The runs are ascending, disjoint and already out of ``_used``.
        """
        by_kind = self._bytes_by_kind
        free = self._free
        run_start = run_end = -1
        for start, end, (_, kind) in runs:
            by_kind[kind] -= end - start
            self._used_bytes -= end - start
            if start == run_end:
                run_end = end
                continue
            if run_end >= 0:
                self._decommit_locked(run_start, run_end)
                free.add(run_start, run_end)
            run_start, run_end = start, end
        self._decommit_locked(run_start, run_end)
        free.add(run_start, run_end)

    def _decommit_locked(self, start: int, end: int) -> None:
        """Make ``[start, end)`` read as zero, punching a hole if the host can.

        If punching fails, the bytes are overwritten with zeros through the
        chunk mappings instead (the memory then stays committed).
        """
        try:
            _punch_hole(self._fd, start, end - start)
        except OSError:
            self._zero_locked(start, end)

    def _zero_locked(self, start: int, end: int) -> None:
        """Write zeros over ``[start, end)`` through the chunk mappings."""
        chunk = self._chunk_size
        pos = start
        while pos < end:
            i, off = divmod(pos, chunk)
            n = min(end - pos, chunk - off, _ZERO_CHUNK)
            self._views[i][off : off + n] = _ZEROS[:n]
            pos += n

    def _check_invariants_locked(self) -> None:
        used = self._used
        used.check_invariants()
        size = self._file_size
        chunk = self._chunk_size
        if size & PAGE_MASK or size > self._limit:
            raise InvariantError(f"file size {size:#x} is unaligned or over the limit")
        if os.fstat(self._fd).st_size != size:
            raise InvariantError(f"the memfd's size differs from {size:#x}")
        if len(self._maps) != -(-size // chunk) or len(self._views) != len(self._maps):
            raise InvariantError(
                f"{len(self._maps)} chunk mappings for {size:#x} bytes"
            )
        for i, view in enumerate(self._views):
            if len(view) != min(chunk, size - i * chunk):
                raise InvariantError(f"chunk {i} maps {len(view):#x} bytes")
        by_kind = dict.fromkeys(MemoryKind, 0)
        prev: Segment[_Usage] | None = None
        for seg in used:
            start, end, value = seg
            refs, kind = value
            if (start | end) & PAGE_MASK or end > size:
                raise InvariantError(f"used run [{start:#x}, {end:#x}) is bad")
            if type(refs) is not int or refs < 1 or type(kind) is not MemoryKind:
                raise InvariantError(f"used run [{start:#x}, {end:#x}) has {value!r}")
            if prev is not None and prev.end == start and prev.value == value:
                raise InvariantError(f"used runs not merged at {start:#x}")
            by_kind[kind] += end - start
            prev = seg
        if by_kind != self._bytes_by_kind:
            raise InvariantError(f"bytes by kind {self._bytes_by_kind} != {by_kind}")
        if sum(by_kind.values()) != self._used_bytes:
            raise InvariantError(f"used bytes {self._used_bytes:#x} is wrong")
        free = self._free
        free.check_invariants()
        gaps = [(g.start, min(g.end, size)) for g in used.gaps(0, size)] if size else []
        if gaps != free.extents():
            raise InvariantError("the free extents are not the gaps between used runs")
        self._evictor.check_invariants_locked()


def _check_page_range(what: str, fr: object) -> tuple[int, int]:
    """Validate a page range argument; return its bounds."""
    if type(fr) is not FileRange:
        raise TypeError(f"{what}: fr must be a FileRange, got {fr!r}")
    start, end = fr.start, fr.end
    if start == end:
        raise ValueError(f"{what}: fr must not be empty, got {fr}")
    if (start | end) & PAGE_MASK:
        raise AlignmentError(f"{what}: fr must be page-aligned, got {fr}")
    return start, end


if TYPE_CHECKING:

    def _satisfies_file_protocol(f: MemoryFile) -> File:
        return f
