"""Tests of the invalidation bus."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
from collections.abc import Callable

import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    AddrRange,
    AlignmentError,
    BusStatistics,
    InvalidateOpts,
    InvalidationBus,
    LockOrderError,
    LockRank,
    MappableRange,
    OrderedLock,
    OrderedRWLock,
    set_debug,
)
from aiomemmap.memmap.bus import default_bus

DEADLINE = 10
OPTS = InvalidateOpts()


def page_range(first: int, count: int = 1) -> AddrRange:
    return AddrRange(first * PAGE_SIZE, (first + count) * PAGE_SIZE)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let other tasks run until ``predicate`` holds (the caller sets a deadline)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(0)


class Space:
    """A mapping space that records what it was asked to invalidate."""

    def __init__(self, name: str = "space") -> None:
        self.name = name
        self.started: list[AddrRange] = []
        self.applied: list[tuple[AddrRange, InvalidateOpts]] = []
        self.active = 0
        self.max_active = 0

    def __repr__(self) -> str:
        return f"<Space {self.name}>"

    @property
    def ranges(self) -> list[AddrRange]:
        return [ar for ar, _ in self.applied]

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.started.append(ar)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.work(ar)
            self.applied.append((ar, opts))
        finally:
            self.active -= 1

    async def work(self, ar: AddrRange) -> None:
        """What happens between starting and applying; nothing by default."""


class GatedSpace(Space):
    """Waits for ``gate`` before applying each invalidation."""

    def __init__(self, name: str = "gated", gate: asyncio.Event | None = None) -> None:
        super().__init__(name)
        self.gate = gate if gate is not None else asyncio.Event()
        self.started_event = asyncio.Event()

    async def work(self, ar: AddrRange) -> None:
        self.started_event.set()
        await self.gate.wait()


class FailingSpace(Space):
    """Raises ``exc`` for the ranges in ``bad`` (all ranges if ``bad`` is None)."""

    def __init__(
        self,
        name: str,
        exc: BaseException,
        bad: set[AddrRange] | None = None,
        suspend: bool = False,
    ) -> None:
        super().__init__(name)
        self.exc = exc
        self.bad = bad
        self.suspend = suspend

    async def work(self, ar: AddrRange) -> None:
        if self.suspend:
            await asyncio.sleep(0)
        if self.bad is None or ar in self.bad:
            raise self.exc


class YieldingSpace(Space):
    """Yields to the loop a pseudo-random number of times per invalidation."""

    def __init__(self, name: str, rng: random.Random) -> None:
        super().__init__(name)
        self.rng = rng

    async def work(self, ar: AddrRange) -> None:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)


class TaskRecordingSpace(Space):
    """Records the current task before and after its optional suspension."""

    def __init__(self, name: str, gate: asyncio.Event | None = None) -> None:
        super().__init__(name)
        self.gate = gate
        self.tasks: list[
            tuple[asyncio.Task[object] | None, asyncio.Task[object] | None]
        ]
        self.tasks = []

    async def work(self, ar: AddrRange) -> None:
        before = asyncio.current_task()
        if self.gate is not None:
            await self.gate.wait()
        self.tasks.append((before, asyncio.current_task()))


class LockingSpace(Space):
    """Takes its ACTIVE lock for writing, as an address space would."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.active_lock = OrderedRWLock(LockRank.ACTIVE, f"{name}.active")

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        async with self.active_lock.write():
            assert self.active_lock.write_owned_by_current_task()
            await super().invalidate(ar, opts)
            assert self.active_lock.write_owned_by_current_task()


class CountingSpace:
    """The cheapest possible space: counts its calls, never suspends."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.calls += 1


class FutureSpace:
    """A space whose invalidate is a plain function returning a future."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


def stats(bus: InvalidationBus) -> BusStatistics:
    return bus.statistics()


# --- basics -------------------------------------------------------------------


async def test_publish_delivers_every_range_with_its_opts():
    bus = InvalidationBus()
    a, b = Space("a"), Space("b")
    opts = InvalidateOpts(invalidate_private=True)
    with anyio.fail_after(DEADLINE):
        await bus.publish([(a, page_range(0)), (b, page_range(4, 2))], opts)
    assert a.applied == [(page_range(0), opts)]
    assert b.applied == [(page_range(4, 2), opts)]
    assert stats(bus) == BusStatistics(
        publishes=1, deliveries=2, failures=0, spaces_in_flight=0
    )


