"""Coherence: what the engine's cache drops, every client's region refaults.

The regions here are read with checked reads from a worker thread (they
release the GIL), while the Pager serves them on the test's loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import anyio
import pytest

from aiomemmap import BusError, Engine, Pager, map_file
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 60.0
MiB = 1 << 20


def content(n: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "little")).digest()
    return (block * (n // len(block) + 1))[:n]


async def test_a_changed_object_is_seen_at_the_next_touch() -> None:
    old = content(2 * MiB, seed=1)
    new = content(2 * MiB, seed=2)
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("obj", old)
            url = server.url("obj")
            async with Engine() as engine, Pager(engine) as pager:
                cached = await engine.open_file(url)
                region = await asyncio.to_thread(map_file, url, engine=pager.address)
                try:
                    view = memoryview(region)
                    assert await asyncio.to_thread(region.read, 0, len(old)) == old
                    server.replace("obj", new)
                    assert await cached.revalidate()
                    # Revoked and punched out: the next touch faults and gets
                    # the new bytes (the buffer, read after the checked read
                    # refaulted the pages, shows them too; a raw touch of a
                    # missing page would hold the GIL that this loop needs).
                    assert await asyncio.to_thread(region.read, 0, len(new)) == new
                    assert (
                        await asyncio.to_thread(bytes, view[MiB : MiB + 100])
                        == (new[MiB : MiB + 100])
                    )
                    view.release()
                    stats = pager.statistics()
                    assert stats.invalidations >= 1
                    assert stats.bytes_installed >= 2 * len(old)
                finally:
                    region.close()
                    await engine.close_file(cached)


async def test_evicted_pages_leave_every_region_and_refault() -> None:
    data = content(8 * MiB, seed=3)
    limit = 1 * MiB
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("big", data)
            url = server.url("big")
            async with Engine(cache_limit=limit) as engine, Pager(engine) as pager:
                region = await asyncio.to_thread(map_file, url, engine=pager.address)
                try:
                    peak = 0
                    for _ in range(2):
                        for offset in range(0, len(data), 256 * 1024):
                            got = await asyncio.to_thread(
                                region.read, offset, 256 * 1024
                            )
                            assert got == data[offset : offset + 256 * 1024]
                            peak = max(peak, pager.statistics().resident_bytes)
                    stats = pager.statistics()
                    assert stats.invalidations > 0
                    # Both passes installed everything: the second refaulted.
                    assert stats.bytes_installed >= 2 * len(data)
                    # The clients' copy follows the cache's budget.
                    assert peak <= 4 * limit, peak
                finally:
                    region.close()


async def test_a_poisoned_page_is_repaired_when_its_bytes_come_back() -> None:
    data = content(8 * MiB, seed=4)
    middle = len(data) // 2
    with anyio.fail_after(DEADLINE):
        async with RangeHTTPServer() as server:
            server.add("flaky", data)
            url = server.url("flaky")
            async with Engine() as engine, Pager(engine) as pager:
                cached = await engine.open_file(url)
                server.remove("flaky")
                region = await asyncio.to_thread(map_file, url, engine=pager.address)
                try:
                    with pytest.raises(BusError):
                        await asyncio.to_thread(region.read, middle, 100)
                    assert pager.statistics().poisoned == 1
                    # Still poisoned: the next read fails too, without a fault.
                    with pytest.raises(BusError):
                        await asyncio.to_thread(region.read, middle, 100)
                    server.add("flaky", data)  # The same bytes, the same ETag.
                    while True:
                        try:
                            got = await asyncio.to_thread(region.read, middle, 100)
                        except BusError:
                            await asyncio.sleep(0.02)
                            continue
                        break
                    assert got == data[middle : middle + 100]
                    assert pager.statistics().repaired == 1
                finally:
                    region.close()
                    await engine.close_file(cached)


async def test_a_pager_that_stops_leaves_no_client_waiting(tmp_path: Path) -> None:
    data = content(2 * MiB, seed=5)
    path = tmp_path / "stopping.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine:
            pager = Pager(engine)
            await pager.start()
            region = await asyncio.to_thread(map_file, str(path), engine=pager.address)
            try:
                assert await asyncio.to_thread(region.read, 0, 1000) == data[:1000]
                await pager.aclose()
                # What was served stays; what was not fails at once.
                assert await asyncio.to_thread(region.read, 0, 1000) == data[:1000]
                with pytest.raises(BusError):
                    await asyncio.to_thread(region.read, MiB, 10)
            finally:
                region.close()
