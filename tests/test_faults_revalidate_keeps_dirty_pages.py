"""Revalidation never drops dirty pages; a write that reached the backing stands.

A write straight to the backing is followed by the question of the backing's
version (so that revalidation does not take the file's own change for
somebody else's). When that question fails, the write still happened: it
returns, and the next revalidation takes the version it finds for that
change. When the backing did change behind the file's back, the dirty pages
are written back before the cache is dropped, as a page cache does.
"""

from __future__ import annotations

import anyio
import pytest

from aiomemmap import BusError, CachedFile, MemoryFile, StaleVersionError
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.backings.testing import FaultInjectingBacking
from aiomemmap.mappables.readahead import NoReadahead

P = PAGE_SIZE


async def test_write_stands_when_the_version_question_fails() -> None:
    with MemoryFile("version-question-fails") as mf:
        inner = BytesBacking(bytes(8 * P))
        fib = FaultInjectingBacking(inner, ops={"version"}, latency=0.0, seed=1)
        cf = CachedFile(fib, mf, writable=True, readahead=NoReadahead())
        with anyio.fail_after(30):
            await cf.read(0, P)
            await cf.write(0, b"DIRTY")
            fib.error_rate = 1.0
            # Straight to the backing (page 5 is not cached): it reached it.
            assert await cf.write(5 * P, b"through") == 7
            assert inner.data[5 * P : 5 * P + 7] == b"through"
            fib.error_rate = 0.0
            # The version found is taken for the file's own change.
            assert await cf.revalidate() is False
            assert await cf.read(0, 5) == b"DIRTY"
            await cf.aclose()
        assert inner.data[:5] == b"DIRTY"
        assert inner.data[5 * P : 5 * P + 7] == b"through"


async def test_revalidate_writes_dirty_pages_back_before_dropping() -> None:
    with MemoryFile("revalidate-keeps-dirty") as mf:
        inner = BytesBacking(bytes(8 * P))
        cf = CachedFile(inner, mf, writable=True, readahead=NoReadahead())
        with anyio.fail_after(30):
            await cf.read(0, 2 * P)
            await cf.write(0, b"DIRTY")
            # Somebody else changes another page of the object.
            await inner.write_from(P, memoryview(b"OTHER"))
            assert await cf.revalidate() is True
            assert inner.data[:5] == b"DIRTY"
            assert await cf.read(0, 5) == b"DIRTY"
            assert await cf.read(P, 5) == b"OTHER"
            # The write-back was the file's own change: nothing changed since.
            assert await cf.revalidate() is False
            await cf.aclose()
        assert inner.data[:5] == b"DIRTY"


async def test_revalidate_that_cannot_write_back_drops_nothing() -> None:
    with MemoryFile("revalidate-write-back-fails") as mf:
        inner = BytesBacking(bytes(8 * P))
        fib = FaultInjectingBacking(inner, ops={"write_from"}, latency=0.0, seed=1)
        cf = CachedFile(fib, mf, writable=True, readahead=NoReadahead())
        with anyio.fail_after(30):
            await cf.read(0, P)
            await cf.write(0, b"DIRTY")
            await inner.write_from(P, memoryview(b"OTHER"))
            fib.error_rate = 1.0
            try:
                await cf.revalidate()
            except OSError:
                pass
            else:
                raise AssertionError("revalidate wrote back through a failing backing")
            assert await cf.read(0, 5) == b"DIRTY"
            fib.error_rate = 0.0
            assert await cf.revalidate() is True
            await cf.aclose()
        assert inner.data[:5] == b"DIRTY"
        assert inner.data[P : P + 5] == b"OTHER"


async def test_fetch_finding_the_object_changed_keeps_dirty_pages() -> None:
    with MemoryFile("stale-fetch-keeps-dirty") as mf:
        inner = BytesBacking(bytes(8 * P))
        cf = CachedFile(inner, mf, writable=True, readahead=NoReadahead())
        with anyio.fail_after(30):
            await cf.read(0, P)
            await cf.write(0, b"DIRTY")
            # Somebody else shrinks the object: the fetch of page 5 comes up
            # short of what the backing held, so the object changed.
            await inner.truncate(2 * P)
            with pytest.raises(BusError) as caught:
                await cf.read(5 * P, P)
            assert isinstance(caught.value.err, StaleVersionError)
            assert await cf.read(0, 5) == b"DIRTY"
            await cf.aclose()
        assert inner.data[:5] == b"DIRTY"
