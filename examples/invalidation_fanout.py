"""Fan an invalidation out to many mapping spaces through a MappingSet.

A toy Mappable keeps its pages in a MemoryFile and records who maps them in a
MappingSet. When part of it changes, every space that maps those offsets is
told, concurrently, and each drops exactly the addresses it maps there.

Run it with ``python examples/invalidation_fanout.py``.
"""

from __future__ import annotations

import asyncio

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddrRange,
    FileRange,
    InvalidateOpts,
    InvalidationBus,
    MappableRange,
    MappingSet,
    MemoryFile,
)


class Space:
    """A mapping space that remembers which of its pages are still valid."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.valid: set[int] = set()

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        await asyncio.sleep(0)  # a real space would take its lock here
        for addr in range(ar.start, ar.end, PAGE_SIZE):
            self.valid.discard(addr)


async def main() -> None:
    bus = InvalidationBus()
    mappings = MappingSet(bus)
    with MemoryFile("example") as mf:
        pages = mf.allocate(4 * PAGE_SIZE)
        view = mf.map_internal(pages, AccessType.READ_WRITE)
        view[0][:5] = b"hello"

        spaces = [Space(f"space{i}") for i in range(3)]
        for i, space in enumerate(spaces):
            base = 0x10000 * (i + 1)
            ar = AddrRange(base, base + 4 * PAGE_SIZE)
            new = mappings.add_mapping(space, ar, 0, writable=False)
            space.valid.update(range(ar.start, ar.end, PAGE_SIZE))
            print(f"{space.name} maps offsets [0, 0x4000) at {ar}; newly mapped: {new}")

        # Offsets [0x1000, 0x3000) change: every space loses exactly two pages.
        await mappings.invalidate(
            MappableRange(PAGE_SIZE, 3 * PAGE_SIZE), InvalidateOpts()
        )
        for space in spaces:
            print(f"{space.name} still valid: {sorted(hex(a) for a in space.valid)}")
            assert len(space.valid) == 2

        first = mf.map_internal(
            FileRange(pages.start, pages.start + 5), AccessType.READ
        )
        print("first page still reads", first.tobytes())
        print("bus statistics:", bus.statistics())
        for i, space in enumerate(spaces):
            base = 0x10000 * (i + 1)
            mappings.remove_mapping(
                space, AddrRange(base, base + 4 * PAGE_SIZE), 0, writable=False
            )
        assert mappings.is_empty()
        mf.dec_ref(pages)
        assert mf.statistics().used_bytes == 0
    print("done: every mapping removed and every page freed")


if __name__ == "__main__":
    asyncio.run(main())
