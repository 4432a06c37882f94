"""A contract suite that every Mappable must pass.

Each check is an async function taking a factory::

    async def make_mappable(size: int, contents: bytes)
        -> tuple[mappable, MemoryFile, cleanup]

that builds a Mappable of ``size`` bytes holding ``contents`` (``len(contents)
== size``) whose pages live in the returned memory file, and an async
``cleanup()`` that closes the Mappable (not the memory file). Besides the
:class:`~aiomemmap.Mappable` methods, the suite uses three methods that every
file-like Mappable of this package has: ``async read(offset, n)``, ``async
truncate(size)`` and ``is_mapped()`` (whether any mapping is recorded).

Every check ends by calling ``cleanup()`` and asserting that the memory file
holds no used page, then closes the memory file.

A factory with a true ``read_only`` attribute builds Mappables that cannot be
written (a cached file over HTTP, say): it is run against
:data:`READ_ONLY_CHECKS`, in which every mapping is read-only, every access a
read, and nothing truncates.

``tests/test_mappable_contract.py`` runs :data:`CONTRACT_CHECKS` (or
:data:`READ_ONLY_CHECKS`) against each factory it lists.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddrRange,
    BlockSeq,
    BusError,
    InvalidateOpts,
    MappableRange,
    MemoryFile,
    check_translate_result,
    copy_seq,
)

P = PAGE_SIZE
Cleanup = Callable[[], Awaitable[None]]
Factory = Callable[[int, bytes], Awaitable[tuple[Any, MemoryFile, Cleanup]]]


class RecordingSpace:
    """A mapping space that records invalidations; optionally blocks in them.

    If ``gate`` is set, each ``invalidate`` first sets ``entered`` and then
    waits for ``gate``.
    """

    def __init__(self, name: str = "ms", gate: anyio.Event | None = None) -> None:
        self.name = name
        self.calls: list[tuple[AddrRange, InvalidateOpts]] = []
        self.gate = gate
        self.entered = anyio.Event()

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append((ar, opts))

    def pages(self) -> set[int]:
        """Return the set of page addresses invalidated so far."""
        return {a for ar, _ in self.calls for a in range(ar.start, ar.end, P)}

    def __repr__(self) -> str:
        return f"RecordingSpace({self.name})"


def pattern(size: int, seed: int = 1) -> bytes:
    """Return ``size`` pseudo-random bytes with no zero byte."""
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(size))


def expected_bytes(contents: bytes, start: int, end: int) -> bytes:
    """Return ``contents[start:end]`` padded with zeros past its end."""
    chunk = contents[start:end]
    return chunk + bytes(end - start - len(chunk))


def writable(make: Factory) -> bool:
    """Whether the factory's Mappables accept writes."""
    return not getattr(make, "read_only", False)


