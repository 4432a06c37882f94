"""Isolation between address spaces (SPEC R6; gVisor mm §6.4, §6.5, §6.8).

Copy-on-write across fork (several generations), unique-reference takeover,
private writes never reaching a Mappable, invalidation of private copies,
truncation, shared anonymous memory, DONTFORK, ``max_perms`` as a ceiling
(also for accesses that ignore permissions), freed pages reading as zeros,
and the counters ``cow_copies``, ``rss`` and ``max_rss``.
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
    BusError,
    BytesBacking,
    CachedFile,
    InvalidateOpts,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
RW = AccessType.READ_WRITE
R = AccessType.READ
ANY = AccessType.ANY


def pat(seed: int, n: int = P) -> bytes:
    return bytes((seed * 37 + i * 11 + 3) % 251 for i in range(n))


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("asp-cow")
    yield f
    # SPEC R1: everything the test opened was closed, so no page is used.
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def anon(n: int, *, perms: AccessType = RW, addr: int = 0) -> MMapOpts:
    return MMapOpts(
        n * P,
        private=True,
        perms=perms,
        max_perms=ANY,
        addr=addr,
        fixed=bool(addr),
    )


def file_opts(
    m: SharedMemory | CachedFile,
    n: int,
    *,
    private: bool,
    offset: int = 0,
    perms: AccessType = RW,
    max_perms: AccessType = ANY,
) -> MMapOpts:
    return MMapOpts(
        n * P,
        mappable=m,
        mapping_identity=m,
        offset=offset,
        private=private,
        perms=perms,
        max_perms=max_perms,
    )


async def close_all(*spaces: AddressSpace) -> None:
    for s in spaces:
        s.check_invariants()
        await s.aclose()


# --------------------------------------------------------------------------
# Fork: copy-on-write both ways


async def test_anon_cow_both_directions(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(2))
    await parent.copy_out(a, b"A" * (2 * P))
    child = await parent.fork()
    await parent.copy_out(a, b"B" * P)
    assert await child.copy_in(a, 2 * P) == b"A" * (2 * P)
    await child.copy_out(a + P, b"C" * P)
    assert await parent.copy_in(a, 2 * P) == b"B" * P + b"A" * P
    assert await child.copy_in(a, 2 * P) == b"A" * P + b"C" * P
    assert parent.statistics().cow_copies + child.statistics().cow_copies >= 1
    await close_all(child, parent)


async def test_anon_cow_several_generations(mf: MemoryFile) -> None:
    g0 = AddressSpace(mf, layout=LAYOUT)
    a = await g0.mmap(anon(3))
    await g0.copy_out(a, pat(0, 3 * P))
    spaces = [g0]
    expected = [bytearray(pat(0, 3 * P))]
    # Each generation forks the last one, then every space writes its own
    # byte into a page; nobody sees anybody else's writes.
    for gen in range(1, 5):
        spaces.append(await spaces[-1].fork())
        expected.append(bytearray(expected[-1]))
        for i, (sp, exp) in enumerate(zip(spaces, expected, strict=True)):
            off = ((gen + i) % 3) * P + gen * 10 + i
            data = bytes([gen * 16 + i]) * 7
            await sp.copy_out(a + off, data)
            exp[off : off + 7] = data
        for sp, exp in zip(spaces, expected, strict=True):
            assert await sp.copy_in(a, 3 * P) == bytes(exp)
            sp.check_invariants()
    # Closing the middle generations leaves the others intact.
    for idx in (2, 1, 3):
        await spaces[idx].aclose()
    for idx in (0, 4):
        assert await spaces[idx].copy_in(a, 3 * P) == bytes(expected[idx])
    await close_all(spaces[0], spaces[4])


async def test_unique_ref_takeover_after_child_closed(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(4))
    await parent.copy_out(a, b"A" * (4 * P))
    child = await parent.fork()
    await child.aclose()
    before = parent.statistics().cow_copies
    used = mf.statistics().used_bytes
    # The parent holds the only reference: writing takes the pages over.
    await parent.copy_out(a, b"B" * (4 * P))
    assert parent.statistics().cow_copies == before
    assert mf.statistics().used_bytes == used
    assert await parent.copy_in(a, 4 * P) == b"B" * (4 * P)
    parent.check_invariants()
    await parent.aclose()


async def test_child_takes_over_after_parent_closed(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(2))
    await parent.copy_out(a, b"A" * (2 * P))
    child = await parent.fork()
    await parent.aclose()
    before = child.statistics().cow_copies
    await child.copy_out(a, b"Z" * (2 * P))
    assert child.statistics().cow_copies == before
    assert await child.copy_in(a, 2 * P) == b"Z" * (2 * P)
    await child.aclose()


async def test_cow_copies_counted(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(1))
    await parent.copy_out(a, b"A" * P)
    assert parent.statistics().cow_copies == 0
    child = await parent.fork()
    await parent.copy_out(a, b"B")
    assert parent.statistics().cow_copies == 1
    # The child now holds the only reference to the old page: no copy.
    await child.copy_out(a, b"C")
    assert child.statistics().cow_copies == 0
    assert await parent.copy_in(a, 2) == b"BA"
    assert await child.copy_in(a, 2) == b"CA"
    await close_all(child, parent)


async def test_private_file_cow_across_fork(mf: MemoryFile) -> None:
    data = pat(5, 4 * P)
    backing = BytesBacking(data, readonly=True)
    cf = CachedFile(backing, mf)
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(file_opts(cf, 4, private=True))
    assert await parent.copy_in(a, 4 * P) == data
    await parent.copy_out(a + 10, b"parent")
    child = await parent.fork()
    grandchild = await child.fork()
    await child.copy_out(a + 2 * P, b"child")
    await grandchild.copy_out(a + 10, b"grand!")
    await parent.copy_out(a + 3 * P, b"later")

    def with_(base: bytes, *edits: tuple[int, bytes]) -> bytes:
        b = bytearray(base)
        for off, d in edits:
            b[off : off + len(d)] = d
        return bytes(b)

    p_want = with_(data, (10, b"parent"), (3 * P, b"later"))
    c_want = with_(data, (10, b"parent"), (2 * P, b"child"))
    g_want = with_(data, (10, b"grand!"))
    assert await parent.copy_in(a, 4 * P) == p_want
    assert await child.copy_in(a, 4 * P) == c_want
    assert await grandchild.copy_in(a, 4 * P) == g_want
    # Nothing reached the file or the backing.
    assert await cf.read(0, 4 * P) == data
    assert backing.data == data
    await close_all(grandchild, child, parent)
    assert not cf.is_mapped()
    await cf.aclose()


async def test_fork_with_partially_broken_cow(mf: MemoryFile) -> None:
    """Fork while a private file mapping has some pages copied, some not."""
    sm = SharedMemory(mf, 4 * P)
    await sm.write(0, pat(1, 4 * P))
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(file_opts(sm, 4, private=True))
    await parent.copy_out(a + P, b"X" * P)  # page 1 copied
    assert await parent.copy_in(a + 3 * P, 4) == pat(1, 4 * P)[3 * P : 3 * P + 4]
    child = await parent.fork()
    want = bytearray(pat(1, 4 * P))
    want[P : 2 * P] = b"X" * P
    assert await child.copy_in(a, 4 * P) == bytes(want)
    assert await parent.copy_in(a, 4 * P) == bytes(want)
    # Each side breaks COW independently, on copied and uncopied pages.
    await child.copy_out(a + P, b"c")
    await child.copy_out(a + 2 * P, b"c")
    await parent.copy_out(a + P, b"p")
    await parent.copy_out(a, b"p")
    c_want, p_want = bytearray(want), bytearray(want)
    c_want[P] = c_want[2 * P] = ord("c")
    p_want[P] = p_want[0] = ord("p")
    assert await child.copy_in(a, 4 * P) == bytes(c_want)
    assert await parent.copy_in(a, 4 * P) == bytes(p_want)
    assert await sm.read(0, 4 * P) == pat(1, 4 * P)
    await close_all(child, parent)
    await sm.aclose()


# --------------------------------------------------------------------------
# Private writes never reach the Mappable


async def test_private_writes_never_reach_shared_memory(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 2 * P)
    await sm.write(0, pat(2, 2 * P))
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(sm, 2, private=True))
    await asp.copy_out(a, b"private" * 100)
    await asp.zero_out(a + P, P)
    assert await sm.read(0, 2 * P) == pat(2, 2 * P)
    # A shared mapping of the same file does not see them either.
    s = await asp.mmap(file_opts(sm, 2, private=False))
    assert await asp.copy_in(s, 2 * P) == pat(2, 2 * P)
    await close_all(asp)
    await sm.aclose()


async def test_private_writes_never_reach_cached_file(mf: MemoryFile) -> None:
    data = pat(3, 3 * P)
    backing = BytesBacking(data)
    cf = CachedFile(backing, mf, writable=True)
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(cf, 3, private=True))
    await asp.copy_out(a + 5, b"secret" * 1000)
    await asp.msync(a, 3 * P)
    await cf.sync()
    assert await cf.read(0, 3 * P) == data
    assert backing.data == data
    await close_all(asp)
    await cf.aclose()
    assert backing.data == data


async def test_shared_cached_file_writes_reach_file(mf: MemoryFile) -> None:
    data = pat(4, 2 * P)
    backing = BytesBacking(data)
    cf = CachedFile(backing, mf, writable=True)
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(cf, 2, private=False))
    await asp.copy_out(a + 1, b"shared")
    want = bytearray(data)
    want[1:7] = b"shared"
    assert await cf.read(0, 2 * P) == bytes(want)
    await asp.msync(a, 2 * P)
    assert backing.data == bytes(want)
    await close_all(asp)
    await cf.aclose()


async def test_unwritten_private_pages_see_file_changes(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    await sm.write(0, b"old")
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(sm, 1, private=True))
    assert await asp.copy_in(a, 3) == b"old"
    await sm.write(0, b"new")
    assert await asp.copy_in(a, 3) == b"new"
    await asp.copy_out(a + 100, b"!")  # breaks COW: now a private copy
    await sm.write(0, b"NEW")
    assert await asp.copy_in(a, 3) == b"new"
    await close_all(asp)
    await sm.aclose()


# --------------------------------------------------------------------------
# Invalidation of private copies


@pytest.mark.parametrize("private", [False, True])
async def test_invalidate_private_option(mf: MemoryFile, private: bool) -> None:
    sm = SharedMemory(mf, 2 * P)
    await sm.write(0, b"f" * (2 * P))
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(sm, 2, private=True))
    await asp.copy_out(a, b"c" * (2 * P))
    await asp.invalidate(AddrRange(a, a + 2 * P), InvalidateOpts(private))
    got = await asp.copy_in(a, 2 * P)
    assert got == (b"f" if private else b"c") * (2 * P)
    asp.check_invariants()
    await close_all(asp)
    await sm.aclose()


async def test_invalidate_keeps_private_anon(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(anon(2))
    await asp.copy_out(a, b"k" * (2 * P))
    await asp.invalidate(AddrRange(a, a + 2 * P), InvalidateOpts(False))
    assert await asp.copy_in(a, 2 * P) == b"k" * (2 * P)
    await close_all(asp)


async def test_truncate_drops_private_copies_past_end(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 4 * P)
    await sm.write(0, b"f" * (4 * P))
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(file_opts(sm, 4, private=True))
    await parent.copy_out(a, b"c" * (4 * P))
    child = await parent.fork()
    await sm.truncate(2 * P)
    for sp in (parent, child):
        assert await sp.copy_in(a, 2 * P) == b"c" * (2 * P)
        with pytest.raises(BusError) as ei:
            await sp.copy_in(a + P, 2 * P)
        assert ei.value.bytes_done == P
        assert ei.value.data == b"c" * P
        with pytest.raises(BusError):
            await sp.copy_out(a + 3 * P, b"x")
        with pytest.raises(BusError):
            await sp.handle_fault(a + 2 * P, R)
        sp.check_invariants()
    # Growing again: the old private data is gone for good, zeros show.
    await sm.truncate(4 * P)
    assert await parent.copy_in(a + 2 * P, 2 * P) == bytes(2 * P)
    assert await child.copy_in(a + 2 * P, 2 * P) == bytes(2 * P)
    await close_all(child, parent)
    await sm.aclose()


# --------------------------------------------------------------------------
# Shared memory and DONTFORK across fork


async def test_shared_anon_shared_across_fork(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(MMapOpts(2 * P, private=False, perms=RW))
    child = await parent.fork()
    await child.copy_out(a, b"Z" * 10)
    assert await parent.copy_in(a, 10) == b"Z" * 10
    await parent.copy_out(a + P, b"Y" * 10)
    assert await child.copy_in(a + P, 10) == b"Y" * 10
    grandchild = await child.fork()
    await child.aclose()
    await grandchild.copy_out(a + 5, b"G")
    assert await parent.copy_in(a, 10) == b"ZZZZZGZZZZ"
    await close_all(grandchild, parent)


async def test_shared_memory_mapping_shared_across_fork(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(file_opts(sm, 1, private=False))
    child = await parent.fork()
    await child.copy_out(a, b"hello")
    assert await parent.copy_in(a, 5) == b"hello"
    assert await sm.read(0, 5) == b"hello"
    await close_all(child, parent)
    assert not sm.is_mapped()
    await sm.aclose()


async def test_dontfork_absent_in_child(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(3))
    await parent.copy_out(a, b"d" * (3 * P))
    await parent.madvise(a + P, P, Advice.DONTFORK)
    child = await parent.fork()
    assert await child.copy_in(a, P) == b"d" * P
    with pytest.raises(MemoryFault) as ei:
        await child.copy_in(a + P, 1)
    assert ei.value.errno == errno.EFAULT
    with pytest.raises(MemoryFault) as ei:
        await child.handle_fault(a + P, R)
    assert ei.value.errno == errno.EFAULT
    with pytest.raises(MemoryFault) as ei:
        await child.copy_in(a, 2 * P)
    assert ei.value.bytes_done == P
    assert child.statistics().usage_as == 2 * P
    assert parent.statistics().usage_as == 3 * P
    # DOFORK undoes it.
    await parent.madvise(a + P, P, Advice.DOFORK)
    child2 = await parent.fork()
    assert await child2.copy_in(a, 3 * P) == b"d" * (3 * P)
    await close_all(child2, child, parent)


# --------------------------------------------------------------------------
# max_perms


async def test_mprotect_beyond_max_perms(mf: MemoryFile) -> None:
    cf = CachedFile(BytesBacking(pat(6, 2 * P), readonly=True), mf)
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(cf, 2, private=False, perms=R, max_perms=R))
    with pytest.raises(AddressSpaceError) as ei:
        await asp.mprotect(a, 2 * P, RW)
    assert ei.value.errno == errno.EACCES
    with pytest.raises(AddressSpaceError) as ei:
        await asp.mprotect(a, P, AccessType.READ_EXECUTE)
    assert ei.value.errno == errno.EACCES
    await asp.mprotect(a, P, AccessType.NO_ACCESS)
    await asp.mprotect(a, P, R)
    # A write-only request means read+write (effective): also refused.
    with pytest.raises(AddressSpaceError) as ei:
        await asp.mprotect(a, P, AccessType(False, True, False))
    assert ei.value.errno == errno.EACCES
    await close_all(asp)
    await cf.aclose()


async def test_mmap_perms_beyond_max_perms(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    with pytest.raises(AddressSpaceError) as ei:
        await asp.mmap(MMapOpts(P, private=True, perms=RW, max_perms=R))
    assert ei.value.errno == errno.EACCES
    assert asp.statistics().usage_as == 0
    await close_all(asp)


async def test_ignore_permissions_honours_max_perms(mf: MemoryFile) -> None:
    data = pat(7, P)
    backing = BytesBacking(data, readonly=True)
    cf = CachedFile(backing, mf)
    asp = AddressSpace(mf, layout=LAYOUT)
    s = await asp.mmap(file_opts(cf, 1, private=False, perms=R, max_perms=R))
    with pytest.raises(MemoryFault) as ei:
        await asp.copy_out(s, b"x", ignore_permissions=True)
    assert ei.value.errno == errno.EFAULT
    assert ei.value.bytes_done == 0
    with pytest.raises(MemoryFault):
        await asp.zero_out(s, 1, ignore_permissions=True)
    with pytest.raises(MemoryFault) as ei:
        await asp.handle_fault(s, RW)
    assert ei.value.errno == errno.EPERM
    assert await asp.copy_in(s, P, ignore_permissions=True) == data
    # No access at all, but max_perms allow reading: ignore_permissions reads.
    await asp.mprotect(s, P, AccessType.NO_ACCESS)
    with pytest.raises(MemoryFault):
        await asp.copy_in(s, 1)
    assert await asp.copy_in(s, 4, ignore_permissions=True) == data[:4]
    # A private mapping's max_perms allow writing: the write is a COW copy.
    p = await asp.mmap(file_opts(cf, 1, private=True, perms=R))
    with pytest.raises(MemoryFault):
        await asp.copy_out(p, b"x")
    assert await asp.copy_out(p, b"poke", ignore_permissions=True) == 4
    assert await asp.copy_in(p, 4) == b"poke"
    assert await cf.read(0, 4) == data[:4]
    assert backing.data == data
    await close_all(asp)
    await cf.aclose()


async def test_ignore_permissions_shared_memory_max_read(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    await sm.write(0, b"ro")
    asp = AddressSpace(mf, layout=LAYOUT)
    s = await asp.mmap(file_opts(sm, 1, private=False, perms=R, max_perms=R))
    with pytest.raises(MemoryFault):
        await asp.copy_out(s, b"x", ignore_permissions=True)
    assert await sm.read(0, 2) == b"ro"
    await close_all(asp)
    await sm.aclose()


async def test_fork_child_respects_perms(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(1, perms=R))
    child = await parent.fork()
    with pytest.raises(MemoryFault):
        await child.copy_out(a, b"x")
    assert await child.copy_out(a, b"x", ignore_permissions=True) == 1
    assert await parent.copy_in(a, 1) == b"\0"
    assert await child.copy_in(a, 1) == b"x"
    await close_all(child, parent)


# --------------------------------------------------------------------------
# Freed pages never leak old contents


async def test_munmap_then_mmap_reads_zeros(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    for round_ in range(3):
        a = await asp.mmap(anon(4, addr=BASE))
        assert await asp.copy_in(a, 4 * P) == bytes(4 * P), round_
        await asp.copy_out(a, pat(round_, 4 * P))
        await asp.munmap(a, 4 * P)
    # Another space on the same memory file sees zeros as well.
    other = AddressSpace(mf, layout=LAYOUT)
    b = await other.mmap(anon(8))
    assert await other.copy_in(b, 8 * P) == bytes(8 * P)
    await close_all(other, asp)


async def test_madv_dontneed_reads_zeros_and_drops_rss(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(anon(4))
    await asp.copy_out(a, b"q" * (4 * P))
    rss = asp.statistics().rss
    assert rss >= 4 * P
    await asp.madvise(a + P, 2 * P, Advice.DONTNEED)
    s = asp.statistics()
    assert s.rss == rss - 2 * P
    assert s.max_rss >= rss
    assert await asp.copy_in(a, 4 * P) == b"q" * P + bytes(2 * P) + b"q" * P
    asp.check_invariants()
    await close_all(asp)


async def test_madv_dontneed_private_file_reverts(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 2 * P)
    await sm.write(0, b"f" * (2 * P))
    asp = AddressSpace(mf, layout=LAYOUT)
    a = await asp.mmap(file_opts(sm, 2, private=True))
    await asp.copy_out(a, b"c" * (2 * P))
    await asp.madvise(a, P, Advice.DONTNEED)
    assert await asp.copy_in(a, 2 * P) == b"f" * P + b"c" * P
    await close_all(asp)
    await sm.aclose()


async def test_dontneed_in_parent_does_not_affect_child(mf: MemoryFile) -> None:
    parent = AddressSpace(mf, layout=LAYOUT)
    a = await parent.mmap(anon(2))
    await parent.copy_out(a, b"m" * (2 * P))
    child = await parent.fork()
    await parent.madvise(a, 2 * P, Advice.DONTNEED)
    assert await parent.copy_in(a, 2 * P) == bytes(2 * P)
    assert await child.copy_in(a, 2 * P) == b"m" * (2 * P)
    await close_all(child, parent)


# --------------------------------------------------------------------------
# Counters


async def test_rss_and_max_rss(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    s0 = asp.statistics()
    assert (s0.rss, s0.max_rss, s0.cow_copies) == (0, 0, 0)
    a = await asp.mmap(anon(8))  # small anonymous mappings are populated eagerly
    s1 = asp.statistics()
    assert s1.rss == 8 * P
    assert s1.max_rss == 8 * P
    await asp.munmap(a, 4 * P)
    s2 = asp.statistics()
    assert s2.rss == 4 * P
    assert s2.max_rss == 8 * P
    child = await asp.fork()
    cs = child.statistics()
    # The child shares the private pages (copy-on-write): they are resident.
    assert cs.rss == 4 * P
    assert cs.usage_as == 4 * P
    assert cs.cow_copies == 0
    await child.copy_out(a + 4 * P, b"w" * (4 * P))
    assert child.statistics().rss == 4 * P
    assert child.statistics().cow_copies >= 1
    await close_all(child, asp)
