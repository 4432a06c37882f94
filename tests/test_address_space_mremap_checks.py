"""``mremap`` checks as Linux does: what it refuses, and that a refusal changes nothing.

* ``old_size`` 0 asks for a copy of the mapping; Linux makes one only of a
  shared mapping and refuses private ones with ``EINVAL``, whatever the
  move mode.
* ``MUST_MOVE`` (``MREMAP_FIXED``) checks everything before it unmaps the
  destination and, when shrinking, the old range's tail: when it fails
  they are still mapped (SPEC R4: bad input changes nothing).
* Its errors name ``mremap``, also those found by the steps it shares with
  ``mmap`` (placement, limits).
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
    Layout,
    Limits,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
TOP = 0x400000
LAYOUT = Layout(min_addr=0x10000, max_addr=TOP, bottom_up_base=BASE, top_down_base=TOP)
NO_MOVE, MAY_MOVE, MUST_MOVE = (
    MRemapMove.NO_MOVE,
    MRemapMove.MAY_MOVE,
    MRemapMove.MUST_MOVE,
)


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("asp-mremap-checks")
    yield f
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def anon(addr: int, n: int, perms: AccessType = AccessType.READ_WRITE) -> MMapOpts:
    return MMapOpts(n * P, private=True, perms=perms, addr=addr, fixed=True)


async def refused(asp: AddressSpace, err: int, aw: object) -> str:
    """Await ``aw``: it must fail with ``err``, change nothing; return its message."""
    asp.check_invariants()
    before = (asp.maps(), asp.statistics().rss, asp.statistics().usage_as)
    with pytest.raises(AddressSpaceError) as info:
        await aw  # type: ignore[misc]
    assert info.value.errno == err, info.value
    assert (asp.maps(), asp.statistics().rss, asp.statistics().usage_as) == before
    asp.check_invariants()
    return str(info.value.strerror)


@pytest.mark.parametrize("move", list(MRemapMove), ids=lambda m: m.name)
@pytest.mark.parametrize("file", [False, True], ids=["anonymous", "file"])
async def test_mremap_of_private_memory_with_old_size_0_is_einval(
    mf: MemoryFile, move: MRemapMove, file: bool
) -> None:
    sm = SharedMemory(mf, 4 * P)
    try:
        async with AddressSpace(mf, layout=LAYOUT) as asp:
            if file:
                opts = MMapOpts(
                    3 * P,
                    mappable=sm,
                    mapping_identity=sm,
                    private=True,
                    addr=BASE,
                    fixed=True,
                )
            else:
                opts = anon(BASE, 3)
            await asp.mmap(opts)
            new_addr = BASE + 8 * P if move is MUST_MOVE else 0
            message = await refused(
                asp,
                errno.EINVAL,
                asp.mremap(BASE + P, 0, 2 * P, move=move, new_addr=new_addr),
            )
            assert message.startswith("mremap: ")
    finally:
        await sm.dec_ref()


async def test_mremap_of_shared_memory_with_old_size_0_copies_it(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(MMapOpts(2 * P, private=False, addr=BASE, fixed=True))
        await asp.copy_out(BASE, b"shared")
        got = await asp.mremap(BASE, 0, P, move=MUST_MOVE, new_addr=BASE + 8 * P)
        assert got == BASE + 8 * P
        await asp.copy_out(got, b"S")
        assert await asp.copy_in(BASE, 6) == b"Shared"
        asp.check_invariants()


async def test_mremap_copy_onto_its_own_address_unmaps_it_then_faults(
    mf: MemoryFile,
) -> None:
    """A copy (old_size 0) to a destination that covers ``old_addr``: Linux
    unmaps the destination first, then finds nothing to copy."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(MMapOpts(3 * P, private=False, addr=BASE, fixed=True))
        with pytest.raises(AddressSpaceError) as info:
            await asp.mremap(BASE + P, 0, P, move=MUST_MOVE, new_addr=BASE + P)
        assert info.value.errno == errno.EFAULT
        assert asp.statistics().usage_as == 2 * P
        assert len(asp.maps().splitlines()) == 2 + 1  # two pieces, [vsyscall]
        asp.check_invariants()


