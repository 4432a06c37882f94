"""The write-back started by eviction holds the file's lock one range at a time.

The budget picks dirty ranges again and again while their write-back waits
for a slow backing; the file's own operations waiting for its lock (a
truncation here; writes, unmaps) must get it after at most the range being
written, not after everything queued, and a range picked many times is
written once.
"""

from __future__ import annotations

import asyncio

import anyio

from aiomemmap import CachedFile, MappableRange, MemoryFile
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.mappables.readahead import NoReadahead

P = PAGE_SIZE
DIRTY_RANGES = 8


class GatedWrites:
    """Forward to a backing; each ``write_from`` first waits for a permit."""

    readonly = False

    def __init__(self, inner: BytesBacking) -> None:
        self.inner = inner
        self.permits = asyncio.Semaphore(0)
        self.writes = 0

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        await self.permits.acquire()
        self.writes += 1
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_waiting_operation_gets_the_lock_after_one_range() -> None:
    inner = BytesBacking(bytes(2 * DIRTY_RANGES * P))
    backing = GatedWrites(inner)
    with MemoryFile("write-back-yields", cache_limit=256 * P) as mf:
        cf = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
        with anyio.fail_after(30):
            await cf.read(0, 2 * DIRTY_RANGES * P)
            for k in range(DIRTY_RANGES):
                await cf.write(2 * k * P, b"dirty%d" % k)
            # The budget picks every dirty range many times over.
            for _ in range(50):
                for k in range(DIRTY_RANGES):
                    await cf.evict(MappableRange(2 * k * P, 2 * k * P + P))
            await settle()  # The write-back holds the lock, waiting to write.
            truncating = asyncio.ensure_future(cf.truncate(2 * DIRTY_RANGES * P))
            await settle()
            assert not truncating.done()
            while not truncating.done():
                backing.permits.release()
                await settle()
            await truncating
            # One range was written while the truncation waited.
            assert backing.writes == 1
            for _ in range(4 * DIRTY_RANGES):
                backing.permits.release()
            await cf.sync()
            # Each range once, however often it was picked.
            assert backing.writes == DIRTY_RANGES
            for k in range(DIRTY_RANGES):
                assert inner.data[2 * k * P : 2 * k * P + 6] == b"dirty%d" % k
            await cf.aclose()
