"""Userfaultfd: the host calls that let one process serve another's page faults.

A userfaultfd ("uffd") is a descriptor through which the kernel reports page
faults on registered address ranges of the process that created it, and
through which whoever holds the descriptor (the process itself, or another
one it was passed to) resolves them: by copying a page in (``UFFDIO_COPY``),
mapping a zero page (``UFFDIO_ZEROPAGE``), marking the page poisoned so that
an access gets ``SIGBUS`` (``UFFDIO_POISON``) or waking the faulting threads
(``UFFDIO_WAKE``). The ioctls act on the address space of the process that
created the descriptor, whichever process calls them.

This module wraps those calls with ``ctypes`` (which releases the GIL while
the kernel works) and decodes the fault and event messages read from the
descriptor. Only the standard library is used.

Errors of the resolving ioctls are raised as the subclasses of
:class:`UffdError` that callers must tell apart:

* :class:`UffdRetry` (``EAGAIN``): a non-cooperative event (remove, unmap,
  remap, fork) is in flight in the faulting process, or the copy stopped
  part way; retry after reading the descriptor again, on a short timer;
* :class:`UffdExists` (``EEXIST``): a page of the range is already there (a
  duplicate fault, or another resolver won); wake the range;
* :class:`UffdRangeGone` (``ENOENT``): the range is no longer registered
  (the process unmapped it); forget it;
* :class:`UffdProcessGone` (``ESRCH``): the process that created the
  descriptor has exited.

Each is also the builtin ``OSError`` subclass of its errno
(``BlockingIOError``, ``FileExistsError``, ``FileNotFoundError``,
``ProcessLookupError``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, final

from aiomemmap._core.errors import AiomemmapError
from aiomemmap._core.pages import PAGE_SIZE

__all__ = [
    "EVENT_FORK",
    "EVENT_PAGEFAULT",
    "EVENT_REMAP",
    "EVENT_REMOVE",
    "EVENT_UNMAP",
    "FEATURE_EVENT_FORK",
    "FEATURE_EVENT_REMAP",
    "FEATURE_EVENT_REMOVE",
    "FEATURE_EVENT_UNMAP",
    "FEATURE_MINOR_SHMEM",
    "FEATURE_MISSING_SHMEM",
    "FEATURE_MOVE",
    "FEATURE_POISON",
    "FEATURE_THREAD_ID",
    "IOCTL_CONTINUE",
    "IOCTL_COPY",
    "IOCTL_POISON",
    "IOCTL_WAKE",
    "IOCTL_ZEROPAGE",
    "MSG_SIZE",
    "PAGEFAULT_FLAG_MINOR",
    "PAGEFAULT_FLAG_WP",
    "PAGEFAULT_FLAG_WRITE",
    "REGISTER_MODE_MINOR",
    "REGISTER_MODE_MISSING",
    "REGISTER_MODE_WP",
    "ForkEvent",
    "PageFault",
    "RemapEvent",
    "RemoveEvent",
    "UffdError",
    "UffdEvent",
    "UffdExists",
    "UffdProcessGone",
    "UffdRangeGone",
    "UffdRetry",
    "UnmapEvent",
    "Userfaultfd",
    "buffer_address",
    "decode_events",
    "is_userfaultfd",
]

# ----------------------------------------------------------------------
# ABI constants (<linux/userfaultfd.h>; the newer ones defined here since
# system headers may predate them).

_UFFD_API: Final = 0xAA
_UFFDIO: Final = 0xAA


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (_UFFDIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_UFFDIO << 8) | nr


_UFFDIO_API: Final = _iowr(0x3F, 24)
_UFFDIO_REGISTER: Final = _iowr(0x00, 32)
_UFFDIO_UNREGISTER: Final = _ior(0x01, 16)
_UFFDIO_WAKE: Final = _ior(0x02, 16)
_UFFDIO_COPY: Final = _iowr(0x03, 40)
_UFFDIO_ZEROPAGE: Final = _iowr(0x04, 32)
_UFFDIO_CONTINUE: Final = _iowr(0x07, 32)
_UFFDIO_POISON: Final = _iowr(0x08, 32)
_USERFAULTFD_IOC_NEW: Final = _UFFDIO << 8  # _IO(0xAA, 0x00)

_UFFD_USER_MODE_ONLY: Final = 1
_SYS_USERFAULTFD: Final = {"x86_64": 323, "aarch64": 282, "i686": 374, "ppc64le": 364}

FEATURE_PAGEFAULT_FLAG_WP: Final = 1 << 0
FEATURE_EVENT_FORK: Final = 1 << 1
FEATURE_EVENT_REMAP: Final = 1 << 2
FEATURE_EVENT_REMOVE: Final = 1 << 3
FEATURE_MISSING_SHMEM: Final = 1 << 5
FEATURE_EVENT_UNMAP: Final = 1 << 6
FEATURE_THREAD_ID: Final = 1 << 8
FEATURE_MINOR_SHMEM: Final = 1 << 10
FEATURE_POISON: Final = 1 << 14
FEATURE_MOVE: Final = 1 << 16

REGISTER_MODE_MISSING: Final = 1
REGISTER_MODE_WP: Final = 2
REGISTER_MODE_MINOR: Final = 4

# Bits of the ``ioctls`` mask that UFFDIO_REGISTER returns: which resolving
# ioctls the registered range supports.
IOCTL_WAKE: Final = 1 << 0x02
IOCTL_COPY: Final = 1 << 0x03
IOCTL_ZEROPAGE: Final = 1 << 0x04
IOCTL_CONTINUE: Final = 1 << 0x07
IOCTL_POISON: Final = 1 << 0x08

_MODE_DONTWAKE: Final = 1

EVENT_PAGEFAULT: Final = 0x12
EVENT_FORK: Final = 0x13
EVENT_REMAP: Final = 0x14
EVENT_REMOVE: Final = 0x15
EVENT_UNMAP: Final = 0x16

PAGEFAULT_FLAG_WRITE: Final = 1 << 0
PAGEFAULT_FLAG_WP: Final = 1 << 1
PAGEFAULT_FLAG_MINOR: Final = 1 << 2

MSG_SIZE: Final = 32
"""Bytes of one ``struct uffd_msg``."""

_MSG_HEAD: Final = struct.Struct("=B3x4x")
_MSG_PAGEFAULT: Final = struct.Struct("=8xQQI4x")
_MSG_FORK: Final = struct.Struct("=8xI20x")
_MSG_THREE: Final = struct.Struct("=8xQQQ")
_U64_LIMIT: Final = 1 << 64


# ----------------------------------------------------------------------
# Errors


class UffdError(AiomemmapError, OSError):
    """A userfaultfd ioctl failed.

    Attributes:
        bytes_done: For a copy or poison that stopped part way, the bytes of
            the range it applied first (from its start); ``0`` otherwise.
    """

    bytes_done: int = 0


class UffdRetry(UffdError, BlockingIOError):
    """``EAGAIN``: an event is in flight, or the copy stopped part way; retry."""


class UffdExists(UffdError, FileExistsError):
    """``EEXIST``: the first page of the range is already present; wake it."""


class UffdRangeGone(UffdError, FileNotFoundError):
    """``ENOENT``: the range is not registered any more (it was unmapped)."""


class UffdProcessGone(UffdError, ProcessLookupError):
    """``ESRCH``: the process that created the descriptor has exited."""


_ERROR_OF: Final[dict[int, type[UffdError]]] = {
    errno.EAGAIN: UffdRetry,
    errno.EEXIST: UffdExists,
    errno.ENOENT: UffdRangeGone,
    errno.ESRCH: UffdProcessGone,
}


def _error(err: int, op: str, start: int, length: int, done: int = 0) -> UffdError:
    cls = _ERROR_OF.get(err, UffdError)
    exc = cls(err, f"{op} of [{start:#x}, {start + length:#x}): {os.strerror(err)}")
    exc.bytes_done = done
    return exc


# ----------------------------------------------------------------------
# ctypes structures and calls


class _Range(ctypes.Structure):
    _fields_ = (("start", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Api(ctypes.Structure):
    _fields_ = (
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    )


class _Register(ctypes.Structure):
    _fields_ = (
        ("range", _Range),
        ("mode", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    )


class _Copy(ctypes.Structure):
    _fields_ = (
        ("dst", ctypes.c_uint64),
        ("src", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("copy", ctypes.c_int64),
    )


class _RangeOp(ctypes.Structure):
    """``uffdio_zeropage``, ``uffdio_continue`` and ``uffdio_poison`` alike."""

    _fields_ = (
        ("range", _Range),
        ("mode", ctypes.c_uint64),
        ("result", ctypes.c_int64),
    )


class _PyBuffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_libc: Final = ctypes.CDLL(None, use_errno=True)
_ioctl: Final = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_syscall: Final = _libc.syscall
_syscall.restype = ctypes.c_long

_get_buffer: Final = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.restype = ctypes.c_int
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer: Final = ctypes.pythonapi.PyBuffer_Release
_release_buffer.restype = None
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_PYBUF_SIMPLE: Final = 0
_PYBUF_WRITABLE: Final = 1


@contextmanager
def buffer_address(obj: object, *, writable: bool = False) -> Iterator[tuple[int, int]]:
    """Yield ``(address, length)`` of a contiguous buffer, kept exported meanwhile.

    Works for read-only buffers too (``bytes``, an ``mmap`` opened with
    ``ACCESS_READ``), which ``ctypes.from_buffer`` refuses. While the block
    runs, the object's buffer is exported, so it cannot be resized or closed.

    Args:
        obj: Any object with the buffer protocol, C-contiguous.
        writable: Require a writable buffer.

    Raises:
        TypeError: ``obj`` has no buffer (or no writable one when asked).
        BufferError: The buffer is not contiguous.
    """
    view = _PyBuffer()
    # PyObject_GetBuffer raises through ctypes.pythonapi on failure.
    _get_buffer(obj, ctypes.byref(view), _PYBUF_WRITABLE if writable else _PYBUF_SIMPLE)
    try:
        yield (view.buf or 0, view.len)
    finally:
        _release_buffer(ctypes.byref(view))


def is_userfaultfd(fd: int) -> bool:
    """Return whether ``fd`` is a userfaultfd descriptor of this process.

    Reads the descriptor's link in ``/proc/self/fd``; any failure counts as
    no.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[userfaultfd]"
    except (OSError, ValueError):
        return False


