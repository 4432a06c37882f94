"""Session: the fault service of one client's region.

A session owns the userfaultfd a client sent, and serves the faults of the
client's region: the client mapped its file's :class:`~aiomemmap.pager.
file_pages.FilePages` memfd at ``start``, all ``length`` bytes. A fault at
``start + offset`` is answered by reading the fault-around chunk at
``offset`` through the cached file and installing it whole, following the
rules in the package documentation. Nothing here ever waits for the client.

How a chunk is installed depends on how the client mapped the memfd, which
the session reads from ``/proc/PID/smaps`` before serving anything (and
refuses if it is not what the client said, or not registered as it must
be):

* **shared** (``MAP_SHARED``, registered for missing-page faults only):
  ``UFFDIO_COPY`` from the session's buffer publishes each page into the
  memfd and the client's page table in one step;
* **private** (``MAP_PRIVATE``, registered for missing- *and* minor-page
  faults): the chunk is written whole into the memfd
  (:meth:`~aiomemmap.pager.file_pages.FilePages.publish`), then mapped with
  ``UFFDIO_CONTINUE``. The client's pages are then the page cache's, so an
  invalidation's punch takes them away again and the next touch refaults,
  while the pages the client wrote (copied on write, its own) survive it.
  ``UFFDIO_COPY`` is never used here: it would install anonymous pages that
  no punch can revoke. Minor-fault registration is what makes this work:
  a page already in the memfd (another client's) still faults, and is
  mapped with ``UFFDIO_CONTINUE``; that ioctl also replaces a poison
  marker, so a repaired page reaches a private client too (a wake after
  the write would leave the marker in place); and it needs that
  registration.

The session ends (:attr:`Session.finished`) when the client is gone
(``ESRCH``), unmapped its region (``ENOENT``), or broke the rules (a fault
outside the range it declared); the pager then closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Final, final

from aiomemmap._core.errors import BusError, ClosedError
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    ForkEvent,
    PageFault,
    UffdError,
    UffdExists,
    UffdProcessGone,
    UffdRangeGone,
    UffdRetry,
    Userfaultfd,
    buffer_address,
)
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.pager.fault_around import FaultAround
from aiomemmap.pager.file_pages import FilePages
from aiomemmap.pager.protocol import (
    ProtocolError,
    decode_populate_request,
    populate_reply,
)
from aiomemmap.pager.watchdog import poison_unpopulated

__all__ = ["Session", "SessionCounters", "mapping_is_private"]

RETRY_DELAY: Final = 0.0002
"""First wait before retrying a copy refused with ``EAGAIN`` (seconds)."""
_MAX_RETRY_DELAY: Final = 0.01
REPAIR_FIRST_DELAY: Final = 0.05
"""First wait before a poisoned page is read again (seconds); it doubles."""
REPAIR_MAX_DELAY: Final = 5.0
_BATCH: Final = 64
_MAX_READS: Final = 16
"""Reads of one chunk before its bytes are installed despite invalidations
racing every read (only evictions, which change no byte, race that often)."""
_VMA_HEAD: Final = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ")


def mapping_is_private(pid: int, start: int, length: int) -> bool:
    """Return whether process ``pid`` maps ``[start, start + length)`` privately.

    The range must be mapped throughout, all of it one kind: shared
    (``MAP_SHARED``) and registered with a userfaultfd for missing-page
    faults only, or private (``MAP_PRIVATE``) and registered for missing-
    and minor-page faults (the ``um`` and ``ui`` flags of
    ``/proc/PID/smaps``), and for nothing else.

    Raises:
        ProtocolError: It is not, or the process's mappings cannot be read.
    """
    end, at, kinds = start + length, start, set()
    try:
        with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
            text = smaps.read()
    except OSError as exc:
        raise ProtocolError(
            f"the mappings of process {pid} cannot be read: {exc}"
        ) from None
    current: tuple[int, int, str] | None = None
    for line in text.splitlines():
        head = _VMA_HEAD.match(line)
        if head is not None:
            lo, hi = int(head[1], 16), int(head[2], 16)
            current = (lo, hi, head[3]) if lo < end and at < hi else None
            continue
        if current is None or not line.startswith("VmFlags:"):
            continue
        lo, hi, perms = current
        current = None
        if lo > at:
            break
        private = perms[3] == "p"
        flags = set(line.split()[1:])
        wanted = {"um", "ui"} if private else {"um"}
        if flags & {"um", "ui", "uw"} != wanted:
            raise ProtocolError(
                f"register request: the {'private' if private else 'shared'} "
                f"mapping at {lo:#x} of process {pid} must be registered for "
                f"{'missing and minor' if private else 'missing'} page faults "
                f"only (its flags: {' '.join(sorted(flags))})"
            )
        kinds.add(private)
        at = hi
        if at >= end:
            break
    if at < end:
        raise ProtocolError(
            f"register request: [{start:#x}, {end:#x}) is not wholly mapped in "
            f"process {pid} (checked up to {at:#x})"
        )
    if len(kinds) != 1:
        raise ProtocolError(
            f"register request: [{start:#x}, {end:#x}) is partly shared, partly "
            f"private in process {pid}"
        )
    return kinds.pop()


def _holds_file(pid: int, fd: int) -> bool:
    """Return whether process ``pid`` has a descriptor of the file of our ``fd``.

    ``fd`` itself does not count when ``pid`` is this process. True when
    the process's descriptors cannot be listed.
    """
    st = os.fstat(fd)
    own = pid == os.getpid()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True
    for name in names:
        if own and name == str(fd):
            continue
        try:
            other = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:  # Closed meanwhile, or not ours to look at.
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


@dataclass(slots=True)
class SessionCounters:
    """Counters of fault service, kept per session and added up by the pager.

    Attributes:
        faults: Fault messages read.
        coalesced: Faults on a page of a chunk already being installed
            (woken by that chunk's copy).
        chunks: Fault-around chunks installed.
        bytes_installed: Bytes copied into the client's region.
        duplicates: Pages found already present (``EEXIST``), then woken.
        retries: Copies retried after ``EAGAIN``.
        poisoned: Pages poisoned because their bytes could not be read.
        rereads: Chunks read again because an invalidation raced the read.
        repaired: Poisoned pages replaced by their bytes once they came.
        mapped_present: Bytes of private regions mapped from pages already
            in the memfd, with no read (part of ``bytes_installed``).
    """

    faults: int = 0
    coalesced: int = 0
    chunks: int = 0
    bytes_installed: int = 0
    duplicates: int = 0
    retries: int = 0
    poisoned: int = 0
    rereads: int = 0
    repaired: int = 0
    mapped_present: int = 0

    def add(self, other: SessionCounters) -> None:
        """Add ``other``'s counts to these."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class _Chunk:
    end: int
    waiting: set[int] = field(default_factory=set)


@final
class Session:
    """The fault service of one registered region.

    Args:
        uffd: The client's userfaultfd; the session closes it.
        start: Where the client mapped the memfd (page-aligned).
        pages: The memfd the client mapped (its length is the region's).
        cached_file: Where the bytes come from.
        policy: The fault-around policy of this region.
        client_pid: The client's pid (its mappings are checked).
        private: Whether the client said it mapped the memfd privately;
            ``None`` takes the kind from the client's mappings.

    Raises:
        ProtocolError: The client's mapping of the region is not of the
            kind it said, or not registered as that kind must be (see
            :func:`mapping_is_private`); ``uffd`` is closed then.

    Concurrency:
        Task-compatible: runs on the pager's loop only.
    """

    __slots__ = (
        "_cached_file",
        "_closed",
        "_in_flight",
        "_loop",
        "_pages",
        "_policy",
        "_repair",
        "_tasks",
        "_uffd",
        "client_pid",
        "counters",
        "finished",
        "last_error",
        "length",
        "poisoned",
        "private",
        "reason",
        "start",
    )

    def __init__(
        self,
        *,
        uffd: Userfaultfd,
        start: int,
        pages: FilePages,
        cached_file: CachedFile,
        policy: FaultAround,
        client_pid: int,
        private: bool | None = None,
    ) -> None:
        try:
            actual = mapping_is_private(client_pid, start, pages.length)
            if private is not None and private != actual:
                said, found = (
                    ("private", "shared") if private else ("shared", "private")
                )
                raise ProtocolError(
                    f"register request: the region was said to be {said}, "
                    f"but process {client_pid} maps it {found}"
                )
        except BaseException:
            uffd.close()
            raise
        self.private = actual
        """Whether the client maps the memfd privately (filled through it)."""
        self._uffd = uffd
        self.start = start
        self.length = pages.length
        self._pages = pages
        self._cached_file = cached_file
        self._policy = policy
        self.client_pid = client_pid
        self.counters = SessionCounters()
        self.poisoned: set[int] = set()
        """Offsets of the pages poisoned (and not replaced since)."""
        self.finished = asyncio.Event()
        """Set when the session can serve no more (see :attr:`reason`)."""
        self.reason = ""
        self.last_error: BaseException | None = None
        """Why the last page was poisoned."""
        self._in_flight: dict[int, _Chunk] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repair: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        kind = "private" if self.private else "shared"
        return (
            f"<Session pid={self.client_pid} {kind} [{self.start:#x}, "
            f"{self.start + self.length:#x}) in_flight={len(self._in_flight)}>"
        )

    def start_serving(self) -> None:
        """Start reading the descriptor on the running loop.

        Raises:
            RuntimeError: No loop is running.
        """
        self._loop = asyncio.get_running_loop()
        self._uffd.set_blocking(False)
        self._loop.add_reader(self._uffd.fileno(), self._on_readable)
        # Faults that came before the reader was added.
        self._on_readable()

    async def aclose(self) -> None:
        """Stop serving, cancel the chunks in flight and close the descriptor.

        A client still mapping its region must not wait forever for a page
        nobody will serve: every page of the region it has not mapped yet
        is poisoned first (a touch gets ``SIGBUS``, a checked read
        ``BusError``), unless the client is gone or unmapped the region.

        A client that closed its region has closed its userfaultfd too
        (before its end of the connection): then nothing is poisoned. The
        kernel lets any userfaultfd of a process resolve, or poison, any
        range of that process registered with *another* one, so a region
        the client has mapped since at the same addresses (the same file's
        again, typically) would otherwise be poisoned by this old service.
        Whether the client still holds the descriptor is told by its open
        files (``/proc/PID/fd``: each userfaultfd is an inode of its own);
        where that cannot be told, the pages are poisoned.

        Cancellation:
            Shielded by the caller (the pager's connection cleanup).
        """
        if self._closed:
            return
        self._closed = True
        self._end("closed")
        if self._loop is not None and not self._uffd.closed:
            self._loop.remove_reader(self._uffd.fileno())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self._uffd.closed:
            with contextlib.suppress(UffdError):
                # Page by page over what the client mapped: off the loop.
                await asyncio.to_thread(self._poison_if_still_held)
        self._uffd.close()

    def _poison_if_still_held(self) -> None:
        """Poison the unpopulated pages if the client still holds its descriptor."""
        if _holds_file(self.client_pid, self._uffd.fileno()):
            poison_unpopulated(self._uffd, self.start, self.length)

    async def populate(self, offset: int, length: int) -> list[int]:
        """Install the pages of ``[offset, offset + length)`` of the region now.

        What a fault there would do, without the fault: a client whose
        userfaultfd reports only user-mode faults asks for this before a
        system call reads those pages (the kernel's own access of a
        missing page fails there with ``EFAULT`` instead of faulting).
        Pages present already are left as they are; pages whose bytes
        cannot be read are poisoned, as a fault would have them.

        Args:
            offset: Page-aligned offset in the region.
            length: Page-aligned, positive, inside the region.

        Returns:
            The offsets of the span's pages that are poisoned now.

        Raises:
            ValueError: A bad span.
            ClosedError: The session has ended.

        Cancellation:
            The installation goes on (the session's own task); the caller
            just stops waiting for it.
        """
        end = offset + length
        if offset % PAGE_SIZE or length % PAGE_SIZE or length <= 0:
            raise ValueError(f"populate: [{offset}, {end}) is not whole pages")
        if offset < 0 or end > self.length:
            raise ValueError(f"populate: [{offset}, {end}) is outside the region")
        if self._closed or self.finished.is_set():
            raise ClosedError(f"{self!r} has ended ({self.reason})")
        chunk = _Chunk(end, set(range(offset, end, PAGE_SIZE)))
        task = asyncio.get_running_loop().create_task(self._resolve(offset, chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)
        return sorted(page for page in self.poisoned if offset <= page < end)

    async def answer(self, data: bytes) -> bytes:
        """Answer one message the client sent after the handshake.

        The one request there is: ``populate`` (see
        :mod:`~aiomemmap.pager.protocol`, step 5).

        Returns:
            The reply to send.

        Raises:
            ProtocolError: Not a valid request: the connection should end.
            ClosedError: The session has ended.
        """
        request = decode_populate_request(data, self.length)
        return populate_reply(await self.populate(request.offset, request.length))

    def _end(self, reason: str) -> None:
        if not self.finished.is_set():
            self.reason = reason
            self.finished.set()

    # ------------------------------------------------------------------
    # Reading the batch

    def _on_readable(self) -> None:
        if self._closed or self.finished.is_set():
            return
        batch: list[PageFault] = []
        try:
            while True:
                events = self._uffd.read_events(_BATCH)
                for event in events:
                    if isinstance(event, PageFault):
                        batch.append(event)
                    elif isinstance(event, ForkEvent):
                        os.close(event.fd)
                    # No other events were asked for: file content is the
                    # right answer whatever the client did meanwhile.
                if len(events) < _BATCH:
                    break
        except OSError as exc:
            self._end(f"reading the userfaultfd failed: {exc}")
            return
        self.counters.faults += len(batch)
        for fault in batch:
            self._serve(fault)

    def _serve(self, fault: PageFault) -> None:
        offset = fault.address - self.start
        if not 0 <= offset < self.length:
            self._end(
                f"fault at {fault.address:#x}, outside the registered region "
                f"[{self.start:#x}, {self.start + self.length:#x})"
            )
            return
        page = offset - offset % PAGE_SIZE
        for chunk_start, chunk in self._in_flight.items():
            if chunk_start <= page < chunk.end:
                chunk.waiting.add(page)
                self.counters.coalesced += 1
                return
        start, end = self._policy.chunk(page)
        chunk = _Chunk(end, {page})
        self._in_flight[start] = chunk
        task = asyncio.get_running_loop().create_task(self._resolve(start, chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------
    # Resolving

    async def _resolve(self, start: int, chunk: _Chunk) -> None:
        at = start
        try:
            if self.private:
                at = self._map_present(start, chunk.end)
                if at < 0:
                    return
                if at >= chunk.end:
                    self.counters.chunks += 1
                    return
            while True:
                try:
                    data, generation = await self._read(at, chunk.end)
                except Exception as exc:  # Any failure to read: never zeros.
                    for page in sorted(chunk.waiting):
                        if not await self._poison(page, exc):
                            return
                    return
                installed = await self._install(at, data, generation)
                if installed is None:
                    # Invalidated while it waited to install: read again.
                    self.counters.rereads += 1
                    continue
                if installed:
                    self.counters.chunks += 1
                return
        finally:
            if self._in_flight.get(start) is chunk:
                del self._in_flight[start]

    def _map_present(self, start: int, end: int) -> int:
        """Map the pages of ``[start, end)`` the memfd holds, into a private region.

        A page in the memfd is whole and current (see :meth:`_install`), so
        it is mapped as it is, with no read and no copy: this is what a
        minor fault (a page another client brought in) costs.

        Returns:
            The offset of the first page still to read (``end`` if none),
            or -1 if the session ended.
        """
        at = start
        while at < end:
            try:
                self._uffd.continue_(self.start + at, end - at)
                done = end - at
            except UffdRetry as exc:
                done = exc.bytes_done
                if done == 0:
                    break  # An event in flight: the installation retries.
            except UffdExists:
                # Mapped already (a duplicate fault, or a page written).
                self.counters.duplicates += 1
                if not self._wake(self.start + at):
                    return -1
                at += PAGE_SIZE
                continue
            except UffdError as exc:
                if exc.errno == errno.EFAULT:
                    break  # A hole: read it.
                self._fail(exc)
                return -1
            self.counters.bytes_installed += done
            self.counters.mapped_present += done
            for page in range(at, at + done, PAGE_SIZE):
                self.poisoned.discard(page)
            at += done
        return at

    async def _read(self, start: int, end: int) -> tuple[bytes, int]:
        """Read offsets ``[start, end)``, zero-padded past the file's end.

        Returns:
            The bytes, and the pages' generation they are current at.

        Raises:
            BusError: The file is shorter than when it was mapped.
            Exception: Whatever the cached file's read raised.
        """
        want = min(end, self._pages.size) - start
        data, generation = b"", self._pages.generation
        for _ in range(_MAX_READS):
            generation = self._pages.generation
            data = await self._cached_file.read(start, want)
            # Invalidated while read: those bytes may be stale.
            if not self._pages.changed_since(generation, start, end):
                break
            self.counters.rereads += 1
        if len(data) != want:
            raise BusError(
                EOFError(
                    f"read {len(data)} of {want} bytes at {start}: "
                    "the file is shorter than when it was mapped"
                )
            )
        if len(data) < end - start:
            data += bytes(end - start - len(data))
        return data, generation

    async def _install(self, start: int, data: bytes, generation: int) -> bool | None:
        """Install ``data``, read at ``generation``, in the region at ``start``.

        Returns:
            True once installed; False if the session ended; None if the
            offsets were invalidated before the bytes could all be installed
            (read them again).
        """
        if self.private:
            installed = await self._publish_and_map(start, data, generation)
        else:
            installed = await self._copy(start, data, generation)
        if installed:
            for page in range(start, start + len(data), PAGE_SIZE):
                self.poisoned.discard(page)
        return installed

    async def _copy(self, start: int, data: bytes, generation: int) -> bool | None:
        """Install into a shared region with ``UFFDIO_COPY``."""
        done, total, delay = 0, len(data), RETRY_DELAY
        punched: set[int] = set()
        with buffer_address(data) as (src, _):
            while done < total:
                dst = self.start + start + done
                try:
                    self._uffd.copy(dst, src + done, total - done)
                    self.counters.bytes_installed += total - done
                    done = total
                except UffdRetry as exc:
                    if exc.bytes_done > 0:
                        self.counters.bytes_installed += exc.bytes_done
                        done += exc.bytes_done
                        continue
                    self.counters.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY_DELAY)
                    if self._pages.changed_since(
                        generation, start + done, start + total
                    ):
                        return None
                except UffdExists:
                    page = start + done
                    if page in self.poisoned and page not in punched:
                        # This client holds the page poisoned while another
                        # installed it: take it out of the shared pages
                        # (whoever maps it refaults), then install it here.
                        punched.add(page)
                        self._pages.revoke(page, page + PAGE_SIZE)
                        generation = self._pages.generation
                        continue
                    self.counters.duplicates += 1
                    if not self._wake(dst):
                        return False
                    done += PAGE_SIZE
                except UffdError as exc:
                    self._fail(exc)
                    return False
        return True

    async def _publish_and_map(
        self, start: int, data: bytes, generation: int
    ) -> bool | None:
        """Install into a private region: write the memfd, then ``UFFDIO_CONTINUE``.

        The write comes first and whole (the caller checked, with no await
        since, that ``data`` is current at ``generation``); the continue
        then maps whatever page the memfd holds, which is current whenever
        it is there: a page punched out meanwhile (``EFAULT``) sends the
        chunk back to be read again.
        """
        if self._pages.changed_since(generation, start, start + len(data)):
            return None
        self._pages.publish(start, data)
        done, total, delay = 0, len(data), RETRY_DELAY
        while done < total:
            dst = self.start + start + done
            try:
                self._uffd.continue_(dst, total - done)
                self.counters.bytes_installed += total - done
                done = total
            except UffdRetry as exc:
                if exc.bytes_done > 0:
                    self.counters.bytes_installed += exc.bytes_done
                    done += exc.bytes_done
                    continue
                self.counters.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
            except UffdExists:
                # Mapped already (a duplicate fault, or a page the client
                # has written): whole either way.
                self.counters.duplicates += 1
                if not self._wake(dst):
                    return False
                done += PAGE_SIZE
            except UffdError as exc:
                if exc.errno == errno.EFAULT:
                    return None
                self._fail(exc)
                return False
        return True

    async def _poison(self, page: int, cause: BaseException) -> bool:
        """Poison one page whose bytes could not be read; False if the session ended."""
        delay = RETRY_DELAY
        while True:
            try:
                self._uffd.poison(self.start + page, PAGE_SIZE)
            except UffdRetry:
                self.counters.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            except UffdExists:
                # Installed meanwhile (another client's fault): it is whole.
                self.counters.duplicates += 1
                return self._wake(self.start + page)
            except (UffdProcessGone, UffdRangeGone) as exc:
                self._fail(exc)
                return False
            except UffdError as exc:
                # No poison on this kernel: the blocked access must still
                # not read zeros nor wait forever.
                self._end(f"cannot poison ({exc}); the client was sent SIGBUS")
                with contextlib.suppress(OSError):
                    os.kill(self.client_pid, signal.SIGBUS)
                return False
            self.counters.poisoned += 1
            self.poisoned.add(page)
            self.last_error = cause
            self._start_repair()
            return True

    # ------------------------------------------------------------------
    # Repairing poisoned pages

    def _start_repair(self) -> None:
        if self._repair is not None and not self._repair.done():
            return
        task = asyncio.get_running_loop().create_task(self._repair_poisoned())
        self._repair = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair_poisoned(self) -> None:
        """Read poisoned pages again, backing off; install those that come."""
        delay = REPAIR_FIRST_DELAY
        while self.poisoned and not self.finished.is_set():
            await asyncio.sleep(delay)
            delay = min(delay * 2, REPAIR_MAX_DELAY)
            for page in sorted(self.poisoned):
                want = min(page + PAGE_SIZE, self._pages.size) - page
                generation = self._pages.generation
                try:
                    data = await self._cached_file.read(page, want)
                except Exception:  # Still failing: try again later.
                    continue
                stale = self._pages.changed_since(generation, page, page + PAGE_SIZE)
                if len(data) != want or stale or page not in self.poisoned:
                    continue
                if len(data) < PAGE_SIZE:
                    data += bytes(PAGE_SIZE - len(data))
                installed = await self._install(page, data, generation)
                if installed is False:
                    return
                if installed:
                    self.counters.repaired += 1

    def _wake(self, address: int) -> bool:
        try:
            self._uffd.wake(address, PAGE_SIZE)
        except UffdError as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: UffdError) -> None:
        if isinstance(exc, UffdProcessGone):
            self._end("the client exited")
        elif isinstance(exc, UffdRangeGone):
            self._end("the client unmapped its region")
        else:
            self._end(f"userfaultfd refused: {exc}")