async def test_publish_of_nothing_returns_at_once():
    bus = InvalidationBus()
    await bus.publish([], OPTS)
    await bus.publish(iter(()), OPTS)
    assert stats(bus) == BusStatistics(
        publishes=2, deliveries=0, failures=0, spaces_in_flight=0
    )


async def test_publish_accepts_any_iterable():
    bus = InvalidationBus()
    spaces = [Space(str(i)) for i in range(3)]
    with anyio.fail_after(DEADLINE):
        await bus.publish(((s, page_range(i)) for i, s in enumerate(spaces)), OPTS)
    assert [s.ranges for s in spaces] == [[page_range(i)] for i in range(3)]


async def test_publish_returns_only_once_every_space_applied():
    bus = InvalidationBus()
    gate = asyncio.Event()
    spaces = [GatedSpace(str(i), gate) for i in range(3)]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            bus.publish([(s, page_range(0)) for s in spaces], OPTS)
        )
        await wait_until(lambda: all(s.started for s in spaces))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        assert stats(bus).spaces_in_flight == 3
        gate.set()
        await task
    assert all(s.ranges == [page_range(0)] for s in spaces)
    assert stats(bus).spaces_in_flight == 0


async def test_deliveries_to_different_spaces_overlap_in_time():
    bus = InvalidationBus()
    a_started, b_started = asyncio.Event(), asyncio.Event()

    class A(Space):
        async def work(self, ar: AddrRange) -> None:
            a_started.set()
            await b_started.wait()

    class B(Space):
        async def work(self, ar: AddrRange) -> None:
            b_started.set()
            await a_started.wait()

    a, b = A("a"), B("b")
    with anyio.fail_after(DEADLINE):
        # A suspends until B has started: only possible if they overlap.
        await bus.publish([(a, page_range(0)), (b, page_range(0))], OPTS)
    assert a.ranges == b.ranges == [page_range(0)]


async def test_many_suspending_deliveries_all_overlap():
    bus = InvalidationBus()
    n = 50
    everyone_started = asyncio.Event()
    started = 0

    class Rendezvous(Space):
        async def work(self, ar: AddrRange) -> None:
            nonlocal started
            started += 1
            if started == n:
                everyone_started.set()
            await everyone_started.wait()

    spaces = [Rendezvous(str(i)) for i in range(n)]
    with anyio.fail_after(DEADLINE):
        await bus.publish([(s, page_range(0)) for s in spaces], OPTS)
    assert all(s.ranges == [page_range(0)] for s in spaces)


# --- ordering -----------------------------------------------------------------


async def test_deliveries_to_one_space_in_one_publish_apply_in_order():
    bus = InvalidationBus()
    rng = random.Random(7)
    a, b = YieldingSpace("a", rng), YieldingSpace("b", rng)
    deliveries = [
        (a, page_range(3)),
        (b, page_range(0)),
        (a, page_range(1)),
        (a, page_range(2)),
        (b, page_range(9)),
    ]
    with anyio.fail_after(DEADLINE):
        await bus.publish(deliveries, OPTS)
    assert a.ranges == [page_range(3), page_range(1), page_range(2)]
    assert b.ranges == [page_range(0), page_range(9)]
    assert a.max_active == 1
    assert b.max_active == 1
    assert stats(bus).deliveries == 5


async def test_order_holds_across_concurrent_publishes():
    bus = InvalidationBus()
    s = GatedSpace("s")
    t = Space("t")
    with anyio.fail_after(DEADLINE):
        first = asyncio.create_task(bus.publish([(s, page_range(1))], OPTS))
        await s.started_event.wait()
        second = asyncio.create_task(
            bus.publish([(s, page_range(2)), (t, page_range(7))], OPTS)
        )
        await wait_until(lambda: bool(t.applied))
        # t was free, so it was applied; s's second delivery waits its turn.
        assert s.started == [page_range(1)]
        assert stats(bus).spaces_in_flight == 1
        s.gate.set()
        await asyncio.gather(first, second)
    assert s.ranges == [page_range(1), page_range(2)]
    assert s.max_active == 1
    assert stats(bus).spaces_in_flight == 0


