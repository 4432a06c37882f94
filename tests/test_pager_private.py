"""Private regions: copy-on-write mappings of a file's pages, filled through them.

Clients are real processes driven line by line over their standard input
(each command answered by one JSON line), so that a test can interleave
their touches with what the engine does; checked reads in this process
run on worker threads while the Pager serves them on the test's loop.
Every wait is under a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiomemmap import BusError, Engine, Pager, map_file
from aiomemmap._core.fdpass import (
    close_fds,
    recv_message_async,
    send_message_async,
)
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    FEATURE_MINOR_SHMEM,
    REGISTER_MODE_MINOR,
    REGISTER_MODE_MISSING,
    Userfaultfd,
    buffer_address,
)
from aiomemmap.pager.fault_around import FaultAround
from aiomemmap.pager.file_pages import FilePages
from aiomemmap.pager.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    decode_register_request,
)
from aiomemmap.pager.session import Session
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 90.0
MiB = 1 << 20

CLIENT = textwrap.dedent(
    """
    import ctypes, hashlib, json, sys
    from aiomemmap import map_file

    url, address, kind = sys.argv[1:4]
    region = map_file(
        url, engine=address, private=kind != "shared", writable=kind == "writable"
    )

    def say(**fields):
        print(json.dumps(fields), flush=True)

    say(private=region.private, writable=region.writable, size=region.size)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "sha":
            say(sha=hashlib.sha256(region).hexdigest())
        elif op == "read":
            say(hex=region[cmd["at"] : cmd["at"] + cmd["n"]].hex())
        elif op == "checked":
            try:
                say(hex=region.read(cmd["at"], cmd["n"]).hex())
            except OSError as exc:
                say(error=type(exc).__name__)
        elif op == "write":
            data = bytes.fromhex(cmd["hex"])
            try:
                region[cmd["at"] : cmd["at"] + len(data)] = data
                say(ok=True)
            except TypeError as exc:
                say(error=type(exc).__name__)
        elif op == "poke":
            print("poking", flush=True)
            ctypes.memmove(region.address + cmd["at"], b"x", 1)
            say(ok=True)
    region.close()
    """
)


def content(n: int, seed: int) -> bytes:
    """Deterministic bytes, every page distinct."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Client:
    """A client process mapping one file, driven by commands."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, address: str, kind: str) -> tuple[Client, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            url,
            address,
            kind,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        client = cls(proc)
        return client, await client.answer()

    async def answer(self) -> Any:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                assert self.proc.stderr is not None
                err = await self.proc.stderr.read()
                raise AssertionError(f"the client ended: {err.decode()}")
            if line.startswith(b"{"):
                return json.loads(line)

    async def ask(self, op: str, **fields: object) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.answer()

    async def finish(self) -> tuple[int, bytes]:
        """Close its input (it closes its region and exits); its status, stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        _, err = await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode, err


async def settle(engine: Engine, pager: Pager) -> None:
    """Wait until the pager has released every client."""
    while True:
        if not pager.statistics().connections and not engine.statistics().open_files:
            break
        await asyncio.sleep(0.01)
    assert pager.statistics().files == 0


async def test_a_private_region_reads_the_file_and_keeps_its_writes_to_itself(
    tmp_path: Path,
) -> None:
    data = content(3 * MiB + 1234, seed=1)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    at = MiB + 100
    mine = b"written by the private client"
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            url = str(path)
            writer, hello = await Client.start(url, pager.address, "writable")
            assert hello == {"private": True, "writable": True, "size": len(data)}
            shared, hello = await Client.start(url, pager.address, "shared")
            assert hello == {"private": False, "writable": False, "size": len(data)}
            reader, hello = await Client.start(url, pager.address, "private")
            assert hello == {"private": True, "writable": False, "size": len(data)}
            for client in (writer, shared, reader):
                assert (await client.ask("sha"))["sha"] == sha(data)
            assert await writer.ask("write", at=at, hex=mine.hex()) == {"ok": True}
            got = await writer.ask("read", at=at, n=len(mine))
            assert bytes.fromhex(got["hex"]) == mine
            got = await writer.ask("checked", at=at - 4, n=len(mine) + 8)
            assert (
                bytes.fromhex(got["hex"])
                == data[at - 4 : at] + mine + data[at + len(mine) : at + len(mine) + 4]
            )
            # Nobody else sees the write: not the other clients, nor the engine.
            for client in (shared, reader):
                got = await client.ask("read", at=at, n=len(mine))
                assert bytes.fromhex(got["hex"]) == data[at : at + len(mine)]
            cached = await engine.open_file(url)
            try:
                assert await cached.read(at, len(mine)) == data[at : at + len(mine)]
            finally:
                await engine.close_file(cached)
            assert path.read_bytes() == data
            # A new private client starts from the file, not from the writes.
            late, _ = await Client.start(url, pager.address, "writable")
            assert (await late.ask("sha"))["sha"] == sha(data)
            for client in (writer, shared, reader, late):
                status, err = await client.finish()
                assert status == 0, err.decode()
            await settle(engine, pager)
            stats = pager.statistics()
            assert stats.clients_served == 4
            assert (stats.refused, stats.poisoned) == (0, 0)


