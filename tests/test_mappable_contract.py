"""Run the Mappable contract suite against every Mappable of the package.

To add a Mappable, write a factory like :func:`make_shared_memory` and add one
line to :data:`FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import fsspec
import pytest

from aiomemmap import (
    Backing,
    BytesBacking,
    CachedFile,
    FsspecBacking,
    LocalFileBacking,
    MemoryFile,
    SharedMemory,
    open_backing,
)
from aiomemmap.tools.http_server import RangeHTTPServer
from tests.mappable_contract import (
    CONTRACT_CHECKS,
    READ_ONLY_CHECKS,
    Cleanup,
    Factory,
)


async def make_shared_memory(
    size: int, contents: bytes
) -> tuple[SharedMemory, MemoryFile, Cleanup]:
    mf = MemoryFile("contract", chunk_size=2 * 1024 * 1024)
    sm = SharedMemory(mf, 0)
    assert await sm.write(0, contents) == len(contents)
    await sm.truncate(size)
    return sm, mf, sm.aclose


def cached_file_factory(
    make_backing: Callable[[bytes], Backing],
) -> Factory:
    """A factory of CachedFiles over the backings ``make_backing`` builds."""

    async def make(
        size: int, contents: bytes
    ) -> tuple[CachedFile, MemoryFile, Cleanup]:
        mf = MemoryFile("contract", chunk_size=2 * 1024 * 1024)
        backing = make_backing(contents)
        cf = CachedFile(backing, mf, writable=True)
        await cf.truncate(size)

        async def cleanup() -> None:
            await cf.aclose()
            await backing.aclose()

        return cf, mf, cleanup

    return make


def _local_file(contents: bytes) -> Backing:
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="aiomemmap-contract-")
    os.write(fd, contents)
    os.close(fd)
    backing = LocalFileBacking(path, writable=True)
    os.unlink(path)  # the backing keeps its descriptor
    return backing


def _memory_fs(contents: bytes) -> Backing:
    import uuid

    fs = fsspec.filesystem("memory")
    path = f"/contract/{uuid.uuid4().hex}"
    fs.pipe_file(path, contents)
    return FsspecBacking(fs, path)


async def make_cached_file_over_http(
    size: int, contents: bytes
) -> tuple[CachedFile, MemoryFile, Cleanup]:
    """A read-only CachedFile over an object served by a loopback HTTP server."""
    server = RangeHTTPServer()
    await server.start()
    server.add("contract.bin", contents[:size])
    mf = MemoryFile("contract", chunk_size=2 * 1024 * 1024)
    backing = open_backing(server.url("contract.bin"))
    cf = CachedFile(backing, mf)

    async def cleanup() -> None:
        try:
            await cf.aclose()
            await backing.aclose()
        finally:
            await server.stop()

    return cf, mf, cleanup


make_cached_file_over_http.read_only = True  # type: ignore[attr-defined]


FACTORIES: dict[str, Factory] = {
    "shared_memory": make_shared_memory,
    "cached_file_bytes": cached_file_factory(BytesBacking),
    "cached_file_local": cached_file_factory(_local_file),
    "cached_file_fsspec_memory": cached_file_factory(_memory_fs),
    "cached_file_http": make_cached_file_over_http,
}

CASES = [
    pytest.param(name, check, id=f"{name}-{check.__name__[6:]}")
    for name, factory in FACTORIES.items()
    for check in (
        READ_ONLY_CHECKS if getattr(factory, "read_only", False) else CONTRACT_CHECKS
    )
]


@pytest.mark.parametrize(("name", "check"), CASES)
async def test_mappable_contract(
    name: str, check: Callable[[Factory], Awaitable[None]]
) -> None:
    await check(FACTORIES[name])
