"""CachedFile over real storage: HTTP, S3 (moto), local files and fsspec memory.

Every storage kind is reached the way a user reaches it, through
``open_backing``: an HTTP server on 127.0.0.1 started by the test (also read
through fsspec's HTTP filesystem, kind ``fsspec-http``), S3 through
s3fs against moto's threaded server on 127.0.0.1, a local file, and fsspec's
in-memory filesystem. The tests check laziness (fetch little, fetch each byte
once), single flight over real I/O, revalidation after a version change,
failures (retries, ``BusError``, recovery, never wrong bytes), cancellation
and read-only storage.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import fsspec
import fsspec.core
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddrRange,
    Backing,
    BusError,
    CachedFile,
    ClosedError,
    FaultInjectingBacking,
    FsspecBacking,
    InvalidateOpts,
    MappableRange,
    MemoryFile,
    MemoryKind,
    NoReadahead,
    RetryPolicy,
    check_translate_result,
    open_backing,
)
from aiomemmap.tools.http_server import RangeHTTPServer
from tests.s3_server import moto_s3

P = PAGE_SIZE
MiB = 1024 * 1024
BIG = 8 * MiB + 123  # the last page is partial
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)
HTTP_KINDS = ("http", "fsspec-http")
KINDS = ["http", "fsspec-http", "s3", "local", "memory"]
DEADLINE = 30


def fsspec_http_backing(url: str) -> FsspecBacking:
    """An ``FsspecBacking`` over fsspec's HTTP filesystem, owning its session.

    Built as ``open_backing`` builds it for fsspec URLs: an asynchronous,
    uncached filesystem instance, awaited on the test's loop.
    """
    fs, path = fsspec.core.url_to_fs(url, asynchronous=True, skip_instance_cache=True)
    backing = FsspecBacking(fs, path)
    backing._owns_fs = True
    return backing


def http_backing(flavour: str, url: str) -> Backing:
    """The default HTTP backing (``open_backing``) or the fsspec one."""
    return open_backing(url) if flavour == "aiohttp" else fsspec_http_backing(url)


HTTP_FLAVOURS = pytest.mark.parametrize("flavour", ["aiohttp", "fsspec"])


def M(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def pattern(n: int, seed: int) -> bytes:
    """Return ``n`` pseudo-random bytes, none of them zero.

    With no zero byte in the source, a page that was handed out before its
    bytes landed (still zero) can never pass for the right contents.
    """
    return random.Random(seed).randbytes(n).replace(b"\0", b"\x01")


def round_up(x: int) -> int:
    return -(-x // P) * P


def translated_bytes(ts: Any) -> bytes:
    return b"".join(
        t.file.map_internal(t.file_range(), AccessType.READ).tobytes() for t in ts
    )


def expected(data: bytes, start: int, end: int) -> bytes:
    """``data[start:end]`` padded with zeros past its end (a partial last page)."""
    chunk = data[start:end]
    return chunk + bytes(end - start - len(chunk))


def cache_bytes(mf: MemoryFile) -> int:
    return mf.statistics().bytes_by_kind[MemoryKind.PAGE_CACHE]


async def wait_until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` on the loop; callers bound this with a deadline."""
    while not cond():  # noqa: ASYNC110
        await asyncio.sleep(0.001)


class RecordingSpace:
    """A mapping space that only records the invalidations it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[AddrRange, InvalidateOpts]] = []

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.calls.append((ar, opts))


# ---------------------------------------------------------------- fixtures


@dataclass
class S3:
    endpoint: str
    client: Any
    bucket: str

    def options(self) -> dict[str, object]:
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        }


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on 127.0.0.1 with one fresh bucket."""
    with moto_s3("remote") as (endpoint, client, bucket):
        yield S3(endpoint, client, bucket)


