"""gVisor's ``mm`` tests ported to :class:`AddressSpace`, plus the scenarios
that follow from its semantics (reference §6.11), plus ``maps()`` format.

* ``mm_test.go``: TestUsageASUpdates, TestDataASUpdates,
  TestBrkDataLimitUpdates, TestIOAfterUnmap, TestIOAfterMProtect; the
  allocation direction (bottom-up and top-down layouts) through placement.
* The nine derived scenarios: copy-on-write after fork, shared anonymous
  memory across fork, private file mappings against invalidation,
  MADV_DONTNEED, munmap of a middle page, merging of adjacent mappings, a
  copy over [mapped, hole], EEXIST/ENOMEM for fixed mappings, EACCES from
  mprotect.
* ``/proc/pid/maps`` lines, exactly as gVisor formats them (§6.9).

Every test owns its :class:`MemoryFile`; the ``mf`` fixture checks that no
page is left in use once the test closed everything (SPEC R1).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from aiomemmap import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    AddrRange,
    Advice,
    BusError,
    BytesBacking,
    CachedFile,
    InvalidateOpts,
    Layout,
    Limits,
    MappableRange,
    MemoryFault,
    MemoryFile,
    MLockMode,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)

P = PAGE_SIZE
MiB = 1 << 20
BASE = 0x100000
TOP = 1 << 32
LAYOUT = Layout(min_addr=0x10000, max_addr=TOP, bottom_up_base=BASE, top_down_base=TOP)
TOP_DOWN = Layout(
    min_addr=0x10000,
    max_addr=TOP,
    bottom_up_base=BASE,
    top_down_base=TOP,
    top_down=True,
)
R = AccessType.READ
W = AccessType.WRITE
RW = AccessType.READ_WRITE
RX = AccessType.READ_EXECUTE
ANY = AccessType.ANY
NONE = AccessType.NO_ACCESS
VSYSCALL = (
    "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0"
    + " " * 18
    + "[vsyscall]\n"
)


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    f = MemoryFile("t")
    try:
        yield f
        # R1: everything the test made is closed; no page is in use.
        assert f.statistics().used_bytes == 0, f.statistics()
    finally:
        f.close()


def anon(length: int = P, **kw: object) -> MMapOpts:
    return MMapOpts(length=length, private=True, **kw)  # type: ignore[arg-type]


def file_opts(m: object, length: int, **kw: object) -> MMapOpts:
    """A mapping of a SharedMemory (or any object that is both roles)."""
    return MMapOpts(length=length, mappable=m, mapping_identity=m, **kw)  # type: ignore[arg-type]


def lines(asp: AddressSpace) -> list[str]:
    """The maps lines without the final vsyscall line (and without newlines)."""
    text = asp.maps()
    assert text.endswith(VSYSCALL)
    body = text[: -len(VSYSCALL)]
    return body.splitlines()


def parsed(asp: AddressSpace) -> list[tuple[int, int, str]]:
    """(start, end, perms) of each maps line."""
    out = []
    for line in lines(asp):
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        out.append((start, end, perms))
    return out


def usage_from_maps(asp: AddressSpace) -> int:
    return sum(end - start for start, end, _ in parsed(asp))


def data_from_maps(asp: AddressSpace) -> int:
    """Private and writable (none of these tests maps a grows-down vma)."""
    return sum(
        end - start
        for start, end, perms in parsed(asp)
        if perms[1] == "w" and perms[3] == "p"
    )


def used(mf: MemoryFile) -> int:
    return mf.statistics().used_bytes


class Identity:
    """A MappingIdentity with a chosen device, inode and name."""

    def __init__(self, name: str, dev: int, ino: int) -> None:
        self.name, self.dev, self.ino = name, dev, ino
        self.refs = 1

    def inc_ref(self) -> None:
        self.refs += 1

    async def dec_ref(self) -> None:
        assert self.refs > 0
        self.refs -= 1

    def mapped_name(self) -> str:
        return self.name

    def device_id(self) -> int:
        return self.dev

    def inode_id(self) -> int:
        return self.ino

    async def msync(self, mr: MappableRange) -> None:
        pass


# ==========================================================================
# mm_test.go


async def test_usage_as_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(2 * P))
        assert asp.statistics().usage_as == 2 * P == usage_from_maps(asp)
        asp.check_invariants()
        await asp.munmap(addr, P)
        assert asp.statistics().usage_as == P == usage_from_maps(asp)
        asp.check_invariants()


async def test_data_as_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(3 * P, perms=W, max_perms=ANY))
        st = asp.statistics()
        assert st.data_as != 0
        assert st.data_as == 3 * P == data_from_maps(asp)
        asp.check_invariants()

        await asp.munmap(addr, P)
        assert asp.statistics().data_as == 2 * P == data_from_maps(asp)
        asp.check_invariants()

        await asp.mprotect(addr + P, P, R)
        assert asp.statistics().data_as == P == data_from_maps(asp)
        asp.check_invariants()

        await asp.mremap(addr + 2 * P, P, 2 * P, move=MRemapMove.MAY_MOVE)
        assert asp.statistics().data_as == 2 * P == data_from_maps(asp)
        asp.check_invariants()


async def test_brk_data_limit_updates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(data=0)) as asp:
        old = await asp.brk(0)
        assert await asp.brk(old + P) == old
        assert asp.maps() == VSYSCALL
        # The same with a heap placed somewhere.
        await asp.brk_setup(0x600000)
        old = await asp.brk(0)
        assert old == 0x600000
        assert await asp.brk(old + P) == old
        assert await asp.brk(old + 1) == old
        assert asp.maps() == VSYSCALL
        assert asp.statistics().usage_as == 0
        asp.check_invariants()


async def test_io_after_unmap(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(P, perms=R))
        assert await asp.copy_in(addr, 1) == b"\0"
        await asp.munmap(addr, P)
        with pytest.raises(MemoryFault) as info:
            await asp.copy_in(addr, 1)
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == 0
        assert info.value.data == b""
        asp.check_invariants()


async def test_io_after_mprotect(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(P, perms=RW))
        assert await asp.copy_out(addr, b"a") == 1
        await asp.mprotect(addr, P, R)
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(addr, b"b")
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == 0
        assert await asp.copy_in(addr, 1) == b"a"
        assert await asp.copy_out(addr, b"c", ignore_permissions=True) == 1
        assert await asp.copy_in(addr, 1) == b"c"
        asp.check_invariants()


# --------------------------------------------------------------------------
# Allocation direction and placement (findAvailableLocked)


async def test_bottom_up_layout_places_ascending(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addrs = [await asp.mmap(anon(P)) for _ in range(3)]
        assert addrs == [BASE, BASE + P, BASE + 2 * P]
        # Identical adjacent anonymous mappings merged.
        assert parsed(asp) == [(BASE, BASE + 3 * P, "rw-p")]
        # The lowest gap that fits is reused.
        await asp.munmap(BASE + P, P)
        assert await asp.mmap(anon(P)) == BASE + P
        # A gap too small is skipped.
        await asp.munmap(BASE + P, P)
        assert await asp.mmap(anon(2 * P)) == BASE + 3 * P
        asp.check_invariants()


async def test_top_down_layout_places_descending(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=TOP_DOWN) as asp:
        addrs = [await asp.mmap(anon(P)) for _ in range(3)]
        assert addrs == [TOP - P, TOP - 2 * P, TOP - 3 * P]
        assert parsed(asp) == [(TOP - 3 * P, TOP, "rw-p")]
        await asp.munmap(TOP - 2 * P, P)
        assert await asp.mmap(anon(P)) == TOP - 2 * P
        asp.check_invariants()


async def test_top_down_search_starts_below_top_down_base(mf: MemoryFile) -> None:
    layout = Layout(
        min_addr=0x10000,
        max_addr=TOP,
        bottom_up_base=BASE,
        top_down_base=0x8000_0000,
        top_down=True,
    )
    async with AddressSpace(mf, layout=layout) as asp:
        assert await asp.mmap(anon(P)) == 0x8000_0000 - P
        assert await asp.mmap(anon(P)) == 0x8000_0000 - 2 * P


async def test_huge_aligned_private_lengths_are_huge_aligned(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        # A shared mapping is not huge-aligned: it takes the gap at BASE (1 MiB).
        s = await asp.mmap(MMapOpts(length=HUGE_PAGE_SIZE, private=False))
        assert s == BASE
        # A 2 MiB private mapping goes to the next 2 MiB boundary (not 3 MiB).
        a = await asp.mmap(anon(HUGE_PAGE_SIZE))
        assert a == 4 * MiB
        # A non-huge-aligned length is not aligned either: 3 MiB is free.
        assert await asp.mmap(anon(P)) == 3 * MiB
        asp.check_invariants()
    layout = Layout(
        min_addr=0x10000,
        max_addr=TOP,
        bottom_up_base=BASE,
        top_down_base=TOP - P,
        top_down=True,
    )
    async with AddressSpace(mf, layout=layout) as asp:
        # Top-down: the highest 2 MiB-aligned start below top_down_base.
        assert await asp.mmap(anon(HUGE_PAGE_SIZE)) == TOP - 2 * HUGE_PAGE_SIZE
        # The rest of the space below top_down_base is still free.
        assert await asp.mmap(anon(P)) == TOP - 2 * P


async def test_hints_honoured_when_free(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        assert await asp.mmap(anon(P, addr=0x300000)) == 0x300000
        # An unaligned hint without fixed is rounded down.
        assert await asp.mmap(anon(P, addr=0x500123)) == 0x500000
        # An occupied hint without fixed is searched from the bottom-up base.
        assert await asp.mmap(anon(P, addr=0x300000)) == BASE
        # A hint outside [min_addr, max_addr) is ignored, not an error.
        assert await asp.mmap(anon(P, addr=0x1000)) == BASE + P
        assert await asp.mmap(anon(P, addr=TOP)) == BASE + 2 * P
        asp.check_invariants()


async def test_map_32bit(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(P, map_32bit=True))
        assert a == 0x4000_0000
        b = await asp.mmap(anon(P, map_32bit=True))
        assert b == 0x4000_0000 + P
        # map_32bit is ignored with fixed.
        assert (
            await asp.mmap(anon(P, addr=0x300000, fixed=True, map_32bit=True))
            == 0x300000
        )


async def test_guard_gap_below_grows_down_mapping(mf: MemoryFile) -> None:
    stack = 0x800000
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        assert (
            await asp.mmap(anon(4 * P, addr=stack, fixed=True, grows_down=True))
            == stack
        )
        before = asp.maps()
        # A hint inside the 1 MiB guard below the stack is not honoured...
        got = await asp.mmap(anon(P, addr=stack - P))
        assert got == BASE
        await asp.munmap(got, P)
        assert asp.maps() == before
        # ...and a fixed mapping there fails with ENOMEM...
        with pytest.raises(AddressSpaceError) as info:
            await asp.mmap(anon(P, addr=stack - P, fixed=True))
        assert info.value.errno == errno.ENOMEM
        assert asp.maps() == before
        # ...just below the guard it is fine.
        guard = 256 * P
        assert await asp.mmap(anon(P, addr=stack - guard - P)) == stack - guard - P
        # no_replace may overlap guard pages (it only needs an unmapped range),
        # and unmap always takes the range.
        assert await asp.mmap(anon(P, addr=stack - P, fixed=True, no_replace=True)) == (
            stack - P
        )
        assert await asp.mmap(anon(P, addr=stack - 2 * P, fixed=True, unmap=True)) == (
            stack - 2 * P
        )
        asp.check_invariants()


async def test_search_skips_gaps_in_the_guard(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(P, addr=BASE, fixed=True))
        stack = BASE + 3 * P
        await asp.mmap(anon(P, addr=stack, fixed=True, grows_down=True))
        # The gap [BASE + P, stack) is smaller than the guard: unavailable.
        assert await asp.mmap(anon(P)) == stack + P
        asp.check_invariants()


# ==========================================================================
# Derived scenarios (§6.11)


async def test_cow_after_fork(mf: MemoryFile) -> None:
    """Scenario 1: fork shares private pages copy-on-write."""
    a, b, c, d = (bytes([x]) * (2 * P) for x in b"ABCD")
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(anon(2 * P))
        await parent.copy_out(addr, a)
        assert used(mf) == 2 * P
        child = await parent.fork()
        try:
            assert child.maps() == parent.maps()
            assert child.statistics().rss == 2 * P
            assert used(mf) == 2 * P  # shared, not copied
            assert await child.copy_in(addr, 2 * P) == a
            assert parent.statistics().cow_copies == 0

            await parent.copy_out(addr, b)
            assert parent.statistics().cow_copies == 2
            assert used(mf) == 4 * P
            assert await child.copy_in(addr, 2 * P) == a
            assert await parent.copy_in(addr, 2 * P) == b

            # The child now holds the only reference: it takes the pages over.
            await child.copy_out(addr, c)
            assert child.statistics().cow_copies == 0
            assert used(mf) == 4 * P
            assert await child.copy_in(addr, 2 * P) == c
            assert await parent.copy_in(addr, 2 * P) == b
            child.check_invariants()
            parent.check_invariants()
        finally:
            await child.aclose()
        assert used(mf) == 2 * P
        copies = parent.statistics().cow_copies
        await parent.copy_out(addr, d)
        assert parent.statistics().cow_copies == copies
        assert await parent.copy_in(addr, 2 * P) == d
        parent.check_invariants()


async def test_parent_writes_without_copy_after_child_exits(mf: MemoryFile) -> None:
    """Scenario 1, second half: a unique reference is taken over, not copied."""
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(anon(2 * P))
        await parent.copy_out(addr, b"A" * (2 * P))
        child = await parent.fork()
        await child.aclose()
        await parent.copy_out(addr, b"B" * (2 * P))
        assert parent.statistics().cow_copies == 0
        assert used(mf) == 2 * P
        assert await parent.copy_in(addr, 2 * P) == b"B" * (2 * P)
        parent.check_invariants()


async def test_child_write_does_not_reach_parent(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(anon(P))
        await parent.copy_out(addr, b"A")
        async with await parent.fork() as child:
            await child.copy_out(addr, b"Z")
            assert child.statistics().cow_copies == 1
            assert await parent.copy_in(addr, 1) == b"A"
            assert await child.copy_in(addr, 1) == b"Z"


async def test_shared_anonymous_memory_across_fork(mf: MemoryFile) -> None:
    """Scenario 2: shared anonymous memory stays shared with the child."""
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        addr = await parent.mmap(MMapOpts(length=2 * P, private=False))
        await parent.copy_out(addr, b"p")
        async with await parent.fork() as child:
            assert await child.copy_in(addr, 1) == b"p"
            await child.copy_out(addr + 1, b"Z")
            assert await parent.copy_in(addr, 2) == b"pZ"
            await parent.copy_out(addr + P, b"Q")
            assert await child.copy_in(addr + P, 1) == b"Q"
            assert parent.statistics().cow_copies == 0
            assert child.statistics().cow_copies == 0
            child.check_invariants()
        # The parent still has it after the child is gone.
        assert await parent.copy_in(addr, 2) == b"pZ"
        assert lines(parent)[0].split()[1] == "rw-s"


async def test_private_file_mapping_versus_invalidate(mf: MemoryFile) -> None:
    """Scenario 3: private copies survive an invalidation unless
    ``invalidate_private``."""
    sm = SharedMemory(mf, 2 * P, name="/file")
    await sm.write(0, b"F" * (2 * P))
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            file_opts(sm, 2 * P, private=True, perms=RW, max_perms=ANY)
        )
        assert await asp.copy_in(addr, 2 * P) == b"F" * (2 * P)
        # Unwritten pages show the file, changes included.
        await sm.write(P, b"G" * 8)
        assert await asp.copy_in(addr + P, 8) == b"G" * 8
        await asp.copy_out(addr, b"P" * 8)
        assert asp.statistics().cow_copies >= 1
        # Writes never reach the Mappable.
        assert await sm.read(0, 8) == b"F" * 8
        # A written page shows its private copy, whatever the file does.
        await sm.write(0, b"H" * 8)
        assert await asp.copy_in(addr, 8) == b"P" * 8

        ar = AddrRange(addr, addr + 2 * P)
        await asp.invalidate(ar, InvalidateOpts())
        asp.check_invariants()
        assert await asp.copy_in(addr, 8) == b"P" * 8

        await asp.invalidate(ar, InvalidateOpts(invalidate_private=True))
        asp.check_invariants()
        assert asp.statistics().rss == 0
        assert await asp.copy_in(addr, 8) == b"H" * 8
        assert await asp.copy_in(addr + P, 8) == b"G" * 8
        assert await sm.read(0, 8) == b"H" * 8
    assert not sm.is_mapped()
    await sm.dec_ref()


async def test_private_file_mapping_versus_truncate(mf: MemoryFile) -> None:
    """Truncation invalidates with ``invalidate_private``: private copies go."""
    sm = SharedMemory(mf, 2 * P, name="/file")
    await sm.write(0, b"F" * (2 * P))
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            file_opts(sm, 2 * P, private=True, perms=RW, max_perms=ANY)
        )
        await asp.copy_out(addr, b"P" * 8)
        assert asp.statistics().rss > 0
        await sm.truncate(0)
        assert asp.statistics().rss == 0
        asp.check_invariants()
        with pytest.raises(BusError):
            await asp.handle_fault(addr, R)
        with pytest.raises((BusError, MemoryFault)) as info:
            await asp.copy_in(addr, 8)
        exc = info.value
        assert isinstance(exc, (BusError, MemoryFault))
        assert exc.bytes_done == 0
        await sm.truncate(2 * P)
        # The private data is gone: the file's (zero) contents show.
        assert await asp.copy_in(addr, 8) == bytes(8)
        asp.check_invariants()
    await sm.dec_ref()


async def test_private_file_mapping_data_survives_cache_style_invalidation_of_file(
    mf: MemoryFile,
) -> None:
    """A shared mapping beside it re-translates; the private copy stays."""
    sm = SharedMemory(mf, P, name="/file")
    await sm.write(0, b"F" * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        priv = await asp.mmap(file_opts(sm, P, private=True, perms=RW, max_perms=ANY))
        shared = await asp.mmap(file_opts(sm, P, perms=RW, max_perms=ANY))
        await asp.copy_out(priv, b"p")
        await asp.copy_out(shared, b"s")
        assert await sm.read(0, 1) == b"s"
        assert await asp.copy_in(priv, 1) == b"p"
        await asp.invalidate(
            AddrRange(min(priv, shared), max(priv, shared) + P), InvalidateOpts()
        )
        assert await asp.copy_in(priv, 1) == b"p"
        assert await asp.copy_in(shared, 1) == b"s"
        asp.check_invariants()
    await sm.dec_ref()


async def test_madvise_dontneed_zeroes_anonymous_memory(mf: MemoryFile) -> None:
    """Scenario 4."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(4 * P))
        await asp.copy_out(addr, b"X" * (4 * P))
        assert asp.statistics().rss == 4 * P
        await asp.madvise(addr + P, 2 * P, Advice.DONTNEED)
        assert asp.statistics().rss == 2 * P
        asp.check_invariants()
        data = await asp.copy_in(addr, 4 * P)
        assert data == b"X" * P + bytes(2 * P) + b"X" * P
        await asp.madvise(addr, 4 * P, Advice.DONTNEED)
        assert asp.statistics().rss == 0
        assert await asp.copy_in(addr, 4 * P) == bytes(4 * P)
        # The mapping itself is untouched.
        assert parsed(asp) == [(addr, addr + 4 * P, "rw-p")]
        asp.check_invariants()