def _check_span(op: str, start: int, length: int) -> None:
    if type(start) is not int or type(length) is not int:
        raise TypeError(
            f"{op}: start and length must be ints, got {start!r}, {length!r}"
        )
    if start < 0 or length <= 0 or start + length > _U64_LIMIT:
        raise ValueError(f"{op}: bad range start={start:#x} length={length}")
    if start % PAGE_SIZE or length % PAGE_SIZE:
        raise ValueError(
            f"{op}: start={start:#x} and length={length} must be multiples of "
            f"the page size {PAGE_SIZE}"
        )


# ----------------------------------------------------------------------
# Events


@final
@dataclass(frozen=True, slots=True)
class PageFault:
    """A thread of the process faulted at ``address``.

    Attributes:
        address: The faulting address, rounded down to its page (unless the
            descriptor asked for exact addresses).
        flags: ``PAGEFAULT_FLAG_*`` bits: write, write-protect, minor.
        thread_id: The faulting thread's id if the descriptor has
            ``FEATURE_THREAD_ID``, else 0.
    """

    address: int
    flags: int
    thread_id: int

    @property
    def write(self) -> bool:
        """Whether the access was a write."""
        return bool(self.flags & PAGEFAULT_FLAG_WRITE)

    @property
    def minor(self) -> bool:
        """Whether the page is in the page cache but not mapped (MINOR mode)."""
        return bool(self.flags & PAGEFAULT_FLAG_MINOR)


