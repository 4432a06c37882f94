"""Translations awaited without the active lock: concurrency and staleness.

An address space does not hold its active lock while a Mappable's
``translate`` is in flight. These tests pin down what that must preserve: a
translation overlapped by an invalidation while in flight is thrown away
(never installed, its pages never referenced), one that no invalidation
touched is used as is, and faults on different pages wait for their
translations together rather than one after another.
"""

from __future__ import annotations

import asyncio

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
    MappableRange,
    MappingSpace,
    MemoryFile,
    MMapOpts,
    SharedMemory,
    TranslateResult,
)

BASE = 0x100000
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=BASE, top_down_base=1 << 32
)


class GatedMappable:
    """A SharedMemory whose translate results are held until a gate opens.

    Everything is forwarded to the real SharedMemory; only the return of
    ``translate`` waits for ``gate`` once the inner call has finished, which
    makes the window between "translated" and "installed" as wide as a test
    needs.
    """

    def __init__(self, inner: SharedMemory) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.translated = asyncio.Event()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrived = asyncio.Event()

    async def wait_in_flight(self, n: int) -> None:
        """Wait until ``n`` translate calls are in flight."""
        while self.in_flight < n:
            self.arrived.clear()
            await self.arrived.wait()

    async def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        await self.inner.add_mapping(ms, ar, offset, writable)

    async def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        await self.inner.remove_mapping(ms, ar, offset, writable)

    async def copy_mapping(
        self,
        ms: MappingSpace,
        src_ar: AddrRange,
        dst_ar: AddrRange,
        offset: int,
        writable: bool,
    ) -> None:
        await self.inner.copy_mapping(ms, src_ar, dst_ar, offset, writable)

    async def translate(
        self, required: MappableRange, optional: MappableRange, at: AccessType
    ) -> TranslateResult:
        self.calls += 1
        self.in_flight += 1
        self.arrived.set()
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Translate one page at a time, so that separate faults make
            # separate calls.
            result = await self.inner.translate(required, required, at)
            self.translated.set()
            await self.gate.wait()
            return result
        finally:
            self.in_flight -= 1

    async def invalidate_unsavable(self) -> None:
        await self.inner.invalidate_unsavable()

    def inc_ref(self) -> None:
        self.inner.inc_ref()

    async def dec_ref(self) -> None:
        await self.inner.dec_ref()

    def mapped_name(self) -> str:
        return self.inner.mapped_name()

    def device_id(self) -> int:
        return self.inner.device_id()

    def inode_id(self) -> int:
        return self.inner.inode_id()

    async def msync(self, mr: MappableRange) -> None:
        await self.inner.msync(mr)


async def _setup(
    mf: MemoryFile, pages: int
) -> tuple[SharedMemory, GatedMappable, AddressSpace, int]:
    shm = SharedMemory(mf, pages * PAGE_SIZE, name="/gated")
    await shm.write(0, bytes(range(256)) * (pages * PAGE_SIZE // 256))
    gated = GatedMappable(shm)
    asp = AddressSpace(mf, layout=LAYOUT)
    addr = await asp.mmap(
        MMapOpts(length=pages * PAGE_SIZE, mappable=gated, mapping_identity=gated)
    )
    return shm, gated, asp, addr


async def _teardown(mf: MemoryFile, shm: SharedMemory, asp: AddressSpace) -> None:
    asp.check_invariants()
    await asp.aclose()
    await shm.dec_ref()
    assert not shm.is_mapped()
    assert mf.statistics().used_bytes == 0


async def test_translation_overlapped_by_truncate_is_discarded() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 4)
        gated.gate.clear()
        with anyio.fail_after(30):
            fault = asyncio.ensure_future(
                asp.handle_fault(addr + 2 * PAGE_SIZE, AccessType.READ)
            )
            await gated.translated.wait()
            # The fault holds a translation of page 2; truncating frees it.
            await shm.truncate(PAGE_SIZE)
            gated.gate.set()
            with pytest.raises(BusError):
                await fault
        # The stale translation was asked for again (and failed past EOF).
        assert gated.calls == 2
        assert asp.statistics().rss == 0
        await _teardown(mf, shm, asp)


async def test_translation_overlapped_by_invalidate_is_retranslated() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 4)
        gated.gate.clear()
        with anyio.fail_after(30):
            fault = asyncio.ensure_future(asp.copy_in(addr + PAGE_SIZE, 16))
            await gated.translated.wait()
            await asp.invalidate(
                AddrRange(addr, addr + 4 * PAGE_SIZE), InvalidateOpts()
            )
            gated.gate.set()
            assert await fault == bytes(range(16))
        assert gated.calls == 2
        await _teardown(mf, shm, asp)


async def test_unrelated_invalidation_keeps_the_translation() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 4)
        gated.gate.clear()
        with anyio.fail_after(30):
            fault = asyncio.ensure_future(asp.copy_in(addr, 8))
            await gated.translated.wait()
            await asp.invalidate(
                AddrRange(addr + 3 * PAGE_SIZE, addr + 4 * PAGE_SIZE), InvalidateOpts()
            )
            gated.gate.set()
            assert await fault == bytes(range(8))
        assert gated.calls == 1
        assert asp.statistics().rss == PAGE_SIZE
        await _teardown(mf, shm, asp)


async def test_faults_on_different_pages_translate_concurrently() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 8)
        gated.gate.clear()
        with anyio.fail_after(30):
            faults = [
                asyncio.ensure_future(
                    asp.handle_fault(addr + i * PAGE_SIZE, AccessType.READ)
                )
                for i in range(8)
            ]
            await gated.wait_in_flight(8)
            gated.gate.set()
            await asyncio.gather(*faults)
        assert gated.max_in_flight == 8
        assert asp.statistics().rss == 8 * PAGE_SIZE
        # Each page was installed once, with one reference from the space.
        assert await asp.copy_in(addr, 8 * PAGE_SIZE) == await shm.read(
            0, 8 * PAGE_SIZE
        )
        await _teardown(mf, shm, asp)


async def test_concurrent_faults_on_one_page_install_it_once() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 2)
        gated.gate.clear()
        with anyio.fail_after(30):
            faults = [
                asyncio.ensure_future(asp.handle_fault(addr, AccessType.READ))
                for _ in range(16)
            ]
            await gated.wait_in_flight(16)
            gated.gate.set()
            await asyncio.gather(*faults)
        assert asp.statistics().rss == PAGE_SIZE
        assert asp.statistics().pmas == 1
        await _teardown(mf, shm, asp)


async def test_cancelled_in_flight_translation_leaves_nothing() -> None:
    with MemoryFile("t") as mf:
        shm, gated, asp, addr = await _setup(mf, 2)
        gated.gate.clear()
        with anyio.fail_after(30):
            fault = asyncio.ensure_future(asp.handle_fault(addr, AccessType.READ))
            await gated.translated.wait()
            fault.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fault
        assert asp.statistics().rss == 0
        gated.gate.set()
        # The invalidation log is idle again: a later translation is used.
        await asp.handle_fault(addr, AccessType.READ)
        assert asp.statistics().rss == PAGE_SIZE
        await _teardown(mf, shm, asp)
