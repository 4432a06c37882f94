"""Firecracker's page-fault-handler protocol: guest memory from a snapshot file.

When Firecracker restores a snapshot with a ``Uffd`` memory backend, it maps
the guest's memory as anonymous private memory, registers it with a
userfaultfd, connects to a stream Unix socket and sends, in one message, a
JSON list of the guest memory regions::

    [{"base_host_virt_addr": ADDRESS, "size": BYTES, "offset": OFFSET,
      "page_size": 4096}, ...]

(``page_size_kib`` in older versions) with the userfaultfd attached as
``SCM_RIGHTS``. ``offset`` is where the region's bytes start in the
snapshot's memory file. The handler answers nothing; it serves the faults.

Here the snapshot's memory file is any URL or path the engine opens, read
through its cached file. A fault installs a fault-around chunk of the region
with ``UFFDIO_COPY`` (anonymous memory: the bytes are the guest's own from
then on). Firecracker's rule for memory the guest gave back through its
balloon (``madvise(MADV_DONTNEED)``, reported as a remove event): such pages
read back as zeros, not as the snapshot, so removed ranges are remembered
and served with ``UFFDIO_ZEROPAGE``. A page of the snapshot that cannot be
read is poisoned, as for any region.

The handshake is bounded and checked like the pager's own: at most
:data:`MAX_REGIONS` regions, page-aligned, not overlapping, inside the
snapshot; anything else closes the connection.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

from aiomemmap._core.errors import BusError
from aiomemmap._core.fdpass import close_fds, recv_message_async
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    ForkEvent,
    PageFault,
    RemoveEvent,
    UffdError,
    UffdExists,
    UffdRetry,
    UnmapEvent,
    Userfaultfd,
    buffer_address,
)
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.pager.fault_around import FaultAround
from aiomemmap.pager.protocol import ProtocolError
from aiomemmap.pager.session import RETRY_DELAY, SessionCounters

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "MAX_REGIONS",
    "GuestRegion",
    "GuestSession",
    "decode_regions",
    "receive_handshake",
]

MAX_REGIONS: Final = 1024
MAX_HANDSHAKE_BYTES: Final = 256 * 1024
_BATCH: Final = 64
_MAX_RETRY_DELAY: Final = 0.01


@final
@dataclass(frozen=True, slots=True)
class GuestRegion:
    """One guest memory region: ``size`` bytes at ``base`` from ``offset``."""

    base: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        """The address past the region."""
        return self.base + self.size


def decode_regions(data: bytes, snapshot_size: int) -> list[GuestRegion]:
    """Check and decode the JSON list of regions, sorted by address.

    Raises:
        ProtocolError: Malformed, too many, unaligned, overlapping regions,
            a page size other than the host's, or bytes past the snapshot.
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"firecracker handshake: not JSON ({exc})") from None
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_REGIONS:
        raise ProtocolError(
            f"firecracker handshake: expected a list of 1 to {MAX_REGIONS} regions"
        )
    regions: list[GuestRegion] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("firecracker handshake: a region is not an object")
        page = item.get("page_size", item.get("page_size_kib", 4) * 1024)
        values = [item.get(k) for k in ("base_host_virt_addr", "size", "offset")]
        if not all(type(v) is int and 0 <= v < 1 << 64 for v in values):
            raise ProtocolError(f"firecracker handshake: bad region {item!r:.200}")
        base, size, offset = values
        assert base is not None and size is not None and offset is not None
        if page != PAGE_SIZE:
            raise ProtocolError(
                f"firecracker handshake: page size {page!r} is not {PAGE_SIZE} "
                "(huge pages are not served)"
            )
        if size == 0 or (base | size | offset) % PAGE_SIZE:
            raise ProtocolError(
                f"firecracker handshake: region {item!r:.200} is empty or unaligned"
            )
        if offset + size > snapshot_size or base + size > 1 << 64:
            raise ProtocolError(
                f"firecracker handshake: region {item!r:.200} reaches past the "
                f"snapshot ({snapshot_size} bytes)"
            )
        regions.append(GuestRegion(base, size, offset))
    regions.sort(key=lambda r: r.base)
    for before, after in itertools.pairwise(regions):
        if after.base < before.end:
            raise ProtocolError("firecracker handshake: regions overlap")
    return regions


