"""Userfaultfd wrappers against the real kernel, in this process and across processes.

Faults in this process are taken by a thread whose access releases the GIL
(``ctypes.memmove``, a kernel copy), so that the test's thread can serve them;
every wait is bounded.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from aiomemmap._core import uffd as U
from aiomemmap._core.fdpass import recv_message
from aiomemmap._core.pages import PAGE_SIZE

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/userfaultfd") and os.geteuid() != 0,
    reason="userfaultfd is not available to this process",
)

DEADLINE = 10.0
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
MADV_DONTNEED = 4


def wait_events(u: U.Userfaultfd, count: int = 1) -> list[U.UffdEvent]:
    """Read until ``count`` messages arrived (bounded)."""
    out: list[U.UffdEvent] = []
    while len(out) < count:
        ready, _, _ = select.select([u.fileno()], [], [], DEADLINE)
        assert ready, f"no userfaultfd message within {DEADLINE}s (got {out})"
        out.extend(u.read_events())
    return out


class Toucher:
    """A thread that copies ``n`` bytes from ``address`` with the GIL released."""

    def __init__(self, address: int, n: int) -> None:
        self.out = ctypes.create_string_buffer(n)
        self.address = address
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ctypes.memmove(self.out, self.address, len(self.out))

    def join(self) -> bytes:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the faulting access never returned"
        return self.out.raw


@pytest.fixture
def uffd() -> Iterator[U.Userfaultfd]:
    with U.Userfaultfd.create(optional_features=U.FEATURE_POISON) as u:
        yield u


@pytest.fixture
def anon() -> Iterator[tuple[mmap.mmap, int]]:
    m = mmap.mmap(-1, 16 * PAGE_SIZE)
    with U.buffer_address(m) as (address, _):
        pass
    yield m, address
    m.close()


def page(byte: int) -> bytes:
    return bytes([byte]) * PAGE_SIZE


def test_create_reports_the_kernel_features(uffd: U.Userfaultfd) -> None:
    assert U.is_userfaultfd(uffd.fileno())
    assert uffd.available_features & U.FEATURE_MISSING_SHMEM
    assert uffd.features & ~uffd.available_features == 0
    assert not os.get_blocking(uffd.fileno())
    assert uffd.read_events() == []


def test_a_required_feature_the_kernel_lacks_is_refused() -> None:
    with pytest.raises(OSError, match="lacks features") as info:
        U.Userfaultfd.create(features=1 << 62)
    assert info.value.errno == errno.EINVAL


def test_register_copy_and_duplicate(
    uffd: U.Userfaultfd, anon: tuple[mmap.mmap, int]
) -> None:
    m, address = anon
    ioctls = uffd.register(address, len(m))
    assert ioctls & U.IOCTL_COPY
    assert ioctls & U.IOCTL_WAKE
    toucher = Toucher(address + PAGE_SIZE, 2 * PAGE_SIZE)
    (fault,) = wait_events(uffd)
    assert isinstance(fault, U.PageFault)
    assert fault.address == address + PAGE_SIZE
    assert not fault.write
    uffd.copy_from(fault.address, page(0xA1))
    with pytest.raises(U.UffdExists) as info:
        uffd.copy_from(fault.address, page(0xA1))
    assert isinstance(info.value, FileExistsError)
    assert info.value.bytes_done == 0
    (second,) = wait_events(uffd)
    assert isinstance(second, U.PageFault)
    assert second.address == address + 2 * PAGE_SIZE
    uffd.copy_from(second.address, page(0xB2))
    assert toucher.join() == page(0xA1) + page(0xB2)
    uffd.unregister(address, len(m))


def test_a_copy_stopped_by_a_present_page_reports_the_part_done(
    uffd: U.Userfaultfd, anon: tuple[mmap.mmap, int]
) -> None:
    m, address = anon
    uffd.register(address, len(m))
    uffd.copy_from(address + 2 * PAGE_SIZE, page(7))
    with pytest.raises(U.UffdRetry) as info:
        uffd.copy_from(address, page(1) + page(2) + page(3))
    assert info.value.bytes_done == 2 * PAGE_SIZE
    assert isinstance(info.value, BlockingIOError)
    assert m[: 3 * PAGE_SIZE] == page(1) + page(2) + page(7)


def test_zeropage_wake_and_dontwake(
    uffd: U.Userfaultfd, anon: tuple[mmap.mmap, int]
) -> None:
    m, address = anon
    uffd.register(address, len(m))
    toucher = Toucher(address, PAGE_SIZE)
    wait_events(uffd)
    uffd.copy_from(address, page(9), wake=False)
    # Not woken yet: the thread still waits, until the wake.
    toucher.thread.join(0.05)
    assert toucher.thread.is_alive()
    uffd.wake(address, PAGE_SIZE)
    assert toucher.join() == page(9)
    uffd.zeropage(address + PAGE_SIZE, PAGE_SIZE)
    assert m[PAGE_SIZE : 2 * PAGE_SIZE] == bytes(PAGE_SIZE)


def test_poison_fails_kernel_copies_with_efault(
    uffd: U.Userfaultfd, anon: tuple[mmap.mmap, int]
) -> None:
    if not uffd.available_features & U.FEATURE_POISON:
        pytest.skip("the kernel has no UFFDIO_POISON")
    m, address = anon
    uffd.register(address, len(m))
    uffd.poison(address, PAGE_SIZE)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match="Bad address") as info:
            os.write(w, memoryview(m)[:PAGE_SIZE])
        assert info.value.errno == errno.EFAULT
        # A copy replaces the marker.
        uffd.copy_from(address, page(5))
        assert os.write(w, memoryview(m)[:16]) == 16
        assert os.read(r, 16) == bytes([5]) * 16
    finally:
        os.close(r)
        os.close(w)


def test_unmapped_range_is_enoent(uffd: U.Userfaultfd) -> None:
    m = mmap.mmap(-1, 4 * PAGE_SIZE)
    with U.buffer_address(m) as (address, _):
        pass
    uffd.register(address, 4 * PAGE_SIZE)
    m.close()
    with pytest.raises(U.UffdRangeGone) as info:
        uffd.copy_from(address, page(1))
    assert isinstance(info.value, FileNotFoundError)


def test_remove_event_is_read_with_the_faults(anon: tuple[mmap.mmap, int]) -> None:
    m, address = anon
    with U.Userfaultfd.create(features=U.FEATURE_EVENT_REMOVE) as u:
        u.register(address, len(m))
        u.copy_from(address, page(3))
        # madvise blocks until the event is read: run it on a thread (the
        # ctypes call releases the GIL).
        done = threading.Event()

        def drop() -> None:
            assert _libc.madvise(address, PAGE_SIZE, MADV_DONTNEED) == 0
            done.set()

        threading.Thread(target=drop, daemon=True).start()
        (event,) = wait_events(u)
        assert event == U.RemoveEvent(address, address + PAGE_SIZE)
        assert done.wait(DEADLINE)


def test_decode_events_of_every_kind() -> None:
    def msg(code: int, payload: bytes) -> bytes:
        return struct.pack("=B7x", code) + payload.ljust(24, b"\0")

    data = b"".join(
        [
            msg(
                U.EVENT_PAGEFAULT,
                struct.pack("=QQI", U.PAGEFAULT_FLAG_WRITE, 0x5000, 77),
            ),
            msg(U.EVENT_REMOVE, struct.pack("=QQ", 0x1000, 0x3000)),
            msg(U.EVENT_UNMAP, struct.pack("=QQ", 0x4000, 0x6000)),
            msg(U.EVENT_REMAP, struct.pack("=QQQ", 0x1000, 0x9000, 0x2000)),
            msg(U.EVENT_FORK, struct.pack("=I", 12)),
            msg(0x7F, b""),
        ]
    )
    events = U.decode_events(data)
    assert events == [
        U.PageFault(0x5000, U.PAGEFAULT_FLAG_WRITE, 77),
        U.RemoveEvent(0x1000, 0x3000),
        U.UnmapEvent(0x4000, 0x6000),
        U.RemapEvent(0x1000, 0x9000, 0x2000),
        U.ForkEvent(12),
    ]
    first = events[0]
    assert isinstance(first, U.PageFault)
    assert first.write
    assert not first.minor
    with pytest.raises(ValueError, match="whole messages"):
        U.decode_events(data[:-1])


def test_bad_ranges_are_refused_before_the_kernel(uffd: U.Userfaultfd) -> None:
    with pytest.raises(ValueError, match="multiples of the page size"):
        uffd.copy(PAGE_SIZE + 1, 0, PAGE_SIZE)
    with pytest.raises(ValueError, match="multiples of the page size"):
        uffd.wake(0, 100)
    with pytest.raises(ValueError, match="bad range"):
        uffd.register(0, 0)
    with pytest.raises(TypeError):
        uffd.poison(1.5, PAGE_SIZE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events"):
        uffd.read_events(0)


def test_adopt_refuses_what_is_not_a_userfaultfd() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a userfaultfd"):
            U.Userfaultfd.adopt(r)
        assert not U.is_userfaultfd(r)
        assert not U.is_userfaultfd(10**6)
    finally:
        os.close(r)
        os.close(w)


def test_closed_descriptor() -> None:
    u = U.Userfaultfd.create()
    fd = u.fileno()
    u.close()
    u.close()
    assert u.closed
    with pytest.raises(ValueError, match="closed"):
        u.fileno()
    assert not U.is_userfaultfd(fd)


def test_buffer_address_of_read_only_and_writable_buffers() -> None:
    data = b"abc" * 1000
    with U.buffer_address(data) as (address, length):
        assert length == len(data)
        assert ctypes.string_at(address, 3) == b"abc"
    with pytest.raises(BufferError), U.buffer_address(data, writable=True):
        pass
    with pytest.raises(TypeError), U.buffer_address(12):
        pass


CHILD_REGISTERS = textwrap.dedent(
    """
    import hashlib, mmap, os, socket, sys
    from aiomemmap._core import uffd as U
    from aiomemmap._core.fdpass import send_message
    sock = socket.socket(fileno=int(sys.argv[1]))
    n = int(sys.argv[2])
    m = mmap.mmap(-1, n)
    with U.buffer_address(m) as (address, _):
        pass
    u = U.Userfaultfd.create()
    u.register(address, n)
    send_message(sock, str(address).encode(), [u.fileno()])
    # The parent serves these faults; the GIL holds no one up, the
    # server being another process.
    print(hashlib.sha256(m).hexdigest(), flush=True)
    """
)


def test_a_child_registers_and_the_parent_resolves() -> None:
    n = 64 * PAGE_SIZE
    content = bytes(i * 7 % 256 for i in range(n))
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_REGISTERS, str(child.fileno()), str(n)],
        pass_fds=[child.fileno()],
        stdout=subprocess.PIPE,
    )
    child.close()
    try:
        parent.settimeout(DEADLINE)
        msg = recv_message(parent, max_bytes=64, max_fds=1)
        address = int(msg.data)
        u = U.Userfaultfd.adopt(msg.fds[0])
        u.set_blocking(False)
        served = 0
        with u:
            while proc.poll() is None and served < n // PAGE_SIZE:
                ready, _, _ = select.select([u.fileno()], [], [], DEADLINE)
                assert ready, "the child never faulted"
                for event in u.read_events():
                    assert isinstance(event, U.PageFault)
                    off = event.address - address
                    assert 0 <= off < n
                    try:
                        u.copy_from(event.address, content[off : off + PAGE_SIZE])
                        served += 1
                    except U.UffdExists:
                        u.wake(event.address, PAGE_SIZE)
            out, _ = proc.communicate(timeout=DEADLINE)
        assert out.decode().strip() == hashlib.sha256(content).hexdigest()
        assert served == n // PAGE_SIZE
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_gone_process_is_esrch() -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    script = CHILD_REGISTERS.replace("print(hashlib", "os._exit(0) or print(hashlib")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(child.fileno()), str(4 * PAGE_SIZE)],
        pass_fds=[child.fileno()],
    )
    child.close()
    try:
        parent.settimeout(DEADLINE)
        msg = recv_message(parent, max_bytes=64, max_fds=1)
        address = int(msg.data)
        assert proc.wait(DEADLINE) == 0
        with U.Userfaultfd.adopt(msg.fds[0]) as u:
            with pytest.raises(U.UffdProcessGone) as info:
                u.copy_from(address, page(1))
            assert isinstance(info.value, ProcessLookupError)
    finally:
        parent.close()


def test_a_raw_touch_of_a_poisoned_page_dies_with_sigbus_and_a_traceback() -> None:
    script = textwrap.dedent(
        """
        import faulthandler, mmap
        from aiomemmap._core import uffd as U
        faulthandler.enable()
        m = mmap.mmap(-1, 4096)
        with U.buffer_address(m) as (address, _):
            pass
        u = U.Userfaultfd.create(optional_features=U.FEATURE_POISON)
        u.register(address, 4096)
        u.poison(address, 4096)
        print("touching", flush=True)
        bytes(memoryview(m)[:8])
        print("survived", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=DEADLINE
    )
    assert proc.returncode == -signal.SIGBUS
    assert b"touching" in proc.stdout
    assert b"survived" not in proc.stdout
    assert b"Bus error" in proc.stderr


