"""The real-memory phases of ``aiomemmap demo --real``: numpy in a client process.

After the demo's usual workloads, a separate Python process (the *client*)
maps the demo's file with :func:`aiomemmap.map_file` and uses it as ordinary
memory: numpy sums it (the cold scan, every first touch of a page a fault),
sums it again (the resident rescan, no fault left), hashes it, and in a
second, cold mapping touches seeded random pages. The demo knows the file's
bytes, so it checks the client's numpy sum, its SHA-256 and the CRC-32 of
every touched page against them, and it reports how fast each phase ran and
how little the random touches fetched.

Who serves the client's faults: a :class:`~aiomemmap.Pager` of an
:class:`~aiomemmap.Engine` running on the demo's own event loop, one fresh
engine and pager per phase so that each phase starts cold. ``map_file``
could also start a child engine of the client's own, which is what a
program that only wants the memory would do; the demo serves the faults
itself instead because that shows the whole product at once: the asyncio
engine that fetches the pages over HTTP is the one that answers the
kernel's faults of another process, and the demo can read both sides'
counters (the pager's faults and installed chunks, the engine's fetches,
the HTTP server's requests and bytes) between the client's steps.

The client is driven step by step over its standard streams, one JSON
command line in and one JSON answer line out (``map``, ``scan``,
``sha256``, ``touch``, ``close``), so that the counters are read between
steps, not guessed. It needs numpy; the host must let processes of this uid
open a userfaultfd (:func:`real_memory_problem` tells why not, in one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import math
import random
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import FEATURE_MISSING_SHMEM, Userfaultfd
from aiomemmap.engine.engine import Engine
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.pager.server import Pager, PagerStatistics
from aiomemmap.tools.bench._served import ServedFiles
from aiomemmap.tools.demo import format_bytes

__all__ = [
    "DEFAULT_TOUCHES",
    "UNUSABLE_STATUS",
    "ClientError",
    "RealPhase",
    "real_memory_problem",
    "render_real_table",
    "run_real_phases",
]

#: Random pages the touch phase touches unless told otherwise.
DEFAULT_TOUCHES: Final = 256
#: The exit status of ``aiomemmap demo --real`` on a host that cannot run it.
UNUSABLE_STATUS: Final = 3

# Seconds any one step of the client may take (the cold scan of a large file
# over a slow link is the longest).
_STEP_TIMEOUT: Final = 600.0
# Seconds the client has to exit once told to (its input closed).
_STOP_TIMEOUT: Final = 10.0
# The longest answer line read from the client (a CRC-32 per touched page).
_ANSWER_LIMIT: Final = 64 << 20
_SCAN: Final = "cold scan"
_RESCAN: Final = "resident rescan"
_TOUCHES: Final = "random touches"

# The client: a loop over JSON commands on stdin, one JSON answer on stdout
# each. It holds at most one region; numpy arrays and memoryviews of it are
# dropped before each answer, so that ``close`` can unmap it.
_CLIENT: Final = r"""
import hashlib, json, sys, time, zlib
import numpy as np
from aiomemmap import map_file

region = None

def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def scan(n):
    words = n // 8
    t = time.perf_counter()
    total = int(np.frombuffer(region, "<u8", count=words).sum(dtype=np.uint64))
    if n > words * 8:
        tail = np.frombuffer(region, np.uint8, count=n - words * 8, offset=words * 8)
        total += int(tail.sum(dtype=np.uint64))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "sum": total % (1 << 64)}

def sha256(n):
    with memoryview(region) as view, view[:n] as part:
        return {"sha256": hashlib.sha256(part).hexdigest()}

def touch(reads):
    pages = np.frombuffer(region, np.uint8)
    crcs = []
    t = time.perf_counter()
    for off, n in reads:
        crcs.append(zlib.crc32(pages[off : off + n]))
    seconds = time.perf_counter() - t
    del pages
    return {"seconds": seconds, "crcs": crcs}

for line in sys.stdin:
    command = json.loads(line)
    op = command["op"]
    try:
        if op == "map":
            region = map_file(command["url"], engine=command["engine"])
            out = {"size": region.size}
        elif op == "scan":
            out = scan(command["bytes"])
        elif op == "sha256":
            out = sha256(command["bytes"])
        elif op == "touch":
            out = touch(command["reads"])
        elif op == "close":
            region.close()
            region = None
            out = {}
        else:
            out = {"error": "unknown command " + repr(op)}
        if region is not None:
            out["resident_bytes"] = region.statistics().resident_bytes
    except Exception as exc:
        out = {"error": type(exc).__name__ + ": " + str(exc)}
    answer(out)