async def test_order_is_publish_call_order_under_heavy_concurrency():
    bus = InvalidationBus()
    rng = random.Random(2024)
    spaces = [YieldingSpace(str(i), rng) for i in range(6)]
    call_order: list[int] = []

    async def publisher(i: int, targets: list[YieldingSpace]) -> None:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        # Nothing awaits between recording and the call taking its places.
        call_order.append(i)
        await bus.publish([(s, page_range(i)) for s in targets], OPTS)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for i in range(60):
                targets = rng.sample(spaces, rng.randrange(1, len(spaces) + 1))
                tg.start_soon(publisher, i, targets)
    for s in spaces:
        applied = [ar.start // PAGE_SIZE for ar in s.ranges]
        assert applied == [i for i in call_order if i in set(applied)]
        assert s.max_active == 1
    assert stats(bus).spaces_in_flight == 0


async def test_queued_publish_cancelled_while_waiting_for_its_turn():
    bus = InvalidationBus()
    s = GatedSpace("s")
    with anyio.fail_after(DEADLINE):
        first = asyncio.create_task(bus.publish([(s, page_range(1))], OPTS))
        await s.started_event.wait()
        second = asyncio.create_task(bus.publish([(s, page_range(2))], OPTS))
        await asyncio.sleep(0)
        second.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        # Cancelled, but still waiting for its delivery to be applied.
        assert not second.done()
        s.gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
    assert s.ranges == [page_range(1), page_range(2)]
    assert stats(bus).spaces_in_flight == 0


# --- failures -------------------------------------------------------------------


async def test_failing_spaces_do_not_stop_the_others():
    bus = InvalidationBus()
    boom, oops = ValueError("boom"), KeyError("oops")
    bad1 = FailingSpace("bad1", boom)
    good = Space("good")
    bad2 = FailingSpace("bad2", oops, suspend=True)
    also_good = GatedSpace("also_good")
    also_good.gate.set()
    deliveries = [
        (bad1, page_range(0)),
        (good, page_range(1)),
        (bad2, page_range(2)),
        (also_good, page_range(3)),
    ]
    with anyio.fail_after(DEADLINE), pytest.raises(ExceptionGroup) as excinfo:
        await bus.publish(deliveries, OPTS)
    group = excinfo.value
    assert "2 of 4 invalidation deliveries failed" in str(group)
    assert {id(e) for e in group.exceptions} == {id(boom), id(oops)}
    assert any("<Space bad1>" in note for note in boom.__notes__)
    assert any(str(page_range(2)) in note for note in oops.__notes__)
    assert good.ranges == [page_range(1)]
    assert also_good.ranges == [page_range(3)]
    assert stats(bus) == BusStatistics(
        publishes=1, deliveries=4, failures=2, spaces_in_flight=0
    )


async def test_failure_on_one_range_still_applies_the_spaces_other_ranges():
    bus = InvalidationBus()
    space = FailingSpace("s", RuntimeError("bad page"), bad={page_range(1)})
    deliveries = [(space, page_range(i)) for i in range(3)]
    with anyio.fail_after(DEADLINE), pytest.raises(ExceptionGroup) as excinfo:
        await bus.publish(deliveries, OPTS)
    assert len(excinfo.value.exceptions) == 1
    assert space.ranges == [page_range(0), page_range(2)]


async def test_a_failing_space_in_a_helper_task_is_reported():
    bus = InvalidationBus()
    gate = GatedSpace("first")
    bad = FailingSpace("bad", OSError(5, "io"), suspend=True)
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            bus.publish([(gate, page_range(0)), (bad, page_range(0))], OPTS)
        )
        await wait_until(lambda: bool(bad.started))
        gate.gate.set()
        with pytest.raises(ExceptionGroup) as excinfo:
            await task
    assert isinstance(excinfo.value.exceptions[0], OSError)


async def test_space_raising_cancelled_error_itself_is_a_failure():
    bus = InvalidationBus()
    rogue = FailingSpace("rogue", asyncio.CancelledError())
    rogue_in_helper = FailingSpace("helper", asyncio.CancelledError(), suspend=True)
    gated = GatedSpace("gated")
    good = Space("good")
    deliveries = [
        (rogue, page_range(0)),
        (rogue, page_range(1)),
        (gated, page_range(0)),
        (rogue_in_helper, page_range(0)),
        (good, page_range(0)),
    ]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(bus.publish(deliveries, OPTS))
        await wait_until(lambda: bool(good.applied))
        gated.gate.set()
        with pytest.raises(BaseExceptionGroup) as excinfo:
            await task
    assert not isinstance(excinfo.value, ExceptionGroup)
    assert len(excinfo.value.exceptions) == 2
    # The rogue space's second range was dropped with the first.
    assert rogue.started == [page_range(0)]
    assert gated.ranges == [page_range(0)]
    assert good.ranges == [page_range(0)]
    assert stats(bus).spaces_in_flight == 0


