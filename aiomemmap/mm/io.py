"""Faults and copies: reaching guest memory through an address space.

These are methods of :class:`~aiomemmap.AddressSpace` (gVisor's ``io.go``
and the fault handling of ``syscalls.go``), defined here and bound to the
class. Each first tries the resident fast path,
:meth:`~aiomemmap.mm.pma.PmaCache.resident`: a single pma that covers the
access and allows it is used at once, without locks. Otherwise the slow path
takes the mapping lock for reading and makes the pmas it needs.

A slow path that waits for a Mappable (a fetch from remote storage) holds the
mapping lock for reading all along, so it can hold up whoever needs it for
writing. Such a wait is *interruptible* (:func:`interrupt_faults`), as a
Linux page fault waiting for I/O is:

* for teardown (``closing``): :meth:`~aiomemmap.AddressSpace.aclose`
  interrupts every fault in flight before it waits for the lock, so it
  completes in bounded time even if a backing never answers. The faulting
  task gets a :class:`~aiomemmap.BusError` whose ``err`` is a
  :class:`~aiomemmap.ClosedError` (a guest would get ``SIGBUS``, as Linux
  kills a task whose address space is torn down under it);
* for a change of the mappings (``closing=False``): the fault lets go of
  the lock, waits for the writer to finish, and starts over from the vmas,
  as Linux retries a fault that dropped ``mmap_lock`` to wait for a page
  (``VM_FAULT_RETRY``). The fetch it waited for carries on meanwhile, so
  nothing is read twice.

What the Mappable started (a fetch) is never cancelled by an interruption:
only the waiting stops.
"""

from __future__ import annotations

import asyncio
import errno as _errno
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq
from aiomemmap._core.errors import BusError, ClosedError, MemoryFault, OutOfMemoryError
from aiomemmap._core.pages import HUGE_PAGE_SIZE, PAGE_MASK, PAGE_SIZE
from aiomemmap.mm.args import U64, check_addr
from aiomemmap.pgalloc.access_pins import Access

if TYPE_CHECKING:
    from aiomemmap.mm.address_space import AddressSpace

__all__ = [
    "copy_in",
    "copy_out",
    "faults_in_flight",
    "handle_fault",
    "interrupt_faults",
    "reached_and_error",
    "zero_out",
]

_READ = AccessType.READ
_WRITE = AccessType.WRITE
_ZEROS = bytes(HUGE_PAGE_SIZE)

_CLOSING: Final = "closing"
_RETRY: Final = "retry"


@final
class InFlight:
    """One slow-path fault or copy waiting under the mapping lock.

    A context manager around the wait. :meth:`interrupt` cancels the wait
    (through an ``asyncio.timeout`` scope, which tells its own cancellation
    from one of the task's); on leaving, an interrupted wait raises
    :class:`_Interrupted` instead of ``TimeoutError``.
    """

    __slots__ = ("_registry", "_timeout", "reason")

    def __init__(self, registry: set[InFlight]) -> None:
        self._registry = registry
        self._timeout = asyncio.timeout(None)
        self.reason: str | None = None

    async def __aenter__(self) -> InFlight:
        await self._timeout.__aenter__()
        self._registry.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._registry.discard(self)
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self.reason is None:
                raise
            raise _Interrupted(self.reason) from None
        return False

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._timeout.reschedule(asyncio.get_running_loop().time())


class _Interrupted(Exception):
    """A fault's wait was interrupted; ``args[0]`` says why."""


def _in_flight(space: AddressSpace) -> InFlight:
    return InFlight(space._faults_in_flight)


def faults_in_flight(space: AddressSpace) -> int:
    """Return how many slow-path faults and copies of ``space`` are waiting."""
    return len(space._faults_in_flight)


def interrupt_faults(space: AddressSpace, *, closing: bool) -> int:
    """Interrupt the waits of ``space``'s faults and copies in flight.

    See the module docstring: with ``closing`` they fail with a
    ``BusError`` wrapping ``ClosedError``; without, they let go of the
    mapping lock and start over once the writer is done.

    Returns:
        How many were interrupted.

    Locking:
        Takes no lock and does not await: call it just before waiting for
        the mapping lock for writing (readers that arrive later queue
        behind that writer).
    """
    registry = space._faults_in_flight
    if not registry:
        return 0
    reason = _CLOSING if closing else _RETRY
    for fault in list(registry):
        fault.interrupt(reason)
    return len(registry)


