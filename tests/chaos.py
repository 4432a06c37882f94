"""A seeded chaos soak: cached files and address spaces under a small budget.

Many files share one :class:`~aiomemmap.MemoryFile` whose ``cache_limit`` is
a fraction of their total size, so pages are evicted all the time. Workers
read and write the files (:meth:`~aiomemmap.CachedFile.read`,
:meth:`~aiomemmap.CachedFile.write`, ``truncate``, ``sync``,
``revalidate``) and use address spaces that map them (shared and private,
read and write: ``copy_in``, ``copy_out``, ``handle_fault``, ``mmap``,
``munmap``, ``fork``, closing a space while others use it), while the
storage misbehaves: latency spikes, injected errors, short reads, ranges
that never answer (bounded by the files' retry timeout), objects replaced
by new versions behind the files' backs, and operations cancelled at random
points.

Four families of files:

* ``rw``: writable, over a :class:`~aiomemmap.BytesBacking` or a
  :class:`~aiomemmap.LocalFileBacking`, wrapped in a
  :class:`~aiomemmap.FaultInjectingBacking` (latency, errors on reads,
  questions and writes, short reads). The model is the file's bytes.
* ``ro``: read-only bytes behind a :class:`HangingBacking` (chosen ranges
  never answer) over a fault-injecting backing. The model is immutable;
  private writable mappings keep their own copy of what they wrote.
* ``ver``: read-only objects replaced by new versions behind the file's
  back: a :class:`VersionedObject`, a local file rewritten in place, and
  objects of :class:`~aiomemmap.tools.http_server.RangeHTTPServer` read by
  :class:`~aiomemmap.HttpBacking`. A read must return the bytes of one
  version, no older than a version an earlier read already returned, or a
  clear error; never a mix, never zeros in place of data.

Every operation runs under ``anyio.fail_after``: an operation that outlives
its deadline fails the soak. At the end every space and file is checked
(``check_invariants``), read in full against the model, closed, and the
memory file must hold no page. A failure raises :class:`SoakFailure` with
the seed and the tail of the operation log.

Interleavings depend on timing (threads of the local files, the HTTP
server), so a seed replays every random choice, not every schedule.

Run longer soaks with ``python -m tests.chaos --seeds 1,2,3 --ops 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import errno
import io
import os
import random
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    BusError,
    BytesBacking,
    CachedFile,
    ClosedError,
    FaultInjectingBacking,
    LocalFileBacking,
    MemoryFile,
    MemoryKind,
    MMapOpts,
    RetryPolicy,
    StaleVersionError,
    page_round_up,
)
from aiomemmap.mappables.fetcher import Fetcher
from aiomemmap.mappables.readahead import (
    AdaptiveReadahead,
    FixedReadahead,
    NoReadahead,
    ReadaheadPolicy,
)
from aiomemmap.mm.io import faults_in_flight

P = PAGE_SIZE
KiB = 1024

REGION = 4 * P
"""Writable files are locked by the soak in regions of this many bytes."""

_WORKER: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "chaos_worker", default=None
)
"""The worker whose operation is running, named in the log."""

_CANCELLABLE = frozenset(
    {"read", "write", "truncate", "sync", "revalidate", "copy_in", "copy_out", "fault"}
)
"""Operations cancelled at random points; those that change the structure of
a space (mmap, munmap, fork, close) run to the end."""


# ---------------------------------------------------------------------------
# Backings with faults of their own.
# ---------------------------------------------------------------------------


class VersionedObject:
    """An object whose reads are tied to one version, replaced at will.

    The version is pinned by the first ``size``/``read_into`` and moved by
    ``version()``; a read made while another version is current raises
    ``StaleVersionError``, as a ranged GET with ``If-Match`` gets 412.
    """

    readonly = True

    def __init__(self, data: bytes) -> None:
        self.versions = [data]
        self.pinned: int | None = None
        self.stale_reads = 0

    @property
    def current(self) -> int:
        return len(self.versions) - 1

    def replace(self, data: bytes) -> None:
        self.versions.append(data)

    def _pin(self) -> int:
        if self.pinned is None:
            self.pinned = self.current
        return self.pinned

    async def size(self) -> int:
        await asyncio.sleep(0)
        self._pin()
        return len(self.versions[-1])

    async def version(self) -> str | None:
        await asyncio.sleep(0)
        self.pinned = self.current
        return f"v{self.pinned}"

    async def read_into(self, offset: int, buf: memoryview) -> int:
        await asyncio.sleep(0)
        pinned = self._pin()
        if pinned != self.current:
            self.stale_reads += 1
            raise StaleVersionError(
                "the object was replaced",
                expected=f"v{pinned}",
                found=f"v{self.current}",
            )
        chunk = self.versions[-1][offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EROFS, "the object is read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EROFS, "the object is read-only")

    async def aclose(self) -> None:
        return None


class HangingBacking:
    """Forward to a backing, except reads of :attr:`hang_ranges`: they never end.

    Only a timeout or a cancellation gets a caller out of such a read. Each
    hung read is recorded (when, and at which offset), so that a report can
    tell a range read once and waited for from one read again and again.
    """

    def __init__(self, inner: FaultInjectingBacking) -> None:
        self.inner = inner
        self.readonly = inner.readonly
        self.hang_ranges: list[tuple[int, int]] = []
        self.hangs = 0
        self.hung_reads: deque[tuple[float, int]] = deque(maxlen=4096)

    def hung_since(self, since: float) -> Counter[int]:
        """Hung reads started at or after ``since`` (monotonic), by offset."""
        return Counter(off for t, off in self.hung_reads if t >= since)

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        end = offset + len(buf)
        if any(a < end and offset < b for a, b in self.hang_ranges):
            self.hangs += 1
            self.hung_reads.append((time.monotonic(), offset))
            await anyio.sleep_forever()
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()


class LocalVersions:
    """A local file rewritten in place by "another process", version by version.

    Each version gets a modification time of its own (set explicitly, so
    that two rewrites within one tick of the file system's clock still
    differ), as a writer that changes a file does.
    """

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.versions: list[bytes] = []
        self.replace(data)

    def replace(self, data: bytes) -> None:
        self.versions.append(data)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, len(data))
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        stamp = 1_000_000_000 * (1_000_000 + len(self.versions))
        os.utime(self.path, ns=(stamp, stamp))


# ---------------------------------------------------------------------------
# The soak's own synchronisation: it decides which results are comparable.
# ---------------------------------------------------------------------------


class RWLock:
    """Many readers or one writer; a waiting writer holds new readers back."""

    def __init__(self) -> None:
        self._cond = anyio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def __repr__(self) -> str:
        return (
            f"RWLock(readers={self._readers}, writer={self._writer}, "
            f"writers_waiting={self._writers_waiting})"
        )

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        async with self._cond:
            while self._writer or self._writers_waiting:
                await self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    await self._cond.wait()
            except BaseException:
                # A writer that gives up waiting lets in the readers it held
                # back (the condition's lock is held again here).
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._writer = False
                    self._cond.notify_all()


# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class FileModel:
    """One file of the soak and what it must read as."""

    name: str
    kind: str  # "rw", "ro" or "ver"
    cf: CachedFile
    max_size: int
    data: bytearray = field(default_factory=bytearray)
    versions: list[bytes] = field(default_factory=list)
    replace: Callable[[bytes], None] | None = None
    floor: int = 0
    regions: list[anyio.Lock] = field(default_factory=list)
    on_close: Callable[[], bytes] | None = None
    hanging: HangingBacking | None = None

    def version_count(self) -> int:
        return len(self.versions)

    @contextlib.asynccontextmanager
    async def locked(
        self, start: int, end: int, *, grow: bool = False
    ) -> AsyncIterator[None]:
        """Hold the regions of ``[start, end)``.

        A change of size (``grow`` past the end) holds every region: the
        size is stable while any region is held.
        """
        if self.kind != "rw":
            yield
            return
        n = len(self.regions)
        whole = False
        while True:
            if whole:
                lo, hi = 0, n
            else:
                lo = min(start // REGION, n - 1)
                hi = max(lo + 1, min(n, -(-end // REGION)))
            async with contextlib.AsyncExitStack() as stack:
                for lock in self.regions[lo:hi]:
                    await stack.enter_async_context(lock)
                if whole or not grow or end <= len(self.data):
                    yield
                    return
            whole = True


@dataclass(eq=False)
class MappingModel:
    """A mapping of a file in a space of the soak."""

    fm: FileModel
    addr: int
    length: int
    private: bool
    writable: bool
    overlay: bytearray | None = None  # a private writable mapping's contents
    unmapped: bool = False


@dataclass(eq=False)
class SpaceModel:
    """An address space of the soak and its mappings."""

    name: str
    space: AddressSpace
    mappings: list[MappingModel] = field(default_factory=list)
    lock: RWLock = field(default_factory=RWLock)
    closing: bool = False


class SoakFailure(AssertionError):
    """The soak saw wrong bytes, an unexpected error, a hang or a leak."""


@dataclass(frozen=True)
class SoakConfig:
    """What one soak run does.

    Attributes:
        seed: Seeds every random choice of the run.
        ops: Operations run by all workers together.
        workers: Concurrent workers.
        cache_limit: The memory file's budget, in bytes.
        deadline: Seconds any one operation may take (a wide margin).
        http: Whether a family of files is served over HTTP.
    """

    seed: int
    ops: int = 1200
    workers: int = 10
    cache_limit: int = 192 * KiB
    deadline: float = 30.0
    http: bool = True


@dataclass
class SoakReport:
    """What a run did, for the closing summary."""

    seed: int
    ops: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    evictions: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {sum(self.ops.values())} ops in {self.seconds:.1f} s, "
            f"{self.evictions} pages evicted, {self.bytes_fetched} bytes fetched",
            "  ops: " + ", ".join(f"{k}={v}" for k, v in sorted(self.ops.items())),
            "  outcomes: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            "  faults: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())),
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------


def _cause(exc: BaseException) -> BaseException:
    return exc.err if isinstance(exc, BusError) and exc.err is not None else exc


def _is_clear_error(exc: BaseException) -> bool:
    """An error the soak's faults may cause: a bus error with an I/O cause."""
    if not isinstance(exc, BusError):
        return False
    cause = _cause(exc)
    return isinstance(cause, OSError | EOFError | ClosedError)


