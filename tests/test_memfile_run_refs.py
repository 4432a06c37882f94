"""Dropping a reference from exactly one run of a memory file's used pages.

This is what every mapping space does when a truncation reaches it: each
drops the same pages, so after the first the range is one run of its own
and the count changes in place. The run must still merge with a neighbour
that reaches the same count and kind, and everything must match a model
that counts references page by page.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemmap import (
    PAGE_SIZE,
    AlignmentError,
    FileRange,
    MemoryFile,
    MemoryKind,
    RefCountError,
)

P = PAGE_SIZE
PAGES = 12


def runs_of(model: dict[int, tuple[int, MemoryKind]]) -> list[tuple[int, int, object]]:
    """The model's pages as maximal runs of equal ``(references, kind)``."""
    out: list[tuple[int, int, object]] = []
    for page in sorted(model):
        value = model[page]
        if out and out[-1][1] == page * P and out[-1][2] == value:
            out[-1] = (out[-1][0], (page + 1) * P, value)
        else:
            out.append((page * P, (page + 1) * P, value))
    return out


def test_a_sub_range_of_a_shared_run_drops_one_reference_per_holder() -> None:
    with MemoryFile("run-refs", chunk_size=2 << 20) as mf:
        fr = mf.allocate(4 * P, kind=MemoryKind.TMPFS)
        holders = 5
        for _ in range(holders):
            mf.inc_ref(fr)
        tail = FileRange(fr.start + 2 * P, fr.end)
        # The first holder splits the run; each later one finds the tail as
        # a run of its own.
        for dropped in range(1, holders + 1):
            mf.dec_ref(tail)
            assert list(mf._used) == [
                (fr.start, fr.start + 2 * P, (holders + 1, MemoryKind.TMPFS)),
                (tail.start, tail.end, (holders + 1 - dropped, MemoryKind.TMPFS)),
            ]
            mf.check_invariants()
        # The owner's own reference is the last one: the tail is freed.
        mf.dec_ref(tail)
        assert list(mf._used) == [
            (fr.start, fr.start + 2 * P, (holders + 1, MemoryKind.TMPFS))
        ]
        assert mf.statistics().used_bytes == 2 * P
        assert mf.statistics().committed_bytes <= 2 * P
        for _ in range(holders + 1):
            mf.dec_ref(FileRange(fr.start, fr.start + 2 * P))
        assert mf.statistics().used_bytes == 0
        mf.check_invariants()


def test_a_run_merges_with_the_neighbour_that_reaches_its_count() -> None:
    with MemoryFile("run-refs", chunk_size=2 << 20) as mf:
        fr = mf.allocate(3 * P)
        mf.inc_ref(FileRange(fr.start + P, fr.end))
        mf.inc_ref(FileRange(fr.start + 2 * P, fr.end))
        # Counts 1, 2, 3: dropping the last page's extra reference merges it
        # with the middle one; dropping that run's merges all three.
        mf.dec_ref(FileRange(fr.start + 2 * P, fr.end))
        assert list(mf._used) == [
            (fr.start, fr.start + P, (1, MemoryKind.ANONYMOUS)),
            (fr.start + P, fr.end, (2, MemoryKind.ANONYMOUS)),
        ]
        mf.dec_ref(FileRange(fr.start + P, fr.end))
        assert list(mf._used) == [(fr.start, fr.end, (1, MemoryKind.ANONYMOUS))]
        mf.check_invariants()
        mf.dec_ref(fr)
        assert len(mf._used) == 0


def test_a_run_of_another_kind_does_not_merge() -> None:
    with MemoryFile("run-refs", chunk_size=2 << 20) as mf:
        a = mf.allocate(P, kind=MemoryKind.TMPFS)
        b = mf.allocate(P, kind=MemoryKind.PAGE_CACHE)
        assert b.start == a.end
        mf.inc_ref(b)
        mf.dec_ref(b)
        assert list(mf._used) == [
            (a.start, a.end, (1, MemoryKind.TMPFS)),
            (b.start, b.end, (1, MemoryKind.PAGE_CACHE)),
        ]
        mf.check_invariants()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_run_refcounts_match_a_page_model(data: st.DataObject) -> None:
    kinds = [MemoryKind.ANONYMOUS, MemoryKind.TMPFS]
    with MemoryFile("run-refs", chunk_size=2 << 20) as mf:
        model: dict[int, tuple[int, MemoryKind]] = {}
        # Adjacent allocations of random lengths and kinds.
        page = 0
        while page < PAGES:
            n = data.draw(st.integers(1, PAGES - page), label="length")
            kind = data.draw(st.sampled_from(kinds), label="kind")
            fr = mf.allocate(n * P, kind=kind)
            assert fr.start == page * P
            for p in range(page, page + n):
                model[p] = (1, kind)
            page += n
        for _ in range(data.draw(st.integers(1, 40), label="steps")):
            if not model:
                break
            pages = sorted(model)
            if data.draw(st.booleans(), label="exact run"):
                # The fast path: a whole current run.
                runs = list(mf._used)
                start, end, _ = data.draw(st.sampled_from(runs), label="run")
                first, last = start // P, end // P
            else:
                first = data.draw(st.sampled_from(pages), label="first")
                last = first + 1
                while last in model and data.draw(st.booleans(), label="longer"):
                    last += 1
            fr = FileRange(first * P, last * P)
            if data.draw(st.integers(0, 2), label="op") == 0:
                mf.inc_ref(fr)
                for p in range(first, last):
                    refs, kind = model[p]
                    model[p] = (refs + 1, kind)
            else:
                mf.dec_ref(fr)
                for p in range(first, last):
                    refs, kind = model[p]
                    if refs == 1:
                        del model[p]
                    else:
                        model[p] = (refs - 1, kind)
            assert [tuple(s) for s in mf._used] == runs_of(model)
            assert mf.statistics().used_bytes == len(model) * P
            mf.check_invariants()


@pytest.mark.parametrize(
    ("fr", "error"),
    [
        (FileRange(0, 0), ValueError),
        (FileRange(1, P), AlignmentError),
        (FileRange(0, 3 * P), RefCountError),
    ],
    ids=["empty", "unaligned", "past the allocation"],
)
def test_bad_ranges_still_fail_and_change_nothing(
    fr: FileRange, error: type[Exception]
) -> None:
    with MemoryFile("run-refs", chunk_size=2 << 20) as mf:
        mf.allocate(2 * P)
        before = list(mf._used)
        with pytest.raises(error):
            mf.dec_ref(fr)
        assert list(mf._used) == before
