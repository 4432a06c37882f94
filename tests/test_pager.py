"""Real memory end to end: client processes map files that a Pager serves.

The engine and its Pager run on the test's event loop; each client is a
real process that calls ``map_file`` and touches its region (raw buffer
access, as numpy or hashlib do, and the checked reads). Every wait is under
a deadline.
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
from typing import Any

import anyio
import pytest

from aiomemmap import (
    BusError,
    Engine,
    Pager,
    WrongLoopError,
    map_file,
    page_round_up,
)
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 60.0
MiB = 1 << 20

CLIENT = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from aiomemmap import map_file

    url, address, mode = sys.argv[1:4]
    region = map_file(url, engine=None if address == "child" else address)
    out = {"size": region.size, "len": len(region)}
    if mode == "scan" and address == "child":
        import aiomemmap.pager.client as client
        out["child"] = client._child[1].pid
    if mode == "scan":
        out["cold"] = hashlib.sha256(region).hexdigest()
        out["warm"] = hashlib.sha256(region).hexdigest()
        n = region.size
        out["reads"] = [
            region.read(0, 10).hex(),
            region.read(n - 5, 100).hex(),
            region.read(n, 10).hex(),
        ]
        buf = bytearray(4096)
        out["readinto"] = region.readinto(n // 2, buf)
        out["readinto_sha"] = hashlib.sha256(buf).hexdigest()
    elif mode == "hold":
        out["head"] = region.read(0, 16).hex()
        print(json.dumps(out), flush=True)
        time.sleep(3600)
    elif mode.startswith("wait-"):
        print(json.dumps({"mapped": True}), flush=True)
        sys.stdin.readline()
        mode = mode[5:]
    if mode == "checked":
        try:
            region.read(region.size // 2, 100)
            out["error"] = None
        except OSError as exc:
            out["error"] = type(exc).__name__
            out["errno"] = exc.errno
            out["is_bus_error"] = type(exc).__mro__[1].__name__
    elif mode == "raw":
        print("touching", flush=True)
        bytes(region[len(region) // 2 : len(region) // 2 + 100])
        out["survived"] = True
    region.close()
    print(json.dumps(out), flush=True)
    """
)


def content(n: int, seed: int = 1) -> bytes:
    """Deterministic, page-distinct bytes."""
    block = hashlib.sha256(seed.to_bytes(4, "little")).digest() * 128  # 4 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += block[i % 32 :] + block[: i % 32]
        i += 1
    return bytes(out[:n])


