"""AddressSpace under concurrency (SPEC R5) and cancellation (SPEC R2).

Concurrency tests run many operations at once under a deadline with the
debug lock-order checks on (conftest turns them on): no LockOrderError, no
deadlock, invariants hold, every byte read is one that was written, and
every page is returned at the end.

Cancellation tests cancel an operation after k event-loop steps, for every
k until the operation completes uncancelled, and check after each that the
space is consistent, that nothing leaked, and that the operation can be
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    Advice,
    BusError,
    BytesBacking,
    CachedFile,
    FaultInjectingBacking,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    NoReadahead,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)


def pattern(tag: int, n: int) -> bytes:
    return bytes([tag & 0xFF]) * n


async def test_mixed_operations_run_together_without_deadlock() -> None:
    rng = random.Random(20261125)
    with MemoryFile("t") as mf:
        shm = SharedMemory(mf, 16 * P, name="/shm")
        data = bytes(rng.randrange(256) for _ in range(32 * P))
        backing = FaultInjectingBacking(
            BytesBacking(data), latency=0.001, jitter=0.001, seed=7
        )
        cf = CachedFile(backing, mf, name="/remote")
        spaces = [AddressSpace(mf, layout=LAYOUT)]
        anon = await spaces[0].mmap(
            MMapOpts(length=16 * P, private=True, addr=BASE, fixed=True)
        )
        shared = await spaces[0].mmap(
            MMapOpts(length=16 * P, mappable=shm, mapping_identity=shm)
        )
        remote = await spaces[0].mmap(
            MMapOpts(length=32 * P, mappable=cf, mapping_identity=cf, private=True)
        )
        written: dict[int, set[int]] = {}

        async def writer(asp: AddressSpace, seed: int) -> None:
            r = random.Random(seed)
            for _ in range(40):
                page = r.randrange(16)
                tag = r.randrange(1, 256)
                written.setdefault(page, set()).add(tag)
                # The page may be write-protected meanwhile.
                with contextlib.suppress(MemoryFault):
                    await asp.copy_out(anon + page * P, pattern(tag, P))
                await asyncio.sleep(0)

        async def reader(asp: AddressSpace, seed: int) -> None:
            r = random.Random(seed)
            for _ in range(40):
                page = r.randrange(32)
                try:
                    got = await asp.copy_in(remote + page * P, P)
                except (MemoryFault, BusError):
                    continue
                assert got == data[page * P : (page + 1) * P] or got[:1] in (b"R",)

        async def prot(asp: AddressSpace, seed: int) -> None:
            r = random.Random(seed)
            for _ in range(20):
                page = r.randrange(16)
                perms = r.choice([AccessType.READ, AccessType.READ_WRITE])
                await asp.mprotect(anon + page * P, P, perms)
                # While the shrinker has cut the shared file to 8 pages, a
                # fault past them is a bus error, as on Linux.
                with contextlib.suppress(BusError):
                    await asp.handle_fault(
                        shared + r.randrange(16) * P, AccessType.READ
                    )
                await asyncio.sleep(0)
            await asp.mprotect(anon, 16 * P, AccessType.READ_WRITE)

        async def churn(asp: AddressSpace, seed: int) -> None:
            r = random.Random(seed)
            for _ in range(10):
                page = r.randrange(16)
                await asp.madvise(anon + page * P, P, Advice.DONTNEED)
                extra = await asp.mmap(MMapOpts(length=P, private=True))
                await asp.copy_out(extra, b"x")
                moved = await asp.mremap(extra, P, 2 * P, move=MRemapMove.MAY_MOVE)
                await asp.munmap(moved, 2 * P)

        async def forker(asp: AddressSpace) -> None:
            for _ in range(3):
                child = await asp.fork()
                spaces.append(child)
                await child.copy_out(shared, b"child")
                await asyncio.sleep(0)

        async def shrinker() -> None:
            await asyncio.sleep(0.005)
            await shm.truncate(8 * P)
            await asyncio.sleep(0.005)
            await shm.truncate(16 * P)

        with anyio.fail_after(60):
            async with asyncio.TaskGroup() as tg:
                for i in range(3):
                    tg.create_task(writer(spaces[0], i))
                    tg.create_task(reader(spaces[0], 10 + i))
                tg.create_task(prot(spaces[0], 20))
                tg.create_task(churn(spaces[0], 30))
                tg.create_task(forker(spaces[0]))
                tg.create_task(shrinker())
        for asp in spaces:
            asp.check_invariants()
        # Every anonymous page holds one of the values written to it (or
        # zeros, after DONTNEED), never a mixture.
        for page in range(16):
            got = await spaces[0].copy_in(anon + page * P, P)
            assert got == bytes(P) or (
                got == pattern(got[0], P) and got[0] in written.get(page, set())
            )
        for asp in spaces:
            await asp.aclose()
        await cf.aclose()
        await shm.dec_ref()
        assert not shm.is_mapped()
        assert mf.statistics().used_bytes == 0


async def test_many_spaces_fault_one_cold_page_with_one_fetch() -> None:
    with MemoryFile("t") as mf:
        data = bytes(range(256)) * (4 * P // 256)
        backing = FaultInjectingBacking(BytesBacking(data), latency=0.01, seed=1)
        # No readahead: exactly the faulted page is fetched.
        cf = CachedFile(backing, mf, name="/remote", readahead=NoReadahead())
        spaces = [AddressSpace(mf, layout=LAYOUT) for _ in range(50)]
        addrs = [
            await asp.mmap(
                MMapOpts(
                    length=4 * P,
                    mappable=cf,
                    mapping_identity=cf,
                    perms=AccessType.READ,
                    max_perms=AccessType.READ,
                )
            )
            for asp in spaces
        ]
        reads_before = backing.reads
        with anyio.fail_after(30):
            async with asyncio.TaskGroup() as tg:
                for asp, addr in zip(spaces, addrs, strict=True):
                    for _ in range(4):
                        tg.create_task(asp.handle_fault(addr + P, AccessType.READ))
        assert backing.reads - reads_before == 1
        for asp, addr in zip(spaces, addrs, strict=True):
            assert await asp.copy_in(addr + P, 16) == data[P : P + 16]
            await asp.aclose()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0


async def test_shared_memory_truncated_while_a_thousand_spaces_read() -> None:
    with MemoryFile("t") as mf:
        shm = SharedMemory(mf, 2 * P, name="/shm")
        await shm.write(0, pattern(7, 2 * P))
        spaces = [AddressSpace(mf, layout=LAYOUT) for _ in range(1000)]
        for asp in spaces:
            await asp.mmap(MMapOpts(length=2 * P, mappable=shm, mapping_identity=shm))

        async def read(asp: AddressSpace) -> None:
            try:
                got = await asp.copy_in(BASE + P, 8)
            except BusError as exc:
                got = b"bus error after %d bytes" % exc.bytes_done
            assert got in (pattern(7, 8), bytes(8), b"bus error after 0 bytes")

        with anyio.fail_after(60):
            async with asyncio.TaskGroup() as tg:
                for i, asp in enumerate(spaces):
                    tg.create_task(read(asp))
                    if i == 500:
                        tg.create_task(shm.truncate(P))
        for asp in spaces:
            asp.check_invariants()
            with pytest.raises(BusError):
                await asp.copy_in(BASE + P, 1)
            await asp.aclose()
        await shm.dec_ref()
        assert mf.statistics().used_bytes == 0


async def test_fork_racing_parent_writes_gives_each_page_one_version() -> None:
    with MemoryFile("t") as mf:
        async with AddressSpace(mf, layout=LAYOUT) as parent:
            addr = await parent.mmap(MMapOpts(length=8 * P, private=True))
            await parent.copy_out(addr, pattern(1, 8 * P))

            async def write() -> None:
                for page in range(8):
                    await parent.copy_out(addr + page * P, pattern(2, P))
                    await asyncio.sleep(0)

            with anyio.fail_after(30):
                writing = asyncio.ensure_future(write())
                await asyncio.sleep(0)
                child = await parent.fork()
                await writing
            seen = [await child.copy_in(addr + page * P, P) for page in range(8)]
            for got in seen:
                assert got in (pattern(1, P), pattern(2, P))
            # The parent's later writes never show up in the child.
            await parent.copy_out(addr, pattern(3, 8 * P))
            assert [await child.copy_in(addr + p * P, P) for p in range(8)] == seen
            await child.aclose()
        assert mf.statistics().used_bytes == 0


# ---------------------------------------------------------------------------
# Cancellation at every await


async def cancel_after_each_step(
    run: Callable[[], Awaitable[object]],
    check: Callable[[], Awaitable[None]],
    *,
    limit: int = 200,
) -> int:
    """Cancel ``run()`` after k loop steps for k = 0, 1, ... until it finishes.

    ``check`` runs after every attempt. Returns the k at which the operation
    first completed.
    """
    for k in range(limit):
        task = asyncio.ensure_future(run())
        for _ in range(k):
            if task.done():
                break
            await asyncio.sleep(0)
        if task.done():
            task.result()
            await check()
            return k
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await check()
    raise AssertionError(f"the operation did not finish within {limit} steps")


def slow_cached_file(mf: MemoryFile, pages: int) -> tuple[CachedFile, bytes]:
    data = bytes(range(256)) * (pages * P // 256)
    backing = FaultInjectingBacking(BytesBacking(data), latency=0.0, seed=3)
    return CachedFile(backing, mf, name="/remote"), data


@pytest.mark.parametrize(
    "operation",
    ["mmap", "munmap", "fault", "copy_in", "copy_out", "fork", "mremap", "willneed"],
)
async def test_cancellation_at_every_await_leaves_consistent_state(
    operation: str,
) -> None:
    with MemoryFile("t") as mf:
        cf, data = slow_cached_file(mf, 16)
        shm = SharedMemory(mf, 4 * P, name="/shm")
        asp = AddressSpace(mf, layout=LAYOUT)
        file_addr = await asp.mmap(
            MMapOpts(length=16 * P, mappable=cf, mapping_identity=cf, private=True)
        )
        shm_addr = await asp.mmap(
            MMapOpts(length=4 * P, mappable=shm, mapping_identity=shm)
        )
        anon = await asp.mmap(MMapOpts(length=4 * P, private=True))
        children: list[AddressSpace] = []
        done: list[object] = []

        async def run() -> None:
            if operation == "mmap":
                done.append(
                    await asp.mmap(
                        MMapOpts(length=P, mappable=shm, mapping_identity=shm)
                    )
                )
            elif operation == "munmap":
                await asp.munmap(shm_addr, 4 * P)
            elif operation == "fault":
                await asp.handle_fault(file_addr + 5 * P, AccessType.WRITE)
            elif operation == "copy_in":
                assert await asp.copy_in(file_addr, 3 * P) == data[: 3 * P]
            elif operation == "copy_out":
                await asp.copy_out(file_addr + P, b"written")
            elif operation == "fork":
                children.append(await asp.fork())
            elif operation == "mremap":
                # A cancelled mremap may have finished moving before the
                # cancellation was delivered; then there is nothing to move.
                if f"{shm_addr:08x}-" in asp.maps():
                    done.append(
                        await asp.mremap(
                            shm_addr, 4 * P, 8 * P, move=MRemapMove.MAY_MOVE
                        )
                    )
            else:
                await asp.madvise(file_addr, 16 * P, Advice.WILLNEED)

        async def check() -> None:
            asp.check_invariants()
            for child in children:
                child.check_invariants()
            assert await asp.copy_in(anon, 4) == bytes(4)

        with anyio.fail_after(60):
            await cancel_after_each_step(run, check)
            # Retrying after the cancellations works.
            if operation not in ("munmap", "mremap"):
                await run()
        for child in children:
            await child.aclose()
        await asp.aclose()
        await cf.aclose()
        await shm.dec_ref()
        assert not shm.is_mapped()
        assert not cf.is_mapped()
        assert mf.statistics().used_bytes == 0


async def test_cancelled_fault_does_not_disturb_other_waiters() -> None:
    with MemoryFile("t") as mf:
        data = bytes(range(256)) * (4 * P // 256)
        backing = FaultInjectingBacking(BytesBacking(data), latency=0.02, seed=1)
        cf = CachedFile(backing, mf, name="/remote", readahead=NoReadahead())
        async with AddressSpace(mf, layout=LAYOUT) as asp:
            addr = await asp.mmap(
                MMapOpts(length=4 * P, mappable=cf, mapping_identity=cf, private=True)
            )
            with anyio.fail_after(30):
                victims = [
                    asyncio.ensure_future(asp.copy_in(addr, 64)) for _ in range(4)
                ]
                others = [
                    asyncio.ensure_future(asp.copy_in(addr, 64)) for _ in range(4)
                ]
                await asyncio.sleep(0.005)
                for v in victims:
                    v.cancel()
                results = await asyncio.gather(*others)
            assert results == [data[:64]] * 4
            assert backing.reads == 1
            asp.check_invariants()
        await cf.aclose()
        assert mf.statistics().used_bytes == 0
