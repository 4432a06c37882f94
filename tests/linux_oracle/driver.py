"""The real side: operations run by the kernel in a child process.

:class:`LinuxGuest` forks a child (the *guest*) that serves requests over a
pair of pipes, one at a time: each operation is made with the libc call it
names (through :mod:`ctypes`, ``errno`` from :func:`ctypes.get_errno`), and
answered with its outcome and the guest's ``/proc/self/maps`` lines in the
window. Memory is never touched directly, so a fault is an errno, not a
crash: reads copy from the address into a scratch memory file with
``pwrite``, writes use ``process_vm_writev`` on the guest itself; both
report how far they got.

A :class:`~tests.linux_oracle.ops.Fork` forks the guest again. The
grandchild serves the fork's operations over pipes of its own, then exits,
or, if kept, waits until the end of the sequence, when its window is read
back. Outcomes are plain lists (what JSON carries); both sides build the
same shapes, see :mod:`tests.linux_oracle.model`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import struct
import traceback
from typing import Any

from tests.linux_oracle.differences import ELSEWHERE, MOVED, normalise_maps
from tests.linux_oracle.ops import (
    Dontneed,
    Fork,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    Op,
    Read,
    Write,
    encode,
    parse,
    pattern,
)
from tests.linux_oracle.window import (
    FILE_SIZE,
    MEMFD_NAME,
    WINDOW_BASE,
    WINDOW_PAGES,
    WINDOW_SIZE,
    P,
    file_contents,
)

__all__ = ["GuestError", "LinuxGuest", "errno_name"]

Step = list[Any]

_U64 = (1 << 64) - 1
_MAP_FAILED = _U64

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE = 0x01, 0x02
MAP_FIXED, MAP_ANONYMOUS = 0x10, 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MADV_DONTNEED = 4


class GuestError(RuntimeError):
    """The guest failed (not a syscall: the driver itself) or died."""


def errno_name(err: int) -> str:
    """Return ``"EINVAL"`` for ``errno.EINVAL`` (or ``"E<n>"``)."""
    return errno.errorcode.get(err, f"E{err}")


def prot_bits(prot: str) -> int:
    """Return the ``PROT_*`` bits of ``"r-x"``."""
    return (
        (PROT_READ if prot[0] == "r" else 0)
        | (PROT_WRITE if prot[1] == "w" else 0)
        | (PROT_EXEC if prot[2] == "x" else 0)
    )


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Libc:
    """The libc calls the guest makes, typed for :mod:`ctypes`."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        vp, sz, i, lng = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_long
        self.mmap = libc.mmap
        self.mmap.restype = vp
        self.mmap.argtypes = (vp, sz, i, i, i, lng)
        self.munmap = libc.munmap
        self.munmap.restype = i
        self.munmap.argtypes = (vp, sz)
        self.mprotect = libc.mprotect
        self.mprotect.restype = i
        self.mprotect.argtypes = (vp, sz, i)
        self.mremap = libc.mremap
        self.mremap.restype = vp
        self.mremap.argtypes = (vp, sz, sz, i, vp)
        self.madvise = libc.madvise
        self.madvise.restype = i
        self.madvise.argtypes = (vp, sz, i)
        self.pwrite = libc.pwrite
        self.pwrite.restype = ctypes.c_ssize_t
        self.pwrite.argtypes = (i, vp, sz, lng)
        self.process_vm_writev = libc.process_vm_writev
        self.process_vm_writev.restype = ctypes.c_ssize_t
        self.process_vm_writev.argtypes = (
            i,
            vp,
            ctypes.c_ulong,
            vp,
            ctypes.c_ulong,
            ctypes.c_ulong,
        )


def _abs(rel: int) -> int:
    return (WINDOW_BASE + rel) & _U64


def _signed(n: int) -> int:
    n &= _U64
    return n - (1 << 64) if n >= 1 << 63 else n


def _err() -> list[Any]:
    return ["err", errno_name(ctypes.get_errno())]


def _pages(n: int) -> int:
    return (n + P - 1) & ~(P - 1)


