"""Pages an access is about to copy stay pinned until copied, under a small budget.

Without it, a copy through an address space larger than the cache budget has
its first pages evicted while it waits for the last ones, asks for them
again, evicts the others, and never returns.
"""

from __future__ import annotations

import asyncio
import random

import anyio

from aiomemmap import AccessType, AddressSpace, CachedFile, MemoryFile, MMapOpts
from aiomemmap._core.ranges import MappableRange
from aiomemmap.backings.memory import BytesBacking
from aiomemmap.pgalloc.access_pins import Access, current_access

KiB = 1024
MiB = 1024 * KiB


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def map_read_only(asp: AddressSpace, cf: CachedFile, length: int) -> int:
    return await asp.mmap(
        MMapOpts(
            length=length,
            mappable=cf,
            mapping_identity=cf,
            perms=AccessType.READ,
            max_perms=AccessType.READ_EXECUTE,
        )
    )


async def test_overlapping_copies_larger_than_the_budget_finish() -> None:
    data = pattern(8 * MiB)
    with MemoryFile("pinned-copies", cache_limit=1 * MiB) as mf:
        cf = CachedFile(BytesBacking(data), mf)
        asp = AddressSpace(mf)
        a = await map_read_only(asp, cf, 8 * MiB)
        with anyio.fail_after(60):
            assert await asp.copy_in(a, 4 * MiB) == data[: 4 * MiB]
            assert await asp.copy_in(a + 2 * MiB, 4 * MiB) == data[2 * MiB : 6 * MiB]
        st = cf.statistics()
        # Each copy fetches what it lacks about once; nothing churns.
        assert st.bytes_fetched <= 16 * MiB
        assert st.evictions * 4 * KiB <= 16 * MiB
        # The pins were released with the copies, and the cache shrinks back.
        assert mf.evictor.pinned_bytes == 0
        with anyio.fail_after(60):
            assert (
                await asp.copy_in(a + 7 * MiB, 4 * KiB)
                == data[7 * MiB : 7 * MiB + 4 * KiB]
            )
        await asp.aclose()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_many_concurrent_copies_under_a_small_budget_finish() -> None:
    readers, each = 64, 1 * MiB
    data = pattern(readers * each, 2)
    with MemoryFile("pinned-readers", cache_limit=8 * MiB) as mf:
        cf = CachedFile(BytesBacking(data), mf)
        asp = AddressSpace(mf)
        a = await map_read_only(asp, cf, len(data))

        async def reader(i: int) -> None:
            got = await asp.copy_in(a + i * each, each)
            assert got == data[i * each : (i + 1) * each]

        with anyio.fail_after(120):
            async with asyncio.TaskGroup() as tg:
                for i in range(readers):
                    tg.create_task(reader(i))
        st = cf.statistics()
        assert st.bytes_fetched <= 3 * len(data)
        assert st.evictions * 4 * KiB <= 3 * len(data)
        assert mf.evictor.pinned_bytes == 0
        cf.check_invariants()
        await asp.aclose()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_faults_larger_than_the_budget_keep_their_pages_until_done() -> None:
    data = pattern(4 * MiB, 3)
    with MemoryFile("pinned-fault", cache_limit=1 * MiB) as mf:
        cf = CachedFile(BytesBacking(data), mf)
        asp = AddressSpace(mf)
        a = await map_read_only(asp, cf, len(data))
        with anyio.fail_after(60):
            for off in range(0, len(data), 512 * KiB):
                await asp.handle_fault(a + off, AccessType.READ)
                assert await asp.copy_in(a + off, 8) == data[off : off + 8]
        assert mf.evictor.pinned_bytes == 0
        assert cf.statistics().bytes_fetched <= 2 * len(data)
        await asp.aclose()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_a_translate_inside_an_access_keeps_its_pin_until_the_access_ends() -> (
    None
):

    data = pattern(1 * MiB, 4)
    with MemoryFile("pinned-translate", cache_limit=1 * MiB) as mf:
        cf = CachedFile(BytesBacking(data), mf)
        r = MappableRange(0, 256 * KiB)
        with anyio.fail_after(30):
            assert current_access() is None
            with Access():
                ts, err = await cf.translate(r, r, AccessType.READ)
                assert err is None
                assert ts
                assert mf.evictor.pinned_bytes == 256 * KiB
                # A nested scope belongs to the outer access.
                with Access():
                    await cf.translate(r, r, AccessType.READ)
                assert mf.evictor.pinned_bytes == 256 * KiB
            assert mf.evictor.pinned_bytes == 0
            # Outside an access, the pin ends with the call.
            await cf.translate(r, r, AccessType.READ)
            assert mf.evictor.pinned_bytes == 0
        cf.check_invariants()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0