async def receive_handshake(
    conn: socket.socket, snapshot_size: int
) -> tuple[list[GuestRegion], Userfaultfd]:
    """Receive the regions and the userfaultfd on a stream socket.

    The JSON may arrive over several reads of the stream (the descriptor
    with the first); the whole must fit :data:`MAX_HANDSHAKE_BYTES`.

    Raises:
        ProtocolError: As :func:`decode_regions`, or no descriptor, more
            than one, one that is not a userfaultfd, or the stream ended.
        MessageTruncatedError: Too long, or too many descriptors.
    """
    data = b""
    fds: list[int] = []
    try:
        while True:
            msg = await recv_message_async(
                conn, max_bytes=MAX_HANDSHAKE_BYTES - len(data) or 1, max_fds=1
            )
            fds.extend(msg.fds)
            if not msg.data:
                raise ProtocolError("firecracker handshake: the stream ended")
            data += msg.data
            if len(fds) > 1:
                raise ProtocolError("firecracker handshake: more than one descriptor")
            if _incomplete(data):
                if len(data) >= MAX_HANDSHAKE_BYTES:
                    raise ProtocolError("firecracker handshake: too long")
                continue
            break
        regions = decode_regions(data, snapshot_size)
        if len(fds) != 1:
            raise ProtocolError("firecracker handshake: no userfaultfd attached")
        try:
            uffd = Userfaultfd.adopt(fds[0])
        except ValueError as exc:
            raise ProtocolError(f"firecracker handshake: {exc}") from None
    except BaseException:
        close_fds(fds)
        raise
    return regions, uffd