async def test_failed_mremap_fixed_leaves_its_destination_mapped(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        # The old range [BASE, BASE + 3P) is one page and a hole.
        await asp.mmap(anon(BASE, 1))
        await asp.mmap(anon(BASE + 8 * P, 4))
        await asp.copy_out(BASE + 8 * P, b"destination")
        await refused(
            asp,
            errno.EFAULT,
            asp.mremap(BASE, 3 * P, 3 * P, move=MUST_MOVE, new_addr=BASE + 9 * P),
        )
        assert await asp.copy_in(BASE + 8 * P, 11) == b"destination"


async def test_failed_shrinking_mremap_fixed_leaves_its_tail_mapped(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        # [BASE, BASE + 4P): a page, a hole, two pages; the kept part
        # [BASE, BASE + 2P) spans the hole.
        await asp.mmap(anon(BASE, 1))
        await asp.mmap(anon(BASE + 2 * P, 2, AccessType.READ))
        await asp.mmap(anon(BASE + 8 * P, 2))
        await refused(
            asp,
            errno.EFAULT,
            asp.mremap(BASE, 4 * P, 2 * P, move=MUST_MOVE, new_addr=BASE + 8 * P),
        )


async def test_failed_mremap_fixed_over_the_limit_leaves_its_destination_mapped(
    mf: MemoryFile,
) -> None:
    """``RLIMIT_AS`` counts the growth against what is mapped before the
    destination would be unmapped (Linux's ``may_expand_vm``)."""
    async with AddressSpace(
        mf, layout=LAYOUT, limits=Limits(address_space=4 * P)
    ) as asp:
        await asp.mmap(anon(BASE, 1))
        await asp.mmap(anon(BASE + 8 * P, 2))
        message = await refused(
            asp,
            errno.ENOMEM,
            asp.mremap(BASE, P, 3 * P, move=MUST_MOVE, new_addr=BASE + 8 * P),
        )
        assert message.startswith("mremap: ")


async def test_shrinking_mremap_fixed_unmaps_the_tail_whatever_it_covers(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(BASE, 2))
        await asp.mmap(anon(BASE + 3 * P, 1))
        await asp.copy_out(BASE, b"kept")
        got = await asp.mremap(BASE, 4 * P, P, move=MUST_MOVE, new_addr=BASE + 8 * P)
        assert got == BASE + 8 * P
        assert await asp.copy_in(got, 4) == b"kept"
        assert asp.statistics().usage_as == P
        asp.check_invariants()


@pytest.mark.parametrize(
    ("call", "err"),
    [
        # Growing in place into the next mapping.
        (lambda asp: asp.mremap(BASE, P, 2 * P), errno.ENOMEM),
        # No room anywhere for a moving growth.
        (lambda asp: asp.mremap(BASE, P, TOP, move=MAY_MOVE), errno.ENOMEM),
        # The destination is outside the layout.
        (
            lambda asp: asp.mremap(BASE, P, P, move=MUST_MOVE, new_addr=TOP),
            errno.ENOMEM,
        ),
    ],
    ids=["grow-in-place", "may-move-no-room", "must-move-outside"],
)
async def test_mremap_errors_name_mremap(
    mf: MemoryFile, call: object, err: int
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(BASE, 1))
        await asp.mmap(anon(BASE + P, 1, AccessType.READ))
        message = await refused(asp, err, call(asp))  # type: ignore[operator]
        assert message.startswith("mremap: "), message
        assert "mmap" not in message, message


async def test_mremap_growth_past_the_memlock_limit_names_mremap(
    mf: MemoryFile,
) -> None:
    limits = Limits(memlock=2 * P)
    async with AddressSpace(mf, layout=LAYOUT, limits=limits) as asp:
        await asp.mmap(anon(BASE, 1))
        await asp.mlock(BASE, P)
        message = await refused(asp, errno.EAGAIN, asp.mremap(BASE, P, 3 * P))
        assert message.startswith("mremap: "), message
