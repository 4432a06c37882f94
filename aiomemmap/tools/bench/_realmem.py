"""Benchmarks of real memory (rows P8): a region scanned by numpy in a client.

A client process maps a file with :func:`~aiomemmap.map_file` through a
:class:`~aiomemmap.Pager` of this process's engine and sums it with numpy
twice: the first scan faults every page in (each fault served by the pager
with a fault-around chunk), the second runs over resident pages. The
engine's cache holds the file before the client starts, so that the rows
measure fault service, not the backing.

The floor, measured in the same run: a minimal ``UFFDIO_COPY`` loop in this
process serving the same client scan from a ``bytes`` object in memory, one
chunk of the same size per fault, which is what any handler in Python costs
at least. Its second scan is the kernel's own scan of a plain memfd mapping.

* P8 and P8m: the cold scan with a fixed fault-around of 64 KiB and of 1 MiB,
  against the floor at the same chunk size (>= 0.9x);
* P8a: the cold scan with the pager's default, adaptive fault-around, against
  the 1 MiB floor (for information);
* P8r: the resident rescan against the kernel's scan of a plain memfd
  mapping (>= 0.9x);
* P8t: 4 KiB random touches (one byte read per page, in a seeded order) with
  4 KiB fault-around, against the floor serving 4 KiB per fault (for
  information).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from aiomemmap._core.fdpass import recv_message, send_message
from aiomemmap._core.uffd import PageFault, UffdExists, Userfaultfd, buffer_address
from aiomemmap.engine.engine import Engine
from aiomemmap.pager.server import Pager
from aiomemmap.tools.bench import BenchRow, register

_MIB: Final[int] = 1 << 20
_KIB: Final[int] = 1 << 10

#: The file's size; the environment may shrink it (used by the tests).
REGION_BYTES: Final[int] = int(
    os.environ.get("AIOMEMMAP_BENCH_REGION_BYTES", str(256 * _MIB))
)
#: Pages touched by the random-touch row.
RANDOM_TOUCHES: Final[int] = int(os.environ.get("AIOMEMMAP_BENCH_TOUCHES", "8192"))
_SEED: Final[int] = 20261203
_TIMEOUT: Final[float] = 600.0

# The client's work, after its region is mapped: a scan (sum as uint64) twice,
# or one byte of each page in a seeded random order; it prints the seconds.
_WORK: Final[str] = r"""
import json, random, time
import numpy as np

