"""Tests for page sizes and page rounding (``aiomemmap._core.pages``)."""

from __future__ import annotations

import enum
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemmap import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    is_page_aligned,
    page_round_down,
    page_round_up,
)
from aiomemmap._core.pages import (
    ADDR_LIMIT,
    huge_page_round_down,
    huge_page_round_up,
    is_huge_page_aligned,
    is_int,
)

U64 = 2**64
Fn = Callable[[int], object]

ALL_FUNCTIONS: list[Fn] = [
    page_round_down,
    page_round_up,
    is_page_aligned,
    huge_page_round_down,
    huge_page_round_up,
    is_huge_page_aligned,
]

# Values in [0, 2**64], biased towards page and huge-page boundaries.
values = st.one_of(
    st.integers(0, U64),
    st.integers(0, U64 // PAGE_SIZE).map(lambda p: p * PAGE_SIZE),
    st.integers(0, U64 // HUGE_PAGE_SIZE).flatmap(
        lambda h: st.integers(-2, 2).map(
            lambda d: min(max(h * HUGE_PAGE_SIZE + d, 0), U64)
        )
    ),
)


class _Small(enum.IntEnum):
    ONE_PAGE_AND_A_BIT = PAGE_SIZE + 1


def test_pages_sizes():
    assert PAGE_SIZE == 4096
    assert HUGE_PAGE_SIZE == 2 * 1024 * 1024
    assert HUGE_PAGE_SIZE % PAGE_SIZE == 0
    assert ADDR_LIMIT == U64


# gVisor's PageRoundUp vectors (range.go-derived, §1.3): the ones that report
# !ok there raise OverflowError here.
@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0, 0),
        (1, PAGE_SIZE),
        (PAGE_SIZE, PAGE_SIZE),
        (PAGE_SIZE + 1, 2 * PAGE_SIZE),
        (U64 - PAGE_SIZE, U64 - PAGE_SIZE),
    ],
)
def test_page_round_up_vectors(x: int, expected: int):
    assert page_round_up(x) == expected


@pytest.mark.parametrize("x", [U64 - PAGE_SIZE + 1, U64 - 1, U64])
def test_page_round_up_overflow_raises(x: int):
    with pytest.raises(OverflowError, match="64 bits"):
        page_round_up(x)


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0, 0),
        (1, 0),
        (PAGE_SIZE - 1, 0),
        (PAGE_SIZE, PAGE_SIZE),
        (PAGE_SIZE + 1, PAGE_SIZE),
        (U64 - 1, U64 - PAGE_SIZE),
        (U64, U64),
    ],
)
def test_page_round_down_vectors(x: int, expected: int):
    assert page_round_down(x) == expected


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0, True),
        (1, False),
        (PAGE_SIZE - 1, False),
        (PAGE_SIZE, True),
        (3 * PAGE_SIZE, True),
        (U64 - PAGE_SIZE, True),
        (U64 - 1, False),
        (U64, True),
    ],
)
def test_is_page_aligned_vectors(x: int, expected: bool):
    assert is_page_aligned(x) is expected


@pytest.mark.parametrize(
    ("x", "down", "up"),
    [
        (0, 0, 0),
        (1, 0, HUGE_PAGE_SIZE),
        (PAGE_SIZE, 0, HUGE_PAGE_SIZE),
        (HUGE_PAGE_SIZE - 1, 0, HUGE_PAGE_SIZE),
        (HUGE_PAGE_SIZE, HUGE_PAGE_SIZE, HUGE_PAGE_SIZE),
        (HUGE_PAGE_SIZE + 1, HUGE_PAGE_SIZE, 2 * HUGE_PAGE_SIZE),
        (U64 - HUGE_PAGE_SIZE, U64 - HUGE_PAGE_SIZE, U64 - HUGE_PAGE_SIZE),
    ],
)
def test_huge_page_rounding_vectors(x: int, down: int, up: int):
    assert huge_page_round_down(x) == down
    assert huge_page_round_up(x) == up
    assert is_huge_page_aligned(x) is (x == down)


@pytest.mark.parametrize("x", [U64 - HUGE_PAGE_SIZE + 1, U64 - PAGE_SIZE, U64 - 1, U64])
def test_huge_page_round_up_overflow_raises(x: int):
    with pytest.raises(OverflowError, match="huge page"):
        huge_page_round_up(x)