class Fatal(BaseException):
    """A non-Exception error that a space raises."""


async def test_space_raising_a_base_exception_is_a_failure():
    bus = InvalidationBus()
    weird = FailingSpace("weird", Fatal())
    weird_in_helper = FailingSpace("weird2", Fatal(), suspend=True)
    good = Space("good")
    gated = GatedSpace("gated")
    deliveries = [
        (weird, page_range(0)),
        (gated, page_range(0)),
        (weird_in_helper, page_range(0)),
        (good, page_range(0)),
    ]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(bus.publish(deliveries, OPTS))
        await wait_until(lambda: bool(good.applied))
        gated.gate.set()
        with pytest.raises(BaseExceptionGroup) as excinfo:
            await task
    assert [type(e) for e in excinfo.value.exceptions] == [Fatal, Fatal]
    assert stats(bus).failures == 2


async def test_keyboard_interrupt_from_a_space_propagates_and_the_rest_completes():
    bus = InvalidationBus()
    interrupting = FailingSpace("interrupting", KeyboardInterrupt())
    others = [Space(str(i)) for i in range(3)]
    with anyio.fail_after(DEADLINE):
        with pytest.raises(KeyboardInterrupt):
            await bus.publish(
                [(interrupting, page_range(0))] + [(s, page_range(0)) for s in others],
                OPTS,
            )
        # The spaces after it were handed to a helper task.
        await wait_until(lambda: stats(bus).spaces_in_flight == 0)
    assert all(s.ranges == [page_range(0)] for s in others)


# --- cancellation ---------------------------------------------------------------


async def test_cancelled_publish_still_completes_every_delivery():
    bus = InvalidationBus()
    gate = asyncio.Event()
    spaces = [GatedSpace(str(i), gate) for i in range(4)]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            bus.publish([(s, page_range(0)) for s in spaces], OPTS)
        )
        await wait_until(lambda: all(s.started for s in spaces))
        task.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        # Cancelling again changes nothing.
        task.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(s.ranges == [page_range(0)] for s in spaces)
    # The delivery running in the cancelled task was interrupted and redone.
    assert spaces[0].started == [page_range(0)] * 2
    assert all(s.started == [page_range(0)] for s in spaces[1:])
    assert stats(bus).spaces_in_flight == 0


async def test_cancelled_single_space_publish_reapplies_the_interrupted_range():
    bus = InvalidationBus()
    space = GatedSpace("only")
    deliveries = [(space, page_range(0)), (space, page_range(5))]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(bus.publish(deliveries, OPTS))
        await space.started_event.wait()
        task.cancel()
        await wait_until(lambda: len(space.started) == 2)
        assert not task.done()
        space.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert space.ranges == [page_range(0), page_range(5)]
    assert space.started == [page_range(0), page_range(0), page_range(5)]
    assert stats(bus).deliveries == 2


async def test_cancelled_publish_hands_unclaimed_spaces_to_a_task():
    bus = InvalidationBus()
    first = GatedSpace("first")
    rest = [Space(str(i)) for i in range(5)]
    deliveries = [(first, page_range(0))] + [(s, page_range(0)) for s in rest]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(bus.publish(deliveries, OPTS))
        await first.started_event.wait()
        task.cancel()
        await asyncio.sleep(0)
        first.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(s.ranges == [page_range(0)] for s in [first, *rest])


async def test_cancel_scope_around_publish_waits_for_the_deliveries():
    bus = InvalidationBus()
    gate = asyncio.Event()
    spaces = [GatedSpace(str(i), gate) for i in range(3)]
    done = False

    async def publisher(scope: anyio.CancelScope) -> None:
        nonlocal done
        with scope:
            await bus.publish([(s, page_range(0)) for s in spaces], OPTS)
            done = True  # pragma: no cover

    with anyio.fail_after(DEADLINE):
        scope = anyio.CancelScope()
        task = asyncio.create_task(publisher(scope))
        await wait_until(lambda: all(s.started for s in spaces))
        scope.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        gate.set()
        await task
    assert scope.cancelled_caught
    assert not done
    assert all(s.ranges == [page_range(0)] for s in spaces)