def _closed_under(what: str) -> BusError:
    return BusError(
        ClosedError(
            f"{what}: the address space was closed while the access waited "
            "for its Mappable"
        )
    )


def reached_and_error(
    reached: int, err: BaseException | None
) -> tuple[int, BaseException | None]:
    """Return its arguments: the ``use`` of a ``PmaCache.get`` that only makes pmas."""
    return reached, err


async def handle_fault(self: AddressSpace, addr: int, at: AccessType) -> None:  # noqa: D417
    """Make the page at ``addr`` accessible for ``at``, as a page fault does.

    Resident pages with the right permissions return at once. Otherwise
    the page is allocated (anonymous memory, in a 2 MiB-aligned window),
    translated by the Mappable (which may fetch more, up to the whole
    unmapped part of the vma), or copied (a write to a copy-on-write
    page).

    Args:
        addr: Any address in the page.
        at: The access that faulted.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``addr`` is outside ``[0, 2**64)``.
        MemoryFault: ``EFAULT`` (nothing mapped at ``addr``) or ``EPERM``
            (the mapping does not allow ``at``): a guest's ``SIGSEGV``.
        BusError: The Mappable could not provide the page: ``SIGBUS``.
        OutOfMemoryError: The memory file is full.
        ClosedError: The space is closed.

    Locking:
        Resident pages: none. Otherwise the mapping lock (reading) and the
        active lock (writing). A wait for the Mappable under the mapping
        lock is interrupted by a writer that needs the lock (the fault then
        starts over once the writer is done) or by :meth:`aclose` (see the
        module docstring).

    Cancellation:
        Safe at every await; pmas made before it stay valid. If the space is
        closed while the fault waits for its Mappable, the wait stops and
        the fault raises ``BusError`` wrapping ``ClosedError``.
    """
    if type(at) is not AccessType:
        raise TypeError(f"handle_fault: at must be an AccessType, got {at!r}")
    if type(addr) is not int:
        addr = check_addr("handle_fault", "addr", addr)
    elif not 0 <= addr < U64:
        raise ValueError(f"handle_fault: addr must be in [0, 2**64), got {addr:#x}")
    if self._pmas.resident(addr, addr + 1, at, False) is not None:
        self._faults += 1
        return
    await _fault_slow(self, addr, at)


async def _fault_slow(self: AddressSpace, addr: int, at: AccessType) -> None:
    start = addr & ~PAGE_MASK
    end = start + PAGE_SIZE
    while True:
        self._check_open("handle_fault")
        try:
            async with self._mapping_lock.read():
                self._check_open("handle_fault")
                vseg = self._vmas.segs.find(addr)
                if vseg is None:
                    raise MemoryFault(
                        _errno.EFAULT, f"handle_fault: nothing mapped at {addr:#x}"
                    )
                if not vseg.value.effective_perms.superset_of(at):
                    raise MemoryFault(
                        _errno.EPERM,
                        f"handle_fault: {at} access to {addr:#x} not allowed "
                        f"({vseg.value.effective_perms})",
                    )
                self._faults += 1
                with Access():
                    async with _in_flight(self):
                        _reached, err = await self._pmas.get(
                            self._vmas, start, end, at, reached_and_error
                        )
        except _Interrupted as exc:
            if exc.args[0] == _CLOSING:
                raise _closed_under("handle_fault") from None
            continue  # The mappings changed meanwhile: start over.
        break
    if err is not None:
        raise err


def _check_io(
    self: AddressSpace, what: str, addr: object, length: object
) -> tuple[int, int]:
    if type(addr) is not int:
        addr = check_addr(what, "addr", addr)
    if type(length) is not int:
        length = check_addr(what, "length", length)
    if addr < 0:
        raise ValueError(f"{what}: addr must be in [0, 2**64), got {addr:#x}")
    if length < 0:
        raise ValueError(f"{what}: length must not be negative, got {length}")
    end = addr + length
    if end > self._layout.max_addr:
        raise MemoryFault(
            _errno.EFAULT,
            f"{what}: [{addr:#x}, {end:#x}) is beyond the address space",
        )
    return addr, end


