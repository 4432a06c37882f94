"""Shared memory: a file that lives only in the memory file, like tmpfs.

:class:`SharedMemory` is the Mappable behind shared anonymous mappings and
memfd-like files. Its contents are pages of a :class:`~aiomemmap.MemoryFile`
allocated on first use; offsets that were never written are holes and read as
zero. It is also its own :class:`~aiomemmap.MappingIdentity`.

The offset-to-page map is a :class:`~aiomemmap._core.segments.SegmentMap` whose
value is the file offset of each segment's start: touching segments merge only
when their pages are contiguous in the file, and splitting a segment shifts the
file offset of its second half.

Lock ranks are those of the :mod:`aiomemmap._core.locks` module docstring.
"""

from __future__ import annotations

import itertools
from typing import Final, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.errors import (
    AlignmentError,
    BusError,
    ClosedError,
    InvariantError,
    OutOfMemoryError,
    RefCountError,
    check_invariant,
)
from aiomemmap._core.locks import LockRank, OrderedLock
from aiomemmap._core.pages import ADDR_LIMIT, PAGE_MASK, is_int
from aiomemmap._core.ranges import AddrRange, FileRange, MappableRange
from aiomemmap.fsutil.file_range_set import FileRangeSet, release
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.memmap.interfaces import (
    InvalidateOpts,
    MappingSpace,
    TranslateResult,
)
from aiomemmap.memmap.mapping_set import MappingSet
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind

__all__ = ["MAX_SHARED_MEMORY_SIZE", "SHARED_MEMORY_DEVICE_ID", "SharedMemory"]

MAX_SHARED_MEMORY_SIZE: Final[int] = (1 << 63) - 1
"""The largest size a :class:`SharedMemory` may have, as for a Linux file."""

SHARED_MEMORY_DEVICE_ID: Final[int] = 1
"""The device number every :class:`SharedMemory` reports (one shared device)."""

FILL_LIMIT: Final[int] = 64 * 1024
"""How far past ``required`` (within ``optional``) translate allocates holes."""

TRANSLATE_LIMIT: Final[int] = 2 * 1024 * 1024
"""How far past ``required`` (within ``optional``) translate reports pages."""

_inode_ids = itertools.count(1)


def _page_up(x: int) -> int:
    return (x + PAGE_MASK) & ~PAGE_MASK


def max_optional_range(
    required: MappableRange, optional: MappableRange, limit: int
) -> MappableRange:
    """Return how much of ``optional`` to act on around ``required``.

    ``required`` itself if it is at least ``limit`` long; all of ``optional``
    if that is at most ``limit`` long; otherwise ``limit`` bytes starting at
    ``required.start``, cut at the end of ``optional``.

    Args:
        required: The range that must be covered.
        optional: A range containing ``required``.
        limit: The most bytes to cover when ``required`` is shorter.

    Returns:
        A range containing ``required`` and contained in ``optional``.

    Preconditions:
        ``optional`` contains ``required``; everything is page-aligned.
    """
    if required.length >= limit:
        return required
    if optional.length <= limit:
        return optional
    return MappableRange(required.start, min(required.start + limit, optional.end))


def _check_offset_int(owner: str, name: str, value: object) -> int:
    if not is_int(value):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    assert isinstance(value, int)
    v = int(value)
    if v < 0:
        raise ValueError(f"{owner}: {name} must not be negative, got {v}")
    return v


def _check_aligned_range(
    owner: str, name: str, r: object, kind: type, *, allow_empty: bool = False
) -> None:
    if type(r) is not kind:
        raise TypeError(f"{owner}: {name} must be a {kind.__name__}, got {r!r}")
    assert isinstance(r, (AddrRange, MappableRange))
    if not allow_empty and r.length == 0:
        raise ValueError(f"{owner}: {name} {r} is empty")
    if not r.is_page_aligned():
        raise AlignmentError(f"{owner}: {name} {r} is not page-aligned")