def round_up(x: int) -> int:
    return -(-x // P) * P


async def finish(mf: MemoryFile, cleanup: Cleanup) -> None:
    """Close the mappable, check that it freed everything, close the file."""
    await cleanup()
    try:
        assert mf.statistics().used_bytes == 0, mf.statistics()
    finally:
        mf.close()


async def check_translate_results_valid_and_correct(make: Factory) -> None:
    """Random translate calls, within and past the size, read and write."""
    size = 9 * P + 123
    contents = pattern(size)
    m, mf, cleanup = await make(size, contents)
    ms = RecordingSpace()
    span = 16 * P
    rng = random.Random(7)
    w = writable(make)
    accesses = (
        [AccessType.READ, AccessType.READ_WRITE, AccessType.WRITE]
        if w
        else [AccessType.READ, AccessType.READ_EXECUTE]
    )
    try:
        await m.add_mapping(ms, AddrRange(0, span), 0, w)
        for _ in range(60):
            a = rng.randrange(0, 15)
            b = rng.randrange(a + 1, 16)
            lo = rng.randrange(0, a + 1)
            hi = rng.randrange(b, 17)
            required = MappableRange(a * P, b * P)
            optional = MappableRange(lo * P, hi * P)
            at = rng.choice(accesses)
            ts, err = await m.translate(required, optional, at)
            problem = check_translate_result(required, optional, at, ts, err)
            assert problem is None, (required, optional, at, ts, err, problem)
            if required.end <= round_up(size):
                assert err is None, err
            else:
                assert isinstance(err, BusError), err
                if ts:
                    assert ts[-1].source.end <= round_up(size)
            for t in ts:
                got = t.file.map_internal(t.file_range(), AccessType.READ).tobytes()
                want = expected_bytes(contents, t.source.start, t.source.end)
                assert got == want, t
        await m.remove_mapping(ms, AddrRange(0, span), 0, w)
        assert not m.is_mapped()
    finally:
        await finish(mf, cleanup)


async def check_write_through_translation_visible_to_read(make: Factory) -> None:
    size = 4 * P
    contents = pattern(size, seed=2)
    m, mf, cleanup = await make(size, contents)
    ms = RecordingSpace()
    try:
        await m.add_mapping(ms, AddrRange(0x10000, 0x10000 + size), 0, True)
        req = MappableRange(P, 3 * P)
        ts, err = await m.translate(req, req, AccessType.READ_WRITE)
        assert err is None
        assert check_translate_result(req, req, AccessType.READ_WRITE, ts, err) is None
        new = bytes(range(256)) * (2 * P // 256)
        pos = 0
        for t in ts:
            dst = t.file.map_internal(t.file_range(), AccessType.WRITE)
            pos += copy_seq(dst, BlockSeq([memoryview(new)[pos:]]))
        assert pos == len(new)
        assert await m.read(0, size) == contents[:P] + new + contents[3 * P :]
        await m.remove_mapping(ms, AddrRange(0x10000, 0x10000 + size), 0, True)
    finally:
        await finish(mf, cleanup)


async def check_mapping_bookkeeping_balances(make: Factory) -> None:
    size = 8 * P
    m, mf, cleanup = await make(size, pattern(size, seed=3))
    a, b = RecordingSpace("a"), RecordingSpace("b")
    w = writable(make)
    # With writes, the first two differ only in their writable flag; without,
    # they differ in their addresses (one triple is one mapping).
    second = 0x100000 if w else 0x500000
    mappings = [
        (a, AddrRange(0x100000, 0x100000 + 4 * P), 0, w),
        (a, AddrRange(second, second + 4 * P), 0, False),
        (a, AddrRange(0x200000, 0x200000 + 2 * P), 3 * P, w),
        (b, AddrRange(0x100000, 0x100000 + 8 * P), 0, False),
        (b, AddrRange(0x300000, 0x300000 + P), 7 * P, w),
    ]
    try:
        assert not m.is_mapped()
        for ms, ar, off, w in mappings:
            await m.add_mapping(ms, ar, off, w)
            assert m.is_mapped()
        # mremap-style: copy then remove the source.
        src, dst = AddrRange(0x300000, 0x300000 + P), AddrRange(0x400000, 0x400000 + P)
        await m.copy_mapping(b, src, dst, 7 * P, w)
        await m.remove_mapping(b, src, 7 * P, w)
        mappings[-1] = (b, dst, 7 * P, w)
        for ms, ar, off, w in reversed(mappings):
            assert m.is_mapped()
            await m.remove_mapping(ms, ar, off, w)
        assert not m.is_mapped()
    finally:
        await finish(mf, cleanup)


async def check_truncate_invalidates_exactly_the_removed_pages(make: Factory) -> None:
    size = 10 * P
    contents = pattern(size, seed=4)
    m, mf, cleanup = await make(size, contents)
    low = RecordingSpace("low")  # maps offsets [0, 3P): below the new end
    mid = RecordingSpace("mid")  # maps [2P, 8P): straddles it
    high = RecordingSpace("high")  # maps [6P, 10P): wholly removed
    maps = [
        (low, AddrRange(0x10000, 0x10000 + 3 * P), 0),
        (mid, AddrRange(0x40000, 0x40000 + 6 * P), 2 * P),
        (high, AddrRange(0x80000, 0x80000 + 4 * P), 6 * P),
    ]
    try:
        for ms, ar, off in maps:
            await m.add_mapping(ms, ar, off, True)
            r = MappableRange(off, off + ar.length)
            _, err = await m.translate(r, r, AccessType.READ)
            assert err is None
        await m.truncate(4 * P + 10)  # removes the whole pages [5P, 10P)
        assert low.calls == []
        assert mid.pages() == set(range(0x40000 + 3 * P, 0x40000 + 6 * P, P))
        assert high.pages() == set(range(0x80000, 0x80000 + 4 * P, P))
        for ms in (mid, high):
            assert all(o.invalidate_private for _, o in ms.calls)
        assert await m.read(0, size) == contents[: 4 * P + 10]
        # The tail of the last page reads as zero once the file grows again.
        await m.truncate(5 * P)
        assert await m.read(4 * P, P) == contents[4 * P : 4 * P + 10] + bytes(P - 10)
        # Shrinking within one page invalidates nothing.
        n = len(mid.calls) + len(high.calls)
        await m.truncate(4 * P + 1)
        assert len(mid.calls) + len(high.calls) == n
        for ms, ar, off in maps:
            await m.remove_mapping(ms, ar, off, True)
        assert not m.is_mapped()
    finally:
        await finish(mf, cleanup)


async def check_translate_past_end_is_bus_error(make: Factory) -> None:
    size = 2 * P + 1
    m, mf, cleanup = await make(size, pattern(size, seed=5))
    ms = RecordingSpace()
    try:
        await m.add_mapping(ms, AddrRange(0, 8 * P), 0, False)
        req = MappableRange(3 * P, 4 * P)
        ts, err = await m.translate(req, MappableRange(0, 8 * P), AccessType.READ)
        assert ts == []
        assert isinstance(err, BusError)
        req = MappableRange(2 * P, 5 * P)
        ts, err = await m.translate(req, req, AccessType.READ)
        assert isinstance(err, BusError)
        assert [t.source for t in ts] == [MappableRange(2 * P, 3 * P)]
        await m.remove_mapping(ms, AddrRange(0, 8 * P), 0, False)
    finally:
        await finish(mf, cleanup)


async def check_everything_freed_after_close(make: Factory) -> None:
    size = 6 * P
    m, mf, cleanup = await make(size, pattern(size, seed=6))
    ms = RecordingSpace()
    w = writable(make)
    at = AccessType.READ_WRITE if w else AccessType.READ
    try:
        await m.add_mapping(ms, AddrRange(0, size), 0, w)
        _, err = await m.translate(MappableRange(0, size), MappableRange(0, size), at)
        assert err is None
        if w:
            await m.truncate(3 * P)
        await m.remove_mapping(ms, AddrRange(0, size), 0, w)
        assert mf.statistics().used_bytes > 0
    finally:
        await finish(mf, cleanup)


CONTRACT_CHECKS: tuple[Callable[[Factory], Awaitable[None]], ...] = (
    check_translate_results_valid_and_correct,
    check_write_through_translation_visible_to_read,
    check_mapping_bookkeeping_balances,
    check_truncate_invalidates_exactly_the_removed_pages,
    check_translate_past_end_is_bus_error,
    check_everything_freed_after_close,
)
"""Every check of the contract, in a stable order."""

READ_ONLY_CHECKS: tuple[Callable[[Factory], Awaitable[None]], ...] = (
    check_translate_results_valid_and_correct,
    check_mapping_bookkeeping_balances,
    check_translate_past_end_is_bus_error,
    check_everything_freed_after_close,
)
"""The checks that need no write: for factories with ``read_only = True``."""