async def copy_in(  # noqa: D417
    self: AddressSpace, addr: int, length: int, *, ignore_permissions: bool = False
) -> bytes:
    """Read ``length`` bytes of guest memory at ``addr``.

    Pages are faulted in as needed (never breaking copy-on-write).

    Args:
        addr: The first address.
        length: How many bytes.
        ignore_permissions: Use the mappings' ``max_perms`` instead of
            their current permissions (like ``PTRACE_PEEKDATA``).

    Returns:
        The bytes.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``addr`` or ``length`` is negative.
        MemoryFault: ``EFAULT``: the range reaches past the layout's
            ``max_addr`` (nothing read), or a part of it is not mapped or
            not readable; ``.bytes_done`` bytes were read and are in
            ``.data``.
        BusError: A Mappable failed; ``.bytes_done``/``.data`` as above.
            Also when the space is closed while the copy waits for a
            Mappable: ``.err`` is then a ``ClosedError``.
        ClosedError: The space is closed.

    Locking:
        Resident pages: none. Otherwise the mapping lock (reading) and
        the active lock (writing); the wait for a Mappable is interrupted
        as :meth:`handle_fault`'s is.

    Cancellation:
        Safe at every await; nothing is copied unless the call returns.
    """
    if (
        type(addr) is int
        and type(length) is int
        and addr >= 0
        and length > 0
        and addr + length <= self._layout.max_addr
    ):
        end = addr + length  # checked inline: copy_in is the hottest path
    else:
        addr, end = _check_io(self, "copy_in", addr, length)
        if addr == end:
            return b""
    # The resident fast path, as in _resident_view but one call shorter:
    # copy_in is the hottest path.
    pmas = self._pmas
    seg = pmas.resident(addr, end, _READ, ignore_permissions)
    if seg is not None:
        view = seg.value.view
        if view is None:
            view = pmas.view(seg)
        if view is not None:
            off = addr - seg.start
            return bytes(view[off : off + (end - addr)])
    out = bytearray()

    def read(blocks: BlockSeq) -> None:
        for b in blocks:
            out.extend(b)

    try:
        await _io(self, addr, end, _READ, ignore_permissions, read, "copy_in")
    except (MemoryFault, BusError) as exc:
        exc.data = bytes(out)
        raise
    return bytes(out)


async def copy_out(  # noqa: D417
    self: AddressSpace,
    addr: int,
    data: bytes | bytearray | memoryview,
    *,
    ignore_permissions: bool = False,
) -> int:
    """Write ``data`` into guest memory at ``addr``; return ``len(data)``.

    Writing a copy-on-write page copies it first.

    Args:
        addr: The first address.
        data: The bytes to write (any C-contiguous buffer).
        ignore_permissions: Use the mappings' ``max_perms`` (like
            ``PTRACE_POKEDATA``); still cannot write a shared mapping
            whose ``max_perms`` lack write.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``addr`` is negative.
        MemoryFault: ``EFAULT`` as for :meth:`copy_in`; ``.bytes_done``
            bytes were written.
        BusError: A Mappable failed; ``.bytes_done`` as above.
        ClosedError: The space is closed.

    Locking:
        As :meth:`copy_in`.

    Cancellation:
        Safe at every await; a cancelled copy wrote nothing (it writes only
        once every page is in place, without awaiting).
    """
    try:
        src = memoryview(data).cast("B")
    except TypeError:
        raise TypeError(
            f"copy_out: data must be a bytes-like object, got {type(data).__name__}"
        ) from None
    addr, end = _check_io(self, "copy_out", addr, len(src))
    if addr == end:
        return 0
    view = _resident_view(self, addr, end, _WRITE, ignore_permissions)
    if view is not None:
        view[:] = src
        return end - addr
    pos = 0

    def write(blocks: BlockSeq) -> None:
        nonlocal pos
        for b in blocks:
            n = len(b)
            b[:] = src[pos : pos + n]
            pos += n

    await _io(self, addr, end, _WRITE, ignore_permissions, write, "copy_out")
    return end - addr


async def zero_out(
    self: AddressSpace, addr: int, length: int, *, ignore_permissions: bool = False
) -> int:
    """Write ``length`` zero bytes at ``addr``; return ``length``.

    Raises:
        As :meth:`copy_out`.
    """
    addr, end = _check_io(self, "zero_out", addr, length)
    if addr == end:
        return 0
    view = _resident_view(self, addr, end, _WRITE, ignore_permissions)
    if view is not None:
        _zero(view)
        return end - addr

    def zero(blocks: BlockSeq) -> None:
        for b in blocks:
            _zero(b)

    await _io(self, addr, end, _WRITE, ignore_permissions, zero, "zero_out")
    return end - addr