async def test_asyncio_timeout_around_publish_becomes_timeout_error():
    bus = InvalidationBus()
    gate = asyncio.Event()
    spaces = [GatedSpace(str(i), gate) for i in range(2)]
    loop = asyncio.get_running_loop()

    async def publisher() -> None:
        async with asyncio.timeout(None) as cm:
            loop.call_soon(cm.reschedule, loop.time())
            await bus.publish([(s, page_range(0)) for s in spaces], OPTS)

    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(publisher())
        await wait_until(lambda: all(s.started for s in spaces))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        gate.set()
        with pytest.raises(TimeoutError):
            await task
    assert all(s.ranges == [page_range(0)] for s in spaces)


async def test_cancelled_publish_with_failures_still_raises_cancelled_error():
    bus = InvalidationBus()
    gated = GatedSpace("gated")
    bad = FailingSpace("bad", ValueError("x"), suspend=True)
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            bus.publish([(gated, page_range(0)), (bad, page_range(0))], OPTS)
        )
        await wait_until(lambda: stats(bus).failures == 1)
        task.cancel()
        await asyncio.sleep(0)
        gated.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gated.ranges == [page_range(0)]
    assert stats(bus).failures == 1


async def test_cancellation_while_waiting_for_helper_tasks():
    bus = InvalidationBus()
    first = GatedSpace("first")
    second = GatedSpace("second")
    with anyio.fail_after(DEADLINE):
        # The publishing task drives the first space; a helper the second.
        task = asyncio.create_task(
            bus.publish([(first, page_range(0)), (second, page_range(0))], OPTS)
        )
        await wait_until(lambda: bool(second.started))
        first.gate.set()
        await wait_until(lambda: bool(first.applied))
        await asyncio.sleep(0)
        # Now the publishing task only waits for the helper.
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        assert not task.done()
        second.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert first.started == [page_range(0)]
    assert second.ranges == [page_range(0)]


async def test_cancel_scope_while_waiting_for_helper_tasks():
    bus = InvalidationBus()
    first = GatedSpace("first")
    second = GatedSpace("second")
    scope = anyio.CancelScope()
    done = False

    async def publisher() -> None:
        nonlocal done
        with scope:
            await bus.publish([(first, page_range(0)), (second, page_range(0))], OPTS)
            done = True  # pragma: no cover

    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(publisher())
        await wait_until(lambda: bool(second.started))
        first.gate.set()
        await wait_until(lambda: bool(first.applied))
        await asyncio.sleep(0)
        # The publishing task only waits for the helper; the scope keeps
        # cancelling it until it leaves.
        scope.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        second.gate.set()
        await task
    assert scope.cancelled_caught
    assert not done
    assert second.ranges == [page_range(0)]
    assert stats(bus).spaces_in_flight == 0


async def test_timeout_while_waiting_for_helper_tasks_becomes_timeout_error():
    bus = InvalidationBus()
    first = GatedSpace("first")
    second = GatedSpace("second")
    loop = asyncio.get_running_loop()
    timeouts: list[asyncio.Timeout] = []

    async def publisher() -> None:
        async with asyncio.timeout(None) as cm:
            timeouts.append(cm)
            await bus.publish([(first, page_range(0)), (second, page_range(0))], OPTS)

    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(publisher())
        await wait_until(lambda: bool(second.started))
        first.gate.set()
        await wait_until(lambda: bool(first.applied))
        await asyncio.sleep(0)
        # The publishing task only waits for the helper when the timeout hits.
        timeouts[0].reschedule(loop.time())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        second.gate.set()
        with pytest.raises(TimeoutError):
            await task
    # Neither delivery was interrupted, so neither was started twice.
    assert first.started == [page_range(0)]
    assert second.started == [page_range(0)]
    assert second.ranges == [page_range(0)]


async def test_bus_task_cancelled_from_outside_reports_the_cancellation():
    bus = InvalidationBus()
    first = GatedSpace("first")
    second = GatedSpace("second")
    with anyio.fail_after(DEADLINE):
        before = asyncio.all_tasks()
        task = asyncio.create_task(
            bus.publish([(first, page_range(0)), (second, page_range(0))], OPTS)
        )
        await wait_until(lambda: bool(second.started))
        helpers = asyncio.all_tasks() - before - {task}
        assert len(helpers) == 1
        # Something outside the bus (a loop shutting down, say) cancels it.
        helpers.pop().cancel()
        await asyncio.sleep(0)
        first.gate.set()
        with pytest.raises(BaseExceptionGroup) as excinfo:
            await task
    assert [type(e) for e in excinfo.value.exceptions] == [asyncio.CancelledError]
    assert first.ranges == [page_range(0)]
    assert stats(bus).spaces_in_flight == 0


