"""Tests for the half-open range types (``aiomemmap._core.ranges``)."""

from __future__ import annotations

import copy
import dataclasses
import enum
import itertools
import operator
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemmap import PAGE_SIZE, AddrRange, FileRange, MappableRange, is_page_aligned

U64 = 2**64
# The three kinds share one implementation; tests drive them generically.
Range = Any
Kind = type[Any]

KINDS: list[Kind] = [AddrRange, MappableRange, FileRange]
kinds = pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
CROSS_KINDS = [(a, b) for a, b in itertools.permutations(KINDS, 2)]
cross_kinds = pytest.mark.parametrize(
    ("kind", "other"),
    CROSS_KINDS,
    ids=[f"{a.__name__}-{b.__name__}" for a, b in CROSS_KINDS],
)

# Small values collide often; values near 2**64 exercise the top of the space.
bounds = st.one_of(st.integers(0, 24), st.integers(U64 - 8, U64))


def ranges(kind: Kind) -> st.SearchStrategy[Range]:
    return st.tuples(bounds, bounds).map(lambda t: kind(min(t), max(t)))


any_kind = st.sampled_from(KINDS)


class _Offset(enum.IntEnum):
    PAGE = PAGE_SIZE


# ---------------------------------------------------------------------------
# gVisor's derived vectors (segment/range.go), for every kind.


@kinds
def test_range_intersect_of_disjoint_is_empty_at_larger_start(kind: Kind):
    a, b = kind(0, 10), kind(20, 30)
    assert a.intersect(b) == kind(20, 20)
    assert b.intersect(a) == kind(20, 20)
    assert a.intersect(b).length == 0


@kinds
def test_range_intersect_of_overlapping_ranges(kind: Kind):
    assert kind(0, 10).intersect(kind(5, 20)) == kind(5, 10)
    assert kind(5, 20).intersect(kind(0, 10)) == kind(5, 10)
    assert kind(0, 10).intersect(kind(2, 3)) == kind(2, 3)
    assert kind(0, 10).intersect(kind(10, 20)) == kind(10, 10)
    assert kind(0, 10).intersect(kind(0, 10)) == kind(0, 10)


@kinds
def test_range_intersect_returns_same_kind(kind: Kind):
    assert type(kind(0, 10).intersect(kind(5, 20))) is kind


@kinds
def test_range_overlaps_vectors(kind: Kind):
    assert not kind(0, 10).overlaps(kind(10, 20))
    assert not kind(10, 20).overlaps(kind(0, 10))
    assert kind(0, 10).overlaps(kind(9, 20))
    assert kind(0, 10).overlaps(kind(0, 10))


@kinds
def test_range_overlaps_empty_range_strictly_inside(kind: Kind):
    # The gVisor quirk: an empty range strictly inside another overlaps it.
    assert kind(5, 5).overlaps(kind(0, 10))
    assert kind(0, 10).overlaps(kind(5, 5))
    # ... but not at either edge, and two empty ranges never overlap.
    assert not kind(0, 10).overlaps(kind(0, 0))
    assert not kind(0, 0).overlaps(kind(0, 10))
    assert not kind(0, 10).overlaps(kind(10, 10))
    assert not kind(5, 5).overlaps(kind(5, 5))


@kinds
def test_range_contains_vectors(kind: Kind):
    r = kind(0, 10)
    assert r.contains(0)
    assert r.contains(9)
    assert not r.contains(10)
    assert not r.contains(-1)
    assert not kind(5, 5).contains(5)


@kinds
def test_range_can_split_at_vectors(kind: Kind):
    r = kind(0, 10)
    assert not r.can_split_at(0)
    assert r.can_split_at(5)
    assert not r.can_split_at(10)
    assert r.can_split_at(1)
    assert r.can_split_at(9)
    assert not r.can_split_at(11)
    assert not kind(5, 5).can_split_at(5)