class Store:
    """One object on one kind of storage, and the backings opened onto it."""

    def __init__(self, kind: str, tmp_path: Path, s3: S3 | None) -> None:
        self.kind = kind
        self.name = f"obj-{uuid.uuid4().hex}"
        self.server: RangeHTTPServer | None = None
        self._s3 = s3
        self._path = tmp_path / self.name
        self._mem_path = f"/aiomemmap-remote-tests/{self.name}"
        self._mem = fsspec.filesystem("memory") if kind == "memory" else None
        self._backings: list[Backing] = []
        self._created = False

    async def start(self) -> None:
        if self.kind in HTTP_KINDS:
            self.server = RangeHTTPServer()
            await self.server.start()

    def put(self, data: bytes) -> None:
        """Create the object holding ``data``."""
        assert not self._created
        self._created = True
        self._store(data, first=True)

    def _store(self, data: bytes, *, first: bool) -> None:
        if self.kind in HTTP_KINDS:
            assert self.server is not None
            if first:
                self.server.add(self.name, data)
            else:
                self.server.replace(self.name, data)  # a new ETag
        elif self.kind == "s3":
            assert self._s3 is not None
            self._s3.client.put_object(Bucket=self._s3.bucket, Key=self.name, Body=data)
        elif self.kind == "local":
            old = None if first else self._path.stat().st_mtime_ns
            self._path.write_bytes(data)
            if old is not None:
                # A different mtime for sure, whatever the clock's resolution.
                bumped = old + 2_000_000_000
                os.utime(self._path, ns=(bumped, bumped))
        else:
            assert self._mem is not None
            self._mem.pipe_file(self._mem_path, data)

    async def change(self, data: bytes) -> None:
        """Replace the object's contents behind every backing's back."""
        if self.kind == "memory":
            # The memory filesystem's version is its creation time: let the
            # clock move on.
            await asyncio.sleep(0.002)
        self._store(data, first=False)

    def open(self) -> Backing:
        """Open a new backing onto the object (closed by the fixture)."""
        if self.kind == "http":
            assert self.server is not None
            backing = open_backing(self.server.url(self.name))
        elif self.kind == "fsspec-http":
            assert self.server is not None
            backing = fsspec_http_backing(self.server.url(self.name))
        elif self.kind == "s3":
            assert self._s3 is not None
            backing = open_backing(
                f"s3://{self._s3.bucket}/{self.name}", **self._s3.options()
            )
        elif self.kind == "local":
            backing = open_backing(str(self._path))
        else:
            backing = open_backing(f"memory://{self._mem_path}")
        self._backings.append(backing)
        return backing

    def bytes_sent(self) -> int:
        assert self.server is not None
        return self.server.bytes_sent

    async def aclose(self) -> None:
        for backing in self._backings:
            await backing.aclose()
        if self.server is not None:
            await self.server.stop()
        if self._created and self.kind == "s3":
            assert self._s3 is not None
            self._s3.client.delete_object(Bucket=self._s3.bucket, Key=self.name)
        if self._created and self._mem is not None:
            self._mem.rm(self._mem_path)


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind = request.param
    s3 = request.getfixturevalue("s3") if kind == "s3" else None
    st = Store(kind, tmp_path, s3)
    await st.start()
    try:
        yield st
    finally:
        await st.aclose()


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    with MemoryFile("test-cached-file-remote", chunk_size=64 * MiB) as f:
        yield f


@dataclass
class Counted:
    """A backing onto a store whose range reads are counted and can be slowed.

    Over HTTP the latency is the server's and the count is the server's count
    of range requests; elsewhere the backing is wrapped in a
    ``FaultInjectingBacking`` whose latency is set and whose ``reads`` are
    counted.
    """

    backing: Backing
    requests: Callable[[], int]
    slow_down: Callable[[float], None]


def counted(store: Store) -> Counted:
    if store.kind in HTTP_KINDS:
        server = store.server
        assert server is not None

        def set_server_latency(latency: float) -> None:
            server.latency = latency

        return Counted(store.open(), lambda: server.range_requests, set_server_latency)
    fb = FaultInjectingBacking(store.open())

    def set_latency(latency: float) -> None:
        fb.latency = latency

    return Counted(fb, lambda: fb.reads, set_latency)


