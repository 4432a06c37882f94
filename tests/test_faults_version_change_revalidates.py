"""A fetch that finds the object changed never mixes versions nor returns zeros.

When a backing answers a read with ``StaleVersionError`` (the object is not
the version the file was opened at), or a read comes up short of the size the
file had, the cached file drops its cache and learns the new version: the
read whose fetch found out fails with a ``BusError`` wrapping the
``StaleVersionError`` (an ``OSError``, ``ESTALE``), and from then on the file
is consistently the new version.
"""

from __future__ import annotations

import asyncio
import errno
import random

import anyio
import pytest

from aiomemmap import (
    AccessType,
    AddressSpace,
    BusError,
    CachedFile,
    MemoryFile,
    MMapOpts,
    StaleVersionError,
)
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.mappables.readahead import NoReadahead

P = PAGE_SIZE


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class VersionedObject:
    """An object store entry whose reads are tied to the version last asked for.

    ``replace`` swaps the contents for a new version; a read made while
    tied to an older one raises ``StaleVersionError``, as a ranged GET with
    ``If-Match`` gets ``412``.
    """

    readonly = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.current = 1
        self.tied = 1
        self.stale_reads = 0

    def replace(self, data: bytes) -> None:
        self.data = data
        self.current += 1

    async def size(self) -> int:
        await asyncio.sleep(0)
        return len(self.data)

    async def version(self) -> str | None:
        await asyncio.sleep(0)
        self.tied = self.current
        return f"v{self.current}"

    async def read_into(self, offset: int, buf: memoryview) -> int:
        await asyncio.sleep(0)
        if self.tied != self.current:
            self.stale_reads += 1
            raise StaleVersionError(
                "the object changed", expected=f"v{self.tied}", found=f"v{self.current}"
            )
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EROFS, "read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EROFS, "read-only")

    async def aclose(self) -> None:
        return None


async def test_a_replaced_object_is_never_read_as_a_mix_of_versions() -> None:
    v1, v2 = pattern(256 * P, 1), pattern(256 * P, 2)
    obj = VersionedObject(v1)
    with MemoryFile("versions") as mf:
        f = CachedFile(obj, mf, readahead=NoReadahead())
        with anyio.fail_after(30):
            assert await f.read(0, P) == v1[:P]
            obj.replace(v2)
            with pytest.raises(BusError) as info:
                await f.read(100 * P, P)
            err = info.value.err
            assert isinstance(err, StaleVersionError)
            assert isinstance(err, OSError)
            assert err.errno == errno.ESTALE
            # From now on the file is the new version, page 0 included.
            assert await f.read(100 * P, P) == v2[100 * P : 101 * P]
            assert await f.read(0, P) == v2[:P]
        f.check_invariants()
        await f.aclose()
        assert mf.statistics().used_bytes == 0


async def test_reads_in_flight_at_a_version_change_get_one_version_or_fail() -> None:
    v1, v2 = pattern(64 * P, 3), pattern(64 * P, 4)
    obj = VersionedObject(v1)
    with MemoryFile("versions-in-flight") as mf:
        f = CachedFile(obj, mf, readahead=NoReadahead(), max_fetch_bytes=P)
        with anyio.fail_after(30):
            assert await f.read(0, P) == v1[:P]
            obj.replace(v2)
            reads = [asyncio.ensure_future(f.read(0, 64 * P)) for _ in range(8)]
            results = await asyncio.gather(*reads, return_exceptions=True)
        new_version = 0
        for r in results:
            if isinstance(r, BusError):
                assert isinstance(r.err, StaleVersionError)
            else:
                assert r == v2  # Never v1's page 0 next to v2's others.
                new_version += 1
        assert obj.stale_reads >= 1
        with anyio.fail_after(30):
            assert await f.read(0, 64 * P) == v2
        f.check_invariants()
        await f.aclose()
        assert mf.statistics().used_bytes == 0


async def test_an_object_that_shrank_is_never_read_as_zeros() -> None:
    data = pattern(256 * P, 5)
    inner = BytesBacking(data)
    with MemoryFile("shrunk") as mf:
        f = CachedFile(inner, mf, readahead=NoReadahead())
        with anyio.fail_after(30):
            assert await f.read(0, P) == data[:P]
            await inner.truncate(P)  # Behind the file's back.
            with pytest.raises(BusError) as info:
                await f.read(200 * P, P)
            assert isinstance(info.value.err, StaleVersionError)
            # The file now has the new size: nothing past it, no zeros.
            assert await f.read(200 * P, P) == b""
            assert f.size == P
            assert await f.read(0, 2 * P) == data[:P]
        f.check_invariants()
        await f.aclose()
        assert mf.statistics().used_bytes == 0


async def test_a_version_change_seen_by_a_fetch_invalidates_the_mappings() -> None:
    v1, v2 = pattern(16 * P, 6), pattern(16 * P, 7)
    obj = VersionedObject(v1)
    with MemoryFile("versions-mapped") as mf:
        f = CachedFile(obj, mf, readahead=NoReadahead())
        asp = AddressSpace(mf)
        a = await asp.mmap(
            MMapOpts(
                length=16 * P,
                mappable=f,
                mapping_identity=f,
                perms=AccessType.READ,
                max_perms=AccessType.READ_EXECUTE,
            )
        )
        with anyio.fail_after(30):
            assert await asp.copy_in(a, P) == v1[:P]
            obj.replace(v2)
            # The access that finds out either fails clearly or, retried by
            # the space after the invalidation, reads the new version.
            outcome = await asyncio.gather(
                asp.copy_in(a + 8 * P, P), return_exceptions=True
            )
            got = outcome[0]
            if isinstance(got, BusError):
                assert isinstance(got.err, StaleVersionError)
            else:
                assert got == v2[8 * P : 9 * P]
            assert obj.stale_reads >= 1
            # The space no longer sees the old page 0.
            assert await asp.copy_in(a, P) == v2[:P]
            assert await asp.copy_in(a + 8 * P, P) == v2[8 * P : 9 * P]
        await asp.aclose()
        await f.aclose()
        assert mf.statistics().used_bytes == 0
