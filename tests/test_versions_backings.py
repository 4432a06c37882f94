"""Backings tie their reads to one version of the object.

Each backing kind against the real thing: the range-serving HTTP server
(playing capable and less capable servers), moto's S3 server through s3fs,
fsspec's memory filesystem, and local files changed by another process. A
change of version under a read raises ``StaleVersionError``; bytes of the new
version are never returned as the old one's, and a file that shrank never
reads as zeros. Also: time limits, and backings that answer a read with
something other than a byte count.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import fsspec
import pytest

from aiomemmap import (
    BytesBacking,
    FsspecBacking,
    HttpBacking,
    LocalFileBacking,
    RetryPolicy,
    StaleVersionError,
    open_backing,
)
from aiomemmap.backings.base import is_transient, read_fully
from aiomemmap.tools.http_server import RangeHTTPServer
from tests.s3_server import moto_s3

P = 4096
V1 = bytes((i * 7 + 3) % 251 for i in range(256 * P))
V2 = bytes((i * 11 + 5) % 241 for i in range(256 * P))  # same size, other bytes
FAST = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)
DEADLINE = 60


async def read(backing: object, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    got = await read_fully(backing, offset, buf, retry=FAST)  # type: ignore[arg-type]
    return bytes(buf[:got])


# ---------------------------------------------------------------- HTTP


@pytest.fixture
async def server() -> AsyncIterator[RangeHTTPServer]:
    async with RangeHTTPServer() as srv:
        srv.add("obj", V1)
        yield srv


async def test_http_same_size_replace_fails_the_read_with_412_then_version_moves_on(
    server: RangeHTTPServer,
) -> None:
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            v1 = await b.version()
            assert await read(b, 0, P) == V1[:P]
            server.replace("obj", V2)
            with pytest.raises(StaleVersionError) as info:
                await read(b, 100 * P, P)
            assert info.value.errno == errno.ESTALE
            assert info.value.expected == v1
            assert info.value.found == f"etag:{server.etag('obj')}"
            assert "HttpBacking" in str(info.value)
            assert server.precondition_failures == 1
            # Not retried: one refused request.
            assert not is_transient(info.value)
            # Moving on: the next version() pins the new version.
            assert await b.version() != v1
            assert await read(b, 100 * P, P) == V2[100 * P : 101 * P]
            assert await read(b, 0, P) == V2[:P]
    finally:
        await b.aclose()


async def test_http_shrunk_object_raises_stale_never_zeros(
    server: RangeHTTPServer,
) -> None:
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            assert await read(b, 0, P) == V1[:P]  # the first read pins
            server.replace("obj", V1[:P])
            with pytest.raises(StaleVersionError):
                await read(b, 200 * P, P)
            # A server that ignores the condition answers 416, whose total
            # is not the pinned size.
            server.conditionals = False
            with pytest.raises(StaleVersionError) as info:
                await read(b, 200 * P, P)
            assert f"size {P}" in str(info.value)
    finally:
        await b.aclose()


async def test_http_server_ignoring_if_match_is_caught_by_the_answers_etag(
    server: RangeHTTPServer,
) -> None:
    server.conditionals = False
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            await b.version()
            server.replace("obj", V2)
            with pytest.raises(StaleVersionError) as info:
                await read(b, 3 * P, P)
            assert server.precondition_failures == 0
            assert info.value.found == f"etag:{server.etag('obj')}"
    finally:
        await b.aclose()


async def test_http_weak_etag_is_never_sent_in_if_match(
    server: RangeHTTPServer,
) -> None:
    server.etags = "weak"
    server.last_modified = False
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            v1 = await b.version()
            assert v1 is not None
            assert v1.startswith("etag:W/")
            # If-Match with a weak tag would always be refused: reads work.
            assert await read(b, 7 * P, 2 * P) == V1[7 * P : 9 * P]
            assert server.precondition_failures == 0
            server.replace("obj", V2)
            with pytest.raises(StaleVersionError):
                await read(b, 7 * P, P)
            assert server.precondition_failures == 0  # caught from the answer
    finally:
        await b.aclose()


async def test_http_without_etag_the_date_guards_reads_with_if_unmodified_since(
    server: RangeHTTPServer,
) -> None:
    server.etags = "none"
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            assert await b.version() == f"last-modified:{server.modified('obj')}"
            assert await read(b, 0, P) == V1[:P]
            server.replace("obj", V2)
            with pytest.raises(StaleVersionError):
                await read(b, 50 * P, P)
            assert server.precondition_failures == 1
    finally:
        await b.aclose()


async def test_http_without_validators_only_size_changes_are_seen(
    server: RangeHTTPServer,
) -> None:
    server.etags = "none"
    server.last_modified = False
    b = HttpBacking(server.url("obj"))
    try:
        with anyio.fail_after(DEADLINE):
            assert await b.version() is None
            server.replace("obj", V2[: 128 * P])
            with pytest.raises(StaleVersionError):
                await read(b, 0, P)
            # Past the new end: a 416 for a read before the pinned end.
            with pytest.raises(StaleVersionError) as info:
                await read(b, 200 * P, P)
            assert "shrank" in str(info.value)
            assert await b.version() is None  # moves on to the new size
            assert await read(b, 0, P) == V2[:P]
            # The documented limit: a same-size change is not seen.
            server.replace("obj", V1[: 128 * P])
            assert await read(b, 0, P) == V1[:P]
    finally:
        await b.aclose()


async def test_http_hung_server_times_out_transiently_and_is_retried_boundedly(
    server: RangeHTTPServer,
) -> None:
    b = HttpBacking(server.url("obj"), timeout=0.2)
    try:
        with anyio.fail_after(DEADLINE):
            server.latency = 3600.0  # a server that never answers
            before = server.requests
            with pytest.raises(TimeoutError) as info:
                await read(b, 0, P)
            assert info.value.errno == errno.ETIMEDOUT
            assert "HttpBacking" in str(info.value)
            assert is_transient(info.value)
            assert server.requests - before == FAST.attempts
            server.latency = 0.0
            assert await read(b, 0, P) == V1[:P]
    finally:
        await b.aclose()


def test_http_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        HttpBacking("http://127.0.0.1:1/x", timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        HttpBacking("http://127.0.0.1:1/x", timeout=float("inf"))


# ---------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, object, str]]:
    with moto_s3("versions") as found:
        yield found


def s3_options(endpoint: str, **more: object) -> dict[str, object]:
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
        **more,
    }


async def test_s3_overwrite_fails_the_read_with_if_match(
    s3: tuple[str, object, str],
) -> None:
    endpoint, client, bucket = s3
    key = f"k-{uuid.uuid4().hex}"
    data, new = V1[: 16 * P], V2[: 16 * P]
    client.put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]
    b = open_backing(f"s3://{bucket}/{key}", **s3_options(endpoint))
    try:
        with anyio.fail_after(DEADLINE):
            v1 = await b.version()
            assert await read(b, 0, P) == data[:P]
            client.put_object(Bucket=bucket, Key=key, Body=new)  # type: ignore[attr-defined]
            with pytest.raises(StaleVersionError) as info:
                await read(b, 5 * P, P)
            assert info.value.expected == v1
            # Shrunk: refused too, never zeros.
            client.put_object(Bucket=bucket, Key=key, Body=new[:P])  # type: ignore[attr-defined]
            with pytest.raises(StaleVersionError):
                await read(b, 5 * P, P)
            assert await b.version() != v1
            assert await b.size() == P
            assert await read(b, 0, 2 * P) == new[:P]
    finally:
        await b.aclose()


async def test_s3_version_aware_reads_keep_serving_the_pinned_version(
    s3: tuple[str, object, str],
) -> None:
    endpoint, client, bucket = s3
    vbucket = f"{bucket}-v"
    client.create_bucket(Bucket=vbucket)  # type: ignore[attr-defined]
    client.put_bucket_versioning(  # type: ignore[attr-defined]
        Bucket=vbucket, VersioningConfiguration={"Status": "Enabled"}
    )
    key = f"k-{uuid.uuid4().hex}"
    data, new = V1[: 8 * P], V2[: 4 * P]
    client.put_object(Bucket=vbucket, Key=key, Body=data)  # type: ignore[attr-defined]
    b = open_backing(
        f"s3://{vbucket}/{key}", **s3_options(endpoint, version_aware=True)
    )
    try:
        with anyio.fail_after(DEADLINE):
            v1 = await b.version()
            client.put_object(Bucket=vbucket, Key=key, Body=new)  # type: ignore[attr-defined]
            # The old version's bytes, whole, even past the new end.
            assert await read(b, 6 * P, P) == data[6 * P : 7 * P]
            assert await b.version() != v1
            assert await read(b, 0, 8 * P) == new
    finally:
        await b.aclose()
        listed = client.list_object_versions(Bucket=vbucket)  # type: ignore[attr-defined]
        for obj in listed.get("Versions", []):
            client.delete_object(  # type: ignore[attr-defined]
                Bucket=vbucket, Key=obj["Key"], VersionId=obj["VersionId"]
            )
        client.delete_bucket(Bucket=vbucket)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- fsspec


async def test_fsspec_memory_change_is_seen_by_info_after_the_read() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/versions/{uuid.uuid4().hex}"
    fs.pipe_file(path, V1[: 4 * P])
    b = FsspecBacking(fs, path)
    with anyio.fail_after(DEADLINE):
        v1 = await b.version()
        assert await read(b, 0, P) == V1[:P]
        fs.pipe_file(path, V2[: 2 * P])  # another size: seen whatever the clock
        with pytest.raises(StaleVersionError) as info:
            await read(b, P, P)
        assert info.value.expected == v1
        assert await b.version() != v1
        assert await read(b, 0, 4 * P) == V2[: 2 * P]
    await b.aclose()
    fs.rm(path)


async def test_fsspec_http_if_match_refusal_is_stale(server: RangeHTTPServer) -> None:
    b = open_backing(server.url("obj"), headers={}, block_size_hint=P)
    assert isinstance(b, FsspecBacking)
    try:
        with anyio.fail_after(DEADLINE):
            await b.version()
            server.replace("obj", V2)
            with pytest.raises(StaleVersionError):
                await read(b, 0, P)
            assert server.precondition_failures == 1
    finally:
        await b.aclose()


# ---------------------------------------------------------------- local files


async def change_in_another_process(path: Path, script: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
    assert await proc.wait() == 0


# Bumps the modification time by two seconds, so that the change is seen
# whatever the file system's timestamp granularity.
_BUMP = "st = os.stat(p); t = st.st_mtime_ns + 2_000_000_000; os.utime(p, ns=(t, t))"


async def test_local_file_truncated_by_another_process_raises_stale_never_zeros(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(V1[: 8 * P])
    b = LocalFileBacking(path)
    with anyio.fail_after(DEADLINE):
        v1 = await b.version()
        assert await read(b, 0, P) == V1[:P]
        await change_in_another_process(
            path, "import os, sys; os.truncate(sys.argv[1], 4096)"
        )
        with pytest.raises(StaleVersionError) as info:
            await read(b, 5 * P, P)
        assert info.value.expected == v1
        assert info.value.found == await b.version()
        assert await read(b, 0, 8 * P) == V1[:P]
    await b.aclose()


async def test_local_file_rewritten_in_place_by_another_process_raises_stale(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(V1[: 8 * P])
    b = LocalFileBacking(path)
    with anyio.fail_after(DEADLINE):
        assert await read(b, 0, P) == V1[:P]  # the first read pins
        script = (
            "import os, sys; p = sys.argv[1]\n"
            "with open(p, 'r+b') as f: f.write(bytes(4096))\n" + _BUMP
        )
        await change_in_another_process(path, script)
        with pytest.raises(StaleVersionError):
            await read(b, 0, P)
        await b.version()
        assert await read(b, 0, P) == bytes(P)
    await b.aclose()


async def test_local_file_own_writes_move_the_pin(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(V1[: 2 * P])
    b = LocalFileBacking(path, writable=True)
    with anyio.fail_after(DEADLINE):
        v1 = await b.version()
        await b.write_from(3 * P, memoryview(b"tail"))
        await b.truncate(3 * P + 2)
        assert await read(b, 3 * P, 10) == b"ta"
        assert await b.version() != v1
    await b.aclose()


def test_local_file_timeout_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="timeout"):
        LocalFileBacking(path, timeout=-1.0)


# ---------------------------------------------------------------- read_fully


class AnswersWith:
    """A backing whose reads answer ``answer`` instead of a byte count."""

    readonly = True

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def __repr__(self) -> str:
        return f"AnswersWith({self.answer!r})"

    async def size(self) -> int:
        return 10

    async def read_into(self, offset: int, buf: memoryview) -> object:
        return self.answer

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EACCES, "read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EACCES, "read-only")

    async def version(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("answer", [None, "3", 2.0, True, -1, 11])
async def test_read_into_returning_no_byte_count_names_the_backing(
    answer: object,
) -> None:
    with pytest.raises(OSError, match="not a byte count") as info:
        await read(AnswersWith(answer), 0, 10)
    assert info.value.errno == errno.EIO
    message = str(info.value)
    assert f"AnswersWith({answer!r}).read_into(0, <10 bytes>) returned" in message
    assert "not a byte count in [0, 10]" in message


async def test_read_fully_refuses_to_end_before_the_known_size() -> None:
    b = BytesBacking(V1[: 4 * P])
    await b.truncate(P)  # shrank since its size was learnt
    buf = bytearray(P)
    with pytest.raises(StaleVersionError) as info:
        await read_fully(b, 2 * P, buf, retry=FAST, known_size=4 * P)
    assert (info.value.expected, info.value.found) == (f"size:{4 * P}", f"size:{P}")
    # Without a known size, the end the backing reports is trusted.
    assert await read_fully(b, 2 * P, buf, retry=FAST) == 0
    # At the known end, the end of file is not an error.
    assert await read_fully(b, P, buf, retry=FAST, known_size=P) == 0


class Hangs:
    """A backing whose reads never answer until cancelled."""

    readonly = True

    def __init__(self) -> None:
        self.reads = 0
        self.cancelled = 0

    async def size(self) -> int:
        return 10

    async def read_into(self, offset: int, buf: memoryview) -> int:
        self.reads += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return 0

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EACCES, "read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EACCES, "read-only")

    async def version(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


async def test_retry_policy_timeout_bounds_each_attempt_of_a_hung_backing() -> None:
    b = Hangs()
    policy = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0, timeout=0.05)
    with anyio.fail_after(DEADLINE), pytest.raises(TimeoutError) as info:
        await read_fully(b, 0, bytearray(10), retry=policy)  # type: ignore[arg-type]
    assert info.value.errno == errno.ETIMEDOUT
    assert "read_into at 0" in str(info.value)
    assert (b.reads, b.cancelled) == (3, 3)


def test_retry_policy_timeout_must_be_positive() -> None:
    for bad in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="timeout"):
            RetryPolicy(timeout=bad)  # type: ignore[arg-type]
    assert RetryPolicy().timeout is None
    assert os.strerror(errno.ESTALE)