async def start_client(url: str, address: str, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        url,
        address,
        mode,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def run_client(url: str, address: str, mode: str) -> tuple[int, Any, bytes]:
    """Run a client to its end: (exit status, its JSON report or None, stderr)."""
    proc = await start_client(url, address, mode)
    out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else None
    assert proc.returncode is not None
    return proc.returncode, report, err


async def settle(engine: Engine, pager: Pager) -> None:
    """Wait until the pager has released every client."""
    while True:
        stats = pager.statistics()
        idle = not stats.connections and not stats.files
        if idle and engine.statistics().open_files == 0:
            return
        await asyncio.sleep(0.01)


def check_scan(report: Any, data: bytes) -> None:
    n = len(data)
    digest = hashlib.sha256(data).hexdigest()
    assert report["size"] == n
    assert report["len"] == n
    assert report["cold"] == digest
    assert report["warm"] == digest
    assert report["reads"] == [data[:10].hex(), data[n - 5 :].hex(), ""]
    assert report["readinto"] == 4096
    want = hashlib.sha256(data[n // 2 : n // 2 + 4096]).hexdigest()
    assert report["readinto_sha"] == want


async def test_a_client_process_reads_a_local_file_cold_and_warm(
    tmp_path: Path,
) -> None:
    data = content(3 * MiB + 123)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            status, report, err = await run_client(str(path), pager.address, "scan")
            assert status == 0, err.decode()
            check_scan(report, data)
            await settle(engine, pager)
            stats = pager.statistics()
            assert stats.clients_served == 1
            assert stats.refused == 0
            assert stats.poisoned == 0
            # Every page installed once; the warm scan took no fault.
            assert stats.bytes_installed == page_round_up(len(data))
            assert 0 < stats.chunks <= stats.faults
            assert stats.chunks < len(data) // 4096
            memory = engine.memory_file.statistics()
            assert memory.used_bytes == 0


async def test_a_client_process_reads_a_file_behind_http() -> None:
    data = content(5 * MiB + 4095, seed=2)
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("blob", data)
            async with Engine() as engine, Pager(engine) as pager:
                url = server.url("blob")
                status, report, err = await run_client(url, pager.address, "scan")
                assert status == 0, err.decode()
                check_scan(report, data)
                await settle(engine, pager)
                assert server.bytes_sent >= len(data)
                assert pager.statistics().bytes_installed == page_round_up(len(data))


async def test_many_clients_on_one_file(tmp_path: Path) -> None:
    data = content(2 * MiB + 77, seed=3)
    path = tmp_path / "shared.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            results = await asyncio.gather(
                *(run_client(str(path), pager.address, "scan") for _ in range(4))
            )
            for status, report, err in results:
                assert status == 0, err.decode()
                check_scan(report, data)
            await settle(engine, pager)
            stats = pager.statistics()
            assert stats.clients_served == 4
            # Pages are shared by the clients of one file: at most once each
            # per client, and every page at least once.
            rounded = page_round_up(len(data))
            assert rounded <= stats.bytes_installed <= 4 * rounded
            assert engine.statistics().files_opened >= 1


async def test_a_killed_client_leaves_nothing_behind(tmp_path: Path) -> None:
    data = content(1 * MiB, seed=4)
    path = tmp_path / "held.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            baseline = engine.memory_file.statistics().used_bytes
            proc = await start_client(str(path), pager.address, "hold")
            try:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                assert json.loads(line)["head"] == data[:16].hex()
                stats = pager.statistics()
                assert (stats.clients, stats.files) == (1, 1)
                assert stats.resident_bytes > 0
                assert engine.statistics().open_files == 1
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.communicate()
            await settle(engine, pager)
            stats = pager.statistics()
            assert (stats.clients, stats.files, stats.resident_bytes) == (0, 0, 0)
            assert engine.memory_file.statistics().used_bytes == baseline


async def test_a_page_that_cannot_be_read_is_poisoned_never_zeros() -> None:
    # Big enough that opening it (which learns the size, and may fetch its
    # head or tail meanwhile) fetched none of the middle, which the clients
    # touch.
    data = content(8 * MiB, seed=5)
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("gone", data)
            url = server.url("gone")
            async with Engine() as engine, Pager(engine) as pager:
                # The file is opened (its size known), then disappears.
                cached = await engine.open_file(url)
                server.remove("gone")
                try:
                    address = pager.address
                    status, report, err = await run_client(url, address, "checked")
                    assert status == 0, err.decode()
                    # BusError(OSError(EFAULT)) is made as a subclass of
                    # BusError for the cause's class.
                    assert "BusError" in report["is_bus_error"] + report["error"]
                    assert report["errno"] == 14
                    assert pager.statistics().poisoned >= 1
                    status, report, err = await run_client(url, pager.address, "raw")
                    assert status == -signal.SIGBUS, err.decode()
                    assert report is None
                    assert b"Bus error" in err
                finally:
                    await engine.close_file(cached)
                await settle(engine, pager)


async def test_checked_reads_refuse_the_pagers_own_loop_thread(tmp_path: Path) -> None:
    data = content(512 * 1024, seed=6)
    path = tmp_path / "local.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            region = await asyncio.to_thread(map_file, str(path), engine=pager.address)
            try:
                assert region.statistics().resident_bytes == 0
                assert region.statistics().size == len(data)
                with pytest.raises(WrongLoopError, match="pager's own event"):
                    region.read(0, 10)
                with pytest.raises(WrongLoopError):
                    region.readinto(0, bytearray(10))
                # From another thread the kernel copy releases the GIL, and
                # the faults are served here.
                got = await asyncio.to_thread(region.read, 1000, 300_000)
                assert got == data[1000:301_000]
                assert 300_000 <= region.statistics().resident_bytes < len(data)
                buf = bytearray(len(data))
                assert await asyncio.to_thread(region.readinto, 0, buf) == len(data)
                assert bytes(buf) == data
                assert region.statistics().resident_bytes == len(data)
                assert region.address > 0
                assert region.size == len(data)
                assert region.url == str(path)
            finally:
                region.close()
            region.close()
            with pytest.raises(Exception, match="closed"):
                await asyncio.to_thread(region.read, 0, 1)
            with pytest.raises(Exception, match="closed"):
                region.statistics()
            await settle(engine, pager)


async def test_map_file_reports_what_the_pager_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            address = pager.address
            with pytest.raises(FileNotFoundError, match="pager refused"):
                await asyncio.to_thread(
                    map_file, str(tmp_path / "missing"), engine=address
                )
            with pytest.raises(ValueError, match="empty"):
                await asyncio.to_thread(map_file, str(empty), engine=address)
            with pytest.raises(TypeError, match="unix:PATH"):
                map_file(str(empty), engine="/not/a/unix/address")
            await settle(engine, pager)
            assert pager.statistics().refused == 2
        async with (
            Engine() as engine,
            Pager(engine, allowed_uids={os.getuid() + 1}) as pager,
        ):
            with pytest.raises(PermissionError, match="not served"):
                await asyncio.to_thread(map_file, str(empty), engine=pager.address)


async def test_a_poisoned_checked_read_is_a_bus_error_in_process() -> None:
    data = content(8 * MiB, seed=7)
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("lost", data)
            url = server.url("lost")
            async with Engine() as engine, Pager(engine) as pager:
                cached = await engine.open_file(url)
                server.remove("lost")
                region = await asyncio.to_thread(map_file, url, engine=pager.address)
                try:
                    with pytest.raises(BusError) as info:
                        await asyncio.to_thread(region.read, len(data) // 2, 10)
                    assert info.value.bytes_done == 0
                finally:
                    region.close()
                    await engine.close_file(cached)
                await settle(engine, pager)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" in status.read()
    except FileNotFoundError:
        return True


async def test_without_an_engine_a_child_engine_serves_and_leaves_with_the_client(
    tmp_path: Path,
) -> None:
    data = content(1 * MiB + 5, seed=8)
    path = tmp_path / "child.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        status, report, err = await run_client(str(path), "child", "scan")
        assert status == 0, err.decode()
        check_scan(report, data)
        child = report["child"]
        while True:
            if process_gone(child):
                break
            await asyncio.sleep(0.01)


def test_an_engine_thread_of_this_process_serves_checked_reads(tmp_path: Path) -> None:
    import numpy as np

    data = content(2 * MiB, seed=9)
    path = tmp_path / "thread.bin"
    path.write_bytes(data)
    with Engine.start_thread() as engine_thread:
        region = map_file(str(path), engine=engine_thread)
        try:
            # The kernel copy and numpy's bulk copy release the GIL: the
            # engine's thread serves their faults.
            assert region.read(10, 100) == data[10:110]
            array = np.frombuffer(region, np.uint8)
            assert array.copy().tobytes() == data
            del array

            async def from_the_engines_loop() -> None:
                with pytest.raises(WrongLoopError, match="own loop thread"):
                    map_file(str(path), engine=engine_thread)
                with pytest.raises(WrongLoopError, match="pager's own event"):
                    region.read(0, 1)

            engine_thread.call(from_the_engines_loop)
            again = map_file(str(path), engine=engine_thread)
            assert again.read(len(data) - 3, 10) == data[-3:]
            again.close()
        finally:
            region.close()


async def test_an_engine_on_this_loop_serves_other_threads(tmp_path: Path) -> None:
    data = content(256 * 1024, seed=10)
    path = tmp_path / "loop.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        with pytest.raises(WrongLoopError, match="not run on an event loop"):
            map_file(str(path), engine=Engine())
        async with Engine() as engine:
            with pytest.raises(WrongLoopError, match="own loop thread"):
                map_file(str(path), engine=engine)
            region = await asyncio.to_thread(map_file, str(path), engine=engine)
            try:
                assert await asyncio.to_thread(region.read, 0, len(data)) == data
            finally:
                region.close()
        with pytest.raises(TypeError, match="EngineThread"):
            map_file(str(path), engine=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["checked", "raw"])
async def test_when_the_engine_dies_a_blocked_client_fails_fast(mode: str) -> None:
    data = content(8 * MiB, seed=11)
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("slow", data)
            engine = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aiomemmap.pager.child",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            client = None
            try:
                assert engine.stdout is not None
                address = (await engine.stdout.readline()).decode().strip()
                client = await start_client(server.url("slow"), address, "wait-" + mode)
                assert client.stdout is not None
                assert client.stdin is not None
                assert json.loads(await client.stdout.readline()) == {"mapped": True}
                # Every fetch now hangs: the client's touch waits in a fault.
                server.latency = 3600
                client.stdin.write(b"go\n")
                await client.stdin.drain()
                await asyncio.sleep(0.2)
                engine.kill()
                await engine.communicate()
                out, err = await client.communicate()
            finally:
                if engine.returncode is None:
                    engine.kill()
                    await engine.communicate()
                if client is not None and client.returncode is None:
                    client.kill()
                    await client.communicate()
            if mode == "checked":
                assert client.returncode == 0, err.decode()
                report = json.loads(out.decode().splitlines()[-1])
                assert "BusError" in report["is_bus_error"] + report["error"]
            else:
                assert client.returncode == -signal.SIGBUS, err.decode()
                assert b"Bus error" in err


def test_a_forked_child_does_not_inherit_the_region(tmp_path: Path) -> None:
    data = content(64 * 1024, seed=12)
    path = tmp_path / "fork.bin"
    path.write_bytes(data)
    with Engine.start_thread() as engine_thread:
        region = map_file(str(path), engine=engine_thread)
        try:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # The child: report whether the mapping is there.
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                vec = ctypes.create_string_buffer(16)
                mapped = libc.mincore(
                    ctypes.c_void_p(region.address), ctypes.c_size_t(4096), vec
                )
                os.write(w, b"absent" if mapped != 0 else b"present")
                os._exit(0)
            os.close(w)
            _, status = os.waitpid(pid, 0)
            assert status == 0
            assert os.read(r, 16) == b"absent"
            os.close(r)
            assert region.read(0, 10) == data[:10]
        finally:
            region.close()


@pytest.mark.parametrize(
    "command",
    [["aiomemmap.pager.serve"], ["aiomemmap", "serve"]],
    ids=["module", "cli"],
)
async def test_a_serve_process_serves_until_it_is_told_to_stop(
    tmp_path: Path, command: list[str]
) -> None:
    data = content(1 * MiB + 1, seed=13)
    path = tmp_path / "served.bin"
    path.write_bytes(data)
    sock = tmp_path / "pager.sock"
    with anyio.fail_after(DEADLINE):
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *command,
            "--socket",
            str(sock),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            address = (await server.stdout.readline()).decode().strip()
            assert address == f"unix:{sock}"
            status, report, err = await run_client(str(path), address, "scan")
            assert status == 0, err.decode()
            check_scan(report, data)
        finally:
            server.send_signal(signal.SIGTERM)
            _, err = await server.communicate()
        assert server.returncode == 0, err.decode()
        assert not sock.exists()
