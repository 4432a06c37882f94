"""Pager: the engine side of real memory.

A :class:`Pager` listens on a ``SOCK_SEQPACKET`` Unix socket for client
processes (:func:`~aiomemmap.pager.client.map_file`), speaks the protocol of
:mod:`~aiomemmap.pager.protocol` with each, and serves each client's faults
through the engine's cached file of the file it mapped
(:mod:`~aiomemmap.pager.session`).

Who gets in: each peer's credentials are read from the kernel
(``SO_PEERCRED``, which the peer cannot forge) and only the allowed uids are
served, by default the pager's own; each client receives only the memfd of
the file it asked for; every range it sends is checked against that file; a
malformed, oversized, cut or late handshake gets a ``"protocol"`` error and
the connection is closed with everything it opened released.

The socket's permissions follow the allowed uids. When only the pager's own
uid is served, the socket is ``0600`` in a private ``0700`` directory, so
that no other uid can even connect. When other uids are allowed, the
directory is ``0711`` (others may pass through it, not list it) and the
socket ``0666``: any local uid can connect, and the credentials check is the
gate, refusing every uid not allowed before reading a byte from it. A group
owning the socket would be narrower only in appearance: the kernel checks the
group against the connecting process's own supplementary groups, which the
group database does not bind, the pager could chown to such a group only if
it belonged to it (or were root), and a group rarely holds exactly the
allowed uids; the peer's credentials are the one check that admits exactly
them. A refused uid costs the pager one accepted connection and one refusal.

A client's file stays open in the engine while the client is connected. Its
end of the connection closing (the client closed its region, or died), or
the client's process exiting while another process still holds its socket
(a forked child, or one the descriptor was passed to), which a pidfd of the
peer's process tells, frees everything the pager held for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Final, final

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import ClosedError, WrongLoopError
from aiomemmap._core.fdpass import (
    MAX_MESSAGE_FDS,
    MessageTruncatedError,
    PeerCredentials,
    close_fds,
    peer_credentials,
    recv_message_async,
    send_message_async,
)
from aiomemmap._core.ranges import AddrRange
from aiomemmap._core.uffd import Userfaultfd
from aiomemmap.engine.engine import Engine
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.pager.fault_around import (
    DEFAULT_FAULT_AROUND,
    MAX_FAULT_AROUND,
    FaultAround,
)
from aiomemmap.pager.file_pages import FilePages
from aiomemmap.pager.firecracker import GuestSession, receive_handshake
from aiomemmap.pager.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    decode_map_request,
    decode_register_request,
    encode,
    error_reply,
)
from aiomemmap.pager.session import Session, SessionCounters

__all__ = ["Pager", "PagerStatistics"]

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0
_SOCKET_NAME: Final = "pager.sock"
_DRAIN_SECONDS: Final = 1.0


_SO_PEERPIDFD: Final = getattr(socket, "SO_PEERPIDFD", 77)
"""``SO_PEERPIDFD`` (Linux 6.5) where Python does not name it (the value of
every architecture this package runs on)."""


def _peer_pidfd(conn: socket.socket, creds: PeerCredentials) -> int:
    """Open a pidfd of the process at the other end of ``conn`` (close-on-exec).

    The kernel's own pidfd of the process that connected (``SO_PEERPIDFD``)
    is taken where the kernel has it: it names that very process even if its
    pid was reused since. Older kernels get ``pidfd_open`` of the pid the
    credentials name.

    Raises:
        ProcessLookupError: The peer's process has exited already.
        OSError: No pidfd could be opened.
    """
    try:
        fd = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except ProcessLookupError:
        raise
    except OSError:
        return os.pidfd_open(creds.pid)
    os.set_inheritable(fd, False)
    return fd


async def _until_exit(pidfd: int, *waits: Awaitable[object]) -> None:
    """Return when the process of ``pidfd`` exits, or one of ``waits`` completes.

    The others are cancelled (and awaited) before returning.
    """
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[object] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    futures: set[asyncio.Future[object]] = {exited}
    futures.update(asyncio.ensure_future(w) for w in waits)
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(pidfd)
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)


def _whole(pages: FilePages) -> AddrRange:
    """The addresses at which a file's pages map it: its offsets."""
    return AddrRange(0, pages.length)