def _incomplete(data: bytes) -> bool:
    """Whether ``data`` is the start of a JSON text, cut before its end.

    Malformed text (an error before its end) is not incomplete: it is
    refused at once rather than waited on.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # A character cut in two.
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        cut_string = exc.msg.startswith("Unterminated string")
        return cut_string or exc.pos >= len(text.rstrip())
    return False


@final
class GuestSession:
    """The fault service of one Firecracker VM's guest memory.

    Args:
        uffd: The VMM's userfaultfd; the session closes it.
        regions: The guest regions, sorted, checked.
        snapshot: The cached file of the snapshot's memory file.
        fault_around: The first fault-around chunk (grows on sequential
            faults, shrinks on random ones, within each region).
        max_fault_around: The largest chunk.

    Concurrency:
        Task-compatible: runs on the pager's loop only.
    """

    __slots__ = (
        "_bases",
        "_in_flight",
        "_loop",
        "_policies",
        "_regions",
        "_removed",
        "_snapshot",
        "_tasks",
        "_uffd",
        "counters",
        "finished",
        "reason",
        "zeroed",
    )

    def __init__(
        self,
        *,
        uffd: Userfaultfd,
        regions: list[GuestRegion],
        snapshot: CachedFile,
        fault_around: int,
        max_fault_around: int,
    ) -> None:
        self._uffd = uffd
        self._regions = regions
        self._bases = [r.base for r in regions]
        self._snapshot = snapshot
        self._policies = [
            FaultAround(
                r.size,
                initial=min(fault_around, max_fault_around),
                maximum=max_fault_around,
            )
            for r in regions
        ]
        # Page addresses the guest gave back (balloon): they read as zeros.
        self._removed: set[int] = set()
        self._in_flight: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = SessionCounters()
        self.zeroed = 0
        """Pages served as zeros because the guest had removed them."""
        self.finished = asyncio.Event()
        self.reason = ""

    def start_serving(self) -> None:
        """Start reading the descriptor on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._uffd.set_blocking(False)
        self._loop.add_reader(self._uffd.fileno(), self._on_readable)
        self._on_readable()

    async def aclose(self) -> None:
        """Stop serving and close the descriptor."""
        self._end("closed")
        if self._loop is not None and not self._uffd.closed:
            self._loop.remove_reader(self._uffd.fileno())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._uffd.close()

    def _end(self, reason: str) -> None:
        if not self.finished.is_set():
            self.reason = reason
            self.finished.set()

    def _on_readable(self) -> None:
        if self.finished.is_set():
            return
        faults: list[PageFault] = []
        try:
            while True:
                events = self._uffd.read_events(_BATCH)
                for event in events:
                    # Events first: a fault read in the same batch may come
                    # after a removal that happened before it.
                    if isinstance(event, PageFault):
                        faults.append(event)
                    elif isinstance(event, RemoveEvent | UnmapEvent):
                        self._removed.update(range(event.start, event.end, PAGE_SIZE))
                    elif isinstance(event, ForkEvent):
                        os.close(event.fd)
                if len(events) < _BATCH:
                    break
        except OSError as exc:
            self._end(f"reading the userfaultfd failed: {exc}")
            return
        self.counters.faults += len(faults)
        for fault in faults:
            self._serve(fault.address - fault.address % PAGE_SIZE)

    def _serve(self, address: int) -> None:
        at = bisect.bisect_right(self._bases, address) - 1
        region = self._regions[at] if at >= 0 else None
        if region is None or address >= region.end:
            self._end(f"fault at {address:#x}, outside every guest region")
            return
        for start, end in self._in_flight.items():
            if start <= address < end:
                self.counters.coalesced += 1
                return
        if address in self._removed:
            self._zero(address)
            return
        lo, hi = self._policies[at].chunk(address - region.base)
        start, end = region.base + lo, region.base + hi
        # Never fill a removed page with the snapshot.
        for page in range(address + PAGE_SIZE, end, PAGE_SIZE):
            if page in self._removed:
                end = page
                break
        for page in range(address - PAGE_SIZE, start - PAGE_SIZE, -PAGE_SIZE):
            if page in self._removed:
                start = page + PAGE_SIZE
                break
        self._in_flight[start] = end
        assert self._loop is not None
        task = self._loop.create_task(self._resolve(region, start, end, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _zero(self, address: int) -> None:
        """Serve a page the guest removed: zeros (Firecracker's rule)."""
        if self.finished.is_set():
            return
        try:
            self._uffd.zeropage(address, PAGE_SIZE)
            self.zeroed += 1
        except UffdExists:
            self._wake(address)
        except UffdRetry:
            assert self._loop is not None
            self.counters.retries += 1
            self._loop.call_later(RETRY_DELAY, self._zero, address)
            return
        except UffdError as exc:
            self._end(f"userfaultfd refused: {exc}")
            return
        self._removed.discard(address)

    async def _resolve(
        self, region: GuestRegion, start: int, end: int, fault: int
    ) -> None:
        try:
            offset = region.offset + (start - region.base)
            try:
                data = await self._snapshot.read(offset, end - start)
                if len(data) != end - start:
                    raise BusError(EOFError("the snapshot is shorter than announced"))
            except Exception:
                await self._retrying(lambda: self._uffd.poison(fault, PAGE_SIZE), fault)
                self.counters.poisoned += 1
                return
            with buffer_address(data) as (src, _):
                done, total, delay = 0, len(data), RETRY_DELAY
                while done < total:
                    dst = start + done
                    if dst in self._removed:
                        # Removed while it was read: zeros, not the snapshot.
                        self._zero(dst)
                        done += PAGE_SIZE
                        continue
                    run = total - done
                    if self._removed:
                        run = PAGE_SIZE
                        while done + run < total and dst + run not in self._removed:
                            run += PAGE_SIZE
                    try:
                        self._uffd.copy(dst, src + done, run)
                        self.counters.bytes_installed += run
                        done += run
                    except UffdRetry as exc:
                        if exc.bytes_done > 0:
                            self.counters.bytes_installed += exc.bytes_done
                            done += exc.bytes_done
                            continue
                        self.counters.retries += 1
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, _MAX_RETRY_DELAY)
                    except UffdExists:
                        self.counters.duplicates += 1
                        self._wake(dst)
                        done += PAGE_SIZE
                    except UffdError as exc:
                        self._end(f"userfaultfd refused: {exc}")
                        return
            self.counters.chunks += 1
        finally:
            self._in_flight.pop(start, None)

    async def _retrying(self, op: Callable[[], None], address: int) -> None:
        delay = RETRY_DELAY
        while not self.finished.is_set():
            try:
                op()
                return
            except UffdRetry:
                self.counters.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
            except UffdExists:
                self._wake(address)
                return
            except UffdError as exc:
                self._end(f"userfaultfd refused: {exc}")
                return

    def _wake(self, address: int) -> None:
        try:
            self._uffd.wake(address, PAGE_SIZE)
        except UffdError as exc:
            self._end(f"userfaultfd refused: {exc}")
