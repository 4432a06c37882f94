"""The platform seam: every pma change of an address space reaches its platform.

A recording platform keeps what it was told page by page. After any
operation its mappings must equal the space's pmas (address, file page and
effective permissions), and every unmap must arrive while the pages are still
referenced (gVisor's order: unmap before the page reference is dropped).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    Advice,
    BusError,
    BytesBacking,
    CachedFile,
    File,
    FileRange,
    InvalidationBus,
    Layout,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    NoPlatform,
    Platform,
    RefCountError,
    SharedMemory,
)

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
R = AccessType.READ
W = AccessType.WRITE
RW = AccessType.READ_WRITE
ANY = AccessType.ANY
NONE = AccessType.NO_ACCESS

Page = tuple[File, int, AccessType]


class RecordingPlatform:
    """A platform that mirrors what it is told, one page at a time.

    ``violations`` collects what breaks the contract: unmapping a page that
    was not mapped, unmapping a page nobody references any more, and calls
    after ``release``.
    """

    def __init__(self) -> None:
        self.pages: dict[int, Page] = {}
        self.maps = 0
        self.unmaps = 0
        self.children: list[RecordingPlatform] = []
        self.released = False
        self.violations: list[str] = []

    def map_file(self, addr: int, file: File, fr: FileRange, at: AccessType) -> None:
        if self.released:
            self.violations.append(f"map_file at {addr:#x} after release")
        assert addr % P == 0
        assert fr.length > 0
        assert fr.start % P == 0
        self.maps += 1
        for i in range(0, fr.length, P):
            self.pages[addr + i] = (file, fr.start + i, at)

    def unmap(self, addr: int, length: int) -> None:
        if self.released:
            self.violations.append(f"unmap at {addr:#x} after release")
        assert addr % P == 0
        assert length > 0
        assert length % P == 0
        self.unmaps += 1
        for a in range(addr, addr + length, P):
            page = self.pages.pop(a, None)
            if page is None:
                self.violations.append(f"unmap of {a:#x}, which is not mapped")
                continue
            file, off, _ = page
            assert isinstance(file, MemoryFile)
            try:
                # Raises RefCountError if the page holds no reference.
                file.has_unique_ref(FileRange(off, off + P))
            except RefCountError:
                self.violations.append(f"unmap of {a:#x} after its page was freed")

    def fork(self) -> RecordingPlatform:
        child = RecordingPlatform()
        self.children.append(child)
        return child

    def release(self) -> None:
        if self.released:
            self.violations.append("released twice")
        self.released = True


def pma_pages(asp: AddressSpace) -> dict[int, Page]:
    """The space's pmas, page by page, as the platform should have them."""
    out: dict[int, Page] = {}
    for seg in asp._pmas.segs:
        pma = seg.value
        for a in range(seg.start, seg.end, P):
            out[a] = (pma.file, pma.offset + (a - seg.start), pma.effective_perms)
    return out


def check_mirror(asp: AddressSpace) -> None:
    platform = asp.platform
    assert isinstance(platform, RecordingPlatform)
    assert platform.violations == []
    assert platform.pages == pma_pages(asp)
    asp.check_invariants()


def anon(n: int, *, private: bool = True, perms: AccessType = RW) -> MMapOpts:
    return MMapOpts(length=n * P, private=private, perms=perms, max_perms=ANY)


def file_opts(
    m: SharedMemory | CachedFile, n: int, *, private: bool = False, offset: int = 0
) -> MMapOpts:
    return MMapOpts(
        length=n * P,
        mappable=m,
        mapping_identity=m,
        offset=offset,
        private=private,
        perms=RW,
        max_perms=ANY,
    )


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("mm-platform")
    yield f
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def test_default_platform_is_a_no_op_and_others_are_checked() -> None:
    asp = AddressSpace()
    assert isinstance(asp.platform, NoPlatform)
    assert isinstance(asp.platform, Platform)
    assert isinstance(RecordingPlatform(), Platform)
    assert isinstance(NoPlatform().fork(), NoPlatform)
    with pytest.raises(TypeError, match="platform"):
        AddressSpace(platform=object())  # type: ignore[arg-type]
    asp.memory_file.close()


