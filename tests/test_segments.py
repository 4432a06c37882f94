"""Tests for the segment map (``aiomemmap._core.segments``).

The table tests and the randomised structural tests follow the cases of
gVisor's ``pkg/segment`` tests (Key=int, Value=int, merge iff the values are
equal); the rest check the Python API and a state machine against a
``dict[key -> value]`` model.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aiomemmap._core.segments import (
    NO_MERGE,
    Gap,
    NoMerge,
    Segment,
    SegmentMap,
    merge_equal,
    merge_never,
    split_copy,
)

U64 = 2**64
VALUE_OFFSET = 100_000
TEST_SIZE = 2000
INTERVAL = 10

Seg = tuple[int, int, Any]


def spans(m: SegmentMap[Any]) -> list[Seg]:
    """The map's segments as plain ``(start, end, value)`` tuples."""
    return [(s.start, s.end, s.value) for s in m]


def build(
    segs: list[Seg],
    merge: Callable[..., Any] | None = merge_equal,
    split: Callable[..., Any] | None = None,
    **kwargs: int,
) -> SegmentMap[Any]:
    """A map holding exactly ``segs`` (nothing merged)."""
    m: SegmentMap[Any] = SegmentMap(merge, split, **kwargs)
    for s, e, v in segs:
        m.insert_without_merging(s, e, v)
    m.check_invariants()
    return m


def merge_contiguous(start: int, mid: int, end: int, left: int, right: int) -> Any:
    """FileRangeSet-style values (file offsets): merge iff contiguous."""
    return left if left + (mid - start) == right else NO_MERGE


def split_offset(start: int, end: int, value: int, at: int) -> tuple[int, int]:
    """FileRangeSet-style values: the second half starts further into the file."""
    return value, value + (at - start)


def validate_offset_values(m: SegmentMap[int]) -> None:
    """gVisor's check: every segment's value is its start plus VALUE_OFFSET."""
    for s, _, v in m:
        assert v == s + VALUE_OFFSET, (s, v)


def incr(seg: Segment[int]) -> int:
    return seg.value + 1


# ---------------------------------------------------------------------------
# Construction and basic queries.


def test_segment_map_empty():
    m: SegmentMap[int] = SegmentMap()
    assert len(m) == 0
    assert not m
    assert m.is_empty()
    assert list(m) == []
    assert m.export() == []
    assert m.first_segment() is None
    assert m.last_segment() is None
    assert m.first_gap() == Gap(0, U64)
    assert m.last_gap() == Gap(0, U64)
    assert list(m.gaps()) == [Gap(0, U64)]
    assert m.span() == 0
    assert m.min_key == 0
    assert m.max_key == U64
    assert repr(m) == "SegmentMap({})"
    m.check_invariants()


def test_segment_map_custom_key_space():
    m: SegmentMap[int] = SegmentMap(min_key=10, max_key=20)
    assert (m.min_key, m.max_key) == (10, 20)
    assert m.first_gap() == Gap(10, 20)
    m.insert(10, 20, 1)
    assert m.first_gap() == Gap(10, 10)
    assert m.last_gap() == Gap(20, 20)
    assert list(m.gaps()) == []
    m.check_invariants()


def test_segment_map_len_iter_repr():
    m = build([(0, 10, "a"), (10, 0x20, "b"), (0x30, 0x40, "a")])
    assert len(m) == 3
    assert m
    assert not m.is_empty()
    assert [seg.length for seg in m] == [10, 0x16, 0x10]
    assert (
        repr(m) == "SegmentMap({[0x0, 0xa): 'a', [0xa, 0x20): 'b', [0x30, 0x40): 'a'})"
    )
    assert m.first_segment() == Segment(0, 10, "a")
    assert m.last_segment() == Segment(0x30, 0x40, "a")


def test_segment_and_gap_are_tuples_with_length():
    seg = Segment(3, 10, "v")
    assert seg == (3, 10, "v")
    assert seg.length == 7
    assert Gap(5, 5).length == 0
    assert Gap(2, 9) == (2, 9)


def test_segment_map_helper_functions():
    assert merge_never(0, 1, 2, "a", "a") is NO_MERGE
    assert merge_equal(0, 1, 2, "a", "a") == "a"
    assert merge_equal(0, 1, 2, "a", "b") is NO_MERGE
    assert split_copy(0, 10, "v", 5) == ("v", "v")
    assert isinstance(NO_MERGE, NoMerge)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"merge": 5}, TypeError, "merge must be callable"),
        ({"split": "x"}, TypeError, "split must be callable"),
        ({"min_key": 1.0}, TypeError, "min_key must be an int"),
        ({"max_key": True}, TypeError, "max_key must be an int"),
        ({"min_key": -1}, ValueError, "min_key=-0x1"),
        ({"max_key": U64 + 1}, ValueError, "max_key=0x10000000000000001"),
        ({"min_key": 5, "max_key": 4}, ValueError, "min_key=0x5, max_key=0x4"),
    ],
)
def test_segment_map_constructor_rejects_bad_input(
    kwargs: dict[str, Any], exc: type[Exception], match: str
):
    with pytest.raises(exc, match=match):
        SegmentMap(**kwargs)


def test_segment_map_defaults_never_merge_and_split_copies():
    m: SegmentMap[str] = SegmentMap()
    m.insert(0, 10, "a")
    m.insert(10, 20, "a")
    assert spans(m) == [(0, 10, "a"), (10, 20, "a")]
    m.merge_all()
    assert len(m) == 2
    assert m.split_at(5)
    assert spans(m) == [(0, 5, "a"), (5, 10, "a"), (10, 20, "a")]


# ---------------------------------------------------------------------------
# gVisor's table tests.


@pytest.mark.parametrize(
    ("inserts", "expected"),
    [
        ([(1000, 1100), (1100, 1200)], [(1000, 1200, 0)]),
        ([(1100, 1200), (1000, 1100)], [(1000, 1200, 0)]),
        ([(1000, 1100), (1200, 1300), (1100, 1200)], [(1000, 1300, 0)]),
    ],
    ids=["next", "prev", "both"],
)
def test_segment_map_insert_merges(inserts: list[tuple[int, int]], expected: list[Seg]):
    m: SegmentMap[int] = SegmentMap(merge_equal)
    for s, e in inserts:
        seg = m.insert(s, e, 0)
        assert seg.start <= s
        assert seg.end >= e
        assert m.find(s) == seg
        m.check_invariants()
    assert spans(m) == expected


def test_segment_map_insert_merges_prev_then_next_with_merged_value():
    calls: list[tuple[int, int, int, str, str]] = []

    def merge(start: int, mid: int, end: int, left: str, right: str) -> Any:
        calls.append((start, mid, end, left, right))
        return left + right

    m = build([(0, 10, "a"), (20, 30, "c")], merge)
    seg = m.insert(10, 20, "b")
    assert seg == Segment(0, 30, "abc")
    assert calls == [(0, 10, 20, "a", "b"), (0, 20, 30, "ab", "c")]
    assert spans(m) == [(0, 30, "abc")]


def test_segment_map_insert_does_not_merge_unequal_or_non_touching():
    m: SegmentMap[int] = SegmentMap(merge_equal)
    m.insert(0, 10, 1)
    m.insert(10, 20, 2)
    m.insert(21, 30, 2)
    assert spans(m) == [(0, 10, 1), (10, 20, 2), (21, 30, 2)]


def test_segment_map_split_at():
    m = build([(100, 200, 0)])
    for key in (300, 100, 200, 50, 0, U64 + 5, -1):
        assert not m.split_at(key)
        assert spans(m) == [(100, 200, 0)]
    assert m.split_at(150)
    assert spans(m) == [(100, 150, 0), (150, 200, 0)]
    assert not m.split_at(150)
    m.check_invariants()


def test_segment_map_split():
    m = build([(100, 200, 0)], split=split_offset)
    seg = m.find(120)
    assert seg is not None
    left, right = m.split(seg, 130)
    assert (left, right) == (Segment(100, 130, 0), Segment(130, 200, 30))
    assert spans(m) == [(100, 130, 0), (130, 200, 30)]
    for at in (100, 130, 99, 500):
        with pytest.raises(ValueError, match="cannot split"):
            m.split(left, at)
    assert spans(m) == [(100, 130, 0), (130, 200, 30)]