async def closed_and_balanced(cf: CachedFile, mf: MemoryFile) -> None:
    await cf.aclose()
    assert cf.statistics().fetches_in_flight == 0
    assert mf.statistics().used_bytes == 0


# ---------------------------------------------------------------- 1. laziness


async def test_scattered_reads_fetch_only_what_they_touch(store, mf):
    data = pattern(BIG, 1)
    store.put(data)
    cf = CachedFile(store.open(), mf)
    sent0 = store.bytes_sent() if store.kind in HTTP_KINDS else 0
    rng = random.Random(5)
    reads = 24
    with anyio.fail_after(DEADLINE):
        for _ in range(reads):
            off = rng.randrange(0, BIG)
            n = rng.randrange(1, 3 * P)
            assert await cf.read(off, n) == data[off : off + n]
        # The very end of the object, partial last page included.
        assert await cf.read(BIG - 50, 1000) == data[-50:]
    stats = cf.statistics()
    # Each read touches at most 4 pages; random reads get no readahead.
    assert 0 < stats.bytes_fetched <= (reads + 1) * 4 * P
    assert stats.bytes_fetched <= BIG // 16
    assert stats.resident_bytes <= (reads + 1) * 4 * P
    assert stats.misses > 0
    if store.kind in HTTP_KINDS:
        # The server sent exactly what the cache fetched, nothing more.
        assert store.bytes_sent() - sent0 == stats.bytes_fetched
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


async def test_sequential_scan_returns_everything_fetching_each_byte_once(store, mf):
    data = pattern(BIG, 2)
    store.put(data)
    cf = CachedFile(store.open(), mf)
    sent0 = store.bytes_sent() if store.kind in HTTP_KINDS else 0
    chunk = 512 * 1024
    with anyio.fail_after(DEADLINE):
        # One read after the other: a sequential scan.
        parts = [await cf.read(off, chunk) for off in range(0, BIG, chunk)]
        assert b"".join(parts) == data
        stats = cf.statistics()
        # Each byte once, but for the part of a page before the file's tail
        # that the request which learnt the size read (an HTTP backing's).
        assert BIG <= stats.bytes_fetched < BIG + P
        assert stats.resident_bytes == round_up(BIG)
        # Everything is cached now: a whole-file read fetches nothing more.
        assert await cf.read(0, BIG + 100) == data
    after = cf.statistics()
    assert after.fetches == stats.fetches
    assert after.bytes_fetched == stats.bytes_fetched
    assert after.hits > stats.hits
    if store.kind in HTTP_KINDS:
        assert store.bytes_sent() - sent0 == stats.bytes_fetched
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


