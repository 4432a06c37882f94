"""Teardown is never held hostage by a fault stuck in a backing that never answers.

``AddressSpace.aclose()`` interrupts the faults and copies waiting for a
Mappable under the mapping lock: it completes, the stuck tasks get a
``BusError`` wrapping ``ClosedError``, and once the Mappable is closed too
nothing is left in the memory file.
"""

from __future__ import annotations

import asyncio
import random

import anyio
import pytest

from aiomemmap import (
    AccessType,
    AddressSpace,
    BusError,
    CachedFile,
    ClosedError,
    MemoryFile,
    MMapOpts,
)
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.mm.io import faults_in_flight

P = PAGE_SIZE


class NeverAnswers:
    """Bytes whose reads never return once ``hang`` is set."""

    readonly = True

    def __init__(self, data: bytes) -> None:
        self.inner = BytesBacking(data, readonly=True)
        self.hang = False
        self.entered = asyncio.Event()

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        if self.hang:
            self.entered.set()
            await asyncio.Event().wait()
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("how", ["copy_in", "handle_fault", "copy_out_private"])
async def test_aclose_interrupts_a_fault_stuck_in_a_hung_backing(how: str) -> None:
    data = random.Random(1).randbytes(64 * P)
    backing = NeverAnswers(data)
    with MemoryFile("stuck-fault") as mf:
        cf = CachedFile(backing, mf)
        asp = AddressSpace(mf)
        a = await asp.mmap(
            MMapOpts(
                length=len(data),
                mappable=cf,
                mapping_identity=cf,
                private=True,
                perms=AccessType.READ_WRITE,
            )
        )
        with anyio.fail_after(30):
            assert await asp.copy_in(a, 8) == data[:8]  # The size is known.
            backing.hang = True
            if how == "copy_in":
                stuck = asyncio.ensure_future(asp.copy_in(a + 32 * P, 4 * P))
            elif how == "handle_fault":
                stuck = asyncio.ensure_future(
                    asp.handle_fault(a + 40 * P, AccessType.READ)
                )
            else:
                stuck = asyncio.ensure_future(asp.copy_out(a + 48 * P, b"x" * P))
            await backing.entered.wait()
            assert faults_in_flight(asp) == 1
            await asp.aclose()
            with pytest.raises(BusError) as info:
                await stuck
        assert isinstance(info.value.err, ClosedError)
        assert info.value.bytes_done == 0
        assert faults_in_flight(asp) == 0
        assert asp.closed
        asp.check_invariants()
        # The fetch still hangs; closing the file stops it.
        assert cf.statistics().fetches_in_flight >= 1
        with anyio.fail_after(30):
            await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_aclose_interrupts_every_stuck_copy_and_later_ones_fail_closed() -> None:
    data = random.Random(2).randbytes(64 * P)
    backing = NeverAnswers(data)
    with MemoryFile("stuck-copies") as mf:
        cf = CachedFile(backing, mf)
        asp = AddressSpace(mf)
        a = await asp.mmap(
            MMapOpts(length=len(data), mappable=cf, mapping_identity=cf, private=True)
        )
        with anyio.fail_after(30):
            await asp.copy_in(a, 1)
            backing.hang = True
            stuck = [
                asyncio.ensure_future(asp.copy_in(a + i * 8 * P, P))
                for i in range(1, 6)
            ]
            await backing.entered.wait()
            await asyncio.sleep(0)
            await asp.aclose()
            results = await asyncio.gather(*stuck, return_exceptions=True)
        for r in results:
            assert isinstance(r, BusError)
            assert isinstance(r.err, ClosedError)
        with pytest.raises(ClosedError):
            await asp.copy_in(a, 1)
        with anyio.fail_after(30):
            await cf.aclose()
        assert mf.statistics().used_bytes == 0


class Releasable(NeverAnswers):
    """A backing whose hung reads can be let go."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.released = asyncio.Event()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        if self.hang:
            self.entered.set()
            await self.released.wait()
        return await self.inner.read_into(offset, buf)


@pytest.mark.parametrize("writer", ["munmap", "mmap", "mprotect"])
async def test_a_mapping_change_is_not_held_hostage_by_a_stuck_fault(
    writer: str,
) -> None:
    data = random.Random(3).randbytes(64 * P)
    backing = Releasable(data)
    with MemoryFile("stuck-writer") as mf:
        cf = CachedFile(backing, mf)
        async with AddressSpace(mf) as asp:
            a = await asp.mmap(
                MMapOpts(
                    length=len(data),
                    mappable=cf,
                    mapping_identity=cf,
                    perms=AccessType.READ,
                    max_perms=AccessType.READ_EXECUTE,
                )
            )
            other = await asp.mmap(MMapOpts(length=4 * P))
            with anyio.fail_after(30):
                assert await asp.copy_in(a, 8) == data[:8]
                backing.hang = True
                stuck = asyncio.ensure_future(asp.copy_in(a + 32 * P, 4 * P))
                await backing.entered.wait()
                assert faults_in_flight(asp) == 1
                # The writer gets the mapping lock although the copy's
                # Mappable never answers; the copy lets go and waits.
                if writer == "munmap":
                    await asp.munmap(other, 4 * P)
                elif writer == "mmap":
                    await asp.mmap(MMapOpts(length=2 * P))
                else:
                    await asp.mprotect(other, P, AccessType.READ)
                assert not stuck.done()
                # Once the storage answers, the copy starts over and gets
                # the right bytes; the fetch it waited for was not repeated.
                backing.released.set()
                assert await stuck == data[32 * P : 36 * P]
            assert faults_in_flight(asp) == 0
            asp.check_invariants()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0