def _resident_view(
    self: AddressSpace, addr: int, end: int, at: AccessType, ignore_permissions: bool
) -> memoryview | None:
    """Return ``[addr, end)`` as a memoryview if the resident fast path allows ``at``.

    Returns ``None`` when :meth:`~aiomemmap.mm.pma.PmaCache.resident` finds
    no usable pma, or its pages are not in one block.
    """
    pmas = self._pmas
    seg = pmas.resident(addr, end, at, ignore_permissions)
    if seg is None:
        return None
    view = seg.value.view
    if view is None:
        view = pmas.view(seg)
        if view is None:
            return None
    off = addr - seg.start
    return view[off : off + (end - addr)]


def _zero(b: memoryview) -> None:
    n = len(b)
    pos = 0
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        b[pos : pos + k] = _ZEROS[:k]
        pos += k


async def _io(
    self: AddressSpace,
    addr: int,
    end: int,
    at: AccessType,
    ignore_permissions: bool,
    fn: Callable[[BlockSeq], None],
    what: str,
) -> None:
    """Fault in ``[addr, end)`` as far as possible and apply ``fn`` to it.

    ``fn`` gets the pages in order (possibly in several calls) for the
    longest usable prefix; then an error is raised for the rest, with
    ``bytes_done`` set.
    """
    done = 0
    error: BaseException | None = None
    while True:
        self._check_open(what)
        try:
            async with self._mapping_lock.read():
                self._check_open(what)
                done, error = await _io_locked(
                    self, addr, end, at, ignore_permissions, fn
                )
        except _Interrupted as exc:
            if exc.args[0] == _CLOSING:
                done, error = 0, _closed_under(what)
                break
            continue  # The mappings changed meanwhile: start over.
        break
    if done < end - addr:
        if not isinstance(error, BusError):
            error = MemoryFault(
                _errno.EFAULT, f"{what}: {addr + done:#x} is not accessible"
            )
        error.bytes_done = done
        raise error


async def _io_locked(
    self: AddressSpace,
    addr: int,
    end: int,
    at: AccessType,
    ignore_permissions: bool,
    fn: Callable[[BlockSeq], None],
) -> tuple[int, BaseException | None]:
    """The body of :func:`_io`, under the mapping lock: ``(done, error)``."""
    error: BaseException | None = None
    vend, verr = _covered_prefix(self, addr, end, at, ignore_permissions)
    if vend <= addr:
        return 0, verr
    p_start = addr & ~PAGE_MASK
    p_end = min((vend + PAGE_MASK) & ~PAGE_MASK, U64)
    self._faults += 1

    def use(reached: int, perr: BaseException | None) -> int:
        limit = min(reached, vend)
        done = _apply(self, addr, limit, fn, at, ignore_permissions)
        if limit < end:
            nonlocal error
            error = perr if perr is not None else verr
        return done

    try:
        # Pages translated for this access stay pinned in their caches
        # until ``use`` has copied them.
        with Access():
            async with _in_flight(self):
                done = await self._pmas.get(self._vmas, p_start, p_end, at, use)
    except OutOfMemoryError as exc:
        return 0, exc
    return done, error


def _covered_prefix(
    self: AddressSpace, start: int, end: int, at: AccessType, ignore_permissions: bool
) -> tuple[int, MemoryFault | None]:
    """Return how far vmas allowing ``at`` cover ``[start, end)``, and why."""
    addr = start
    vsegs = self._vmas.segs
    while addr < end:
        seg = vsegs.find(addr)
        if seg is None:
            return addr, MemoryFault(_errno.EFAULT)
        perms = seg.value.max_perms if ignore_permissions else seg.value.effective_perms
        if not perms.superset_of(at):
            return addr, MemoryFault(_errno.EPERM)
        addr = seg.end
    return end, None


def _apply(
    self: AddressSpace,
    addr: int,
    end: int,
    fn: Callable[[BlockSeq], None],
    at: AccessType,
    ignore_permissions: bool,
) -> int:
    """Apply ``fn`` to the pages of ``[addr, end)``; return the bytes done."""
    pmas = self._pmas
    segs = pmas.segs
    pos = addr
    while pos < end:
        seg = segs.find(pos)
        if seg is None:
            break
        pma = seg.value
        perms = pma.max_perms if ignore_permissions else pma.effective_perms
        if not perms.superset_of(at):
            break
        blocks = pmas.blocks(seg)
        stop = min(seg.end, end)
        fn(blocks.drop_first(pos - seg.start).take_first(stop - pos))
        pos = stop
    return pos - addr