def _first_failure(group: BaseExceptionGroup[Any]) -> SoakFailure | None:
    for exc in group.exceptions:
        if isinstance(exc, SoakFailure):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_failure(exc)
            if found is not None:
                return found
    return None


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _padded(data: bytes | bytearray, upto: int) -> bytes:
    return bytes(data[:upto]) + bytes(max(0, upto - len(data)))


def _describe(exc: BaseException) -> str:
    cause = _cause(exc)
    if cause is exc:
        return type(exc).__name__
    return f"{type(exc).__name__}({type(cause).__name__})"


# ---------------------------------------------------------------------------
# The soak.
# ---------------------------------------------------------------------------


class Soak:
    """One run of the chaos soak; see the module docstring."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.log: deque[str] = deque(maxlen=120)
        self.report = SoakReport(config.seed)
        self.files: list[FileModel] = []
        self.spaces: list[SpaceModel] = []
        self._space_ids = 0
        self.fault_backings: list[FaultInjectingBacking] = []
        self.hanging: list[HangingBacking] = []
        self.objects: list[VersionedObject] = []
        self.server: Any = None
        self.current: dict[int, str] = {}
        self.started: dict[int, float] = {}
        self.mf: MemoryFile | None = None
        self.hang_report = ""

    # -- failure reporting ------------------------------------------------

    def fail(self, message: str) -> SoakFailure:
        tail = "\n".join(f"  {line}" for line in list(self.log)[-60:])
        return SoakFailure(
            f"chaos soak seed {self.config.seed}: {message}\n"
            f"replay: python -m tests.chaos --seeds {self.config.seed} "
            f"--ops {self.config.ops}\nlast operations:\n{tail}"
        )

    def note(self, text: str) -> None:
        worker = _WORKER.get()
        line = f"w{worker} {text}" if worker is not None else text
        self.log.append(line)
        if worker is not None:
            self.current[worker] = line

    # -- setup ------------------------------------------------------------

    def _readahead(self, rng: random.Random) -> ReadaheadPolicy:
        choice = rng.randrange(3)
        if choice == 0:
            return NoReadahead()
        if choice == 1:
            return FixedReadahead(rng.choice([2, 4, 8]) * P)
        return AdaptiveReadahead()

    def _faulty(
        self, inner: Any, rng: random.Random, *, ops: set[str]
    ) -> FaultInjectingBacking:
        fib = FaultInjectingBacking(
            inner,
            latency=0.0002,
            jitter=0.0002,
            error_rate=rng.choice([0.02, 0.05]),
            seed=rng.randrange(2**32),
            short_reads=rng.random() < 0.5,
            ops=ops,
        )
        self.fault_backings.append(fib)
        return fib

    async def setup(
        self, mf: MemoryFile, tmp: str, stack: contextlib.AsyncExitStack
    ) -> None:
        rng = self.rng
        quick = RetryPolicy(
            attempts=3, initial_backoff=0.001, max_backoff=0.005, timeout=5.0
        )
        impatient = RetryPolicy(
            attempts=2, initial_backoff=0.001, max_backoff=0.005, timeout=0.25
        )

        def add(fm: FileModel) -> None:
            self.files.append(fm)
            stack.push_async_callback(self._close_file, fm)

        for i in range(4):
            size = rng.randrange(8, 40) * P + rng.randrange(P)
            max_size = 48 * P
            data = rng.randbytes(size)
            if i % 2 == 0:
                inner: Any = BytesBacking(data)
            else:
                path = os.path.join(tmp, f"rw{i}")
                _write_file(path, data)
                inner = LocalFileBacking(path, writable=True, timeout=10.0)
            fib = self._faulty(
                inner, rng, ops={"read_into", "size", "version", "write_from"}
            )
            cf = CachedFile(
                fib,
                mf,
                writable=True,
                readahead=self._readahead(rng),
                retry=quick,
                max_fetch_bytes=rng.choice([2, 4, 8]) * P,
                name=f"rw{i}",
            )
            fm = FileModel(f"rw{i}", "rw", cf, max_size, data=bytearray(data))
            fm.regions = [anyio.Lock() for _ in range(-(-max_size // REGION))]
            fm.on_close = self._durable_reader(inner)
            add(fm)
        for i in range(3):
            size = rng.randrange(16, 48) * P + rng.randrange(P)
            data = rng.randbytes(size)
            fib = self._faulty(
                BytesBacking(data, readonly=True), rng, ops={"read_into", "size"}
            )
            hang = HangingBacking(fib)
            self.hanging.append(hang)
            cf = CachedFile(
                hang,
                mf,
                readahead=self._readahead(rng),
                retry=impatient,
                max_fetch_bytes=rng.choice([2, 4]) * P,
                name=f"ro{i}",
            )
            add(FileModel(f"ro{i}", "ro", cf, size, data=bytearray(data), hanging=hang))
        for i in range(2):
            data = rng.randbytes(rng.randrange(8, 40) * P + rng.randrange(P))
            obj = VersionedObject(data)
            self.objects.append(obj)
            fib = self._faulty(obj, rng, ops={"read_into", "size", "version"})
            cf = CachedFile(
                fib,
                mf,
                readahead=self._readahead(rng),
                retry=quick,
                max_fetch_bytes=rng.choice([2, 4]) * P,
                name=f"ver{i}",
            )
            fm = FileModel(f"ver{i}", "ver", cf, 48 * P, versions=[data])
            fm.replace = obj.replace
            add(fm)
        path = os.path.join(tmp, "verlocal")
        data = rng.randbytes(rng.randrange(8, 40) * P + rng.randrange(P))
        local = LocalVersions(path, data)
        cf = CachedFile(
            LocalFileBacking(path, timeout=10.0),
            mf,
            readahead=self._readahead(rng),
            retry=quick,
            max_fetch_bytes=4 * P,
            name="verlocal",
        )
        fm = FileModel("verlocal", "ver", cf, 48 * P, versions=[data])
        fm.replace = local.replace
        add(fm)
        if self.config.http:
            await self._setup_http(mf, stack, quick)

    async def _setup_http(
        self, mf: MemoryFile, stack: contextlib.AsyncExitStack, retry: RetryPolicy
    ) -> None:
        from aiomemmap import HttpBacking
        from aiomemmap.tools.http_server import RangeHTTPServer

        server = await stack.enter_async_context(RangeHTTPServer())
        self.server = server
        for i in range(2):
            name = f"http{i}"
            data = self.rng.randbytes(
                self.rng.randrange(8, 32) * P + self.rng.randrange(P)
            )
            server.add(name, data)
            backing = HttpBacking(server.url(name), timeout=10.0)
            stack.push_async_callback(backing.aclose)
            cf = CachedFile(
                backing,
                mf,
                readahead=self._readahead(self.rng),
                retry=retry,
                max_fetch_bytes=4 * P,
                name=name,
            )
            fm = FileModel(name, "ver", cf, 48 * P, versions=[data])

            def replace(new: bytes, name: str = name) -> None:
                server.replace(name, new)

            fm.replace = replace
            self.files.append(fm)
            stack.push_async_callback(self._close_file, fm)

    def _durable_reader(self, inner: Any) -> Callable[[], bytes]:
        if isinstance(inner, BytesBacking):
            return lambda: inner.data
        path = inner.path

        def read() -> bytes:
            with open(path, "rb") as fh:
                return fh.read()

        return read

    async def _close_file(self, fm: FileModel) -> None:
        if fm.cf.closed:
            return
        try:
            with anyio.fail_after(self.config.deadline):
                await fm.cf.aclose()
        except OSError as exc:
            self.note(f"close {fm.name}: {exc!r}")

    # -- spaces -----------------------------------------------------------

    async def new_space(self, mf: MemoryFile) -> SpaceModel:
        self._space_ids += 1
        sm = SpaceModel(f"as{self._space_ids}", AddressSpace(mf))
        for _ in range(4):
            await self._mmap(sm, self.rng.choice(self.files), self.rng)
        self.spaces.append(sm)
        return sm

    async def _mmap(self, sm: SpaceModel, fm: FileModel, rng: random.Random) -> None:
        length = page_round_up(fm.max_size)
        if fm.kind == "rw":
            private = rng.random() < 0.3
            writable = not private
        elif fm.kind == "ro":
            private = rng.random() < 0.6
            writable = private
        else:
            private = rng.random() < 0.5
            writable = False
        perms = AccessType.READ_WRITE if writable else AccessType.READ
        max_perms = AccessType.ANY if (writable or private) else AccessType.READ_EXECUTE
        addr = await sm.space.mmap(
            MMapOpts(
                length=length,
                mappable=fm.cf,
                mapping_identity=fm.cf,
                perms=perms,
                max_perms=max_perms,
                private=private,
            )
        )
        mm = MappingModel(fm, addr, length, private, writable)
        if private and writable:
            mm.overlay = bytearray(_padded(fm.data, page_round_up(len(fm.data))))
        sm.mappings.append(mm)
        self.note(
            f"{sm.name}: mmap {fm.name} at {addr:#x} "
            f"private={private} writable={writable}"
        )

    # -- expected bytes ---------------------------------------------------

    def _check_file_read(
        self, fm: FileModel, off: int, n: int, got: bytes, floor: int, what: str
    ) -> None:
        if fm.kind != "ver":
            want = bytes(fm.data[off : off + n])
            if got != want:
                raise self.fail(self._mismatch(what, fm, off, got, want))
            return
        matches = [
            k
            for k in range(floor, fm.version_count())
            if got == fm.versions[k][off : off + n]
        ]
        if not matches:
            raise self.fail(self._version_mismatch(what, fm, off, got, floor))
        fm.floor = max(fm.floor, matches[0])

    def _space_expected(self, mm: MappingModel, version: int | None) -> bytes:
        fm = mm.fm
        if mm.overlay is not None:
            return bytes(mm.overlay)
        data = fm.data if version is None else fm.versions[version]
        return _padded(data, page_round_up(len(data)))

    def _check_space_read(
        self,
        mm: MappingModel,
        off: int,
        n: int,
        got: bytes,
        complete: bool,
        floor: int,
        what: str,
    ) -> None:
        fm = mm.fm
        candidates: list[int | None] = (
            [None] if fm.kind != "ver" else list(range(floor, fm.version_count()))
        )
        matched: list[int] = []
        for v in candidates:
            want = self._space_expected(mm, v)[off : off + n]
            if (complete and got == want and len(want) == n) or (
                not complete and want.startswith(got)
            ):
                matched.append(-1 if v is None else v)
        if not matched:
            v0 = candidates[-1]
            want = self._space_expected(mm, v0)[off : off + n]
            raise self.fail(self._mismatch(what, fm, off, got, want))
        if fm.kind == "ver" and complete and len(got) >= 16:
            fm.floor = max(fm.floor, matched[0])

    def _mismatch(
        self, what: str, fm: FileModel, off: int, got: bytes, want: bytes
    ) -> str:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        zeros = got[first : first + 64] == bytes(len(got[first : first + 64]))
        return (
            f"{what}: {fm.name} at {off:#x}: got {len(got)} bytes, expected "
            f"{len(want)}; first difference at +{first:#x} (file offset "
            f"{off + first:#x}){' where zeros were read' if zeros else ''}"
        )

    def _version_mismatch(
        self, what: str, fm: FileModel, off: int, got: bytes, floor: int
    ) -> str:
        per_version = []
        for k, v in enumerate(fm.versions):
            want = v[off : off + len(got)]
            same = sum(
                1 for i in range(0, len(got), P) if got[i : i + P] == want[i : i + P]
            )
            per_version.append(f"v{k}: {same} pages equal, size {len(v)}")
        return (
            f"{what}: {fm.name} at {off:#x}: {len(got)} bytes match no single "
            f"version from v{floor} on ({'; '.join(per_version)})"
        )

    # -- operations -------------------------------------------------------

    async def op_read(self, rng: random.Random, fm: FileModel) -> str:
        limit = fm.max_size if fm.kind == "rw" else fm.max_size + P
        off = rng.randrange(limit)
        n = rng.choice([1, 100, P, 3 * P, 8 * P + 17, 24 * P])
        async with fm.locked(off, off + n):
            floor = fm.floor
            self.note(f"read {fm.name} [{off:#x}, +{n:#x}) floor=v{floor}")
            try:
                got = await fm.cf.read(off, n)
            except BusError as exc:
                if not _is_clear_error(exc):
                    raise
                return _describe(exc)
            self._check_file_read(fm, off, n, got, floor, "read")
        return "ok"

    async def op_write(
        self, rng: random.Random, fm: FileModel, cancel: float | None
    ) -> str:
        off = rng.randrange(fm.max_size - 64)
        n = min(rng.choice([1, 7, 100, P, 2 * P + 3, 6 * P]), fm.max_size - off)
        data = rng.randbytes(n)
        async with fm.locked(off, off + n, grow=True):
            old = bytes(fm.data)
            self.note(f"write {fm.name} [{off:#x}, +{n:#x}) size={len(old):#x}")
            try:
                with self.cancellable(cancel) as scope:
                    await fm.cf.write(off, data)
            except BusError as exc:
                # Fetching a page to update failed: nothing was written.
                if not _is_clear_error(exc):
                    raise
                return _describe(exc)
            except StaleVersionError as exc:
                raise self.fail(f"write of {fm.name}: {exc!r}") from exc
            except OSError:
                # Writing to the backing failed part way.
                return await self._resolve_write(fm, off, data, old, "failed")
            if scope.cancelled_caught:
                return await self._resolve_write(fm, off, data, old, "cancelled")
            self._apply_write(fm, off, data)
            return "ok"

    def _apply_write(self, fm: FileModel, off: int, data: bytes) -> None:
        end = off + len(data)
        if end > len(fm.data):
            fm.data.extend(bytes(end - len(fm.data)))
        fm.data[off:end] = data

    async def _read_back(self, fm: FileModel, off: int, n: int) -> bytes:
        last: BaseException | None = None
        for _ in range(40):
            try:
                return await fm.cf.read(off, n)
            except BusError as exc:
                last = exc
                await anyio.sleep(0.001)
        raise self.fail(f"reading back {fm.name} at {off:#x} kept failing: {last!r}")

    async def _resolve_write(
        self, fm: FileModel, off: int, data: bytes, old: bytes, how: str
    ) -> str:
        """Learn what a write that did not return did, and check it is allowed.

        A cancelled write is all or nothing; a failed one may have written
        any of its bytes (those sent to the backing before the failure).
        """
        # A file that never learned its size never got as far as writing.
        size = fm.cf.size if fm.cf.size is not None else len(old)
        end = off + len(data)
        if not len(old) <= size <= max(len(old), end):
            raise self.fail(
                f"{how} write of {fm.name} [{off:#x}, {end:#x}) left size "
                f"{size:#x} (was {len(old):#x})"
            )
        got = await self._read_back(fm, off, len(data))
        before = _padded(old[off:end], min(len(data), max(0, size - off)))
        after = data[: max(0, size - off)]
        if how == "cancelled":
            if got == after and (size == max(len(old), end) or end <= len(old)):
                self._apply_write(fm, off, data)
                return "cancelled-applied"
            if got == before and size == len(old):
                return "cancelled-nothing"
            raise self.fail(
                self._mismatch("cancelled write (torn)", fm, off, got, after)
            )
        for i, b in enumerate(got):
            if b != after[i] and b != before[i]:
                raise self.fail(
                    self._mismatch("failed write", fm, off, got, after)
                    + f" (byte +{i:#x} is neither old nor new)"
                )
        if size > len(fm.data):
            fm.data.extend(bytes(size - len(fm.data)))
        fm.data[off : off + len(got)] = got
        return "failed-resolved"

    async def op_truncate(
        self, rng: random.Random, fm: FileModel, cancel: float | None
    ) -> str:
        new = rng.choice([0, P, rng.randrange(fm.max_size), rng.randrange(fm.max_size)])
        async with fm.locked(0, fm.max_size + 1):
            old = len(fm.data)
            self.note(f"truncate {fm.name} {old:#x} -> {new:#x}")
            outcome = "ok"
            try:
                with self.cancellable(cancel) as scope:
                    await fm.cf.truncate(new)
            except BusError as exc:
                if not _is_clear_error(exc):
                    raise
                outcome = _describe(exc)
            except OSError as exc:
                outcome = f"{type(exc).__name__}"
            if scope.cancelled_caught:
                outcome = "cancelled"
            size = fm.cf.size
            if size == new:
                del fm.data[new:]
                fm.data.extend(bytes(new - len(fm.data)))
            elif size != old:
                raise self.fail(
                    f"truncate {fm.name} to {new:#x} ({outcome}) left size {size}, "
                    f"neither the old {old:#x} nor the new"
                )
            return outcome

    async def op_sync(self, rng: random.Random, fm: FileModel) -> str:
        self.note(f"sync {fm.name}")
        try:
            await fm.cf.sync()
        except OSError as exc:
            return type(exc).__name__
        return "ok"

    async def op_revalidate(self, rng: random.Random, fm: FileModel) -> str:
        count = fm.version_count()
        self.note(f"revalidate {fm.name} (v{count - 1} current)")
        try:
            changed = await fm.cf.revalidate()
        except OSError as exc:
            return type(exc).__name__
        if fm.kind == "ro" and changed:
            raise self.fail(f"revalidate of {fm.name} found a change nobody made")
        # A writable file's own change that failed part way (a write, a
        # write-back, a truncation) leaves it the old version: revalidation
        # may then drop its cache, after writing the dirty pages back, and
        # the model checks that every byte written is still read.
        if changed:
            fm.floor = max(fm.floor, count - 1)
        return "changed" if changed else "same"

    async def op_replace(self, rng: random.Random, fm: FileModel) -> str:
        assert fm.replace is not None
        old = len(fm.versions[-1])
        size = rng.choice(
            [old, old, max(1, old - rng.randrange(8 * P)), old + rng.randrange(8 * P)]
        )
        data = rng.randbytes(min(size, fm.max_size))
        fm.versions.append(data)
        fm.replace(data)
        self.note(f"replace {fm.name}: v{len(fm.versions) - 1}, {len(data):#x} bytes")
        return "ok"

    def _pick_mapping(
        self, rng: random.Random, want: Callable[[MappingModel], bool]
    ) -> tuple[SpaceModel, MappingModel] | None:
        pairs = [
            (sm, mm)
            for sm in self.spaces
            if not sm.closing
            for mm in sm.mappings
            if want(mm)
        ]
        return rng.choice(pairs) if pairs else None

    def _offset(self, rng: random.Random, mm: MappingModel) -> int:
        """An offset in the mapping, inside the file nine times in ten."""
        fm = mm.fm
        size = len(fm.data) if fm.kind != "ver" else len(fm.versions[-1])
        if size > 1 and rng.random() < 0.9:
            return rng.randrange(min(size, mm.length) - 1)
        return rng.randrange(mm.length - 1)

    async def op_copy_in(self, rng: random.Random) -> str:
        picked = self._pick_mapping(rng, lambda mm: True)
        if picked is None:
            return "none"
        sm, mm = picked
        fm = mm.fm
        off = self._offset(rng, mm)
        n = min(mm.length - off, rng.choice([1, 64, P, 5 * P + 9, 20 * P]))
        async with sm.lock.read(), fm.locked(off, off + n):
            if sm.closing or mm.unmapped:
                return "gone"
            floor = fm.floor
            self.note(
                f"{sm.name}: copy_in {fm.name} [{off:#x}, +{n:#x}) floor=v{floor}"
            )
            try:
                got = await sm.space.copy_in(mm.addr + off, n)
            except BusError as exc:
                if not _is_clear_error(exc):
                    raise
                if (
                    isinstance(_cause(exc), EOFError)
                    and fm.kind == "rw"
                    and off + n <= page_round_up(len(fm.data))
                ):
                    raise self.fail(
                        f"copy_in of {fm.name} [{off:#x}, +{n:#x}) got EOF "
                        f"within the file ({len(fm.data):#x} bytes)"
                    ) from exc
                self._check_space_read(
                    mm, off, n, exc.data, False, floor, "copy_in (partial)"
                )
                return _describe(exc)
            self._check_space_read(mm, off, n, got, True, floor, "copy_in")
        return "ok"

    async def op_copy_out(self, rng: random.Random, cancel: float | None) -> str:
        picked = self._pick_mapping(rng, lambda mm: mm.writable)
        if picked is None:
            return "none"
        sm, mm = picked
        fm = mm.fm
        off = self._offset(rng, mm)
        n = min(mm.length - off, rng.choice([1, 64, P, 3 * P + 5, 8 * P]))
        lock = sm.lock.write() if mm.private else sm.lock.read()
        async with lock, fm.locked(off, off + n):
            if sm.closing or mm.unmapped:
                return "gone"
            if not mm.private:
                # Shared writes stay inside the file: past its end they
                # would land in a page tail no read of the file shows.
                n = min(n, len(fm.data) - off)
                if n <= 0:
                    return "none"
            data = rng.randbytes(n)
            self.note(
                f"{sm.name}: copy_out {fm.name} [{off:#x}, +{n:#x}) "
                f"private={mm.private}"
            )
            done = 0
            outcome = "ok"
            try:
                with self.cancellable(cancel) as scope:
                    done = await sm.space.copy_out(mm.addr + off, data)
            except BusError as exc:
                if not _is_clear_error(exc):
                    raise
                done = exc.bytes_done
                outcome = _describe(exc)
            if scope.cancelled_caught:
                outcome = "cancelled"
            if mm.overlay is not None:
                mm.overlay[off : off + done] = data[:done]
            elif done:
                fm.data[off : off + done] = data[:done]
            return outcome

    async def op_fault(self, rng: random.Random) -> str:
        picked = self._pick_mapping(rng, lambda mm: True)
        if picked is None:
            return "none"
        sm, mm = picked
        at = AccessType.WRITE if mm.writable and rng.random() < 0.5 else AccessType.READ
        off = self._offset(rng, mm)
        async with sm.lock.read():
            if sm.closing or mm.unmapped:
                return "gone"
            self.note(f"{sm.name}: fault {mm.fm.name} +{off:#x} {at}")
            try:
                await sm.space.handle_fault(mm.addr + off, at)
            except BusError as exc:
                if not _is_clear_error(exc):
                    raise
                return _describe(exc)
        return "ok"

    async def op_mmap(self, rng: random.Random) -> str:
        live = [sm for sm in self.spaces if not sm.closing]
        if not live:
            return "none"
        sm = rng.choice(live)
        async with sm.lock.write():
            if sm.closing:
                return "gone"
            if len(sm.mappings) >= 8:
                mm = sm.mappings.pop(rng.randrange(len(sm.mappings)))
                mm.unmapped = True
                self.note(f"{sm.name}: munmap {mm.fm.name} at {mm.addr:#x}")
                await sm.space.munmap(mm.addr, mm.length)
                return "munmap"
            await self._mmap(sm, rng.choice(self.files), rng)
        return "mmap"

    async def op_munmap(self, rng: random.Random) -> str:
        picked = self._pick_mapping(rng, lambda mm: True)
        if picked is None:
            return "none"
        sm, mm = picked
        async with sm.lock.write():
            if sm.closing or mm.unmapped:
                return "gone"
            sm.mappings.remove(mm)
            mm.unmapped = True
            self.note(f"{sm.name}: munmap {mm.fm.name} at {mm.addr:#x}")
            await sm.space.munmap(mm.addr, mm.length)
        return "ok"

    async def op_fork(self, rng: random.Random, mf: MemoryFile) -> str:
        live = [sm for sm in self.spaces if not sm.closing]
        if not live:
            return "none"
        parent = rng.choice(live)
        async with parent.lock.write():
            if parent.closing:
                return "gone"
            self._space_ids += 1
            self.note(f"{parent.name}: fork -> as{self._space_ids}")
            child_space = await parent.space.fork()
            child = SpaceModel(f"as{self._space_ids}", child_space)
            for mm in parent.mappings:
                child.mappings.append(
                    MappingModel(
                        mm.fm,
                        mm.addr,
                        mm.length,
                        mm.private,
                        mm.writable,
                        None if mm.overlay is None else bytearray(mm.overlay),
                    )
                )
            self.spaces.append(child)
        if len([sm for sm in self.spaces if not sm.closing]) > 3:
            victim = rng.choice([sm for sm in self.spaces if not sm.closing])
            await self._close_space(victim)
            return "fork+close"
        return "ok"

    async def _close_space(self, sm: SpaceModel) -> None:
        if sm.closing:
            return
        sm.closing = True
        self.note(f"{sm.name}: close")
        async with sm.lock.write():
            sm.space.check_invariants()
            await sm.space.aclose()
        self.spaces.remove(sm)

    # -- storage faults ---------------------------------------------------

    def op_storage(self, rng: random.Random) -> str:
        choice = rng.randrange(3)
        if choice == 0 and self.fault_backings:
            fib = rng.choice(self.fault_backings)
            spike = rng.choice([0.0002, 0.0002, 0.01, 0.05])
            fib.latency = spike
            self.note(f"latency {fib!r} = {spike}")
            if spike > 0.001:
                self.report.faults["latency_spikes"] += 1
            return "latency"
        if choice == 1 and self.hanging:
            hb = rng.choice(self.hanging)
            if hb.hang_ranges:
                hb.hang_ranges.clear()
                self.note("hang ranges cleared")
                return "unhang"
            start = rng.randrange(48) * P
            hb.hang_ranges.append((start, start + rng.randrange(1, 8) * P))
            self.note(f"hang {hb.hang_ranges[-1]}")
            self.report.faults["hang_ranges"] += 1
            return "hang"
        if self.server is not None:
            self.server.latency = rng.choice([0.0, 0.0, 0.02])
            return "http-latency"
        return "none"

    # -- workers ----------------------------------------------------------

    @contextlib.contextmanager
    def cancellable(self, delay: float | None) -> Iterator[anyio.CancelScope]:
        """A scope cancelled ``delay`` seconds from now (never if ``None``)."""
        with anyio.CancelScope() as scope:
            handle = None
            if delay is not None:
                handle = asyncio.get_running_loop().call_later(delay, scope.cancel)
            try:
                yield scope
            finally:
                if handle is not None:
                    handle.cancel()

    async def run_op(self, rng: random.Random, mf: MemoryFile) -> None:
        kinds = [
            ("read", 30),
            ("copy_in", 22),
            ("write", 14),
            ("copy_out", 12),
            ("fault", 6),
            ("truncate", 2),
            ("sync", 2),
            ("revalidate", 3),
            ("replace", 3),
            ("mmap", 2),
            ("munmap", 1),
            ("fork", 1),
            ("storage", 3),
        ]
        kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        rw = [f for f in self.files if f.kind == "rw"]
        ver = [f for f in self.files if f.kind == "ver"]
        fm = rng.choice(self.files)
        self.report.ops[kind] += 1
        cancel = None
        if kind in _CANCELLABLE and rng.random() < 0.1:
            cancel = rng.choice([0.0, 0.0003, 0.001, 0.004, 0.02])
        outcome = "?"
        with anyio.fail_after(self.config.deadline):
            try:
                if kind == "write":
                    outcome = await self.op_write(rng, rng.choice(rw), cancel)
                elif kind == "truncate":
                    outcome = await self.op_truncate(rng, rng.choice(rw), cancel)
                elif kind == "copy_out":
                    outcome = await self.op_copy_out(rng, cancel)
                else:
                    with self.cancellable(cancel) as scope:
                        outcome = await self._plain_op(kind, rng, fm, rw, ver, mf)
                    if scope.cancelled_caught:
                        outcome = "cancelled"
            except SoakFailure:
                raise
            except Exception as exc:
                raise self.fail(f"{kind}: unexpected {exc!r}") from exc
        self.report.outcomes[f"{kind}:{outcome}"] += 1

    async def _plain_op(
        self,
        kind: str,
        rng: random.Random,
        fm: FileModel,
        rw: list[FileModel],
        ver: list[FileModel],
        mf: MemoryFile,
    ) -> str:
        if kind == "read":
            return await self.op_read(rng, fm)
        if kind == "sync":
            return await self.op_sync(rng, rng.choice(rw))
        if kind == "revalidate":
            return await self.op_revalidate(rng, fm)
        if kind == "replace":
            return await self.op_replace(rng, rng.choice(ver))
        if kind == "copy_in":
            return await self.op_copy_in(rng)
        if kind == "fault":
            return await self.op_fault(rng)
        if kind == "mmap":
            return await self.op_mmap(rng)
        if kind == "munmap":
            return await self.op_munmap(rng)
        if kind == "fork":
            return await self.op_fork(rng, mf)
        return self.op_storage(rng)

    async def worker(self, index: int, count: int, mf: MemoryFile) -> None:
        _WORKER.set(index)
        rng = random.Random(self.config.seed * 1000 + index)
        for _ in range(count):
            self.started[index] = time.monotonic()
            try:
                await self.run_op(rng, mf)
            except TimeoutError as exc:
                failure = self.fail(
                    f"worker {index}: an operation outlived its "
                    f"{self.config.deadline:g} s deadline: "
                    f"{self.current.get(index, '?')}"
                )
                failure.add_note(self.hang_report or self.state_report())
                raise failure from exc
        self.started.pop(index, None)

    async def watchdog(self) -> None:
        """Keep a report of the run's state once an operation nears its deadline.

        A hang is diagnosed by what each task waits for at the moment it
        hangs, before the deadline cancels the stuck operation: the state of
        the budget, files, spaces and workers (:meth:`state_report`) and the
        stack of every task.
        """
        while True:
            await anyio.sleep(min(0.5, self.config.deadline / 10))
            now = time.monotonic()
            late = [
                w
                for w, t in self.started.items()
                if now - t > self.config.deadline * 0.9
            ]
            if late and not self.hang_report:
                names = {id(sm.space): sm.name for sm in self.spaces}
                self.hang_report = self.state_report() + _task_stacks(names)

    def state_report(self) -> str:
        """What every part of the run is doing now, for a failure's notes.

        The memory file's budget (used, cached, pinned, over budget); each
        file's cache (size, resident and dirty bytes, fetches in flight) and,
        for a file whose storage hangs, its hung ranges and the reads that
        hung there within the last deadline, by offset (a range read again
        and again names an operation that keeps fetching it); each space's
        mappings, its lock of the soak and the faults it has waiting; each
        worker's operation and how long it has run.
        """
        now = time.monotonic()
        window = self.config.deadline
        out = io.StringIO()
        out.write("state of the run:\n")
        mf = self.mf
        if mf is not None and not mf.closed:
            st = mf.statistics()
            cached = st.bytes_by_kind.get(MemoryKind.PAGE_CACHE, 0)
            out.write(
                f"  memory file: used={st.used_bytes:#x} page_cache={cached:#x} "
                f"limit={self.config.cache_limit:#x} "
                f"over_budget={mf.cache_over_budget():#x} "
                f"pinned={mf.evictor.pinned_bytes:#x} evictions={st.evictions}\n"
            )
        for fm in self.files:
            cf = fm.cf
            if cf.closed:
                out.write(f"  {fm.name}: closed\n")
                continue
            cs = cf.statistics()
            size = "?" if cf.size is None else f"{cf.size:#x}"
            out.write(
                f"  {fm.name}: size={size} resident={cs.resident_bytes:#x} "
                f"dirty={cs.dirty_bytes:#x} fetches_in_flight="
                f"{cs.fetches_in_flight} fetches={cs.fetches}\n"
            )
            hb = fm.hanging
            if hb is not None and (hb.hang_ranges or hb.hung_reads):
                recent = hb.hung_since(now - window)
                top = ", ".join(
                    f"{off:#x}: {n}" for off, n in sorted(recent.most_common(6))
                )
                ranges = ", ".join(f"[{a:#x}, {b:#x})" for a, b in hb.hang_ranges)
                out.write(
                    f"    hang ranges: {ranges or 'none'}; hung reads in the last "
                    f"{window:g} s by offset: {top or 'none'}\n"
                )
        for sm in self.spaces:
            out.write(
                f"  {sm.name}: closing={sm.closing} mappings={len(sm.mappings)} "
                f"{sm.lock!r} faults_in_flight="
                f"{faults_in_flight(sm.space) if not sm.space.closed else '-'}\n"
            )
        for w, t in sorted(self.started.items()):
            out.write(f"  w{w}: {now - t:.1f} s in {self.current.get(w, '?')}\n")
        return out.getvalue()

    # -- the run ----------------------------------------------------------

    async def run(self) -> SoakReport:
        started = time.monotonic()
        cfg = self.config
        with (
            tempfile.TemporaryDirectory(prefix="aiomemmap-chaos-") as tmp,
            MemoryFile("chaos", cache_limit=cfg.cache_limit) as mf,
        ):
            self.mf = mf
            async with contextlib.AsyncExitStack() as stack:
                with anyio.fail_after(cfg.deadline):
                    await self.setup(mf, tmp, stack)
                    for _ in range(2):
                        await self.new_space(mf)
                per_worker = -(-cfg.ops // cfg.workers)
                try:
                    async with anyio.create_task_group() as watch:
                        watch.start_soon(self.watchdog)
                        async with anyio.create_task_group() as tg:
                            for i in range(cfg.workers):
                                tg.start_soon(self.worker, i, per_worker, mf)
                        watch.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    failure = _first_failure(group)
                    if failure is None:
                        raise
                    await self.tear_down_after(failure)
                    raise failure from None
                await self.finish(mf)
            self.count_faults()
            self.report.evictions = mf.statistics().evictions
            used = mf.statistics().used_bytes
            if used != 0:
                raise self.fail(f"{used} bytes of the memory file still used")
            if mf.evictor.pinned_bytes != 0:
                raise self.fail(f"{mf.evictor.pinned_bytes} bytes still pinned")
        self.report.seconds = time.monotonic() - started
        return self.report

    async def tear_down_after(self, failure: SoakFailure) -> None:
        """Close what a failed run left open, noting what does not close."""
        self.calm()
        for sm in list(self.spaces):
            try:
                with anyio.fail_after(self.config.deadline):
                    await sm.space.aclose()
            except Exception as exc:
                failure.add_note(f"closing {sm.name} after the failure: {exc!r}")

    def calm(self) -> None:
        """Stop every injected fault."""
        for fib in self.fault_backings:
            fib.error_rate = 0.0
            fib.latency = 0.0
            fib.jitter = 0.0
        for hb in self.hanging:
            hb.hang_ranges.clear()
        if self.server is not None:
            self.server.latency = 0.0

    async def finish(self, mf: MemoryFile) -> None:
        """Calm the storage, check everything against the model, close it all."""
        self.calm()
        with anyio.fail_after(self.config.deadline * 4):
            for fm in self.files:
                fm.cf.check_invariants()
                if fm.kind == "ver":
                    # Learn the last version, then it must read in full.
                    for _ in range(3):
                        try:
                            await fm.cf.revalidate()
                            break
                        except OSError:
                            continue
                    got = await self._read_back(fm, 0, fm.max_size + P)
                    if got != fm.versions[-1]:
                        raise self.fail(
                            self._version_mismatch(
                                "final read", fm, 0, got, len(fm.versions) - 1
                            )
                        )
                else:
                    got = await self._read_back(fm, 0, fm.max_size + P)
                    if got != bytes(fm.data):
                        raise self.fail(
                            self._mismatch("final read", fm, 0, got, bytes(fm.data))
                        )
            for sm in list(self.spaces):
                for mm in sm.mappings:
                    fm = mm.fm
                    n = page_round_up(
                        len(fm.data) if fm.kind != "ver" else len(fm.versions[-1])
                    )
                    if n == 0:
                        continue
                    if mm.overlay is not None:
                        n = min(n, len(mm.overlay))
                    got = await sm.space.copy_in(mm.addr, n)
                    floor = len(fm.versions) - 1 if fm.kind == "ver" else 0
                    self._check_space_read(mm, 0, n, got, True, floor, "final copy_in")
                sm.space.check_invariants()
            for sm in list(self.spaces):
                await self._close_space(sm)
            for fm in self.files:
                self.report.bytes_fetched += fm.cf.statistics().bytes_fetched
                fm.cf.check_invariants()
                try:
                    await fm.cf.aclose()
                except OSError as exc:
                    self.note(f"close {fm.name}: {exc!r}")
                    continue
                if fm.on_close is not None:
                    stored = fm.on_close()
                    if stored != bytes(fm.data):
                        raise self.fail(
                            self._mismatch(
                                "stored after close", fm, 0, stored, bytes(fm.data)
                            )
                        )

    def count_faults(self) -> None:
        faults = self.report.faults
        faults["errors_injected"] += sum(f.errors_injected for f in self.fault_backings)
        faults["short_read_backings"] += sum(
            1 for f in self.fault_backings if f.short_reads
        )
        faults["hung_reads"] += sum(h.hangs for h in self.hanging)
        faults["stale_reads"] += sum(o.stale_reads for o in self.objects)
        faults["versions_replaced"] += sum(
            len(f.versions) - 1 for f in self.files if f.kind == "ver"
        )
        faults["cancellations"] += sum(
            v for k, v in self.report.outcomes.items() if k.endswith(":cancelled")
        )
        if self.server is not None:
            faults["http_412"] += self.server.precondition_failures


_NAMED = (CachedFile, AddressSpace, Fetcher)
"""Objects named next to a frame whose ``self`` they are, in task stacks."""


def _frame_note(frame: Any, names: dict[int, str]) -> str:
    """What a frame works on: its ``self`` if named, a read's offset."""
    f_locals = frame.f_locals
    notes = []
    owner = f_locals.get("self")
    if isinstance(owner, _NAMED):
        label = names.get(id(owner))
        notes.append(repr(owner) if label is None else f"{label} {owner!r}")
    offset = f_locals.get("offset")
    if frame.f_code.co_name == "read_into" and isinstance(offset, int):
        notes.append(f"offset={offset:#x}")
    return f" [{'; '.join(notes)}]" if notes else ""