async def test_translations_point_at_the_right_bytes(store, mf):
    data = pattern(BIG, 3)
    store.put(data)
    cf = CachedFile(store.open(), mf)
    rounded = round_up(BIG)
    starts = [0, 5 * P, 1000 * P, 1017 * P, rounded // 2 // P * P, rounded - P]
    with anyio.fail_after(DEADLINE):
        for start in starts:
            required = M(start, start + P)
            optional = M(max(0, start - 16 * P), min(rounded, start + 16 * P))
            for at in (AccessType.READ, AccessType.READ_EXECUTE):
                ts, err = await cf.translate(required, optional, at)
                assert err is None
                assert check_translate_result(required, optional, at, ts, err) is None
                assert ts[0].source.start == start
                first, last = ts[0].source.start, ts[-1].source.end
                assert translated_bytes(ts) == expected(data, first, last)
    stats = cf.statistics()
    assert stats.bytes_fetched <= len(starts) * 32 * P
    assert stats.bytes_fetched <= BIG // 8
    # The end of the last page, past the end of the object, reads as zeros.
    ts, err = await cf.translate(
        M(rounded - P, rounded), M(0, rounded), AccessType.READ
    )
    assert err is None
    assert translated_bytes(ts)[BIG - (rounded - P) :] == bytes(rounded - BIG)
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


# ---------------------------------------------------------------- 2. single flight


async def test_single_flight_over_real_io(store, mf):
    data = pattern(64 * P, 4)
    store.put(data)
    c = counted(store)
    cf = CachedFile(c.backing, mf, readahead=NoReadahead())
    with anyio.fail_after(DEADLINE):
        # Learn the size (and cache an unrelated page) first.
        assert await cf.read(60 * P, 10) == data[60 * P : 60 * P + 10]
        c.slow_down(0.1)
        before = c.requests()
        fetches = cf.statistics().fetches
        results = await asyncio.gather(
            *(cf.read(5 * P + 7 * i, 1000) for i in range(32)),
            *(
                cf.translate(M(5 * P, 6 * P), M(5 * P, 6 * P), AccessType.READ)
                for _ in range(32)
            ),
        )
    assert c.requests() - before == 1
    assert cf.statistics().fetches == fetches + 1
    for i, got in enumerate(results[:32]):
        assert got == data[5 * P + 7 * i : 5 * P + 7 * i + 1000]
    for ts, err in results[32:]:
        assert err is None
        assert translated_bytes(ts) == data[5 * P : 6 * P]
    await closed_and_balanced(cf, mf)


# ---------------------------------------------------------------- 3. revalidation


async def test_version_change_triggers_revalidation(store, mf):
    old = pattern(16 * P + 5, 5)
    store.put(old)
    cf = CachedFile(store.open(), mf)
    ms = RecordingSpace()
    ar = AddrRange(0x10000, 0x10000 + 17 * P)
    await cf.add_mapping(ms, ar, 0, False)
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, len(old)) == old
        fetched = cf.statistics().bytes_fetched
        # Nothing changed: nothing is invalidated or dropped.
        assert await cf.revalidate() is False
        assert ms.calls == []
        assert await cf.read(0, len(old)) == old
        assert cf.statistics().bytes_fetched == fetched

        # Same size, new contents: only the version tells.
        same_size = pattern(len(old), 6)
        await store.change(same_size)
        assert await cf.revalidate() is True
        assert ms.calls == [(ar, InvalidateOpts(invalidate_private=False))]
        assert cf.statistics().resident_bytes == 0
        assert cf.size == len(old)
        assert await cf.read(0, len(old)) == same_size
        ts, err = await cf.translate(M(0, 2 * P), M(0, 2 * P), AccessType.READ)
        assert err is None
        assert translated_bytes(ts) == same_size[: 2 * P]
        assert await cf.revalidate() is False
        assert len(ms.calls) == 1

        # A new size is picked up too.
        bigger = pattern(20 * P + 17, 7)
        await store.change(bigger)
        assert await cf.revalidate() is True
        assert ms.calls[1:] == [(ar, InvalidateOpts(invalidate_private=False))]
        assert cf.size == len(bigger)
        assert await cf.read(0, 2 * len(bigger)) == bigger
        assert await cf.revalidate() is False
        assert len(ms.calls) == 2
    cf.check_invariants()
    await cf.remove_mapping(ms, ar, 0, False)
    await closed_and_balanced(cf, mf)