@pytest.mark.parametrize("invalidation", ["revalidate", "evict"])
async def test_clean_pages_follow_the_file_written_pages_survive(
    invalidation: str,
) -> None:
    size = 8 * MiB
    old = content(size, seed=2)
    new = content(size, seed=3) if invalidation == "revalidate" else old
    page = 5 * MiB // PAGE_SIZE
    at = page * PAGE_SIZE + 100
    mine = b"copy-on-write"
    limit = MiB if invalidation == "evict" else None
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("obj", old)
            url = server.url("obj")
            async with Engine(cache_limit=limit) as engine, Pager(engine) as pager:
                cached = await engine.open_file(url)
                writer, _ = await Client.start(url, pager.address, "writable")
                try:
                    assert (await writer.ask("sha"))["sha"] == sha(old)
                    assert await writer.ask("write", at=at, hex=mine.hex()) == {
                        "ok": True
                    }
                    before = pager.statistics().invalidations
                    if invalidation == "revalidate":
                        server.replace("obj", new)
                        assert await cached.revalidate()
                    else:
                        # Another scan through the cache evicts every page.
                        for offset in range(0, size, MiB):
                            assert (
                                await cached.read(offset, MiB)
                                == old[offset : offset + MiB]
                            )
                    assert pager.statistics().invalidations > before
                    installed = pager.statistics().bytes_installed
                    want = bytearray(new)
                    written = page * PAGE_SIZE
                    want[written : written + PAGE_SIZE] = old[
                        written : written + PAGE_SIZE
                    ]
                    want[at : at + len(mine)] = mine
                    assert (await writer.ask("sha"))["sha"] == sha(bytes(want))
                    # The clean pages were served again, the written one not.
                    refaulted = pager.statistics().bytes_installed - installed
                    assert refaulted > 0
                finally:
                    status, err = await writer.finish()
                    await engine.close_file(cached)
                assert status == 0, err.decode()
                await settle(engine, pager)


async def test_a_read_only_private_region_refuses_writes(tmp_path: Path) -> None:
    data = content(MiB, seed=4)
    path = tmp_path / "ro.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            client, hello = await Client.start(str(path), pager.address, "private")
            assert hello["writable"] is False
            got = await client.ask("write", at=0, hex="00")
            assert got == {"error": "TypeError"}
            assert (await client.ask("sha"))["sha"] == sha(data)
            assert client.proc.stdin is not None
            client.proc.stdin.write(b'{"op": "poke", "at": 4096}\n')
            await client.proc.stdin.drain()
            client.proc.stdin.close()
            out, err = await client.proc.communicate()
            assert client.proc.returncode == -signal.SIGSEGV, err.decode()
            assert b"poking" in out
            assert b'"ok"' not in out
            await settle(engine, pager)
            assert path.read_bytes() == data


async def test_a_page_that_cannot_be_read_is_poisoned_in_a_private_region() -> None:
    data = content(4 * MiB, seed=5)
    middle = len(data) // 2
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("flaky", data)
            url = server.url("flaky")
            async with Engine() as engine, Pager(engine) as pager:
                cached = await engine.open_file(url)
                server.remove("flaky")
                try:
                    # Another process: the checked read fails, the raw one
                    # dies with SIGBUS; never zeros.
                    client, _ = await Client.start(url, pager.address, "writable")
                    got = await client.ask("checked", at=middle, n=100)
                    assert got == {"error": "BusError"}
                    assert client.proc.stdin is not None
                    client.proc.stdin.write(
                        json.dumps({"op": "read", "at": middle, "n": 100}).encode()
                        + b"\n"
                    )
                    client.proc.stdin.close()
                    out, err = await client.proc.communicate()
                    assert client.proc.returncode == -signal.SIGBUS, err.decode()
                    assert b"Bus error" in err
                    assert b'"hex"' not in out
                    assert pager.statistics().poisoned >= 1
                    # This process: poisoned, then repaired once the bytes come.
                    region = await asyncio.to_thread(
                        map_file, url, engine=pager.address, private=True
                    )
                    try:
                        with pytest.raises(BusError):
                            await asyncio.to_thread(region.read, middle, 100)
                        server.add("flaky", data)  # The same bytes and ETag.
                        while True:
                            try:
                                got = await asyncio.to_thread(region.read, middle, 100)
                            except BusError:
                                await asyncio.sleep(0.02)
                                continue
                            break
                        assert got == data[middle : middle + 100]
                        assert pager.statistics().repaired >= 1
                        whole = await asyncio.to_thread(region.read, 0, len(data))
                        assert whole == data
                    finally:
                        region.close()
                finally:
                    await engine.close_file(cached)
                await settle(engine, pager)