@kinds
def test_range_is_superset_of_vectors(kind: Kind):
    r = kind(0, 10)
    assert r.is_superset_of(kind(5, 5))
    assert not r.is_superset_of(kind(20, 20))
    assert r.is_superset_of(kind(0, 10))
    assert r.is_superset_of(kind(0, 0))
    assert r.is_superset_of(kind(10, 10))
    assert not r.is_superset_of(kind(5, 11))
    assert not kind(5, 5).is_superset_of(r)


@kinds
def test_range_length_and_well_formed(kind: Kind):
    assert kind(3, 10).length == 7
    assert kind(4, 4).length == 0
    assert kind(0, U64).length == U64
    assert kind(3, 10).well_formed()
    assert kind(U64, U64).well_formed()


@kinds
def test_range_is_page_aligned(kind: Kind):
    assert kind(0, 0).is_page_aligned()
    assert kind(PAGE_SIZE, 3 * PAGE_SIZE).is_page_aligned()
    assert kind(0, U64).is_page_aligned()
    assert not kind(1, PAGE_SIZE).is_page_aligned()
    assert not kind(PAGE_SIZE, PAGE_SIZE + 1).is_page_aligned()


@kinds
def test_range_at_top_of_address_space(kind: Kind):
    r = kind(U64 - PAGE_SIZE, U64)
    assert r.length == PAGE_SIZE
    assert r.contains(U64 - 1)
    assert not r.contains(U64)
    assert r.can_split_at(U64 - 1)
    assert r.is_page_aligned()
    assert kind(0, U64).is_superset_of(r)


# ---------------------------------------------------------------------------
# Construction.


@kinds
@pytest.mark.parametrize(
    ("start", "end"), [(0, 0), (0, 1), (5, 5), (0, U64), (U64, U64), (U64 - 1, U64)]
)
def test_range_constructor_accepts_bounds(kind: Kind, start: int, end: int):
    r = kind(start, end)
    assert (r.start, r.end) == (start, end)


@kinds
def test_range_constructor_accepts_keywords(kind: Kind):
    assert kind(start=1, end=2) == kind(1, 2)


@kinds
@pytest.mark.parametrize(
    ("start", "end"),
    [(1, 0), (-1, 0), (-1, 5), (0, U64 + 1), (U64 + 1, U64 + 1), (U64, U64 - 1)],
)
def test_range_constructor_rejects_out_of_bounds(kind: Kind, start: int, end: int):
    with pytest.raises(ValueError, match=r"0 <= start <= end <= 2\*\*64") as info:
        kind(start, end)
    message = str(info.value)
    assert kind.__name__ in message
    assert f"start={start:#x}" in message
    assert f"end={end:#x}" in message


@kinds
@pytest.mark.parametrize("bad", [1.0, 0.5, True, False, "1", None, b"1", [1]])
@pytest.mark.parametrize("which", ["start", "end"])
def test_range_constructor_rejects_non_ints(kind: Kind, bad: object, which: str):
    args: dict[str, object] = {"start": 0, "end": 10, which: bad}
    with pytest.raises(TypeError, match=f"{which} must be an int") as info:
        kind(**args)
    assert repr(bad) in str(info.value)
    assert kind.__name__ in str(info.value)


@kinds
def test_range_constructor_normalises_int_subclasses(kind: Kind):
    r = kind(_Offset.PAGE, 2 * PAGE_SIZE)
    assert r == kind(PAGE_SIZE, 2 * PAGE_SIZE)
    assert type(r.start) is int
    assert type(r.end) is int
    assert str(r) == "[0x1000, 0x2000)"


# ---------------------------------------------------------------------------
# Kinds are distinct.


@cross_kinds
def test_range_equality_across_kinds_is_false(kind: Kind, other: Kind):
    assert kind(1, 2) != other(1, 2)
    assert not (kind(1, 2) == other(1, 2))  # noqa: SIM201
    assert kind(1, 2) == kind(1, 2)


