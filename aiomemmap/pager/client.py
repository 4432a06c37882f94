"""The client side of real memory: ``map_file`` and ``Region``.

:func:`map_file` connects to a :class:`~aiomemmap.pager.server.Pager`, asks
for a file, maps the memfd it receives, registers the mapping with a
userfaultfd of this process and hands that descriptor to the pager, which
from then on serves every first touch of a page. The result is a
:class:`Region`: an ``mmap`` of the whole file, usable wherever a buffer is.

Two kinds of region:

* **shared** (the default): ``MAP_SHARED``, read-only, registered for
  missing-page faults. It is coherent with the engine's cache: a page the
  cache drops (truncation, eviction, a revalidation that found the object
  changed) leaves the region, and the next touch sees the current bytes.
* **private** (``private=True``): ``MAP_PRIVATE``, registered for missing-
  and minor-page faults, writable with ``writable=True``. Pages that are
  only read are the shared ones, coherent as above; a page this process
  writes is copied on write and is its own from then on: no other client,
  nor the engine, ever sees it, and an invalidation leaves it alone (as
  Linux does for a private mapping of a file that changes).

Unprivileged processes. A process that may neither open
``/dev/userfaultfd`` nor call ``userfaultfd()`` for the kernel's accesses
(``vm.unprivileged_userfaultfd=0``, the usual setting, without
``CAP_SYS_PTRACE``) still gets a userfaultfd that reports *user-mode*
faults, and :func:`map_file` falls back to it
(:attr:`Region.user_mode_only`). Every touch of the region by the process's
own code (Python, numpy, hashlib, C extensions) is served as usual; what it
loses is the kernel's access to pages not yet installed: a system call
reading them (``os.write(fd, region)``, ``socket.send(region)``,
``file.write`` of a memoryview of it) fails with ``EFAULT`` (an
``OSError``), as the kernel may not wait for a user-mode fault handler. To
avoid it, read such pages once in user mode first (``bytes(region[a:b])``,
a numpy reduction) or copy them out with :meth:`Region.read` and
:meth:`Region.readinto`, which ask the pager to install the pages they
need (or, from a pager that cannot be asked, touch them in user mode) and
raise :class:`~aiomemmap.BusError` only for pages that are poisoned; or
give the process access to ``/dev/userfaultfd``.

A shared *writable* region is refused: the engine keeps no record of what a
client wrote into its pages, so it could neither write it back nor keep it
from being dropped and refetched under the client; ask for a private one.

This module uses only the standard library and the core, so that a client
process starts without the engine's dependencies.

The rule of the GIL: a fault blocks the touching thread until the pager
serves it. If the pager runs in this very process, a touch that holds the
GIL (a ``memoryview`` slice, ``bytes(region[a:b])``) stops every other
thread of the process, the pager's included, and never returns; and a touch
from the pager's own event-loop thread can never be served. So with an
in-process pager, touch a region only through accessors that release the
GIL (:meth:`Region.read`, :meth:`Region.readinto`, numpy's bulk operations)
and never from the pager's loop thread: the checked reads refuse to
(:class:`~aiomemmap.WrongLoopError`). A pager in another process has no such
limits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import faulthandler
import mmap
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from aiomemmap._core.errors import BusError, ClosedError, WrongLoopError
from aiomemmap._core.fdpass import (
    close_fds,
    peer_credentials,
    recv_message,
    send_message,
)
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    FEATURE_MINOR_SHMEM,
    FEATURE_POISON,
    FEATURE_THREAD_ID,
    REGISTER_MODE_MINOR,
    REGISTER_MODE_MISSING,
    Userfaultfd,
    buffer_address,
)
from aiomemmap.pager.protocol import (
    MAX_POPULATE_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REQUEST_POPULATE,
    MapReply,
    PopulateRequest,
    ProtocolError,
    decode_map_reply,
    decode_populate_reply,
    decode_register_reply,
    decode_status,
    encode,
    populate_request,
)
from aiomemmap.pager.watchdog import start_watchdog

if TYPE_CHECKING:
    from aiomemmap.engine.engine import Engine
    from aiomemmap.engine.thread import EngineThread

__all__ = ["Region", "RegionStatistics", "map_file"]

DEFAULT_CONNECT_TIMEOUT: Final = 30.0
_POPULATE_ATTEMPTS: Final = 8
"""Populations of one page in a row (each undone by an invalidation before
the copy came back to it) before a checked read gives up on it."""


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_libc: Final = ctypes.CDLL(None, use_errno=True)
_process_vm_readv: Final = _libc.process_vm_readv
_process_vm_readv.restype = ctypes.c_ssize_t
_process_vm_readv.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_mincore: Final = _libc.mincore
_mincore.restype = ctypes.c_int
_mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


@final
@dataclass(frozen=True, slots=True)
class RegionStatistics:
    """A snapshot of a region.

    Attributes:
        size: The file's size (the region's length).
        resident_bytes: Bytes of the region's pages in memory now (installed
            by the pager for this process or another client of the file),
            which a touch reads without a fault; the rest is fetched on
            first touch.

    Concurrency:
        Immutable.
    """

    size: int
    resident_bytes: int


def _kernel_copy(src: int, dst: int, n: int) -> tuple[int, int]:
    """Copy ``n`` bytes of this process from ``src`` to ``dst`` in the kernel.

    The kernel serves missing pages through the pager as any access does
    (with the GIL released meanwhile) and reports a poisoned page as
    ``EFAULT`` instead of ``SIGBUS``; so does it a missing page when the
    region's userfaultfd reports user-mode faults only.

    Returns:
        The bytes copied (from the start), and 0 or the errno that stopped
        the copy there.
    """
    done, pid = 0, os.getpid()
    while done < n:
        local = _IoVec(dst + done, n - done)
        remote = _IoVec(src + done, n - done)
        got = _process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            return done, ctypes.get_errno() if got < 0 else errno.EIO
        done += got
    return n, 0


def _bus_error(address: int, err: int, done: int) -> BusError:
    exc = BusError(
        OSError(err, f"the page at {address:#x} cannot be read: {os.strerror(err)}")
    )
    exc.bytes_done = done
    return exc


_PAGEMAP_SWAP: Final = 1 << 62
_PAGEMAP_PRESENT: Final = 1 << 63


def _poison_marked(address: int) -> bool:
    """Return whether this process's page at ``address`` holds a poison marker.

    ``/proc/self/pagemap`` shows a marker as a non-present swap entry; a
    page of a region that merely was never touched shows as nothing at
    all. (A page swapped out shows the same as a marker, but the kernel
    reads a swapped page back instead of failing, so a page that failed a
    kernel copy and shows so is poisoned.)
    """
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        entry = os.pread(pagemap.fileno(), 8, address // PAGE_SIZE * 8)
    flags = int.from_bytes(entry, "little") if len(entry) == 8 else 0
    return bool(flags & _PAGEMAP_SWAP) and not flags & _PAGEMAP_PRESENT


_touch_byte: Final = (ctypes.c_char * 1)()


def _touch(address: int) -> None:
    """Read one byte at ``address`` in user mode, the GIL released.

    A missing page faults as any user-mode access does and is served; a
    page the pager cannot serve then kills the process with ``SIGBUS``.
    """
    ctypes.memmove(_touch_byte, address, 1)


class Region(mmap.mmap):
    """A file mapped as real memory of this process, its pages served lazily.

    An ``mmap`` of the whole file: ``len(region)`` is the file's size, and
    ``memoryview(region)``, ``numpy.frombuffer(region, ...)``,
    ``region[a:b]`` all read the file's bytes, each first touch of a page
    being a fault the pager serves. A page the pager cannot read is
    poisoned: a raw access then kills the process with ``SIGBUS`` (with a
    ``faulthandler`` traceback), while :meth:`read` and :meth:`readinto`
    raise :class:`~aiomemmap.BusError`.

    A shared region (the default) is read-only. A private one
    (:attr:`private`) is copy-on-write: writable if it was mapped with
    ``writable=True`` (a write to a read-only region is refused by Python's
    buffer checks, or kills the process with ``SIGSEGV`` through a raw
    pointer); the bytes written stay in this process.

    A child process made by ``fork()`` does not inherit the mapping.

    Create one with :func:`map_file`. Close it (or use it as a context
    manager) to unmap it and let the pager free what it holds for it;
    closing fails with ``BufferError`` while buffers exported from it
    (memoryviews, numpy arrays) are alive.

    Concurrency:
        Thread-safe for reads; :meth:`close` must not race other calls.
    """

    _address: int
    _conn: socket.socket | None
    _uffd: Userfaultfd | None
    _size: int
    _length: int
    _pager_pid: int
    _watchdog: subprocess.Popen[bytes] | None
    _pager_thread: int
    _url: str
    _private: bool
    _writable: bool
    _user_mode_only: bool
    _can_populate: bool
    _conn_lock: threading.Lock

    def __new__(cls, *args: object, **kwargs: object) -> Region:
        """Refuse: regions come from :func:`map_file`."""
        raise TypeError("Region cannot be created directly: use aiomemmap.map_file()")

    @classmethod
    def _create(
        cls,
        memfd: int,
        reply: MapReply,
        url: str,
        pager_pid: int,
        *,
        private: bool,
        writable: bool,
    ) -> Region:
        flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        region = mmap.mmap.__new__(cls, memfd, reply.size, flags=flags, prot=prot)
        with buffer_address(region) as (address, _):
            region._address = address
        # A child made by fork() would get the mapping without the
        # registration: its reads of untouched pages would fill the shared
        # memfd with zeros. It gets no mapping at all instead.
        region.madvise(mmap.MADV_DONTFORK)
        region._size = reply.size
        region._length = reply.length
        region._pager_pid = pager_pid
        region._pager_thread = reply.thread
        region._url = url
        region._private = private
        region._writable = writable
        region._user_mode_only = False
        region._can_populate = False
        region._conn_lock = threading.Lock()
        region._conn = None
        region._uffd = None
        region._watchdog = None
        return region

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self._address:#x}"
        kind = "private" if self._private else "shared"
        if self._writable:
            kind += " writable"
        return f"<Region {self._url!r} {kind} size={self._size} {state}>"

    @property
    def private(self) -> bool:
        """Whether the region is copy-on-write (its writes stay in this process)."""
        return self._private

    @property
    def writable(self) -> bool:
        """Whether the region may be written (private regions only)."""
        return self._writable

    @property
    def user_mode_only(self) -> bool:
        """Whether only user-mode touches of missing pages are served.

        True when this process could not have a userfaultfd that also
        reports the kernel's accesses (see :func:`map_file`): then a system
        call that reads a page of the region nobody touched yet
        (``os.write(fd, region)``, ``socket.send``) fails with ``EFAULT``.
        """
        return self._user_mode_only

    @property
    def address(self) -> int:
        """The address of the first byte in this process."""
        return self._address

    @property
    def size(self) -> int:  # type: ignore[override]
        """The file's size in bytes (the region's length)."""
        return self._size

    @property
    def url(self) -> str:
        """The URL or path the region maps."""
        return self._url

    def statistics(self) -> RegionStatistics:
        """Return the region's size and how much of it is in memory now.

        Raises:
            ClosedError: The region is closed.
        """
        if self.closed:
            raise ClosedError(f"Region.statistics: {self!r} is closed")
        pages = self._length // PAGE_SIZE
        vec = ctypes.create_string_buffer(pages)
        if _mincore(self._address, self._length, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore: {os.strerror(err)}")
        resident = sum(byte & 1 for byte in vec.raw)
        return RegionStatistics(self._size, min(resident * PAGE_SIZE, self._size))

    def _check_read(self, name: str, offset: int, n: int) -> int:
        if type(offset) is not int or type(n) is not int:
            raise TypeError(
                f"Region.{name}: offset and size must be ints, got {offset!r}, {n!r}"
            )
        if offset < 0 or n < 0:
            raise ValueError(
                f"Region.{name}: offset {offset} and size {n} must not be negative"
            )
        if self.closed:
            raise ClosedError(f"Region.{name}: {self!r} is closed")
        if (
            os.getpid() == self._pager_pid
            and threading.get_ident() == self._pager_thread
        ):
            raise WrongLoopError(
                f"Region.{name}: called on the thread of the pager's own event "
                "loop, which must serve this read's faults: it would never return"
            )
        return max(0, min(n, self._size - offset))

    def read(self, offset: int = -1, n: int = -1) -> bytes:  # type: ignore[override]
        """Read up to ``n`` bytes at ``offset``, checked.

        Missing pages are served by the pager; the GIL is released while the
        kernel copies.

        Args:
            offset: Where to start (``0 <= offset``).
            n: How many bytes at most; fewer at the end of the file.

        Returns:
            The bytes (empty at or past the end).

        Raises:
            TypeError, ValueError: Bad arguments (``read()`` without them is
                refused: this is not a file position read).
            BusError: A page could not be served (poisoned).
            ClosedError: The region is closed.
            WrongLoopError: Called on the pager's loop thread.
        """
        if offset == -1 and n == -1:
            raise TypeError("Region.read(offset, n) needs an offset and a size")
        count = self._check_read("read", offset, n)
        out = bytearray(count)
        if count:
            with buffer_address(out, writable=True) as (dst, _):
                self._copy_out(offset, dst, count)
        return bytes(out)

    def readinto(self, offset: int, buf: object) -> int:
        """Read into the writable buffer ``buf`` from ``offset``, checked.

        Returns:
            The bytes read: ``len(buf)``, fewer at the end of the file.

        Raises:
            TypeError: ``buf`` is no writable buffer.
            As :meth:`read` otherwise.
        """
        with buffer_address(buf, writable=True) as (dst, length):
            count = self._check_read("readinto", offset, length)
            if count:
                self._copy_out(offset, dst, count)
        return count

    def _copy_out(self, offset: int, dst: int, count: int) -> None:
        """Copy ``count`` bytes of the region at ``offset`` to address ``dst``.

        With a user-mode-only userfaultfd, a page the kernel's copy stops at
        may just be missing: the pager is asked to install the pages from
        there on (or, from a pager that cannot be asked, the page is
        touched in user mode), and the copy goes on. Only a page that is
        poisoned raises.

        Raises:
            BusError: A page could not be served (``bytes_done`` bytes were
                copied).
        """
        done, again = 0, 0
        while True:
            got, err = _kernel_copy(
                self._address + offset + done, dst + done, count - done
            )
            again = 0 if got else again + 1
            done += got
            if not err:
                return
            address = self._address + offset + done
            page = (offset + done) // PAGE_SIZE * PAGE_SIZE
            if (
                err != errno.EFAULT
                or not self._user_mode_only
                or again > _POPULATE_ATTEMPTS
                or _poison_marked(address)
            ):
                raise _bus_error(address, err, done)
            end = min(
                page + MAX_POPULATE_BYTES,
                self._length,
                -(-(offset + count) // PAGE_SIZE) * PAGE_SIZE,
            )
            if page in self._populate(page, end - page):
                raise _bus_error(address, err, done)

    def _populate(self, offset: int, length: int) -> list[int]:
        """Have the pages of ``[offset, offset + length)`` installed now.

        Returns:
            The offsets of those pages that are poisoned.

        Raises:
            ClosedError: The region is closed.
            OSError, ProtocolError: The pager broke the connection.
        """
        if not self._can_populate:
            _touch(self._address + offset)
            return []
        request = PopulateRequest(offset, length)
        with self._conn_lock:
            conn = self._conn
            if conn is None:
                raise ClosedError(f"Region: {self!r} is closed")
            send_message(conn, populate_request(offset, length))
            msg = recv_message(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=0)
        return decode_populate_reply(msg.data, request)

    def close(self) -> None:
        """Unmap the region and end its service; later calls do nothing.

        Raises:
            BufferError: Buffers exported from the region are still alive
                (nothing is closed then).
        """
        if not self.closed:
            super().close()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        conn, self._conn = self._conn, None
        uffd, self._uffd = self._uffd, None
        if uffd is not None:
            uffd.close()
        if conn is not None:
            conn.close()

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _connect(
    engine: str | Engine | EngineThread | None, timeout: float
) -> socket.socket:
    """Connect to the pager ``map_file``'s ``engine`` argument names."""
    if engine is None:
        path = _child_engine_address()[5:]
    elif isinstance(engine, str):
        if not engine.startswith("unix:") or len(engine) <= 5:
            raise TypeError(
                "map_file: engine must be None, 'unix:PATH' (the socket of a "
                f"running Pager), an Engine or an EngineThread, got {engine!r}"
            )
        path = engine[5:]
    else:
        # An engine of this process: its pager serves one end of a socket
        # pair on the engine's loop. Imported here only, so that a client
        # of another process never loads the engine.
        from aiomemmap.pager.in_process import connect_in_process

        conn = connect_in_process(engine)
        conn.settimeout(timeout)
        return conn
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(timeout)
        conn.connect(path)
    except BaseException:
        conn.close()
        raise
    return conn