"""


def real_memory_problem() -> str | None:
    """Tell why this host cannot run the real-memory phases, if it cannot.

    The client process is started by this one, with its uid, its
    privileges and its system-call filter: if this process cannot open a
    userfaultfd able to serve shared memory, neither can the client. Both
    the full descriptor and the user-mode-only one (what an unprivileged
    process may get) are tried; the client's accesses are user-mode numpy
    reads, which either serves.

    Returns:
        ``None`` if the phases can run, else one line saying why not.
    """
    if importlib.util.find_spec("numpy") is None:
        return "numpy is not installed, and the client process scans with it"
    refusals: list[OSError] = []
    for user_mode_only in (False, True):
        try:
            uffd = Userfaultfd.create(user_mode_only=user_mode_only)
        except OSError as exc:
            refusals.append(exc)
            continue
        with uffd:
            if not uffd.available_features & FEATURE_MISSING_SHMEM:
                return (
                    "this kernel's userfaultfd cannot serve shared memory "
                    "(no UFFD_FEATURE_MISSING_SHMEM)"
                )
        return None
    reason = refusals[0].strerror or str(refusals[0])
    return (
        f"this host does not let this process use userfaultfd ({reason}); "
        "real memory needs it (access to /dev/userfaultfd, "
        "vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE, and no seccomp "
        "filter refusing it)"
    )


@dataclass(frozen=True, slots=True)
class RealPhase:
    """The measurements of one real-memory phase.

    Attributes:
        name: ``"cold scan"``, ``"resident rescan"`` or ``"random touches"``.
        seconds: Time the client took, measured in the client.
        bytes_touched: Bytes the client read through its region.
        touches: Pages touched one by one (the random touches), else 0.
        faults: Fault messages the pager read during the phase.
        chunks: Fault-around chunks the pager installed.
        requests: Requests the demo's server answered during the phase, or
            the engine's fetches without a server of the demo's.
        bytes_fetched: Body bytes of those requests (or fetches).
        resident_bytes: Bytes of the client's region in memory at its end.
        file_size: The file's size.

    Concurrency:
        Immutable.
    """

    name: str
    seconds: float
    bytes_touched: int
    touches: int
    faults: int
    chunks: int
    requests: int
    bytes_fetched: int
    resident_bytes: int
    file_size: int

    @property
    def rate(self) -> str:
        """The phase's speed in words: touches or bytes per second."""
        if self.seconds <= 0:
            return "n/a"
        if self.touches:
            return f"{self.touches / self.seconds:,.0f} touches/s"
        return f"{format_bytes(self.bytes_touched / self.seconds)}/s"


def _format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _pages(n: int) -> int:
    return math.ceil(n / PAGE_SIZE)


def render_real_table(phases: Sequence[RealPhase], out: TextIO) -> None:
    """Write the table of the real-memory phases.

    Args:
        phases: The phases, in the order they ran.
        out: Where to write.
    """
    header = (
        "phase",
        "time",
        "rate",
        "faults",
        "chunks",
        "requests",
        "fetched",
        "pages fetched",
        "pages resident",
    )
    rows = [header]
    for p in phases:
        pages = _pages(p.file_size)
        rows.append(
            (
                p.name,
                _format_seconds(p.seconds),
                p.rate,
                str(p.faults),
                str(p.chunks),
                str(p.requests),
                format_bytes(p.bytes_fetched),
                f"{_pages(p.bytes_fetched)} of {pages}",
                f"{_pages(p.resident_bytes)} of {pages}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")


class ClientError(RuntimeError):
    """The client process failed a step, or died."""


class _Client:
    """The client process, driven one JSON command at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def ask(self, op: str, **args: object) -> dict[str, object]:
        """Send one command; return the client's answer.

        Raises:
            ClientError: The client answered with an error, or died.
            TimeoutError: No answer within the step's time.
        """
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        async with asyncio.timeout(_STEP_TIMEOUT):
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            line = await proc.stdout.readline()
        if not line:
            raise ClientError(f"the client process {await self._death()}")
        answer: dict[str, object] = json.loads(line)
        error = answer.get("error")
        if error is not None:
            raise ClientError(f"the client process failed to {op}: {error}")
        return answer

    async def _death(self) -> str:
        """How the client ended, in words (it has closed its output)."""
        proc = self._proc
        async with asyncio.timeout(_STEP_TIMEOUT):
            await proc.wait()
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace")
        code = proc.returncode
        assert code is not None
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        # What Python said: first when a signal killed it (faulthandler's
        # "Fatal Python error" line), last when it exited (the exception).
        if code < 0:
            how, said = f"was killed by {signal.Signals(-code).name}", lines[:1]
        else:
            how, said = f"exited with status {code}", lines[-1:]
        return how + (f" ({said[0]})" if said else "")


@contextlib.asynccontextmanager
async def _client_process() -> AsyncIterator[_Client]:
    """Start the client process; end it and reap it on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLIENT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        limit=_ANSWER_LIMIT,
    )
    try:
        yield _Client(proc)
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass(frozen=True, slots=True)
class _Counts:
    """The counters the demo reads between the client's steps."""

    pager: PagerStatistics
    requests: int
    bytes_fetched: int