class LateBacking:
    """Forwards to a real backing, but holds read bytes back until released.

    The bytes are read from the storage first and handed over only when
    ``release`` is set: a fetch that read the old contents and lands late.
    """

    def __init__(self, inner: Backing) -> None:
        self.inner = inner
        self.readonly = inner.readonly
        self.release: asyncio.Event | None = None
        self.holding = asyncio.Event()

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        n = await self.inner.read_into(offset, buf)
        if self.release is not None:
            self.holding.set()
            await self.release.wait()
        return n

    async def write_from(self, offset: int, data: memoryview) -> int:
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_fetch_of_old_contents_landing_after_revalidation_is_dropped(store, mf):
    old = pattern(16 * P, 17)
    store.put(old)
    late = LateBacking(store.open())
    cf = CachedFile(late, mf, readahead=NoReadahead())
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, 10) == old[:10]
        late.release = asyncio.Event()
        reader = asyncio.create_task(cf.read(5 * P, 100))
        await late.holding.wait()  # the old bytes of page 5 were read
        new = pattern(16 * P, 18)
        await store.change(new)
        assert await cf.revalidate() is True
        late.release.set()
        # The old bytes are thrown away; the reader gets the new ones.
        assert await reader == new[5 * P : 5 * P + 100]
        assert await cf.read(0, len(new)) == new
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


# ---------------------------------------------------------------- 4. failures


@HTTP_FLAVOURS
async def test_http_transient_errors_are_retried_then_bus_error_then_recover(
    mf, flavour
):
    data = pattern(64 * P, 8)
    attempts = FAST_RETRY.attempts
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        backing = http_backing(flavour, srv.url("obj"))
        try:
            cf = CachedFile(backing, mf, readahead=NoReadahead(), retry=FAST_RETRY)
            with anyio.fail_after(DEADLINE):
                assert await cf.read(0, 10) == data[:10]

                # Fewer failures than attempts: retried, right bytes.
                before = srv.range_requests
                srv.fail_next(attempts - 1, 503)
                assert await cf.read(3 * P + 5, 100) == data[3 * P + 5 : 3 * P + 105]
                assert srv.range_requests - before == attempts

                # More failures than attempts: every waiter of the one fetch
                # gets BusError, and no page is left behind.
                resident = cf.statistics().resident_bytes
                cached = cache_bytes(mf)
                before = srv.range_requests
                srv.fail_next(2 * attempts, 503)
                results = await asyncio.gather(
                    *(cf.read(7 * P + i, 100) for i in range(5)),
                    return_exceptions=True,
                )
                assert srv.range_requests - before == attempts
                for r in results:
                    assert isinstance(r, BusError), r
                    assert isinstance(r.err, aiohttp.ClientResponseError)
                    assert r.err.status == 503
                ts, err = await cf.translate(
                    M(7 * P, 8 * P), M(0, 32 * P), AccessType.READ
                )
                assert ts == []
                assert isinstance(err, BusError)
                assert srv.range_requests - before == 2 * attempts
                assert cf.statistics().resident_bytes == resident
                assert cache_bytes(mf) == cached

                # The server has recovered: the next access fetches again.
                assert await cf.read(7 * P, 200) == data[7 * P : 7 * P + 200]
                assert srv.range_requests - before == 2 * attempts + 1

                # A permanent error is not retried.
                srv.remove("obj")
                before = srv.range_requests
                with pytest.raises(BusError) as info:
                    await cf.read(20 * P, 10)
                assert isinstance(info.value.err, FileNotFoundError)
                assert srv.range_requests - before == 1
                srv.add("obj", data)
                assert await cf.read(20 * P, 10) == data[20 * P : 20 * P + 10]
            cf.check_invariants()
            await closed_and_balanced(cf, mf)
        finally:
            await backing.aclose()


@HTTP_FLAVOURS
async def test_http_size_question_failing_then_recovering(mf, flavour):
    data = pattern(4 * P, 9)
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        backing = http_backing(flavour, srv.url("obj"))
        try:
            cf = CachedFile(backing, mf, retry=FAST_RETRY)
            with anyio.fail_after(DEADLINE):
                # fsspec asks with HEAD, then GET; enough failures for every
                # attempt at both (HttpBacking asks with HEAD only).
                srv.fail_next(4 * FAST_RETRY.attempts, 503)
                with pytest.raises(BusError):
                    await cf.read(0, 10)
                assert cf.size is None
                srv.fail_next(0)
                assert await cf.read(0, 10) == data[:10]
                assert cf.size == len(data)
            await closed_and_balanced(cf, mf)
        finally:
            await backing.aclose()


