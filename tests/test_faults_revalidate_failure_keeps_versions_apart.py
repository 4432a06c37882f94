"""A revalidation that learns a new version only in part never mixes versions.

``revalidate`` asks the backing for its version, then for its size. A
backing that answers the first with a new version may tie its reads to that
version from then on (an HTTP backing's ``If-Match``). If the second
question fails, the file still has the old version's size: a fetch must not
land the new version's bytes into the old version's extent (a read would
return them cut at the old end). The fetches fail as if they had found the
object changed, which learns the new version; then the file reads as the new
version in full.
"""

from __future__ import annotations

import asyncio
import errno
import random

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    BusError,
    CachedFile,
    MemoryFile,
    MMapOpts,
    NoReadahead,
    StaleVersionError,
)

P = PAGE_SIZE


class TiedObject:
    """An object whose reads are tied to the version its ``version()`` told.

    ``replace`` makes a new version current; a read tied to an older one
    raises ``StaleVersionError``. While ``size_fails``, ``size()`` raises a
    connection error.
    """

    readonly = True

    def __init__(self, data: bytes) -> None:
        self.versions = [data]
        self.tied = 0
        self.size_fails = False

    @property
    def current(self) -> int:
        return len(self.versions) - 1

    def replace(self, data: bytes) -> None:
        self.versions.append(data)

    async def size(self) -> int:
        await asyncio.sleep(0)
        if self.size_fails:
            raise ConnectionError(errno.ECONNRESET, "size(): connection reset")
        return len(self.versions[-1])

    async def version(self) -> str | None:
        await asyncio.sleep(0)
        self.tied = self.current
        return f"v{self.tied}"

    async def read_into(self, offset: int, buf: memoryview) -> int:
        await asyncio.sleep(0)
        if self.tied != self.current:
            raise StaleVersionError(
                "the object changed",
                expected=f"v{self.tied}",
                found=f"v{self.current}",
            )
        chunk = self.versions[-1][offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EROFS, "read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EROFS, "read-only")

    async def aclose(self) -> None:
        return None


async def _revalidate_half_way(cf: CachedFile, obj: TiedObject) -> None:
    """Replace the object; revalidate, failing after the new version is told."""
    obj.size_fails = True
    with pytest.raises(ConnectionError):
        await cf.revalidate()
    obj.size_fails = False
    assert obj.tied == obj.current  # The backing is tied to the new version.


async def test_a_read_after_a_failed_revalidation_gets_one_version_whole() -> None:
    rng = random.Random(11)
    v0, v1 = rng.randbytes(10 * P + 100), rng.randbytes(16 * P + 7)
    obj = TiedObject(v0)
    with MemoryFile("revalidate-half-way") as mf:
        cf = CachedFile(obj, mf, readahead=NoReadahead())
        with anyio.fail_after(30):
            assert await cf.read(0, P) == v0[:P]
            obj.replace(v1)
            await _revalidate_half_way(cf, obj)
            # The first read of pages not cached finds out that the file is
            # another version now, and fails clearly...
            with pytest.raises(BusError) as info:
                await cf.read(4 * P, 32 * P)
            assert isinstance(info.value.err, StaleVersionError)
            # ...then the file is the new version, extent and bytes.
            assert await cf.read(4 * P, 32 * P) == v1[4 * P :]
            assert await cf.read(0, 32 * P) == v1
            assert cf.size == len(v1)
            assert await cf.revalidate() is False
        cf.check_invariants()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_a_space_after_a_failed_revalidation_sees_one_version() -> None:
    rng = random.Random(12)
    v0, v1 = rng.randbytes(10 * P + 100), rng.randbytes(16 * P + 7)
    obj = TiedObject(v0)
    with MemoryFile("revalidate-half-way-mapped") as mf:
        cf = CachedFile(obj, mf, readahead=NoReadahead())
        asp = AddressSpace(mf)
        a = await asp.mmap(
            MMapOpts(
                length=16 * P,
                mappable=cf,
                mapping_identity=cf,
                perms=AccessType.READ,
                max_perms=AccessType.READ_EXECUTE,
            )
        )
        with anyio.fail_after(30):
            assert await asp.copy_in(a, P) == v0[:P]
            obj.replace(v1)
            await _revalidate_half_way(cf, obj)
            outcome = await asyncio.gather(
                asp.copy_in(a + 8 * P, 3 * P), return_exceptions=True
            )
            got = outcome[0]
            if isinstance(got, BusError):
                assert isinstance(got.err, StaleVersionError)
            else:
                # Retried by the space after the invalidation: all new.
                assert got == v1[8 * P : 11 * P]
            assert await asp.copy_in(a, 16 * P) == v1[: 16 * P]
        await asp.aclose()
        cf.check_invariants()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0