async def test_queued_bus_task_cancelled_from_outside():
    bus = InvalidationBus()
    s = GatedSpace("s")
    with anyio.fail_after(DEADLINE):
        first = asyncio.create_task(bus.publish([(s, page_range(1))], OPTS))
        await s.started_event.wait()
        before = asyncio.all_tasks()
        second = asyncio.create_task(bus.publish([(s, page_range(2))], OPTS))
        await wait_until(lambda: len(asyncio.all_tasks() - before) == 2)
        queued = asyncio.all_tasks() - before - {second}
        # Cancelled before it ever ran, so its own handlers never run.
        queued.pop().cancel()
        with pytest.raises(BaseExceptionGroup) as excinfo:
            await second
        assert "ended early" in str(excinfo.value.exceptions[0])
        # A later publish still waits for the delivery that is running.
        assert stats(bus).spaces_in_flight == 1
        third = asyncio.create_task(bus.publish([(s, page_range(3))], OPTS))
        for _ in range(10):
            await asyncio.sleep(0)
        assert s.started == [page_range(1)]
        s.gate.set()
        await asyncio.gather(first, third)
    assert s.ranges == [page_range(1), page_range(3)]
    assert stats(bus).spaces_in_flight == 0


async def test_queued_bus_task_cancelled_while_waiting_its_turn():
    bus = InvalidationBus()
    s = GatedSpace("s")
    with anyio.fail_after(DEADLINE):
        first = asyncio.create_task(bus.publish([(s, page_range(1))], OPTS))
        await s.started_event.wait()
        before = asyncio.all_tasks()
        second = asyncio.create_task(bus.publish([(s, page_range(2))], OPTS))
        third = asyncio.create_task(bus.publish([(s, page_range(3))], OPTS))
        await wait_until(lambda: len(asyncio.all_tasks() - before) == 4)
        for _ in range(5):
            await asyncio.sleep(0)
        queued = asyncio.all_tasks() - before - {second, third}
        assert len(queued) == 2

        def delivers(task: asyncio.Task[object]) -> list[AddrRange]:
            frame = task.get_coro().cr_frame
            return frame.f_locals["batch"].jobs[0].ranges

        # Cancel the second delivery's task while it waits for the first.
        victim = next(t for t in queued if delivers(t) == [page_range(2)])
        victim.cancel()
        with pytest.raises(BaseExceptionGroup):
            await second
        for _ in range(10):
            await asyncio.sleep(0)
        # The third delivery still waits for the first.
        assert s.started == [page_range(1)]
        assert not third.done()
        s.gate.set()
        await asyncio.gather(first, third)
    assert s.ranges == [page_range(1), page_range(3)]
    assert stats(bus).spaces_in_flight == 0


async def test_abandoned_publish_coroutine_leaves_no_state():
    bus = InvalidationBus()
    space = GatedSpace("s")
    coro = bus.publish([(space, page_range(0))], OPTS)
    # Step it by hand until it suspends inside the space, then drop it.
    coro.send(None)
    assert stats(bus).spaces_in_flight == 1
    coro.close()
    assert stats(bus).spaces_in_flight == 0
    assert space.active == 0


# --- bad input ------------------------------------------------------------------


class NotASpace:
    invalidate = "not callable"


@pytest.mark.parametrize(
    ("bad", "exc_type", "match"),
    [
        ((page_range(0), page_range(1)), TypeError, r"deliveries\[2\]: the range"),
        (MappableRange(0, PAGE_SIZE), TypeError, r"must be an AddrRange"),
        (AddrRange(PAGE_SIZE, PAGE_SIZE), ValueError, r"\[0x1000, 0x1000\) is empty"),
        (AddrRange(0, 100), AlignmentError, r"not page-aligned"),
        (AddrRange(1, PAGE_SIZE), AlignmentError, r"\[0x1, 0x1000\)"),
    ],
)
async def test_bad_range_rejects_the_whole_publish(bad, exc_type, match):
    bus = InvalidationBus()
    a, b = Space("a"), Space("b")
    deliveries = [(a, page_range(0)), (b, page_range(1)), (a, bad)]
    with pytest.raises(exc_type, match=match):
        await bus.publish(deliveries, OPTS)
    assert a.started == b.started == []
    assert stats(bus) == BusStatistics(
        publishes=0, deliveries=0, failures=0, spaces_in_flight=0
    )


