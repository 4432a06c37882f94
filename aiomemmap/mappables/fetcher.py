"""The fetcher: single-flight reads of a cached file's missing pages.

A :class:`Fetcher` fills a cached file's page cache (a
:class:`~aiomemmap.fsutil.file_range_set.FileRangeSet`) from its backing, one
background task per page range:

* single flight: a page range being fetched is recorded in a map of in-flight
  fetches (:class:`Fetch` records), and every later access that needs those
  pages waits for that fetch instead of starting another;
* a page lands (becomes present in the cache) only once its bytes have been
  read; the part of the last page past the end of the file is zero;
* a fetch belongs to nobody: a waiter that is cancelled stops waiting, and the
  fetch carries on and lands its pages for the next access;
* a failed fetch (after the retries of
  :func:`~aiomemmap.backings.base.read_fully`) frees its pages and leaves them
  absent; each waiter gets a :class:`~aiomemmap.BusError` and the next access
  fetches again;
* a page is never zero-filled because the backing came up short: a read that
  ends before the bytes the backing is known to hold (the size the file was
  opened at, or what it wrote there since) means the object changed, and the
  fetch fails with :class:`~aiomemmap.StaleVersionError`, like a read the
  backing itself found answered by another version. Either way the owner is
  told (``on_stale``) to drop what it cached of the old version;
* while the owner learns the new version (:meth:`Fetcher.hold`), fetches
  wait before reading, so that no page of the new version lands next to
  pages of the old one;
* several fetches run at once (``max_fetches_in_flight``) and neighbouring
  missing pages are fetched together, up to ``max_fetch_bytes`` per fetch;
* a fetch created under an older *generation* (the file was truncated or its
  cache dropped since) discards its pages when it lands;
* a fetch never reads offsets that a write is sending straight to the backing
  (:meth:`Fetcher.writing_through`): it waits for that write first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import typing
from collections.abc import Callable, Iterator
from typing import Protocol, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq, zero_seq
from aiomemmap._core.errors import (
    BusError,
    ClosedError,
    InvariantError,
    StaleVersionError,
)
from aiomemmap._core.locks import detached_context
from aiomemmap._core.pages import ADDR_LIMIT, PAGE_MASK, page_round_up
from aiomemmap._core.ranges import FileRange
from aiomemmap._core.segments import SegmentMap
from aiomemmap.backings.base import Backing, RetryPolicy, read_fully
from aiomemmap.fsutil.file_range_set import FileRangeSet
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind

__all__ = ["Fetch", "Fetcher"]


def _round_up_size(size: int) -> int:
    """``page_round_up(size)`` for a file size, with a fast path."""
    rounded = (size + PAGE_MASK) & ~PAGE_MASK
    if rounded >= ADDR_LIMIT or size < 0:
        return page_round_up(size)  # Raises.
    return rounded


class _FileLandingBacking(Protocol):
    """A backing that can also land a range straight in a file descriptor."""

    async def read_into_file(
        self, offset: int, length: int, fd: int, file_offset: int
    ) -> int: ...


@final
class _LandingInFile:
    """A backing whose reads land through the memory file's descriptor.

    ``read_into(offset, buf)``, where ``buf`` maps the memory file at
    ``offset + delta``, fills ``buf`` by writing the bytes to the memory
    file there (``read_into_file``): the kernel allocates and fills fresh
    pages in one step, where a copy into ``buf`` would fault each page in
    first. Only what :func:`~aiomemmap.backings.base.read_fully` calls is
    provided: ``size`` and ``read_into``.
    """

    __slots__ = ("_backing", "_delta", "_fd")

    def __init__(self, backing: Backing, fd: int, delta: int) -> None:
        self._backing = backing
        self._fd = fd
        self._delta = delta

    async def size(self) -> int:
        return await self._backing.size()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        backing = typing.cast(_FileLandingBacking, self._backing)
        return await backing.read_into_file(
            offset, len(buf), self._fd, offset + self._delta
        )


@final
class Fetch:
    """One fetch: pages ``[start, end)`` being read from the backing.

    Attributes:
        start: First offset fetched.
        end: End of the offsets fetched (page-aligned).
        valid_end: The file size when the fetch was created: bytes at or past
            it are zero, not read.
        backed_end: How far the backing was known to hold bytes when the
            fetch was created (at most ``valid_end``): a read that ends
            before it means the object changed.
        generation: The fetcher's generation when the fetch was created; a
            fetch whose generation is outdated when it lands is discarded.
        done: Set when the fetch has finished, whatever the outcome.
        error: Why the fetch failed, or ``None``.
        stale: The fetch finished but its pages were discarded (the file was
            truncated or dropped meanwhile); waiters look again.

    Concurrency:
        Task-compatible: changed by the fetch task and the fetcher, never
        across an await.
    """

    __slots__ = (
        "backed_end",
        "done",
        "end",
        "error",
        "generation",
        "stale",
        "start",
        "valid_end",
    )

    def __init__(
        self, start: int, end: int, valid_end: int, backed_end: int, generation: int
    ) -> None:
        self.start = start
        self.end = end
        self.valid_end = valid_end
        self.backed_end = min(backed_end, valid_end)
        self.generation = generation
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self.stale = False


@final
class Fetcher:
    """Fetches the missing pages of one cached file, each range once at a time.

    Args:
        owner: The cached file, named in errors and task names.
        backing: Where the bytes are read from.
        mf: Where the pages are allocated (as ``MemoryKind.PAGE_CACHE``).
        cache: The page cache that fetched pages land in.
        size: Returns the file's size now (known before any fetch starts).
        backed_size: Returns how far the backing is known to hold bytes:
            the size learned from it, grown by what was written to it since.
        version: Returns the version the file was opened at (for errors).
        on_stale: Called, without awaiting, when a fetch of the current
            generation fails with :class:`~aiomemmap.StaleVersionError`;
            ``None`` until the owner sets :attr:`on_stale`.
        retry: How transient read errors are retried.
        max_fetch_bytes: The most one fetch reads: a multiple of the page size.
        max_fetches_in_flight: How many fetches may read at once.
        budget: Whether ``mf``'s cache budget applies: each fetch then
            reserves room (evicting) before it allocates.
        on_land: Called with ``(start, end)`` when a fetch's pages have been
            inserted into ``cache`` (without awaiting, in the same step).

    Invariants:
        In-flight fetches are disjoint and none overlaps a cached offset.

    Concurrency:
        Task-compatible: every change happens between awaits. Fetch tasks
        are created with ``detached_context()`` and take no lock.
    """

    __slots__ = (
        "_backed_size",
        "_backing",
        "_budget",
        "_cache",
        "_closed",
        "_fetches",
        "_held",
        "_lands_in_file",
        "_max_fetch",
        "_mf",
        "_on_land",
        "_owner",
        "_retry",
        "_size",
        "_slots",
        "_tasks",
        "_version",
        "_write_through",
        "_write_tokens",
        "bytes_fetched",
        "fetches_done",
        "generation",
        "on_stale",
        "unlearnt",
    )

    def __init__(
        self,
        owner: object,
        backing: Backing,
        mf: MemoryFile,
        cache: FileRangeSet,
        *,
        size: Callable[[], int | None],
        backed_size: Callable[[], int],
        version: Callable[[], str | None],
        on_stale: Callable[[StaleVersionError], None] | None,
        retry: RetryPolicy | None,
        max_fetch_bytes: int,
        max_fetches_in_flight: int,
        budget: bool,
        on_land: Callable[[int, int], None],
    ) -> None:
        self._owner = owner
        self._backing = backing
        self._lands_in_file = callable(getattr(backing, "read_into_file", None))
        self._mf = mf
        self._cache = cache
        self._size = size
        self._backed_size = backed_size
        self._version = version
        self.on_stale = on_stale
        """Told of a fetch that found the object changed (see Args)."""
        self.unlearnt = False
        """The owner found the object changed but could not learn its new
        size and version: fetches fail as if they found it changed (so that
        ``on_stale`` tries again) rather than read with the old size."""
        self._held: asyncio.Event | None = None
        self._retry = retry
        self._max_fetch = max_fetch_bytes
        self._slots = asyncio.Semaphore(max_fetches_in_flight)
        self._budget = budget
        self._on_land = on_land
        self._closed = False
        self._fetches: SegmentMap[Fetch] = SegmentMap()
        self._tasks: set[asyncio.Task[None]] = set()
        # Writes going straight to the backing: token -> (start, end, done).
        self._write_through: dict[int, tuple[int, int, asyncio.Event]] = {}
        self._write_tokens = itertools.count()
        self.generation = 0
        """Bumped when every fetch in flight becomes outdated."""
        self.fetches_done = 0
        """Fetches that read from the backing."""
        self.bytes_fetched = 0
        """Bytes read from the backing."""

    def __repr__(self) -> str:
        return f"<Fetcher of {self._owner!r}: {len(self._tasks)} in flight>"

    # ------------------------------------------------------------------
    # Queries

    def is_open(self) -> bool:
        """Return whether :meth:`close` was not called yet."""
        return not self._closed

    def in_flight(self) -> int:
        """Return how many fetches are started and not finished."""
        return len(self._tasks)

    def find(self, offset: int) -> Fetch | None:
        """Return the fetch reading ``offset``, or ``None``."""
        seg = self._fetches.find(offset)
        return None if seg is None else seg.value

    def next_start(self, offset: int) -> int | None:
        """Return where the first fetch ending after ``offset`` starts, or ``None``."""
        seg = self._fetches.lower_bound_segment(offset)
        return None if seg is None else seg.start

    def __iter__(self) -> Iterator[Fetch]:
        return (seg.value for seg in self._fetches)

    # ------------------------------------------------------------------
    # Starting and waiting

    async def land_read(self, start: int, data: bytes, size: int) -> None:
        """Cache the whole pages of bytes already read at ``start``.

        The bytes came with the answer that told the file's ``size`` (e.g.
        the object's tail, read by the request that opened it), so they
        are of the version the file was opened at. The pages of
        ``[start, start + len(data))`` that lie wholly inside it are cached,
        the last page zero-filled past ``size`` when ``data`` reaches the
        end; a page already cached or being fetched is left alone, and so is
        everything once the generation moved on.

        Args:
            start: File offset of ``data[0]``.
            data: The bytes read.
            size: The file's size as the same answer told it.

        Cancellation:
            Cancelled while room is reserved in the budget, nothing is cached.
        """
        end = start + len(data)
        first = _round_up_size(start)
        last = _round_up_size(size) if end >= size else end & ~PAGE_MASK
        generation = self.generation
        if first >= last or self._closed:
            return
        if not (
            self._cache.is_empty_range(first, last)
            and self._fetches.is_empty_range(first, last)
        ):
            return
        mf = self._mf
        length = last - first
        if self._budget:
            await mf.evictor.reserve(length)
            try:
                fr = mf.allocate(length, kind=MemoryKind.PAGE_CACHE)
            finally:
                mf.release_cache_reservation(length)
        else:
            fr = mf.allocate(length, kind=MemoryKind.PAGE_CACHE)
        try:
            payload = memoryview(data)[first - start : min(end, size) - start]
            os.pwrite(mf.fd(), payload, fr.start)
            landable = (
                generation == self.generation
                and self.is_open()
                and self._cache.is_empty_range(first, last)
                and self._fetches.is_empty_range(first, last)
            )
        except BaseException:
            if not mf.closed:
                mf.dec_ref(fr)
            raise
        if not landable:
            if not mf.closed:
                mf.dec_ref(fr)
            return
        self.fetches_done += 1
        self.bytes_fetched += len(data)
        self._cache.insert(first, last, fr.start)
        self._on_land(first, last)

    def start(self, start: int, end: int) -> None:
        """Start fetches for the pages of ``[start, end)`` not cached or in flight.

        Neighbouring missing pages go into one fetch, up to
        ``max_fetch_bytes``. Does not await.
        """
        cache, fetches = self._cache, self._fetches
        holes: list[tuple[int, int]]
        if cache.is_empty_range(start, end) and fetches.is_empty_range(start, end):
            # The common case of a cold access: one hole, the whole range.
            holes = [(start, end)] if start < end else []
        else:
            holes = []
            for gap in cache.gaps(start, end):
                lo, hi = max(gap.start, start), min(gap.end, end)
                holes.extend(
                    (max(h.start, lo), min(h.end, hi)) for h in fetches.gaps(lo, hi)
                )
        for lo, hi in holes:
            while lo < hi:
                step = min(hi, lo + self._max_fetch)
                self._spawn(lo, step)
                lo = step

    async def fill(
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
                below ``start``: the cause is an ``EOFError``). When the
                cause is a ``StaleVersionError``, it is raised once the owner
                has dropped the old version and learnt the new one.
            ClosedError: The fetcher is closed.

        Cancellation:
            Only the waiting stops; fetches carry on.
        """
        self._check_open()
        self.start(wstart, wend)
        cache = self._cache
        while True:
            if self._closed:
                self._check_open()
            if clip:
                size = self._size()
                if size is None:
                    raise InvariantError("fill: the file size is not known")
                end = min(end, _round_up_size(size))
                if end <= start:
                    raise BusError(EOFError(f"offset {start:#x} is past end of file"))
            cseg = cache.find(start)
            if cseg is None:
                hole_start = start
            elif cseg.end >= end:
                return
            else:
                hole = cache.first_hole(cseg.end, end)
                if hole is None:
                    return
                hole_start = hole.start
            fetch = self.find(hole_start)
            if fetch is None:
                # Discarded or failed before: fetch the required pages again.
                self.start(hole_start, end)
                fetch = self.find(hole_start)
                if fetch is None:
                    raise InvariantError(f"no fetch started at {hole_start:#x}")
            await fetch.done.wait()
            if fetch.error is not None:
                if isinstance(fetch.error, StaleVersionError):
                    # Fail only once the file is the new version (the
                    # spaces that mapped the old one were told).
                    while self._held is not None:
                        await self._held.wait()
                raise BusError(fetch.error) from fetch.error

    @contextlib.contextmanager
    def writing_through(self, start: int, end: int) -> Iterator[None]:
        """Hold fetches of ``[start, end)`` back while a write goes to the backing.

        Fetches that would read those offsets wait until the block is left,
        so that they read what the write put there.
        """
        token = next(self._write_tokens)
        done = asyncio.Event()
        self._write_through[token] = (start, end, done)
        try:
            yield
        finally:
            del self._write_through[token]
            done.set()

    # ------------------------------------------------------------------
    # Closing

    def hold(self) -> None:
        """Make fetches wait before reading until :meth:`release`."""
        if self._held is None:
            self._held = asyncio.Event()

    def release(self) -> None:
        """Let the fetches held by :meth:`hold` go on."""
        held, self._held = self._held, None
        if held is not None:
            held.set()

    @property
    def held(self) -> bool:
        """Whether fetches are held (:meth:`hold`)."""
        return self._held is not None

    def close(self) -> None:
        """Refuse new fetches and waits from now on (:class:`ClosedError`)."""
        self._closed = True
        self.release()

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel every fetch task; return them, for the caller to wait for."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def check_invariants(self) -> None:
        """Check the in-flight map against the cache; raise :class:`InvariantError`."""
        self._fetches.check_invariants()
        for seg in self._fetches:
            if not self._cache.is_empty_range(seg.start, seg.end):
                raise InvariantError(
                    f"offsets [{seg.start:#x}, {seg.end:#x}) are cached and fetched"
                )

    # ------------------------------------------------------------------
    # Fetch tasks

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"fetch: {self._owner!r} is closed")

    def _spawn(self, start: int, end: int) -> None:
        size = self._size()
        if size is None:
            raise InvariantError("fetch: the file size is not known")
        fetch = Fetch(start, end, size, self._backed_size(), self.generation)
        self._fetches.insert_without_merging(start, end, fetch)
        task = asyncio.get_running_loop().create_task(
            self._run(fetch),
            name=f"CachedFile fetch [{start:#x}, {end:#x})",
            context=detached_context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fetch: Fetch) -> None:
        """Read one fetch's pages and land them; the body of a fetch task."""
        fr: FileRange | None = None
        try:
            # Offsets being written straight to the backing are read after
            # the write.
            while self._write_through:
                pending = [
                    done
                    for s, e, done in self._write_through.values()
                    if s < fetch.end and fetch.start < e
                ]
                if not pending:
                    break
                await pending[0].wait()
            while self._held is not None:
                await self._held.wait()
            if self.unlearnt and fetch.generation == self.generation:
                raise StaleVersionError(
                    f"{self._owner!r}: the object changed and its new version "
                    "could not be learnt",
                    expected=self._version(),
                    found=None,
                )
            async with self._slots:
                if fetch.generation == self.generation:
                    fr = await self._read_pages(fetch)
            # The bytes have landed; publish them unless they are outdated.
            if fr is not None and fetch.generation == self.generation:
                self._cache.insert(fetch.start, fetch.end, fr.start)
                fr = None
                self._on_land(fetch.start, fetch.end)
            else:
                fetch.stale = True
        except asyncio.CancelledError:
            fetch.error = ClosedError(f"{self._owner!r} was closed during a fetch")
            raise
        except Exception as exc:
            fetch.error = exc
            if (
                isinstance(exc, StaleVersionError)
                and fetch.generation == self.generation
                and not self._closed
                and self.on_stale is not None
            ):
                self.on_stale(exc)
        finally:
            if fr is not None and not self._mf.closed:
                self._mf.dec_ref(fr)
            seg = self._fetches.find(fetch.start)
            if seg is not None and seg.value is fetch:
                self._fetches.delete(seg)
            fetch.done.set()

    async def _read_pages(self, fetch: Fetch) -> FileRange:
        """Allocate pages for ``fetch`` and read its bytes into them.

        Raises:
            Exception: Allocation or the read failed; nothing is held.
        """
        mf = self._mf
        length = fetch.end - fetch.start
        if self._budget:
            await mf.evictor.reserve(length)
            try:
                fr = mf.allocate(length, kind=MemoryKind.PAGE_CACHE)
            finally:
                mf.release_cache_reservation(length)
        else:
            fr = mf.allocate(length, kind=MemoryKind.PAGE_CACHE)
        try:
            valid = max(0, min(fetch.end, fetch.valid_end) - fetch.start)
            if valid:
                self.fetches_done += 1
                blocks = mf.map_internal(
                    FileRange(fr.start, fr.start + valid), AccessType.READ_WRITE
                )
                pos = fetch.start
                file_pos = fr.start
                fd = mf.fd() if self._lands_in_file else -1
                for block in blocks:
                    source = self._backing
                    if self._lands_in_file:
                        # read_fully calls only size() and read_into().
                        source = typing.cast(
                            Backing, _LandingInFile(source, fd, file_pos - pos)
                        )
                    n = await read_fully(source, pos, block, retry=self._retry)
                    file_pos += len(block)
                    self.bytes_fetched += n
                    if n < len(block):
                        if pos + n < fetch.backed_end:
                            raise StaleVersionError(
                                f"{self._owner!r}: the backing ended at "
                                f"{pos + n:#x}, short of the {fetch.backed_end:#x} "
                                "bytes it held when the file was opened",
                                expected=self._version(),
                                found=None,
                            )
                        # Past what the backing holds (the file was extended
                        # in the cache): the rest is zero.
                        zero_seq(BlockSeq([block[n:]]))
                        break
                    pos += n
        except BaseException:
            if not mf.closed:
                mf.dec_ref(fr)
            raise
        return fr