@cross_kinds
@pytest.mark.parametrize(
    "op", [operator.lt, operator.le, operator.gt, operator.ge], ids=lambda o: o.__name__
)
def test_range_ordering_across_kinds_raises(
    kind: Kind, other: Kind, op: Callable[[object, object], object]
):
    with pytest.raises(TypeError):
        op(kind(1, 2), other(1, 2))


@cross_kinds
@pytest.mark.parametrize("method", ["overlaps", "intersect", "is_superset_of"])
def test_range_combining_across_kinds_raises(kind: Kind, other: Kind, method: str):
    with pytest.raises(TypeError, match="cannot combine") as info:
        getattr(kind(0, 10), method)(other(0, 10))
    assert kind.__name__ in str(info.value)
    assert other.__name__ in str(info.value)


@kinds
@pytest.mark.parametrize("method", ["overlaps", "intersect", "is_superset_of"])
def test_range_combining_with_non_range_raises(kind: Kind, method: str):
    with pytest.raises(TypeError, match="cannot combine"):
        getattr(kind(0, 10), method)((0, 10))


@kinds
def test_range_equality_with_tuple_is_false(kind: Kind):
    assert kind(0, 10) != (0, 10)


@kinds
def test_range_ordering_within_kind(kind: Kind):
    rs = [kind(5, 6), kind(0, 10), kind(0, 3), kind(5, 5)]
    assert sorted(rs) == [kind(0, 3), kind(0, 10), kind(5, 5), kind(5, 6)]
    assert kind(0, 3) < kind(0, 4) <= kind(0, 4) < kind(1, 1)


# ---------------------------------------------------------------------------
# Formatting, hashing, immutability.


@kinds
def test_range_str(kind: Kind):
    assert str(kind(0x1000, 0x2000)) == "[0x1000, 0x2000)"
    assert str(kind(0, 0)) == "[0x0, 0x0)"
    assert str(kind(0x10000, 0x12000)) == "[0x10000, 0x12000)"
    assert str(kind(0, U64)) == "[0x0, 0x10000000000000000)"


@kinds
def test_range_repr(kind: Kind):
    assert repr(kind(0x1000, 0x2000)) == f"{kind.__name__}(0x1000, 0x2000)"
    assert repr(kind(0, 0)) == f"{kind.__name__}(0x0, 0x0)"


@kinds
def test_range_is_hashable(kind: Kind):
    assert hash(kind(1, 2)) == hash(kind(1, 2))
    assert {kind(1, 2), kind(1, 2), kind(1, 3)} == {kind(1, 2), kind(1, 3)}
    d = {kind(1, 2): "a"}
    assert d[kind(1, 2)] == "a"


def test_range_kinds_are_distinct_dict_keys():
    d: dict[object, str] = {AddrRange(1, 2): "a", MappableRange(1, 2): "m"}
    d[FileRange(1, 2)] = "f"
    assert len(d) == 3
    assert d[MappableRange(1, 2)] == "m"