@pytest.mark.parametrize(
    ("initial", "expected"),
    [
        ((100, 200), [(100, 200)]),
        ((50, 200), [(50, 100), (100, 200)]),
        ((100, 250), [(100, 200), (200, 250)]),
        ((50, 250), [(50, 100), (100, 200), (200, 250)]),
    ],
)
def test_segment_map_isolate(initial: tuple[int, int], expected: list[tuple[int, int]]):
    bounds = (100, 200)
    m = build([(*initial, 0)])
    seg = m.lower_bound_segment(bounds[0])
    assert seg is not None
    piece = m.isolate(seg, *bounds)
    assert bounds[0] <= piece.start
    assert piece.end <= bounds[1]
    assert piece == Segment(100, 200, 0)
    assert m.find(piece.start) == piece
    assert [(s, e) for s, e, _ in spans(m)] == expected
    m.check_invariants()


def test_segment_map_isolate_with_split_function():
    m = build([(0, 100, 1000)], merge_contiguous, split_offset)
    seg = m.find(0)
    assert seg is not None
    piece = m.isolate(seg, 30, 60)
    assert piece == Segment(30, 60, 1030)
    assert spans(m) == [(0, 30, 1000), (30, 60, 1030), (60, 100, 1060)]
    assert m.unisolate(piece) == Segment(0, 100, 1000)


def test_segment_map_isolate_rejects_bad_ranges():
    m = build([(10, 20, 0), (30, 40, 0)])
    seg = m.find(10)
    assert seg is not None
    for start, end in ((0, 10), (20, 30), (15, 15), (18, 12), (40, 50)):
        with pytest.raises(ValueError, match=r"range|overlap"):
            m.isolate(seg, start, end)
    assert spans(m) == [(10, 20, 0), (30, 40, 0)]


@pytest.mark.parametrize(
    ("initial", "expected"),
    [
        ([], []),
        ([(100, 200, 0)], [(100, 200, 1)]),
        (
            [(50, 150, 0), (150, 250, 2)],
            [(50, 100, 0), (100, 150, 1), (150, 200, 3), (200, 250, 2)],
        ),
        ([(0, 100, 1), (100, 200, 0), (200, 300, 1)], [(0, 300, 1)]),
    ],
    ids=["empty", "single", "straddling", "remerge-both-sides"],
)
def test_segment_map_mutate_range(initial: list[Seg], expected: list[Seg]):
    m = build(initial)
    m.mutate_range(100, 200, incr)
    assert spans(m) == expected
    m.check_invariants()


def test_segment_map_mutate_range_passes_clipped_pieces_in_order():
    m = build([(0, 10, 0), (10, 20, 5), (25, 40, 7)])
    seen: list[Segment[int]] = []

    def record(seg: Segment[int]) -> int:
        seen.append(seg)
        return seg.value

    m.mutate_range(5, 30, record)
    assert seen == [Segment(5, 10, 0), Segment(10, 20, 5), Segment(25, 30, 7)]
    # The values did not change, so the pieces merged back with their halves.
    assert spans(m) == [(0, 10, 0), (10, 20, 5), (25, 40, 7)]


def test_segment_map_mutate_range_merges_pieces_with_each_other():
    m = build([(0, 10, 0), (10, 20, 1), (20, 30, 2), (30, 40, 9)])
    m.mutate_range(0, 30, lambda seg: 9)
    assert spans(m) == [(0, 40, 9)]


def test_segment_map_mutate_range_of_gap_or_empty_range_does_nothing():
    m = build([(0, 10, 0), (20, 30, 0)])
    called: list[Segment[int]] = []
    m.mutate_range(10, 20, lambda seg: called.append(seg) or 0)
    m.mutate_range(5, 5, lambda seg: called.append(seg) or 0)
    assert called == []
    assert spans(m) == [(0, 10, 0), (20, 30, 0)]


def test_segment_map_mutate_range_exception_keeps_done_pieces():
    m = build([(0, 10, 0), (10, 20, 0), (20, 30, 0)], merge_never)

    def fail_on_second(seg: Segment[int]) -> int:
        if seg.start == 10:
            raise RuntimeError("boom")
        return 5

    with pytest.raises(RuntimeError, match="boom"):
        m.mutate_range(0, 30, fail_on_second)
    assert spans(m) == [(0, 10, 5), (10, 20, 0), (20, 30, 0)]
    m.check_invariants()


def test_segment_map_mutate_full_range_on_covered_range():
    m = build([(0, 10, 0), (10, 20, 1), (20, 30, 1)])
    m.mutate_full_range(5, 25, incr)
    assert spans(m) == [(0, 5, 0), (5, 10, 1), (10, 25, 2), (25, 30, 1)]


@pytest.mark.parametrize(
    ("start", "end", "hole"),
    [(5, 25, "[0xa, 0x14)"), (25, 45, "[0x28, 0x2d)"), (45, 50, "[0x2d, 0x32)")],
)
def test_segment_map_mutate_full_range_raises_on_hole(start: int, end: int, hole: str):
    initial = [(0, 10, 0), (20, 40, 1)]
    m = build(initial)
    called: list[Segment[int]] = []
    with pytest.raises(KeyError, match=r"is not covered") as info:
        m.mutate_full_range(start, end, lambda seg: called.append(seg) or 7)
    assert hole in str(info.value)
    assert called == []
    # No split happened either.
    assert spans(m) == initial


def test_segment_map_mutate_full_range_rejects_bad_range():
    m = build([(0, 10, 0)])
    with pytest.raises(ValueError, match="not a range"):
        m.mutate_full_range(5, 2, incr)
    assert spans(m) == [(0, 10, 0)]


# ---------------------------------------------------------------------------
# Randomised structural tests (gVisor's, scaled down).


def check_every(m: SegmentMap[Any], step: int, total: int) -> None:
    if step % 64 == 0 or step == total - 1:
        m.check_invariants()


def test_segment_map_insert_random():
    rng = random.Random(0x5E6)
    order = list(range(TEST_SIZE))
    rng.shuffle(order)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    for n, j in enumerate(order):
        seg = m.insert(j, j + 1, j + VALUE_OFFSET)
        assert seg == Segment(j, j + 1, j + VALUE_OFFSET)
        assert len(m) == n + 1
        check_every(m, n, TEST_SIZE)
    validate_offset_values(m)
    assert [s.start for s in m] == list(range(TEST_SIZE))
    assert m.span() == TEST_SIZE


def test_segment_map_remove_random():
    rng = random.Random(0xDE1)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    for i in range(TEST_SIZE):
        m.insert_without_merging(i, i + 1, i + VALUE_OFFSET)
    order = list(range(TEST_SIZE))
    rng.shuffle(order)
    for n, j in enumerate(order):
        seg = m.find(j)
        assert seg is not None
        gap = m.remove(seg)
        assert gap.start <= j < gap.end
        assert m.find(j) is None
        assert m.find_gap(j) == gap
        assert len(m) == TEST_SIZE - n - 1
        check_every(m, n, TEST_SIZE)
        if n % 256 == 0:
            validate_offset_values(m)
    assert m.is_empty()
    assert m.first_gap() == Gap(0, U64)


def test_segment_map_insert_random_with_random_interval():
    rng = random.Random(0x1A7)
    starts = [INTERVAL * i for i in range(TEST_SIZE)]
    rng.shuffle(starts)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    expected_span = 0
    for n, j in enumerate(starts):
        length = rng.randint(1, INTERVAL - 1)
        m.insert(j, j + length, j + VALUE_OFFSET)
        expected_span += length
        check_every(m, n, TEST_SIZE)
    validate_offset_values(m)
    assert len(m) == TEST_SIZE
    assert m.span() == expected_span
    # No segment touches the next one, so every gap but the first (before
    # the segment at 0) is non-empty.
    every = brute_force_gaps(m)
    assert every[0] == m.first_gap() == Gap(0, 0)
    assert all(g.length > 0 for g in every[1:])
    assert list(m.gaps()) == every[1:]