_child_lock = threading.Lock()
# Seconds a child engine has to close down at exit before it is killed.
_CHILD_EXIT_TIMEOUT = 10.0
_child: tuple[int, subprocess.Popen[bytes], str] | None = None


def _child_engine_address() -> str:
    """Start, or reuse, this process's child engine; return its pager address.

    Raises:
        OSError: The child could not start or did not announce its address.
    """
    global _child
    with _child_lock:
        found = _child
        if found is not None and found[0] == os.getpid() and found[1].poll() is None:
            return found[2]
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiomemmap.pager.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DEFAULT_CONNECT_TIMEOUT)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("unix:"):
            proc.kill()
            proc.wait()
            raise OSError(f"map_file: the child engine did not start (said {line!r})")
        # Its standard input stays open here: its end (this process closing
        # it, or exiting) is what stops the child.
        _child = (os.getpid(), proc, line)
        atexit.register(_stop_child_engine)
        return line


def _stop_child_engine() -> None:
    """At exit: end this process's child engine and reap it.

    Closing its standard input is what stops it; waiting for it here keeps
    the interpreter from reporting a subprocess still running, or its pipes
    unclosed, as it exits.
    """
    global _child
    with _child_lock:
        found, _child = _child, None
    if found is None or found[0] != os.getpid():
        return
    proc = found[1]
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(timeout=_CHILD_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _send(conn: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send a message; if the pager has already refused and closed, raise its error."""
    try:
        send_message(conn, data, fds)
    except (BrokenPipeError, ConnectionResetError):
        msg = recv_message(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=0)
        decode_status(msg.data, "pager reply")
        raise


def map_file(
    url_or_path: str,
    /,
    *,
    engine: str | Engine | EngineThread | None = None,
    private: bool = False,
    writable: bool = False,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    watchdog: bool = True,
    **storage_options: str | int | float | bool | None,
) -> Region:
    """Map a whole file into this process as real memory served by a pager.

    Nothing is fetched up front: each first touch of a page is a fault the
    pager serves through its engine's cache of the file (fetching what is
    not cached), installing a fault-around chunk at a time.

    A shared region (the default) is read-only and coherent with the
    engine's cache. A private region is a copy-on-write mapping of the same
    pages: what this process writes (with ``writable=True``) stays in this
    process and survives the engine's invalidations of the file, while the
    pages it only read follow the cache as a shared region's do (see the
    module documentation).

    Args:
        url_or_path: What the pager's engine should open (a URL, or a path
            on the pager's host).
        engine: Who serves the region. ``None`` (the default): a child
            engine process of this process, started by the first call and
            reused by later ones (it exits with this process).
            ``"unix:PATH"``: the socket of a running
            :class:`~aiomemmap.pager.server.Pager` (e.g. ``Pager.address``).
            An :class:`~aiomemmap.Engine` (running on a loop of another
            thread) or an :class:`~aiomemmap.EngineThread`: that engine, in
            this process; then touch the region only through accessors that
            release the GIL, never from the engine's thread (see the module
            documentation).
        private: Map the file copy-on-write (``MAP_PRIVATE``) instead of
            shared.
        writable: Allow writes; only with ``private=True`` (a shared
            writable region is refused: see the module documentation).
        timeout: Seconds allowed for the handshake.
        watchdog: When the engine is another process, start the region's
            watchdog (:mod:`~aiomemmap.pager.watchdog`), which makes the
            region's untouched pages fail at once, rather than hang, if the
            engine dies. Without it, an access blocked in a fault waits
            until this process is killed.
        **storage_options: The backing's options (JSON scalars only).

    Returns:
        The region; close it when done.

    Raises:
        TypeError: Bad ``engine``, ``private``, ``writable`` or options.
        ValueError: ``writable=True`` without ``private=True``; the file is
            empty, or the pager broke the protocol
            (:class:`~aiomemmap.pager.protocol.ProtocolError`).
        FileNotFoundError, PermissionError, OSError: The pager could not open
            the file, or refused this process.
        TimeoutError: The handshake took longer than ``timeout``.
    """
    if not isinstance(url_or_path, str):
        raise TypeError(f"map_file: url_or_path must be a str, got {url_or_path!r}")
    flags: dict[str, object] = {"private": private, "writable": writable}
    for name, value in flags.items():
        if type(value) is not bool:
            raise TypeError(f"map_file: {name} must be True or False, got {value!r}")
    if writable and not private:
        raise ValueError(
            "map_file: a shared region cannot be writable (the engine could "
            "neither keep nor write back what a client writes into the shared "
            "pages); use private=True, writable=True for a copy-on-write "
            "region whose writes stay in this process"
        )
    conn = _connect(engine, timeout)
    if not faulthandler.is_enabled():
        # A poisoned page kills the process: say where.
        faulthandler.enable()
    region: Region | None = None
    try:
        creds = peer_credentials(conn)
        if creds.uid not in (os.getuid(), 0):
            raise PermissionError(
                f"map_file: the pager (pid {creds.pid}) runs as uid {creds.uid}, "
                "neither this process's nor root's"
            )
        request = {
            "op": "map",
            "version": PROTOCOL_VERSION,
            "url": url_or_path,
            "options": storage_options,
        }
        try:
            payload = encode(request)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise TypeError(
                f"map_file: storage options must be JSON scalars: {exc}"
            ) from None
        _send(conn, payload)
        msg = recv_message(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=1)
        try:
            decode_status(msg.data, "map reply")
            if len(msg.fds) != 1:
                raise ProtocolError(
                    f"map reply: expected one descriptor, got {len(msg.fds)}"
                )
            reply = decode_map_reply(msg.data)
            region = Region._create(
                msg.fds[0],
                reply,
                url_or_path,
                creds.pid,
                private=private,
                writable=writable,
            )
        finally:
            close_fds(msg.fds)
        # A private region is filled through the memfd's pages, which a
        # minor fault maps (see the pager's session).
        features = FEATURE_MINOR_SHMEM if private else 0
        optional = FEATURE_THREAD_ID | FEATURE_POISON
        try:
            uffd = Userfaultfd.create(features=features, optional_features=optional)
        except PermissionError:
            # What an unprivileged process may still have (see above).
            uffd = Userfaultfd.create(
                features=features, optional_features=optional, user_mode_only=True
            )
            region._user_mode_only = True
        region._uffd = uffd
        mode = REGISTER_MODE_MISSING | (REGISTER_MODE_MINOR if private else 0)
        ioctls = uffd.register(region.address, reply.length, mode)
        register = {
            "op": "register",
            "start": region.address,
            "length": reply.length,
            "features": uffd.features,
            "ioctls": ioctls,
            "private": private,
        }
        _send(conn, encode(register), [uffd.fileno()])
        msg = recv_message(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=0)
        decode_status(msg.data, "register reply")
        region._can_populate = REQUEST_POPULATE in decode_register_reply(msg.data)
        if watchdog and creds.pid != os.getpid():
            region._watchdog = start_watchdog(
                uffd, region.address, reply.length, creds.pid
            )
        conn.settimeout(None)
        region._conn = conn
        return region
    except BaseException:
        if region is not None:
            region.close()
        conn.close()
        raise