async def test_madvise_dontneed_reverts_private_file_mapping(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P, name="/file")
    await sm.write(0, b"F" * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(file_opts(sm, P, private=True, perms=RW, max_perms=ANY))
        await asp.copy_out(addr, b"P" * 4)
        assert await asp.copy_in(addr, 4) == b"PPPP"
        await asp.madvise(addr, P, Advice.DONTNEED)
        assert asp.statistics().rss == 0
        assert await asp.copy_in(addr, 4) == b"FFFF"
        asp.check_invariants()
    await sm.dec_ref()


async def test_munmap_middle_page_splits(mf: MemoryFile) -> None:
    """Scenario 5."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(3 * P, addr=0x400000, fixed=True))
        before = asp.statistics()
        await asp.munmap(addr + P, P)
        assert lines(asp) == [
            "00400000-00401000 rw-p 00000000 00:00 0 ",
            "00402000-00403000 rw-p 00000000 00:00 0 ",
        ]
        st = asp.statistics()
        assert st.usage_as == before.usage_as - P
        assert st.vmas == 2
        assert st.rss == before.rss - P
        asp.check_invariants()


async def test_munmap_middle_of_file_mapping_shifts_offset(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 8 * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(file_opts(sm, 3 * P, offset=2 * P, addr=0x400000, fixed=True))
        await asp.munmap(0x401000, P)
        got = [line.split()[:3] for line in lines(asp)]
        assert got == [
            ["00400000-00401000", "rw-s", "00002000"],
            ["00402000-00403000", "rw-s", "00004000"],
        ]
        asp.check_invariants()
    await sm.dec_ref()


async def test_adjacent_identical_mappings_merge(mf: MemoryFile) -> None:
    """Scenario 6."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(P, addr=0x400000, fixed=True))
        await asp.mmap(anon(2 * P, addr=0x401000, fixed=True))
        assert lines(asp) == ["00400000-00403000 rw-p 00000000 00:00 0 "]
        assert asp.statistics().vmas == 1
        # Different permissions do not merge.
        await asp.mmap(anon(P, addr=0x403000, fixed=True, perms=R))
        assert lines(asp) == [
            "00400000-00403000 rw-p 00000000 00:00 0 ",
            "00403000-00404000 r--p 00000000 00:00 0 ",
        ]
        # mprotect making them identical merges them again.
        await asp.mprotect(0x403000, P, RW)
        assert lines(asp) == ["00400000-00404000 rw-p 00000000 00:00 0 "]
        asp.check_invariants()


async def test_adjacent_file_mappings_merge_only_with_contiguous_offsets(
    mf: MemoryFile,
) -> None:
    sm = SharedMemory(mf, 8 * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(file_opts(sm, P, offset=0, addr=0x400000, fixed=True))
        await asp.mmap(file_opts(sm, P, offset=P, addr=0x401000, fixed=True))
        assert asp.statistics().vmas == 1
        await asp.mmap(file_opts(sm, P, offset=5 * P, addr=0x402000, fixed=True))
        assert asp.statistics().vmas == 2
        assert [line.split()[:3] for line in lines(asp)] == [
            ["00400000-00402000", "rw-s", "00000000"],
            ["00402000-00403000", "rw-s", "00005000"],
        ]
        asp.check_invariants()
    await sm.dec_ref()


async def test_copy_over_mapped_then_hole(mf: MemoryFile) -> None:
    """Scenario 7: the mapped prefix is done, then EFAULT."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(P, addr=0x400000, fixed=True))
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(addr, b"w" * (2 * P))
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == P
        assert await asp.copy_in(addr, P) == b"w" * P

        with pytest.raises(MemoryFault) as info:
            await asp.copy_in(addr + P // 2, P)
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == P // 2
        assert info.value.data == b"w" * (P // 2)

        with pytest.raises(MemoryFault) as info:
            await asp.zero_out(addr + P - 10, 20)
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == 10
        assert await asp.copy_in(addr + P - 12, 12) == b"ww" + bytes(10)
        asp.check_invariants()


async def test_fixed_conflicts(mf: MemoryFile) -> None:
    """Scenario 8: EEXIST with no_replace, ENOMEM without unmap."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(2 * P, addr=0x400000, fixed=True))
        await asp.copy_out(addr, b"keep")
        before = (asp.maps(), asp.statistics())
        for opts, err in [
            (anon(P, addr=addr, fixed=True, no_replace=True), errno.EEXIST),
            (anon(2 * P, addr=addr - P, fixed=True, no_replace=True), errno.EEXIST),
            (anon(P, addr=addr + P, fixed=True), errno.ENOMEM),
            (anon(2 * P, addr=addr + P, fixed=True), errno.ENOMEM),
        ]:
            with pytest.raises(AddressSpaceError) as info:
                await asp.mmap(opts)
            assert info.value.errno == err, opts
            assert (asp.maps(), asp.statistics()) == before
        # With unmap it replaces the old mapping.
        assert (
            await asp.mmap(anon(P, addr=addr, fixed=True, unmap=True, perms=R)) == addr
        )
        assert parsed(asp) == [
            (addr, addr + P, "r--p"),
            (addr + P, addr + 2 * P, "rw-p"),
        ]
        assert await asp.copy_in(addr, 4) == bytes(4)
        asp.check_invariants()


async def test_mprotect_beyond_max_perms(mf: MemoryFile) -> None:
    """Scenario 9."""
    sm = SharedMemory(mf, P, name="/ro")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(P, perms=R, max_perms=R))
        f = await asp.mmap(file_opts(sm, P, perms=R, max_perms=R))
        before = (asp.maps(), asp.statistics())
        for addr in (a, f):
            for perms in (W, RW, RX, ANY):
                with pytest.raises(AddressSpaceError) as info:
                    await asp.mprotect(addr, P, perms)
                assert info.value.errno == errno.EACCES
                assert (asp.maps(), asp.statistics()) == before
            await asp.mprotect(addr, P, NONE)
            await asp.mprotect(addr, P, R)
        assert (asp.maps(), asp.statistics()) == before
        asp.check_invariants()
    await sm.dec_ref()


# --------------------------------------------------------------------------
# Permissions layering and file mappings (§6.4, §9 items 6, 7, 17)


async def test_shared_mapping_upgraded_by_mprotect_writes_the_file(
    mf: MemoryFile,
) -> None:
    """A read-only translation is re-translated for a write after mprotect."""
    sm = SharedMemory(mf, P)
    await sm.write(0, b"old")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(file_opts(sm, P, perms=R, max_perms=ANY))
        assert await asp.copy_in(addr, 3) == b"old"
        with pytest.raises(MemoryFault):
            await asp.copy_out(addr, b"new")
        await asp.mprotect(addr, P, RW)
        assert await asp.copy_out(addr, b"new") == 3
        assert await sm.read(0, 3) == b"new"
        assert asp.statistics().cow_copies == 0
        asp.check_invariants()
    await sm.dec_ref()


async def test_private_copy_survives_mprotect_round_trip(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    await sm.write(0, b"file")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(file_opts(sm, P, private=True, perms=RW, max_perms=ANY))
        await asp.copy_out(addr, b"mine")
        await asp.mprotect(addr, P, R)
        assert await asp.copy_in(addr, 4) == b"mine"
        await asp.mprotect(addr, P, RW)
        await asp.copy_out(addr + 4, b"!")
        assert await asp.copy_in(addr, 5) == b"mine!"
        assert await sm.read(0, 5) == b"file\0"
        asp.check_invariants()
    await sm.dec_ref()


async def test_mremap_move_carries_private_copies_of_a_file(mf: MemoryFile) -> None:
    """Moving must carry the pmas (private data), not re-translate."""
    sm = SharedMemory(mf, 2 * P)
    await sm.write(0, b"F" * (2 * P))
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(
            file_opts(
                sm,
                2 * P,
                private=True,
                perms=RW,
                max_perms=ANY,
                addr=0x400000,
                fixed=True,
            )
        )
        await asp.copy_out(addr, b"private")
        new = await asp.mremap(
            addr, 2 * P, 2 * P, move=MRemapMove.MUST_MOVE, new_addr=0x800000
        )
        assert new == 0x800000
        assert await asp.copy_in(new, 7) == b"private"
        assert await sm.read(0, 7) == b"F" * 7
        assert [x[:2] for x in parsed(asp)] == [(0x800000, 0x802000)]
        # The moved mapping keeps its file offsets.
        assert lines(asp)[0].split()[2] == "00000000"
        asp.check_invariants()
    assert not sm.is_mapped()
    await sm.dec_ref()


async def test_execute_only_and_write_only_are_readable(mf: MemoryFile) -> None:
    """effectivePerms: write and execute imply read (x86)."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        x = await asp.mmap(anon(P, perms=AccessType.EXECUTE))
        w = await asp.mmap(anon(P, perms=W, addr=0x400000))
        await asp.handle_fault(x, R)
        await asp.handle_fault(w, R)
        assert await asp.copy_in(x, 1) == b"\0"
        assert await asp.copy_in(w, 1) == b"\0"
        with pytest.raises(MemoryFault) as info:
            await asp.handle_fault(x, W)
        assert info.value.errno == errno.EPERM


async def test_cached_file_shared_read_only_and_private_mappings(
    mf: MemoryFile,
) -> None:
    data = bytes(range(256)) * (2 * P // 256)
    cf = CachedFile(BytesBacking(data, readonly=True), mf)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        # A shared mapping that could write a read-only file is refused.
        before = (asp.maps(), asp.statistics())
        with pytest.raises(PermissionError):
            await asp.mmap(file_opts(cf, 2 * P, perms=R, max_perms=ANY))
        assert (asp.maps(), asp.statistics()) == before
        shared = await asp.mmap(file_opts(cf, 2 * P, perms=R, max_perms=R))
        assert await asp.copy_in(shared, 2 * P) == data
        with pytest.raises(MemoryFault):
            await asp.copy_out(shared, b"x", ignore_permissions=True)
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(shared, P, RW)
        assert info.value.errno == errno.EACCES
        # A private mapping may write: copy-on-write, never reaching the file.
        priv = await asp.mmap(
            file_opts(cf, 2 * P, private=True, perms=RW, max_perms=ANY)
        )
        await asp.copy_out(priv + 1, b"XY")
        assert await asp.copy_in(priv, 4) == b"\x00XY\x03"
        assert await asp.copy_in(shared, 4) == data[:4]
        assert await cf.read(0, 4) == data[:4]
        asp.check_invariants()
    assert not cf.is_mapped()
    await cf.aclose()


async def test_mlock_eager_past_end_of_file_raises_bus_error(mf: MemoryFile) -> None:
    """gVisor returns population errors other than EFAULT/ENOMEM unchanged;
    the lock mode was applied first."""
    sm = SharedMemory(mf, 2 * P)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(file_opts(sm, 2 * P))
        await sm.truncate(P)
        with pytest.raises(BusError):
            await asp.mlock(addr, 2 * P)
        assert asp.statistics().locked_as == 2 * P
        asp.check_invariants()
    await sm.dec_ref()


# --------------------------------------------------------------------------
# fork details


async def test_fork_leaves_out_dontfork_and_locks(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        a = await parent.mmap(anon(P, addr=0x400000, fixed=True))
        b = await parent.mmap(anon(P, addr=0x500000, fixed=True))
        await parent.madvise(b, P, Advice.DONTFORK)
        await parent.mlock(a, P)
        assert parent.statistics().locked_as == P
        async with await parent.fork() as child:
            assert parsed(child) == [(a, a + P, "rw-p")]
            st = child.statistics()
            assert st.usage_as == P
            assert st.data_as == P
            assert st.locked_as == 0
            child.check_invariants()
            # DOFORK undoes it for later forks.
            await parent.madvise(b, P, Advice.DOFORK)
            async with await parent.fork() as child2:
                assert [x[0] for x in parsed(child2)] == [a, b]
        parent.check_invariants()


async def test_fork_keeps_brk(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        await parent.brk_setup(0x600000)
        assert await parent.brk(0x600000 + 10) == 0x60000A
        async with await parent.fork() as child:
            assert await child.brk(0) == 0x60000A
            assert child.maps() == parent.maps()


# ==========================================================================
# /proc/pid/maps format (§6.9)


async def test_maps_empty_space_has_only_vsyscall(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        assert asp.maps() == VSYSCALL
        assert len(VSYSCALL) == 73 + len("[vsyscall]\n")


async def test_maps_anonymous_line_exact(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(P, addr=0x400000, fixed=True))
        assert asp.maps() == "00400000-00401000 rw-p 00000000 00:00 0 \n" + VSYSCALL


async def test_maps_named_line_exact(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    ident = Identity("/bin/true", (8 << 20) | 1, 1234)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(
            MMapOpts(
                length=P,
                mappable=sm,
                mapping_identity=ident,
                addr=0x400000,
                fixed=True,
                private=True,
                perms=RX,
                max_perms=ANY,
            )
        )
        assert ident.refs == 2
        expected = (
            "00400000-00401000 r-xp 00000000 08:01 1234" + " " * 31 + "/bin/true\n"
        )
        assert asp.maps() == expected + VSYSCALL
        assert asp.maps().index("/bin/true") == 73
    assert ident.refs == 1
    await sm.dec_ref()


async def test_maps_device_minor_and_offset_columns(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 0x20000)
    ident = Identity("/dev/thing", (0x123 << 20) | 0x4567, 99)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(
            MMapOpts(
                length=P,
                mappable=sm,
                mapping_identity=ident,
                offset=0x12000,
                addr=0x400000,
                fixed=True,
                perms=R,
                max_perms=R,
            )
        )
        prefix = "00400000-00401000 r--s 00012000 123:4567 99 "
        assert lines(asp) == [prefix.ljust(73) + "/dev/thing"]
    await sm.dec_ref()


async def test_maps_identity_name_and_hint(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P, name="/data/file")
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(file_opts(sm, P, addr=0x400000, fixed=True))
        await asp.mmap(anon(P, addr=0x500000, fixed=True, hint="[anon:buf]"))
        # A hint names even a file mapping, before its identity's name.
        await asp.mmap(file_opts(sm, P, addr=0x600000, fixed=True, hint="[custom]"))
        dev = sm.device_id()
        dev_s = f"{dev >> 20:02x}:{dev & 0xFFFFF:02x}"
        ino = sm.inode_id()
        assert lines(asp) == [
            f"00400000-00401000 rw-s 00000000 {dev_s} {ino} ".ljust(73) + "/data/file",
            "00500000-00501000 rw-p 00000000 00:00 0 ".ljust(73) + "[anon:buf]",
            f"00600000-00601000 rw-s 00000000 {dev_s} {ino} ".ljust(73) + "[custom]",
        ]
    await sm.dec_ref()


async def test_maps_permissions_as_requested(mf: MemoryFile) -> None:
    """maps shows realPerms (as requested), not the effective ones."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(P, addr=0x400000, fixed=True, perms=NONE))
        await asp.mmap(anon(P, addr=0x402000, fixed=True, perms=W))
        await asp.mmap(anon(P, addr=0x404000, fixed=True, perms=ANY))
        await asp.mmap(anon(P, addr=0x406000, fixed=True, perms=AccessType.EXECUTE))
        assert [x[2] for x in parsed(asp)] == ["---p", "-w-p", "rwxp", "--xp"]
        # Write-only memory is readable (effective perms), as on x86.
        assert await asp.copy_in(0x402000, 1) == b"\0"


async def test_maps_heap_and_wide_addresses(mf: MemoryFile) -> None:
    async with AddressSpace(mf) as asp:
        addr = await asp.mmap(anon(P))
        assert addr == 0x2AAA_AAAA_B000
        await asp.brk_setup(0x600000)
        assert await asp.brk(0x600000 + P + 1) == 0x601001
        assert lines(asp) == [
            "00600000-00602000 rw-p 00000000 00:00 0 ".ljust(73) + "[heap]",
            "2aaaaaaab000-2aaaaaaac000 rw-p 00000000 00:00 0 ",
        ]
        # Shrinking unmaps whole pages only.
        assert await asp.brk(0x600000 + 5) == 0x600005
        assert (
            lines(asp)[0]
            == "00600000-00601000 rw-p 00000000 00:00 0 ".ljust(73) + "[heap]"
        )


async def test_maps_shared_anonymous(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(MMapOpts(length=P, addr=0x400000, fixed=True, private=False))
        (line,) = lines(asp)
        assert line.startswith("00400000-00401000 rw-s 00000000 ")
        assert line[73:] == "/dev/zero (deleted)"


async def test_maps_after_close_is_empty(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    await asp.mmap(anon(P))
    await asp.aclose()
    assert asp.maps() == VSYSCALL
    assert asp.statistics().usage_as == 0
    assert asp.statistics().rss == 0


async def test_locked_mapping_is_populated_and_mlock_eager_via_mlockall(
    mf: MemoryFile,
) -> None:
    """MLockEager mappings are populated: rss covers them (even > 2 MiB)."""
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        big = HUGE_PAGE_SIZE + P
        addr = await asp.mmap(anon(big))
        assert asp.statistics().rss == 0  # too large for eager population
        await asp.mlockall(MLockMode.EAGER)
        st = asp.statistics()
        assert st.locked_as == big
        assert st.rss == big
        await asp.munlockall()
        assert asp.statistics().locked_as == 0
        await asp.munmap(addr, big)
        asp.check_invariants()


async def test_fork_copies_only_private_pmas(mf: MemoryFile) -> None:
    """Non-private pmas are not copied: the child translates them again."""
    sm = SharedMemory(mf, 2 * P)
    await sm.write(0, b"s")
    async with AddressSpace(mf, layout=LAYOUT) as parent:
        await parent.mmap(anon(2 * P, addr=0x400000, fixed=True))
        shared = await parent.mmap(file_opts(sm, 2 * P, addr=0x500000, fixed=True))
        rss_private = parent.statistics().rss
        assert await parent.copy_in(shared, 1) == b"s"
        assert parent.statistics().rss > rss_private
        async with await parent.fork() as child:
            assert child.statistics().rss == rss_private
            assert child.maps() == parent.maps()
            assert await child.copy_in(shared, 1) == b"s"
            await child.copy_out(shared, b"c")
            assert await parent.copy_in(shared, 1) == b"c"
            child.check_invariants()
    assert not sm.is_mapped()
    await sm.dec_ref()


async def test_own_memory_file_is_closed_with_the_last_fork() -> None:
    parent = AddressSpace(layout=LAYOUT)
    addr = await parent.mmap(anon(P))
    await parent.copy_out(addr, b"x")
    child = await parent.fork()
    mf = parent.memory_file
    assert child.memory_file is mf
    await parent.aclose()
    assert not mf.closed
    assert await child.copy_in(addr, 1) == b"x"
    await child.aclose()
    assert mf.closed