def test_segment_map_insert_random_with_merge_ends_as_one_segment():
    rng = random.Random(0x3E6)
    starts = [INTERVAL * i for i in range(TEST_SIZE)]
    rng.shuffle(starts)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    for n, j in enumerate(starts):
        seg = m.insert(j, j + INTERVAL, 0)
        assert seg.start <= j
        assert seg.end >= j + INTERVAL
        check_every(m, n, TEST_SIZE)
    assert spans(m) == [(0, INTERVAL * TEST_SIZE, 0)]


def test_segment_map_remove_half_random():
    rng = random.Random(0x4A1F)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    lengths: dict[int, int] = {}
    for i in range(TEST_SIZE):
        start = INTERVAL * i
        lengths[start] = rng.randint(1, INTERVAL - 1)
        m.insert(start, start + lengths[start], start + VALUE_OFFSET)
    order = sorted(lengths)
    rng.shuffle(order)
    removed = set(order[: TEST_SIZE // 2])
    for n, j in enumerate(order[: TEST_SIZE // 2]):
        seg = m.find(j)
        assert seg is not None
        m.remove(seg)
        check_every(m, n, TEST_SIZE // 2)
    validate_offset_values(m)
    kept = sorted(set(lengths) - removed)
    assert [s.start for s in m] == kept
    assert_gaps_match_brute_force(m)


def test_segment_map_remove_half_random_with_merge():
    rng = random.Random(0x4A20)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    for i in range(TEST_SIZE):
        m.insert_without_merging(INTERVAL * i, INTERVAL * (i + 1), 0)
    order = list(range(TEST_SIZE))
    rng.shuffle(order)
    kept = [True] * TEST_SIZE
    for n, i in enumerate(order[: TEST_SIZE // 2]):
        removed = m.remove_range(INTERVAL * i, INTERVAL * (i + 1))
        assert removed == [Segment(INTERVAL * i, INTERVAL * (i + 1), 0)]
        kept[i] = False
        check_every(m, n, TEST_SIZE // 2)
    m.merge_all()
    m.check_invariants()
    # One segment per maximal run of kept intervals.
    runs = [
        (INTERVAL * idx[0], INTERVAL * (idx[-1] + 1), 0)
        for keep, grp in itertools.groupby(range(TEST_SIZE), key=lambda i: kept[i])
        if keep
        for idx in [list(grp)]
    ]
    assert spans(m) == runs
    assert_gaps_match_brute_force(m)


def build_random_intervals(seed: int, size: int) -> SegmentMap[int]:
    rng = random.Random(seed)
    m: SegmentMap[int] = SegmentMap(merge_equal)
    starts = [INTERVAL * i for i in range(size)]
    rng.shuffle(starts)
    for j in starts:
        m.insert(j, j + rng.randint(1, INTERVAL - 1), j + VALUE_OFFSET)
    # Remove a quarter so that gaps of many sizes exist.
    for j in starts[: size // 4]:
        seg = m.find(j)
        assert seg is not None
        m.remove(seg)
    m.check_invariants()
    return m


def brute_force_gaps(m: SegmentMap[Any]) -> list[Gap]:
    """Every gap, including empty ones, from the segments alone."""
    out = []
    prev = m.min_key
    for s, e, _ in m:
        out.append(Gap(prev, s))
        prev = e
    out.append(Gap(prev, m.max_key))
    return out


def assert_gaps_match_brute_force(m: SegmentMap[Any]) -> None:
    every = brute_force_gaps(m)
    assert list(m.gaps()) == [g for g in every if g.length]
    assert m.first_gap() == every[0]
    assert m.last_gap() == every[-1]
    biggest = max(g.length for g in every)
    found = m.first_large_enough_gap(biggest)
    assert found is not None
    assert found.length == biggest
    assert m.first_large_enough_gap(biggest + 1) is None


@pytest.mark.parametrize("min_length", [1, 7, 12])
def test_segment_map_next_large_enough_gap_walk(min_length: int):
    m = build_random_intervals(0x6A9 + min_length, TEST_SIZE)
    expected = [g for g in brute_force_gaps(m) if g.length >= min_length]
    walked = []
    gap = m.first_large_enough_gap(min_length)
    while gap is not None:
        walked.append(gap)
        gap = m.first_large_enough_gap(min_length, start=gap.end)
    assert walked == expected


@pytest.mark.parametrize("min_length", [1, 7, 12])
def test_segment_map_prev_large_enough_gap_walk(min_length: int):
    # Each backward step rescans from the bottom of the key space, so the
    # walk is quadratic: use a smaller map.
    m = build_random_intervals(0x7A9 + min_length, TEST_SIZE // 4)
    expected = [g for g in brute_force_gaps(m) if g.length >= min_length]
    walked = []
    gap = m.last_large_enough_gap(min_length)
    while gap is not None:
        walked.append(gap)
        gap = m.last_large_enough_gap(min_length, end=gap.start)
    assert walked == expected[::-1]


def test_segment_map_sequential_adjacent_segments():
    n = 200
    m: SegmentMap[int] = SegmentMap()
    for i in range(n):
        m.insert(i, i + 1, i + VALUE_OFFSET)
    segs = list(m)
    assert m.prev_segment(segs[0]) is None
    assert m.prev_gap(segs[0]) == m.first_gap() == Gap(0, 0)
    assert m.next_segment(segs[-1]) is None
    assert m.next_gap(segs[-1]) == m.last_gap() == Gap(n, U64)
    for i, seg in enumerate(segs):
        if i:
            assert m.prev_segment(seg) == segs[i - 1]
            assert m.prev_gap(seg) == Gap(i, i)
        if i + 1 < n:
            assert m.next_segment(seg) == segs[i + 1]
            assert m.next_gap(seg) == Gap(i + 1, i + 1)
            assert m.next_gap(seg).length == 0
    # Touching segments leave only the gap after the last one.
    assert list(m.gaps()) == [Gap(n, U64)]


def test_segment_map_sequential_non_adjacent_segments():
    n = 200
    m: SegmentMap[int] = SegmentMap()
    for i in range(n):
        m.insert(2 * i, 2 * i + 1, i)
    for i, seg in enumerate(m):
        assert m.next_gap(seg) == (
            Gap(2 * i + 1, 2 * i + 2) if i + 1 < n else m.last_gap()
        )
        assert m.prev_gap(seg) == (Gap(2 * i - 1, 2 * i) if i else Gap(0, 0))
    assert len(list(m.gaps())) == n


# ---------------------------------------------------------------------------
# Lookups and gap iteration against brute force.

LO, HI = 4, 44


@st.composite
def layouts(draw: st.DrawFn, lo: int = LO, hi: int = HI) -> list[Seg]:
    """Disjoint segments in [lo, hi); some touch, some have equal values."""
    segs = []
    k = lo
    while k < hi:
        end = min(hi, k + draw(st.integers(1, 6)))
        if draw(st.booleans()):
            segs.append((k, end, draw(st.integers(0, 2))))
        k = end
    return segs


def brute_segment(segs: list[Seg], k: int) -> Segment[int] | None:
    for s, e, v in segs:
        if s <= k < e:
            return Segment(s, e, v)
    return None


@given(layouts())
def test_segment_map_lookups_match_brute_force(segs: list[Seg]):
    m = build(segs, min_key=LO, max_key=HI)
    every = brute_force_gaps(m)
    as_segments = [Segment(*t) for t in segs]
    for k in range(LO, HI):
        seg = brute_segment(segs, k)
        assert m.find(k) == seg
        containing_gap = next((g for g in every if g.start <= k < g.end), None)
        assert m.find_gap(k) == (None if seg else containing_gap)
        assert (seg is None) is (containing_gap is not None)
        assert m.lower_bound_segment(k) == next(
            (s for s in as_segments if s.end > k), None
        )
        assert m.upper_bound_segment(k) == next(
            (s for s in reversed(as_segments) if s.start <= k), None
        )
        assert m.lower_bound_gap(k) == next(g for g in every if g.end > k)
        assert m.upper_bound_gap(k) == next(g for g in reversed(every) if g.start <= k)
    assert m.upper_bound_gap(HI) == every[-1]
    for i, seg in enumerate(as_segments):
        assert m.prev_gap(seg) == every[i]
        assert m.next_gap(seg) == every[i + 1]
        assert m.prev_segment(seg) == (as_segments[i - 1] if i else None)
        nxt = as_segments[i + 1] if i + 1 < len(as_segments) else None
        assert m.next_segment(seg) == nxt


@given(layouts(), st.integers(LO, HI), st.integers(LO, HI), st.integers(0, 8))
def test_segment_map_range_queries_match_brute_force(
    segs: list[Seg], a: int, b: int, length: int
):
    a, b = min(a, b), max(a, b)
    m = build(segs, min_key=LO, max_key=HI)
    overlapping = [Segment(*t) for t in segs if t[0] < b and t[1] > a]
    assert list(m.segments(a, b)) == overlapping
    assert m.is_empty_range(a, b) is (not overlapping)
    assert m.span_range(a, b) == sum(
        min(s.end, b) - max(s.start, a) for s in overlapping
    )
    open_gaps = [
        g for g in brute_force_gaps(m) if g.length and g.start < b and g.end > a
    ]
    assert list(m.gaps(a, b)) == open_gaps
    clipped = [Gap(max(g.start, a), min(g.end, b)) for g in open_gaps]
    assert m.first_hole(a, b) == (clipped[0] if clipped else None)
    big_enough = [g for g in clipped if g.length >= length]
    assert m.first_large_enough_gap(length, a, b) == (
        big_enough[0] if big_enough else None
    )
    assert m.last_large_enough_gap(length, a, b) == (
        big_enough[-1] if big_enough else None
    )
    m.check_invariants()
    assert spans(m) == segs


def test_segment_map_segments_and_gaps_default_to_whole_key_space():
    m = build([(10, 20, 0), (20, 30, 1)], min_key=5, max_key=40)
    assert list(m.segments()) == [Segment(10, 20, 0), Segment(20, 30, 1)]
    assert list(m.gaps()) == [Gap(5, 10), Gap(30, 40)]
    assert list(m.segments(20, None)) == [Segment(20, 30, 1)]
    assert list(m.gaps(None, 10)) == [Gap(5, 10)]
    assert list(m.segments(15, 15)) == []
    assert list(m.gaps(7, 7)) == []


def test_segment_map_gaps_include_zero_length_between_touching_segments():
    m = build([(0, 10, 0), (10, 20, 1)])
    first = m.find(0)
    second = m.find(10)
    assert first is not None
    assert second is not None
    assert m.next_gap(first) == Gap(10, 10)
    assert m.prev_gap(second) == Gap(10, 10)
    assert m.prev_gap(first) == Gap(0, 0)
    assert m.lower_bound_gap(5) == Gap(10, 10)
    assert m.upper_bound_gap(15) == Gap(10, 10)
    assert list(m.gaps()) == [Gap(20, U64)]


def test_segment_map_large_enough_gap_clips_to_bounds():
    m = build([(10, 20, 0), (40, 50, 0)], max_key=100)
    assert m.first_large_enough_gap(5) == Gap(0, 10)
    assert m.first_large_enough_gap(11) == Gap(20, 40)
    assert m.first_large_enough_gap(21) == Gap(50, 100)
    assert m.first_large_enough_gap(51) is None
    assert m.first_large_enough_gap(5, 5, 45) == Gap(5, 10)
    assert m.first_large_enough_gap(6, 5, 45) == Gap(20, 40)
    assert m.last_large_enough_gap(5) == Gap(50, 100)
    assert m.last_large_enough_gap(5, 0, 45) == Gap(20, 40)
    assert m.last_large_enough_gap(25) == Gap(50, 100)
    assert m.last_large_enough_gap(25, 0, 60) is None


def test_segment_map_span_and_is_empty_range():
    m = build([(0, 10, 0), (10, 20, 0), (30, 35, 1)])
    assert m.span() == 25
    assert m.span_range(0, 100) == 25
    assert m.span_range(5, 32) == 17
    assert m.span_range(20, 30) == 0
    assert m.span_range(7, 7) == 0
    assert m.is_empty_range(20, 30)
    assert m.is_empty_range(5, 5)
    assert m.is_empty_range(35, U64)
    assert not m.is_empty_range(19, 20)
    assert not m.is_empty_range(29, 31)
    assert not m.is_empty_range(0, U64)


def test_segment_map_find_gap_and_bounds_reject_keys_outside_space():
    m = build([(10, 20, 0)], min_key=5, max_key=40)
    assert m.find_gap(20) == Gap(20, 40)
    assert m.find_gap(5) == Gap(5, 10)
    assert m.find_gap(15) is None
    for key in (4, 40, -1):
        with pytest.raises(ValueError, match="outside"):
            m.find_gap(key)
    for key in (4, 41):
        with pytest.raises(ValueError, match="outside"):
            m.lower_bound_gap(key)
        with pytest.raises(ValueError, match="outside"):
            m.upper_bound_gap(key)


# ---------------------------------------------------------------------------
# Removal.


def test_segment_map_remove_range_clips_straddling_segments():
    m = build([(0, 10, 0), (10, 20, 1), (30, 40, 2)])
    removed = m.remove_range(5, 35)
    assert removed == [Segment(5, 10, 0), Segment(10, 20, 1), Segment(30, 35, 2)]
    assert spans(m) == [(0, 5, 0), (35, 40, 2)]
    m.check_invariants()


def test_segment_map_remove_range_inside_one_segment():
    m = build([(0, 100, 1000)], merge_contiguous, split_offset)
    removed = m.remove_range(40, 60)
    assert removed == [Segment(40, 60, 1040)]
    assert spans(m) == [(0, 40, 1000), (60, 100, 1060)]
    # Putting the same file range back merges it all again.
    assert m.insert(40, 60, 1040) == Segment(0, 100, 1000)


@pytest.mark.parametrize(("start", "end"), [(10, 20), (12, 18), (5, 5), (50, 60)])
def test_segment_map_remove_range_of_gap_or_empty_range(start: int, end: int):
    initial = [(0, 10, 0), (20, 30, 0)]
    m = build(initial)
    assert m.remove_range(start, end) == []
    assert spans(m) == initial


def test_segment_map_remove_range_at_exact_boundaries():
    m = build([(0, 10, 0), (10, 20, 1), (20, 30, 2)])
    assert m.remove_range(10, 20) == [Segment(10, 20, 1)]
    assert spans(m) == [(0, 10, 0), (20, 30, 2)]


def test_segment_map_remove_returns_joined_gap():
    m = build([(0, 10, 0), (20, 30, 0), (40, 50, 0)])
    seg = m.find(25)
    assert seg is not None
    assert m.remove(seg) == Gap(10, 40)
    first = m.find(0)
    assert first is not None
    assert m.remove(first) == Gap(0, 40)
    last = m.find(45)
    assert last is not None
    assert m.remove(last) == Gap(0, U64)


def test_segment_map_remove_all():
    m = build([(0, 10, 0), (20, 30, 1)])
    assert m.remove_all() == [Segment(0, 10, 0), Segment(20, 30, 1)]
    assert m.is_empty()
    assert m.remove_all() == []


# ---------------------------------------------------------------------------
# Merging.


def five_touching() -> SegmentMap[int]:
    return build([(0, 10, 0), (10, 20, 0), (20, 30, 0), (30, 40, 0), (40, 50, 0)])


def test_segment_map_merge_all():
    m = build([(0, 10, 0), (10, 20, 0), (20, 30, 1), (30, 40, 1), (41, 50, 1)])
    m.merge_all()
    assert spans(m) == [(0, 20, 0), (20, 40, 1), (41, 50, 1)]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (15, 35, [(0, 10), (10, 40), (40, 50)]),
        (0, 20, [(0, 20), (20, 30), (30, 40), (40, 50)]),
        (0, 50, [(0, 50)]),
        (10, 11, [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]),
        (25, 25, [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]),
        (9, 41, [(0, 50)]),
    ],
)
def test_segment_map_merge_inside_range(
    start: int, end: int, expected: list[tuple[int, int]]
):
    m = five_touching()
    m.merge_inside_range(start, end)
    assert [(s, e) for s, e, _ in spans(m)] == expected
    m.check_invariants()


def test_segment_map_merge_inside_range_starting_in_gap():
    m = build([(0, 10, 0), (20, 30, 0), (30, 40, 0), (40, 50, 0)])
    m.merge_inside_range(15, 45)
    assert spans(m) == [(0, 10, 0), (20, 50, 0)]


def test_segment_map_merge_inside_range_skips_unmergeable_pairs():
    m = build([(0, 10, 0), (10, 20, 1), (20, 30, 1), (30, 40, 0), (40, 50, 0)])
    m.merge_inside_range(0, 50)
    assert spans(m) == [(0, 10, 0), (10, 30, 1), (30, 50, 0)]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # Only two attempts: [20, 30) stays apart although everything is equal.
        (15, 35, [(0, 20), (20, 30), (30, 50)]),
        (10, 20, [(0, 30), (30, 40), (40, 50)]),
        (12, 18, [(0, 30), (30, 40), (40, 50)]),
        (0, 50, [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]),
        (20, 20, [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]),
    ],
)
def test_segment_map_merge_outside_range(
    start: int, end: int, expected: list[tuple[int, int]]
):
    m = five_touching()
    m.merge_outside_range(start, end)
    assert [(s, e) for s, e, _ in spans(m)] == expected
    m.check_invariants()


def test_segment_map_merge_outside_range_with_ends_in_gaps():
    m = build([(0, 10, 0), (10, 20, 0), (30, 40, 0), (40, 50, 0)])
    m.merge_outside_range(25, 28)
    assert len(m) == 4
    m.merge_outside_range(20, 30)
    assert len(m) == 4


def test_segment_map_merge_and_neighbours():
    m = build([(0, 10, 0), (10, 20, 0), (20, 30, 1), (40, 50, 1)])
    first = m.find(0)
    assert first is not None
    merged = m.merge(first)
    assert merged == Segment(0, 20, 0)
    assert m.merge(merged) is None  # values differ
    third = m.find(25)
    assert third is not None
    assert m.merge(third) is None  # not touching
    last = m.find(45)
    assert last is not None
    assert m.merge(last) is None  # no successor
    assert m.merge_prev(merged) == merged  # no predecessor
    assert m.merge_next(third) == third
    assert spans(m) == [(0, 20, 0), (20, 30, 1), (40, 50, 1)]


def test_segment_map_merge_prev_next_unisolate():
    m = build([(0, 10, 0), (10, 20, 0), (20, 30, 0), (30, 40, 1)])
    middle = m.find(15)
    assert middle is not None
    assert m.merge_prev(middle) == Segment(0, 20, 0)
    seg = m.find(25)
    assert seg is not None
    assert m.merge_prev(seg) == Segment(0, 30, 0)
    assert m.merge_next(Segment(0, 30, 0)) == Segment(0, 30, 0)
    m2 = build([(0, 10, 0), (10, 20, 0), (20, 30, 0)])
    middle = m2.find(15)
    assert middle is not None
    assert m2.unisolate(middle) == Segment(0, 30, 0)
    assert spans(m2) == [(0, 30, 0)]


def test_segment_map_merge_never_merges_non_touching_equal_values():
    m: SegmentMap[int] = SegmentMap(lambda *args: 0)
    m.insert(0, 10, 0)
    m.insert(11, 20, 0)
    m.merge_all()
    m.merge_inside_range(0, 20)
    m.merge_outside_range(5, 15)
    assert spans(m) == [(0, 10, 0), (11, 20, 0)]


# ---------------------------------------------------------------------------
# Custom split and merge functions: a FileRangeSet-style map.


def test_segment_map_file_offsets_merge_iff_contiguous():
    m: SegmentMap[int] = SegmentMap(merge_contiguous, split_offset)
    m.insert(0, 10, 100)
    assert m.insert(10, 20, 110) == Segment(0, 20, 100)
    assert m.insert(20, 30, 500) == Segment(20, 30, 500)
    assert m.insert(30, 40, 510) == Segment(20, 40, 500)
    assert spans(m) == [(0, 20, 100), (20, 40, 500)]
    # 500 is not 100 + 20: the two never merge.
    m.merge_all()
    assert len(m) == 2


def test_segment_map_file_offsets_split_shifts_offset():
    m: SegmentMap[int] = SegmentMap(merge_contiguous, split_offset)
    m.insert(0, 40, 1000)
    assert m.split_at(10)
    assert m.split_at(25)
    assert spans(m) == [(0, 10, 1000), (10, 25, 1010), (25, 40, 1025)]
    m.merge_all()
    assert spans(m) == [(0, 40, 1000)]


def test_segment_map_file_offsets_mutate_range_shifts_and_remerges():
    m: SegmentMap[int] = SegmentMap(merge_contiguous, split_offset)
    m.insert(0, 40, 1000)
    m.mutate_range(10, 30, lambda seg: seg.value + 5000)
    assert spans(m) == [(0, 10, 1000), (10, 30, 6010), (30, 40, 1030)]
    m.mutate_range(10, 30, lambda seg: seg.value - 5000)
    assert spans(m) == [(0, 40, 1000)]


def test_segment_map_split_function_gets_arguments():
    calls: list[tuple[int, int, str, int]] = []

    def split(start: int, end: int, value: str, at: int) -> tuple[str, str]:
        calls.append((start, end, value, at))
        return value + "L", value + "R"

    m: SegmentMap[str] = SegmentMap(None, split)
    m.insert(0, 10, "v")
    m.split_at(4)
    assert calls == [(0, 10, "v", 4)]
    assert spans(m) == [(0, 4, "vL"), (4, 10, "vR")]


# ---------------------------------------------------------------------------
# Stale snapshots.


def stale_calls() -> list[tuple[str, Callable[[SegmentMap[int], Segment[int]], Any]]]:
    return [
        ("next_segment", lambda m, s: m.next_segment(s)),
        ("prev_segment", lambda m, s: m.prev_segment(s)),
        ("next_gap", lambda m, s: m.next_gap(s)),
        ("prev_gap", lambda m, s: m.prev_gap(s)),
        ("set_value", lambda m, s: m.set_value(s, 9)),
        ("remove", lambda m, s: m.remove(s)),
        ("split", lambda m, s: m.split(s, s.start + 1)),
        ("isolate", lambda m, s: m.isolate(s, s.start, s.end)),
        ("merge", lambda m, s: m.merge(s)),
        ("merge_prev", lambda m, s: m.merge_prev(s)),
        ("merge_next", lambda m, s: m.merge_next(s)),
        ("unisolate", lambda m, s: m.unisolate(s)),
    ]


def make_stale(how: str) -> tuple[SegmentMap[int], Segment[int]]:
    m = build([(0, 10, 0), (10, 20, 0), (30, 40, 1)])
    seg = m.find(5)
    assert seg is not None
    if how == "split":
        m.split_at(5)
    elif how == "remove":
        m.remove(seg)
    elif how == "merged-away":
        m.merge_all()
        stale = Segment(10, 20, 0)
        return m, stale
    elif how == "merged-into":
        m.merge_all()
    elif how == "remove_range":
        m.remove_range(0, 3)
    elif how == "never-existed":
        return m, Segment(0, 5, 0)
    return m, seg


@pytest.mark.parametrize(
    "how",
    ["split", "remove", "merged-away", "merged-into", "remove_range", "never-existed"],
)
@pytest.mark.parametrize(
    ("name", "call"), stale_calls(), ids=[name for name, _ in stale_calls()]
)
def test_segment_map_stale_segment_raises(
    how: str, name: str, call: Callable[[SegmentMap[int], Segment[int]], Any]
):
    m, stale = make_stale(how)
    before = spans(m)
    with pytest.raises(ValueError, match="not a current segment"):
        call(m, stale)
    assert spans(m) == before


def test_segment_map_snapshot_after_set_value_splits_current_value():
    m: SegmentMap[int] = SegmentMap(merge_equal)
    old = m.insert(0, 10, 1)
    m.set_value(old, 2)
    # The old snapshot still names the segment; the split must not bring
    # back the value it was taken with.
    assert m.split(old, 5) == (Segment(0, 5, 2), Segment(5, 10, 2))
    assert spans(m) == [(0, 5, 2), (5, 10, 2)]
    renamed = m.set_value(Segment(5, 10, 2), 3)
    assert renamed == Segment(5, 10, 3)
    assert m.isolate(Segment(5, 10, 2), 7, 9) == Segment(7, 9, 3)
    assert spans(m) == [(0, 5, 2), (5, 7, 3), (7, 9, 3), (9, 10, 3)]


def test_segment_map_set_value_does_not_merge():
    m = build([(0, 10, 0), (10, 20, 1)])
    seg = m.find(15)
    assert seg is not None
    assert m.set_value(seg, 0) == Segment(10, 20, 0)
    assert spans(m) == [(0, 10, 0), (10, 20, 0)]


# ---------------------------------------------------------------------------
# Bad input changes nothing.

INITIAL: list[Seg] = [(10, 20, 0), (30, 40, 1)]


@pytest.mark.parametrize(
    ("start", "end"),
    [(5, 15), (15, 25), (10, 20), (12, 18), (0, 50), (19, 31), (5, 11), (39, 45)],
)
@pytest.mark.parametrize("method", ["insert", "insert_without_merging"])
def test_segment_map_insert_overlap_changes_nothing(method: str, start: int, end: int):
    m = build(INITIAL, max_key=100)
    with pytest.raises(ValueError, match="overlaps segment"):
        getattr(m, method)(start, end, 0)
    assert spans(m) == INITIAL


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (5, 5, "empty range"),
        (25, 25, "empty range"),
        (25, 22, "not a range"),
        (-1, 5, "not a range"),
        (95, 101, "not a range"),
        (100, 101, "not a range"),
        (U64, U64 + 1, "not a range"),
    ],
)
@pytest.mark.parametrize("method", ["insert", "insert_without_merging"])
def test_segment_map_insert_bad_range_changes_nothing(
    method: str, start: int, end: int, match: str
):
    m = build(INITIAL, max_key=100)
    with pytest.raises(ValueError, match=match):
        getattr(m, method)(start, end, 0)
    assert spans(m) == INITIAL


def test_segment_map_insert_below_min_key_changes_nothing():
    m = build([(10, 20, 0)], min_key=8)
    with pytest.raises(ValueError, match=r"within \[0x8, "):
        m.insert(5, 9, 0)
    assert spans(m) == [(10, 20, 0)]
    assert m.insert(8, 10, 0) == Segment(8, 20, 0)


def test_segment_map_insert_up_to_limit_of_key_space():
    m: SegmentMap[int] = SegmentMap(merge_equal)
    assert m.insert(U64 - 10, U64, 0) == Segment(U64 - 10, U64, 0)
    assert m.last_gap() == Gap(U64, U64)
    assert m.insert(0, U64 - 10, 0) == Segment(0, U64, 0)
    assert m.span() == U64


BAD_KEYS = [1.5, 10.0, True, False, "10", None]


RANGE_CALLS: list[tuple[str, Callable[[SegmentMap[int], Any, Any], Any]]] = [
    ("insert", lambda m, s, e: m.insert(s, e, 0)),
    ("insert_without_merging", lambda m, s, e: m.insert_without_merging(s, e, 0)),
    ("remove_range", lambda m, s, e: m.remove_range(s, e)),
    ("mutate_range", lambda m, s, e: m.mutate_range(s, e, incr)),
    ("mutate_full_range", lambda m, s, e: m.mutate_full_range(s, e, incr)),
    ("merge_inside_range", lambda m, s, e: m.merge_inside_range(s, e)),
    ("merge_outside_range", lambda m, s, e: m.merge_outside_range(s, e)),
    ("is_empty_range", lambda m, s, e: m.is_empty_range(s, e)),
    ("span_range", lambda m, s, e: m.span_range(s, e)),
    ("segments", lambda m, s, e: list(m.segments(s, e))),
    ("gaps", lambda m, s, e: list(m.gaps(s, e))),
    ("first_hole", lambda m, s, e: m.first_hole(s, e)),
    ("first_large_enough_gap", lambda m, s, e: m.first_large_enough_gap(1, s, e)),
    ("last_large_enough_gap", lambda m, s, e: m.last_large_enough_gap(1, s, e)),
    ("isolate", lambda m, s, e: m.isolate(Segment(10, 20, 0), s, e)),
]
# These take None for "the whole key space".
OPTIONAL_BOUNDS = {
    "segments",
    "gaps",
    "first_large_enough_gap",
    "last_large_enough_gap",
}


@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
@pytest.mark.parametrize("which", ["start", "end"])
@pytest.mark.parametrize(
    ("name", "call"), RANGE_CALLS, ids=[name for name, _ in RANGE_CALLS]
)
def test_segment_map_non_int_range_bounds_raise_type_error(
    name: str,
    call: Callable[[SegmentMap[int], Any, Any], Any],
    which: str,
    bad: object,
):
    m = build(INITIAL, max_key=100)
    bounds: dict[str, Any] = {"start": 12, "end": 35, which: bad}
    if bad is None and name in OPTIONAL_BOUNDS:
        default = {"start": 0, "end": 100}[which]
        explicit: dict[str, Any] = {**bounds, which: default}
        assert call(m, bounds["start"], bounds["end"]) == call(
            m, explicit["start"], explicit["end"]
        )
    else:
        with pytest.raises(TypeError, match=f"{which} must be an int") as info:
            call(m, bounds["start"], bounds["end"])
        assert repr(bad) in str(info.value)
    assert spans(m) == INITIAL
    m.check_invariants()


@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("key", lambda m, k: m.split_at(k)),
        ("key", lambda m, k: m.find_gap(k)),
        ("key", lambda m, k: m.lower_bound_gap(k)),
        ("key", lambda m, k: m.upper_bound_gap(k)),
        ("at", lambda m, k: m.split(Segment(10, 20, 0), k)),
    ],
    ids=["split_at", "find_gap", "lower_bound_gap", "upper_bound_gap", "split"],
)
def test_segment_map_non_int_keys_raise_type_error(
    name: str, call: Callable[[SegmentMap[int], Any], Any], bad: object
):
    m = build(INITIAL, max_key=100)
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        call(m, bad)
    assert spans(m) == INITIAL


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.remove_range(30, 20),
        lambda m: m.remove_range(0, 101),
        lambda m: m.mutate_range(-1, 5, incr),
        lambda m: m.merge_inside_range(50, 40),
        lambda m: m.merge_outside_range(0, 200),
        lambda m: m.is_empty_range(0, 101),
        lambda m: m.span_range(7, 6),
        lambda m: list(m.segments(0, 101)),
        lambda m: list(m.gaps(-5, 5)),
        lambda m: m.first_large_enough_gap(1, 0, 101),
        lambda m: m.last_large_enough_gap(1, 9, 8),
    ],
)
def test_segment_map_bad_ranges_raise_value_error(
    call: Callable[[SegmentMap[int]], Any],
):
    m = build(INITIAL, max_key=100)
    with pytest.raises(ValueError, match="not a range within"):
        call(m)
    assert spans(m) == INITIAL