async def test_many_shared_and_private_clients_on_one_file_under_evictions(
    tmp_path: Path,
) -> None:
    """Shared clients see only whole pages while private ones publish them.

    A small cache budget keeps the engine punching pages out while every
    client scans, and page-sized chunks make private publishes and shared
    faults meet on the same pages: a shared client seeing a page half
    written would see its hash differ.
    """
    data = content(4 * MiB, seed=6)
    path = tmp_path / "mixed.bin"
    path.write_bytes(data)
    kinds = ["shared", "private", "shared", "writable", "shared", "private"]
    mine = b"only in the writer"
    with anyio.fail_after(DEADLINE):
        async with (
            Engine(cache_limit=MiB) as engine,
            Pager(engine, fault_around=PAGE_SIZE, max_fault_around=PAGE_SIZE) as pager,
        ):
            started = await asyncio.gather(
                *(Client.start(str(path), pager.address, kind) for kind in kinds)
            )
            clients = [client for client, _ in started]
            for _ in range(3):
                answers = await asyncio.gather(*(c.ask("sha") for c in clients))
                assert [a["sha"] for a in answers] == [sha(data)] * len(clients)
            writer = clients[kinds.index("writable")]
            assert await writer.ask("write", at=0, hex=mine.hex()) == {"ok": True}
            answers = await asyncio.gather(*(c.ask("sha") for c in clients))
            want = sha(mine + data[len(mine) :])
            for kind, answer in zip(kinds, answers, strict=True):
                assert answer["sha"] == (want if kind == "writable" else sha(data))
            for client in clients:
                status, err = await client.finish()
                assert status == 0, err.decode()
            await settle(engine, pager)
            stats = pager.statistics()
            assert stats.clients_served == len(kinds)
            assert stats.invalidations > 0
            assert (stats.refused, stats.poisoned) == (0, 0)


async def test_bad_arguments_are_refused_before_anything_is_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "args.bin"
    path.write_bytes(content(64 * 1024, seed=7))
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            fds = set(os.listdir("/proc/self/fd"))
            with pytest.raises(TypeError, match="private"):
                map_file(str(path), engine=pager.address, private="yes")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="writable"):
                map_file(str(path), engine=pager.address, private=True, writable=1)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="private=True"):
                map_file(str(path), engine=pager.address, writable=True)
            await asyncio.sleep(0.05)
            stats = pager.statistics()
            assert (stats.connections, stats.clients_served, stats.refused) == (0, 0, 0)
            assert engine.statistics().open_files == 0
            assert set(os.listdir("/proc/self/fd")) == fds
            # The allowed combinations map (all at once: a region mapped where
            # one just closed could be poisoned by the closed one's service).
            regions = []
            try:
                for private, writable in ((False, False), (True, False), (True, True)):
                    region = await asyncio.to_thread(
                        map_file,
                        str(path),
                        engine=pager.address,
                        private=private,
                        writable=writable,
                    )
                    regions.append(region)
                    assert (region.private, region.writable) == (private, writable)
                    view = memoryview(region)
                    assert view.readonly is not writable
                    view.release()
                    got = await asyncio.to_thread(region.read, 0, 64 * 1024)
                    assert got == path.read_bytes()
            finally:
                for region in regions:
                    region.close()
            await settle(engine, pager)


def test_the_register_request_carries_the_kind() -> None:
    base = {"op": "register", "start": 0x10000, "length": 8192}
    base |= {"features": 0, "ioctls": 0}
    assert decode_register_request(json.dumps(base).encode()).private is False
    for value in (True, False):
        got = decode_register_request(json.dumps(base | {"private": value}).encode())
        assert got.private is value
    for bad in ("yes", 1, None):
        with pytest.raises(ProtocolError, match="private"):
            decode_register_request(json.dumps(base | {"private": bad}).encode())


