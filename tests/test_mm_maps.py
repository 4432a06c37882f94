"""The parts an address space is made of: the vma map, the pma cache, the checks.

The resident fast path is one lookup (``PmaCache.resident``) that faults and
copies share; ``check_invariants`` raises ``InvariantError`` explicitly, so
it holds under ``python -O`` too.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    InvariantError,
    Layout,
    Limits,
    MemoryFile,
    MLockMode,
    MMapOpts,
    NoPlatform,
)
from aiomemmap.mm.pma import PmaCache
from aiomemmap.mm.vma import Vma, VmaMap

P = PAGE_SIZE
BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)
R = AccessType.READ
W = AccessType.WRITE
RW = AccessType.READ_WRITE
ANY = AccessType.ANY


def anon_vma(*, mlock_mode: MLockMode = MLockMode.NONE) -> Vma:
    return Vma(
        mappable=None,
        offset=0,
        real_perms=RW,
        max_perms=ANY,
        private=True,
        grows_down=False,
        dontfork=False,
        mlock_mode=mlock_mode,
        identity=None,
        name="",
    )


@pytest.fixture
async def mf() -> AsyncIterator[MemoryFile]:
    f = MemoryFile("mm-maps")
    yield f
    assert f.statistics().used_bytes == 0, f.statistics()
    f.close()


def test_vma_map_counts_what_it_inserts_and_removes() -> None:
    vmas = VmaMap(LAYOUT, Limits())
    vmas.insert(BASE, BASE + 4 * P, anon_vma())
    vmas.insert(BASE + 8 * P, BASE + 10 * P, anon_vma(mlock_mode=MLockMode.EAGER))
    assert (vmas.usage_as, vmas.data_as, vmas.locked_as) == (6 * P, 6 * P, 2 * P)
    assert vmas.locked_bytes(BASE, BASE + 9 * P) == P
    removed = vmas.remove_range(BASE + P, BASE + 9 * P)
    assert [(s.start, s.end) for s in removed] == [
        (BASE + P, BASE + 4 * P),
        (BASE + 8 * P, BASE + 9 * P),
    ]
    assert (vmas.usage_as, vmas.data_as, vmas.locked_as) == (2 * P, 2 * P, P)
    vmas.check_invariants()


def test_vma_map_places_bottom_up_and_honours_hints() -> None:
    vmas = VmaMap(Layout(top_down=False, bottom_up_base=BASE), Limits())
    first = vmas.find_available(2 * P)
    vmas.insert(first, first + 2 * P, anon_vma())
    second = vmas.find_available(P)
    assert second == first + 2 * P
    assert vmas.find_available(P, addr=first + 8 * P) == first + 8 * P
    with pytest.raises(AddressSpaceError) as info:
        vmas.find_available(P, addr=first, fixed=True, no_replace=True)
    assert info.value.errno == errno.EEXIST


def test_vma_map_check_raises_invariant_error_for_a_wrong_counter() -> None:
    vmas = VmaMap(LAYOUT, Limits())
    vmas.insert(BASE, BASE + P, anon_vma())
    vmas.data_as += P
    with pytest.raises(InvariantError, match="data_as"):
        vmas.check_invariants()


async def test_pma_cache_check_raises_invariant_error_for_a_wrong_rss(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(MMapOpts(length=2 * P, private=True))
        pmas = asp._pmas
        assert isinstance(pmas, PmaCache)
        pmas.rss += P
        with pytest.raises(InvariantError, match="rss"):
            asp.check_invariants()
        pmas.rss -= P
        asp.check_invariants()


def test_check_invariants_raises_under_python_dash_o() -> None:
    code = """
import asyncio
from aiomemmap import AddressSpace, MMapOpts, PAGE_SIZE
from aiomemmap._core.errors import InvariantError

async def main():
    async with AddressSpace() as asp:
        await asp.mmap(MMapOpts(length=PAGE_SIZE, private=True))
        asp._vmas.usage_as += PAGE_SIZE
        try:
            asp.check_invariants()
        except InvariantError:
            print("raised")
        asp._vmas.usage_as -= PAGE_SIZE

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "raised", out.stderr


async def test_resident_finds_one_pma_that_allows_the_access(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=4 * P, private=True))
        await asp.mprotect(addr + 2 * P, 2 * P, R)
        pmas = asp._pmas
        seg = pmas.resident(addr, addr + 2 * P, W, False)
        assert seg is not None
        assert (seg.start, seg.end) == (addr, addr + 2 * P)
        # Not writable, unless permissions are ignored; not one pma across.
        assert pmas.resident(addr + 2 * P, addr + 3 * P, W, False) is None
        assert pmas.resident(addr + 2 * P, addr + 3 * P, W, True) is not None
        assert pmas.resident(addr, addr + 3 * P, R, False) is None
        assert pmas.resident(addr + 4 * P, addr + 5 * P, R, False) is None


async def test_resident_path_is_off_while_a_writer_holds_the_active_lock(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(MMapOpts(length=P, private=True))
        await asp.copy_out(addr, b"resident")
        pmas = asp._pmas
        faults = asp.statistics().faults
        # Resident: the fault and the copy finish without any lock.
        await asp.handle_fault(addr, R)
        assert await asp.copy_in(addr, 8) == b"resident"
        assert asp.statistics().faults == faults + 1
        assert pmas.resident(addr, addr + 1, R, False) is not None
        go, done = anyio.Event(), anyio.Event()

        async def fault() -> None:
            await go.wait()
            await asp.handle_fault(addr, R)
            done.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                # Started before the lock is taken: a task made while holding
                # it would be taken for its holder by the lock-order checks.
                tg.start_soon(fault)
                async with pmas.lock.write():
                    assert pmas.resident(addr, addr + 1, R, False) is None
                    # The fault takes the slow path, which waits for the lock.
                    go.set()
                    for _ in range(20):
                        await anyio.lowlevel.checkpoint()
                    assert not done.is_set()
                await done.wait()
        assert asp.statistics().faults == faults + 2


async def test_a_closed_space_keeps_no_vma_or_pma(mf: MemoryFile) -> None:
    asp = AddressSpace(mf, layout=LAYOUT, platform=NoPlatform())
    addr = await asp.mmap(MMapOpts(length=P, private=True))
    await asp.aclose()
    assert len(asp._vmas) == len(asp._pmas) == 0
    assert asp._pmas.resident(addr, addr + 1, R, False) is None
    asp.check_invariants()