class _Executor:
    """Runs operations in the current process (the guest or a grandchild)."""

    def __init__(self, libc: _Libc, memfd: int, scratch: int) -> None:
        self.libc = libc
        self.memfd = memfd
        self.scratch = scratch

    def maps(self) -> list[str]:
        with open("/proc/self/maps") as f:
            return normalise_maps(f.read())

    def mmap(self, op: Mmap) -> list[Any]:
        c = self.libc
        flags = MAP_PRIVATE if op.kind in ("ap", "fp") else MAP_SHARED
        fd = -1
        if op.kind in ("ap", "as"):
            flags |= MAP_ANONYMOUS
        else:
            fd = self.memfd
        addr = 0
        if op.place == "fixed":
            flags |= MAP_FIXED
        elif op.place == "noreplace":
            flags |= MAP_FIXED_NOREPLACE
        if op.place != "none":
            addr = _abs(op.addr)
        res = c.mmap(
            addr, op.length & _U64, prot_bits(op.prot), flags, fd, _signed(op.offset)
        )
        if res is None:
            res = 0
        if res == _MAP_FAILED:
            return _err()
        if op.place in ("fixed", "noreplace"):
            return ["ok", res - WINDOW_BASE]
        if op.place == "hint" and res == _abs(op.addr & ~(P - 1)):
            return ["ok", res - WINDOW_BASE]
        c.munmap(res, _pages(op.length))
        return ["ok", ELSEWHERE]

    def mremap(self, op: Mremap) -> list[Any]:
        c = self.libc
        flags = {"no": 0, "may": MREMAP_MAYMOVE, "must": MREMAP_MAYMOVE | MREMAP_FIXED}
        new_addr = _abs(op.new_addr) if op.move == "must" else 0
        old = _abs(op.addr)
        res = c.mremap(
            old, op.old_size & _U64, op.new_size & _U64, flags[op.move], new_addr
        )
        if res is None:
            res = 0
        if res == _MAP_FAILED:
            return _err()
        if res == old or op.move == "must":
            return ["ok", res - WINDOW_BASE]
        c.munmap(res, _pages(op.new_size))
        return ["ok", MOVED]

    def simple(self, rc: int) -> list[Any]:
        return ["ok"] if rc == 0 else _err()

    def read(self, addr: int, length: int) -> list[Any]:
        """Copy ``length`` bytes from ``window + addr`` as a syscall would."""
        rc = self.libc.pwrite(self.scratch, _abs(addr), length, 0)
        if rc < 0:
            e = ctypes.get_errno()
            return ["fault", errno_name(e), 0, ""]
        data = os.pread(self.scratch, rc, 0)
        if rc < length:
            return ["fault", "EFAULT", rc, data.hex()]
        return ["ok", data.hex()]

    def write(self, op: Write) -> list[Any]:
        data = pattern(op.fill, op.length)
        buf = ctypes.create_string_buffer(data, len(data))
        local = _IoVec(ctypes.addressof(buf), len(data))
        remote = _IoVec(_abs(op.addr), len(data))
        rc = self.libc.process_vm_writev(
            os.getpid(), ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0
        )
        if rc < 0:
            return ["fault", errno_name(ctypes.get_errno()), 0]
        if rc < op.length:
            return ["fault", "EFAULT", rc]
        return ["ok", rc]

    def do(self, op: Op) -> list[Any]:
        c = self.libc
        match op:
            case Mmap():
                return self.mmap(op)
            case Munmap(addr, length):
                return self.simple(c.munmap(_abs(addr), length & _U64))
            case Mprotect(addr, length, prot):
                return self.simple(
                    c.mprotect(_abs(addr), length & _U64, prot_bits(prot))
                )
            case Mremap():
                return self.mremap(op)
            case Dontneed(addr, length):
                return self.simple(c.madvise(_abs(addr), length & _U64, MADV_DONTNEED))
            case Read(addr, length):
                return self.read(addr, length)
            case Write():
                return self.write(op)
            case Fork():
                raise GuestError("fork is handled by the server")

    def sweep(self) -> list[list[Any]]:
        return [self.read(i * P, P) for i in range(WINDOW_PAGES)]


def _send(fd: int, obj: object) -> None:
    data = json.dumps(obj).encode()
    msg = struct.pack("<I", len(data)) + data
    view = memoryview(msg)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise GuestError("the guest closed its pipe (it died)")
        out += chunk
    return bytes(out)


def _recv(fd: int) -> Any:
    (n,) = struct.unpack("<I", _recv_exact(fd, 4))
    return json.loads(_recv_exact(fd, n))


def _request(wfd: int, rfd: int, msg: object) -> Any:
    _send(wfd, msg)
    reply = _recv(rfd)
    if isinstance(reply, list) and reply[:1] == ["crash"]:
        raise GuestError(f"the guest failed:\n{reply[1]}")
    return reply


class _Child:
    """A kept grandchild: its pid and the guest's ends of its pipes."""

    def __init__(self, pid: int, wfd: int, rfd: int) -> None:
        self.pid, self.wfd, self.rfd = pid, wfd, rfd

    def request(self, msg: object) -> Any:
        return _request(self.wfd, self.rfd, msg)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            _send(self.wfd, ["exit"])
        os.close(self.wfd)
        os.close(self.rfd)
        os.waitpid(self.pid, 0)