@pytest.mark.parametrize(
    ("deliveries", "match"),
    [
        (5, r"deliveries must be an iterable of \(space, AddrRange\) pairs, got 5"),
        (None, r"got None"),
        ([Space()], r"deliveries\[0\] must be a \(space, AddrRange\) pair"),
        ([(Space(), page_range(0)), (1, 2, 3)], r"deliveries\[1\] must be a"),
        ([(NotASpace(), page_range(0))], r"is not a MappingSpace"),
        ([(object(), page_range(0)), (object(), page_range(1))], r"deliveries\[0\]"),
    ],
)
async def test_malformed_deliveries_are_rejected(deliveries, match):
    bus = InvalidationBus()
    with pytest.raises(TypeError, match=match):
        await bus.publish(deliveries, OPTS)
    assert stats(bus).publishes == 0


@pytest.mark.parametrize("opts", [None, {"invalidate_private": True}, True])
async def test_bad_opts_are_rejected_before_anything_is_delivered(opts):
    bus = InvalidationBus()
    a = Space("a")
    with pytest.raises(TypeError, match=r"opts must be an InvalidateOpts, got"):
        await bus.publish([(a, page_range(0))], opts)
    assert a.started == []
    assert stats(bus).publishes == 0


async def test_publish_while_holding_an_active_lock_is_a_lock_order_error():
    bus = InvalidationBus()
    active = OrderedRWLock(LockRank.ACTIVE, "caller.active")
    translate = OrderedLock(LockRank.TRANSLATE, "caller.data")
    a = Space("a")
    async with active.read():
        with pytest.raises(LockOrderError, match=r"InvalidationBus\.publish"):
            await bus.publish([(a, page_range(0))], OPTS)
    async with translate:
        with pytest.raises(LockOrderError, match=r"'caller\.data'"):
            await bus.publish([(a, page_range(0))], OPTS)
    assert a.started == []
    assert stats(bus).publishes == 0


# --- locks, tasks and contexts --------------------------------------------------


async def test_spaces_taking_their_active_locks_under_a_mappable_lock():
    bus = InvalidationBus()
    mapping_lock = OrderedLock(LockRank.MAPPABLE, "file.mappings")
    spaces = [LockingSpace(f"as{i}") for i in range(6)]
    release_faults = asyncio.Event()
    faults_in = 0

    async def fault(space: LockingSpace) -> None:
        nonlocal faults_in
        async with space.active_lock.read():
            faults_in += 1
            await release_faults.wait()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            # Every other space is busy with a fault, so its invalidate waits.
            for space in spaces[::2]:
                tg.start_soon(fault, space)
            await wait_until(lambda: faults_in == 3)

            async def truncate() -> None:
                async with mapping_lock:
                    await bus.publish(
                        [(s, page_range(0, 4)) for s in spaces],
                        InvalidateOpts(invalidate_private=True),
                    )

            tg.start_soon(truncate)
            await wait_until(lambda: all(s.applied for s in spaces[1::2]))
            assert not any(s.applied for s in spaces[::2])
            release_faults.set()
    assert all(s.ranges == [page_range(0, 4)] for s in spaces)
    assert all(not s.active_lock.locked() for s in spaces)
    assert not mapping_lock.locked()


async def test_spaces_that_do_not_suspend_run_in_the_publishing_task():
    bus = InvalidationBus()
    spaces = [TaskRecordingSpace(str(i)) for i in range(20)]
    with anyio.fail_after(DEADLINE):
        await bus.publish([(s, page_range(0)) for s in spaces], OPTS)
    me = asyncio.current_task()
    assert all(s.tasks == [(me, me)] for s in spaces)


async def test_each_suspending_call_runs_start_to_finish_in_one_task():
    bus = InvalidationBus()
    gate = asyncio.Event()
    spaces = [TaskRecordingSpace(str(i), gate) for i in range(5)]
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            bus.publish([(s, page_range(0)) for s in spaces], OPTS)
        )
        await wait_until(lambda: sum(len(s.started) for s in spaces) == 5)
        gate.set()
        await task
    pairs = [s.tasks[0] for s in spaces]
    assert all(before is after for before, after in pairs)
    # One per suspended call: the publisher's own task and four helpers.
    assert len({before for before, _ in pairs}) == 5
    assert pairs[0][0] is task


VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("VAR", default=None)