def test_segment_map_raising_merge_function_leaves_insert_undone():
    def merge(start: int, mid: int, end: int, left: str, right: str) -> Any:
        if "boom" in (left, right):
            raise RuntimeError("merge failed")
        return left if left == right else NO_MERGE

    initial = [(0, 10, "a"), (20, 30, "boom")]
    m = build(initial, merge)
    # The merge with [0, 10) is accepted, the one with [20, 30) raises.
    with pytest.raises(RuntimeError, match="merge failed"):
        m.insert(10, 20, "a")
    assert spans(m) == initial
    with pytest.raises(RuntimeError, match="merge failed"):
        m.insert(30, 40, "a")
    assert spans(m) == initial
    m.check_invariants()


def test_segment_map_raising_split_function_leaves_map_unchanged():
    def split(start: int, end: int, value: int, at: int) -> tuple[int, int]:
        raise RuntimeError("split failed")

    m = build([(0, 10, 0)], merge_equal, split)
    seg = m.find(0)
    assert seg is not None
    for call in (
        lambda: m.split_at(5),
        lambda: m.split(seg, 5),
        lambda: m.isolate(seg, 2, 10),
        lambda: m.remove_range(5, 20),
    ):
        with pytest.raises(RuntimeError, match="split failed"):
            call()
        assert spans(m) == [(0, 10, 0)]