async def test_installs_and_removals_reach_the_platform(mf: MemoryFile) -> None:
    rec = RecordingPlatform()
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as asp:
        addr = await asp.mmap(anon(4))
        # A small private mapping is populated at once.
        assert set(rec.pages) == {addr + i * P for i in range(4)}
        check_mirror(asp)
        await asp.munmap(addr + P, P)
        assert addr + P not in rec.pages
        check_mirror(asp)
        await asp.madvise(addr, P, Advice.DONTNEED)
        await asp.madvise(addr + 2 * P, 2 * P, Advice.DONTNEED)
        assert rec.pages == {}
        check_mirror(asp)
        await asp.copy_out(addr + 2 * P, b"x")
        assert set(rec.pages) == {addr + 2 * P, addr + 3 * P}
        check_mirror(asp)
    assert rec.pages == {}
    assert rec.released
    assert rec.violations == []


async def test_mprotect_maps_pmas_again_with_their_new_permissions(
    mf: MemoryFile,
) -> None:
    rec = RecordingPlatform()
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as asp:
        addr = await asp.mmap(anon(4))
        await asp.mprotect(addr + P, 2 * P, R)
        check_mirror(asp)
        assert [rec.pages[addr + i * P][2] for i in range(4)] == [RW, R, R, RW]
        await asp.mprotect(addr, 4 * P, NONE)
        check_mirror(asp)
        assert {page[2] for page in rec.pages.values()} == {NONE}
        await asp.mprotect(addr, 4 * P, RW)
        check_mirror(asp)
        assert {page[2] for page in rec.pages.values()} == {RW}


async def test_mremap_move_unmaps_the_old_addresses_and_maps_the_new(
    mf: MemoryFile,
) -> None:
    rec = RecordingPlatform()
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as asp:
        addr = await asp.mmap(anon(4))
        await asp.copy_out(addr, b"moved")
        before = [rec.pages[addr + i * P][:2] for i in range(4)]
        new = await asp.mremap(
            addr, 4 * P, 4 * P, move=MRemapMove.MUST_MOVE, new_addr=addr + 64 * P
        )
        check_mirror(asp)
        assert not any(addr + i * P in rec.pages for i in range(4))
        assert [rec.pages[new + i * P][:2] for i in range(4)] == before
        assert await asp.copy_in(new, 5) == b"moved"
        # Shrinking unmaps the tail.
        await asp.mremap(new, 4 * P, 2 * P)
        check_mirror(asp)
        assert set(rec.pages) == {new, new + P}


async def test_fork_maps_the_child_and_write_protects_the_parent(
    mf: MemoryFile,
) -> None:
    rec = RecordingPlatform()
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as parent:
        addr = await parent.mmap(anon(2))
        await parent.copy_out(addr, b"parent")
        async with await parent.fork() as child:
            assert rec.children == [child.platform]
            check_mirror(parent)
            check_mirror(child)
            # Both sides map the same pages, read-only until one writes.
            assert rec.pages[addr] == (mf, rec.pages[addr][1], R)
            child_rec = rec.children[0]
            assert child_rec.pages[addr] == rec.pages[addr]
            # The child's write copies: its platform maps the copy, the
            # parent's keeps the original.
            await child.copy_out(addr, b"child!")
            check_mirror(parent)
            check_mirror(child)
            assert child_rec.pages[addr][1] != rec.pages[addr][1]
            assert child_rec.pages[addr][2] == RW
            # The parent now holds the only reference: it takes the page over.
            await parent.copy_out(addr, b"PARENT")
            check_mirror(parent)
            assert rec.pages[addr][2] == RW
        assert child_rec.released
        assert child_rec.pages == {}
        assert child_rec.violations == []
        check_mirror(parent)


async def test_truncate_of_shared_memory_unmaps_before_the_pages_are_freed(
    mf: MemoryFile,
) -> None:
    rec = RecordingPlatform()
    shm = SharedMemory(mf, 4 * P)
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as asp:
        addr = await asp.mmap(file_opts(shm, 4))
        await asp.copy_out(addr, b"\1" * (4 * P))
        assert len(rec.pages) == 4
        await shm.truncate(P)
        check_mirror(asp)
        assert set(rec.pages) == {addr}
        await shm.truncate(0)
        check_mirror(asp)
        assert rec.pages == {}
        maps_before = rec.maps
        await shm.truncate(4 * P)
        await asp.handle_fault(addr + 3 * P, R)
        assert rec.maps > maps_before
        check_mirror(asp)
    await shm.aclose()
    assert rec.violations == []