def _check_mapped(pid: int, start: int, length: int, memfd: int) -> None:
    """Check that process ``pid`` maps ``memfd`` at ``[start, start + length)``.

    Every byte of the range must be mapped from the memfd at the offset
    ``address - start``, as ``/proc/PID/maps`` lists it (device and inode
    compared), so that the pager copies only into the region the client
    made of the memfd it was given.

    Raises:
        ProtocolError: It does not, or the maps cannot be read.
    """
    st = os.fstat(memfd)
    want_dev = (os.major(st.st_dev), os.minor(st.st_dev))
    end, at = start + length, start
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
            lines = maps.readlines()
    except OSError as exc:
        raise ProtocolError(
            f"the mappings of process {pid} cannot be read: {exc}"
        ) from None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        lo_text, _, hi_text = fields[0].partition("-")
        lo, hi = int(lo_text, 16), int(hi_text, 16)
        if hi <= at or lo > at:
            continue
        major, _, minor = fields[3].partition(":")
        if (
            (int(major, 16), int(minor, 16)) != want_dev
            or int(fields[4]) != st.st_ino
            or int(fields[2], 16) != lo - start
        ):
            break
        at = hi
        if at >= end:
            return
    raise ProtocolError(
        f"register request: [{start:#x}, {end:#x}) is not wholly a mapping of the "
        f"file's memfd in process {pid} (checked up to {at:#x})"
    )


@final
@dataclass(frozen=True, slots=True)
class PagerStatistics:
    """A snapshot of a pager's counters.

    Attributes:
        clients: Clients connected now with a registered region.
        connections: Connections open now (in the handshake or served).
        clients_served: Clients that completed the handshake since start.
        refused: Connections refused (credentials, protocol, or the file
            could not be opened).
        files: Files with a memfd of real-memory pages now.
        resident_bytes: Memory taken by those memfds' pages now.
        faults: Fault messages read.
        coalesced: Faults absorbed by a chunk already being installed.
        chunks: Fault-around chunks installed.
        bytes_installed: Bytes copied into clients' regions.
        duplicates: Pages found already present, woken instead.
        retries: Copies retried after ``EAGAIN``.
        poisoned: Pages poisoned because their bytes could not be read.
        rereads: Chunks read again because an invalidation raced the read.
        repaired: Poisoned pages replaced by their bytes once they came.
        zeroed: Guest pages served as zeros because the guest had removed
            them (Firecracker's balloon rule).
        invalidations: Invalidations of the files' pages (each revoked and
            punched out of every client).

    Concurrency:
        Immutable.
    """

    clients: int
    connections: int
    clients_served: int
    refused: int
    files: int
    resident_bytes: int
    faults: int
    coalesced: int
    chunks: int
    bytes_installed: int
    duplicates: int
    retries: int
    poisoned: int
    rereads: int
    repaired: int
    zeroed: int
    invalidations: int


