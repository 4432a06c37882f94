"""How far a file mapping may reach: ``2**63 - 1``, the largest file (SPEC R7).

Linux (``MAX_LFS_FILESIZE``) and gVisor (its file layer's ``MaxInt64``
check) refuse a file mapping whose offset plus rounded length passes the
largest file size with ``EOVERFLOW``; nothing is mapped and the Mappable is
not asked. Anonymous mappings have no offset.
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
    BusError,
    Layout,
    MemoryFile,
    MMapOpts,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
LARGEST = (1 << 63) - 1


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("asp-file-offsets")
    yield f
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def file_opts(sm: SharedMemory, offset: int, length: int, *, private: bool) -> MMapOpts:
    return MMapOpts(
        length,
        mappable=sm,
        mapping_identity=sm,
        offset=offset,
        addr=BASE,
        fixed=True,
        private=private,
        perms=AccessType.READ,
    )


@pytest.mark.parametrize("private", [True, False], ids=["private", "shared"])
@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (2**64 - P, P),  # ends at 2**64
        (2**64 - 2 * P, P),
        ((1 << 63) - P, P),  # ends at 2**63, one byte too far
        ((1 << 63) - P, 1),  # the rounded length counts
        ((1 << 63) - 2 * P, P + 1),
        (0, 1 << 63),
    ],
    ids=["to-2**64", "below-2**64", "to-2**63", "one-byte", "rounded", "from-0"],
)
async def test_mmap_of_a_file_past_the_largest_file_is_eoverflow(
    mf: MemoryFile, offset: int, length: int, private: bool
) -> None:
    sm = SharedMemory(mf, P)
    try:
        async with AddressSpace(mf, layout=LAYOUT) as asp:
            with pytest.raises(AddressSpaceError) as info:
                await asp.mmap(file_opts(sm, offset, length, private=private))
            assert info.value.errno == errno.EOVERFLOW
            assert str(info.value.strerror).startswith("mmap: ")
            assert asp.statistics().vmas == 0
            assert not sm.is_mapped()
    finally:
        await sm.dec_ref()


async def test_mmap_of_a_file_ending_at_the_largest_file_is_mapped(
    mf: MemoryFile,
) -> None:
    sm = SharedMemory(mf, P)
    try:
        async with AddressSpace(mf, layout=LAYOUT) as asp:
            offset = (LARGEST + 1) - 2 * P
            addr = await asp.mmap(file_opts(sm, offset, P, private=True))
            assert addr == BASE
            assert asp.maps().splitlines()[0].split()[2] == f"{offset:08x}"
            # Far past the end of the object: a bus error, as in Linux.
            with pytest.raises(BusError):
                await asp.copy_in(BASE, 1)
            asp.check_invariants()
    finally:
        await sm.dec_ref()


async def test_eoverflow_comes_before_the_placement_errors(mf: MemoryFile) -> None:
    """gVisor's order: the file layer refuses the offset before the mapping
    is placed (Linux places first; the oracle's table lists the difference)."""
    sm = SharedMemory(mf, P)
    try:
        async with AddressSpace(mf, layout=LAYOUT) as asp:
            await asp.mmap(MMapOpts(P, private=True, addr=BASE, fixed=True))
            opts = MMapOpts(
                P,
                mappable=sm,
                mapping_identity=sm,
                offset=1 << 63,
                addr=BASE,
                fixed=True,
                no_replace=True,
            )
            with pytest.raises(AddressSpaceError) as info:
                await asp.mmap(opts)
            assert info.value.errno == errno.EOVERFLOW
    finally:
        await sm.dec_ref()


async def test_anonymous_mmap_ignores_the_offset(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        opts = MMapOpts(P, private=True, offset=2**64 - P, addr=BASE, fixed=True)
        assert await asp.mmap(opts) == BASE
        assert await asp.copy_in(BASE, 4) == bytes(4)
