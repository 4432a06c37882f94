"""An event-driven race test: a page fault racing a truncate.

A guest reads pages of a mapped file while the fetch of those pages is slow;
before the fetch lands, the file is truncated below them. The outcome must
not depend on timing: the fault past the new end ends in ``BusError`` (the
guest's ``SIGBUS``), the bytes before the new end are intact, and the tail of
the last page reads as zeros.

The order of events is forced with ``asyncio.Event``s in a backing wrapper,
never with sleeps, so the test asserts one exact outcome on every run. The
storage underneath is a :class:`~aiomemmap.FaultInjectingBacking` with a
seeded latency, as a slow network file would be.

Run it with ``python examples/race_test.py``.
"""

from __future__ import annotations

import asyncio
import random

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    Backing,
    BusError,
    BytesBacking,
    CachedFile,
    FaultInjectingBacking,
    MemoryFile,
    MMapOpts,
    NoReadahead,
)

FILE_PAGES = 16
NEW_SIZE = 8 * PAGE_SIZE + 100
RACING_PAGE = 10


class GatedBacking:
    """Forwards to a backing; reads overlapping ``gate_offset`` wait for a gate.

    ``started`` is set when such a read arrives; the read goes on only once
    ``release`` is set. Everything else passes straight through.
    """

    def __init__(self, inner: Backing, gate_offset: int) -> None:
        self.inner = inner
        self.readonly = inner.readonly
        self.gate_offset = gate_offset
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.gated_reads = 0

    async def size(self) -> int:
        return await self.inner.size()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        if offset <= self.gate_offset < offset + len(buf):
            self.gated_reads += 1
            self.started.set()
            await self.release.wait()
        return await self.inner.read_into(offset, buf)

    async def write_from(self, offset: int, data: memoryview) -> int:
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def version(self) -> str | None:
        return await self.inner.version()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def main() -> None:
    data = random.Random(42).randbytes(FILE_PAGES * PAGE_SIZE)
    slow = FaultInjectingBacking(
        BytesBacking(data), latency=0.002, jitter=0.001, seed=7
    )
    backing = GatedBacking(slow, gate_offset=RACING_PAGE * PAGE_SIZE)
    with MemoryFile("race-test") as mf:
        # No readahead: each fault fetches exactly the pages it needs, so the
        # gate catches exactly the racing fault.
        cf = CachedFile(backing, mf, readahead=NoReadahead(), writable=True)
        async with AddressSpace(mf) as asp:
            addr = await asp.mmap(
                MMapOpts(
                    length=FILE_PAGES * PAGE_SIZE,
                    mappable=cf,
                    mapping_identity=cf,
                    perms=AccessType.READ,
                    max_perms=AccessType.READ,
                )
            )
            # 1. The first eight pages are read before anything happens.
            head = await asp.copy_in(addr, 8 * PAGE_SIZE)
            assert head == data[: 8 * PAGE_SIZE]

            # 2. A guest faults on page 10; its fetch is held at the gate.
            fault = asyncio.create_task(
                asp.copy_in(addr + RACING_PAGE * PAGE_SIZE, 2 * PAGE_SIZE)
            )
            await backing.started.wait()
            print(f"fault on page {RACING_PAGE} is waiting for its fetch")

            # 3. The file shrinks below that page while the fetch is pending.
            await cf.truncate(NEW_SIZE)
            print(f"truncated to {NEW_SIZE:#x} bytes while the fetch was pending")
            assert cf.size == NEW_SIZE

            # 4. The fetch lands, too late: the fault must end in SIGBUS.
            backing.release.set()
            failure: BusError | None = None
            try:
                await fault
            except BusError as exc:
                failure = exc
            assert failure is not None, "a fault past the new end must raise BusError"
            print(f"the racing fault got {failure} (bytes_done={failure.bytes_done})")
            assert failure.bytes_done == 0

            # 5. Bytes before the new end are intact; the rest of the last
            #    page reads as zeros, and the page after it is gone.
            last = await asp.copy_in(addr + 8 * PAGE_SIZE, PAGE_SIZE)
            assert last == data[8 * PAGE_SIZE : NEW_SIZE] + bytes(PAGE_SIZE - 100)
            assert await asp.copy_in(addr, 8 * PAGE_SIZE) == data[: 8 * PAGE_SIZE]
            try:
                await asp.copy_in(addr + 9 * PAGE_SIZE, 1)
            except BusError:
                print("page 9, past the new end, faults with BusError too")
            else:
                raise AssertionError("page 9 is past the end of the file")
            assert backing.gated_reads == 1
            print(
                f"backing: {slow.reads} reads, "
                f"{slow.errors_injected} injected errors; {cf.statistics()}"
            )
        await cf.aclose()
        await backing.aclose()
        assert mf.statistics().used_bytes == 0
    print("done: the race ended the same way it always does")


if __name__ == "__main__":
    asyncio.run(main())