class _Server:
    """The request loop of the guest (and, without forks, of a grandchild)."""

    def __init__(self, rfd: int, wfd: int, ex: _Executor) -> None:
        self.rfd, self.wfd, self.ex = rfd, wfd, ex
        self.kept: list[_Child] = []

    def serve(self) -> None:
        while True:
            try:
                msg = _recv(self.rfd)
            except GuestError:
                return
            if msg[0] == "exit":
                self.release()
                return
            try:
                reply = self.handle(msg)
            except Exception:
                reply = ["crash", traceback.format_exc()]
            _send(self.wfd, reply)

    def handle(self, msg: list[Any]) -> Any:
        ex = self.ex
        match msg[0]:
            case "op":
                (op,) = parse(msg[1])
                if isinstance(op, Fork):
                    return [self.fork(op), ex.maps()]
                return [ex.do(op), ex.maps()]
            case "sweep":
                return ex.sweep()
            case "final":
                file = os.pread(ex.memfd, FILE_SIZE + P, 0)
                children = [child.request(["sweep"]) for child in self.kept]
                self.release()
                return ["final", ex.sweep(), file.hex(), children]
            case "reset":
                self.release()
                _place_window(ex.libc)
                os.ftruncate(ex.memfd, 0)
                os.ftruncate(ex.memfd, FILE_SIZE)
                os.pwrite(ex.memfd, file_contents(), 0)
                return ["ok"]
            case _:
                raise GuestError(f"unknown request {msg!r}")

    def release(self) -> None:
        while self.kept:
            self.kept.pop().release()

    def fork(self, op: Fork) -> list[Any]:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(down_w)
                os.close(up_r)
                for fd in (self.rfd, self.wfd):
                    os.close(fd)
                for child in self.kept:
                    os.close(child.wfd)
                    os.close(child.rfd)
                _Server(down_r, up_w, self.ex).serve()
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        child = _Child(pid, down_w, up_r)
        steps = [child.request(["op", encode([o])]) for o in op.ops]
        if op.keep:
            self.kept.append(child)
        else:
            child.release()
        return ["fork", steps]


def _place_window(libc: _Libc) -> None:
    """Empty the window and (re)place its guards."""
    libc.munmap(WINDOW_BASE - P, WINDOW_SIZE + 2 * P)
    guard_flags = MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
    for guard in (WINDOW_BASE - P, WINDOW_BASE + WINDOW_SIZE):
        if libc.mmap(guard, P, 0, guard_flags, -1, 0) != guard:
            raise GuestError(f"cannot place the guard at {guard:#x}")


def _guest_main(rfd: int, wfd: int) -> None:
    libc = _Libc()
    with open("/proc/self/maps") as f:
        for raw in f:
            start_s, end_s = raw.split()[0].split("-")
            start, end = int(start_s, 16), int(end_s, 16)
            if start < WINDOW_BASE + WINDOW_SIZE + P and end > WINDOW_BASE - P:
                raise GuestError(f"the window is not free: {raw.strip()}")
    _place_window(libc)
    memfd = os.memfd_create(MEMFD_NAME, 0)
    scratch = os.memfd_create("aiomemmap-oracle-scratch", 0)
    ex = _Executor(libc, memfd, scratch)
    _Server(rfd, wfd, ex).serve()


class LinuxGuest:
    """A child process in which sequences run against the real kernel.

    Use as a context manager; one guest runs any number of sequences, each
    starting from an empty window and a fresh file.

    Raises:
        GuestError: The guest could not start (the window is taken), failed,
            or died.

    Concurrency:
        Task-compatible: one request at a time.
    """

    def __init__(self) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(down_w)
                os.close(up_r)
                _guest_main(down_r, up_w)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self._pid = pid
        self._wfd, self._rfd = down_w, up_r
        self._closed = False

    def __enter__(self) -> LinuxGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Empty the window, end kept children, and restore the file."""
        _request(self._wfd, self._rfd, ["reset"])

    def step(self, op: Op) -> Step:
        """Run one operation; return ``[outcome, maps]``."""
        reply: Step = _request(self._wfd, self._rfd, ["op", encode([op])])
        return reply

    def final(self) -> list[Any]:
        """Return the closing read-back: window, file, kept children's windows."""
        reply: list[Any] = _request(self._wfd, self._rfd, ["final"])
        return reply

    def run(self, ops: tuple[Op, ...] | list[Op]) -> list[Any]:
        """Run a sequence from a fresh start; return its trace."""
        self.reset()
        trace: list[Any] = [self.step(op) for op in ops]
        trace.append(self.final())
        return trace

    def close(self) -> None:
        """End the guest (and any child it kept)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            _send(self._wfd, ["exit"])
        os.close(self._wfd)
        os.close(self._rfd)
        os.waitpid(self._pid, 0)