async def test_truncate_of_a_cached_file_reaches_the_platform(mf: MemoryFile) -> None:
    rec = RecordingPlatform()
    cf = CachedFile(BytesBacking(bytes(4 * P)), mf, writable=True)
    async with AddressSpace(mf, layout=LAYOUT, platform=rec) as asp:
        shared = await asp.mmap(file_opts(cf, 4))
        private = await asp.mmap(file_opts(cf, 4, private=True))
        assert await asp.copy_in(shared, 4 * P) == bytes(4 * P)
        await asp.copy_out(private + 3 * P, b"mine")
        check_mirror(asp)
        await cf.truncate(2 * P)
        check_mirror(asp)
        assert not any(shared + i * P in rec.pages for i in (2, 3))
        # Truncation drops private copies beyond the end too.
        assert not any(private + i * P in rec.pages for i in (2, 3))
    await cf.aclose()
    assert rec.violations == []


async def test_platform_mirrors_pmas_after_random_operations(mf: MemoryFile) -> None:
    for seed in range(12):
        await _random_operations(mf, random.Random(seed))


async def _random_operations(mf: MemoryFile, rng: random.Random) -> None:
    """Random syscalls, faults, copies, forks and truncations on a few spaces."""
    shm = SharedMemory(mf, 16 * P)
    root = RecordingPlatform()
    spaces = [AddressSpace(mf, layout=LAYOUT, platform=root)]
    platforms = [root]
    lo = BASE

    def some_range() -> tuple[int, int]:
        start = lo + rng.randrange(32) * P
        return start, rng.randrange(1, 9) * P

    try:
        with anyio.fail_after(60):
            for _ in range(60):
                asp = rng.choice(spaces)
                op = rng.randrange(11)
                addr, length = some_range()
                try:
                    if op == 0:
                        kind = rng.randrange(4)
                        mappable = shm if kind >= 2 else None
                        await asp.mmap(
                            MMapOpts(
                                length=length,
                                mappable=mappable,
                                mapping_identity=mappable,
                                private=kind in (0, 2),
                                perms=RW,
                                max_perms=ANY,
                                addr=addr,
                                fixed=True,
                                unmap=True,
                            )
                        )
                    elif op == 1:
                        await asp.munmap(addr, length)
                    elif op == 2:
                        await asp.mprotect(addr, length, rng.choice([R, RW, NONE]))
                    elif op == 3:
                        await asp.copy_out(addr, bytes([rng.randrange(256)]) * length)
                    elif op == 4:
                        await asp.copy_in(addr, length)
                    elif op == 5:
                        await asp.handle_fault(addr, rng.choice([R, W]))
                    elif op == 6:
                        await asp.madvise(addr, length, Advice.DONTNEED)
                    elif op == 7:
                        new = lo + rng.randrange(32) * P
                        await asp.mremap(
                            addr,
                            length,
                            rng.randrange(1, 9) * P,
                            move=rng.choice(list(MRemapMove)),
                            new_addr=new,
                        )
                    elif op == 8 and len(spaces) < 4:
                        spaces.append(await asp.fork())
                        child = spaces[-1].platform
                        assert isinstance(child, RecordingPlatform)
                        platforms.append(child)
                    elif op == 9:
                        await shm.truncate(rng.randrange(17) * P)
                    elif op == 10 and len(spaces) > 1:
                        spaces.remove(asp)
                        await asp.aclose()
                except (AddressSpaceError, BusError):
                    pass  # errno results (and faults) are part of the game
                for s in spaces:
                    check_mirror(s)
    finally:
        for s in spaces:
            await s.aclose()
        await shm.aclose()
    for p in platforms:
        assert p.released
        assert p.pages == {}
        assert p.violations == []


async def test_space_and_its_shared_anonymous_memory_and_forks_use_its_bus(
    mf: MemoryFile,
) -> None:
    bus = InvalidationBus()
    async with AddressSpace(mf, layout=LAYOUT, bus=bus) as asp:
        assert asp.bus is bus
        addr = await asp.mmap(anon(2, private=False))
        (seg,) = list(asp._vmas)
        shm = seg.value.mappable
        assert isinstance(shm, SharedMemory)
        before = bus.statistics().publishes
        await asp.copy_out(addr, b"shared")
        # Unmapping part of it invalidates nothing else, but a truncate of
        # the object publishes on the space's bus.
        await shm.truncate(P)
        assert bus.statistics().publishes > before
        async with await asp.fork() as child:
            assert child.bus is bus
            assert await child.copy_in(addr, 6) == b"shared"
    with pytest.raises(TypeError, match="bus"):
        AddressSpace(mf, bus=object())  # type: ignore[arg-type]


async def test_a_space_without_a_bus_uses_the_default_bus(mf: MemoryFile) -> None:
    from aiomemmap.memmap.bus import default_bus

    async with AddressSpace(mf) as asp:
        assert asp.bus is default_bus()
        async with await asp.fork() as child:
            assert child.bus is default_bus()