async def _handshake(pager: Pager, url: str) -> tuple[socket.socket, int, int]:
    """Connect and ask for ``url``: the socket, the memfd and its length."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, pager.socket_path)
    await send_message_async(
        sock, json.dumps({"op": "map", "version": 1, "url": url}).encode()
    )
    msg = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES, max_fds=1)
    reply = json.loads(msg.data)
    assert reply["ok"] is True
    return sock, msg.fds[0], reply["length"]


@pytest.mark.parametrize(
    "case", ["private-missing-only", "shared-with-minor", "private-said-yes"]
)
async def test_a_registration_that_does_not_match_the_mapping_is_refused(
    tmp_path: Path, case: str
) -> None:
    path = tmp_path / "hostile.bin"
    path.write_bytes(content(256 * 1024, seed=8))
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            fds = {int(fd) for fd in os.listdir("/proc/self/fd")}
            sock, memfd, length = await _handshake(pager, str(path))
            private = case.startswith("private")
            flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
            region = mmap.mmap(memfd, length, flags=flags, prot=mmap.PROT_READ)
            uffd = Userfaultfd.create(features=FEATURE_MINOR_SHMEM)
            try:
                with buffer_address(region) as (start, _):
                    pass
                mode = REGISTER_MODE_MISSING
                if case == "shared-with-minor":
                    mode |= REGISTER_MODE_MINOR
                uffd.register(start, length, mode)
                request = {
                    "op": "register",
                    "start": start,
                    "length": length,
                    "features": uffd.features,
                    "ioctls": 0,
                    "private": "yes" if case == "private-said-yes" else private,
                }
                await send_message_async(
                    sock, json.dumps(request).encode(), [uffd.fileno()]
                )
                msg = await recv_message_async(sock, max_bytes=MAX_REQUEST_BYTES)
                close_fds(msg.fds)
                reply = json.loads(msg.data)
                assert reply["ok"] is False
                assert reply["error"] == "protocol"
                assert "register request" in reply["message"]
            finally:
                sock.close()
                uffd.close()
                region.close()
                os.close(memfd)
            await settle(engine, pager)
            assert pager.statistics().refused == 1
            assert {int(fd) for fd in os.listdir("/proc/self/fd")} <= fds


@pytest.mark.parametrize("said_private", [False, True])
async def test_a_session_refuses_a_client_that_maps_otherwise_than_it_said(
    tmp_path: Path, said_private: bool
) -> None:
    path = tmp_path / "liar.bin"
    path.write_bytes(content(128 * 1024, seed=9))
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine:
            cached = await engine.open_file(str(path))
            pages = FilePages("liar", 128 * 1024)
            flags = mmap.MAP_SHARED if said_private else mmap.MAP_PRIVATE
            region = mmap.mmap(pages.fileno(), pages.length, flags=flags)
            uffd = Userfaultfd.create(features=FEATURE_MINOR_SHMEM)
            try:
                with buffer_address(region) as (start, _):
                    pass
                mode = REGISTER_MODE_MISSING
                if not said_private:
                    mode |= REGISTER_MODE_MINOR
                uffd.register(start, pages.length, mode)
                said, maps = ("private", "shared")[:: 1 if said_private else -1]
                with pytest.raises(ProtocolError, match=f"{said}.*maps it {maps}"):
                    Session(
                        uffd=uffd,
                        start=start,
                        pages=pages,
                        cached_file=cached,
                        policy=FaultAround(pages.length),
                        client_pid=os.getpid(),
                        private=said_private,
                    )
                assert uffd.closed
                # Said as mapped, or not said at all, it is served.
                for kind in (not said_private, None):
                    again = Userfaultfd.create(features=FEATURE_MINOR_SHMEM)
                    region.close()
                    region = mmap.mmap(pages.fileno(), pages.length, flags=flags)
                    with buffer_address(region) as (start, _):
                        pass
                    again.register(start, pages.length, mode)
                    session = Session(
                        uffd=again,
                        start=start,
                        pages=pages,
                        cached_file=cached,
                        policy=FaultAround(pages.length),
                        client_pid=os.getpid(),
                        private=kind,
                    )
                    assert session.private is not said_private
                    await session.aclose()
                    assert again.closed
            finally:
                uffd.close()
                region.close()
                pages.close()
                await engine.close_file(cached)


@pytest.mark.parametrize("private", [False, True])
async def test_a_region_mapped_where_a_closed_one_was_is_not_poisoned_by_it(
    tmp_path: Path, private: bool
) -> None:
    """Closing a region ends its service without touching what is mapped next.

    The next region of the same file usually lands at the same addresses;
    the closed region's service, ending a moment later, must not poison it.
    """
    data = content(MiB, seed=10)
    path = tmp_path / "again.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            addresses = set()
            for _ in range(12):
                region = await asyncio.to_thread(
                    map_file, str(path), engine=pager.address, private=private
                )
                try:
                    addresses.add(region.address)
                    got = await asyncio.to_thread(region.read, 0, len(data))
                    assert got == data
                finally:
                    region.close()
            assert len(addresses) < 12  # Addresses were reused.
            await settle(engine, pager)
            assert pager.statistics().poisoned == 0