@final
@dataclass(frozen=True, slots=True)
class RemoveEvent:
    """``madvise(DONTNEED/REMOVE)`` dropped ``[start, end)`` in the process."""

    start: int
    end: int


@final
@dataclass(frozen=True, slots=True)
class UnmapEvent:
    """The process unmapped ``[start, end)``."""

    start: int
    end: int


@final
@dataclass(frozen=True, slots=True)
class RemapEvent:
    """The process moved ``length`` bytes from ``old`` to ``new`` (``mremap``)."""

    old: int
    new: int
    length: int


@final
@dataclass(frozen=True, slots=True)
class ForkEvent:
    """The process forked; ``fd`` is a new userfaultfd for the child.

    The descriptor belongs to whoever read the event: close it if unused.
    """

    fd: int


UffdEvent = PageFault | RemoveEvent | UnmapEvent | RemapEvent | ForkEvent
"""One message read from a userfaultfd."""


def decode_events(data: bytes | bytearray | memoryview) -> list[UffdEvent]:
    """Decode the ``uffd_msg`` records of one read.

    Args:
        data: Whole records (a multiple of :data:`MSG_SIZE` bytes).

    Returns:
        The events, in the order read. Unknown event codes are skipped.

    Raises:
        ValueError: ``data`` is not a whole number of records.
    """
    if len(data) % MSG_SIZE:
        raise ValueError(f"decode_events: {len(data)} bytes is not whole messages")
    out: list[UffdEvent] = []
    for at in range(0, len(data), MSG_SIZE):
        (code,) = _MSG_HEAD.unpack_from(data, at)
        if code == EVENT_PAGEFAULT:
            flags, address, ptid = _MSG_PAGEFAULT.unpack_from(data, at)
            out.append(PageFault(address, flags, ptid))
        elif code == EVENT_REMOVE:
            start, end, _ = _MSG_THREE.unpack_from(data, at)
            out.append(RemoveEvent(start, end))
        elif code == EVENT_UNMAP:
            start, end, _ = _MSG_THREE.unpack_from(data, at)
            out.append(UnmapEvent(start, end))
        elif code == EVENT_REMAP:
            old, new, length = _MSG_THREE.unpack_from(data, at)
            out.append(RemapEvent(old, new, length))
        elif code == EVENT_FORK:
            (fd,) = _MSG_FORK.unpack_from(data, at)
            out.append(ForkEvent(fd))
    return out