# ---------------------------------------------------------------------------
# check_invariants detects corruption (it reaches into the storage on purpose).


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({5: (5, 0)}, "empty or inverted"),
        ({5: (3, 0)}, "empty or inverted"),
        ({0: (10, 0), 5: (15, 0)}, "overlaps or precedes"),
        ({1: (5, 0)}, "overlaps or precedes"),
        ({10: (30, 0)}, "past max_key"),
    ],
)
def test_segment_map_check_invariants_detects_corruption(
    raw: dict[int, tuple[int, int]], match: str
):
    m: SegmentMap[int] = SegmentMap(min_key=2, max_key=20)
    m._sd.update(raw)
    with pytest.raises(AssertionError, match=match):
        m.check_invariants()


# ---------------------------------------------------------------------------
# State machine against a dict model.

KEYS = 64


class SegmentMapMachine(RuleBasedStateMachine):
    """A SegmentMap over keys [0, 64) must agree with a key -> value dict.

    Subclasses choose the value semantics: ``value_for`` gives the value to
    store for a segment starting at ``start``, ``key_value`` the value a key
    has inside a segment.
    """

    merge_fn: Callable[..., Any] = staticmethod(merge_equal)
    split_fn: Callable[..., Any] = staticmethod(split_copy)

    def __init__(self) -> None:
        super().__init__()
        self.map: SegmentMap[int] = SegmentMap(
            self.merge_fn, self.split_fn, max_key=KEYS
        )
        self.model: dict[int, int] = {}

    # -- value semantics -------------------------------------------------

    @staticmethod
    def value_for(start: int, choice: int) -> int:
        return choice

    @staticmethod
    def key_value(seg: Segment[int], key: int) -> int:
        return seg.value

    # -- helpers -----------------------------------------------------------

    def mergeable(self, a: Segment[int], b: Segment[int]) -> bool:
        return (
            a.end == b.start
            and self.merge_fn(a.start, a.end, b.end, a.value, b.value) is not NO_MERGE
        )

    def touching_pairs(self) -> Iterator[tuple[Segment[int], Segment[int]]]:
        return itertools.pairwise(self.map)

    def covered(self, start: int, end: int) -> list[int]:
        return [k for k in range(start, end) if k in self.model]

    def boundaries(self) -> set[int]:
        return {seg.start for seg in self.map}

    def assert_pieces_match_model(
        self, pieces: list[Segment[int]], start: int, end: int
    ) -> None:
        keys: list[int] = []
        for piece in pieces:
            assert start <= piece.start < piece.end <= end
            for k in range(piece.start, piece.end):
                keys.append(k)
                assert self.key_value(piece, k) == self.model[k]
        assert keys == self.covered(start, end)

    def pick(self, data: st.DataObject) -> Segment[int]:
        """Draw one of the map's current segments."""
        segs = list(self.map)
        return segs[data.draw(st.integers(0, len(segs) - 1), label="segment")]

    def has_segments(self) -> bool:
        return len(self.map) > 0

    def has_gaps(self) -> bool:
        return len(self.model) < KEYS

    def do_insert(self, start: int, end: int, value: int, merging: bool) -> None:
        method = self.map.insert if merging else self.map.insert_without_merging
        if self.covered(start, end):
            before = spans(self.map)
            with pytest.raises(ValueError, match="overlaps"):
                method(start, end, value)
            assert spans(self.map) == before
            return
        # The result: merged with the touching predecessor if the merge
        # function agrees, then (with the merged value) with the successor.
        expected = Segment(start, end, value)
        prev = self.map.find(start - 1) if merging and start > 0 else None
        if prev is not None and self.mergeable(prev, expected):
            merged = self.merge_fn(prev.start, start, end, prev.value, value)
            expected = Segment(prev.start, end, merged)
        nxt = self.map.find(end) if merging and end < KEYS else None
        if nxt is not None and self.mergeable(expected, nxt):
            merged = self.merge_fn(
                expected.start, end, nxt.end, expected.value, nxt.value
            )
            expected = Segment(expected.start, nxt.end, merged)
        count = len(self.map)
        seg = method(start, end, value)
        assert seg == expected
        assert self.map.find(start) == seg
        merges = (seg.start < start) + (seg.end > end)
        assert len(self.map) == count + 1 - merges
        for k in range(start, end):
            self.model[k] = self.key_value(Segment(start, end, value), k)

    # -- rules -------------------------------------------------------------

    @initialize(segs=layouts(0, KEYS))
    def populate(self, segs: list[Seg]) -> None:
        # Nothing merged: touching segments that could merge exist from the
        # start, for the merge rules to find.
        for start, end, choice in segs:
            self.do_insert(start, end, self.value_for(start, choice), merging=False)

    @rule(
        start=st.integers(0, KEYS - 1),
        length=st.integers(1, 12),
        choice=st.integers(0, 2),
        merging=st.booleans(),
    )
    def insert(self, start: int, length: int, choice: int, merging: bool) -> None:
        value = self.value_for(start, choice)
        self.do_insert(start, min(KEYS, start + length), value, merging)

    @precondition(has_gaps)
    @rule(
        data=st.data(),
        choice=st.integers(0, 2),
        merging=st.booleans(),
        continue_prev=st.booleans(),
    )
    def fill_gap(
        self, data: st.DataObject, choice: int, merging: bool, continue_prev: bool
    ) -> None:
        # Insert into a gap, often touching one or both of its neighbours.
        gaps = list(self.map.gaps())
        gap = gaps[data.draw(st.integers(0, len(gaps) - 1), label="gap")]
        start = data.draw(
            st.one_of(st.just(gap.start), st.integers(gap.start, gap.end - 1)),
            label="start",
        )
        end = data.draw(
            st.one_of(st.just(gap.end), st.integers(start + 1, gap.end)), label="end"
        )
        value = self.value_for(start, choice)
        prev = self.map.find(start - 1) if start > 0 else None
        if continue_prev and prev is not None:
            # The value that would make this a continuation of prev.
            value = self.key_value(prev, start)
        self.do_insert(start, end, value, merging)

    @rule(start=st.integers(-2, KEYS + 2), end=st.integers(-2, KEYS + 2))
    def insert_bad_range(self, start: int, end: int) -> None:
        if 0 <= start < end <= KEYS:
            return
        before = spans(self.map)
        with pytest.raises(ValueError, match="range"):
            self.map.insert(start, end, 0)
        assert spans(self.map) == before

    @rule(a=st.integers(0, KEYS), b=st.integers(0, KEYS))
    def remove_range(self, a: int, b: int) -> None:
        start, end = min(a, b), max(a, b)
        removed = self.map.remove_range(start, end)
        self.assert_pieces_match_model(removed, start, end)
        for k in range(start, end):
            self.model.pop(k, None)
        assert self.map.is_empty_range(start, end)

    @precondition(has_segments)
    @rule(data=st.data())
    def remove_segment(self, data: st.DataObject) -> None:
        seg = self.pick(data)
        gap = self.map.remove(seg)
        assert gap.start <= seg.start
        assert gap.end >= seg.end
        assert self.map.find_gap(seg.start) == gap
        for k in range(seg.start, seg.end):
            del self.model[k]

    @rule(key=st.integers(-1, KEYS + 1))
    def split_at(self, key: int) -> None:
        seg = self.map.find(key)
        expected = seg is not None and seg.start != key
        assert self.map.split_at(key) is expected
        if expected:
            right = self.map.find(key)
            left = self.map.find(key - 1)
            assert right is not None
            assert left is not None
            assert right.start == key == left.end

    @precondition(has_segments)
    @rule(data=st.data())
    def split(self, data: st.DataObject) -> None:
        seg = self.pick(data)
        if seg.length < 2:
            return
        at = data.draw(st.integers(seg.start + 1, seg.end - 1), label="at")
        left, right = self.map.split(seg, at)
        assert (left.start, left.end, right.start, right.end) == (
            seg.start,
            at,
            at,
            seg.end,
        )
        assert self.map.find(seg.start) == left
        assert self.map.find(at) == right

    @precondition(has_segments)
    @rule(data=st.data())
    def isolate(self, data: st.DataObject) -> None:
        seg = self.pick(data)
        start = data.draw(st.integers(0, seg.end - 1), label="start")
        end = data.draw(st.integers(max(start, seg.start) + 1, KEYS), label="end")
        piece = self.map.isolate(seg, start, end)
        assert (piece.start, piece.end) == (max(seg.start, start), min(seg.end, end))
        assert self.map.find(piece.start) == piece
        self.assert_pieces_match_model([piece], piece.start, piece.end)

    @rule()
    def merge_all(self) -> None:
        self.map.merge_all()
        for a, b in self.touching_pairs():
            assert not self.mergeable(a, b)

    @rule(a=st.integers(0, KEYS), b=st.integers(0, KEYS))
    def merge_inside_range(self, a: int, b: int) -> None:
        start, end = min(a, b), max(a, b)
        before = self.boundaries()
        self.map.merge_inside_range(start, end)
        after = self.boundaries()
        # Only boundaries strictly inside the range may go, and all that
        # could merge there did.
        assert all(start < k < end for k in before - after)
        for x, y in self.touching_pairs():
            if start < y.start < end:
                assert not self.mergeable(x, y)

    @rule(a=st.integers(0, KEYS), b=st.integers(0, KEYS))
    def merge_outside_range(self, a: int, b: int) -> None:
        start, end = min(a, b), max(a, b)
        candidates: set[int] = set()
        if start < end:
            first = self.map.find(start)
            last = self.map.find(end - 1)
            if first is not None:
                candidates.add(first.start)
            if last is not None:
                candidates.add(last.end)
        before = self.boundaries()
        self.map.merge_outside_range(start, end)
        after = self.boundaries()
        assert before - after <= candidates
        for x, y in self.touching_pairs():
            if y.start in candidates:
                assert not self.mergeable(x, y)

    @precondition(has_segments)
    @rule(data=st.data(), how=st.sampled_from(["prev", "next", "both", "one"]))
    def merge_neighbours(self, data: st.DataObject, how: str) -> None:
        seg = self.pick(data)
        prev = self.map.prev_segment(seg)
        nxt = self.map.next_segment(seg)
        # Which of the two boundaries of seg should go.
        expected: set[int] = set()
        if how in ("prev", "both") and prev and self.mergeable(prev, seg):
            expected.add(seg.start)
        if how in ("next", "both", "one") and nxt and self.mergeable(seg, nxt):
            expected.add(seg.end)
        before = self.boundaries()
        if how == "one":
            maybe = self.map.merge(seg)
            assert (maybe is None) is (not expected)
            merged = seg if maybe is None else maybe
        else:
            call = {
                "prev": self.map.merge_prev,
                "next": self.map.merge_next,
                "both": self.map.unisolate,
            }[how]
            merged = call(seg)
        assert before - self.boundaries() == expected
        assert merged.start <= seg.start
        assert merged.end >= seg.end
        assert self.map.find(seg.start) == merged

    @rule(a=st.integers(0, KEYS), b=st.integers(0, KEYS), delta=st.integers(1, 2))
    def mutate_range(self, a: int, b: int, delta: int) -> None:
        start, end = min(a, b), max(a, b)
        seen: list[Segment[int]] = []

        def bump(seg: Segment[int]) -> int:
            seen.append(seg)
            return seg.value + delta

        self.map.mutate_range(start, end, bump)
        self.assert_pieces_match_model(seen, start, end)
        for k in self.covered(start, end):
            self.model[k] += delta
        self.assert_remerged(start, end)

    @rule(a=st.integers(0, KEYS), b=st.integers(0, KEYS), delta=st.integers(1, 2))
    def mutate_full_range(self, a: int, b: int, delta: int) -> None:
        start, end = min(a, b), max(a, b)
        if len(self.covered(start, end)) < end - start:
            before = spans(self.map)
            with pytest.raises(KeyError):
                self.map.mutate_full_range(start, end, lambda seg: seg.value + delta)
            assert spans(self.map) == before
            return
        self.map.mutate_full_range(start, end, lambda seg: seg.value + delta)
        for k in range(start, end):
            self.model[k] += delta
        self.assert_remerged(start, end)

    def assert_remerged(self, start: int, end: int) -> None:
        if start == end:
            return
        for x, y in self.touching_pairs():
            if start <= y.start <= end:
                assert not self.mergeable(x, y)

    @precondition(has_segments)
    @rule(data=st.data(), choice=st.integers(0, 2))
    def set_value(self, data: st.DataObject, choice: int) -> None:
        seg = self.pick(data)
        count = len(self.map)
        new = self.map.set_value(seg, self.value_for(seg.start, choice))
        assert (new.start, new.end) == (seg.start, seg.end)
        assert len(self.map) == count
        for k in range(seg.start, seg.end):
            self.model[k] = self.key_value(new, k)

    @invariant()
    def structure_is_valid(self) -> None:
        self.map.check_invariants()

    @invariant()
    def agrees_with_model(self) -> None:
        for k in range(KEYS):
            seg = self.map.find(k)
            if k in self.model:
                assert seg is not None, k
                assert self.key_value(seg, k) == self.model[k], (k, seg)
            else:
                assert seg is None, (k, seg)
                gap = self.map.find_gap(k)
                assert gap is not None
                assert gap.start <= k < gap.end
        assert self.map.span() == len(self.model)
        gap_keys = sum(g.length for g in self.map.gaps())
        assert gap_keys == KEYS - len(self.model)