@final
class Pager:
    """Serves real memory of the engine's files to client processes.

    Use it on the engine's loop::

        async with Engine() as engine, Pager(engine) as pager:
            ...  # clients call map_file(url, engine=f"unix:{pager.socket_path}")

    Args:
        engine: The engine whose files are served (the pager uses it on the
            engine's loop, the loop it is started on).
        socket_path: Where to listen; by default a new private directory
            (``0700``, or ``0711`` when other uids are allowed) holds the
            socket. The socket is made ``0600``, or ``0666`` when other uids
            are allowed (the directory of a given path is the caller's to
            open to them). A path starting with a NUL byte names an
            abstract socket (no file, no permissions: only the uid check
            guards it).
        allowed_uids: The uids served; by default only the pager's own.
            Allowing others opens the socket to every local uid, and the
            peer credentials check refuses those not allowed (see the
            module documentation).
        fault_around: The first fault-around chunk of a region (a power of
            two, at least a page); it grows to ``max_fault_around`` on
            sequential faults and shrinks to a page on random ones.
        max_fault_around: The largest chunk.
        handshake_timeout: Seconds a client has to complete its handshake.

    Raises:
        TypeError: ``engine`` is not an :class:`~aiomemmap.Engine`.
        ValueError: A size or the timeout is out of range.

    Concurrency:
        Task-safe on the loop it was started on; :meth:`statistics` may be
        called from that loop's thread.
    """

    __slots__ = (
        "_accept_task",
        "_connections",
        "_counters",
        "_engine",
        "_extra_listeners",
        "_files",
        "_guests",
        "_handshake_timeout",
        "_initial",
        "_invalidations",
        "_listener",
        "_loop",
        "_maximum",
        "_private_dir",
        "_refused",
        "_served",
        "_sessions",
        "_socket_path",
        "_thread",
        "_uids",
        "_zeroed",
    )

    def __init__(
        self,
        engine: Engine,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        allowed_uids: Collection[int] | None = None,
        fault_around: int = DEFAULT_FAULT_AROUND,
        max_fault_around: int = MAX_FAULT_AROUND,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(f"Pager: engine must be an Engine, got {engine!r}")
        # Checks the sizes now, not at the first client.
        FaultAround(fault_around, initial=fault_around, maximum=max_fault_around)
        if not handshake_timeout > 0:
            raise ValueError(
                f"Pager: handshake_timeout must be positive, got {handshake_timeout!r}"
            )
        uids = frozenset({os.getuid()} if allowed_uids is None else allowed_uids)
        if not all(type(u) is int and u >= 0 for u in uids):
            raise ValueError(f"Pager: allowed_uids must be uids, got {allowed_uids!r}")
        self._engine = engine
        self._socket_path = None if socket_path is None else os.fspath(socket_path)
        self._uids = uids
        self._initial = fault_around
        self._maximum = max_fault_around
        self._handshake_timeout = float(handshake_timeout)
        self._listener: socket.socket | None = None
        self._private_dir: str | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._sessions: set[Session] = set()
        self._files: dict[tuple[int, int], tuple[CachedFile, FilePages]] = {}
        self._counters = SessionCounters()
        self._served = 0
        self._refused = 0
        self._invalidations = 0
        self._zeroed = 0
        self._guests: set[GuestSession] = set()
        self._extra_listeners: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def __repr__(self) -> str:
        return f"<Pager {self._socket_path!r} clients={len(self._sessions)}>"

    @property
    def socket_path(self) -> str:
        """The path clients connect to.

        Raises:
            RuntimeError: The pager was not started.
        """
        if self._socket_path is None or self._listener is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._socket_path

    @property
    def open_to_others(self) -> bool:
        """Whether uids other than the pager's own are served.

        Then the pager's sockets are ``0666`` (and its private directory
        ``0711``) instead of ``0600`` (and ``0700``): the credentials check
        alone tells who is served (see the module documentation).
        """
        return bool(self._uids - {os.getuid()})

    @property
    def allowed_uids(self) -> frozenset[int]:
        """The uids served."""
        return self._uids

    def _socket_mode(self) -> int:
        return 0o666 if self.open_to_others else 0o600

    @property
    def address(self) -> str:
        """What :func:`~aiomemmap.pager.client.map_file` takes: ``"unix:PATH"``."""
        return f"unix:{self.socket_path}"

    # ------------------------------------------------------------------
    # Lifetime

    async def __aenter__(self) -> Pager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen and start accepting clients on the running loop.

        Raises:
            RuntimeError: Started already.
            ClosedError: The engine is closed.
            OSError: The socket could not be created (e.g. the path exists).
        """
        if self._listener is not None or self._loop is not None:
            raise RuntimeError(f"{self!r} was started already")
        if self._engine.closed:
            raise ClosedError(f"{self._engine!r} is closed")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        if self._socket_path is None:
            self._private_dir = tempfile.mkdtemp(prefix="aiomemmap-pager-")
            os.chmod(self._private_dir, 0o711 if self.open_to_others else 0o700)
            self._socket_path = os.path.join(self._private_dir, _SOCKET_NAME)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.setblocking(False)
            listener.bind(self._socket_path)
            if not self._socket_path.startswith("\0"):
                os.chmod(self._socket_path, self._socket_mode())
            listener.listen(128)
        except BaseException:
            listener.close()
            self._remove_socket()
            raise
        self._listener = listener
        self._accept_task = self._loop.create_task(self._accept_loop())

    async def aclose(self) -> None:
        """Stop listening, end every client's service and release all it held.

        Clients still mapping their regions keep the pages already installed;
        their next fault is never served (their processes should be gone, or
        go, first). Later calls do nothing.

        Cancellation:
            Completes before the cancellation propagates.
        """
        if self._loop is None:
            return
        await finish_shielded(self._close())

    async def _close(self) -> None:
        for extra in list(self._extra_listeners):
            extra.cancel()
            with contextlib.suppress(BaseException):
                await extra
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(BaseException):
                await self._accept_task
            self._accept_task = None
        self._stop_listening()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._remove_socket()

    def _remove_socket(self) -> None:
        if self._socket_path is not None and not self._socket_path.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self._socket_path)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    # ------------------------------------------------------------------
    # Statistics

    def statistics(self) -> PagerStatistics:
        """Return the pager's counters.

        Raises:
            WrongLoopError: Called from another thread than the pager loop's.
        """
        if self._thread and threading.get_ident() != self._thread:
            raise WrongLoopError(f"{self!r} runs on a loop of another thread")
        totals = SessionCounters()
        totals.add(self._counters)
        for session in self._sessions:
            totals.add(session.counters)
        for guest in self._guests:
            totals.add(guest.counters)
        return PagerStatistics(
            clients=len(self._sessions) + len(self._guests),
            connections=len(self._connections),
            clients_served=self._served,
            refused=self._refused,
            files=len(self._files),
            resident_bytes=sum(p.resident_bytes() for _, p in self._files.values()),
            faults=totals.faults,
            coalesced=totals.coalesced,
            chunks=totals.chunks,
            bytes_installed=totals.bytes_installed,
            duplicates=totals.duplicates,
            retries=totals.retries,
            poisoned=totals.poisoned,
            rereads=totals.rereads,
            repaired=totals.repaired,
            zeroed=self._zeroed + sum(g.zeroed for g in self._guests),
            invalidations=self._invalidations
            + sum(p.generation for _, p in self._files.values()),
        )

    # ------------------------------------------------------------------
    # Connections

    async def serve_firecracker(
        self,
        socket_path: str | os.PathLike[str],
        snapshot: str,
        /,
        **storage_options: object,
    ) -> None:
        """Also serve Firecracker VMs restoring a snapshot, on a stream socket.

        Each VMM that connects to ``socket_path`` sends its guest memory
        regions and userfaultfd (:mod:`~aiomemmap.pager.firecracker`); the
        pager serves the guest's faults from ``snapshot`` (the snapshot's
        memory file, any URL or path the engine opens, with
        ``storage_options``), until the VMM's process exits. The socket's
        permissions and the peers' check are those of the pager's own socket
        (:attr:`open_to_others`).

        Args:
            socket_path: Where to listen (must not exist).
            snapshot: The snapshot's memory file.
            **storage_options: The backing's options.

        Raises:
            RuntimeError: The pager is not started.
            OSError: The socket could not be created.

        Cancellation:
            Nothing is left listening.
        """
        if self._loop is None:
            raise RuntimeError(f"{self!r} is not started")
        path = os.fspath(socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.setblocking(False)
            listener.bind(path)
            os.chmod(path, self._socket_mode())
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        loop = self._loop

        async def accept() -> None:
            try:
                while True:
                    try:
                        conn, _ = await loop.sock_accept(listener)
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                    conn.setblocking(False)
                    task = loop.create_task(
                        self._firecracker(conn, snapshot, storage_options)
                    )
                    self._connections.add(task)
                    task.add_done_callback(self._connections.discard)
            finally:
                listener.close()
                with contextlib.suppress(OSError):
                    os.unlink(path)

        task = loop.create_task(accept())
        self._extra_listeners.add(task)
        task.add_done_callback(self._extra_listeners.discard)

    async def _firecracker(
        self, conn: socket.socket, snapshot: str, options: dict[str, object]
    ) -> None:
        """Serve one VMM from its handshake until its process exits."""
        session: GuestSession | None = None
        cached_file: CachedFile | None = None
        pidfd = -1
        try:
            creds = peer_credentials(conn)
            if creds.uid not in self._uids:
                raise PermissionError(f"uid {creds.uid} is not served by this pager")
            pidfd = _peer_pidfd(conn, creds)
            async with asyncio.timeout(self._handshake_timeout):
                cached_file = await self._engine.open_file(snapshot, **options)
                assert cached_file.size is not None
                regions, uffd = await receive_handshake(conn, cached_file.size)
            session = GuestSession(
                uffd=uffd,
                regions=regions,
                snapshot=cached_file,
                fault_around=self._initial,
                max_fault_around=self._maximum,
            )
            self._served += 1
            self._guests.add(session)
            session.start_serving()
            await _until_exit(pidfd, session.finished.wait())
        except asyncio.CancelledError:
            raise
        except Exception:
            # Firecracker's protocol has no replies: the connection closes.
            self._refused += session is None
        finally:
            conn.close()
            if pidfd >= 0:
                os.close(pidfd)
            await finish_shielded(self._release_guest(session, cached_file))

    async def _release_guest(
        self, session: GuestSession | None, cached_file: CachedFile | None
    ) -> None:
        if session is not None:
            self._guests.discard(session)
            await session.aclose()
            self._counters.add(session.counters)
            self._zeroed += session.zeroed
        if cached_file is not None:
            with contextlib.suppress(Exception):
                await self._engine.close_file(cached_file)

    def attach(self, conn: socket.socket) -> None:
        """Serve a client already connected on ``conn``, as if it had connected.

        For a client in this very process (one end of a socket pair): the
        pager need not listen. The same checks apply as to any client.

        Args:
            conn: A connected ``SOCK_SEQPACKET`` Unix socket; the pager owns
                it from now on.

        Raises:
            WrongLoopError: The pager runs on another loop.
            RuntimeError: No loop is running (call it on the pager's loop).
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._thread = loop, threading.get_ident()
        elif self._loop is not loop:
            conn.close()
            raise WrongLoopError(f"{self!r} runs on another event loop")
        conn.setblocking(False)
        task = loop.create_task(self._connection(conn))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _accept_loop(self) -> None:
        assert self._listener is not None and self._loop is not None
        listener, loop = self._listener, self._loop
        try:
            while True:
                try:
                    conn, _ = await loop.sock_accept(listener)
                except OSError:
                    # Out of descriptors and the like: let clients retry later.
                    await asyncio.sleep(0.05)
                    continue
                self.attach(conn)
        finally:
            # Also when the loop shuts down without aclose().
            self._stop_listening()

    async def _connection(self, conn: socket.socket) -> None:
        """Serve one client from its handshake to its end; release everything."""
        held: list[tuple[CachedFile, FilePages]] = []
        session: Session | None = None
        pidfd = -1
        try:
            creds = peer_credentials(conn)
            if creds.uid not in self._uids:
                raise PermissionError(f"uid {creds.uid} is not served by this pager")
            pidfd = _peer_pidfd(conn, creds)
            async with asyncio.timeout(self._handshake_timeout):
                session = await self._handshake(conn, creds, held)
            self._served += 1
            self._sessions.add(session)
            session.start_serving()
            await send_message_async(conn, encode({"ok": True}))
            await self._wait_for_end(conn, session, pidfd)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._refused += session is None
            if session is None:
                await self._refuse(conn, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            # At once, before any await: even a loop shutting down closes it.
            conn.close()
            if pidfd >= 0:
                os.close(pidfd)
            await finish_shielded(self._release(session, held))

    async def _handshake(
        self,
        conn: socket.socket,
        creds: PeerCredentials,
        held: list[tuple[CachedFile, FilePages]],
    ) -> Session:
        msg = await recv_message_async(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=0)
        request = decode_map_request(msg.data)
        cached_file = await self._engine.open_file(request.url, **request.options)
        try:
            size = cached_file.size
            assert size is not None  # open_file learnt it.
            if size == 0:
                raise ValueError(f"{request.url!r} is empty: there is nothing to map")
            pages = await self._pages_for(cached_file, creds.uid, request.url, size)
        except BaseException:
            await self._engine.close_file(cached_file)
            raise
        held.append((cached_file, pages))
        reply = {
            "ok": True,
            "size": pages.size,
            "length": pages.length,
            "pid": os.getpid(),
            "thread": self._thread,
        }
        await send_message_async(conn, encode(reply), [pages.fileno()])
        msg = await recv_message_async(conn, max_bytes=MAX_REQUEST_BYTES, max_fds=1)
        try:
            if len(msg.fds) != 1:
                raise ProtocolError(
                    f"register request: expected one descriptor, got {len(msg.fds)}"
                )
            reg = decode_register_request(msg.data)
            if reg.length != pages.length:
                raise ProtocolError(
                    f"register request: the region must be the whole mapping of "
                    f"{pages.length} bytes, got {reg.length}"
                )
            _check_mapped(creds.pid, reg.start, reg.length, pages.fileno())
            try:
                uffd = Userfaultfd.adopt(msg.fds[0], features=reg.features)
            except ValueError as exc:
                raise ProtocolError(f"register request: {exc}") from None
        except BaseException:
            close_fds(msg.fds)
            raise
        return Session(
            uffd=uffd,
            start=reg.start,
            pages=pages,
            cached_file=cached_file,
            policy=FaultAround(
                pages.length, initial=self._initial, maximum=self._maximum
            ),
            client_pid=creds.pid,
        )

    async def _pages_for(
        self, cached_file: CachedFile, uid: int, url: str, size: int
    ) -> FilePages:
        """The file's pages for clients of ``uid``, with one more user."""
        key = (id(cached_file), uid)
        found = self._files.get(key)
        if found is not None and found[0] is cached_file and found[1].size == size:
            found[1].users += 1
            return found[1]
        pages = FilePages(f"aiomemmap:{url[-160:]}", size)
        pages.users += 1
        if found is None:
            self._files[key] = (cached_file, pages)
        try:
            # Told of every invalidation of the file from now on.
            await cached_file.add_mapping(pages, _whole(pages), 0, False)
        except BaseException:
            await self._drop_user(cached_file, pages, mapped=False)
            raise
        return pages

    async def _drop_user(
        self, cached_file: CachedFile, pages: FilePages, *, mapped: bool = True
    ) -> None:
        pages.users -= 1
        if pages.users > 0:
            return
        key = next((k for k, v in self._files.items() if v[1] is pages), None)
        if key is not None:
            del self._files[key]
        if mapped:
            with contextlib.suppress(Exception):
                await cached_file.remove_mapping(pages, _whole(pages), 0, False)
        self._invalidations += pages.generation
        pages.close()

    @staticmethod
    async def _wait_for_end(conn: socket.socket, session: Session, pidfd: int) -> None:
        """Return when the client closes its end, breaks the rules, or is gone.

        Gone is the client's process exiting (its pidfd becomes readable),
        even while another process holds a copy of its socket.
        """
        # A message after the handshake, or a refused one, breaks the rules;
        # either way the connection ends.
        await _until_exit(
            pidfd,
            session.finished.wait(),
            recv_message_async(conn, max_bytes=1, max_fds=0),
        )

    async def _refuse(self, conn: socket.socket, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError | MessageTruncatedError | TimeoutError):
            kind = "protocol"
        elif isinstance(exc, FileNotFoundError):
            kind = "not_found"
        elif isinstance(exc, PermissionError):
            kind = "permission"
        elif isinstance(exc, ValueError | TypeError):
            kind = "value"
        else:
            kind = "os"
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"the handshake took longer than {self._handshake_timeout} s"
        try:
            # Best effort: the client may be gone, or not reading.
            conn.send(error_reply(kind, text))
            conn.shutdown(socket.SHUT_WR)
        except (OSError, ProtocolError):
            return
        # Closing with messages unread would reset the connection and lose
        # the refusal: read (and drop) what the client still sends, until it
        # closes its end, for a moment at most.
        with contextlib.suppress(OSError, TimeoutError, MessageTruncatedError):
            async with asyncio.timeout(_DRAIN_SECONDS):
                while True:
                    msg = await recv_message_async(
                        conn, max_bytes=MAX_REQUEST_BYTES, max_fds=MAX_MESSAGE_FDS
                    )
                    close_fds(msg.fds)
                    if not msg.data:
                        return

    async def _release(
        self,
        session: Session | None,
        held: list[tuple[CachedFile, FilePages]],
    ) -> None:
        if session is not None:
            self._sessions.discard(session)
            await session.aclose()
            self._counters.add(session.counters)
        for cached_file, pages in held:
            await self._drop_user(cached_file, pages)
            with contextlib.suppress(Exception):
                await self._engine.close_file(cached_file)