@HTTP_FLAVOURS
async def test_flaky_http_never_returns_wrong_or_zero_bytes(mf, flavour):
    data = pattern(64 * P, 10)
    async with RangeHTTPServer() as srv:
        srv.add("obj", data)
        http = http_backing(flavour, srv.url("obj"))
        try:
            fb = FaultInjectingBacking(http, error_rate=0.3, seed=11, short_reads=True)
            cf = CachedFile(fb, mf, retry=FAST_RETRY, max_fetch_bytes=4 * P)
            rng = random.Random(12)
            ok = 0
            failures: list[BaseException] = []
            with anyio.fail_after(DEADLINE):
                for i in range(60):
                    off = rng.randrange(0, len(data))
                    try:
                        if i % 3:
                            n = rng.randrange(1, 3 * P)
                            got = await cf.read(off, n)
                            assert got == data[off : off + n]
                        else:
                            page = off - off % P
                            req = M(page, page + P)
                            ts, err = await cf.translate(
                                req, M(0, len(data)), AccessType.READ
                            )
                            assert (
                                check_translate_result(
                                    req, M(0, len(data)), AccessType.READ, ts, err
                                )
                                is None
                            )
                            if ts:
                                first, last = ts[0].source.start, ts[-1].source.end
                                assert translated_bytes(ts) == data[first:last]
                            if err is not None:
                                raise err
                        ok += 1
                    except BusError as exc:
                        failures.append(exc.err)
                assert ok > 0
                assert fb.errors_injected > 0
                assert all(isinstance(e, ConnectionError) for e in failures), failures
                cf.check_invariants()
                # The storage recovers: everything reads right.
                fb.error_rate = 0.0
                fb.short_reads = False
                assert await cf.read(0, len(data)) == data
            await closed_and_balanced(cf, mf)
        finally:
            await http.aclose()


async def test_failing_range_is_bus_error_then_recovers(store, mf):
    data = pattern(32 * P, 13)
    store.put(data)
    fb = FaultInjectingBacking(store.open(), fail_ranges=[(10 * P, 12 * P)])
    cf = CachedFile(fb, mf, readahead=NoReadahead(), retry=FAST_RETRY)
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, 10 * P) == data[: 10 * P]
        resident = cf.statistics().resident_bytes
        reads = fb.reads
        results = await asyncio.gather(
            *(cf.read(10 * P + 100 * i, 50) for i in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, BusError) for r in results), results
        assert all(isinstance(r.err, ConnectionError) for r in results)
        assert fb.reads - reads == FAST_RETRY.attempts  # one fetch, retried
        ts, err = await cf.translate(M(11 * P, 12 * P), M(0, 32 * P), AccessType.READ)
        assert ts == []
        assert isinstance(err, BusError)
        assert cf.statistics().resident_bytes == resident
        # Neighbours of the failing range are fine.
        assert await cf.read(12 * P, P) == data[12 * P : 13 * P]
        fb.fail_ranges.clear()
        assert await cf.read(10 * P, 2 * P) == data[10 * P : 12 * P]
        assert await cf.read(0, len(data)) == data
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


# ---------------------------------------------------------------- 5. cancellation


