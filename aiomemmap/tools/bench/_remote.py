"""Benchmarks of lazily paged remote files (rows P3, P3c, P4, P6, P7).

The rows P3 (a sequential scan), P3c (four scans at once, of four files) and
P4 (concurrent random reads) read files that a child process serves
(:class:`~aiomemmap.tools.bench._served.ServedFiles`, 2 ms of latency per
request), since a real server does not share its client's interpreter. Ours
and every baseline (:mod:`aiomemmap.tools.bench._clients`) run cold (a new
cache, session or store each time), in turns: one turn that is not counted,
then :data:`REMOTE_REPEATS` more, the order rotating by one each turn (see
:func:`_compare`); each is reported by its median time, with the requests
and body bytes the server counted in that run. The baselines are aiohttp
(whole GETs, raw range GETs), a minimal parallel range fetcher, every fsspec
cache type and obstore's ``HTTPStore``.

Ours opens each file with ``open_backing(url)`` and a fresh
:class:`~aiomemmap.CachedFile` over a fresh memory file, and reads with
:meth:`~aiomemmap.CachedFile.readinto` into a reused buffer (1 MiB for the
scans, a page for the random reads). The rows, with their targets:

* P3: one file of :data:`SCAN_BYTES`, scanned in 1 MiB reads. P3 against one
  whole-file GET (>= 0.8x), P3b against fsspec's best cache type (>= 2x),
  P3m against the minimal range fetcher (>= 1x; it reads each byte out of
  its memfd once, in 1 MiB reads into a reused buffer, as ours are read,
  so that both do the same work), P3v the other way round for information
  (ours read through ``read_view``, which copies nothing, against the
  fetcher landing its bytes without reading them), P3l against the landing
  floor (>= 0.9x: one whole GET that writes its body into memfd pages, which
  is what any client that holds the bytes in memfd pages pays at least, and
  shows whether P3's 0.8x of a GET that keeps nothing can be reached at all
  on this machine); P3o (obstore, streaming
  the object whole, its own best way to scan) and P3f (each fsspec cache
  type) for information.
* P3c: four files of a quarter of that, scanned at once by four readers:
  P3c, P3cb, P3cm, P3cl, P3cv, P3co and P3cf as for P3, against four
  concurrent GETs, fsspec with four threads, the fetcher over the four
  files and obstore streaming the four objects.
* P4: :data:`RANDOM_READS` page reads at seeded page offsets of a file of
  :data:`RANDOM_FILE_BYTES`, by :data:`READERS` concurrent readers. P4
  against the faster of raw aiohttp range GETs and obstore's
  ``get_range_async`` (>= 0.9x), P4b against fsspec's best (>= 1.2x, 16
  threads with a handle each, fsspec's block size the read size), P4c the
  bytes the server sent for ours over the bytes read (<= 4x); P4r, P4o and
  P4f for information.

P6 and P7 count what our side does, against an in-process
:class:`~aiomemmap.tools.http_server.RangeHTTPServer`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import MappableRange
from aiomemmap.backings.opener import open_backing
from aiomemmap.backings.testing import FaultInjectingBacking
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.mappables.readahead import DEFAULT_MAXIMUM_WINDOW
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind
from aiomemmap.tools.bench import BenchRow, register
from aiomemmap.tools.bench import _clients as clients
from aiomemmap.tools.bench._served import ServedFiles, ServerCounts, serve_payloads
from aiomemmap.tools.http_server import RangeHTTPServer

_SEED: Final[int] = 20261125
_MIB: Final[int] = 1 << 20

#: Workload sizes and repetitions; the environment may shrink them (the tests do).
SCAN_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_SCAN_BYTES", 256 * _MIB))
RANDOM_READS = int(os.environ.get("AIOMEMMAP_BENCH_RANDOM_READS", 2048))
RANDOM_FILE_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_RANDOM_FILE_BYTES", 256 * _MIB))
BUDGET_SCAN_BYTES = int(os.environ.get("AIOMEMMAP_BENCH_BUDGET_SCAN_BYTES", 1 << 30))
BUDGET_LIMIT = int(os.environ.get("AIOMEMMAP_BENCH_BUDGET_LIMIT", 64 * _MIB))
REMOTE_REPEATS = int(os.environ.get("AIOMEMMAP_BENCH_REMOTE_REPEATS", 3))
LATENCY: Final[float] = 0.002
#: Concurrent readers of the random reads.
READERS: Final[int] = 16
#: Files, and concurrent readers, of the P3c scan (each file SCAN_BYTES / 4).
SCAN_FILES: Final[int] = 4
#: Bytes per read of the scans.
SCAN_READ: Final[int] = _MIB
#: fsspec's block size for the random reads: the read size, its best for them.
FSSPEC_RANDOM_BLOCK: Final[int] = PAGE_SIZE

_OURS: Final[str] = "ours"
_OURS_VIEWED: Final[str] = "ours viewed"
_FETCH_LANDS: Final[str] = "fetch, no read"
_GET: Final[str] = "get"
_LANDED: Final[str] = "landed"
_FETCH: Final[str] = "fetch"
_RAW: Final[str] = "raw"
_OBSTORE: Final[str] = "obstore"
_FSSPEC: Final[str] = "fsspec "

Client = Callable[[], Awaitable[int]]


def _payload(size: int, seed: int = _SEED) -> bytes:
    rng = random.Random(seed)
    whole, rest = divmod(size, _MIB)
    return b"".join([rng.randbytes(_MIB) for _ in range(whole)] + [rng.randbytes(rest)])


def _have_obstore() -> bool:
    return importlib.util.find_spec("obstore") is not None


@final
@dataclass(frozen=True, slots=True)
class _Run:
    """One client's run: wall-clock seconds and what the server counted."""

    seconds: float
    used: ServerCounts

    def describe(self) -> str:
        return f"{self.seconds * 1000:.0f} ms, {self.used.describe()}"


