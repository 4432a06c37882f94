"""Truncation through mapped pages: what every mapping space keeps and drops.

A file mapped by several spaces, each holding one pma over all of it, is cut
to a size inside one of its pages. Every space must then keep the pages
before the new end (with their bytes; the cut page's tail reads as zero),
lose the pages after it (a fault there is a bus error, as ``SIGBUS`` past
the end of a file), tell its platform of the dropped pages while they are
still referenced, and leave every page reference balanced. The same holds
for an invalidation that trims a pma at its head or cuts a hole in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddrRange,
    BusError,
    InvalidateOpts,
    Layout,
    MemoryFile,
    MemoryKind,
    MMapOpts,
    SharedMemory,
)
from tests.test_mm_platform import RecordingPlatform, check_mirror

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
R = AccessType.READ
RW = AccessType.READ_WRITE
PAGES = 4
DATA = bytes((i * 7 + 3) % 251 for i in range(PAGES * P))


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    with MemoryFile("test-truncate", chunk_size=2 << 20) as f:
        yield f


async def _space(mf: MemoryFile, shm: SharedMemory, *, private: bool) -> AddressSpace:
    """A space mapping the whole file at BASE, with every page faulted."""
    asp = AddressSpace(mf, layout=LAYOUT, platform=RecordingPlatform())
    perms = RW if private else R
    addr = await asp.mmap(
        MMapOpts(
            length=PAGES * P,
            addr=BASE,
            fixed=True,
            mappable=shm,
            mapping_identity=shm,
            perms=perms,
            max_perms=AccessType.ANY,
            private=private,
        )
    )
    assert addr == BASE
    assert await asp.copy_in(BASE, PAGES * P) == DATA
    return asp


async def _file(mf: MemoryFile) -> SharedMemory:
    shm = SharedMemory(mf, PAGES * P, name="cut")
    await shm.write(0, DATA)
    return shm


async def test_cut_inside_a_page_keeps_the_pages_before_it_in_every_space(
    mf: MemoryFile,
) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        spaces = [await _space(mf, shm, private=i % 2 == 1) for i in range(6)]
        # A private mapping with its own copy of a page past the cut: the
        # copy goes too (truncation invalidates private copies).
        await spaces[1].copy_out(BASE + 3 * P, b"own")
        for asp in spaces:
            assert asp.statistics().pmas <= 2
        cut = 2 * P + 100
        await shm.truncate(cut)
        kept = DATA[:cut] + bytes(3 * P - cut)
        for i, asp in enumerate(spaces):
            check_mirror(asp)
            assert asp.statistics().rss == 3 * P
            # Breaking copy-on-write copied the whole pma (up to the huge page
            # size), so the private copies of the pages before the cut keep
            # the bytes they had; every other space sees the cut page zeroed.
            expect = DATA[: 3 * P] if i == 1 else kept
            assert await asp.copy_in(BASE, 3 * P) == expect
            with pytest.raises(BusError):
                await asp.handle_fault(BASE + 3 * P, R)
            assert asp.statistics().rss == 3 * P
            check_mirror(asp)
        # The file holds its three pages and space 1 its three private
        # copies; nothing else is referenced.
        by_kind = mf.statistics().bytes_by_kind
        assert by_kind[MemoryKind.TMPFS] == 3 * P
        assert by_kind[MemoryKind.ANONYMOUS] == 3 * P
        assert mf.statistics().used_bytes == 6 * P
        for asp in spaces:
            await asp.aclose()
        await shm.aclose()
        assert mf.statistics().used_bytes == 0
        mf.check_invariants()


async def test_cut_at_a_page_boundary_then_growing_again(mf: MemoryFile) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        spaces = [await _space(mf, shm, private=False) for _ in range(3)]
        await shm.truncate(P)
        for asp in spaces:
            check_mirror(asp)
            assert asp.statistics().rss == P
            assert await asp.copy_in(BASE, P) == DATA[:P]
            with pytest.raises(BusError):
                await asp.handle_fault(BASE + P, R)
        # Grown again, the dropped pages come back as zeros.
        await shm.truncate(PAGES * P)
        for asp in spaces:
            assert await asp.copy_in(BASE, PAGES * P) == DATA[:P] + bytes(3 * P)
            check_mirror(asp)
        for asp in spaces:
            await asp.aclose()
        await shm.aclose()
        assert mf.statistics().used_bytes == 0


async def test_truncate_to_zero_drops_every_pma(mf: MemoryFile) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        spaces = [await _space(mf, shm, private=False) for _ in range(3)]
        await shm.truncate(0)
        for asp in spaces:
            check_mirror(asp)
            assert asp.statistics().rss == 0
            assert asp.statistics().pmas == 0
            with pytest.raises(BusError):
                await asp.handle_fault(BASE, R)
        assert mf.statistics().used_bytes == 0
        for asp in spaces:
            await asp.aclose()
        await shm.aclose()


@pytest.mark.parametrize(
    ("first", "last", "kept_pages"),
    [
        (0, 1, [1, 2, 3]),  # the head of the pma
        (1, 3, [0, 3]),  # a hole in its middle
        (3, 4, [0, 1, 2]),  # its tail
        (0, 4, []),  # all of it
    ],
)
async def test_invalidating_part_of_a_pma_keeps_the_rest(
    mf: MemoryFile, first: int, last: int, kept_pages: list[int]
) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        asp = await _space(mf, shm, private=False)
        assert asp.statistics().pmas == 1
        platform = asp.platform
        assert isinstance(platform, RecordingPlatform)
        await asp.invalidate(
            AddrRange(BASE + first * P, BASE + last * P),
            InvalidateOpts(invalidate_private=False),
        )
        check_mirror(asp)
        assert sorted((a - BASE) // P for a in platform.pages) == kept_pages
        assert asp.statistics().rss == len(kept_pages) * P
        # Each kept page is still the file's page, with its bytes; the
        # dropped ones translate again.
        for page in kept_pages:
            assert (
                await asp.copy_in(BASE + page * P, P) == DATA[page * P : (page + 1) * P]
            )
        assert await asp.copy_in(BASE, PAGES * P) == DATA
        assert asp.statistics().rss == PAGES * P
        check_mirror(asp)
        await asp.aclose()
        await shm.aclose()
        assert mf.statistics().used_bytes == 0


@pytest.mark.parametrize("invalidate_private", [False, True])
async def test_private_copies_are_trimmed_only_when_asked(
    mf: MemoryFile, invalidate_private: bool
) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        asp = await _space(mf, shm, private=True)
        await asp.copy_out(BASE, b"mine")
        assert asp.statistics().pmas == 1
        await asp.invalidate(
            AddrRange(BASE + 2 * P, BASE + PAGES * P),
            InvalidateOpts(invalidate_private=invalidate_private),
        )
        check_mirror(asp)
        kept = 2 * P if invalidate_private else PAGES * P
        assert asp.statistics().rss == kept
        assert await asp.copy_in(BASE, 2 * P) == b"mine" + DATA[4 : 2 * P]
        # Faulted again, the dropped pages are the file's (the copy is gone).
        assert await asp.copy_in(BASE + 2 * P, 2 * P) == DATA[2 * P :]
        check_mirror(asp)
        await asp.aclose()
        await shm.aclose()
        assert mf.statistics().used_bytes == 0


async def test_an_invalidation_that_overlaps_no_pma_changes_nothing(
    mf: MemoryFile,
) -> None:
    with anyio.fail_after(30):
        shm = await _file(mf)
        asp = await _space(mf, shm, private=False)
        await asp.invalidate(
            AddrRange(BASE + PAGES * P, BASE + 2 * PAGES * P),
            InvalidateOpts(invalidate_private=True),
        )
        await asp.invalidate(
            AddrRange(BASE - 2 * P, BASE), InvalidateOpts(invalidate_private=True)
        )
        assert asp.statistics().rss == PAGES * P
        assert asp.statistics().pmas == 1
        check_mirror(asp)
        await asp.aclose()
        await shm.aclose()
