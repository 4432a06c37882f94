"""Who a pager serves, and how long: other uids, and clients whose process exits.

A pager that allows other uids opens its socket to them and lets the peer's
credentials decide; one that does not keeps them out of the socket itself.
Clients of other uids are real processes that drop to uid 65534 and speak
the protocol themselves, with a userfaultfd of the kind such a process may
have (user-mode faults only). The pager runs in this process, so a
descriptor it failed to close shows in ``/proc/self/fd``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from aiomemmap import Engine, Pager, page_round_up

DEADLINE = 60.0
NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a client as another uid"
)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def content(n: int) -> bytes:
    block = hashlib.sha256(b"access").digest() * 128
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "file.bin"
    path.write_bytes(content(3 * (1 << 20) + 1234))
    return path


async def settle(engine: Engine, pager: Pager) -> None:
    """Wait until the pager has let go of every connection and file."""
    while True:
        stats = pager.statistics()
        idle = not stats.connections and not stats.files
        if idle and engine.statistics().open_files == 0:
            return
        await asyncio.sleep(0.01)


# A client of another uid, at the protocol's level: it drops to the uid
# first, then maps the file, registers a user-mode-only userfaultfd (all such
# a process may have) and touches every page from user mode.
FOREIGN_CLIENT = textwrap.dedent(
    """
    import ctypes, hashlib, json, mmap, os, socket, sys
    from aiomemmap._core.fdpass import close_fds, recv_message, send_message
    from aiomemmap._core.uffd import Userfaultfd, buffer_address
    from aiomemmap.pager.protocol import (
        MAX_REQUEST_BYTES, decode_map_reply, decode_status, encode)

    path, url, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    out = {"uid": os.getuid()}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(30)
    try:
        sock.connect(path)
    except OSError as exc:
        out["connect"] = exc.errno
        print(json.dumps(out), flush=True)
        sys.exit(0)
    send_message(sock, encode({"op": "map", "version": 1, "url": url}))
    msg = recv_message(sock, max_bytes=MAX_REQUEST_BYTES, max_fds=1)
    try:
        decode_status(msg.data, "map reply")
    except OSError as exc:
        out["refused"] = [type(exc).__name__, str(exc)]
        out["fds"] = len(msg.fds)
        close_fds(msg.fds)
        out["end"] = recv_message(sock, max_bytes=MAX_REQUEST_BYTES).data.hex()
        print(json.dumps(out), flush=True)
        sys.exit(0)
    reply = decode_map_reply(msg.data)
    region = mmap.mmap(msg.fds[0], reply.length, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ)
    close_fds(msg.fds)
    with buffer_address(region) as (start, _):
        pass
    uffd = Userfaultfd.create()
    out["user_mode_only"] = uffd.user_mode_only
    ioctls = uffd.register(start, reply.length)
    send_message(sock, encode({"op": "register", "start": start,
                               "length": reply.length,
                               "features": uffd.features, "ioctls": ioctls}),
                 [uffd.fileno()])
    decode_status(recv_message(sock, max_bytes=MAX_REQUEST_BYTES).data, "register")
    # User-mode touches only: a kernel copy of a missing page would fail.
    copy = ctypes.create_string_buffer(reply.size)
    ctypes.memmove(copy, start, reply.size)
    out["sha256"] = hashlib.sha256(copy.raw).hexdigest()
    out["size"] = reply.size
    print(json.dumps(out), flush=True)
    """
)


async def run_foreign(path: str, url: str, uid: int = NOBODY) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FOREIGN_CLIENT,
        path,
        url,
        str(uid),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report: dict[str, object] = json.loads(out)
    assert report["uid"] == uid
    return report


@needs_root
async def test_an_allowed_uid_is_served(data_file: Path) -> None:
    data = await anyio.Path(data_file).read_bytes()
    with anyio.fail_after(DEADLINE):
        async with (
            Engine() as engine,
            Pager(engine, allowed_uids={os.getuid(), NOBODY}) as pager,
        ):
            assert pager.open_to_others
            assert pager.allowed_uids == {os.getuid(), NOBODY}
            path = pager.socket_path
            assert os.stat(path).st_mode & 0o777 == 0o666
            assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o711
            report = await run_foreign(path, str(data_file))
            assert report["user_mode_only"] is True
            assert report["size"] == len(data)
            assert report["sha256"] == hashlib.sha256(data).hexdigest()
            await settle(engine, pager)
            stats = pager.statistics()
            assert (stats.clients_served, stats.refused, stats.poisoned) == (1, 0, 0)
            assert stats.bytes_installed == page_round_up(len(data))
            assert engine.memory_file.statistics().used_bytes == 0


@needs_root
async def test_a_uid_not_allowed_reaches_the_socket_and_is_refused(
    data_file: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            Engine() as engine,
            Pager(engine, allowed_uids={os.getuid(), NOBODY - 1}) as pager,
        ):
            assert pager.open_to_others
            # The loop's own first subprocess may open what it keeps (uvloop
            # keeps /dev/null): that is not the pager's.
            warm = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "", stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            await warm.communicate()
            before = open_fds()
            report = await run_foreign(pager.socket_path, str(data_file))
            kind, message = report["refused"]  # type: ignore[misc]
            assert kind == "PermissionError"
            assert f"uid {NOBODY} is not served" in message
            # Refused before anything was opened: no descriptor came, and
            # the connection ended.
            assert (report["fds"], report["end"]) == (0, "")
            await settle(engine, pager)
            stats = pager.statistics()
            assert (stats.refused, stats.clients_served) == (1, 0)
            assert (stats.clients, stats.files, stats.faults) == (0, 0, 0)
            assert engine.statistics().files_opened == 0
            extra = open_fds() - before
            assert not extra, [os.readlink(f"/proc/self/fd/{fd}") for fd in extra]


@needs_root
@pytest.mark.parametrize("allowed", [None, "own"], ids=["default", "own-uid-only"])
async def test_by_default_other_uids_cannot_reach_the_socket(
    data_file: Path, allowed: str | None
) -> None:
    uids = None if allowed is None else {os.getuid()}
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine, allowed_uids=uids) as pager:
            assert not pager.open_to_others
            path = pager.socket_path
            assert os.stat(path).st_mode & 0o777 == 0o600
            assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
            report = await run_foreign(path, str(data_file))
            assert report["connect"] == 13  # EACCES
            stats = pager.statistics()
            assert (stats.refused, stats.clients_served) == (0, 0)


async def test_the_firecracker_socket_follows_the_allowed_uids(
    tmp_path: Path, data_file: Path
) -> None:
    with anyio.fail_after(DEADLINE):
        for uids, mode in (({os.getuid()}, 0o600), ({os.getuid(), NOBODY}, 0o666)):
            async with Engine() as engine, Pager(engine, allowed_uids=uids) as pager:
                path = tmp_path / f"fc-{mode:o}.sock"
                await pager.serve_firecracker(path, str(data_file))
                assert os.stat(path).st_mode & 0o777 == mode
                assert os.stat(pager.socket_path).st_mode & 0o777 == mode


# A client that forks a child holding its pager socket (and so keeping the
# connection open), then waits to be killed.
FORKING_CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    from aiomemmap import map_file

    region = map_file(sys.argv[1], engine=sys.argv[2])
    head = region.read(0, 16).hex()
    sock = region._conn
    child = os.fork()
    if child == 0:
        # Keeps a copy of the socket until its standard input closes.
        keep = os.dup(sock.fileno())
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.read(0, 1)
        os._exit(0)
    print(json.dumps({"head": head, "child": child}), flush=True)
    time.sleep(3600)
    """
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_client_that_dies_while_its_socket_lives_on_is_freed(
    data_file: Path,
) -> None:
    data = await anyio.Path(data_file).read_bytes()
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            baseline = engine.memory_file.statistics().used_bytes
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                FORKING_CLIENT,
                str(data_file),
                pager.address,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            child = 0
            try:
                assert proc.stdout is not None
                assert proc.stdin is not None
                line = await proc.stdout.readline()
                assert line, (await proc.communicate())[1].decode()
                report = json.loads(line)
                child = report["child"]
                assert report["head"] == data[:16].hex()
                stats = pager.statistics()
                assert (stats.clients, stats.files) == (1, 1)
                assert stats.resident_bytes > 0
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # The connection is still open in the child: only the
                # client's exit tells the pager.
                await settle(engine, pager)
                assert alive(child)
                stats = pager.statistics()
                assert (stats.clients, stats.files, stats.resident_bytes) == (0, 0, 0)
                assert engine.memory_file.statistics().used_bytes == baseline
                assert stats.clients_served == 1
            finally:
                if proc.returncode is None:
                    proc.kill()
                if proc.stdin is not None:
                    proc.stdin.close()
                await proc.communicate()
                if child and alive(child):
                    os.kill(child, signal.SIGKILL)


async def test_serve_opens_its_socket_to_the_uids_it_is_told_to_allow() -> None:
    from aiomemmap.pager.serve import main, serve

    with pytest.raises(SystemExit):
        main(["--allow-uid", "-3"])
    with anyio.fail_after(DEADLINE):
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        uids = {os.getuid(), NOBODY}
        task = asyncio.create_task(serve(allowed_uids=uids, ready=ready))
        try:
            address = await ready
            path = address.removeprefix("unix:")
            assert os.stat(path).st_mode & 0o777 == 0o666
            assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o711
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not await anyio.Path(path).exists()
