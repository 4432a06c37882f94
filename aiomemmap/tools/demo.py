"""The ``aiomemmap demo`` command: a remote file mapped lazily, measured.

The demo serves a generated file over HTTP on 127.0.0.1 from a process of
its own (a :class:`~aiomemmap.tools.http_server.RangeHTTPServer` run by
:class:`~aiomemmap.tools.bench._served.ServedFiles`, as a real server does
not share its client's interpreter) with a simulated round-trip latency, or
uses any fsspec URL. It maps the file shared and read-only into an
:class:`~aiomemmap.AddressSpace` through a :class:`~aiomemmap.CachedFile`,
and reads it with ``copy_in`` in two workloads: a sequential scan and
concurrent random 4 KiB reads. Every byte read from the generated file is
checked against the source. The same workloads then run, against the same
server, through every fsspec file cache type (one thread per reader, a
handle each) and through aiohttp directly (one whole GET for the scan,
concurrent range GETs for the random reads), and a table compares them all
with the requests and body bytes the server counted for each.

Each workload starts cold: it gets a fresh cached file and mapping, which are
unmapped and closed when it ends.

With ``real``, the phases of :mod:`~aiomemmap.tools.demo_real` follow: a
client process maps the same file as real memory and reads it with numpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

import fsspec
import fsspec.asyn
import fsspec.core
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import PAGE_SIZE, page_round_up
from aiomemmap.backings.base import call_with_retry
from aiomemmap.backings.opener import open_backing
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.memmap.interfaces import MMapOpts
from aiomemmap.mm.address_space import AddressSpace
from aiomemmap.mm.options import Advice
from aiomemmap.pgalloc.memory_file import MemoryFile
from aiomemmap.tools.bench._clients import fsspec_cache_types, range_gets, whole_get
from aiomemmap.tools.bench._served import ServedFiles, ServerCounts, serve_payloads

__all__ = [
    "DemoOptions",
    "WorkloadResult",
    "format_bytes",
    "make_payload",
    "parse_size",
    "render_table",
    "run_demo",
]

_KIB: Final = 1 << 10
_MIB: Final = 1 << 20
_SCAN_CHUNK: Final = _MIB
_RANDOM_READ: Final = 4 * _KIB
# fsspec's block size for the random reads: the read size, its best for
# them; the scan uses fsspec's default.
_RANDOM_BLOCK: Final = _RANDOM_READ
_SCAN: Final = "sequential scan"
_RANDOM: Final = "random reads"
_OURS: Final = "aiomemmap"
_WHOLE_GET: Final = "aiohttp whole GET"
_RANGE_GETS: Final = "aiohttp range GETs"
_OBJECT_NAME: Final = "demo.bin"
_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_SHIFTS: Final = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text: str) -> int:
    """Parse a byte count such as ``4096``, ``16M``, ``1G`` or ``256MiB``.

    Suffixes are binary multiples (``K`` = 1024) and case-insensitive.

    Args:
        text: The size to parse.

    Returns:
        The size in bytes.

    Raises:
        ValueError: ``text`` is not a size, or is zero.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 16M, 1G)")
    size = int(m.group(1)) << _SIZE_SHIFTS[m.group(2).lower()]
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def make_payload(size: int, seed: int) -> bytes:
    """Return ``size`` pseudo-random bytes, the same for the same seed.

    Args:
        size: How many bytes.
        seed: Seed of the generator.

    Returns:
        The bytes.
    """
    rng = random.Random(seed)
    whole, rest = divmod(size, _MIB)
    return b"".join([rng.randbytes(_MIB) for _ in range(whole)] + [rng.randbytes(rest)])


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``aiomemmap demo`` does.

    Attributes:
        size: Size of the generated file; with ``url``, the most bytes the
            sequential scan reads.
        latency: Simulated round-trip latency of the local server, seconds.
        url: Run against this fsspec URL instead of a local server.
        random_reads: How many random 4 KiB reads.
        readers: How many tasks (threads, for fsspec) share the random reads.
        seed: Seed of the generated file and the random offsets.
        compare: Whether to run the workloads through fsspec and aiohttp too.
        real: Whether to add the real-memory phases
            (:mod:`~aiomemmap.tools.demo_real`): numpy in a client process
            scans the file mapped with ``map_file``, then touches random
            pages of it.
        touches: Distinct random pages the real-memory touch phase touches.

    Concurrency:
        Immutable.
    """

    size: int = 256 * _MIB
    latency: float = 0.002
    url: str | None = None
    random_reads: int = 2048
    readers: int = 16
    seed: int = 1
    compare: bool = True
    real: bool = False
    touches: int = 256


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    """The measurements of one workload run by one implementation.

    Attributes:
        workload: ``"sequential scan"`` or ``"random reads"``.
        implementation: ``"aiomemmap"``, ``"fsspec <cache type>"``,
            ``"aiohttp whole GET"`` or ``"aiohttp range GETs"``.
        seconds: Wall-clock time of the workload.
        reads: Reads made.
        bytes_read: Bytes the reads returned.
        fetches: Requests the demo's server answered during the run; with
            ``--url`` (no server of the demo's), aiomemmap's backing fetches
            and ``None`` for the others.
        bytes_fetched: Body bytes of those requests (or fetches); ``None``
            when unknown.
        hit_rate: Share of the pages read that did not wait for a fetch;
            ``None`` when unknown.
        latencies: Seconds taken by each read.
        mismatches: Reads whose bytes differed from the source; ``None``
            when not verified.

    Concurrency:
        Immutable.
    """

    workload: str
    implementation: str
    seconds: float
    reads: int
    bytes_read: int
    fetches: int | None
    bytes_fetched: int | None
    hit_rate: float | None
    latencies: Sequence[float] = field(repr=False)
    mismatches: int | None

    @property
    def throughput(self) -> float:
        """Bytes read per second."""
        return self.bytes_read / self.seconds if self.seconds > 0 else math.inf

    def percentile(self, p: float) -> float:
        """Return the ``p``-th percentile (nearest rank) of the read latencies.

        Args:
            p: The percentile, in ``(0, 100]``.

        Returns:
            Seconds; ``nan`` if there were no reads.
        """
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class _Target:
    """The file the workloads read."""

    url: str
    size: int
    scan_bytes: int
    expected: bytes | None
    served: ServedFiles | None

    def counts(self) -> ServerCounts | None:
        """What the demo's server has counted so far; ``None`` without one."""
        return None if self.served is None else self.served.counts()


def _used(before: ServerCounts | None, target: _Target) -> ServerCounts | None:
    after = target.counts()
    return None if before is None or after is None else after - before


def _plan(
    size: int, scan_bytes: int, reads: int, seed: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Return the ``(offset, length)`` reads of the scan and the random reads."""
    scan = [
        (off, min(_SCAN_CHUNK, scan_bytes - off))
        for off in range(0, scan_bytes, _SCAN_CHUNK)
    ]
    rng = random.Random(seed)
    pages = max(1, size // PAGE_SIZE)
    random_reads = []
    for _ in range(reads):
        off = rng.randrange(pages) * PAGE_SIZE
        random_reads.append((off, min(_RANDOM_READ, size - off)))
    return scan, random_reads


# ---------------------------------------------------------------------------
# Live progress on stderr.
# ---------------------------------------------------------------------------


class _Meter:
    """Counts the bytes a running workload has read (from any thread)."""

    def __init__(self) -> None:
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n


class _Display:
    """Shows each workload's progress: a rich bar on a terminal, else lines."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._progress: Progress | None = None
        if stream.isatty():
            self._progress = Progress(
                TextColumn("{task.description:<26}"),
                BarColumn(bar_width=24),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(file=stream),
            )

    def __enter__(self) -> _Display:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextlib.asynccontextmanager
    async def track(
        self, description: str, total: int, status: Callable[[], str]
    ) -> AsyncIterator[_Meter]:
        """Show the progress of one workload while the body runs.

        Args:
            description: What runs, e.g. ``"sequential scan / aiomemmap"``.
            total: Bytes the workload will read.
            status: Returns extra live information (fetches in flight...).

        Yields:
            The meter the workload adds its bytes to.
        """
        meter = _Meter()
        started = time.perf_counter()
        task_id: TaskID | None = None
        if self._progress is not None:
            task_id = self._progress.add_task(description, total=total, status="")
        interval = 0.1 if self._progress is not None else 1.0

        def show(final: bool = False) -> None:
            if self._progress is not None:
                assert task_id is not None
                self._progress.update(task_id, completed=meter.done, status=status())
                return
            elapsed = max(time.perf_counter() - started, 1e-9)
            pct = 100 * meter.done / total if total else 100.0
            state = f"done in {elapsed:.2f} s" if final else status()
            self._stream.write(
                f"{description}: {format_bytes(meter.done)} of {format_bytes(total)} "
                f"({pct:.0f}%), {format_bytes(meter.done / elapsed)}/s, {state}\n"
            )
            self._stream.flush()

        async def refresh() -> None:
            while True:
                await asyncio.sleep(interval)
                show()

        refresher = asyncio.create_task(refresh())
        try:
            yield meter
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        show(final=True)


# ---------------------------------------------------------------------------
# The workloads through aiomemmap.
# ---------------------------------------------------------------------------


async def _run_ours(
    target: _Target,
    asp: AddressSpace,
    workload: str,
    reads: list[tuple[int, int]],
    readers: int,
    display: _Display,
) -> WorkloadResult:
    """Run one workload through a fresh cached file mapped into ``asp``."""
    before = target.counts()
    backing = open_backing(target.url)
    cf = CachedFile(backing, asp.memory_file, name=target.url)
    latencies: list[float] = []
    mismatches = 0
    try:
        addr = await asp.mmap(
            MMapOpts(
                length=target.size,
                mappable=cf,
                mapping_identity=cf,
                perms=AccessType.READ,
                max_perms=AccessType.READ,
            )
        )
        try:
            advice = Advice.SEQUENTIAL if workload == _SCAN else Advice.RANDOM
            await asp.madvise(addr, target.size, advice)

            def status() -> str:
                st = cf.statistics()
                return (
                    f"{st.fetches_in_flight} fetches in flight, "
                    f"{format_bytes(st.bytes_fetched)} fetched"
                )

            total = sum(n for _, n in reads)
            async with display.track(_label(workload, _OURS), total, status) as meter:

                async def reader(share: list[tuple[int, int]]) -> None:
                    nonlocal mismatches
                    for off, n in share:
                        t0 = time.perf_counter()
                        data = await asp.copy_in(addr + off, n)
                        latencies.append(time.perf_counter() - t0)
                        meter.add(len(data))
                        if (
                            target.expected is not None
                            and data != target.expected[off : off + n]
                        ):
                            mismatches += 1

                t0 = time.perf_counter()
                async with asyncio.TaskGroup() as tg:
                    for i in range(readers):
                        tg.create_task(reader(reads[i::readers]))
                seconds = time.perf_counter() - t0
        finally:
            await asp.munmap(addr, page_round_up(target.size))
        st = cf.statistics()
    finally:
        await cf.aclose()
        await backing.aclose()
    used = _used(before, target)
    pages = sum(_pages_spanned(off, n) for off, n in reads)
    return WorkloadResult(
        workload=workload,
        implementation=_OURS,
        seconds=seconds,
        reads=len(reads),
        bytes_read=total,
        fetches=st.fetches if used is None else used.requests,
        bytes_fetched=st.bytes_fetched if used is None else used.bytes_sent,
        hit_rate=max(0.0, 1 - st.misses / pages) if pages else None,
        latencies=latencies,
        mismatches=None if target.expected is None else mismatches,
    )


def _label(workload: str, implementation: str) -> str:
    """The progress line's description, short enough for 80 columns."""
    short = "scan" if workload == _SCAN else "random"
    return f"{short} / {implementation}"


def _pages_spanned(off: int, n: int) -> int:
    return (page_round_up(off + n) - (off - off % PAGE_SIZE)) // PAGE_SIZE


# ---------------------------------------------------------------------------
# The workloads through fsspec (synchronous files, run in threads).
# ---------------------------------------------------------------------------


def _fsspec_reads(
    url: str,
    cache_type: str,
    block_size: int | None,
    shares: list[list[tuple[int, int]]],
    meter: _Meter,
) -> tuple[float, list[float]]:
    """Read each share in a thread of its own, through its own fsspec file.

    Returns:
        The wall-clock seconds and every read's latency.
    """
    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    latencies: list[float] = []

    def reader(share: list[tuple[int, int]]) -> None:
        with fs.open(path, "rb", cache_type=cache_type, block_size=block_size) as f:
            for off, n in share:
                t0 = time.perf_counter()
                f.seek(off)
                data = f.read(n)
                latencies.append(time.perf_counter() - t0)
                meter.add(len(data))

    threads = [threading.Thread(target=reader, args=(s,)) for s in shares]
    try:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, latencies
    finally:
        _close_fs(fs)


def _close_fs(fs: object) -> None:
    """Close the aiohttp session a synchronous fsspec HTTP filesystem opened."""
    session = getattr(fs, "_session", None)
    loop = getattr(fs, "loop", None)
    if session is not None and loop is not None:
        fsspec.asyn.sync(loop, session.close)


async def _run_fsspec(
    target: _Target,
    workload: str,
    reads: list[tuple[int, int]],
    readers: int,
    cache_type: str,
    display: _Display,
) -> WorkloadResult:
    """Run one workload through fsspec's file cache ``cache_type``."""
    before = target.counts()

    def status() -> str:
        used = _used(before, target)
        return "" if used is None else f"{used.requests} requests"

    block = None if workload == _SCAN else _RANDOM_BLOCK
    shares = [reads[i::readers] for i in range(readers)]
    total = sum(n for _, n in reads)
    name = f"fsspec {cache_type}"
    async with display.track(_label(workload, name), total, status) as meter:
        seconds, latencies = await asyncio.to_thread(
            _fsspec_reads, target.url, cache_type, block, shares, meter
        )
    if meter.done != total:
        raise RuntimeError(
            f"fsspec ({cache_type}) read {meter.done} bytes instead of {total}"
        )
    used = _used(before, target)
    return WorkloadResult(
        workload=workload,
        implementation=name,
        seconds=seconds,
        reads=len(reads),
        bytes_read=total,
        fetches=None if used is None else used.requests,
        bytes_fetched=None if used is None else used.bytes_sent,
        hit_rate=None,
        latencies=latencies,
        mismatches=None,
    )


# ---------------------------------------------------------------------------
# The workloads through aiohttp directly (HTTP targets only).
# ---------------------------------------------------------------------------


async def _run_aiohttp(
    target: _Target,
    workload: str,
    reads: list[tuple[int, int]],
    readers: int,
    display: _Display,
) -> WorkloadResult:
    """Run one workload through aiohttp without a cache.

    The scan is one GET of the whole file (a range GET of its first
    ``scan_bytes`` when the scan stops short of the end); the random reads
    are range GETs, one task per reader. No latency per read is taken.
    """
    before = target.counts()
    total = sum(n for _, n in reads)
    name = _WHOLE_GET if workload == _SCAN else _RANGE_GETS

    def status() -> str:
        used = _used(before, target)
        return "" if used is None else f"{used.requests} requests"

    async with display.track(_label(workload, name), total, status) as meter:
        t0 = time.perf_counter()
        if workload != _SCAN:
            shares = [[off for off, _ in reads[i::readers]] for i in range(readers)]
            # A read cut short by the end of the file is cut short by the
            # server too.
            got = await range_gets(target.url, shares, _RANDOM_READ)
        elif target.scan_bytes == target.size:
            got = await whole_get([target.url])
        else:
            got = await range_gets(target.url, [[0]], target.scan_bytes)
        seconds = time.perf_counter() - t0
        meter.add(got)
    if got != total:
        raise RuntimeError(f"{name} read {got} bytes instead of {total}")
    used = _used(before, target)
    return WorkloadResult(
        workload=workload,
        implementation=name,
        seconds=seconds,
        reads=len(reads),
        bytes_read=total,
        fetches=None if used is None else used.requests,
        bytes_fetched=None if used is None else used.bytes_sent,
        hit_rate=None,
        latencies=(),
        mismatches=None,
    )


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """A byte count in words, e.g. ``"1.5 MiB"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", _MIB), ("KiB", _KIB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def _fmt_optional(value: int | None, fmt: Callable[[int], str]) -> str:
    return "n/a" if value is None else fmt(value)


def _report_ours(r: WorkloadResult, describe: str, fetches: str, out: TextIO) -> None:
    lines = [
        f"{r.workload}: {describe}",
        f"  bytes read      {format_bytes(r.bytes_read)}",
    ]
    if r.bytes_fetched is not None and r.fetches is not None:
        ratio = r.bytes_fetched / r.bytes_read if r.bytes_read else 0.0
        lines.append(
            f"  bytes fetched   {format_bytes(r.bytes_fetched)} ({ratio:.2f}x the "
            f"bytes read) in {r.fetches} {fetches}"
        )
    if r.hit_rate is not None:
        lines.append(
            f"  hit rate        {100 * r.hit_rate:.1f}% of the pages read did not "
            "wait for a fetch"
        )
    lines += [
        f"  read latency    p50 {_fmt_ms(r.percentile(50))}, "
        f"p99 {_fmt_ms(r.percentile(99))}",
        f"  throughput      {format_bytes(r.throughput)}/s, "
        f"{r.reads / r.seconds if r.seconds else math.inf:,.0f} reads/s "
        f"({r.seconds:.2f} s)",
    ]
    if r.mismatches is None:
        lines.append("  verified        no (not a generated file)")
    elif r.mismatches == 0:
        lines.append("  verified        every byte matches the source")
    else:
        lines.append(
            f"  verified        FAILED: {r.mismatches} reads returned wrong bytes"
        )
    out.write("\n".join(lines) + "\n\n")


def render_table(results: Sequence[WorkloadResult], out: TextIO) -> None:
    """Write the comparison table of ``results``.

    The speedup of a row is its time divided by aiomemmap's time on the same
    workload: above 1 aiomemmap was faster. ``requests`` and ``fetched`` are
    :attr:`WorkloadResult.fetches` and :attr:`WorkloadResult.bytes_fetched`.

    Args:
        results: The rows, aiomemmap's first within each workload.
        out: Where to write.
    """
    ours = {r.workload: r for r in results if r.implementation == _OURS}
    header = (
        "workload",
        "implementation",
        "time",
        "throughput",
        "requests",
        "fetched",
        "p50",
        "p99",
        "speedup",
    )
    rows = [header]
    for r in results:
        base = ours.get(r.workload)
        speedup = (
            "1.00x"
            if r.implementation == _OURS
            else (
                f"{r.seconds / base.seconds:.2f}x" if base and base.seconds else "n/a"
            )
        )
        rows.append(
            (
                r.workload,
                r.implementation,
                f"{r.seconds:.2f} s",
                f"{format_bytes(r.throughput)}/s",
                _fmt_optional(r.fetches, str),
                _fmt_optional(r.bytes_fetched, format_bytes),
                _fmt_ms(r.percentile(50)),
                _fmt_ms(r.percentile(99)),
                speedup,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


async def _remote_size(url: str) -> int:
    backing = open_backing(url)
    try:
        return await call_with_retry(backing.size)
    finally:
        await backing.aclose()


async def run_demo(options: DemoOptions, out: TextIO, err: TextIO) -> int:
    """Run the demo and write its report.

    Args:
        options: What to run.
        out: Where the report goes.
        err: Where the live progress goes (a rich progress bar if it is a
            terminal, periodic lines otherwise).

    Returns:
        The exit status: 0, or 1 if a byte read differed from the source or
        a page was still in use after everything was closed, or 3 (before
        anything runs) if ``options.real`` asks for real memory on a host
        that cannot map it (the reason is written to ``err``).

    Raises:
        ValueError: A bad option, URL or empty file.
        OSError: The file could not be read (``FileNotFoundError``...).
        aiomemmap.BusError: The file failed while mapped.
        aiomemmap.tools.demo_real.ClientError: The real-memory client
            process failed.
    """
    if options.real:
        from aiomemmap.tools.demo_real import UNUSABLE_STATUS, real_memory_problem

        problem = real_memory_problem()
        if problem is not None:
            err.write(f"aiomemmap demo --real: {problem}\n")
            return UNUSABLE_STATUS
    if options.url is None:
        data = make_payload(options.size, options.seed)
        # Starting the server blocks until it has loaded the file.
        with serve_payloads({_OBJECT_NAME: data}, latency=options.latency) as served:
            url = served.url(_OBJECT_NAME)
            target = _Target(url, len(data), len(data), data, served)
            out.write(
                f"aiomemmap demo: {format_bytes(target.size)} generated (seed "
                f"{options.seed}), served at {target.url} by a process of its "
                f"own with {options.latency * 1000:g} ms simulated latency per "
                "request\n\n"
            )
            return await _run_all_and_real(target, options, out, err)
    size = await _remote_size(options.url)
    if size == 0:
        raise ValueError(f"{options.url!r} is empty: nothing to read")
    target = _Target(options.url, size, min(size, options.size), None, None)
    out.write(
        f"aiomemmap demo: {options.url} ({format_bytes(size)}), scanning the first "
        f"{format_bytes(target.scan_bytes)}\n\n"
    )
    return await _run_all_and_real(target, options, out, err)


async def _run_all_and_real(
    target: _Target, options: DemoOptions, out: TextIO, err: TextIO
) -> int:
    """Run the workloads, then the real-memory phases if asked; the worse status."""
    status = await _run_all(target, options, out, err)
    if not options.real:
        return status
    from aiomemmap.tools.demo_real import run_real_phases

    real = await run_real_phases(
        target.url,
        target.scan_bytes,
        target.expected,
        target.served,
        touches=options.touches,
        seed=options.seed,
        out=out,
        err=err,
    )
    return max(status, real)


async def _run_others(
    target: _Target,
    workload: str,
    reads: list[tuple[int, int]],
    readers: int,
    display: _Display,
) -> list[WorkloadResult]:
    """Run one workload through every fsspec cache type, then aiohttp."""
    installed, _ = fsspec_cache_types()
    results = [
        await _run_fsspec(target, workload, reads, readers, ct, display)
        for ct in installed
    ]
    if target.url.startswith(("http://", "https://")):
        results.append(await _run_aiohttp(target, workload, reads, readers, display))
    return results


async def _run_all(
    target: _Target, options: DemoOptions, out: TextIO, err: TextIO
) -> int:
    scan, random_reads = _plan(
        target.size, target.scan_bytes, options.random_reads, options.seed
    )
    workloads = [
        (
            _SCAN,
            scan,
            1,
            f"{len(scan)} reads of up to 1 MiB with copy_in, one task",
        ),
        (
            _RANDOM,
            random_reads,
            options.readers,
            f"{len(random_reads)} reads of 4 KiB at random pages with copy_in, "
            f"{options.readers} tasks",
        ),
    ]
    results: list[WorkloadResult] = []
    details: list[tuple[WorkloadResult, str]] = []
    mf = MemoryFile("aiomemmap-demo")
    try:
        async with AddressSpace(mf) as asp:
            with _Display(err) as display:
                for workload, reads, readers, describe in workloads:
                    r = await _run_ours(target, asp, workload, reads, readers, display)
                    results.append(r)
                    details.append((r, describe))
                    if options.compare:
                        results += await _run_others(
                            target, workload, reads, readers, display
                        )
        leaked = mf.statistics().used_bytes
    finally:
        mf.close()
    # The report is written once the live display is gone.
    fetches = "fetches" if target.served is None else "requests (server-counted)"
    for r, describe in details:
        _report_ours(r, describe, fetches, out)
    if options.compare:
        counted = (
            "requests and fetched: what the demo's server counted for each row"
            if target.served is not None
            else "requests and fetched: aiomemmap's own fetches (no server of ours)"
        )
        _, missing = fsspec_cache_types()
        if missing:
            counted += f"; not in this fsspec: {', '.join(missing)}"
        out.write(
            f"comparison, same file and same run ({counted};\nspeedup: the row's "
            "time over aiomemmap's, above 1 aiomemmap was faster)\n"
        )
        render_table(results, out)
        out.write("\n")
    ok = True
    if leaked:
        out.write(
            f"cleanup: FAILED, {format_bytes(leaked)} still in use after closing\n"
        )
        ok = False
    else:
        out.write(
            "cleanup: address space, cached files and memory file closed, "
            "no page left in use\n"
        )
    ours = [r for r in results if r.implementation == _OURS]
    if target.expected is None:
        out.write("result: OK (not verified: --url files have no known contents)\n")
    elif all(r.mismatches == 0 for r in ours):
        verified = sum(r.bytes_read for r in ours)
        out.write(f"result: OK, {format_bytes(verified)} read and verified\n")
    else:
        out.write("result: FAILED, some bytes read differ from the source\n")
        ok = False
    return 0 if ok else 1
