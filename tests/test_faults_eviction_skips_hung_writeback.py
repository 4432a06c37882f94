"""Eviction never waits on another file's storage.

File A has dirty pages and a backing whose writes never return; file B's
fetches need room under the budget. B's reads complete: the budget skips A's
dirty pages and leaves their write-back to a task of A.
"""

from __future__ import annotations

import asyncio
import random

import anyio

from aiomemmap import CachedFile, MemoryFile
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.mappables.readahead import NoReadahead

KiB = 1024
MiB = 1024 * KiB
LIMIT = 1 * MiB
FETCH = 64 * KiB


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class HangingWrites:
    """Bytes whose writes wait until ``unblock`` is set (never, in the test)."""

    readonly = False

    def __init__(self, data: bytes) -> None:
        self.inner = BytesBacking(data)
        self.unblock = asyncio.Event()
        self.writes_started = 0

    @property
    def data(self) -> bytes:
        return self.inner.data

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        self.writes_started += 1
        await self.unblock.wait()
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reads_of_one_file_complete_while_anothers_write_back_hangs() -> None:
    with MemoryFile("hung-writeback", cache_limit=LIMIT) as mf:
        a_backing = HangingWrites(pattern(LIMIT, 1))
        a = CachedFile(
            a_backing, mf, writable=True, readahead=NoReadahead(), max_fetch_bytes=FETCH
        )
        b_data = pattern(4 * LIMIT, 2)
        b = CachedFile(
            BytesBacking(b_data), mf, readahead=NoReadahead(), max_fetch_bytes=FETCH
        )
        new = pattern(LIMIT, 3)
        with anyio.fail_after(60):
            await a.read(0, LIMIT)
            await a.write(0, new)  # Every page of A cached and dirty.
            assert a.statistics().dirty_bytes == LIMIT
            for off in range(0, len(b_data), FETCH):
                assert await b.read(off, FETCH) == b_data[off : off + FETCH]
        # A's write-back was started, hangs, and held nobody else up.
        assert a_backing.writes_started >= 1
        assert a.statistics().dirty_bytes == LIMIT
        assert b.statistics().bytes_fetched == len(b_data)
        # B's pages were evicted in turn: only A's dirty pages overshoot.
        assert b.statistics().resident_bytes <= LIMIT
        assert await a.read(0, LIMIT) == new
        # Once A's storage answers, its pages are written and nothing is lost.
        a_backing.unblock.set()
        with anyio.fail_after(60):
            await a.aclose()
            await b.aclose()
        assert a_backing.data == new
        assert mf.statistics().used_bytes == 0
        assert mf.evictor.pinned_bytes == 0


async def test_dirty_pages_the_budget_picks_are_written_back_then_evicted() -> None:
    with MemoryFile("background-writeback", cache_limit=LIMIT) as mf:
        a_backing = BytesBacking(pattern(LIMIT, 4))
        a = CachedFile(
            a_backing, mf, writable=True, readahead=NoReadahead(), max_fetch_bytes=FETCH
        )
        b_data = pattern(3 * LIMIT, 5)
        b = CachedFile(
            BytesBacking(b_data), mf, readahead=NoReadahead(), max_fetch_bytes=FETCH
        )
        new = pattern(FETCH, 6)
        with anyio.fail_after(60):
            await a.read(0, FETCH)
            await a.write(0, new)
            for off in range(0, len(b_data), FETCH):
                assert await b.read(off, FETCH) == b_data[off : off + FETCH]
        # Written back by A's own task, then evicted like any clean page.
        assert a_backing.data[:FETCH] == new
        assert a.statistics().dirty_bytes == 0
        assert a.statistics().resident_bytes == 0
        assert await a.read(0, FETCH) == new
        a.check_invariants()
        b.check_invariants()
        await a.aclose()
        await b.aclose()
        assert mf.statistics().used_bytes == 0