@kinds
@pytest.mark.parametrize("field", ["start", "end"])
def test_range_is_immutable(kind: Kind, field: str):
    r = kind(0, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(r, field, 5)
    assert (r.start, r.end) == (0, 10)


@kinds
@pytest.mark.parametrize("name", ["length", "other"])
def test_range_rejects_other_attributes(kind: Kind, name: str):
    r = kind(0, 10)
    # Python 3.11's frozen slotted dataclasses raise TypeError here rather
    # than FrozenInstanceError; either way nothing may change.
    with pytest.raises((AttributeError, TypeError)):
        setattr(r, name, 5)
    assert r.length == 10
    assert not hasattr(r, "other")


@kinds
def test_range_attributes_cannot_be_deleted(kind: Kind):
    r = kind(0, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del r.start
    assert r.start == 0


@kinds
def test_range_replace_validates(kind: Kind):
    r = kind(0, 10)
    assert dataclasses.replace(r, end=20) == kind(0, 20)
    with pytest.raises(ValueError, match="start=0xb"):
        dataclasses.replace(r, start=11)


@kinds
def test_range_pickle_and_copy_round_trip(kind: Kind):
    r = kind(PAGE_SIZE, U64)
    for clone in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        assert clone == r
        assert type(clone) is kind


# ---------------------------------------------------------------------------
# Properties of the range algebra.


@st.composite
def same_kind(draw: st.DrawFn, n: int) -> list[Range]:
    kind = draw(any_kind)
    return [draw(ranges(kind)) for _ in range(n)]


@given(same_kind(2))
def test_range_intersect_is_commutative(rs: list[Range]):
    a, b = rs
    assert a.intersect(b) == b.intersect(a)


@given(same_kind(2))
def test_range_intersect_definition(rs: list[Range]):
    a, b = rs
    i = a.intersect(b)
    lo, hi = max(a.start, b.start), min(a.end, b.end)
    assert i.start == lo
    assert i.length == max(0, hi - lo)
    # The intersection lies in both exactly when the ranges meet or overlap;
    # disjoint ranges give an empty range at the larger start, outside one.
    inside_both = a.is_superset_of(i) and b.is_superset_of(i)
    assert inside_both is (lo <= hi)
    # Every value of the intersection is in both ranges.
    for x in (i.start, i.end - 1):
        if i.contains(x):
            assert a.contains(x)
            assert b.contains(x)


@given(same_kind(3))
def test_range_intersect_is_largest_common_subrange(rs: list[Range]):
    a, b, c = rs
    i = a.intersect(b)
    if c.length and a.is_superset_of(c) and b.is_superset_of(c):
        assert i.is_superset_of(c)


@given(same_kind(2))
def test_range_overlaps_exact_definition(rs: list[Range]):
    a, b = rs
    i = a.intersect(b)
    expected = (
        i.length > 0
        or (a.length == 0 and b.can_split_at(a.start))
        or (b.length == 0 and a.can_split_at(b.start))
    )
    assert a.overlaps(b) is expected
    assert b.overlaps(a) is expected


@given(same_kind(2))
def test_range_overlaps_of_non_empty_ranges_means_shared_value(rs: list[Range]):
    a, b = rs
    if a.length and b.length:
        shared = max(a.start, b.start) < min(a.end, b.end)
        assert a.overlaps(b) is shared


@given(same_kind(2))
def test_range_superset_is_antisymmetric(rs: list[Range]):
    a, b = rs
    if a.is_superset_of(b) and b.is_superset_of(a):
        assert a == b
    assert a.is_superset_of(a)


@given(same_kind(3))
def test_range_superset_is_transitive(rs: list[Range]):
    a, b, c = rs
    if a.is_superset_of(b) and b.is_superset_of(c):
        assert a.is_superset_of(c)


@given(same_kind(2))
def test_range_superset_definition(rs: list[Range]):
    a, b = rs
    expected = a.start <= b.start and a.end >= b.end
    assert a.is_superset_of(b) is expected
    if a.is_superset_of(b):
        assert a.intersect(b) == b


@given(any_kind.flatmap(ranges), st.one_of(bounds, st.integers(-2, U64 + 2)))
def test_range_contains_and_can_split_at(r: Range, x: int):
    assert r.contains(x) is (r.start <= x < r.end)
    assert r.can_split_at(x) is (r.contains(x) and r.start < x)
    assert r.can_split_at(x) is (r.start < x < r.end)


@given(any_kind.flatmap(ranges))
def test_range_basic_properties(r: Range):
    assert r.well_formed()
    assert r.length == r.end - r.start >= 0
    assert r.is_page_aligned() is (is_page_aligned(r.start) and is_page_aligned(r.end))
    assert r == type(r)(r.start, r.end)
    assert hash(r) == hash(type(r)(r.start, r.end))
    assert str(r) == f"[{r.start:#x}, {r.end:#x})"


@given(same_kind(2))
def test_range_ordering_is_by_start_then_end(rs: list[Range]):
    a, b = rs
    assert (a < b) is ((a.start, a.end) < (b.start, b.end))
    assert (a <= b) is ((a.start, a.end) <= (b.start, b.end))