class _Phase:
    """One engine and its pager, serving the client one mapping of the file.

    Attributes:
        pager: The pager the client connects to.
        cached: The engine's cached file of the file, once open.
        size: The file's size, once the client has mapped it.
        opened: The counters before the file was opened, so that what the
            opening fetched (its size and tail) counts in the phase's first
            row.
    """

    def __init__(self, pager: Pager, served: ServedFiles | None) -> None:
        self.pager = pager
        self.cached: CachedFile | None = None
        self.size = 0
        self._served = served
        self.opened = self.counts()

    def counts(self) -> _Counts:
        """The pager's, and the server's (or the engine's) counters now."""
        if self._served is not None:
            server = self._served.counts()
            requests, fetched = server.requests, server.bytes_sent
        elif self.cached is not None:
            st = self.cached.statistics()
            requests, fetched = st.fetches, st.bytes_fetched
        else:
            requests = fetched = 0
        return _Counts(self.pager.statistics(), requests, fetched)

    def measured(
        self,
        name: str,
        before: _Counts,
        answer: dict[str, object],
        bytes_touched: int,
        touches: int = 0,
    ) -> RealPhase:
        """The row of a step of the client, from ``before`` to now."""
        after = self.counts()
        seconds = answer["seconds"]
        resident = answer["resident_bytes"]
        assert isinstance(seconds, float) and isinstance(resident, int)
        return RealPhase(
            name=name,
            seconds=seconds,
            bytes_touched=bytes_touched,
            touches=touches,
            faults=after.pager.faults - before.pager.faults,
            chunks=after.pager.chunks - before.pager.chunks,
            requests=after.requests - before.requests,
            bytes_fetched=after.bytes_fetched - before.bytes_fetched,
            resident_bytes=resident,
            file_size=self.size,
        )


@contextlib.asynccontextmanager
async def _phase(url: str, served: ServedFiles | None) -> AsyncIterator[_Phase]:
    """A fresh engine and pager holding ``url`` open, so that a phase starts cold."""
    async with Engine() as engine, Pager(engine) as pager:
        phase = _Phase(pager, served)
        cached = phase.cached = await engine.open_file(url)
        try:
            yield phase
        finally:
            await engine.close_file(cached)


def _expected_sum(data: bytes) -> int:
    """What the client's numpy sum of ``data`` should be.

    Its little-endian 64-bit words, then its last bytes, added modulo 2**64.
    """
    import numpy as np

    words = len(data) // 8
    total = int(np.frombuffer(data, "<u8", count=words).sum(dtype=np.uint64))
    total += sum(data[words * 8 :])
    return total % (1 << 64)


