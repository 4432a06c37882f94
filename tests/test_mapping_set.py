"""MappingSet: gVisor's six mapping-set tests, derived cases, bad input, a model."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aiomemmap import (
    AddrRange,
    AlignmentError,
    FileRange,
    InvalidateOpts,
    InvalidationBus,
    InvariantError,
    MappableRange,
    MappingSet,
)

P = 0x1000


class RecordingSpace:
    """A mapping space that records the ranges it is told to invalidate."""

    def __init__(self, name: str = "ms") -> None:
        self.name = name
        self.inv: list[AddrRange] = []
        self.opts: list[InvalidateOpts] = []

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.inv.append(ar)
        self.opts.append(opts)

    def __repr__(self) -> str:
        return f"RecordingSpace({self.name})"


def A(start: int, end: int) -> AddrRange:
    return AddrRange(start, end)


def M(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def segments(s: MappingSet) -> list[tuple[MappableRange, set[tuple[int, int, bool]]]]:
    out: dict[MappableRange, set[tuple[int, int, bool]]] = {}
    for mr, _, ar, w in s.mappings():
        out.setdefault(mr, set()).add((ar.start, ar.end, w))
    return sorted(out.items())


def test_mapping_set_add_remove_mapping():
    s = MappingSet()
    ms = RecordingSpace()
    assert s.add_mapping(ms, A(0x10000, 0x12000), 0x1000, True) == [M(0x1000, 0x3000)]
    assert s.add_mapping(ms, A(0x20000, 0x21000), 0x2000, True) == []
    assert segments(s) == [
        (M(0x1000, 0x2000), {(0x10000, 0x11000, True)}),
        (M(0x2000, 0x3000), {(0x11000, 0x12000, True), (0x20000, 0x21000, True)}),
    ]
    assert s.add_mapping(ms, A(0x30000, 0x31000), 0x4000, True) == [M(0x4000, 0x5000)]
    assert s.add_mapping(ms, A(0x12000, 0x15000), 0x3000, True) == [
        M(0x3000, 0x4000),
        M(0x5000, 0x6000),
    ]
    assert s.remove_mapping(ms, A(0x10000, 0x11000), 0x1000, True) == [
        M(0x1000, 0x2000)
    ]
    assert s.remove_mapping(ms, A(0x20000, 0x21000), 0x2000, True) == []
    # The removal merged [0x2000, 0x3000) and [0x3000, 0x4000) around its range.
    assert segments(s)[0] == (M(0x2000, 0x4000), {(0x11000, 0x13000, True)})
    assert s.remove_mapping(ms, A(0x11000, 0x15000), 0x2000, True) == [
        M(0x2000, 0x4000),
        M(0x5000, 0x6000),
    ]
    assert s.remove_mapping(ms, A(0x30000, 0x31000), 0x4000, True) == [
        M(0x4000, 0x5000)
    ]
    assert s.is_empty()
    s.check_invariants()


def test_check_invariants_raises_invariant_error_on_an_empty_segment():
    s = MappingSet()
    s.add_mapping(RecordingSpace(), A(0x10000, 0x12000), 0, False)
    next(iter(s._set)).value.clear()
    with pytest.raises(InvariantError, match=r"segment \[0x0, 0x2000\) is empty"):
        s.check_invariants()


def test_check_invariants_raises_invariant_error_on_a_mismatched_mapping():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x12000), 0, False)
    seg = next(iter(s._set))
    seg.value.clear()
    seg.value[(ms, 0x10000, 0x11000, False)] = None
    with pytest.raises(InvariantError, match=r"does not match segment"):
        s.check_invariants()


async def test_mapping_set_invalidate_whole_mapping():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x11000), 0, True)
    await s.invalidate(M(0, 0x1000), InvalidateOpts())
    assert ms.inv == [A(0x10000, 0x11000)]


async def test_mapping_set_invalidate_partial_mapping():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x13000), 0, True)
    await s.invalidate(M(0x1000, 0x2000), InvalidateOpts())
    assert ms.inv == [A(0x11000, 0x12000)]


async def test_mapping_set_invalidate_multiple_mappings():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x11000), 0, True)
    s.add_mapping(ms, A(0x20000, 0x21000), 0x2000, True)
    await s.invalidate(M(0, 0x3000), InvalidateOpts())
    assert ms.inv == [A(0x10000, 0x11000), A(0x20000, 0x21000)]


async def test_mapping_set_invalidate_overlapping_mappings():
    s = MappingSet()
    ms1 = RecordingSpace("ms1")
    ms2 = RecordingSpace("ms2")
    s.add_mapping(ms1, A(0x10000, 0x12000), 0, True)
    s.add_mapping(ms2, A(0x20000, 0x22000), 0x1000, True)
    await s.invalidate(M(0x1000, 0x2000), InvalidateOpts(invalidate_private=True))
    assert ms1.inv == [A(0x11000, 0x12000)]
    assert ms2.inv == [A(0x20000, 0x21000)]
    assert ms1.opts == [InvalidateOpts(invalidate_private=True)]


def test_mapping_set_mixed_writable_mappings():
    s = MappingSet()
    ms = RecordingSpace()
    assert s.add_mapping(ms, A(0x10000, 0x12000), 0x1000, True) == [M(0x1000, 0x3000)]
    assert s.add_mapping(ms, A(0x20000, 0x22000), 0x2000, False) == [M(0x3000, 0x4000)]
    # No writable mapping at 0x20000: nothing is removed.
    assert s.remove_mapping(ms, A(0x20000, 0x21000), 0x2000, True) == []
    # The read-only piece goes, but the writable 0x11000 mapping still covers it.
    assert s.remove_mapping(ms, A(0x20000, 0x21000), 0x2000, False) == []
    assert segments(s)[0] == (M(0x1000, 0x3000), {(0x10000, 0x12000, True)})
    assert s.remove_mapping(ms, A(0x11000, 0x12000), 0x2000, True) == [
        M(0x2000, 0x3000)
    ]
    assert segments(s) == [
        (M(0x1000, 0x2000), {(0x10000, 0x11000, True)}),
        (M(0x3000, 0x4000), {(0x21000, 0x22000, False)}),
    ]
    # Flag mismatch, and the hole at 0x2000 is skipped silently.
    assert s.remove_mapping(ms, A(0x10000, 0x12000), 0x1000, False) == []
    assert s.remove_mapping(ms, A(0x10000, 0x12000), 0x1000, True) == [
        M(0x1000, 0x2000)
    ]
    assert s.remove_mapping(ms, A(0x21000, 0x22000), 0x3000, False) == [
        M(0x3000, 0x4000)
    ]
    assert s.is_empty()


async def test_mapping_set_add_never_merges():
    s = MappingSet()
    ms = RecordingSpace()
    assert s.add_mapping(ms, A(0x10000, 0x11000), 0, True) == [M(0, 0x1000)]
    assert s.add_mapping(ms, A(0x11000, 0x12000), 0x1000, True) == [M(0x1000, 0x2000)]
    await s.invalidate(M(0, 0x2000), InvalidateOpts())
    assert ms.inv == [A(0x10000, 0x11000), A(0x11000, 0x12000)]
    assert s.remove_mapping(ms, A(0x10000, 0x12000), 0, True) == [
        M(0, 0x1000),
        M(0x1000, 0x2000),
    ]


def test_mapping_set_remove_without_segment_raises_and_changes_nothing():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x11000), 0x1000, True)
    before = segments(s)
    with pytest.raises(LookupError, match="0x0"):
        s.remove_mapping(ms, A(0x10000, 0x12000), 0, True)
    assert segments(s) == before


async def test_mapping_set_invalidate_all_sends_full_ranges():
    s = MappingSet()
    ms1 = RecordingSpace("ms1")
    ms2 = RecordingSpace("ms2")
    s.add_mapping(ms1, A(0x10000, 0x13000), 0, True)
    s.add_mapping(ms2, A(0x40000, 0x41000), 0x1000, False)
    await s.invalidate_all(InvalidateOpts())
    # ms1's mapping was split at 0x1000 and 0x2000 by ms2's mapping.
    assert sorted(ms1.inv) == [
        A(0x10000, 0x11000),
        A(0x11000, 0x12000),
        A(0x12000, 0x13000),
    ]
    assert ms2.inv == [A(0x40000, 0x41000)]


async def test_mapping_set_invalidate_unmapped_range_delivers_nothing():
    bus = InvalidationBus()
    s = MappingSet(bus)
    await s.invalidate(M(0, P), InvalidateOpts())
    await s.invalidate_all(InvalidateOpts())
    assert bus.statistics().deliveries == 0
    assert s.bus is bus


async def test_mapping_set_invalidate_uses_its_bus():
    bus = InvalidationBus()
    s = MappingSet(bus)
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x12000), 0, True)
    await s.invalidate(M(0, 2 * P), InvalidateOpts())
    assert bus.statistics().deliveries == 1


def test_mapping_set_mapped_ranges():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x12000), 0, True)
    s.add_mapping(ms, A(0x20000, 0x21000), 0x1000, True)
    assert list(s.mapped_ranges()) == [M(0, 0x1000), M(0x1000, 0x2000)]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((A(0, P), 0, 1), TypeError, "writable"),
        ((M(0, P), 0, True), TypeError, "ar must be an AddrRange"),
        ((A(0, P), 1.0, True), TypeError, "offset"),
        ((A(0, 0), 0, True), ValueError, "empty"),
        ((A(0, 0x800), 0, True), AlignmentError, "page-aligned"),
        ((A(0, P), 0x800, True), AlignmentError, "offset 0x800"),
        ((A(0, 2 * P), 2**64 - P, True), ValueError, "64-bit"),
    ],
)
def test_mapping_set_rejects_bad_input(args, error, match):
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x11000), 0, True)
    before = segments(s)
    with pytest.raises(error, match=match):
        s.add_mapping(ms, *args)
    with pytest.raises(error, match=match):
        s.remove_mapping(ms, *args)
    assert segments(s) == before


def test_mapping_set_rejects_unhashable_space_and_bad_bus():
    s = MappingSet()
    with pytest.raises(TypeError, match="hashable"):
        s.add_mapping([], A(0, P), 0, True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bus"):
        MappingSet(bus=object())  # type: ignore[arg-type]


async def test_mapping_set_invalidate_rejects_bad_input():
    s = MappingSet()
    ms = RecordingSpace()
    s.add_mapping(ms, A(0x10000, 0x11000), 0, True)
    with pytest.raises(TypeError, match="MappableRange"):
        await s.invalidate(FileRange(0, P), InvalidateOpts())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        await s.invalidate(M(0, 0), InvalidateOpts())
    with pytest.raises(AlignmentError):
        await s.invalidate(M(0, 0x10), InvalidateOpts())
    with pytest.raises(TypeError, match="opts"):
        await s.invalidate(M(0, P), True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="opts"):
        await s.invalidate_all(None)  # type: ignore[arg-type]
    assert ms.inv == []


async def test_mapping_set_invalidate_collects_failures():
    class FailingSpace(RecordingSpace):
        async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
            raise OSError("space is gone")

    s = MappingSet(InvalidationBus())
    good = RecordingSpace("good")
    bad = FailingSpace("bad")
    s.add_mapping(bad, A(0x10000, 0x11000), 0, True)
    s.add_mapping(good, A(0x20000, 0x21000), 0, True)
    with pytest.raises(ExceptionGroup) as info:
        await s.invalidate(M(0, P), InvalidateOpts())
    assert [type(e) for e in info.value.exceptions] == [OSError]
    assert good.inv == [A(0x20000, 0x21000)]


# A model of the set: offset page -> {(space, address page, writable)}.
SPACES = [RecordingSpace(f"s{i}") for i in range(3)]
NPAGES = 16


class MappingSetMachine(RuleBasedStateMachine):
    """MappingSet against a per-page model of who maps what."""

    def __init__(self) -> None:
        super().__init__()
        self.set = MappingSet(InvalidationBus())
        self.model: dict[int, set[tuple[int, int, bool]]] = {}

    def _pages(self, space: int, addr: int, offset: int, n: int, w: bool):
        return [(offset + i, (space, addr + i, w)) for i in range(n)]

    @rule(
        space=st.integers(0, 2),
        addr=st.integers(0, NPAGES - 1),
        offset=st.integers(0, NPAGES - 1),
        n=st.integers(1, 6),
        w=st.booleans(),
    )
    def add(self, space: int, addr: int, offset: int, n: int, w: bool) -> None:
        n = min(n, NPAGES - offset)
        before = set(self.model)
        added = self.set.add_mapping(
            SPACES[space], A(addr * P, (addr + n) * P), offset * P, w
        )
        for page, m in self._pages(space, addr, offset, n, w):
            self.model.setdefault(page, set()).add(m)
        newly = {p for r in added for p in range(r.start // P, r.end // P)}
        assert newly == set(self.model) - before
        assert added == sorted(added)

    @rule(
        space=st.integers(0, 2),
        addr=st.integers(0, NPAGES - 1),
        offset=st.integers(0, NPAGES - 1),
        n=st.integers(1, 6),
        w=st.booleans(),
    )
    def remove(self, space: int, addr: int, offset: int, n: int, w: bool) -> None:
        n = min(n, NPAGES - offset)
        ar = A(addr * P, (addr + n) * P)
        if offset not in self.model:
            with pytest.raises(LookupError):
                self.set.remove_mapping(SPACES[space], ar, offset * P, w)
            return
        before = set(self.model)
        removed = self.set.remove_mapping(SPACES[space], ar, offset * P, w)
        for page, m in self._pages(space, addr, offset, n, w):
            if page in self.model:
                self.model[page].discard(m)
                if not self.model[page]:
                    del self.model[page]
        gone = {p for r in removed for p in range(r.start // P, r.end // P)}
        assert gone == before - set(self.model)

    @rule()
    def check_model(self) -> None:
        seen: dict[int, set[tuple[int, int, bool]]] = {}
        for mr, ms, ar, w in self.set.mappings():
            space = SPACES.index(ms)  # type: ignore[arg-type]
            for i in range(mr.length // P):
                seen.setdefault(mr.start // P + i, set()).add(
                    (space, ar.start // P + i, w)
                )
        assert seen == self.model

    @invariant()
    def invariants(self) -> None:
        self.set.check_invariants()
        assert self.set.is_empty() == (not self.model)


TestMappingSetMachine = MappingSetMachine.TestCase