# ----------------------------------------------------------------------
# The descriptor


@final
class Userfaultfd:
    """One userfaultfd descriptor, owned by this object.

    Create one with :meth:`create` (in the process whose faults it reports)
    or adopt a descriptor received from that process with :meth:`adopt`.

    Concurrency:
        The ioctls may be called from any thread; :meth:`read_events` from
        one reader at a time. The descriptor is closed by :meth:`close` or
        the context manager.
    """

    __slots__ = ("_fd", "_user_mode_only", "available_features", "features")

    def __init__(
        self,
        fd: int,
        features: int,
        available_features: int,
        *,
        user_mode_only: bool = False,
    ) -> None:
        """Wrap ``fd``, a userfaultfd that already had its API handshake.

        Prefer :meth:`create` and :meth:`adopt`.
        """
        self._fd = fd
        self._user_mode_only = user_mode_only
        self.features = features
        """The features enabled on this descriptor."""
        self.available_features = available_features
        """The features the kernel offers (as its API handshake reported)."""

    def __repr__(self) -> str:
        mode = " user-mode-only" if self._user_mode_only else ""
        return f"<Userfaultfd fd={self._fd} features={self.features:#x}{mode}>"

    @property
    def user_mode_only(self) -> bool:
        """Whether only faults of user-mode accesses are reported.

        Then a system call touching a missing page of a registered range
        (``read`` into it, ``write`` or ``process_vm_readv`` from it) fails
        with ``EFAULT`` instead of waiting for the page. False for a
        descriptor that :meth:`adopt` took (its creator knows).
        """
        return self._user_mode_only

    @classmethod
    def create(
        cls,
        *,
        features: int = 0,
        optional_features: int = 0,
        nonblocking: bool = True,
        user_mode_only: bool | None = None,
    ) -> Userfaultfd:
        """Open a userfaultfd for this process and do the API handshake.

        ``/dev/userfaultfd`` is tried first, then the ``userfaultfd``
        system call. The descriptor is close-on-exec.

        A process without the privilege of full userfaultfd (no access to
        ``/dev/userfaultfd``, ``vm.unprivileged_userfaultfd`` off, no
        ``CAP_SYS_PTRACE``) may still get one that reports only user-mode
        faults: by default that is what it gets when the full one is
        refused, and :attr:`user_mode_only` tells which it got.

        Args:
            features: ``FEATURE_*`` bits that must be enabled.
            optional_features: ``FEATURE_*`` bits enabled if the kernel has
                them.
            nonblocking: Open with ``O_NONBLOCK`` (a flag shared by every
                copy of the descriptor, in every process).
            user_mode_only: ``True``: report faults of user-mode accesses
                only; kernel-mode accesses of missing pages then fail with
                ``EFAULT``. ``False``: report every fault, or fail.
                ``None`` (the default): every fault if the host allows it,
                else user-mode ones only.

        Postconditions:
            :attr:`user_mode_only` is true if and only if the descriptor
            reports user-mode faults only.

        Raises:
            PermissionError: The host refuses userfaultfd to this process
                (of the kind asked for; with ``None``, of both kinds).
            OSError: The host has no userfaultfd, or lacks a required
                feature (``EINVAL``).
        """
        base = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        user_only = bool(user_mode_only)
        try:
            fd = cls._open(base | (_UFFD_USER_MODE_ONLY if user_only else 0))
        except PermissionError:
            if user_mode_only is not None:
                raise
            user_only = True
            fd = cls._open(base | _UFFD_USER_MODE_ONLY)
        flags = base | (_UFFD_USER_MODE_ONLY if user_only else 0)
        try:
            available = cls._handshake(fd, 0, probe=True)
            if features & ~available:
                missing = features & ~available
                raise OSError(
                    errno.EINVAL, f"userfaultfd: the kernel lacks features {missing:#x}"
                )
            wanted = features | (optional_features & available)
            os.close(fd)
            fd = cls._open(flags)
            cls._handshake(fd, wanted, probe=False)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, wanted, available, user_mode_only=user_only)

    @classmethod
    def adopt(cls, fd: int, *, features: int = 0) -> Userfaultfd:
        """Own ``fd``, a userfaultfd received from another process.

        Args:
            fd: The descriptor; this object closes it.
            features: The features its creator says it enabled.

        Raises:
            ValueError: ``fd`` is not a userfaultfd (it is not closed then).
        """
        if not is_userfaultfd(fd):
            raise ValueError(f"descriptor {fd} is not a userfaultfd")
        return cls(fd, features, features)

    @staticmethod
    def _open(flags: int) -> int:
        try:
            dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            dev = -1
        if dev >= 0:
            try:
                fd = _ioctl(dev, _USERFAULTFD_IOC_NEW, flags)
                if fd >= 0:
                    return int(fd)
            finally:
                os.close(dev)
        nr = _SYS_USERFAULTFD.get(platform.machine())
        if nr is None:
            raise OSError(errno.ENOSYS, "userfaultfd: unknown system call number")
        fd = _syscall(ctypes.c_long(nr), ctypes.c_int(flags))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"userfaultfd(): {os.strerror(err)}")
        return int(fd)

    @staticmethod
    def _handshake(fd: int, features: int, *, probe: bool) -> int:
        api = _Api(_UFFD_API, features, 0)
        if _ioctl(fd, _UFFDIO_API, ctypes.addressof(api)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"UFFDIO_API features={features:#x}: {os.strerror(err)}")
        return int(api.features)

    # ------------------------------------------------------------------

    def fileno(self) -> int:
        """Return the descriptor.

        Raises:
            ValueError: It is closed.
        """
        if self._fd < 0:
            raise ValueError("the userfaultfd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor; later calls do nothing."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Userfaultfd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def dup(self) -> int:
        """Return a new close-on-exec descriptor for the same userfaultfd."""
        return os.dup(self.fileno())

    def set_blocking(self, blocking: bool) -> None:
        """Set or clear ``O_NONBLOCK`` (shared by every copy of the descriptor)."""
        os.set_blocking(self.fileno(), blocking)

    # ------------------------------------------------------------------
    # Registration (in the process that created the descriptor)

    def register(
        self, start: int, length: int, mode: int = REGISTER_MODE_MISSING
    ) -> int:
        """Report the faults of ``[start, start + length)`` of this process.

        Args:
            start: Page-aligned address.
            length: Page-aligned, non-zero length.
            mode: ``REGISTER_MODE_*`` bits.

        Returns:
            The ``IOCTL_*`` bits the range supports.

        Raises:
            TypeError, ValueError: Bad range.
            UffdError: The host refused (``EINVAL`` for a range not wholly
                mapped, ``EPERM`` for a mapping that may never be written,
                ``EBUSY`` for one registered with another descriptor).
        """
        _check_span("UFFDIO_REGISTER", start, length)
        arg = _Register(_Range(start, length), mode, 0)
        if _ioctl(self.fileno(), _UFFDIO_REGISTER, ctypes.addressof(arg)) < 0:
            raise _error(ctypes.get_errno(), "UFFDIO_REGISTER", start, length)
        return int(arg.ioctls)

    def unregister(self, start: int, length: int) -> None:
        """Stop reporting faults of ``[start, start + length)``.

        Raises:
            TypeError, ValueError: Bad range.
            UffdError: The host refused.
        """
        _check_span("UFFDIO_UNREGISTER", start, length)
        arg = _Range(start, length)
        if _ioctl(self.fileno(), _UFFDIO_UNREGISTER, ctypes.addressof(arg)) < 0:
            raise _error(ctypes.get_errno(), "UFFDIO_UNREGISTER", start, length)

    # ------------------------------------------------------------------
    # Resolving (from any process holding the descriptor)

    def copy(self, dst: int, src: int, length: int, *, wake: bool = True) -> None:
        """Copy ``length`` bytes at address ``src`` of *this* process to ``dst``.

        ``dst`` is in the address space of the descriptor's creator: the
        pages are installed atomically (a page is either absent or whole)
        and, unless ``wake`` is false, the threads waiting on them woken.

        Args:
            dst: Page-aligned destination in the registered range.
            src: Source address in the calling process (any alignment).
            length: Page-aligned, non-zero.
            wake: Wake the waiting threads (otherwise call :meth:`wake`).

        Raises:
            UffdRetry: ``bytes_done`` bytes were copied (maybe 0) before an
                event in flight, or an existing page, stopped the copy.
            UffdExists: The first page is already present.
            UffdRangeGone: ``dst`` is not registered (unmapped).
            UffdProcessGone: The process has exited.
            UffdError: Another refusal (``EFAULT`` for a bad ``src``).
        """
        _check_span("UFFDIO_COPY", dst, length)
        arg = _Copy(dst, src, length, 0 if wake else _MODE_DONTWAKE, 0)
        if _ioctl(self.fileno(), _UFFDIO_COPY, ctypes.addressof(arg)) < 0:
            done = arg.copy if arg.copy > 0 else 0
            raise _error(ctypes.get_errno(), "UFFDIO_COPY", dst, length, done)

    def copy_from(self, dst: int, data: object, *, wake: bool = True) -> None:
        """:meth:`copy` the whole of buffer ``data`` (a page multiple) to ``dst``.

        Raises:
            As :meth:`copy`; ``TypeError`` if ``data`` is no buffer.
        """
        with buffer_address(data) as (src, length):
            self.copy(dst, src, length, wake=wake)

    def zeropage(self, dst: int, length: int, *, wake: bool = True) -> None:
        """Map zero pages over ``[dst, dst + length)``.

        Raises:
            As :meth:`copy`.
        """
        self._range_op(_UFFDIO_ZEROPAGE, "UFFDIO_ZEROPAGE", dst, length, wake)

    def poison(self, dst: int, length: int, *, wake: bool = True) -> None:
        """Mark ``[dst, dst + length)`` poisoned: an access there gets ``SIGBUS``.

        Kernel-mode accesses (a system call copying from the range) fail
        with ``EFAULT`` instead. The marker stays until a :meth:`copy`
        replaces it or the process drops the page (``MADV_DONTNEED``).

        Raises:
            As :meth:`copy`; ``UffdError`` with ``EINVAL`` or ``ENOTTY`` where
            the kernel has no ``UFFDIO_POISON``.
        """
        self._range_op(_UFFDIO_POISON, "UFFDIO_POISON", dst, length, wake)

    def continue_(self, dst: int, length: int, *, wake: bool = True) -> None:
        """Map the page-cache pages of ``[dst, dst + length)`` (MINOR mode).

        Raises:
            As :meth:`copy`.
        """
        self._range_op(_UFFDIO_CONTINUE, "UFFDIO_CONTINUE", dst, length, wake)

    def _range_op(
        self, request: int, op: str, dst: int, length: int, wake: bool
    ) -> None:
        _check_span(op, dst, length)
        arg = _RangeOp(_Range(dst, length), 0 if wake else _MODE_DONTWAKE, 0)
        if _ioctl(self.fileno(), request, ctypes.addressof(arg)) < 0:
            done = arg.result if arg.result > 0 else 0
            raise _error(ctypes.get_errno(), op, dst, length, done)

    def wake(self, start: int, length: int) -> None:
        """Wake the threads waiting on faults in ``[start, start + length)``.

        Only for pages known to be present now (after an ``EEXIST``, or a
        copy made with ``wake=False``): a thread woken on a missing page
        faults again.

        Raises:
            As :meth:`copy`.
        """
        _check_span("UFFDIO_WAKE", start, length)
        arg = _Range(start, length)
        if _ioctl(self.fileno(), _UFFDIO_WAKE, ctypes.addressof(arg)) < 0:
            raise _error(ctypes.get_errno(), "UFFDIO_WAKE", start, length)

    # ------------------------------------------------------------------
    # Reading

    def read_events(self, max_events: int = 64) -> list[UffdEvent]:
        """Read the messages waiting on the descriptor, up to ``max_events``.

        On a non-blocking descriptor an empty list means nothing is waiting;
        a blocking one waits for at least one message.

        Pending page faults are returned before pending events, even when
        the event came first: apply a batch's events before serving its
        faults.

        Raises:
            OSError: The read failed (not ``EAGAIN``).
        """
        if max_events <= 0:
            raise ValueError(
                f"read_events: max_events must be positive, got {max_events}"
            )
        try:
            data = os.read(self.fileno(), MSG_SIZE * max_events)
        except BlockingIOError:
            return []
        return decode_events(data)
