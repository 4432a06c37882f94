"""BusError is an OSError whose errno and builtin class come from its cause.

The first half checks the error itself (errno by cause, the builtin
subclasses, the SPEC contract of ``err``, ``str``, ``bytes_done`` and
``data``, pickling and copying). The second half reads a missing object
(404) and a forbidden one (403) from a real HTTP server on 127.0.0.1 through
each public way in: ``CachedFile.read``, the fault path of an
``AddressSpace``, ``aiomemmap.open``, ``open_async`` and the ``aiomemmap::``
fsspec filesystem. Each is caught as the builtin error, after exactly one
request: an error that is not transient is never retried.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import fsspec
import pytest

import aiomemmap
from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AiomemmapError,
    BusError,
    CachedFile,
    Engine,
    FaultInjectingBacking,
    HttpBacking,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    StaleVersionError,
    open_backing,
)
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 60

# ------------------------------------------------------------ the error itself


@pytest.mark.parametrize(
    ("cause", "code", "builtin"),
    [
        (
            FileNotFoundError(errno.ENOENT, "HTTP 404", "u"),
            errno.ENOENT,
            FileNotFoundError,
        ),
        (FileNotFoundError("u"), errno.ENOENT, FileNotFoundError),
        (PermissionError(errno.EACCES, "HTTP 403"), errno.EACCES, PermissionError),
        (PermissionError(errno.EPERM, "not permitted"), errno.EPERM, PermissionError),
        (PermissionError("no errno"), errno.EACCES, PermissionError),
        (TimeoutError(), errno.ETIMEDOUT, None),
        (TimeoutError(errno.ETIMEDOUT, "slow"), errno.ETIMEDOUT, None),
        (StaleVersionError("moved", expected="a", found="b"), errno.ESTALE, None),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            errno.ECONNREFUSED,
            None,
        ),
        (ConnectionResetError(errno.ECONNRESET, "reset"), errno.ECONNRESET, None),
        (IsADirectoryError(errno.EISDIR, "a directory"), errno.EISDIR, None),
        (OSError("no errno"), errno.EIO, None),
        (EOFError("past the end"), errno.EIO, None),
        (ValueError("anything else"), errno.EIO, None),
    ],
)
def test_errno_and_builtin_class_come_from_the_cause(
    cause: BaseException, code: int, builtin: type[OSError] | None
) -> None:
    err = BusError(cause)
    assert isinstance(err, BusError)
    assert isinstance(err, OSError)
    assert isinstance(err, AiomemmapError)
    assert err.errno == code
    assert err.err is cause
    assert str(err) == f"BusError: {cause}"
    assert (err.bytes_done, err.data) == (0, b"")
    for other in (FileNotFoundError, PermissionError):
        assert isinstance(err, other) == (other is builtin)
    if builtin is None:
        assert type(err) is BusError
    assert not isinstance(err, MemoryFault)


def test_except_clauses_written_for_files_catch_it() -> None:
    with pytest.raises(FileNotFoundError) as missing:
        raise BusError(FileNotFoundError(errno.ENOENT, "gone"))
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(PermissionError):
        raise BusError(PermissionError(errno.EACCES, "forbidden"))
    with pytest.raises(OSError, match="reset") as other:
        raise BusError(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert other.value.errno == errno.ECONNRESET


def test_strerror_and_filename_are_the_causes() -> None:
    err = BusError(FileNotFoundError(errno.ENOENT, "HTTP 404 for 'x'", "http://h/x"))
    assert err.strerror == "HTTP 404 for 'x'"
    assert err.filename == "http://h/x"
    assert BusError(EOFError("past the end")).strerror == "past the end"
    assert BusError(ValueError()).strerror == "Input/output error"


def test_one_class_per_builtin_counterpart() -> None:
    a = BusError(FileNotFoundError())
    b = BusError(FileNotFoundError(errno.ENOENT, "again"))
    assert type(a) is type(b)
    assert type(a) is not type(BusError(PermissionError()))
    assert issubclass(type(a), BusError)
    assert type(a).__name__ == "BusError"
    assert repr(a) == "BusError(FileNotFoundError())"
    # A BusError caused by a BusError is what its cause is.
    nested = BusError(a)
    assert isinstance(nested, FileNotFoundError)
    assert nested.errno == errno.ENOENT


@pytest.mark.parametrize(
    "cause",
    [
        FileNotFoundError(errno.ENOENT, "gone", "u"),
        PermissionError(errno.EPERM, "no"),
        StaleVersionError("moved", expected="etag:a", found=None),
        EOFError("past the end"),
    ],
)
def test_pickle_and_copy_keep_class_cause_and_progress(cause: BaseException) -> None:
    err = BusError(cause)
    err.bytes_done = 3 * PAGE_SIZE
    err.data = b"abc"
    for clone in (
        pickle.loads(pickle.dumps(err)),
        copy.copy(err),
        copy.deepcopy(err),
    ):
        assert type(clone) is type(err)
        assert clone.errno == err.errno
        assert type(clone.err) is type(cause)
        assert str(clone) == str(err)
        assert (clone.bytes_done, clone.data) == (3 * PAGE_SIZE, b"abc")


def test_stale_version_error_pickles() -> None:
    err = StaleVersionError("moved", expected="etag:a", found="etag:b")
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.errno, clone.expected, clone.found) == (
        errno.ESTALE,
        "etag:a",
        "etag:b",
    )
    assert str(clone) == str(err)


def test_bad_cause_is_refused() -> None:
    with pytest.raises(TypeError, match="err must be an exception"):
        BusError("not an exception")  # type: ignore[arg-type]


# ------------------------------------------------- a real server: 404 and 403


@pytest.fixture
async def server() -> AsyncIterator[RangeHTTPServer]:
    async with RangeHTTPServer() as srv:
        srv.add("present", bytes(range(256)) * 64)
        yield srv


async def test_cached_file_read_of_a_missing_object(server: RangeHTTPServer) -> None:
    with MemoryFile("missing-404") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("missing")))
        async with CachedFile(backing, mf) as cf:
            with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError) as info:
                await cf.read(0, 100)
        await backing.aclose()
    err = info.value
    assert isinstance(err, BusError)
    assert err.errno == errno.ENOENT
    assert isinstance(err.err, FileNotFoundError)
    assert server.requests == 1
    assert backing.calls == 1


async def test_cached_file_read_of_a_forbidden_object(server: RangeHTTPServer) -> None:
    server.fail_next(1, 403)
    with MemoryFile("forbidden-403") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("present")))
        async with CachedFile(backing, mf) as cf:
            with anyio.fail_after(DEADLINE), pytest.raises(PermissionError) as info:
                await cf.read(0, 100)
            assert server.requests == 1
            # Nothing was cached: the next read asks again, and succeeds.
            assert await cf.read(0, 4) == bytes(range(4))
        await backing.aclose()
    assert isinstance(info.value, BusError)
    assert info.value.errno == errno.EACCES


async def test_fault_path_of_an_address_space(server: RangeHTTPServer) -> None:
    with MemoryFile("missing-fault") as mf:
        backing = open_backing(server.url("missing"))
        try:
            async with CachedFile(backing, mf) as cf, AddressSpace(mf) as space:
                addr = await space.mmap(
                    MMapOpts(
                        length=PAGE_SIZE,
                        mappable=cf,
                        mapping_identity=cf,
                        private=True,
                    )
                )
                with anyio.fail_after(DEADLINE):
                    with pytest.raises(FileNotFoundError) as fault:
                        await space.handle_fault(addr, AccessType.READ)
                    with pytest.raises(FileNotFoundError) as copy_in:
                        await space.copy_in(addr, 16)
        finally:
            await backing.aclose()
    for err in (fault.value, copy_in.value):
        assert isinstance(err, BusError)
        assert not isinstance(err, MemoryFault)
        assert err.errno == errno.ENOENT
    assert copy_in.value.bytes_done == 0
    assert copy_in.value.data == b""
    # One request, then one more for the second access (nothing cached).
    assert server.requests == 2


async def test_address_space_keeps_memory_fault_apart(server: RangeHTTPServer) -> None:
    with MemoryFile("unmapped-fault") as mf:
        async with AddressSpace(mf) as space:
            with pytest.raises(MemoryFault) as info:
                await space.copy_in(0x10000, 16)
    assert not isinstance(info.value, BusError)
    assert info.value.errno == errno.EFAULT


async def test_engine_open_file_of_a_missing_object(server: RangeHTTPServer) -> None:
    async with Engine() as engine:
        with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
            await engine.open_file(server.url("missing"))
        assert engine.statistics().open_files == 0
    assert server.requests == 1


async def test_open_async_of_a_missing_object(server: RangeHTTPServer) -> None:
    with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
        await aiomemmap.open_async(server.url("missing"))
    assert server.requests == 1


async def test_sync_open_of_missing_and_forbidden_objects(
    server: RangeHTTPServer,
) -> None:
    engine = Engine.start_thread()
    try:
        with anyio.fail_after(DEADLINE):
            with pytest.raises(FileNotFoundError):
                await asyncio.to_thread(
                    aiomemmap.open, server.url("missing"), engine=engine
                )
            assert server.requests == 1
            server.fail_next(1, 403)
            with pytest.raises(PermissionError):
                await asyncio.to_thread(
                    aiomemmap.open, server.url("present"), engine=engine
                )
            assert server.requests == 2
    finally:
        await asyncio.to_thread(engine.close)


async def test_fsspec_filesystem_of_a_missing_object(server: RangeHTTPServer) -> None:
    url = "aiomemmap::" + server.url("missing")

    def read() -> bytes:
        with fsspec.open(url, "rb") as f:
            data: bytes = f.read()
            return data

    with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
        await asyncio.to_thread(read)
    assert server.requests == 1


async def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_backing(str(tmp_path / "missing.bin"))
    path = tmp_path / "vanishing.bin"
    path.write_bytes(b"x" * PAGE_SIZE)
    with MemoryFile("missing-local") as mf:
        backing = open_backing(str(path))
        async with CachedFile(backing, mf) as cf:
            assert await cf.read(0, 1) == b"x"
        await backing.aclose()