def _check_mapping_args(
    owner: str, ms: object, ar: object, offset: object, writable: object
) -> None:
    if not callable(getattr(ms, "invalidate", None)):
        raise TypeError(f"{owner}: ms must be a MappingSpace, got {ms!r}")
    try:
        hash(ms)
    except TypeError:
        raise TypeError(f"{owner}: ms must be hashable, got {ms!r}") from None
    _check_aligned_range(owner, "ar", ar, AddrRange)
    _check_offset(owner, offset, ar)
    if type(writable) is not bool:
        raise TypeError(f"{owner}: writable must be a bool, got {writable!r}")


def _check_offset(owner: str, offset: object, ar: object) -> None:
    off = _check_offset_int(owner, "offset", offset)
    if off & PAGE_MASK:
        raise AlignmentError(f"{owner}: offset {off:#x} is not page-aligned")
    assert isinstance(ar, AddrRange)
    if off + ar.length >= ADDR_LIMIT:
        raise ValueError(
            f"{owner}: offset {off:#x} + length {ar.length:#x} overflows the "
            "64-bit offset space"
        )


@final
class SharedMemory:
    """A file kept entirely in a memory file: tmpfs regular-file semantics.

    Pages are allocated in ``memory_file`` (as :attr:`MemoryKind.TMPFS`) when
    first written or translated. Each present page holds exactly one
    reference owned by this object, dropped when the page is truncated away
    or when the object is closed.

    Lifetime. The object starts with one identity reference, owned by its
    creator. Mapping spaces take more with :meth:`inc_ref`. Dropping the last
    one with :meth:`dec_ref` closes the object, as does :meth:`aclose` at any
    time. Closing refuses (with ``RuntimeError``) while mappings are
    recorded: a mapped object cannot lose its memory under its mappers, so
    they must be removed first. After closing, every method except
    :meth:`aclose`, :meth:`dec_ref` and the naming methods raises
    :class:`~aiomemmap.ClosedError`.

    Args:
        memory_file: Where the pages live.
        size: The initial size in bytes; the contents read as zero.
        name: What :meth:`mapped_name` returns; if empty,
            ``"/memfd:shm-<inode id> (deleted)"``.
        bus: The bus this file publishes invalidations of its mappings on;
            ``None`` means the process-wide default bus.

    Raises:
        TypeError: An argument has the wrong type (``bus`` included: it
            must be an :class:`~aiomemmap.InvalidationBus` or None).
        ValueError: ``size`` is negative or above
            :data:`MAX_SHARED_MEMORY_SIZE`, or ``name`` contains a NUL.
        ClosedError: ``memory_file`` is closed.

    Invariants:
        * Every page of ``_pages`` holds one reference of ours in the memory
          file, and ``_pages`` maps each offset to a distinct page.
        * Outside a truncation in progress, no page lies at or past
          ``page_round_up(size)``. During a shrink, the pages past the new end
          are left alone by everyone but the truncating task (which holds the
          mappings lock), and are freed once the mappings of them have been
          invalidated. If that last step is cancelled, ``_reap_from`` records
          the bound and the next holder of the data lock frees them first.
        * ``0 <= size <= MAX_SHARED_MEMORY_SIZE``.

    Concurrency:
        Task-safe within one event loop. Two locks:

        * ``_mappings_lock`` (``LockRank.MAPPABLE``) guards the mapping set
          and serialises changes of size (:meth:`write`, :meth:`truncate`)
          and :meth:`aclose`. Invalidations are published under it.
        * ``_data_lock`` (``LockRank.TRANSLATE``) guards the page map, the
          size and the contents. Nothing awaits while holding it, and the
          mapping set is never used under it.
    """

    __slots__ = (
        "_closed",
        "_data_lock",
        "_inode_id",
        "_mappings",
        "_mappings_lock",
        "_mf",
        "_name",
        "_pages",
        "_reap_from",
        "_refs",
        "_size",
    )

    def __init__(
        self,
        memory_file: MemoryFile,
        size: int = 0,
        *,
        name: str = "",
        bus: InvalidationBus | None = None,
    ) -> None:
        if not isinstance(memory_file, MemoryFile):
            raise TypeError(
                f"SharedMemory: memory_file must be a MemoryFile, got {memory_file!r}"
            )
        if memory_file.closed:
            raise ClosedError(f"SharedMemory: memory_file {memory_file!r} is closed")
        size = _check_offset_int("SharedMemory", "size", size)
        if size > MAX_SHARED_MEMORY_SIZE:
            raise ValueError(
                f"SharedMemory: size must be at most {MAX_SHARED_MEMORY_SIZE:#x}, "
                f"got {size:#x}"
            )
        if not isinstance(name, str):
            raise TypeError(f"SharedMemory: name must be a str, got {name!r}")
        if "\0" in name:
            raise ValueError(f"SharedMemory: name must not contain NUL, got {name!r}")
        self._mf = memory_file
        self._name = name
        self._inode_id = next(_inode_ids)
        self._mappings_lock = OrderedLock(LockRank.MAPPABLE, "SharedMemory.mappings")
        self._data_lock = OrderedLock(LockRank.TRANSLATE, "SharedMemory.data")
        # Protected by self._mappings_lock.
        self._mappings = MappingSet(bus=bus)
        # Protected by self._data_lock (changes of _size also need
        # self._mappings_lock).
        self._size = size
        self._pages = FileRangeSet()
        self._reap_from: int | None = None
        # Changed only without awaiting; _closed needs both locks to be set
        # (except when nothing could be holding them).
        self._refs = 1
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size:#x}"
        return f"<SharedMemory inode={self._inode_id} {state} refs={self._refs}>"

    # ------------------------------------------------------------------
    # Queries

    @property
    def size(self) -> int:
        """The size in bytes (the last value set; reads need no lock)."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether the object has been closed."""
        return self._closed

    @property
    def memory_file(self) -> MemoryFile:
        """The memory file holding the pages."""
        return self._mf

    def resident_bytes(self) -> int:
        """Return how many bytes of pages are present (allocated) now.

        Locking:
            Takes no lock; the answer is a snapshot.
        """
        return self._pages.span()

    def is_mapped(self) -> bool:
        """Return whether any mapping is recorded.

        Locking:
            Takes no lock; the answer is a snapshot.
        """
        return not self._mappings.is_empty()

    def check_invariants(self) -> None:
        """Check the invariants; raise ``InvariantError`` if one fails.

        Call it while no operation is in progress.

        Raises:
            InvariantError: An invariant does not hold.
        """
        self._pages.check_invariants()
        self._mappings.check_invariants()
        check_invariant(
            0 <= self._size <= MAX_SHARED_MEMORY_SIZE, f"size {self._size:#x}"
        )
        if self._closed:
            check_invariant(self._pages.is_empty(), "a closed object still holds pages")
            return
        last = self._pages.last_segment()
        bound = _page_up(self._size) if self._reap_from is None else None
        if last is not None and bound is not None and last.end > bound:
            raise InvariantError(f"page past the end: {last} size={self._size:#x}")
        seen: list[tuple[int, int]] = []
        for seg in self._pages:
            seen.append((seg.value, seg.value + seg.length))
            fr = FileRange(seg.value, seg.value + seg.length)
            try:
                # Others may hold references too; this only checks allocation.
                self._mf.has_unique_ref(fr)
            except RefCountError as exc:
                raise InvariantError(f"{seg} names unallocated pages") from exc
        seen.sort()
        for (_, e1), (s2, _) in itertools.pairwise(seen):
            check_invariant(e1 <= s2, "two offsets share a page")

    # ------------------------------------------------------------------
    # File operations

    async def read(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset``.

        Args:
            offset: Where to start; may be past the end.
            n: How many bytes to read at most.

        Returns:
            The bytes, short only at the end of the file (empty at or past
            it). Holes read as zero.

        Raises:
            TypeError: ``offset`` or ``n`` is not an int.
            ValueError: ``offset`` or ``n`` is negative, or their sum exceeds
                :data:`MAX_SHARED_MEMORY_SIZE`.
            ClosedError: The object is closed.

        Locking:
            Takes ``_data_lock``; awaits only to acquire it.

        Cancellation:
            Only while waiting for the lock; nothing changes.
        """
        offset, n = self._check_io("read", offset, n)
        async with self._data_lock:
            self._check_open("read")
            self._reap_locked()
            end = min(offset + n, self._size)
            if offset >= end:
                return b""
            return self._pages.read(self._mf, offset, end)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``, extending the file if it ends past it.

        Args:
            offset: Where to start; may be past the end (the bytes in between
                read as zero).
            data: The bytes to write: a bytes-like object.

        Returns:
            ``len(data)`` in bytes: the write is all or nothing.

        Raises:
            TypeError: ``offset`` is not an int or ``data`` not bytes-like.
            ValueError: ``offset`` is negative, or the write would end past
                :data:`MAX_SHARED_MEMORY_SIZE`.
            OutOfMemoryError: The memory file could not supply the pages;
                nothing changed.
            ClosedError: The object is closed.

        Locking:
            Takes ``_mappings_lock`` then ``_data_lock``; awaits only to
            acquire them.

        Cancellation:
            Only while waiting for a lock; nothing changes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"write: data must be bytes, bytearray or memoryview, got "
                f"{type(data).__name__}"
            )
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("write: data must be a contiguous buffer")
        view = view.cast("B")
        offset, n = self._check_io("write", offset, len(view))
        async with self._mappings_lock, self._data_lock:
            self._check_open("write")
            self._reap_locked()
            if n == 0:
                return 0
            end = offset + n
            self._allocate_holes_locked(offset & ~PAGE_MASK, _page_up(end))
            # Bytes past the old end in its last page may hold what a mapping
            # stored there; they must read as zero once inside the file.
            if offset > self._size:
                self._zero_locked(self._size, offset)
            self._pages.write(self._mf, offset, view)
            self._size = max(self._size, end)
            return n

    async def truncate(self, size: int) -> None:
        """Set the size to ``size`` bytes.

        Growing only changes the size (the new bytes read as zero). Shrinking
        zeroes the tail of a last partial page at once, then tells every
        mapping of the removed whole pages to drop them (with
        ``invalidate_private=True``, so private copies go too), then frees
        those pages.

        Args:
            size: The new size.

        Raises:
            TypeError: ``size`` is not an int.
            ValueError: ``size`` is negative or above
                :data:`MAX_SHARED_MEMORY_SIZE`.
            ClosedError: The object is closed.
            ExceptionGroup: Some mapping spaces failed to invalidate. The
                truncation was still completed; the others were invalidated.

        Postconditions:
            ``size`` is the new size and no page lies past
            ``page_round_up(size)``, even on error.

        Locking:
            Takes ``_mappings_lock`` for the whole call, and ``_data_lock``
            twice under it: to change the size, then (after publishing the
            invalidation, which is done without ``_data_lock``) to free
            pages.

        Cancellation:
            While waiting for either lock the first time: nothing changes.
            Once the size has changed the truncation is never rolled back:
            a cancelled invalidation still completes every delivery (the bus
            guarantees it) and the pages are then freed before the
            ``CancelledError`` propagates. If the cancellation lands while
            waiting for ``_data_lock`` the second time, the pages are left
            marked for freeing, and the next operation that takes the data
            lock frees them before doing anything else.
        """
        size = _check_offset_int("truncate", "size", size)
        if size > MAX_SHARED_MEMORY_SIZE:
            raise ValueError(
                f"truncate: size must be at most {MAX_SHARED_MEMORY_SIZE:#x}, "
                f"got {size:#x}"
            )
        async with self._mappings_lock:
            async with self._data_lock:
                self._check_open("truncate")
                self._reap_locked()
                old = self._size
                if size >= old:
                    self._zero_locked(old, min(size, _page_up(old)))
                    self._size = size
                    return
                self._zero_locked(size, _page_up(size))
                self._size = size
            new_end, old_end = _page_up(size), _page_up(old)
            if new_end == old_end:
                return
            try:
                await self._mappings.invalidate(
                    MappableRange(new_end, old_end),
                    InvalidateOpts(invalidate_private=True),
                )
            finally:
                # Every delivery has completed, even if cancelled or failed.
                self._reap_from = new_end
                async with self._data_lock:
                    self._reap_locked()

    # ------------------------------------------------------------------
    # Mappable

    async def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Record that ``ms`` maps ``ar`` to offsets starting at ``offset``.

        Args:
            ms: The mapping space; hashable, with an ``invalidate`` method.
            ar: The addresses: non-empty and page-aligned.
            offset: The offset mapped at ``ar.start``: page-aligned.
            writable: Whether the mapping may write our data.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``ar`` is empty, ``offset`` negative, or
                ``offset + len(ar)`` overflows 64 bits.
            AlignmentError: ``ar`` or ``offset`` is not page-aligned.
            ClosedError: The object is closed.

        Locking:
            Takes ``_mappings_lock``.

        Cancellation:
            Only while waiting for the lock; nothing is recorded.
        """
        _check_mapping_args("add_mapping", ms, ar, offset, writable)
        async with self._mappings_lock:
            self._check_open("add_mapping")
            self._mappings.add_mapping(ms, ar, offset, writable)

    async def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Forget a mapping recorded by :meth:`add_mapping`.

        Args:
            ms: The mapping space.
            ar: The addresses.
            offset: The offset mapped at ``ar.start``.
            writable: The flag the mapping was added with.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: As for :meth:`add_mapping`.
            AlignmentError: ``ar`` or ``offset`` is not page-aligned.
            LookupError: Nothing is mapped at ``offset`` (a caller bug).
            ClosedError: The object is closed (no mapping can exist then).

        Locking:
            Takes ``_mappings_lock``.

        Cancellation:
            Only while waiting for the lock; nothing changes (callers shield
            the call so that it completes).
        """
        _check_mapping_args("remove_mapping", ms, ar, offset, writable)
        async with self._mappings_lock:
            self._check_open("remove_mapping")
            self._mappings.remove_mapping(ms, ar, offset, writable)

    async def copy_mapping(
        self,
        ms: MappingSpace,
        src_ar: AddrRange,
        dst_ar: AddrRange,
        offset: int,
        writable: bool,
    ) -> None:
        """Record a copy of a mapping to ``dst_ar``: as :meth:`add_mapping` there.

        Args:
            ms: The mapping space.
            src_ar: The existing mapping's addresses; page-aligned, may be
                empty.
            dst_ar: The new mapping's addresses.
            offset: The offset mapped at both starts.
            writable: The flag of the existing mapping.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``dst_ar`` is empty, ``offset`` negative, or an end
                offset overflows 64 bits.
            AlignmentError: A range or ``offset`` is not page-aligned.
            ClosedError: The object is closed.

        Locking:
            Takes ``_mappings_lock``.

        Cancellation:
            Only while waiting for the lock; nothing is recorded.
        """
        _check_aligned_range(
            "copy_mapping", "src_ar", src_ar, AddrRange, allow_empty=True
        )
        _check_offset("copy_mapping", offset, src_ar)
        _check_mapping_args("copy_mapping", ms, dst_ar, offset, writable)
        async with self._mappings_lock:
            self._check_open("copy_mapping")
            self._mappings.add_mapping(ms, dst_ar, offset, writable)

    async def translate(
        self, required: MappableRange, optional: MappableRange, at: AccessType
    ) -> TranslateResult:
        """Return the pages holding ``required`` (and maybe more of ``optional``).

        Both ranges are first cut at the page-rounded size. Holes within
        ``max_optional_range(required, optional, FILL_LIMIT)`` are allocated
        (zeroed); present pages within ``max_optional_range(required,
        optional, TRANSLATE_LIMIT)`` are translated, as one contiguous run
        from ``required.start`` whose pieces each overlap ``required``. Every
        translation permits ``AccessType.ANY``.

        Args:
            required: The offsets needed: non-empty, page-aligned.
            optional: The offsets allowed: page-aligned, containing
                ``required``.
            at: The accesses needed.

        Returns:
            ``(translations, error)``: ``error`` is ``None`` if all of
            ``required`` is translated; a :class:`~aiomemmap.BusError` caused
            by an ``EOFError`` if ``required`` extends past the page-rounded
            size (translations then cover the part before it, possibly
            nothing), or by an ``OutOfMemoryError`` if pages could not be
            allocated.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``required`` is empty or ``optional`` does not
                contain it.
            AlignmentError: A range is not page-aligned.
            ClosedError: The object is closed.

        Postconditions:
            The result passes :func:`~aiomemmap.check_translate_result`, and
            we hold a reference on every translated page until it is
            invalidated.

        Locking:
            Called with the mapping space's ``LockRank.ACTIVE`` lock held.
            Takes ``_data_lock``; awaits only to acquire it.

        Cancellation:
            Only while waiting for the lock; nothing is allocated.
        """
        _check_aligned_range("translate", "required", required, MappableRange)
        _check_aligned_range("translate", "optional", optional, MappableRange)
        if not optional.is_superset_of(required):
            raise ValueError(
                f"translate: optional {optional} does not contain required {required}"
            )
        if type(at) is not AccessType:
            raise TypeError(f"translate: at must be an AccessType, got {at!r}")
        async with self._data_lock:
            self._check_open("translate")
            self._reap_locked()
            eof = _page_up(self._size)
            if required.start >= eof:
                return TranslateResult([], BusError(self._eof_error(required, eof)))
            req = MappableRange(required.start, min(required.end, eof))
            opt = MappableRange(optional.start, min(optional.end, eof))
            fill = max_optional_range(req, opt, FILL_LIMIT)
            alloc_error: OutOfMemoryError | None = None
            try:
                self._allocate_holes_locked(fill.start, fill.end)
            except OutOfMemoryError as exc:
                alloc_error = exc
            window = max_optional_range(req, opt, TRANSLATE_LIMIT)
            ts = self._pages.translations(req, window, self._mf, AccessType.ANY)
            pos = ts[-1].source.end if ts else req.start
            if pos >= required.end:
                return TranslateResult(ts, None)
            if alloc_error is not None and pos < req.end:
                return TranslateResult(ts, BusError(alloc_error))
            return TranslateResult(ts, BusError(self._eof_error(required, eof)))

    async def invalidate_unsavable(self) -> None:
        """Do nothing: the memory itself is saved, so translations survive.

        Raises:
            ClosedError: The object is closed.
        """
        self._check_open("invalidate_unsavable")

    # ------------------------------------------------------------------
    # MappingIdentity and lifetime

    def inc_ref(self) -> None:
        """Take one more identity reference.

        Raises:
            ClosedError: The object is closed.

        Locking:
            Takes no lock; never waits.
        """
        self._check_open("inc_ref")
        self._refs += 1

    async def dec_ref(self) -> None:
        """Drop one identity reference; dropping the last one closes the object.

        Raises:
            RefCountError: No reference is held.
            RuntimeError: As for :meth:`aclose`, when the last reference is
                dropped while mappings are recorded (the reference is still
                dropped; the object stays open until :meth:`aclose`).

        Locking:
            As :meth:`aclose` when the last reference goes.

        Cancellation:
            The reference is dropped before the first await; a cancelled close
            leaves the object open with its pages, to be closed by
            :meth:`aclose`.
        """
        if self._refs <= 0:
            raise RefCountError(f"dec_ref: {self!r} holds no reference")
        self._refs -= 1
        if self._refs == 0:
            await self.aclose()

    def mapped_name(self) -> str:
        """Return the name given at construction, or a memfd-like default.

        The default is ``/memfd:shm-<inode id> (deleted)``, as Linux lists a
        memfd.
        """
        return self._name or f"/memfd:shm-{self._inode_id} (deleted)"

    def device_id(self) -> int:
        """Return :data:`SHARED_MEMORY_DEVICE_ID`."""
        return SHARED_MEMORY_DEVICE_ID

    def inode_id(self) -> int:
        """Return a number unique to this object within the process."""
        return self._inode_id

    async def msync(self, mr: MappableRange) -> None:
        """Do nothing: the memory is the storage, so it is always in sync.

        Args:
            mr: The offsets to write back: a non-empty ``MappableRange``.

        Raises:
            TypeError: ``mr`` is not a ``MappableRange``.
            ValueError: ``mr`` is empty.
            ClosedError: The object is closed.
        """
        if type(mr) is not MappableRange:
            raise TypeError(f"msync: mr must be a MappableRange, got {mr!r}")
        if mr.length == 0:
            raise ValueError(f"msync: mr {mr} is empty")
        self._check_open("msync")

    async def aclose(self) -> None:
        """Free every page and close the object; later calls do nothing.

        Raises:
            RuntimeError: Mappings are still recorded; nothing changed.

        Postconditions:
            The object is closed and holds no page. If the memory file was
            closed first, its pages are simply forgotten.

        Locking:
            Takes ``_mappings_lock`` then ``_data_lock``.

        Cancellation:
            Only while waiting for a lock; nothing changes.
        """
        if self._closed:
            return
        async with self._mappings_lock, self._data_lock:
            if self.closed:  # closed while this task waited
                return
            if not self._mappings.is_empty():
                ranges = ", ".join(str(r) for r in self._mappings.mapped_ranges())
                raise RuntimeError(
                    f"aclose: {self!r} is still mapped at offsets {ranges}; "
                    "remove the mappings first"
                )
            self._closed = True
            dropped = self._pages.drop_all()
            self._reap_from = None
            release(self._mf, dropped)

    # ------------------------------------------------------------------
    # Internals

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: {self!r} is closed")

    @staticmethod
    def _check_io(what: str, offset: object, n: object) -> tuple[int, int]:
        off = _check_offset_int(what, "offset", offset)
        count = _check_offset_int(what, "n" if what == "read" else "len(data)", n)
        if off + count > MAX_SHARED_MEMORY_SIZE:
            raise ValueError(
                f"{what}: offset {off:#x} + length {count:#x} exceeds the largest "
                f"size {MAX_SHARED_MEMORY_SIZE:#x}"
            )
        return off, count

    @staticmethod
    def _eof_error(required: MappableRange, eof: int) -> EOFError:
        return EOFError(
            f"offsets {required} reach past the end of the file (page-rounded "
            f"size {eof:#x})"
        )

    def _reap_locked(self) -> None:
        """Free the pages a cancelled truncation left past the end.

        Preconditions:
            The caller holds ``_data_lock``.
        """
        bound = self._reap_from
        if bound is None:
            return
        self._reap_from = None
        release(self._mf, self._pages.drop(bound, ADDR_LIMIT))

    def _allocate_holes_locked(self, start: int, end: int) -> None:
        """Allocate zeroed pages for every hole in ``[start, end)``.

        All or nothing: on failure the pages allocated here are freed.

        Raises:
            OutOfMemoryError: The memory file could not supply the pages.

        Preconditions:
            The caller holds ``_data_lock``; the bounds are page-aligned.
        """
        self._pages.fill(start, end, self._mf, MemoryKind.TMPFS)

    def _zero_locked(self, start: int, end: int) -> None:
        """Zero the present bytes of offsets ``[start, end)``.

        Preconditions:
            The caller holds ``_data_lock``.
        """
        self._pages.zero(self._mf, start, end)
