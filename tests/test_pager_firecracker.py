"""Firecracker's page-fault-handler handshake, with a client that acts as its VMM.

No Firecracker binary is available here; the client does what Firecracker
does on a snapshot restore with a ``Uffd`` backend: it maps anonymous private
guest memory, registers it with a userfaultfd (with remove events, as a
balloon needs), connects to the handler's stream socket and sends the JSON
list of regions with the userfaultfd attached, in one message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from aiomemmap import Engine, Pager
from aiomemmap._core.fdpass import send_message
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.pager.firecracker import decode_regions
from aiomemmap.pager.protocol import ProtocolError

DEADLINE = 60.0
MiB = 1 << 20

VMM = textwrap.dedent(
    """
    import ctypes, hashlib, json, mmap, socket, sys, threading
    from aiomemmap._core import uffd as U
    from aiomemmap._core.fdpass import send_message

    path, layout = sys.argv[1], json.loads(sys.argv[2])
    memories, regions = [], []
    u = U.Userfaultfd.create(features=U.FEATURE_EVENT_REMOVE)
    for size, offset in layout:
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with U.buffer_address(m) as (base, _):
            pass
        u.register(base, size)
        memories.append(m)
        regions.append({"base_host_virt_addr": base, "size": size,
                        "offset": offset, "page_size": 4096})
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    send_message(s, json.dumps(regions).encode(), [u.fileno()])
    out = {"digests": [hashlib.sha256(m).hexdigest() for m in memories]}
    # The guest's balloon gives back a page: it reads as zeros from now on.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    base = regions[0]["base_host_virt_addr"]
    assert libc.madvise(base + 4096, 4096, 4) == 0  # MADV_DONTNEED
    out["balloon"] = bytes(memories[0][4096:4096 + 16]).hex()
    out["neighbour"] = bytes(memories[0][0:16]).hex()
    print(json.dumps(out), flush=True)
    """
)


def snapshot_bytes(n: int) -> bytes:
    block = hashlib.sha256(b"snapshot").digest()
    return bytes(b ^ (i % 251) for i, b in enumerate(block * (n // 32)))


async def test_a_vmm_restores_guest_memory_from_a_snapshot(tmp_path: Path) -> None:
    snapshot = snapshot_bytes(4 * MiB)
    path = tmp_path / "mem.snap"
    path.write_bytes(snapshot)
    layout = [(1 * MiB, 0), (2 * MiB, 2 * MiB)]
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            fc_socket = tmp_path / "fc.sock"
            await pager.serve_firecracker(fc_socket, str(path))
            assert os.stat(fc_socket).st_mode & 0o777 == 0o600
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                VMM,
                str(fc_socket),
                json.dumps(layout),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            report = json.loads(out)
            assert report["digests"] == [
                hashlib.sha256(snapshot[off : off + size]).hexdigest()
                for size, off in layout
            ]
            assert report["balloon"] == bytes(16).hex()
            assert report["neighbour"] == snapshot[:16].hex()
            while True:
                if not pager.statistics().connections:
                    break
                await asyncio.sleep(0.01)
            stats = pager.statistics()
            assert stats.clients_served == 1
            assert stats.zeroed == 1
            assert stats.bytes_installed == 3 * MiB
            assert engine.statistics().open_files == 0


async def test_a_bad_vmm_handshake_closes_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "mem.snap"
    path.write_bytes(snapshot_bytes(MiB))
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine, Pager(engine) as pager:
            fc_socket = tmp_path / "fc.sock"
            await pager.serve_firecracker(fc_socket, str(path))
            before = {int(n) for n in os.listdir("/proc/self/fd")}
            for payload, with_fd in [
                (b"not json", True),
                (json.dumps([{"base_host_virt_addr": 0}]).encode(), True),
                (
                    json.dumps(
                        [
                            {
                                "base_host_virt_addr": 1 << 30,
                                "size": 2 * MiB,
                                "offset": 0,
                                "page_size": 4096,
                            }
                        ]
                    ).encode(),
                    True,
                ),
                (
                    json.dumps(
                        [
                            {
                                "base_host_virt_addr": 1 << 30,
                                "size": MiB,
                                "offset": 0,
                                "page_size": 4096,
                            }
                        ]
                    ).encode(),
                    False,
                ),
            ]:
                r, w = os.pipe()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    loop = asyncio.get_running_loop()
                    await loop.sock_connect(sock, str(fc_socket))
                    send_message(sock, payload, [r] if with_fd else [])
                    assert await loop.sock_recv(sock, 16) == b""
                finally:
                    sock.close()
                    os.close(r)
                    os.close(w)
            while True:
                if not pager.statistics().connections:
                    break
                await asyncio.sleep(0.01)
            assert pager.statistics().refused == 4
            assert engine.statistics().open_files == 0
            assert {int(n) for n in os.listdir("/proc/self/fd")} <= before


@pytest.mark.parametrize(
    ("regions", "match"),
    [
        ([], "list of 1"),
        (
            [
                {
                    "base_host_virt_addr": 4096,
                    "size": 4096,
                    "offset": 0,
                    "page_size": 2 << 20,
                }
            ],
            "huge pages",
        ),
        ([{"base_host_virt_addr": 4097, "size": 4096, "offset": 0}], "unaligned"),
        (
            [
                {"base_host_virt_addr": 0, "size": 8192, "offset": 0},
                {"base_host_virt_addr": 4096, "size": 4096, "offset": 0},
            ],
            "overlap",
        ),
        (
            [{"base_host_virt_addr": 0, "size": 8192, "offset": 4096}],
            "past the snapshot",
        ),
    ],
)
def test_regions_are_checked(regions: list[dict[str, int]], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_regions(json.dumps(regions).encode(), 2 * PAGE_SIZE)


def test_older_page_size_field_and_sorting() -> None:
    raw = [
        {"base_host_virt_addr": 8192, "size": 4096, "offset": 0, "page_size_kib": 4},
        {"base_host_virt_addr": 0, "size": 4096, "offset": 4096},
    ]
    regions = decode_regions(json.dumps(raw).encode(), 2 * PAGE_SIZE)
    assert [r.base for r in regions] == [0, 8192]


def test_a_handshake_cut_by_the_stream_is_waited_for_a_malformed_one_is_not() -> None:
    from aiomemmap.pager.firecracker import _incomplete

    assert _incomplete(b'[{"base_host_virt_addr": 4096, "si')
    assert _incomplete('[{"a": "\u00e9'.encode()[:-1])
    assert not _incomplete(b"not json")
    assert not _incomplete(b'[{"a": 1}]')
    assert not _incomplete(b'[{"a": 1}] trailing')
