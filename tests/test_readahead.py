"""Readahead policies: windows, growth, reset, hints, bad input, a property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemmap import (
    PAGE_SIZE,
    AdaptiveReadahead,
    AlignmentError,
    FixedReadahead,
    MappableRange,
    NoReadahead,
    ReadaheadHint,
    page_round_up,
)
from aiomemmap.mappables.readahead import (
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAXIMUM_WINDOW,
    ReadaheadPolicy,
    ReadaheadState,
)

P = PAGE_SIZE
KiB = 1024
MiB = 1024 * KiB


def M(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def test_no_readahead_returns_required():
    policy = NoReadahead()
    state = policy.new_state()
    assert policy.window(state, M(P, 2 * P), M(0, 100 * P), 100 * P) == M(P, 2 * P)
    assert policy.window(state, M(2 * P, 3 * P), M(0, 100 * P), 100 * P) == M(
        2 * P, 3 * P
    )


def test_fixed_readahead_window_from_access_start():
    policy = FixedReadahead(16 * P)
    state = policy.new_state()
    assert policy.window(state, M(P, 2 * P), M(0, 100 * P), 100 * P) == M(P, 17 * P)
    # A longer access keeps its own length.
    assert policy.window(state, M(0, 20 * P), M(0, 100 * P), 100 * P) == M(0, 20 * P)


def test_fixed_readahead_clipped_to_optional_and_size():
    policy = FixedReadahead(16 * P)
    state = policy.new_state()
    assert policy.window(state, M(P, 2 * P), M(0, 4 * P), 100 * P) == M(P, 4 * P)
    # The page-rounded size: 5 * P + 1 byte rounds up to 6 pages.
    assert policy.window(state, M(P, 2 * P), M(0, 100 * P), 5 * P + 1) == M(P, 6 * P)


def test_fixed_readahead_random_hint_gives_required():
    policy = FixedReadahead(16 * P)
    state = policy.new_state()
    state.advise(ReadaheadHint.RANDOM)
    assert policy.window(state, M(P, 2 * P), M(0, 100 * P), 100 * P) == M(P, 2 * P)


def test_adaptive_readahead_defaults():
    policy = AdaptiveReadahead()
    assert policy.initial == DEFAULT_INITIAL_WINDOW == 64 * KiB
    assert policy.maximum == DEFAULT_MAXIMUM_WINDOW == 16 * MiB
    assert policy.growth == 2.0
    assert "AdaptiveReadahead" in repr(policy)


def test_adaptive_readahead_first_access_fetches_only_what_it_asks():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 1 << 30
    assert policy.window(state, M(0, P), M(0, size), size) == M(0, P)
    # Armed: the next access that carries on reads ahead.
    assert state.window == 64 * KiB
    assert policy.window(state, M(P, 2 * P), M(0, size), size) == M(P, P + 128 * KiB)


def _sequential_reads(
    policy: AdaptiveReadahead, state: ReadaheadState, size: int, step: int
) -> list[MappableRange]:
    """Read the file sequentially in ``step`` bytes; return each window."""
    return [
        policy.window(state, M(off, off + step), M(0, size), size)
        for off in range(0, size, step)
    ]


def test_adaptive_readahead_grows_on_sequential_reads():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 64 * MiB
    windows = _sequential_reads(policy, state, size, P)
    # The windows that reach beyond the access are the readahead steps.
    ahead = [w for w in windows if w.length > P]
    lengths_beyond = []
    prev_end = 0
    for w in ahead:
        lengths_beyond.append(w.end - max(prev_end, w.start))
        prev_end = w.end
    # The first access fetched only itself; the second started reading
    # ahead with twice the initial window, and each step doubles it, up to
    # the maximum.
    assert windows[0] == M(0, P)
    assert lengths_beyond[:5] == [128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB]
    assert max(lengths_beyond) == DEFAULT_MAXIMUM_WINDOW
    assert state.window == DEFAULT_MAXIMUM_WINDOW
    # Together the windows cover the file exactly once, ahead of the reader.
    assert prev_end == size


def test_adaptive_readahead_runs_ahead_of_the_reader():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 16 * MiB
    for off in range(0, 4 * MiB, P):
        policy.window(state, M(off, off + P), M(0, size), size)
        # Once past the first window, more than half a window is requested
        # beyond the reader at every point.
        if off >= 64 * KiB:
            assert state.ahead_end - (off + P) >= state.window // 2 - P


def test_adaptive_readahead_faults_at_window_end_count_as_sequential():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 64 * MiB
    w = policy.window(state, M(0, P), M(0, size), size)
    assert w == M(0, P)
    # A fault just past the translated window continues the stream.
    w = policy.window(state, M(w.end, w.end + P), M(0, size), size)
    assert w == M(P, P + 128 * KiB)
    w = policy.window(state, M(w.end, w.end + P), M(0, size), size)
    assert w.length == 256 * KiB


def test_adaptive_readahead_resets_on_random_access():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 64 * MiB
    _sequential_reads(policy, state, 4 * MiB, P)
    assert state.window > 64 * KiB
    w = policy.window(state, M(40 * MiB, 40 * MiB + P), M(0, size), size)
    assert w == M(40 * MiB, 40 * MiB + P)
    assert state.window == 64 * KiB


def test_adaptive_readahead_random_hint_and_back():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 64 * MiB
    state.advise(ReadaheadHint.RANDOM)
    for off in range(0, 64 * P, P):
        assert policy.window(state, M(off, off + P), M(0, size), size) == M(
            off, off + P
        )
    state.advise(ReadaheadHint.NORMAL)
    assert policy.window(state, M(0, P), M(0, size), size) == M(0, P)
    assert policy.window(state, M(P, 2 * P), M(0, size), size).length > P


def test_adaptive_readahead_sequential_hint_never_resets():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 64 * MiB
    state.advise(ReadaheadHint.SEQUENTIAL)
    w1 = policy.window(state, M(0, P), M(0, size), size)
    assert w1 == M(0, 64 * KiB)
    # A jump would reset a normal stream; under SEQUENTIAL the window grows.
    w2 = policy.window(state, M(10 * MiB, 10 * MiB + P), M(0, size), size)
    assert state.window == 128 * KiB
    assert w2.start == 10 * MiB
    assert w2.end > 10 * MiB + P


def test_adaptive_readahead_window_stops_at_end_of_file():
    policy = AdaptiveReadahead()
    state = policy.new_state()
    size = 10 * P + 5
    assert policy.window(state, M(0, P), M(0, 1 << 40), size) == M(0, P)
    assert policy.window(state, M(P, 2 * P), M(0, 1 << 40), size) == M(P, 11 * P)


def test_adaptive_readahead_growth_one_keeps_window():
    policy = AdaptiveReadahead(initial=4 * P, maximum=4 * P, growth=1.0)
    state = policy.new_state()
    windows = _sequential_reads(policy, state, 64 * P, P)
    assert all(w.length <= 6 * P for w in windows)
    assert state.window == 4 * P


def test_state_reset_and_repr():
    state = ReadaheadState()
    state.advise(ReadaheadHint.SEQUENTIAL)
    state.last_start = 5
    state.reset()
    assert state.hint is ReadaheadHint.SEQUENTIAL
    assert state.last_start == -1
    assert "sequential" in repr(state)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"initial": 0}, ValueError),
        ({"initial": 100}, AlignmentError),
        ({"initial": 1.5}, TypeError),
        ({"initial": 2 * P, "maximum": P}, ValueError),
        ({"growth": 0.5}, ValueError),
        ({"growth": float("nan")}, ValueError),
        ({"growth": "2"}, TypeError),
        ({"growth": True}, TypeError),
    ],
)
def test_adaptive_readahead_rejects_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        AdaptiveReadahead(**kwargs)


@pytest.mark.parametrize(
    ("nbytes", "exc"), [(0, ValueError), (-P, ValueError), (3, AlignmentError)]
)
def test_fixed_readahead_rejects_bad_arguments(nbytes, exc):
    with pytest.raises(exc):
        FixedReadahead(nbytes)


def test_advise_rejects_non_hint():
    with pytest.raises(TypeError, match="ReadaheadHint"):
        ReadaheadState().advise("random")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "policy", [NoReadahead(), FixedReadahead(P), AdaptiveReadahead()]
)
def test_window_rejects_bad_ranges(policy):
    state = policy.new_state()
    before = repr(state)
    with pytest.raises(ValueError, match="empty"):
        policy.window(state, M(P, P), M(0, 4 * P), 4 * P)
    with pytest.raises(AlignmentError):
        policy.window(state, M(1, P), M(0, 4 * P), 4 * P)
    with pytest.raises(ValueError, match="does not contain"):
        policy.window(state, M(0, 2 * P), M(P, 4 * P), 4 * P)
    with pytest.raises(ValueError, match="past the page-rounded"):
        policy.window(state, M(0, 2 * P), M(0, 4 * P), P)
    with pytest.raises(ValueError, match="negative"):
        policy.window(state, M(0, P), M(0, 4 * P), -1)
    with pytest.raises(TypeError):
        policy.window(state, (0, P), M(0, 4 * P), 4 * P)
    with pytest.raises(TypeError):
        policy.window(object(), M(0, P), M(0, 4 * P), 4 * P)
    assert repr(state) == before


_POLICIES = st.one_of(
    st.just(NoReadahead()),
    st.integers(1, 64).map(lambda n: FixedReadahead(n * P)),
    st.tuples(st.integers(1, 16), st.integers(0, 64), st.floats(1.0, 4.0)).map(
        lambda t: AdaptiveReadahead(t[0] * P, (t[0] + t[1]) * P, t[2])
    ),
)


@st.composite
def _accesses(draw: st.DrawFn) -> tuple[int, list[tuple[MappableRange, MappableRange]]]:
    size = draw(st.integers(1, 256 * P))
    pages = page_round_up(size) // P
    out = []
    for _ in range(draw(st.integers(1, 30))):
        if draw(st.booleans()) and out:
            # Continue the previous access: exercises the growth path.
            prev = out[-1][0]
            start = min(prev.end // P, pages - 1)
        else:
            start = draw(st.integers(0, pages - 1))
        end = draw(st.integers(start + 1, min(pages, start + 8)))
        opt_start = draw(st.integers(0, start))
        opt_end = draw(st.integers(end, pages + 8))
        out.append((M(start * P, end * P), M(opt_start * P, opt_end * P)))
    return size, out


@given(
    policy=_POLICIES,
    accesses=_accesses(),
    hints=st.lists(st.sampled_from(list(ReadaheadHint)), max_size=3),
)
def test_window_always_within_optional_and_covers_required(policy, accesses, hints):
    size, pairs = accesses
    state = policy.new_state()
    for i, (required, optional) in enumerate(pairs):
        if hints and i % 7 == 3:
            state.advise(hints[i % len(hints)])
        w = policy.window(state, required, optional, size)
        assert isinstance(w, MappableRange)
        assert w.is_page_aligned()
        assert w.is_superset_of(required)
        assert optional.is_superset_of(w)
        assert w.end <= page_round_up(size)
        assert state.window % P == 0


def test_policies_satisfy_protocol():
    policies: list[ReadaheadPolicy] = [
        NoReadahead(),
        FixedReadahead(P),
        AdaptiveReadahead(),
    ]
    assert [type(p.new_state()) for p in policies] == [ReadaheadState] * 3
    assert repr(FixedReadahead(P)) == "FixedReadahead(0x1000)"
    assert FixedReadahead(P).nbytes == P
    assert repr(NoReadahead()) == "NoReadahead()"
