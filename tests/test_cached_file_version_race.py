"""A read that waits while the file becomes a new version reads that version whole.

Regression: a read computed how far to read from the size before it waited for
its pages; when a revalidation learnt a new version of another size meanwhile,
it returned the new version's bytes cut at the old version's end.
"""

from __future__ import annotations

import asyncio
import errno
import random

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    BusError,
    CachedFile,
    MemoryFile,
    NoReadahead,
    StaleVersionError,
)

P = PAGE_SIZE
DEADLINE = 30


class GatedVersions:
    """Bytes in memory, replaced at will; reads wait while the gate is shut."""

    readonly = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.generation = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    def replace(self, data: bytes) -> None:
        self.data = data
        self.generation += 1

    async def size(self) -> int:
        return len(self.data)

    async def version(self) -> str | None:
        return f"v{self.generation}"

    async def read_into(self, offset: int, buf: memoryview) -> int:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def aclose(self) -> None:
        return None


async def test_a_read_across_a_growing_new_version_returns_it_whole() -> None:
    rng = random.Random(5)
    old = rng.randbytes(6 * P + 100)
    new = rng.randbytes(9 * P + 7)
    got = await _read_across_a_revalidation(old, new)
    # The new version's bytes, as far as the new version goes.
    assert got == new[2 * P : 22 * P]


async def test_a_read_across_a_shrinking_new_version_is_a_clear_error() -> None:
    rng = random.Random(6)
    old = rng.randbytes(6 * P + 100)
    new = rng.randbytes(4 * P + 3)
    # The fetch in flight read the new, shorter object where the old one
    # had bytes: its waiters get ESTALE, never a mix of the two.
    with pytest.raises(BusError) as info:
        await _read_across_a_revalidation(old, new)
    assert isinstance(info.value.err, StaleVersionError)
    assert info.value.errno == errno.ESTALE


async def _read_across_a_revalidation(old: bytes, new: bytes) -> bytes:
    """Read from page 2 while the file becomes ``new``; return what came."""
    backing = GatedVersions(old)
    with MemoryFile() as mf:
        try:
            async with CachedFile(backing, mf, readahead=NoReadahead()) as cf:
                with anyio.fail_after(DEADLINE):
                    assert await cf.read(0, 10) == old[:10]
                    backing.gate.clear()
                    reader = asyncio.create_task(cf.read(2 * P, 20 * P))
                    await backing.waiting.wait()
                    backing.replace(new)
                    assert await cf.revalidate()
                    backing.gate.set()
                    return await reader
        finally:
            assert mf.statistics().used_bytes == 0