def _touch_reads(size: int, touches: int, seed: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` reads of ``touches`` distinct random pages.

    Fewer in a small file; in the order they are touched.
    """
    pages = _pages(size)
    chosen = random.Random(seed).sample(range(pages), min(touches, pages))
    return [(p * PAGE_SIZE, min(PAGE_SIZE, size - p * PAGE_SIZE)) for p in chosen]


def _str(answer: dict[str, object], key: str) -> str:
    value = answer[key]
    assert isinstance(value, str)
    return value


def _int(answer: dict[str, object], key: str) -> int:
    value = answer[key]
    assert isinstance(value, int)
    return value


async def run_real_phases(
    url: str,
    scan_bytes: int,
    expected: bytes | None,
    served: ServedFiles | None,
    *,
    touches: int,
    seed: int,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run the real-memory phases in a client process and write their report.

    Preconditions: :func:`real_memory_problem` returned ``None``; ``url`` is
    not empty.

    Args:
        url: The file the client maps.
        scan_bytes: How much of it the scans read (from its start).
        expected: The file's bytes, when the demo knows them; then every
            checksum is verified.
        served: The demo's server of ``url``, whose counters tell what each
            phase fetched; ``None`` to count the engine's fetches instead.
        touches: How many distinct random pages the touch phase touches.
        seed: Seed of the random pages.
        out: Where the report goes.
        err: Where the progress lines go.

    Returns:
        0, or 1 if a checksum differed from the file's bytes.

    Raises:
        ClientError: The client process failed a step or died (a page it
            could not be served kills it with ``SIGBUS``).
        OSError: The engine could not open the file.
        TimeoutError: A step of the client took longer than its limit.

    Cancellation:
        The client process is told to stop (and killed if it does not),
        and the engines are closed, before the cancellation propagates.
    """
    phases: list[RealPhase] = []
    async with _client_process() as client:
        async with _phase(url, served) as phase:
            err.write(f"real memory: client process {client.pid} maps {url}\n")
            err.flush()
            mapped = await client.ask("map", url=url, engine=phase.pager.address)
            size = phase.size = _int(mapped, "size")
            scan_bytes = min(scan_bytes, size)
            answer = await client.ask("scan", bytes=scan_bytes)
            phases.append(phase.measured(_SCAN, phase.opened, answer, scan_bytes))
            scan_sum = _int(answer, "sum")
            before = phase.counts()
            answer = await client.ask("scan", bytes=scan_bytes)
            phases.append(phase.measured(_RESCAN, before, answer, scan_bytes))
            rescan_sum = _int(answer, "sum")
            digest = _str(await client.ask("sha256", bytes=scan_bytes), "sha256")
            await client.ask("close")
        reads = _touch_reads(size, touches, seed)
        async with _phase(url, served) as phase:
            err.write(
                f"real memory: client process {client.pid} maps it again, cold, "
                f"and touches {len(reads)} random pages\n"
            )
            err.flush()
            mapped = await client.ask("map", url=url, engine=phase.pager.address)
            phase.size = _int(mapped, "size")
            answer = await client.ask("touch", reads=reads)
            touched = sum(n for _, n in reads)
            phases.append(
                phase.measured(_TOUCHES, phase.opened, answer, touched, len(reads))
            )
            crcs = answer["crcs"]
            assert isinstance(crcs, list)
            await client.ask("close")
    return _report(
        phases, expected, scan_bytes, scan_sum, rescan_sum, digest, reads, crcs, out
    )


def _report(
    phases: list[RealPhase],
    expected: bytes | None,
    scan_bytes: int,
    scan_sum: int,
    rescan_sum: int,
    digest: str,
    reads: list[tuple[int, int]],
    crcs: list[object],
    out: TextIO,
) -> int:
    """Write the real-memory report; return 0, or 1 if a check failed."""
    out.write(
        "\nreal memory: the file mapped with aiomemmap.map_file() in a client "
        "process and read by numpy as\nordinary memory; each first touch of a "
        "page is a fault served by this process's engine (a Pager)\n"
    )
    render_real_table(phases, out)
    ok = rescan_sum == scan_sum
    scan = f"numpy sum {scan_sum:#018x}, sha256 {digest[:16]}…"
    if expected is None:
        verdict = "not verified (not a generated file)"
    else:
        part = expected[:scan_bytes]
        good = (
            scan_sum == _expected_sum(part)
            and digest == hashlib.sha256(part).hexdigest()
        )
        ok = ok and good
        verdict = (
            "both match the file's bytes"
            if good
            else "FAILED: differ from the file's bytes"
        )
    if rescan_sum != scan_sum:
        verdict += f"; FAILED: the rescan summed {rescan_sum:#018x}"
    out.write(f"  scan checksum   {scan} of {format_bytes(scan_bytes)}: {verdict}\n")
    touch = phases[-1]
    if expected is None:
        checked = "not verified (not a generated file)"
    else:
        wrong = sum(
            crc != zlib.crc32(expected[off : off + n])
            for (off, n), crc in zip(reads, crcs, strict=True)
        )
        ok = ok and wrong == 0
        checked = (
            "each matches the file's bytes"
            if wrong == 0
            else f"FAILED: {wrong} differ from the file's bytes"
        )
    ratio = touch.bytes_fetched / touch.bytes_touched if touch.bytes_touched else 0.0
    out.write(
        f"  random touches  {len(reads)} pages, {checked}; "
        f"{format_bytes(touch.bytes_fetched)} fetched for "
        f"{format_bytes(touch.bytes_touched)} touched ({ratio:.2f}x), "
        f"{_pages(touch.bytes_fetched)} of {_pages(touch.file_size)} file pages\n"
    )
    out.write(
        "real memory: OK, verified\n"
        if ok and expected is not None
        else ("real memory: OK\n" if ok else "real memory: FAILED\n")
    )
    return 0 if ok else 1
