"""AddressSpace syscalls: errno tables, partial application, and placement rules.

Each failing call is checked for its errno (in gVisor's order) and for
leaving the space unchanged, except where Linux documents partial
application; those cases assert the exact partial result.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest

from aiomemmap import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    Advice,
    BusError,
    BytesBacking,
    CachedFile,
    Layout,
    Limits,
    MemoryFault,
    MemoryFile,
    MLockMode,
    MMapOpts,
    MRemapMove,
    ReadaheadHint,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
TOP = 1 << 32
LAYOUT = Layout(min_addr=0x10000, max_addr=TOP, bottom_up_base=BASE, top_down_base=TOP)
R, RW, NONE = AccessType.READ, AccessType.READ_WRITE, AccessType.NO_ACCESS


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    with MemoryFile("t") as f:
        yield f
        assert f.statistics().used_bytes == 0


def anon(length: int = P, **kw: object) -> MMapOpts:
    return MMapOpts(length=length, private=True, **kw)  # type: ignore[arg-type]


def snapshot(asp: AddressSpace) -> tuple[str, object]:
    asp.check_invariants()
    return asp.maps(), asp.statistics()


async def expect_errno(asp: AddressSpace, err: int, coro: object) -> None:
    """Await ``coro``; it must fail with ``err`` and change nothing."""
    before = snapshot(asp)
    with pytest.raises(AddressSpaceError) as info:
        await coro  # type: ignore[misc]
    assert info.value.errno == err, info.value
    assert snapshot(asp) == before


async def test_mmap_errno_table(mf: MemoryFile) -> None:
    shm = SharedMemory(mf, 4 * P, name="/shm")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        used = await asp.mmap(anon(addr=BASE, fixed=True))
        file = {"mappable": shm, "mapping_identity": shm}
        cases: list[tuple[int, MMapOpts]] = [
            (errno.EINVAL, anon(0)),
            (errno.ENOMEM, anon(2**64 - 1)),
            (errno.EINVAL, MMapOpts(length=P, offset=1, **file)),  # type: ignore[arg-type]
            (errno.EOVERFLOW, MMapOpts(length=2 * P, offset=2**64 - P, **file)),  # type: ignore[arg-type]
            (errno.EINVAL, anon(addr=BASE + 1, fixed=True)),
            (errno.EACCES, anon(perms=RW, max_perms=R)),
            (errno.EINVAL, anon(unmap=True)),
            (errno.EINVAL, anon(no_replace=True)),
            (errno.EINVAL, anon(addr=BASE, fixed=True, unmap=True, no_replace=True)),
            (errno.EINVAL, MMapOpts(length=P, grows_down=True, **file)),  # type: ignore[arg-type]
            (errno.EEXIST, anon(addr=used, fixed=True, no_replace=True)),
            (errno.ENOMEM, anon(addr=used, fixed=True)),
            (errno.ENOMEM, anon(addr=TOP, fixed=True)),
            (errno.ENOMEM, anon(TOP)),
        ]
        for err, opts in cases:
            await expect_errno(asp, err, asp.mmap(opts))
        # EACCES is checked before the unmap/fixed combination.
        await expect_errno(
            asp, errno.EACCES, asp.mmap(anon(perms=RW, max_perms=R, unmap=True))
        )
        await asp.munmap(used, P)
    await shm.dec_ref()


async def test_mmap_rejects_bad_input_without_change(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        before = snapshot(asp)
        with pytest.raises(TypeError, match="opts"):
            await asp.mmap("x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"opts\.length"):
            await asp.mmap(anon(-1))
        with pytest.raises(TypeError, match="mapping_identity"):
            await asp.mmap(MMapOpts(length=P, mappable=SharedMemory(mf, P)))
        with pytest.raises(TypeError, match="addr"):
            await asp.munmap("0", P)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="perms"):
            await asp.mprotect(BASE, P, 7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="move"):
            await asp.mremap(BASE, P, P, move="x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="advice"):
            await asp.madvise(BASE, P, 4)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="mode"):
            await asp.mlock(BASE, P, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="at"):
            await asp.handle_fault(BASE, "r")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="length"):
            await asp.copy_in(BASE, -1)
        with pytest.raises(TypeError, match="data"):
            await asp.copy_out(BASE, "text")  # type: ignore[arg-type]
        assert snapshot(asp) == before


async def test_placement_bottom_up_top_down_32bit_and_huge_alignment(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(P, perms=NONE))
        b = await asp.mmap(anon(P, perms=NONE))
        assert (a, b) == (BASE, BASE + P)
        huge = await asp.mmap(anon(HUGE_PAGE_SIZE, perms=NONE))
        assert huge % HUGE_PAGE_SIZE == 0
        low = await asp.mmap(anon(P, perms=NONE, map_32bit=True))
        assert 0x4000_0000 <= low < 0x8000_0000
        hinted = await asp.mmap(anon(P, perms=NONE, addr=0x3000_0000))
        assert hinted == 0x3000_0000
    top_down = Layout(
        min_addr=0x10000,
        max_addr=TOP,
        bottom_up_base=BASE,
        top_down_base=TOP,
        top_down=True,
    )
    async with AddressSpace(mf, layout=top_down) as asp:
        a = await asp.mmap(anon(P, perms=NONE))
        b = await asp.mmap(anon(P, perms=NONE))
        assert (a, b) == (TOP - P, TOP - 2 * P)


async def test_guard_gap_below_a_grows_down_mapping(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        stack = BASE + 64 * P
        await asp.mmap(anon(4 * P, addr=stack, fixed=True, grows_down=True, perms=RW))
        # The 64 pages below the stack are smaller than the 1 MiB guard:
        # a hint there is not honoured, the search skips the gap.
        addr = await asp.mmap(anon(P, addr=stack - P, perms=NONE))
        assert addr >= stack + 4 * P
        # no_replace may use the guard pages; a plain fixed mapping too.
        assert await asp.mmap(anon(P, addr=stack - P, fixed=True, no_replace=True)) == (
            stack - P
        )


async def test_munmap_errno_table(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(2 * P, addr=BASE, fixed=True))
        for err, args in [
            (errno.EINVAL, (BASE + 1, P)),
            (errno.EINVAL, (BASE, 0)),
            (errno.EINVAL, (2**64 - P, 2 * P)),
            (errno.EINVAL, (BASE, 2**64 - 1)),
        ]:
            await expect_errno(asp, err, asp.munmap(*args))
        await asp.munmap(BASE + 16 * P, P)  # a hole: not an error
        await asp.munmap(BASE, 2 * P)
        assert asp.statistics().usage_as == 0


async def test_mremap_matrix(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        old = await asp.mmap(anon(2 * P, addr=BASE, fixed=True))
        await asp.copy_out(old, b"keep")
        await asp.mmap(anon(P, addr=BASE + 2 * P, fixed=True, perms=R))
        # NO_MOVE: old_size 0 of private memory -> EINVAL (Linux copies
        # only shared mappings); growth blocked by the next mapping ->
        # ENOMEM; equal -> no-op; shrink.
        await expect_errno(asp, errno.EINVAL, asp.mremap(old, 0, P))
        await expect_errno(asp, errno.ENOMEM, asp.mremap(old, 2 * P, 3 * P))
        assert await asp.mremap(old, 2 * P, 2 * P) == old
        assert await asp.mremap(old, 2 * P, P) == old
        assert asp.statistics().usage_as == 2 * P
        # Growing in place into free space.
        assert await asp.mremap(old, P, 2 * P) == old
        # MAY_MOVE when blocked: the data moves with its pages.
        moved = await asp.mremap(old, 2 * P, 4 * P, move=MRemapMove.MAY_MOVE)
        assert moved != old
        assert await asp.copy_in(moved, 4) == b"keep"
        with pytest.raises(MemoryFault):
            await asp.copy_in(old, 1)
        # MUST_MOVE: errors, then a move that shrinks.
        for err, kw in [
            (errno.EINVAL, {"new_addr": BASE + 1}),
            (errno.EINVAL, {"new_addr": moved + P}),  # overlaps the old range
            (errno.EINVAL, {"new_addr": 2**64 - P}),
            (errno.ENOMEM, {"new_addr": TOP}),
        ]:
            await expect_errno(
                asp,
                err,
                asp.mremap(moved, 4 * P, 2 * P, move=MRemapMove.MUST_MOVE, **kw),  # type: ignore[arg-type]
            )
        dest = BASE + 64 * P
        assert (
            await asp.mremap(moved, 4 * P, P, move=MRemapMove.MUST_MOVE, new_addr=dest)
            == dest
        )
        assert await asp.copy_in(dest, 4) == b"keep"
        # Errors that need no mapping, and EFAULT without one.
        await expect_errno(asp, errno.EINVAL, asp.mremap(BASE + 1, P, P))
        await expect_errno(asp, errno.EINVAL, asp.mremap(dest, P, 0))
        await expect_errno(asp, errno.EINVAL, asp.mremap(2**64 - P, 2 * P, P))
        await expect_errno(asp, errno.EFAULT, asp.mremap(BASE + 200 * P, P, 2 * P))
        # The old range must be one mapping to grow.
        await asp.mmap(anon(P, addr=dest + P, fixed=True, perms=R))
        await expect_errno(asp, errno.EFAULT, asp.mremap(dest, 2 * P, 3 * P))


async def test_mremap_copies_a_shared_mapping_with_old_size_zero(
    mf: MemoryFile,
) -> None:
    shm = SharedMemory(mf, 2 * P, name="/shm")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(MMapOpts(length=2 * P, mappable=shm, mapping_identity=shm))
        await asp.copy_out(a, b"shared")
        b = await asp.mremap(a, 0, 2 * P, move=MRemapMove.MAY_MOVE)
        assert b != a
        assert await asp.copy_in(b, 6) == b"shared"
        await asp.copy_out(b + 1, b"H")
        assert await asp.copy_in(a, 6) == b"sHared"
    await shm.dec_ref()


async def test_mremap_respects_address_space_and_memlock_limits(mf: MemoryFile) -> None:
    limits = Limits(address_space=4 * P, memlock=2 * P)
    async with AddressSpace(mf, layout=LAYOUT, limits=limits) as asp:
        a = await asp.mmap(anon(2 * P, mlock_mode=MLockMode.EAGER))
        await expect_errno(asp, errno.EAGAIN, asp.mremap(a, 2 * P, 3 * P))
        await asp.munlock(a, 2 * P)
        await expect_errno(
            asp, errno.ENOMEM, asp.mremap(a, 2 * P, 8 * P, move=MRemapMove.MAY_MOVE)
        )


async def test_mprotect_errno_table_and_partial_application(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(P, addr=BASE, fixed=True))
        await asp.mmap(anon(P, addr=BASE + P, fixed=True, max_perms=R, perms=R))
        await asp.mmap(anon(P, addr=BASE + 4 * P, fixed=True))
        await asp.mprotect(BASE + 1000 * P, 0, R)  # length 0: nothing to do
        for err, args in [
            (errno.EINVAL, (BASE + 1, P, R)),
            (errno.ENOMEM, (BASE, 2**64 - 1, R)),
            (errno.ENOMEM, (BASE + 100 * P, P, R)),
            (errno.ENOMEM, (BASE - P, 2 * P, R)),
        ]:
            await expect_errno(asp, err, asp.mprotect(*args))
        await expect_errno(asp, errno.EINVAL, asp.mprotect(BASE, P, R, grows_down=True))
        # EACCES on the second mapping: the first was already changed.
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(BASE, 2 * P, RW)
        assert info.value.errno == errno.EACCES
        # A hole after the first two: ENOMEM, the first two changed.
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(BASE, 5 * P, R)
        assert info.value.errno == errno.ENOMEM
        lines = asp.maps().splitlines()
        # Different max_perms keep the first two apart; both are r-- now.
        assert lines[0].startswith(f"{BASE:08x}-{BASE + P:08x} r--p")
        assert lines[1].startswith(f"{BASE + P:08x}-{BASE + 2 * P:08x} r--p")
        assert " rw-p " in lines[2]
        asp.check_invariants()


async def test_mprotect_grows_down_extends_to_the_start_of_the_stack(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        stack = BASE + 16 * P
        await asp.mmap(anon(4 * P, addr=stack, fixed=True, grows_down=True))
        await asp.mprotect(stack + 3 * P, P, R, grows_down=True)
        assert asp.maps().startswith(f"{stack:08x}-{stack + 4 * P:08x} r--p")


async def test_brk(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(data=8 * P)) as asp:
        heap = BASE + 32 * P
        await asp.brk_setup(heap)
        assert await asp.brk(0) == heap  # below the start: unchanged
        assert await asp.brk(heap + 100) == heap + 100
        assert "[heap]" in asp.maps()
        await asp.copy_out(heap, b"heap")
        assert await asp.brk(heap + 9 * P) == heap + 100  # past RLIMIT_DATA
        assert await asp.brk(heap + 3 * P) == heap + 3 * P
        assert asp.statistics().usage_as == 3 * P
        assert await asp.brk(heap + 1) == heap + 1
        assert asp.statistics().usage_as == P
        assert await asp.copy_in(heap, 4) == b"heap"
        assert await asp.brk(2**64 - 1) == heap + 1  # rounding overflows
        # A mapping in the way: the heap cannot grow.
        await asp.mmap(anon(P, addr=heap + 2 * P, fixed=True))
        assert await asp.brk(heap + 3 * P) == heap + 1
        await asp.brk_setup(BASE + 200 * P)
        assert "[heap]" not in asp.maps()


async def test_brk_with_zero_data_limit(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(data=0)) as asp:
        await asp.brk_setup(BASE)
        assert await asp.brk(0) == BASE
        assert await asp.brk(BASE + P) == BASE


async def test_mlock_limits_and_partial_application(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=0)) as asp:
        await expect_errno(asp, errno.EPERM, asp.mmap(anon(mlock_mode=MLockMode.EAGER)))
        a = await asp.mmap(anon())
        await expect_errno(asp, errno.EPERM, asp.mlock(a, P))
        await expect_errno(asp, errno.EPERM, asp.mlockall(MLockMode.EAGER))
        await asp.munlock(a, P)  # unlocking needs no limit
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=3 * P)) as asp:
        a = await asp.mmap(anon(2 * P, addr=BASE, fixed=True, perms=NONE))
        await expect_errno(
            asp, errno.EAGAIN, asp.mmap(anon(4 * P, mlock_mode=MLockMode.EAGER))
        )
        await expect_errno(asp, errno.ENOMEM, asp.mlock(a, 4 * P))
        await expect_errno(asp, errno.EINVAL, asp.mlock(2**64 - P, 2 * P))
        await expect_errno(
            asp, errno.EINVAL, asp.mlockall(MLockMode.EAGER, current=False)
        )
        await asp.mlock(a, 0)  # zero length: nothing to lock
        # Locking eagerly a mapping without permissions: ENOMEM after
        # marking it locked (as Linux).
        with pytest.raises(AddressSpaceError) as info:
            await asp.mlock(a, P)
        assert info.value.errno == errno.ENOMEM
        assert asp.statistics().locked_as == P
        # A hole after the mapping: ENOMEM, the mapping is locked anyway.
        await asp.mprotect(a, 2 * P, RW)
        with pytest.raises(AddressSpaceError) as info:
            await asp.mlock(a + P, 2 * P, MLockMode.LAZY)
        assert info.value.errno == errno.ENOMEM
        assert asp.statistics().locked_as == 2 * P
        await asp.munlockall()
        assert asp.statistics().locked_as == 0
        await asp.mlockall(MLockMode.EAGER)
        assert asp.statistics().locked_as == 2 * P
        assert asp.statistics().rss == 2 * P
        await asp.munlockall()
        await asp.mlockall(MLockMode.LAZY, current=False, future=True)
        b = await asp.mmap(anon(P, perms=NONE))
        assert asp.statistics().locked_as == P
        await asp.munmap(b, P)
        assert asp.statistics().locked_as == 0


async def test_madvise_errno_table(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(2 * P, addr=BASE, fixed=True))
        await asp.mmap(anon(P, addr=BASE + 3 * P, fixed=True))
        await asp.madvise(a, 0, Advice.DONTNEED)
        for err, args in [
            (errno.EINVAL, (a + 1, P, Advice.DONTNEED)),
            (errno.EINVAL, (a, 2**64 - 1, Advice.DONTNEED)),
            (errno.ENOMEM, (BASE + 100 * P, P, Advice.DONTNEED)),
            (errno.ENOMEM, (BASE + 100 * P, P, Advice.DONTFORK)),
            (errno.ENOMEM, (BASE + 100 * P, P, Advice.SEQUENTIAL)),
        ]:
            await expect_errno(asp, err, asp.madvise(*args))
        await asp.copy_out(a, b"x" * (2 * P))
        # A hole in the middle: ENOMEM, everything else applied.
        with pytest.raises(AddressSpaceError) as info:
            await asp.madvise(a, 4 * P, Advice.DONTNEED)
        assert info.value.errno == errno.ENOMEM
        assert await asp.copy_in(a, 4) == bytes(4)
        await asp.mlock(a, P, MLockMode.LAZY)
        await expect_errno(asp, errno.EINVAL, asp.madvise(a, P, Advice.DONTNEED))
        for advice in (Advice.NORMAL, Advice.RANDOM, Advice.WILLNEED, Advice.DOFORK):
            await asp.madvise(a, 2 * P, advice)


async def test_madvise_hints_reach_the_cached_file(mf: MemoryFile) -> None:
    data = bytes(range(256)) * (64 * P // 256)
    cf = CachedFile(BytesBacking(data), mf, name="/data")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(
            MMapOpts(
                length=len(data), mappable=cf, mapping_identity=cf, perms=R, max_perms=R
            )
        )
        await asp.madvise(a, len(data), Advice.SEQUENTIAL)
        assert cf._ra.hint is ReadaheadHint.SEQUENTIAL
        await asp.madvise(a, P, Advice.RANDOM)
        assert cf._ra.hint is ReadaheadHint.RANDOM
        await asp.madvise(a, 8 * P, Advice.WILLNEED)
        assert cf.statistics().resident_bytes >= 8 * P
        fetches = cf.statistics().fetches
        assert await asp.copy_in(a, 8 * P) == data[: 8 * P]
        assert cf.statistics().fetches == fetches
    await cf.aclose()


async def test_msync_errno_table_and_write_back(mf: MemoryFile) -> None:
    backing = BytesBacking(bytes(4 * P))
    cf = CachedFile(backing, mf, writable=True, name="/data")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(MMapOpts(length=4 * P, mappable=cf, mapping_identity=cf))
        await asp.mmap(anon(P, addr=a + 5 * P, fixed=True, mlock_mode=MLockMode.LAZY))
        await asp.copy_out(a + 10, b"synced")
        await asp.msync(a, 0)
        for err, args in [
            (errno.EINVAL, (a + 1, P)),
            (errno.ENOMEM, (a, 2**64 - 1)),
            (errno.ENOMEM, (a + 100 * P, P)),
        ]:
            await expect_errno(asp, err, asp.msync(*args))
        with pytest.raises(AddressSpaceError) as info:
            await asp.msync(a + 5 * P, P, invalidate=True)
        assert info.value.errno == errno.EBUSY
        # A hole: ENOMEM, but the file was written back first.
        with pytest.raises(AddressSpaceError) as info:
            await asp.msync(a, 6 * P)
        assert info.value.errno == errno.ENOMEM
        written = bytearray(6)
        await backing.read_into(10, memoryview(written))
        assert written == b"synced"
        await asp.msync(a, 4 * P, sync=False)
    await cf.aclose()


async def test_handle_fault_and_copy_errors(mf: MemoryFile) -> None:
    shm = SharedMemory(mf, P, name="/shm")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(P, addr=BASE, fixed=True, perms=R))
        with pytest.raises(MemoryFault) as info:
            await asp.handle_fault(BASE + 10 * P, R)
        assert info.value.errno == errno.EFAULT
        with pytest.raises(MemoryFault) as info:
            await asp.handle_fault(a, AccessType.WRITE)
        assert info.value.errno == errno.EPERM
        await asp.handle_fault(a + 17, R)
        # Past the file's end: SIGBUS.
        s = await asp.mmap(MMapOpts(length=2 * P, mappable=shm, mapping_identity=shm))
        with pytest.raises(BusError):
            await asp.handle_fault(s + P, R)
        with pytest.raises(BusError) as bus:
            await asp.copy_in(s + P - 2, 4)
        assert bus.value.bytes_done == 2
        # Copies beyond the layout fail before touching anything.
        with pytest.raises(MemoryFault) as info:
            await asp.copy_in(TOP - 1, 2)
        assert info.value.bytes_done == 0
        assert await asp.copy_in(TOP, 0) == b""
        assert await asp.copy_out(a, b"") == 0
        assert await asp.zero_out(a, 0) == 0
        # Writing a read-only mapping: EFAULT with nothing done; allowed
        # with ignore_permissions (max_perms).
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(a, b"x")
        assert info.value.bytes_done == 0
        assert await asp.copy_out(a, b"x", ignore_permissions=True) == 1
        assert await asp.zero_out(a, P, ignore_permissions=True) == P
        with pytest.raises(BusError) as bus:
            await asp.zero_out(s, 2 * P)
        assert bus.value.bytes_done == P
        # Past the end of the file and then unmapped: the first error in
        # address order is reported.
        with pytest.raises(BusError) as bus:
            await asp.zero_out(s + P, 100 * P)
        assert bus.value.bytes_done == 0
    await shm.dec_ref()


async def test_closed_space_refuses_everything(mf: MemoryFile) -> None:
    from aiomemmap import ClosedError

    asp = AddressSpace(mf, layout=LAYOUT)
    await asp.aclose()
    await asp.aclose()
    assert asp.closed
    for coro in (
        asp.mmap(anon()),
        asp.munmap(BASE, P),
        asp.mprotect(BASE, P, R),
        asp.handle_fault(BASE, R),
        asp.copy_in(BASE, 1),
        asp.fork(),
        asp.brk(BASE),
    ):
        with pytest.raises(ClosedError):
            await coro
    assert asp.maps().endswith("[vsyscall]\n")


async def test_own_memory_file_is_shared_with_forks_and_closed_last() -> None:
    asp = AddressSpace(layout=LAYOUT)
    a = await asp.mmap(anon(P))
    await asp.copy_out(a, b"parent")
    child = await asp.fork()
    await asp.aclose()
    assert not child.memory_file.closed
    assert await child.copy_in(a, 6) == b"parent"
    await child.aclose()
    assert child.memory_file.closed