class FileOffsetMachine(SegmentMapMachine):
    """The same rules with FileRangeSet-style values: a file offset per key."""

    merge_fn = staticmethod(merge_contiguous)
    split_fn = staticmethod(split_offset)

    @staticmethod
    def value_for(start: int, choice: int) -> int:
        # Same choice => same file region, so touching inserts are contiguous.
        return 1000 * choice + start

    @staticmethod
    def key_value(seg: Segment[int], key: int) -> int:
        return seg.value + (key - seg.start)


TestSegmentMapMachine = SegmentMapMachine.TestCase
TestFileOffsetMachine = FileOffsetMachine.TestCase


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32),
    count=st.sampled_from([0, 1, 2, 999, 1000, 1001, 4000]),
    probes=st.lists(st.integers(-1, 50_001), min_size=1, max_size=50),
)
def test_segment_map_neighbour_search_matches_bisect(seed, count, probes):
    # Unit segments at many starts, enough to spread over several sublists of
    # the sorted index; the fast neighbour search must agree with bisect.
    import bisect

    starts = random.Random(seed).sample(range(50_000), count)
    m: SegmentMap[int] = SegmentMap()
    for s in starts:
        m.insert_without_merging(s, s + 1, s)
    ordered = sorted(starts)
    probes = probes + ordered[:: max(1, count // 20)]
    for k in probes:
        i = bisect.bisect_right(ordered, k)
        assert m._floor(k) == (ordered[i - 1] if i else None)
        assert m._higher(k) == (ordered[i] if i < len(ordered) else None)
        j = bisect.bisect_left(ordered, k)
        assert m._lower(k) == (ordered[j - 1] if j else None)
    m.check_invariants()


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**32),
    length=st.integers(0, 12),
    lo=st.integers(0, 80),
    span=st.integers(0, 80),
)
def test_segment_map_last_large_enough_gap_matches_a_scan(seed, length, lo, span):
    rng = random.Random(seed)
    m: SegmentMap[int] = SegmentMap(max_key=100)
    for s in rng.sample(range(100), 30):
        if m.is_empty_range(s, s + 1):
            m.insert_without_merging(s, s + 1, s)
    hi = min(100, lo + span)
    expected = None
    for g in m.gaps(lo, hi):
        a, b = max(g.start, lo), min(g.end, hi)
        if b - a >= length:
            expected = Gap(a, b)
    assert m.last_large_enough_gap(length, lo, hi) == expected
    assert m.last_large_enough_gap(length) == (
        None
        if not [g for g in m.gaps() if g.length >= length]
        else [g for g in m.gaps() if g.length >= length][-1]
    )
