"""Tests of the storage backings, read_fully and fault injection."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import fsspec
import fsspec.core
import pytest

from aiomemmap import (
    Backing,
    BusError,
    BytesBacking,
    ClosedError,
    FaultInjectingBacking,
    FsspecBacking,
    HttpBacking,
    LocalFileBacking,
    RetryPolicy,
    open_backing,
)
from aiomemmap.backings.base import call_with_retry, is_transient, read_fully
from aiomemmap.tools.http_server import RangeHTTPServer
from tests.s3_server import moto_s3

DATA = bytes((i * 7 + 3) % 251 for i in range(10_000))
NEW_DATA = b"new contents " * 100
FAST = RetryPolicy(attempts=4, initial_backoff=0.0, max_backoff=0.0)

# ---------------------------------------------------------------- S3 (moto)

S3_CREDS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, object]]:
    """A moto S3 server on loopback with one bucket, for the whole session."""
    with moto_s3("bkt") as (endpoint, client, bucket):
        yield {"endpoint": endpoint, "client": client, "bucket": bucket}


def s3_options(s3: dict[str, object]) -> dict[str, object]:
    return {
        **S3_CREDS,
        "endpoint_url": s3["endpoint"],
        "client_kwargs": {"region_name": "us-east-1"},
    }


def fsspec_http_backing(url: str) -> FsspecBacking:
    """An ``FsspecBacking`` over fsspec's HTTP filesystem, owning its session.

    Built as ``open_backing`` builds it for fsspec URLs: an asynchronous,
    uncached filesystem instance, awaited on the test's loop.
    """
    fs, path = fsspec.core.url_to_fs(url, asynchronous=True, skip_instance_cache=True)
    backing = FsspecBacking(fs, path)
    backing._owns_fs = True
    return backing


# ---------------------------------------------------------------- contract


@dataclass
class Env:
    kind: str
    backing: Backing
    writable: bool
    # Changes the stored object behind the backing's back (or through it).
    modify: Callable[[bytes], Awaitable[None]]


KINDS = ["bytes", "local", "memory", "http", "fsspec-http", "s3"]


@pytest.fixture(params=KINDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    kind = request.param
    name = f"obj-{uuid.uuid4().hex}"
    if kind == "bytes":
        b = BytesBacking(DATA)

        async def modify(data: bytes) -> None:
            await b.truncate(0)
            await b.write_from(0, memoryview(data))

        yield Env(kind, b, True, modify)
        await b.aclose()
    elif kind == "local":
        path = tmp_path / name
        path.write_bytes(DATA)
        lb = LocalFileBacking(path, writable=True)

        async def modify(data: bytes) -> None:
            st = path.stat()
            path.write_bytes(data)
            bumped = st.st_mtime_ns + 2_000_000_000
            os.utime(path, ns=(bumped, bumped))

        yield Env(kind, lb, True, modify)
        await lb.aclose()
    elif kind == "memory":
        fs = fsspec.filesystem("memory")
        mpath = f"/aiomemmap-tests/{name}"
        fs.pipe_file(mpath, DATA)
        fb = FsspecBacking(fs, mpath)

        async def modify(data: bytes) -> None:
            await asyncio.sleep(0.002)
            fs.pipe_file(mpath, data)

        yield Env(kind, fb, True, modify)
        await fb.aclose()
        fs.rm(mpath)
    elif kind in ("http", "fsspec-http"):
        async with RangeHTTPServer() as srv:
            srv.add(name, DATA)
            url = srv.url(name)
            hb = open_backing(url) if kind == "http" else fsspec_http_backing(url)

            async def modify(data: bytes) -> None:
                srv.replace(name, data)

            yield Env(kind, hb, False, modify)
            await hb.aclose()
    else:
        s3 = request.getfixturevalue("s3_server")
        client = s3["client"]
        client.put_object(Bucket=s3["bucket"], Key=name, Body=DATA)
        sb = open_backing(f"s3://{s3['bucket']}/{name}", **s3_options(s3))

        async def modify(data: bytes) -> None:
            client.put_object(Bucket=s3["bucket"], Key=name, Body=data)

        yield Env(kind, sb, False, modify)
        await sb.aclose()
        client.delete_object(Bucket=s3["bucket"], Key=name)


async def read(b: Backing, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    got = await b.read_into(offset, memoryview(buf))
    return bytes(buf[:got])


async def test_contract_size(env: Env) -> None:
    assert await env.backing.size() == len(DATA)


@pytest.mark.parametrize(
    ("offset", "n"),
    [(0, 4096), (4096, 4096), (3, 1000), (4095, 2), (9000, 4096), (0, len(DATA))],
)
async def test_contract_read_ranges(env: Env, offset: int, n: int) -> None:
    assert await read(env.backing, offset, n) == DATA[offset : offset + n]


async def test_contract_read_past_eof_and_empty(env: Env) -> None:
    assert await read(env.backing, len(DATA), 10) == b""
    assert await read(env.backing, len(DATA) + 5000, 10) == b""
    assert await read(env.backing, 10, 0) == b""


async def test_contract_read_fully_spanning_eof(env: Env) -> None:
    buf = bytearray(b"\xff" * 4096)
    n = await read_fully(env.backing, 8192, buf)
    assert n == len(DATA) - 8192
    assert bytes(buf[:n]) == DATA[8192:]


async def test_contract_version_changes_after_modification(env: Env) -> None:
    v1 = await env.backing.version()
    assert v1 is not None
    assert await env.backing.version() == v1
    await env.modify(NEW_DATA)
    v2 = await env.backing.version()
    assert v2 is not None
    assert v2 != v1
    assert await env.backing.size() == len(NEW_DATA)
    assert await read(env.backing, 0, 20) == NEW_DATA[:20]


async def test_contract_writes_or_permission_error(env: Env) -> None:
    b = env.backing
    assert b.readonly is (not env.writable)
    if not env.writable:
        with pytest.raises(PermissionError):
            await b.write_from(0, memoryview(b"x"))
        with pytest.raises(PermissionError):
            await b.truncate(0)
        assert await read(b, 0, 10) == DATA[:10]
        return
    v1 = await b.version()
    assert await b.write_from(5, memoryview(b"hello")) == 5
    assert await read(b, 0, 12) == DATA[:5] + b"hello" + DATA[10:12]
    # Writing past the end zero-fills the gap.
    assert await b.write_from(len(DATA) + 3, memoryview(b"tail")) == 4
    assert await b.size() == len(DATA) + 7
    assert await read(b, len(DATA) - 1, 10) == DATA[-1:] + b"\0\0\0tail"
    await b.truncate(100)
    assert await b.size() == 100
    await b.truncate(110)
    assert await read(b, 95, 100) == DATA[95:100] + bytes(10)
    if env.kind != "local":  # mtime granularity: see LocalFileBacking.version
        assert await b.version() != v1


async def test_contract_aclose_idempotent_then_closed(env: Env) -> None:
    b = env.backing
    await b.aclose()
    await b.aclose()
    with pytest.raises(ClosedError):
        await b.size()
    with pytest.raises(ClosedError):
        await read(b, 0, 10)
    with pytest.raises(ClosedError):
        await b.version()


async def test_contract_concurrent_reads(env: Env) -> None:
    offsets = list(range(0, len(DATA), 977))
    with anyio.fail_after(30):
        results = await asyncio.gather(*(read(env.backing, o, 1500) for o in offsets))
    for o, got in zip(offsets, results, strict=True):
        assert got == DATA[o : o + 1500]


# ---------------------------------------------------------------- specific backings


async def test_bytes_backing_readonly_and_validation() -> None:
    b = BytesBacking(b"abc", readonly=True)
    assert await b.version() == "0"
    with pytest.raises(PermissionError):
        await b.write_from(0, memoryview(b"x"))
    with pytest.raises(ValueError, match="offset"):
        await b.read_into(-1, memoryview(bytearray(1)))
    with pytest.raises(TypeError):
        await b.read_into(0, memoryview(b"readonly"))
    with pytest.raises(TypeError):
        BytesBacking("text")  # type: ignore[arg-type]


async def test_bytes_backing_version_counts_writes() -> None:
    b = BytesBacking()
    await b.write_from(0, memoryview(b"ab"))
    await b.truncate(1)
    assert await b.version() == "2"
    assert b.data == b"a"


def test_local_backing_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        LocalFileBacking(tmp_path / "nope")
    with pytest.raises(IsADirectoryError):
        LocalFileBacking(tmp_path)


async def test_local_backing_readonly_by_default(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(DATA)
    b = LocalFileBacking(p)
    assert b.readonly
    with pytest.raises(PermissionError):
        await b.write_from(0, memoryview(b"x"))
    with pytest.raises(PermissionError):
        await b.truncate(1)
    st = p.stat()
    assert await b.version() == f"{st.st_size}-{st.st_mtime_ns}"
    await b.aclose()


async def test_local_backing_cancelled_read_keeps_fd_until_thread_done(
    tmp_path: Path,
) -> None:
    p = tmp_path / "f"
    p.write_bytes(DATA)
    b = LocalFileBacking(p)
    with anyio.fail_after(30):
        task = asyncio.create_task(read(b, 0, 100))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await b.aclose()
        # The fd closes once the worker thread finishes.
        while b._fd is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_fsspec_backing_sync_default_readonly_for_non_writable_protocol() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/aiomemmap-tests/ro", b"abc")
    b = FsspecBacking(fs, "/aiomemmap-tests/ro", readonly=True, block_size_hint=4096)
    assert b.block_size_hint == 4096
    with pytest.raises(PermissionError):
        await b.truncate(0)
    with pytest.raises(ValueError, match="block_size_hint"):
        FsspecBacking(fs, "/x", block_size_hint=0)
    with pytest.raises(TypeError):
        FsspecBacking(object(), "/x")
    fs.rm("/aiomemmap-tests/ro")


async def test_fsspec_backing_missing_object() -> None:
    fs = fsspec.filesystem("memory")
    b = FsspecBacking(fs, f"/aiomemmap-tests/missing-{uuid.uuid4().hex}")
    with pytest.raises(FileNotFoundError):
        await b.size()
    with pytest.raises(FileNotFoundError):
        await read(b, 0, 10)


async def test_fsspec_http_missing_is_permanent_but_503_is_transient() -> None:
    with anyio.fail_after(30):
        async with RangeHTTPServer() as srv:
            srv.add("x", DATA)
            missing = fsspec_http_backing(srv.url("missing"))
            with pytest.raises(FileNotFoundError) as info:
                await missing.size()
            assert not is_transient(info.value)
            await missing.aclose()
            b = fsspec_http_backing(srv.url("x"))
            srv.fail_next(2, 503)  # info() tries HEAD then GET
            with pytest.raises(aiohttp.ClientResponseError) as info2:
                await b.size()
            assert is_transient(info2.value)
            assert await b.size() == len(DATA)  # pins the version read below
            srv.fail_next(1, 500)
            with pytest.raises(aiohttp.ClientResponseError) as info3:
                await read(b, 0, 10)
            assert info3.value.status == 500
            assert is_transient(info3.value)
            # read_fully retries the transient failures.
            srv.fail_next(2, 503)
            buf = bytearray(100)
            assert await read_fully(b, 0, buf, retry=FAST) == 100
            assert bytes(buf) == DATA[:100]
            await b.aclose()


async def test_fsspec_s3_transient_classification_of_5xx(s3_server) -> None:
    # s3fs reports S3 errors as OSError with botocore's ClientError as cause.
    b = open_backing(f"s3://{s3_server['bucket']}/absent", **s3_options(s3_server))
    with pytest.raises(FileNotFoundError) as info:
        await b.size()
    assert not is_transient(info.value)
    await b.aclose()


async def test_fsspec_s3_writable_when_asked(s3_server) -> None:
    key = f"w-{uuid.uuid4().hex}"
    s3_server["client"].put_object(Bucket=s3_server["bucket"], Key=key, Body=b"abc")
    b = open_backing(
        f"s3://{s3_server['bucket']}/{key}", readonly=False, **s3_options(s3_server)
    )
    v1 = await b.version()
    await b.write_from(1, memoryview(b"XYZ"))
    assert await read(b, 0, 10) == b"aXYZ"
    assert await b.version() != v1
    await b.aclose()


async def test_fsspec_native_backing_refuses_other_loop() -> None:
    async with RangeHTTPServer() as srv:
        srv.add("x", b"abc")
        b = fsspec_http_backing(srv.url("x"))
        assert await b.size() == 3
        assert isinstance(b, FsspecBacking)
        b._loop = asyncio.new_event_loop()
        try:
            with pytest.raises(RuntimeError, match="another event loop"):
                await b.size()
        finally:
            b._loop.close()
            b._loop = asyncio.get_running_loop()
        await b.aclose()


# ---------------------------------------------------------------- is_transient


class FakeBotoError(Exception):
    def __init__(self, status: int, code: str = "X") -> None:
        super().__init__(code)
        self.response = {
            "Error": {"Code": code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


def s3_style(status: int, err: int) -> OSError:
    exc = OSError(err, "wrapped")
    exc.__cause__ = FakeBotoError(status)
    return exc


def response_error(status: int) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(
        request_info=None,  # type: ignore[arg-type]
        history=(),
        status=status,
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        aiohttp.ClientPayloadError("cut"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError(),
        response_error(500),
        response_error(503),
        response_error(429),
        s3_style(500, errno.EREMOTEIO),
        s3_style(503, errno.EBUSY),
        OSError(errno.ETIMEDOUT, "timed out"),
    ],
)
def test_is_transient_true(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(),
        PermissionError(),
        IsADirectoryError(),
        ValueError(),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        response_error(404),
        response_error(403),
        response_error(416),
        s3_style(403, errno.EACCES),
        OSError(errno.EIO, "io"),
        RuntimeError(),
        ConnectionRefusedError(),
        OSError(errno.ECONNREFUSED, "refused"),
        BusError(ConnectionResetError()),
    ],
)
def test_is_transient_false(exc: BaseException) -> None:
    assert not is_transient(exc)


# ------------------------------------------------- RetryPolicy / read_fully


def test_retry_policy_backoff_and_validation() -> None:
    p = RetryPolicy(attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2)
    assert [p.backoff(k) for k in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert p.backoff(10_000) == 0.3
    for bad in (
        {"attempts": 0},
        {"attempts": 1.5},
        {"initial_backoff": -1},
        {"multiplier": 0.5},
        {"initial_backoff": 1.0, "max_backoff": 0.5},
        {"max_backoff": float("inf")},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            RetryPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry"):
        p.backoff(0)


async def test_read_fully_handles_short_reads() -> None:
    fb = FaultInjectingBacking(BytesBacking(DATA), short_reads=True)
    buf = bytearray(5000)
    assert await read_fully(fb, 1234, buf) == 5000
    assert bytes(buf) == DATA[1234:6234]
    assert fb.reads > 5  # halving: many reads were needed


async def test_read_fully_retries_transient_errors_and_counts() -> None:
    fb = FaultInjectingBacking(BytesBacking(DATA), fail_ranges=[(0, 10)])
    buf = bytearray(100)
    calls = itertools.count()

    real = fb.read_into

    async def recovering(offset: int, b: memoryview) -> int:
        if next(calls) == 2:
            fb.fail_ranges.clear()
        return await real(offset, b)

    fb.read_into = recovering  # type: ignore[method-assign]
    assert await read_fully(fb, 0, buf, retry=FAST) == 100
    assert bytes(buf) == DATA[:100]
    assert fb.errors_injected == 2
    assert fb.reads == 3


async def test_read_fully_exhaustion_raises_last_error() -> None:
    n = itertools.count()

    def factory() -> BaseException:
        return ConnectionResetError(f"failure {next(n)}")

    fb = FaultInjectingBacking(
        BytesBacking(DATA), error_rate=1.0, error_factory=factory, ops=["read_into"]
    )
    with pytest.raises(ConnectionResetError, match="failure 3"):
        await read_fully(fb, 0, bytearray(10), retry=FAST)
    assert fb.reads == 4
    with pytest.raises(ConnectionResetError, match="failure 4"):
        await read_fully(fb, 0, bytearray(10), retry=RetryPolicy(attempts=1))


async def test_read_fully_permanent_error_not_retried() -> None:
    fb = FaultInjectingBacking(
        BytesBacking(DATA),
        fail_ranges=[(0, 1)],
        error_factory=lambda: PermissionError("denied"),
    )
    with pytest.raises(PermissionError):
        await read_fully(fb, 0, bytearray(10), retry=FAST)
    assert fb.reads == 1


async def test_read_fully_cancellation_not_retried() -> None:
    fb = FaultInjectingBacking(
        BytesBacking(DATA), error_rate=1.0, error_factory=asyncio.CancelledError
    )
    with pytest.raises(asyncio.CancelledError):
        await read_fully(fb, 0, bytearray(10), retry=FAST)
    assert fb.reads == 1

    slow = FaultInjectingBacking(BytesBacking(DATA), latency=10.0)
    with anyio.fail_after(30):
        task = asyncio.create_task(read_fully(slow, 0, bytearray(10)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert slow.reads == 1


class ZeroBacking:
    """Claims a size but returns zero bytes for ``zero_reads`` reads."""

    readonly = True

    def __init__(self, zero_reads: int) -> None:
        self.inner = BytesBacking(DATA)
        self.zero_reads = zero_reads

    async def size(self) -> int:
        return len(DATA)

    async def read_into(self, offset: int, buf: memoryview) -> int:
        if self.zero_reads > 0:
            self.zero_reads -= 1
            return 0
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError

    async def truncate(self, size: int) -> None:
        raise PermissionError

    async def version(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


async def test_read_fully_zero_read_before_eof_is_not_eof() -> None:
    buf = bytearray(10)
    assert await read_fully(ZeroBacking(2), 0, buf, retry=FAST) == 10
    assert bytes(buf) == DATA[:10]
    with pytest.raises(OSError, match="no bytes") as info:
        await read_fully(ZeroBacking(10), 0, bytearray(10), retry=FAST)
    assert info.value.errno == errno.EIO


async def test_read_fully_validation() -> None:
    b = BytesBacking(DATA)
    with pytest.raises(ValueError, match="offset"):
        await read_fully(b, -1, bytearray(1))
    with pytest.raises(TypeError):
        await read_fully(b, 0, memoryview(b"ro"))
    with pytest.raises(TypeError):
        await read_fully(b, 0, bytearray(1), retry=3)  # type: ignore[arg-type]
    assert await read_fully(b, 0, bytearray(0)) == 0


# ---------------------------------------------------------------- FaultInjectingBacking


async def error_pattern(seed: int, calls: int = 40) -> list[bool]:
    fb = FaultInjectingBacking(BytesBacking(DATA), error_rate=0.3, seed=seed)
    out = []
    for i in range(calls):
        try:
            await read(fb, i, 10)
            out.append(False)
        except ConnectionError:
            out.append(True)
    assert fb.errors_injected == sum(out)
    assert fb.calls == calls
    return out


async def test_fault_injection_deterministic_per_seed() -> None:
    a = await error_pattern(1)
    assert a == await error_pattern(1)
    assert any(a)
    assert not all(a)
    assert a != await error_pattern(2)


async def test_fault_injection_fail_ranges_and_recovery() -> None:
    fb = FaultInjectingBacking(BytesBacking(DATA), fail_ranges=[(100, 200)])
    assert await read(fb, 0, 100) == DATA[:100]  # touches 100 exclusive: fine
    with pytest.raises(ConnectionError):
        await read(fb, 150, 10)
    with pytest.raises(ConnectionError):
        await read(fb, 50, 100)
    fb.fail_ranges.clear()
    assert await read(fb, 150, 10) == DATA[150:160]
    assert fb.errors_injected == 2
    assert fb.bytes_read == 110
    with pytest.raises(ValueError, match="fail range"):
        FaultInjectingBacking(BytesBacking(), fail_ranges=[(5, 1)])


async def test_fault_injection_latency_orders_calls() -> None:
    order: list[str] = []
    slow = FaultInjectingBacking(BytesBacking(DATA), latency=0.2)
    fast = FaultInjectingBacking(BytesBacking(DATA))

    async def go(name: str, b: Backing) -> None:
        await read(b, 0, 1)
        order.append(name)

    with anyio.fail_after(30):
        await asyncio.gather(go("slow", slow), go("fast", fast))
    assert order == ["fast", "slow"]
    assert slow.calls == 1
    assert fast.calls == 1


async def test_fault_injection_forwards_everything() -> None:
    inner = BytesBacking(b"abc")
    fb = FaultInjectingBacking(inner, jitter=0.001, seed=3)
    assert fb.readonly is False
    assert await fb.write_from(3, memoryview(b"d")) == 1
    await fb.truncate(5)
    assert await fb.size() == 5
    assert await fb.version() == "2"
    await fb.aclose()
    with pytest.raises(ClosedError):
        await fb.size()
    with pytest.raises(ValueError, match="error_rate"):
        FaultInjectingBacking(inner, error_rate=2)
    with pytest.raises(ValueError, match="ops"):
        FaultInjectingBacking(inner, ops=["bogus"])


# ---------------------------------------------------------------- open_backing


async def test_open_backing_paths_and_file_urls(tmp_path: Path) -> None:
    p = tmp_path / "a file"
    p.write_bytes(DATA)
    for spec in (str(p), p.as_uri()):
        b = open_backing(spec)
        assert isinstance(b, LocalFileBacking)
        assert b.readonly
        assert await read(b, 0, 5) == DATA[:5]
        await b.aclose()
    w = open_backing(str(p), writable=True)
    assert not w.readonly
    await w.aclose()
    with pytest.raises(ValueError, match="unsupported options"):
        open_backing(str(p), bogus=1)
    with pytest.raises(FileNotFoundError):
        open_backing(str(tmp_path / "missing"))


async def test_open_backing_memory() -> None:
    path = f"/aiomemmap-tests/open-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(path, DATA)
    b = open_backing(f"memory://{path}")
    assert isinstance(b, FsspecBacking)
    assert not b.readonly
    assert await b.size() == len(DATA)
    await b.aclose()
    fs.rm(path)


async def test_open_backing_http() -> None:
    async with RangeHTTPServer() as srv:
        srv.add("dir/obj.bin", DATA)
        b = open_backing(srv.url("dir/obj.bin"))
        assert isinstance(b, HttpBacking)
        assert b.readonly
        assert await read(b, 10, 10) == DATA[10:20]
        assert await b.version() == f"etag:{srv.etag('dir/obj.bin')}"
        await b.aclose()
        h = open_backing(srv.url("dir/obj.bin"), headers={"X-Test": "1"})
        assert isinstance(h, HttpBacking)
        assert await read(h, 0, 5) == DATA[:5]
        await h.aclose()
        # Any other option goes to fsspec's HTTP filesystem.
        f = open_backing(srv.url("dir/obj.bin"), block_size_hint=4096)
        assert isinstance(f, FsspecBacking)
        assert f.block_size_hint == 4096
        assert await read(f, 10, 10) == DATA[10:20]
        assert await f.version() == f"etag:{srv.etag('dir/obj.bin')}"
        await f.aclose()


async def test_open_backing_s3(s3_server) -> None:
    key = f"open-{uuid.uuid4().hex}"
    s3_server["client"].put_object(Bucket=s3_server["bucket"], Key=key, Body=DATA)
    b = open_backing(f"s3://{s3_server['bucket']}/{key}", **s3_options(s3_server))
    assert isinstance(b, FsspecBacking)
    assert await read(b, 9990, 100) == DATA[9990:]
    v = await b.version()
    assert v is not None
    assert v.startswith("etag:")
    await b.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "nosuchproto://x/y",
        "http://",
        "s3://",
        "s3://bucket",
        "file://host/x",
        "bad scheme://x",
    ],
)
def test_open_backing_bad_urls(url: str) -> None:
    with pytest.raises(ValueError) as info:  # noqa: PT011
        open_backing(url)
    assert repr(url) in str(info.value) or url == ""


def test_open_backing_type_error() -> None:
    with pytest.raises(TypeError):
        open_backing(42)  # type: ignore[arg-type]


async def test_call_with_retry_retries_transient_then_gives_up():
    calls = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return 42

    policy = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)
    assert await call_with_retry(flaky, retry=policy) == 42
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(ConnectionResetError):
        await call_with_retry(
            flaky, retry=RetryPolicy(attempts=2, initial_backoff=0.0, max_backoff=0.0)
        )
    assert len(calls) == 2

    async def missing() -> int:
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        await call_with_retry(missing, retry=policy)
    assert len(calls) == 1
    with pytest.raises(TypeError, match="retry"):
        await call_with_retry(flaky, retry=3)  # type: ignore[arg-type]