async def test_cancelled_reader_does_not_abort_a_slow_fetch(store, mf):
    data = pattern(64 * P, 14)
    store.put(data)
    c = counted(store)
    cf = CachedFile(c.backing, mf, readahead=NoReadahead())
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, 10) == data[:10]
        tail = cf.statistics().resident_bytes - P
        c.slow_down(0.3)
        before = c.requests()
        victim = asyncio.create_task(cf.read(8 * P + 3, 100))
        others = [asyncio.create_task(cf.read(8 * P + 10 * i, 1000)) for i in range(3)]
        translator = asyncio.create_task(
            cf.translate(M(8 * P, 9 * P), M(8 * P, 9 * P), AccessType.READ)
        )
        # The fetch of page 8 is at the storage, which holds it a while.
        await wait_until(lambda: c.requests() > before)
        assert not victim.done()
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        for i, task in enumerate(others):
            assert await task == data[8 * P + 10 * i : 8 * P + 10 * i + 1000]
        ts, err = await translator
        assert err is None
        assert translated_bytes(ts) == data[8 * P : 9 * P]
        assert c.requests() - before == 1

        # Every waiter cancelled: the fetch still lands, for the next access.
        before = c.requests()
        waiters = [asyncio.create_task(cf.read(20 * P, 10)) for _ in range(3)]
        await wait_until(lambda: c.requests() > before)
        assert not any(w.done() for w in waiters)
        for w in waiters:
            w.cancel()
        for w in waiters:
            with pytest.raises(asyncio.CancelledError):
                await w
        await wait_until(lambda: cf.statistics().fetches_in_flight == 0)
        # Pages 0, 8 and 20, and what came with the size (an HTTP
        # backing's tail read).
        assert cf.statistics().resident_bytes == 3 * P + tail
        assert await cf.read(20 * P, 10) == data[20 * P : 20 * P + 10]
        assert c.requests() - before == 1
    cf.check_invariants()
    await closed_and_balanced(cf, mf)


async def test_aclose_during_a_slow_fetch_frees_everything(store, mf):
    data = pattern(64 * P, 15)
    store.put(data)
    c = counted(store)
    cf = CachedFile(c.backing, mf, readahead=NoReadahead())
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, 10) == data[:10]
        c.slow_down(0.3)
        before = c.requests()
        reader = asyncio.create_task(cf.read(16 * P, 10))
        await wait_until(lambda: c.requests() > before)
        assert not reader.done()
        await cf.aclose()
        with pytest.raises(BusError) as info:
            await reader
    assert isinstance(info.value.err, ClosedError)
    assert mf.statistics().used_bytes == 0
    assert cf.statistics().fetches_in_flight == 0
    with pytest.raises(ClosedError):
        await cf.read(0, 1)


# ---------------------------------------------------------------- 6. read-only


@pytest.mark.parametrize("store", ["http", "fsspec-http", "s3", "local"], indirect=True)
async def test_read_only_storage_refuses_changes(store, mf):
    data = pattern(8 * P + 9, 16)
    store.put(data)
    backing = store.open()
    assert backing.readonly
    with pytest.raises(PermissionError):
        CachedFile(backing, mf, writable=True)
    cf = CachedFile(backing, mf)
    ms = RecordingSpace()
    with anyio.fail_after(DEADLINE):
        assert await cf.read(0, 2 * P) == data[: 2 * P]
        version = await backing.version()
        with pytest.raises(PermissionError):
            await cf.write(0, b"changed")
        with pytest.raises(PermissionError):
            await cf.write(len(data), b"appended")
        with pytest.raises(PermissionError):
            await cf.truncate(0)
        with pytest.raises(PermissionError):
            await cf.add_mapping(ms, AddrRange(0x10000, 0x12000), 0, True)
        assert not cf.is_mapped()
        ts, err = await cf.translate(M(0, P), M(0, P), AccessType.READ_WRITE)
        assert ts == []
        assert isinstance(err, BusError)
        assert isinstance(err.err, PermissionError)
        # Nothing changed, in the cache or in the storage.
        assert cf.size == len(data)
        assert cf.statistics().dirty_bytes == 0
        assert await cf.read(0, len(data) + 10) == data
        assert await backing.version() == version
        assert await backing.size() == len(data)
        assert await cf.revalidate() is False
        fresh = CachedFile(store.open(), mf)
        assert await fresh.read(0, len(data)) == data
        await fresh.aclose()
    assert ms.calls == []
    await closed_and_balanced(cf, mf)