async def _measure(
    served: ServedFiles, name: str, client: Client, expected: int
) -> _Run:
    """Time one cold run of ``client`` and take the server's counts of it.

    Raises:
        RuntimeError: The client read another number of bytes than ``expected``.
    """
    gc.collect()
    before = served.counts()
    t0 = time.perf_counter()
    got = await client()
    seconds = time.perf_counter() - t0
    used = served.counts() - before
    if got != expected:
        raise RuntimeError(f"{name} read {got} bytes instead of {expected}")
    return _Run(seconds, used)


async def _compare(
    served: ServedFiles, runners: dict[str, Client], expected: int
) -> dict[str, _Run]:
    """Run every client :data:`REMOTE_REPEATS` times, in turns; keep each median.

    One turn of every client comes first and is not counted: each pays its
    one-time costs (imports, the first session, TLS defaults) there, not in
    a measured run. Taking turns spreads the machine's noise over all the
    clients alike, and the order rotates by one each turn, so that no
    client always runs first, or always right after the same other one
    (a client that has just freed hundreds of MiB leaves the kernel work to
    do, and the pages it hands out next cost more).
    """
    names = list(runners)
    runs: dict[str, list[_Run]] = {name: [] for name in runners}
    for turn in range(1 + max(1, REMOTE_REPEATS)):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            run = await _measure(served, name, runners[name], expected)
            if turn:
                runs[name].append(run)
    return {
        name: sorted(done, key=lambda r: r.seconds)[(len(done) - 1) // 2]
        for name, done in runs.items()
    }


def _threaded(fn: Callable[[], int]) -> Client:
    async def run() -> int:
        return await asyncio.to_thread(fn)

    return run


# ---------------------------------------------------------------------------
# Ours.
# ---------------------------------------------------------------------------


async def _scan_file(cf: CachedFile, size: int) -> int:
    """Read ``cf`` to ``size`` into one reused buffer of :data:`SCAN_READ` bytes."""
    buf = bytearray(SCAN_READ)
    off = 0
    while off < size:
        n = await cf.readinto(off, buf)
        if not n:
            break
        off += n
    return off


async def _ours_scan(urls: Sequence[str], size: int) -> int:
    """Scan each URL (``size`` bytes) through a fresh CachedFile, concurrently.

    One fresh memory file serves them all, as one process's cache would.
    """
    with MemoryFile("bench-scan") as mf:
        backings = [open_backing(url) for url in urls]
        files = [CachedFile(backing, mf) for backing in backings]
        try:
            done = await asyncio.gather(*(_scan_file(cf, size) for cf in files))
        finally:
            for cf, backing in zip(files, backings, strict=True):
                await cf.aclose()
                await backing.aclose()
    return sum(done)


async def _view_file(cf: CachedFile, size: int) -> int:
    """Read ``cf`` to ``size`` through views of :data:`SCAN_READ` bytes, no copy."""
    off = 0
    while off < size:
        async with cf.read_view(off, SCAN_READ) as view:
            n = len(view)
        if not n:
            break
        off += n
    return off


async def _ours_scan_viewed(urls: Sequence[str], size: int) -> int:
    """As :func:`_ours_scan`, reading through ``read_view``: no copy out."""
    with MemoryFile("bench-scan-view") as mf:
        backings = [open_backing(url) for url in urls]
        files = [CachedFile(backing, mf) for backing in backings]
        try:
            done = await asyncio.gather(*(_view_file(cf, size) for cf in files))
        finally:
            for cf, backing in zip(files, backings, strict=True):
                await cf.aclose()
                await backing.aclose()
    return sum(done)


async def _ours_random(url: str, shares: Sequence[Sequence[int]]) -> int:
    """Read a page at each offset, one task per share, one fresh CachedFile."""
    with MemoryFile("bench-random") as mf:
        backing = open_backing(url)
        cf = CachedFile(backing, mf)

        async def reader(share: Sequence[int]) -> int:
            n = 0
            buf = bytearray(PAGE_SIZE)
            for off in share:
                n += await cf.readinto(off, buf)
            return n

        try:
            return sum(await asyncio.gather(*(reader(s) for s in shares)))
        finally:
            await cf.aclose()
            await backing.aclose()


# ---------------------------------------------------------------------------
# Rows.
# ---------------------------------------------------------------------------


def _versus(
    row_id: str,
    what: str,
    unit: str,
    work: float,
    ours: _Run,
    base: _Run,
    base_name: str,
    at_least: float | None = None,
) -> BenchRow:
    """A row comparing rates (``work`` per second); ``at_least`` is the target.

    Both sides carry what the server counted for them.
    """
    ours_rate, base_rate = work / ours.seconds, work / base.seconds
    ratio = ours_rate / base_rate
    return BenchRow(
        row_id,
        f"{what}; ours: {ours.describe()}",
        unit,
        ours_rate,
        base_rate,
        f"{base_name}: {base.describe()}",
        ratio,
        target="" if at_least is None else f">= {at_least:g}x",
        met=None if at_least is None else ratio >= at_least,
    )


def _fsspec_runs(runs: dict[str, _Run]) -> dict[str, _Run]:
    return {
        name.removeprefix(_FSSPEC): run
        for name, run in runs.items()
        if name.startswith(_FSSPEC)
    }


def _fsspec_clients(
    make: Callable[[str], Callable[[], int]],
) -> dict[str, Client]:
    installed, _ = clients.fsspec_cache_types()
    return {_FSSPEC + ct: _threaded(make(ct)) for ct in installed}


def _missing_fsspec() -> str:
    _, missing = clients.fsspec_cache_types()
    return f" (not in this fsspec: {', '.join(missing)})" if missing else ""


def _scan_rows(
    prefix: str, what: str, runs: dict[str, _Run], total: int, per_file: str
) -> list[BenchRow]:
    """The rows of one scan workload: the three targets, then the others."""
    same = functools.partial(
        _versus,
        what=f"{prefix}'s scan{'s' if per_file else ''}",
        unit="MiB/s",
        work=total / _MIB,
        ours=runs[_OURS],
    )
    fs = _fsspec_runs(runs)
    best_ct, best = min(fs.items(), key=lambda kv: kv[1].seconds)
    fetcher = (
        f"{clients.RANGE_FETCH_IN_FLIGHT} ranges of "
        f"{clients.RANGE_FETCH_PART // _MIB} MiB in flight, pwrite into memfds"
    )
    rows = [
        same(
            f"{prefix}",
            what=what,
            base=runs[_GET],
            base_name=f"aiohttp whole GET{per_file}",
            at_least=0.8,
        ),
        same(
            f"{prefix}b",
            base=best,
            base_name=f"fsspec's best{per_file}: {best_ct}{_missing_fsspec()}",
            at_least=2.0,
        ),
        same(
            f"{prefix}m",
            base=runs[_FETCH],
            base_name=(
                f"minimal fetcher{per_file}, {fetcher}, each byte read out "
                "once in 1 MiB reads as ours are"
            ),
            at_least=1.0,
        ),
        same(
            f"{prefix}l",
            base=runs[_LANDED],
            base_name=(
                f"the landing floor: aiohttp whole GET{per_file} writing each "
                "piece into a memfd (pwrite), pages freed at the end"
            ),
            at_least=0.9,
        ),
    ]
    rows.append(
        same(
            f"{prefix}v",
            what=f"{prefix}'s scan{'s' if per_file else ''} through read_view, no copy",
            ours=runs[_OURS_VIEWED],
            base=runs[_FETCH_LANDS],
            base_name=f"minimal fetcher{per_file}, {fetcher}, nothing read out",
        )
    )
    if _OBSTORE in runs:
        rows.append(
            same(
                f"{prefix}o",
                base=runs[_OBSTORE],
                base_name=f"obstore HTTPStore get_async streamed{per_file}",
            )
        )
    rows += [
        same(f"{prefix}f", base=run, base_name=f"fsspec {ct}{per_file}")
        for ct, run in fs.items()
    ]
    return rows


async def _scan(names: Sequence[str], size: int) -> dict[str, _Run]:
    """Serve ``names`` (``size`` bytes each) and scan them all with every client."""
    payloads = {name: _payload(size, _SEED + i) for i, name in enumerate(names)}
    with serve_payloads(payloads, latency=LATENCY) as served:
        del payloads
        urls = [served.url(name) for name in names]
        runners: dict[str, Client] = {
            _OURS: lambda: _ours_scan(urls, size),
            _OURS_VIEWED: lambda: _ours_scan_viewed(urls, size),
            _GET: lambda: clients.whole_get(urls),
            _LANDED: lambda: clients.whole_get_landed(urls),
            _FETCH: lambda: clients.range_fetch(urls, SCAN_READ),
            _FETCH_LANDS: lambda: clients.range_fetch(urls),
        }
        if _have_obstore():
            runners[_OBSTORE] = lambda: clients.obstore_scan(
                served.base_url, names, SCAN_READ
            )
        runners |= _fsspec_clients(
            lambda ct: functools.partial(clients.fsspec_scan, urls, ct, SCAN_READ)
        )
        return await _compare(served, runners, size * len(names))


@register("P3,P3b,P3m,P3l,P3v,P3o,P3f")
async def sequential_scan() -> list[BenchRow]:
    """P3: a cold sequential scan of one file, 1 MiB reads."""
    size = SCAN_BYTES
    runs = await _scan(["scan.bin"], size)
    what = f"cold sequential scan of {size / _MIB:g} MiB, 1 MiB reads"
    return _scan_rows("P3", what, runs, size, "")


@register("P3c,P3cb,P3cm,P3cl,P3cv,P3co,P3cf")
async def concurrent_scans() -> list[BenchRow]:
    """P3c: four concurrent cold scans, one per file, 1 MiB reads."""
    size = SCAN_BYTES // SCAN_FILES
    runs = await _scan([f"scan{i}.bin" for i in range(SCAN_FILES)], size)
    what = (
        f"{SCAN_FILES} concurrent cold scans of {SCAN_FILES} files of "
        f"{size / _MIB:g} MiB, 1 MiB reads"
    )
    return _scan_rows("P3c", what, runs, size * SCAN_FILES, f", {SCAN_FILES} at once")


@register("P4,P4b,P4c,P4r,P4o,P4f")
async def random_reads() -> list[BenchRow]:
    """P4: cold random 4 KiB reads by 16 concurrent readers."""
    size = RANDOM_FILE_BYTES
    n = RANDOM_READS
    rng = random.Random(_SEED)
    offsets = [rng.randrange(0, size // PAGE_SIZE) * PAGE_SIZE for _ in range(n)]
    shares = [offsets[i::READERS] for i in range(READERS)]
    name = "random.bin"
    with serve_payloads({name: _payload(size)}, latency=LATENCY) as served:
        url = served.url(name)
        runners: dict[str, Client] = {
            _OURS: lambda: _ours_random(url, shares),
            _RAW: lambda: clients.range_gets(url, shares, PAGE_SIZE),
        }
        if _have_obstore():
            runners[_OBSTORE] = lambda: clients.obstore_random(
                served.base_url, name, shares, PAGE_SIZE
            )
        runners |= _fsspec_clients(
            lambda ct: functools.partial(
                clients.fsspec_random, url, shares, PAGE_SIZE, ct, FSSPEC_RANDOM_BLOCK
            )
        )
        runs = await _compare(served, runners, n * PAGE_SIZE)
    ours = runs[_OURS]
    what = f"cold random 4 KiB reads x{n} of {size / _MIB:g} MiB, {READERS} readers"
    row = functools.partial(
        _versus, what="P4's reads", unit="reads/s", work=n, ours=ours
    )
    raw_name = f"{READERS} tasks of raw aiohttp range GETs"
    obstore_name = f"obstore get_range_async, {READERS} tasks"
    direct = {raw_name: runs[_RAW]}
    if _OBSTORE in runs:
        direct[obstore_name] = runs[_OBSTORE]
    fastest_name, fastest = min(direct.items(), key=lambda kv: kv[1].seconds)
    fs = _fsspec_runs(runs)
    best_ct, best = min(fs.items(), key=lambda kv: kv[1].seconds)
    threads = f"{READERS} threads, a handle each, block_size {FSSPEC_RANDOM_BLOCK}"
    read = n * PAGE_SIZE
    amplification = ours.used.bytes_sent / read
    rows = [
        row(
            "P4",
            what=what,
            base=fastest,
            base_name=f"the faster direct client, {fastest_name}",
            at_least=0.9,
        ),
        row(
            "P4b",
            base=best,
            base_name=f"fsspec's best, {best_ct}, {threads}{_missing_fsspec()}",
            at_least=1.2,
        ),
        BenchRow(
            "P4c",
            f"bytes the server sent for ours per byte read ({ours.used.describe()} "
            f"for {read / _MIB:.1f} MiB read)",
            "x",
            amplification,
            4.0,
            "the target's bound",
            4.0 / amplification if amplification else float("inf"),
            target="<= 4x",
            met=amplification <= 4.0,
        ),
        *(
            row(
                f"P4{'r' if base_name == raw_name else 'o'}",
                base=run,
                base_name=base_name,
            )
            for base_name, run in direct.items()
        ),
        *(
            row("P4f", base=run, base_name=f"fsspec {ct}, {threads}")
            for ct, run in fs.items()
        ),
    ]
    return rows


def _stamped_block(index: int, block: bytes) -> bytes:
    """``block`` with its first 8 bytes replaced by ``index``."""
    return index.to_bytes(8, "little") + block[8:]


def _stamped_payload(size: int) -> tuple[bytes, bytes]:
    """A cheap large payload: one seeded 1 MiB block, repeated, each stamped.

    Returns:
        ``(payload, block)``; MiB ``i`` of the payload is
        ``_stamped_block(i, block)`` (cut short at the end).
    """
    block = random.Random(_SEED).randbytes(_MIB)
    whole, rest = divmod(size, _MIB)
    parts = [_stamped_block(i, block) for i in range(whole)]
    if rest:
        parts.append(_stamped_block(whole, block)[:rest])
    return b"".join(parts), block


@register("P6")
async def budget_scan() -> list[BenchRow]:
    """P6: a sequential scan under a cache budget stays within it."""
    size = BUDGET_SCAN_BYTES
    limit = BUDGET_LIMIT
    window = DEFAULT_MAXIMUM_WINDOW
    data, block = _stamped_payload(size)
    peak = 0
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("budget.bin", data)
        del data
        with MemoryFile("bench-p6", cache_limit=limit) as mf:
            backing = open_backing(srv.url("budget.bin"))
            cf = CachedFile(backing, mf)
            try:
                off = 0
                while off < size:
                    chunk = await cf.read(off, _MIB)
                    if not chunk:
                        raise RuntimeError(f"P6: the scan stopped at {off:#x}")
                    want = _stamped_block(off // _MIB, block)[: len(chunk)]
                    if chunk != want:
                        raise RuntimeError(f"P6: wrong bytes at {off:#x}")
                    off += len(chunk)
                    cached = mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]
                    peak = max(peak, cf.statistics().resident_bytes, cached)
            finally:
                await cf.aclose()
                await backing.aclose()
    bound = limit + window
    return [
        BenchRow(
            "P6",
            f"{size // _MIB} MiB scan with cache_limit {limit // _MIB} MiB: "
            "peak resident cache",
            "MiB",
            peak / _MIB,
            bound / _MIB,
            f"the limit plus one readahead window ({window // _MIB} MiB)",
            bound / peak if peak else float("inf"),
            target="peak <= limit + window",
            met=peak <= bound,
        )
    ]


@register("P7")
async def single_flight() -> list[BenchRow]:
    """P7: 64 concurrent faults on one cold page cause one backing fetch."""
    async with RangeHTTPServer(latency=LATENCY) as srv:
        srv.add("one.bin", _payload(16 * PAGE_SIZE))
        with MemoryFile("bench-p7") as mf:
            backing = FaultInjectingBacking(open_backing(srv.url("one.bin")))
            cf = CachedFile(backing, mf)
            try:
                page = MappableRange(3 * PAGE_SIZE, 4 * PAGE_SIZE)
                async with asyncio.TaskGroup() as tg:
                    for _ in range(64):
                        tg.create_task(cf.translate(page, page, AccessType.READ))
                reads = backing.reads
            finally:
                await cf.aclose()
                await backing.aclose()
    return [
        BenchRow(
            "P7",
            "backing fetches for 64 concurrent faults on one cold page",
            "fetches",
            float(reads),
            64.0,
            "one fetch per fault",
            64.0 / reads if reads else float("inf"),
            target="exactly 1",
            met=reads == 1,
        )
    ]
