"""Hostile clients: every bad handshake gets a clear error, and nothing leaks.

The pager runs in this process, so a descriptor it failed to close would show
in ``/proc/self/fd``; the engine's open files and the pager's counters show
everything else it held.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from aiomemmap import Engine, Pager
from aiomemmap._core.fdpass import (
    Message,
    close_fds,
    recv_message_async,
    send_message_async,
)
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import Userfaultfd, buffer_address
from aiomemmap.pager.protocol import MAX_REQUEST_BYTES

DEADLINE = 30.0


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "file.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    return path


@asynccontextmanager
async def serving(**options: object) -> AsyncIterator[tuple[Engine, Pager]]:
    async with Engine() as engine, Pager(engine, **options) as pager:  # type: ignore[arg-type]
        yield engine, pager


async def connect(pager: Pager) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, pager.socket_path)
    return sock


async def refusal(sock: socket.socket) -> dict[str, object]:
    """The pager's error reply, then the end of the connection."""
    msg = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES, max_fds=4)
    close_fds(msg.fds)
    reply = json.loads(msg.data)
    assert reply["ok"] is False
    assert await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES) == Message(
        b"", ()
    )
    return reply


async def settled(engine: Engine, pager: Pager, fds_before: set[int]) -> None:
    """Wait until the pager let go of everything; check no descriptor leaked."""
    while True:
        if not pager.statistics().connections and not engine.statistics().open_files:
            break
        await asyncio.sleep(0.01)
    stats = pager.statistics()
    assert (stats.clients, stats.files) == (0, 0)
    assert open_fds() <= fds_before


def map_request(url: str, **extra: object) -> bytes:
    return json.dumps({"op": "map", "version": 1, "url": url, **extra}).encode()