def test_huge_page_round_down_of_limit_is_limit():
    assert huge_page_round_down(U64) == U64
    assert huge_page_round_down(U64 - 1) == U64 - HUGE_PAGE_SIZE
    assert is_huge_page_aligned(U64)


def test_is_huge_page_aligned_rejects_page_multiples():
    assert not is_huge_page_aligned(PAGE_SIZE)
    assert not is_huge_page_aligned(HUGE_PAGE_SIZE + PAGE_SIZE)
    assert is_huge_page_aligned(7 * HUGE_PAGE_SIZE)


@pytest.mark.parametrize("fn", ALL_FUNCTIONS)
@pytest.mark.parametrize("bad", [1.0, 4096.0, "4096", None, b"\x00", [0], True, False])
def test_pages_non_int_raises_type_error_naming_argument(fn: Fn, bad: object):
    with pytest.raises(TypeError, match=r"\bx must be an int") as info:
        fn(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("fn", ALL_FUNCTIONS)
@pytest.mark.parametrize("bad", [-1, -PAGE_SIZE, U64 + 1, U64 + PAGE_SIZE, 2**100])
def test_pages_out_of_range_raises_value_error_naming_argument(fn: Fn, bad: int):
    with pytest.raises(ValueError, match=r"\bx must be in \[0, 2\*\*64\]") as info:
        fn(bad)
    assert f"{bad:#x}" in str(info.value)


@pytest.mark.parametrize("fn", ALL_FUNCTIONS)
def test_pages_accept_int_subclasses(fn: Fn):
    x = _Small.ONE_PAGE_AND_A_BIT
    assert fn(x) == fn(int(x))


def test_pages_results_are_plain_ints():
    x = _Small.ONE_PAGE_AND_A_BIT
    assert type(page_round_down(x)) is int
    assert type(page_round_up(x)) is int
    assert type(huge_page_round_up(x)) is int


def test_is_int_rejects_bool_and_non_ints():
    assert is_int(0)
    assert is_int(-5)
    assert is_int(2**70)
    assert is_int(_Small.ONE_PAGE_AND_A_BIT)
    assert not is_int(True)
    assert not is_int(False)
    assert not is_int(1.0)
    assert not is_int("1")
    assert not is_int(None)


@given(values)
def test_page_round_down_properties(x: int):
    down = page_round_down(x)
    assert down <= x
    assert x - down < PAGE_SIZE
    assert is_page_aligned(down)
    assert page_round_down(down) == down
    assert is_page_aligned(x) is (down == x)


@given(values)
def test_page_round_up_properties(x: int):
    down = page_round_down(x)
    if -(-x // PAGE_SIZE) * PAGE_SIZE >= U64:
        # Includes 2**64 itself: aligned, but not a 64-bit result.
        with pytest.raises(OverflowError):
            page_round_up(x)
        return
    up = page_round_up(x)
    assert down <= x <= up < U64
    assert is_page_aligned(up)
    assert page_round_up(up) == up
    assert page_round_down(up) == up
    assert up - down in (0, PAGE_SIZE)
    assert (up == down) is is_page_aligned(x)


@given(values)
def test_huge_page_rounding_properties(x: int):
    down = huge_page_round_down(x)
    assert down <= x
    assert x - down < HUGE_PAGE_SIZE
    assert is_huge_page_aligned(down)
    assert is_page_aligned(down)
    assert huge_page_round_down(down) == down
    # A huge-page boundary below x is never above the page boundary below x.
    assert down <= page_round_down(x)
    if -(-x // HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE >= U64:
        with pytest.raises(OverflowError):
            huge_page_round_up(x)
        return
    up = huge_page_round_up(x)
    assert down <= x <= up < U64
    assert is_huge_page_aligned(up)
    assert huge_page_round_up(up) == up
    assert up - down in (0, HUGE_PAGE_SIZE)
    assert (up == down) is is_huge_page_aligned(x)
    assert up >= page_round_up(x)


@given(st.integers(0, U64 - PAGE_SIZE))
def test_page_round_up_matches_ceiling_division(x: int):
    assert page_round_up(x) == -(-x // PAGE_SIZE) * PAGE_SIZE