NOBODY = 65534

AS_NOBODY = textwrap.dedent(
    """
    import ctypes, json, mmap, os, select, sys, threading
    from aiomemmap._core import uffd as U

    os.setgroups([])
    os.setgid(%(uid)d)
    os.setuid(%(uid)d)
    out = {"uid": os.getuid()}
    for name, kind in (("strict", False), ("forced", True), ("auto", None)):
        try:
            u = U.Userfaultfd.create(user_mode_only=kind)
        except PermissionError:
            out[name] = "refused"
            continue
        out[name] = "user-mode-only" if u.user_mode_only else "full"
        if name != "auto":
            u.close()
            continue
        # The descriptor works: a user-mode touch is reported and served,
        # a kernel-mode access of a missing page fails with EFAULT.
        m = mmap.mmap(-1, 2 * 4096)
        with U.buffer_address(m) as (address, _):
            pass
        u.register(address, len(m))
        got = ctypes.create_string_buffer(4096)
        toucher = threading.Thread(
            target=ctypes.memmove, args=(got, address, 4096), daemon=True
        )
        toucher.start()
        assert select.select([u.fileno()], [], [], 10)[0], "no fault reported"
        (fault,) = u.read_events()
        u.copy_from(fault.address, b"\\x5a" * 4096)
        toucher.join(10)
        out["touched"] = got.raw[:4].hex()
        if u.user_mode_only:
            r, w = os.pipe()
            try:
                os.write(w, memoryview(m)[4096:8192])
                out["kernel"] = "read"
            except OSError as exc:
                out["kernel"] = exc.errno
        u.close()
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_an_unprivileged_process_gets_a_user_mode_only_descriptor() -> None:
    with open("/proc/sys/vm/unprivileged_userfaultfd") as sysctl:
        full_for_all = sysctl.read().strip() != "0"
    with U.Userfaultfd.create() as own:
        assert not own.user_mode_only
    with U.Userfaultfd.create(user_mode_only=True) as forced:
        assert forced.user_mode_only
        assert "user-mode-only" in repr(forced)
    proc = subprocess.run(
        [sys.executable, "-c", AS_NOBODY % {"uid": NOBODY}],
        capture_output=True,
        timeout=DEADLINE,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    if full_for_all:  # The host gives everyone full userfaultfd.
        assert report == {
            "uid": NOBODY,
            "strict": "full",
            "forced": "user-mode-only",
            "auto": "full",
            "touched": "5a5a5a5a",
        }
    else:
        assert report == {
            "uid": NOBODY,
            "strict": "refused",
            "forced": "user-mode-only",
            "auto": "user-mode-only",
            "touched": "5a5a5a5a",
            "kernel": errno.EFAULT,
        }
