"""gVisor's mm tests, ported, and the scenarios that follow from its semantics.

The first group mirrors ``pkg/sentry/mm/mm_test.go`` (usageAS, dataAS, the
brk data limit, I/O after munmap and after mprotect); allocation direction
is checked through placement. Then the derived scenarios of the reference
(copy-on-write across fork, shared memory across fork, private file
mappings versus invalidation, MADV_DONTNEED, munmap of a middle page,
merging, partial copies, fixed placement conflicts, mprotect beyond
max_perms), and the exact ``/proc/pid/maps`` line format.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    AddrRange,
    Advice,
    BytesBacking,
    CachedFile,
    InvalidateOpts,
    Layout,
    Limits,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x400000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 40, bottom_up_base=BASE, top_down_base=1 << 40
)
VSYSCALL = (
    "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0" + " " * 18 + "[vsyscall]"
)


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    with MemoryFile("t") as f:
        yield f
        assert f.statistics().used_bytes == 0


def data_as_of(asp: AddressSpace) -> int:
    """Recompute data_as from maps(): private, writable, not growing down."""
    total = 0
    for line in asp.maps().splitlines()[:-1]:
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if perms[1] == "w" and perms[3] == "p":
            total += end - start
    return total


async def test_usage_as_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=2 * P, private=True))
        assert asp.statistics().usage_as == 2 * P
        await asp.munmap(addr, P)
        assert asp.statistics().usage_as == P


async def test_data_as_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            MMapOpts(
                length=3 * P,
                private=True,
                perms=AccessType.WRITE,
                max_perms=AccessType.ANY,
            )
        )
        assert asp.statistics().data_as == data_as_of(asp) == 3 * P
        await asp.munmap(addr, P)
        assert asp.statistics().data_as == data_as_of(asp) == 2 * P
        await asp.mprotect(addr + P, P, AccessType.READ)
        assert asp.statistics().data_as == data_as_of(asp) == P
        await asp.mremap(addr + 2 * P, P, 2 * P, move=MRemapMove.MAY_MOVE)
        assert asp.statistics().data_as == data_as_of(asp) == 2 * P


async def test_brk_data_limit_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(data=0)) as asp:
        await asp.brk_setup(BASE)
        old = await asp.brk(0)
        assert old == BASE
        assert await asp.brk(old + P) == old


async def test_io_after_unmap(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            MMapOpts(
                length=P, private=True, perms=AccessType.READ, max_perms=AccessType.ANY
            )
        )
        assert await asp.copy_in(addr, 1) == b"\0"
        await asp.munmap(addr, P)
        with pytest.raises(MemoryFault) as info:
            await asp.copy_in(addr, 1)
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == 0


async def test_io_after_mprotect(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=P, private=True))
        assert await asp.copy_out(addr, b"x") == 1
        await asp.mprotect(addr, P, AccessType.READ)
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(addr, b"x")
        assert info.value.errno == errno.EFAULT
        assert await asp.copy_out(addr, b"x", ignore_permissions=True) == 1


@pytest.mark.parametrize("top_down", [False, True])
async def test_allocation_direction_follows_the_layout(
    mf: MemoryFile, top_down: bool
) -> None:
    layout = Layout(
        min_addr=0x10000,
        max_addr=1 << 40,
        bottom_up_base=BASE,
        top_down_base=1 << 32,
        top_down=top_down,
    )
    async with AddressSpace(mf, layout=layout) as asp:
        first = await asp.mmap(MMapOpts(length=P, private=True))
        second = await asp.mmap(MMapOpts(length=P, private=True))
        assert (second < first) == top_down


async def test_cow_after_fork_and_takeover_after_exit(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(MMapOpts(length=2 * P, private=True))
        await parent.copy_out(addr, b"A" * 2 * P)
        child = await parent.fork()
        await parent.copy_out(addr, b"B" * 2 * P)
        assert await child.copy_in(addr, 2 * P) == b"A" * 2 * P
        assert await parent.copy_in(addr, 2 * P) == b"B" * 2 * P
        await child.aclose()
        copies = parent.statistics().cow_copies
        await parent.copy_out(addr, b"C" * 2 * P)
        assert parent.statistics().cow_copies == copies


async def test_shared_anonymous_memory_is_shared_across_fork(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(MMapOpts(length=P, private=False))
        child = await parent.fork()
        await child.copy_out(addr, b"Z")
        assert await parent.copy_in(addr, 1) == b"Z"
        assert "/dev/zero (deleted)" in parent.maps()
        await child.aclose()


async def test_private_file_mapping_versus_invalidation(mf: MemoryFile) -> None:
    shm = SharedMemory(mf, 2 * P, name="/file")
    await shm.write(0, b"F" * 2 * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            MMapOpts(length=2 * P, mappable=shm, mapping_identity=shm, private=True)
        )
        await asp.copy_out(addr, b"p")
        assert await shm.read(0, 1) == b"F"  # never reaches the file
        assert await asp.copy_in(addr + P, 1) == b"F"  # unwritten: file data
        ar = AddrRange(addr, addr + 2 * P)
        await asp.invalidate(ar, InvalidateOpts(invalidate_private=False))
        assert await asp.copy_in(addr, 1) == b"p"
        await asp.invalidate(ar, InvalidateOpts(invalidate_private=True))
        assert await asp.copy_in(addr, 1) == b"F"
    await shm.dec_ref()


async def test_dontneed_zeroes_anonymous_memory_and_drops_rss(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=4 * P, private=True))
        await asp.copy_out(addr, b"w" * 4 * P)
        assert asp.statistics().rss == 4 * P
        await asp.madvise(addr, 4 * P, Advice.DONTNEED)
        assert asp.statistics().rss == 0
        assert await asp.copy_in(addr, 4 * P) == bytes(4 * P)


async def test_munmap_of_a_middle_page_splits_the_mapping(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=3 * P, private=True))
        await asp.munmap(addr + P, P)
        assert asp.maps().splitlines() == [
            f"{addr:08x}-{addr + P:08x} rw-p 00000000 00:00 0 ",
            f"{addr + 2 * P:08x}-{addr + 3 * P:08x} rw-p 00000000 00:00 0 ",
            VSYSCALL,
        ]
        assert asp.statistics().usage_as == 2 * P


async def test_adjacent_identical_mappings_are_one_maps_line(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(MMapOpts(length=P, private=True))
        b = await asp.mmap(MMapOpts(length=P, private=True))
        assert b == a + P
        assert (
            asp.maps().splitlines()[0]
            == f"{a:08x}-{a + 2 * P:08x} rw-p 00000000 00:00 0 "
        )
        assert asp.statistics().vmas == 1


async def test_copy_out_over_a_page_and_a_hole(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=P, private=True, addr=BASE, fixed=True))
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(addr, b"q" * 2 * P)
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == P
        assert await asp.copy_in(addr, P) == b"q" * P
        with pytest.raises(MemoryFault) as info:
            await asp.copy_in(addr + P - 3, 6)
        assert info.value.bytes_done == 3
        assert info.value.data == b"qqq"


async def test_fixed_placement_conflicts(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=P, private=True, addr=BASE, fixed=True))
        with pytest.raises(AddressSpaceError) as info:
            await asp.mmap(
                MMapOpts(length=P, private=True, addr=addr, fixed=True, no_replace=True)
            )
        assert info.value.errno == errno.EEXIST
        with pytest.raises(AddressSpaceError) as info:
            await asp.mmap(MMapOpts(length=P, private=True, addr=addr, fixed=True))
        assert info.value.errno == errno.ENOMEM
        await asp.copy_out(addr, b"old")
        assert (
            await asp.mmap(
                MMapOpts(length=P, private=True, addr=addr, fixed=True, unmap=True)
            )
            == addr
        )
        assert await asp.copy_in(addr, 3) == bytes(3)


async def test_mprotect_beyond_max_perms_is_eacces(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            MMapOpts(
                length=P, private=True, perms=AccessType.READ, max_perms=AccessType.READ
            )
        )
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(addr, P, AccessType.READ_WRITE)
        assert info.value.errno == errno.EACCES


async def test_maps_line_format_for_anonymous_and_named_mappings(
    mf: MemoryFile,
) -> None:
    cf = CachedFile(BytesBacking(bytes(2 * P)), mf, name="/bin/true")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(MMapOpts(length=P, private=True, addr=0x400000, fixed=True))
        await asp.mmap(
            MMapOpts(
                length=P,
                mappable=cf,
                mapping_identity=cf,
                offset=P,
                addr=0x500000,
                fixed=True,
                private=True,
                perms=AccessType.READ_EXECUTE,
            )
        )
        lines = asp.maps().splitlines(keepends=True)
        assert lines[0] == "00400000-00401000 rw-p 00000000 00:00 0 \n"
        head = f"00500000-00501000 r-xp 00001000 00:00 {cf.inode_id()} "
        assert lines[1] == head.ljust(73) + "/bin/true\n"
        assert lines[-1] == VSYSCALL + "\n"
        await asp.brk_setup(0x600000)
        await asp.brk(0x600000 + 10)
        heap = asp.maps().splitlines()[2]
        assert heap == "00600000-00601000 rw-p 00000000 00:00 0".ljust(73) + "[heap]"
    await cf.aclose()