MALFORMED = {
    "not-json": b"\xff\xfe{",
    "not-an-object": b"[1, 2, 3]",
    "nan": b'{"op": "map", "version": NaN, "url": "x"}',
    "wrong-op": b'{"op": "unmap", "version": 1, "url": "x"}',
    "wrong-version": b'{"op": "map", "version": 2, "url": "x"}',
    "unknown-field": b'{"op": "map", "version": 1, "url": "x", "extra": 1}',
    "missing-url": b'{"op": "map", "version": 1}',
    "url-not-a-string": b'{"op": "map", "version": 1, "url": 5}',
    "url-with-nul": b'{"op": "map", "version": 1, "url": "a\\u0000b"}',
    "options-not-scalars": b'{"op": "map", "version": 1, "url": "x", '
    b'"options": {"a": [1]}}',
    "option-not-an-identifier": b'{"op": "map", "version": 1, "url": "x", '
    b'"options": {"a-b": 1}}',
    "oversized": b'{"op": "map", "version": 1, "url": "'
    + b"x" * MAX_REQUEST_BYTES
    + b'"}',
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_map_request_is_refused(payload: bytes) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            try:
                await send_message_async(sock, payload)
                reply = await refusal(sock)
                assert reply["error"] == "protocol"
            finally:
                sock.close()
            await settled(engine, pager, before)
            assert pager.statistics().refused == 1


async def test_a_map_request_carrying_descriptors_is_refused(data_file: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            fd = os.memfd_create("smuggled")
            try:
                await send_message_async(sock, map_request(str(data_file)), [fd])
                reply = await refusal(sock)
                assert reply["error"] == "protocol"
                assert "descriptors" in str(reply["message"])
            finally:
                os.close(fd)
                sock.close()
            await settled(engine, pager, before | {fd})


async def test_a_silent_client_is_cut_off_after_the_handshake_timeout() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving(handshake_timeout=0.2) as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            try:
                reply = await refusal(sock)
                assert reply["error"] == "protocol"
                assert "longer than 0.2" in str(reply["message"])
            finally:
                sock.close()
            await settled(engine, pager, before)


async def test_a_client_that_hangs_up_at_once_is_forgotten() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (engine, pager):
            before = open_fds()
            for _ in range(5):
                (await connect(pager)).close()
            await asyncio.sleep(0.05)
            await settled(engine, pager, before)


async def test_another_uid_is_refused_by_credentials(data_file: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving(allowed_uids={os.getuid() + 1}) as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            try:
                await send_message_async(sock, map_request(str(data_file)))
                reply = await refusal(sock)
                assert reply["error"] == "permission"
                assert f"uid {os.getuid()}" in str(reply["message"])
            finally:
                sock.close()
            await settled(engine, pager, before)


def connect_as_nobody(path: str) -> str:
    """In a forked child running as uid 65534, try to connect to ``path``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # The child: no Python-level cleanup, straight to _exit.
        outcome = b"connected"
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
        except PermissionError:
            outcome = b"refused"
        except BaseException:
            outcome = b"failed"
        os.write(w, outcome)
        os._exit(0)
    os.close(w)
    try:
        _, status = os.waitpid(pid, 0)
        assert status == 0
        return os.read(r, 64).decode()
    finally:
        os.close(r)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as nobody")
async def test_another_uid_cannot_even_reach_the_socket() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (_, pager):
            assert os.stat(pager.socket_path).st_mode & 0o777 == 0o600
            assert os.stat(os.path.dirname(pager.socket_path)).st_mode & 0o777 == 0o700
            outcome = await asyncio.to_thread(connect_as_nobody, pager.socket_path)
            assert outcome == "refused"


async def mapped(sock: socket.socket, url: str) -> tuple[int, dict[str, int]]:
    """Do step 1 of the handshake; return the memfd and the reply."""
    await send_message_async(sock, map_request(url))
    msg = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES, max_fds=1)
    reply = json.loads(msg.data)
    assert reply["ok"] is True
    (memfd,) = msg.fds
    return memfd, reply


def register_request(start: int, length: int) -> bytes:
    return json.dumps(
        {"op": "register", "start": start, "length": length, "features": 0, "ioctls": 0}
    ).encode()


@pytest.mark.parametrize(
    "case",
    ["wrong-length", "no-descriptor", "two-descriptors", "a-pipe", "not-where-mapped"],
)
async def test_a_bad_registration_is_refused_and_everything_released(
    data_file: Path, case: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            memfd, reply = await mapped(sock, str(data_file))
            length = reply["length"]
            # The pager's memfd is sealed: nobody can resize it.
            with pytest.raises(PermissionError):
                os.ftruncate(memfd, length * 2)
            region = mmap.mmap(
                memfd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ
            )
            anon = mmap.mmap(-1, length)
            uffd = Userfaultfd.create()
            r, w = os.pipe()
            try:
                with buffer_address(region) as (start, _):
                    pass
                with buffer_address(anon) as (elsewhere, _):
                    pass
                uffd.register(start, length)
                uffd.register(elsewhere, length)
                message, fds = register_request(start, length), [uffd.fileno()]
                if case == "wrong-length":
                    message = register_request(start, length + PAGE_SIZE)
                elif case == "no-descriptor":
                    fds = []
                elif case == "two-descriptors":
                    fds = [uffd.fileno(), r]
                elif case == "a-pipe":
                    fds = [r]
                elif case == "not-where-mapped":
                    message = register_request(elsewhere, length)
                await send_message_async(sock, message, fds)
                refused = await refusal(sock)
                assert refused["error"] == "protocol"
            finally:
                sock.close()
                uffd.close()
                region.close()
                anon.close()
                os.close(memfd)
                os.close(r)
                os.close(w)
            await settled(engine, pager, before)
            assert pager.statistics().refused == 1


async def test_a_message_after_the_handshake_ends_the_service(data_file: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (engine, pager):
            before = open_fds()
            sock = await connect(pager)
            memfd, reply = await mapped(sock, str(data_file))
            length = reply["length"]
            region = mmap.mmap(
                memfd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ
            )
            uffd = Userfaultfd.create()
            try:
                with buffer_address(region) as (start, _):
                    pass
                uffd.register(start, length)
                await send_message_async(
                    sock, register_request(start, length), [uffd.fileno()]
                )
                ok = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES)
                assert json.loads(ok.data) == {"ok": True}
                assert pager.statistics().clients == 1
                await send_message_async(sock, b'{"op": "map"}')
                end = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES)
                assert end == Message(b"", ())
            finally:
                sock.close()
                uffd.close()
                region.close()
                os.close(memfd)
            await settled(engine, pager, before)


FAULT_OUTSIDE = textwrap.dedent(
    """
    import ctypes, json, mmap, os, socket, sys, threading
    from aiomemmap._core.fdpass import recv_message, send_message
    from aiomemmap._core.uffd import Userfaultfd, buffer_address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(20)
    sock.connect(sys.argv[1])
    req = {"op": "map", "version": 1, "url": sys.argv[2]}
    send_message(sock, json.dumps(req).encode())
    msg = recv_message(sock, max_bytes=65536, max_fds=1)
    length = json.loads(msg.data)["length"]
    region = mmap.mmap(msg.fds[0], length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    extra = mmap.mmap(-1, 4096)
    with buffer_address(region) as (start, _):
        pass
    with buffer_address(extra) as (other, _):
        pass
    u = Userfaultfd.create()
    u.register(start, length)
    u.register(other, 4096)   # registered, but not declared to the pager
    req = {"op": "register", "start": start, "length": length, "features": 0,
           "ioctls": 0}
    send_message(sock, json.dumps(req).encode(), [u.fileno()])
    assert json.loads(recv_message(sock, max_bytes=65536).data) == {"ok": True}
    out = ctypes.create_string_buffer(16)
    threading.Thread(target=ctypes.memmove, args=(out, other, 16), daemon=True).start()
    end = recv_message(sock, max_bytes=65536)
    print("closed" if end.data == b"" else "still open", flush=True)
    os._exit(0)
    """
)


async def test_a_fault_outside_the_declared_region_ends_the_service(
    data_file: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as (_, pager):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                FAULT_OUTSIDE,
                pager.socket_path,
                str(data_file),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert out.decode().strip() == "closed", err.decode()
            while True:
                if not pager.statistics().connections:
                    break
                await asyncio.sleep(0.01)
            stats = pager.statistics()
            assert stats.faults == 1
            assert stats.bytes_installed == 0


UNMAPS_WHILE_FAULTING = textwrap.dedent(
    """
    import ctypes, json, sys, threading, time
    from aiomemmap import map_file
    from aiomemmap._core.fdpass import recv_message

    region = map_file(sys.argv[1], engine=sys.argv[2], watchdog=False)
    outcome = {}

    def touch():
        try:
            region.read(region.size // 2, 10)
            outcome["read"] = "served"
        except OSError as exc:
            outcome["read"] = type(exc).__name__

    reader = threading.Thread(target=touch, daemon=True)
    reader.start()
    time.sleep(0.3)   # The fault is queued; its fetch waits for the server.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    assert libc.munmap(region.address, (region.size + 4095) // 4096 * 4096) == 0
    # The pager finds the range gone when it copies, and ends the service.
    end = recv_message(region._conn, max_bytes=64)
    outcome["connection"] = "closed" if end.data == b"" else "open"
    print(json.dumps(outcome), flush=True)
    import os
    os._exit(0)
    """
)


async def test_a_client_that_unmaps_while_faulting_is_dropped() -> None:
    from aiomemmap.tools.http_server import RangeHTTPServer

    data = bytes(range(256)) * 32 * 1024  # 8 MiB
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server, serving() as (engine, pager):
            server.add("slow", data)
            url = server.url("slow")
            cached = await engine.open_file(url)
            server.latency = 1.0
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    UNMAPS_WHILE_FAULTING,
                    url,
                    pager.address,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                assert json.loads(out)["connection"] == "closed"
                while True:
                    if not pager.statistics().connections:
                        break
                    await asyncio.sleep(0.01)
                stats = pager.statistics()
                assert (stats.files, stats.bytes_installed) == (0, 0)
                assert stats.faults == 1
            finally:
                await engine.close_file(cached)