def work(buf, mode, touches, seed):
    if mode == "scan":
        a = np.frombuffer(buf, np.uint64)
        t = time.perf_counter(); first = int(a.sum()); cold = time.perf_counter() - t
        t = time.perf_counter(); again = int(a.sum()); warm = time.perf_counter() - t
        del a
        return {"cold": cold, "warm": warm, "sum": first, "same": first == again}
    a = np.frombuffer(buf, np.uint8)
    pages = list(range(len(a) // 4096))
    random.Random(seed).shuffle(pages)
    pages = pages[:touches]
    t = time.perf_counter(); total = sum(int(a[p * 4096]) for p in pages)
    cold = time.perf_counter() - t
    del a
    return {"cold": cold, "warm": 0.0, "sum": total, "same": True}
"""

_PAGER_CLIENT: Final[str] = (
    _WORK
    + r"""
import sys
from aiomemmap import map_file
region = map_file(sys.argv[1], engine=sys.argv[2], watchdog=False)
out = work(region, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
region.close()
print(json.dumps(out))
"""
)

_FLOOR_CLIENT: Final[str] = (
    _WORK
    + r"""
import mmap, socket, sys
from aiomemmap._core.fdpass import recv_message, send_message
from aiomemmap._core.uffd import Userfaultfd, buffer_address
sock = socket.socket(fileno=int(sys.argv[1]))
msg = recv_message(sock, max_bytes=64, max_fds=1)
size = int(msg.data)
m = mmap.mmap(msg.fds[0], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
with buffer_address(m) as (addr, _):
    pass
uffd = Userfaultfd.create()
uffd.register(addr, size)
send_message(sock, str(addr).encode(), [uffd.fileno()])
out = work(m, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
print(json.dumps(out))
"""
)


def _payload(path: Path, size: int) -> None:
    """Write ``size`` seeded pseudo-random bytes to ``path``."""
    import random

    rng = random.Random(_SEED)
    with path.open("wb") as out:
        left = size
        while left:
            n = min(left, _MIB)
            out.write(rng.randbytes(n))
            left -= n


async def _spawn(
    args: list[str], pass_fds: tuple[int, ...] = ()
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
    )


async def _report(proc: asyncio.subprocess.Process) -> dict[str, float]:
    """Wait for a client; return what it printed."""
    async with asyncio.timeout(_TIMEOUT):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the client failed: {err.decode(errors='replace')}")
    report: dict[str, float] = json.loads(out)
    return report


async def _pager_run(
    path: Path, mode: str, fault_around: int, maximum: int
) -> dict[str, float]:
    """One client run through a pager whose engine already caches the file."""
    async with (
        Engine() as engine,
        Pager(engine, fault_around=fault_around, max_fault_around=maximum) as pager,
    ):
        cached = await engine.open_file(str(path))
        try:
            buf = bytearray(_MIB)
            off = 0
            while off < REGION_BYTES:
                n = await cached.readinto(off, buf)
                if not n:
                    break
                off += n
            proc = await _spawn(
                [
                    _PAGER_CLIENT,
                    str(path),
                    pager.address,
                    mode,
                    str(RANDOM_TOUCHES),
                    str(_SEED),
                ]
            )
            return await _report(proc)
        finally:
            await engine.close_file(cached)


async def _floor_run(data: bytes, mode: str, chunk: int) -> dict[str, float]:
    """One client run served by a bare UFFDIO_COPY loop from ``data``."""
    size = len(data)
    memfd = os.memfd_create("bench-floor")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    uffd: Userfaultfd | None = None
    loop = asyncio.get_running_loop()
    try:
        os.ftruncate(memfd, size)
        proc = await _spawn(
            [
                _FLOOR_CLIENT,
                str(theirs.fileno()),
                mode,
                str(RANDOM_TOUCHES),
                str(_SEED),
            ],
            pass_fds=(theirs.fileno(),),
        )
        client = asyncio.ensure_future(_report(proc))
        theirs.close()
        send_message(ours, str(size).encode(), [memfd])
        msg = await loop.run_in_executor(
            None, lambda: recv_message(ours, max_bytes=64, max_fds=1)
        )
        base = int(msg.data)
        uffd = Userfaultfd.adopt(msg.fds[0])
        uffd.set_blocking(False)
        with buffer_address(data) as (source, _):
            served = uffd

            def serve() -> None:
                for event in served.read_events():
                    if not isinstance(event, PageFault):
                        continue
                    off = event.address - base
                    off -= off % chunk
                    try:
                        served.copy(base + off, source + off, min(chunk, size - off))
                    except UffdExists:
                        served.wake(event.address, 4096)

            loop.add_reader(uffd.fileno(), serve)
            try:
                return await client
            finally:
                loop.remove_reader(uffd.fileno())
    finally:
        if uffd is not None:
            uffd.close()
        os.close(memfd)
        ours.close()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _row(
    row_id: str,
    what: str,
    ours: float,
    base: float,
    base_name: str,
    at_least: float | None,
    unit: str = "MiB/s",
) -> BenchRow:
    ratio = ours / base
    return BenchRow(
        row_id,
        what,
        unit,
        ours,
        base,
        base_name,
        ratio,
        target="" if at_least is None else f">= {at_least:g}x",
        met=None if at_least is None else ratio >= at_least,
    )


@register("P8,P8m,P8a,P8r,P8t")
async def real_memory() -> list[BenchRow]:
    """P8: a region served by the pager, scanned by numpy in a client process."""
    size = REGION_BYTES
    mib = size / _MIB
    with tempfile.TemporaryDirectory(prefix="aiomemmap-bench-") as tmp:
        path = Path(tmp) / "region.bin"
        _payload(path, size)
        data = path.read_bytes()
        configs = {
            "64k": (64 * _KIB, 64 * _KIB),
            "1m": (_MIB, _MIB),
            "adaptive": (64 * _KIB, _MIB),
        }
        ours: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
        floors: dict[int, list[dict[str, float]]] = {64 * _KIB: [], _MIB: []}
        touches: list[dict[str, float]] = []
        touch_floor: list[dict[str, float]] = []
        for _ in range(3):
            for name, (initial, maximum) in configs.items():
                ours[name].append(await _pager_run(path, "scan", initial, maximum))
            for chunk, runs in floors.items():
                runs.append(await _floor_run(data, "scan", chunk))
            touches.append(await _pager_run(path, "touch", 4 * _KIB, 4 * _KIB))
            touch_floor.append(await _floor_run(data, "touch", 4 * _KIB))
    for run in [*ours["64k"], *ours["1m"], *ours["adaptive"]]:
        if not run["same"]:
            raise RuntimeError("a rescan of the region summed differently")

    def cold(runs: list[dict[str, float]]) -> float:
        return mib / _median([r["cold"] for r in runs])

    def warm(runs: list[dict[str, float]]) -> float:
        return mib / _median([r["warm"] for r in runs])

    floor_64k, floor_1m = floors[64 * _KIB], floors[_MIB]
    scan = f"cold numpy scan of a {mib:g} MiB region (engine cache warm)"
    touched = min(RANDOM_TOUCHES, size // 4096)
    return [
        _row(
            "P8",
            f"{scan}, fault-around 64 KiB",
            cold(ours["64k"]),
            cold(floor_64k),
            "a bare UFFDIO_COPY loop serving 64 KiB per fault from memory",
            0.9,
        ),
        _row(
            "P8m",
            f"{scan}, fault-around 1 MiB",
            cold(ours["1m"]),
            cold(floor_1m),
            "a bare UFFDIO_COPY loop serving 1 MiB per fault from memory",
            0.9,
        ),
        _row(
            "P8a",
            f"{scan}, adaptive fault-around (64 KiB growing to 1 MiB)",
            cold(ours["adaptive"]),
            cold(floor_1m),
            "a bare UFFDIO_COPY loop serving 1 MiB per fault from memory",
            None,
        ),
        _row(
            "P8r",
            f"resident rescan of the {mib:g} MiB region by numpy",
            warm(ours["1m"]),
            warm(floor_1m),
            "the kernel's scan of a plain memfd mapping, every page present",
            0.9,
        ),
        _row(
            "P8t",
            f"{touched} random 4 KiB touches of the region, fault-around 4 KiB",
            touched / _median([r["cold"] for r in touches]),
            touched / _median([r["cold"] for r in touch_floor]),
            "a bare UFFDIO_COPY loop serving 4 KiB per fault from memory",
            None,
            unit="touches/s",
        ),
    ]
