"""A cancelled CachedFile.write changed all of the file or nothing of it.

The write of the issue: ``write(P - 4, b"NEWDATA!")`` where page 0 is cached
and page 1 is mapped but not cached, so the write waits for page 1 to be
fetched. It is cancelled after k loop steps for every k until it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import anyio
import pytest

from aiomemmap import AddrRange, CachedFile, InvalidateOpts, MemoryFile
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.backings.testing import FaultInjectingBacking
from aiomemmap.mappables.readahead import NoReadahead

P = PAGE_SIZE
NEW = b"NEWDATA!"


class NullSpace:
    """A mapping space that only counts invalidations."""

    def __init__(self) -> None:
        self.invalidations = 0

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.invalidations += 1


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("limit", [None, 64 * P])
async def test_cancelled_write_changed_all_or_nothing(limit: int | None) -> None:
    data = pattern(4 * P)
    completed_at = None
    with MemoryFile("write-all-or-nothing", cache_limit=limit) as mf:
        for k in range(200):
            inner = BytesBacking(data)
            backing = FaultInjectingBacking(inner, latency=0.0, seed=k)
            f = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
            ms = NullSpace()
            await f.add_mapping(ms, AddrRange(0x10000, 0x10000 + 4 * P), 0, True)
            with anyio.fail_after(30):
                await f.read(0, 1)  # Page 0 cached, page 1 not.
                task = asyncio.ensure_future(f.write(P - 4, NEW))
                for _ in range(k):
                    if task.done():
                        break
                    await asyncio.sleep(0)
                finished = task.done()
                if not finished:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                got = await f.read(P - 4, len(NEW))
            stats = f.statistics()
            if finished:
                assert task.result() == len(NEW)
            if got == NEW:
                assert stats.dirty_bytes == 2 * P
            else:
                # Nothing changed: not a byte, not a dirty page.
                assert got == data[P - 4 : P + 4]
                assert stats.dirty_bytes == 0
            f.check_invariants()
            await f.remove_mapping(ms, AddrRange(0x10000, 0x10000 + 4 * P), 0, True)
            await f.aclose()
            if got == NEW:
                assert inner.data[P - 4 : P + 4] == NEW
            else:
                assert inner.data == data
            assert mf.statistics().used_bytes == 0
            if finished:
                completed_at = k
                break
    assert completed_at is not None


async def test_cancelled_write_through_completes_before_the_cancellation() -> None:
    data = pattern(4 * P, 2)
    with MemoryFile("write-through-all-or-nothing") as mf:
        for k in range(200):
            inner = BytesBacking(data)
            backing = FaultInjectingBacking(inner, latency=0.0, seed=k)
            f = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
            with anyio.fail_after(30):
                await f.read(0, 1)  # Page 0 cached; the rest goes to the backing.
                task = asyncio.ensure_future(f.write(P - 4, NEW * P))
                for _ in range(k):
                    if task.done():
                        break
                    await asyncio.sleep(0)
                finished = task.done()
                if not finished:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                got = await f.read(P - 4, len(NEW) * P)
            assert got in (NEW * P, data[P - 4 :])
            await f.aclose()
            assert inner.data[P - 4 :] in (NEW * P, data[P - 4 :])
            assert mf.statistics().used_bytes == 0
            if finished:
                break
        else:
            raise AssertionError("the write never completed")
