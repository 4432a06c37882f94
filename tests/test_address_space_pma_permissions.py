"""A pma never allows more than the vmas it lies in (SPEC R6, R7).

Pmas merge whatever vmas they lie in: after ``fork`` every private pma
loses write permission, so the pmas of a read-write vma and of its
read-only neighbours become equal and merge into one. Every step that gives
pages permissions again (taking them over, breaking copy-on-write,
``mprotect``) must change only the part inside one vma, and moving pages
(``mremap``) must carry their own permissions: the resident fast path of
copies checks the pma alone. Linux is the reference: a copy stops with
``EFAULT`` at the first byte its vma does not allow.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    InvariantError,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    MRemapMove,
)

P = PAGE_SIZE
BASE = 0x100000
FREE = 0x200000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
R = AccessType.READ
RW = AccessType.READ_WRITE
NONE = AccessType.NO_ACCESS
W = AccessType.WRITE


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("asp-pma-permissions")
    yield f
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def anon(
    addr: int, n: int, perms: AccessType, max_perms: AccessType = AccessType.ANY
) -> MMapOpts:
    return MMapOpts(
        n * P,
        private=True,
        perms=perms,
        max_perms=max_perms,
        addr=addr,
        fixed=True,
        unmap=True,
    )


async def expect_fault(aw: object, bytes_done: int) -> None:
    with pytest.raises(MemoryFault) as info:
        await aw  # type: ignore[misc]
    assert info.value.errno == errno.EFAULT
    assert info.value.bytes_done == bytes_done


async def read_only_around_writable(asp: AddressSpace) -> None:
    """Map ``r-- rw- r--`` at BASE (one mapping, populated, then mprotect)."""
    await asp.mmap(anon(BASE, 3, R))
    await asp.mprotect(BASE + P, P, RW)
    assert asp.statistics().pmas == 3


async def fork_and_merge(asp: AddressSpace, *, keep_child: bool) -> AddressSpace:
    """Fork; the private pmas, now equal, merge into one.

    Returns:
        The child, closed unless ``keep_child``.
    """
    child = await asp.fork()
    assert asp.statistics().pmas == 1
    if not keep_child:
        await child.aclose()
    return child


# --------------------------------------------------------------------------
# Taking pages over (the space holds the only reference)


async def test_write_after_fork_stops_at_the_first_read_only_page(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await read_only_around_writable(asp)
        await fork_and_merge(asp, keep_child=False)
        assert await asp.copy_out(BASE + P, b"a" * 16) == 16
        asp.check_invariants()
        await expect_fault(asp.copy_out(BASE + P + P // 2, b"b" * P), P // 2)
        assert await asp.copy_in(BASE + P + P // 2, P // 2) == b"b" * (P // 2)
        await expect_fault(asp.zero_out(BASE + P + P // 2, P), P // 2)
        assert await asp.copy_in(BASE + P, P) == b"a" * 16 + bytes(P - 16)
        assert await asp.copy_in(BASE + 2 * P, P) == bytes(P)
        assert await asp.copy_in(BASE, P) == bytes(P)
        asp.check_invariants()


async def test_write_after_fork_faults_on_a_read_only_page_further_on(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await read_only_around_writable(asp)
        await fork_and_merge(asp, keep_child=False)
        assert await asp.copy_out(BASE + P, b"a" * 16) == 16
        await expect_fault(asp.copy_out(BASE + 3 * P - 16, b"x" * 17), 0)
        await expect_fault(asp.copy_out(BASE + 16, b"x"), 0)
        with pytest.raises(MemoryFault) as info:
            await asp.handle_fault(BASE + 2 * P, W)
        assert info.value.errno == errno.EPERM
        assert await asp.copy_in(BASE, 3 * P) == bytes(P) + b"a" * 16 + bytes(
            2 * P - 16
        )
        asp.check_invariants()


async def test_write_ignoring_permissions_after_fork_stops_at_max_perms(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        # rw- (at most rw-) then r-- (at most r--): after fork both pmas
        # are r-- at most r--, and merge.
        await asp.mmap(anon(BASE, 2, RW, RW))
        await asp.mprotect(BASE + P, P, R)
        await asp.munmap(BASE + P, P)
        await asp.mmap(anon(BASE + P, 1, R, R))
        assert asp.statistics().pmas == 2
        child = await asp.fork()
        await child.aclose()
        if asp.statistics().pmas != 1:
            pytest.fail("the two pmas did not merge: the premise does not hold")
        assert await asp.copy_out(BASE, b"a") == 1
        asp.check_invariants()
        await expect_fault(
            asp.copy_out(BASE + P - 8, b"b" * 16, ignore_permissions=True), 8
        )
        assert await asp.copy_in(BASE + P, 8) == bytes(8)
        asp.check_invariants()


# --------------------------------------------------------------------------
# Breaking copy-on-write (another space still shares the pages)


async def test_write_after_fork_with_the_child_alive_stops_at_the_first_read_only_page(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await read_only_around_writable(asp)
        child = await fork_and_merge(asp, keep_child=True)
        try:
            for space in (asp, child):
                assert await space.copy_out(BASE + P, b"a" * 16) == 16
                await expect_fault(space.copy_out(BASE + P + 8, b"b" * P), P - 8)
                await expect_fault(space.copy_out(BASE + 2 * P, b"c"), 0)
                assert await space.copy_in(BASE + 2 * P, P) == bytes(P)
                space.check_invariants()
        finally:
            await child.aclose()


# --------------------------------------------------------------------------
# mprotect and mremap of part of a merged pma


async def test_mprotect_of_part_of_a_merged_pma_changes_only_that_part(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(BASE, 3, RW))
        await asp.copy_out(BASE, b"x" * (3 * P))
        await fork_and_merge(asp, keep_child=False)
        await asp.mprotect(BASE + P, P, R)
        await expect_fault(asp.copy_out(BASE, b"y" * (3 * P)), P)
        await expect_fault(asp.copy_out(BASE + 2 * P - 1, b"z" * 2), 0)
        assert await asp.copy_out(BASE + 2 * P, b"w" * P) == P
        await asp.mprotect(BASE + P, P, NONE)
        await expect_fault(asp.copy_in(BASE, 3 * P), P)
        await asp.mprotect(BASE + P, P, RW)
        assert await asp.copy_out(BASE, b"v" * (3 * P)) == 3 * P
        asp.check_invariants()


async def test_mremap_of_a_taken_over_page_keeps_its_neighbours_read_only(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await read_only_around_writable(asp)
        await fork_and_merge(asp, keep_child=False)
        assert await asp.copy_out(BASE + P, b"a" * 16) == 16
        # Move the writable page away and back; then move it in front of a
        # read-only mapping: its permissions travel with it, no further.
        moved = await asp.mremap(
            BASE + P, P, P, move=MRemapMove.MUST_MOVE, new_addr=FREE
        )
        assert moved == FREE
        await asp.mmap(anon(FREE + P, 1, R))
        await expect_fault(asp.copy_out(FREE + 8, b"b" * P), P - 8)
        assert (
            await asp.mremap(FREE, P, P, move=MRemapMove.MUST_MOVE, new_addr=BASE + P)
            == BASE + P
        )
        await expect_fault(asp.copy_out(BASE + P + 8, b"c" * P), P - 8)
        await expect_fault(asp.copy_out(BASE + P - 1, b"d"), 0)
        assert await asp.copy_in(BASE + P, 16) == b"a" * 8 + b"c" * 8
        assert await asp.copy_in(FREE + P, P) == bytes(P)
        asp.check_invariants()


# --------------------------------------------------------------------------
# The invariant itself


async def test_check_invariants_catches_a_pma_allowing_more_than_its_vma(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(BASE, 1, R))
        asp.check_invariants()
        segs = asp._pmas.segs
        (seg,) = list(segs)
        pma = seg.value
        segs.set_value(seg, pma.with_perms(RW, pma.max_perms, need_cow=False))
        with pytest.raises(InvariantError, match="allows more than vma"):
            asp.check_invariants()
        segs.set_value(segs.find(BASE), pma)  # type: ignore[arg-type]
        asp.check_invariants()