def _task_stacks(names: dict[int, str]) -> str:
    """Every task of the running loop with the chain of frames it waits in.

    Args:
        names: The soak's names of objects (by ``id``), shown next to them.
    """
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        aw: Any = task.get_coro()
        depth = 0
        while aw is not None and depth < 60:
            frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                out.write(
                    f"    {code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} "
                    f"{code.co_name}{_frame_note(frame, names)}\n"
                )
            aw = (
                getattr(aw, "cr_await", None)
                or getattr(aw, "gi_yieldfrom", None)
                or getattr(aw, "ag_await", None)
            )
            depth += 1
        if aw is not None:
            out.write(f"    waits for {aw!r}\n")
    return out.getvalue()


async def soak(config: SoakConfig) -> SoakReport:
    """Run one soak; raise :class:`SoakFailure` if anything is wrong."""
    return await Soak(config).run()


def main(argv: list[str] | None = None) -> int:
    """Run soaks from the command line; print each run's report."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seeds", default="1", help="comma-separated seeds, or a range a-b"
    )
    parser.add_argument("--ops", type=int, default=SoakConfig.ops)
    parser.add_argument("--workers", type=int, default=SoakConfig.workers)
    parser.add_argument("--cache-limit", type=int, default=SoakConfig.cache_limit)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    seeds: list[int] = []
    for part in args.seeds.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds.extend(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    failed = 0
    for seed in seeds:
        config = SoakConfig(
            seed,
            ops=args.ops,
            workers=args.workers,
            cache_limit=args.cache_limit,
            http=not args.no_http,
        )
        runner: Callable[..., Any] = asyncio.run
        if args.uvloop:
            import uvloop

            runner = uvloop.run
        try:
            report = runner(soak(config))
        except SoakFailure as exc:
            failed += 1
            sys.stderr.write(f"{exc}\n")
            for note in getattr(exc, "__notes__", ()):
                sys.stderr.write(f"{note}\n")
            continue
        sys.stdout.write(f"{report.summary()}\n")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