async def test_each_space_runs_in_its_own_context():
    bus = InvalidationBus()
    seen: list[str | None] = []

    class Meddling(Space):
        async def work(self, ar: AddrRange) -> None:
            seen.append(VAR.get())
            VAR.set(self.name)
            await asyncio.sleep(0)
            assert VAR.get() == self.name

    spaces = [Meddling(str(i)) for i in range(4)]
    with anyio.fail_after(DEADLINE):
        await bus.publish([(s, page_range(0)) for s in spaces], OPTS)
    assert seen == [None] * 4
    assert VAR.get() is None


async def test_timeouts_inside_a_space_work_in_the_publishing_task():
    bus = InvalidationBus()
    outcomes: list[str] = []

    class Impatient(Space):
        async def work(self, ar: AddrRange) -> None:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(None) as cm:
                    cm.reschedule(loop.time())
                    await asyncio.Event().wait()
            except TimeoutError:
                outcomes.append("asyncio timeout")
            with anyio.CancelScope() as scope:
                loop.call_soon(scope.cancel)
                await asyncio.Event().wait()
            outcomes.append("anyio scope")

    space = Impatient("impatient")
    with anyio.fail_after(DEADLINE):
        await bus.publish([(space, page_range(0))], OPTS)
    assert outcomes == ["asyncio timeout", "anyio scope"]
    assert space.ranges == [page_range(0)]


async def test_publish_with_debug_checks_off():
    set_debug(False)
    try:
        bus = InvalidationBus()
        active = OrderedLock(LockRank.ACTIVE, "caller.active")
        spaces = [Space(str(i)) for i in range(3)]
        with anyio.fail_after(DEADLINE):
            async with active:
                # Unchecked with debug off.
                await bus.publish([(s, page_range(0)) for s in spaces], OPTS)
    finally:
        set_debug(True)
    assert all(s.ranges == [page_range(0)] for s in spaces)


async def test_space_whose_invalidate_returns_a_plain_awaitable():
    bus = InvalidationBus()
    space = FutureSpace()
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(bus.publish([(space, page_range(0))], OPTS))
        await wait_until(lambda: bool(space.futures))
        assert not task.done()
        space.futures[0].set_result(None)
        await task
    assert stats(bus).deliveries == 1


# --- cost ---------------------------------------------------------------------------


async def test_cost_is_independent_of_spaces_the_bus_has_seen():
    bus = InvalidationBus()
    crowd = [CountingSpace() for _ in range(10_000)]
    bystanders = [CountingSpace() for _ in range(10_000)]
    with anyio.fail_after(DEADLINE):
        await bus.publish([(s, page_range(0)) for s in crowd], OPTS)
        assert stats(bus).spaces_in_flight == 0
        before = stats(bus)

        gate = asyncio.Event()
        targets = [GatedSpace(str(i), gate) for i in range(3)]
        task = asyncio.create_task(
            bus.publish([(s, page_range(0)) for s in targets], OPTS)
        )
        await wait_until(lambda: all(s.started for s in targets))
        # Per-space state exists for the three targets only.
        assert stats(bus).spaces_in_flight == 3
        assert len(bus._tails) == 3
        gate.set()
        await task
    after = stats(bus)
    assert after.deliveries - before.deliveries == 3
    assert after.publishes - before.publishes == 1
    assert after.spaces_in_flight == 0
    assert sum(s.calls for s in crowd) == 10_000
    assert sum(s.calls for s in bystanders) == 0
    assert all(len(s.started) == 1 for s in targets)


async def test_fan_out_to_ten_thousand_spaces_counts():
    bus = InvalidationBus()
    spaces = [CountingSpace() for _ in range(10_000)]
    deliveries = [(s, page_range(0)) for s in spaces]
    with anyio.fail_after(DEADLINE):
        for _ in range(3):
            await bus.publish(deliveries, OPTS)
    assert all(s.calls == 3 for s in spaces)
    assert stats(bus) == BusStatistics(
        publishes=3, deliveries=30_000, failures=0, spaces_in_flight=0
    )


# --- odds and ends ------------------------------------------------------------------


async def test_default_bus_is_one_bus_per_loop():
    assert default_bus() is default_bus()
    assert isinstance(default_bus(), InvalidationBus)


def test_default_bus_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="no running event loop"):
        default_bus()


def test_statistics_are_frozen():
    s = InvalidationBus().statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.publishes = 3  # type: ignore[misc]


def test_repr_shows_the_counters():
    assert repr(InvalidationBus()) == "<InvalidationBus publishes=0 spaces_in_flight=0>"
