"""Tests of the ordered locks and the debug lock-order checker."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import TypeVar

import anyio
import pytest

from aiomemmap import (
    AiomemmapError,
    LockOrderError,
    LockRank,
    OrderedLock,
    OrderedRWLock,
    set_debug,
)
from aiomemmap._core.locks import check_may_take, detached_context, held_locks

DEADLINE = 10
T = TypeVar("T")


@pytest.fixture
def debug_off() -> Iterator[None]:
    set_debug(False)
    try:
        yield
    finally:
        set_debug(True)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let other tasks run until ``predicate`` holds (the caller sets a deadline)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(0)


def spawn(coro: Coroutine[object, object, T]) -> asyncio.Task[T]:
    """Start a task that does not inherit the locks the caller holds.

    The tests below hold a lock and start tasks that queue for it; the caller
    never waits for them while holding it, so they are detached.
    """
    return asyncio.create_task(coro, context=detached_context())


def waiters(lock: OrderedLock | OrderedRWLock) -> int:
    if isinstance(lock, OrderedLock):
        return len(lock._waiters)
    return len(lock._read_waiters) + len(lock._write_waiters)


# --- construction ---------------------------------------------------------


def test_lock_rank_order_is_outermost_first():
    assert list(LockRank) == [
        LockRank.MAPPING,
        LockRank.MAPPABLE,
        LockRank.ACTIVE,
        LockRank.TRANSLATE,
    ]
    assert [int(r) for r in LockRank] == [10, 20, 30, 40]


@pytest.mark.parametrize("cls", [OrderedLock, OrderedRWLock])
def test_lock_constructor_rejects_bad_rank(cls):
    with pytest.raises(TypeError, match=r"rank must be a LockRank, got 30"):
        cls(30, "x")
    with pytest.raises(TypeError, match=r"rank must be a LockRank, got 'ACTIVE'"):
        cls("ACTIVE", "x")


@pytest.mark.parametrize("cls", [OrderedLock, OrderedRWLock])
def test_lock_constructor_rejects_bad_name(cls):
    with pytest.raises(TypeError, match=r"name must be a str, got None"):
        cls(LockRank.ACTIVE, None)
    with pytest.raises(ValueError, match=r"name must be a non-empty str, got ''"):
        cls(LockRank.ACTIVE, "")


@pytest.mark.parametrize("cls", [OrderedLock, OrderedRWLock])
def test_lock_properties_and_repr(cls):
    lock = cls(LockRank.MAPPABLE, "SharedMemory.mappings")
    assert lock.rank is LockRank.MAPPABLE
    assert lock.name == "SharedMemory.mappings"
    assert "SharedMemory.mappings" in repr(lock)
    assert "unlocked" in repr(lock)
    assert not lock.locked()


@pytest.mark.parametrize("cls", [OrderedLock, OrderedRWLock])
def test_owned_by_current_task_outside_a_loop_is_false(cls):
    assert not cls(LockRank.ACTIVE, "x").owned_by_current_task()


@pytest.mark.parametrize("cls", [OrderedLock, OrderedRWLock])
def test_write_owned_by_current_task_outside_a_loop_is_false(cls):
    lock = cls(LockRank.ACTIVE, "x")
    if isinstance(lock, OrderedRWLock):
        assert not lock.write_owned_by_current_task()


def test_owner_is_the_task_of_the_callers_own_loop_after_a_loop_changes_thread():
    # A loop first run in this thread, then run by another thread and held in
    # the middle of a task step there, while this thread runs a second loop:
    # a lock taken here must belong to this thread's task, not to the task
    # the first loop is stepping.
    lock = OrderedLock(LockRank.ACTIVE, "a")
    first = asyncio.new_event_loop()
    stepping = threading.Event()
    resume = threading.Event()

    async def touch() -> None:
        async with lock:
            pass

    async def hold_a_step() -> None:
        stepping.set()
        resume.wait(DEADLINE)

    first.run_until_complete(touch())
    other = threading.Thread(target=first.run_until_complete, args=(hold_a_step(),))
    other.start()
    try:
        assert stepping.wait(DEADLINE)

        async def take() -> tuple[object, object]:
            async with lock:
                return lock._owner, asyncio.current_task()

        owner, me = asyncio.run(take())
    finally:
        resume.set()
        other.join(DEADLINE)
        first.close()
    assert owner is me
    assert not lock.locked()


def test_lock_order_error_is_a_runtime_error():
    assert issubclass(LockOrderError, RuntimeError)
    assert issubclass(LockOrderError, AiomemmapError)


# --- OrderedLock basics ---------------------------------------------------


async def test_ordered_lock_acquire_release():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    await lock.acquire()
    assert lock.locked()
    assert lock.owned_by_current_task()
    assert "locked by" in repr(lock)
    lock.release()
    assert not lock.locked()
    assert not lock.owned_by_current_task()
    async with lock:
        assert lock.owned_by_current_task()
    assert not lock.locked()


async def test_ordered_lock_reentry_raises_instead_of_deadlocking():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        async with lock:
            with pytest.raises(LockOrderError, match="already holds 'a'"):
                await lock.acquire()
            with pytest.raises(LockOrderError, match="not reentrant"):
                await lock.acquire(nested=True)
            assert lock.owned_by_current_task()
        assert not lock.locked()


@pytest.mark.usefixtures("debug_off")
async def test_ordered_lock_reentry_raises_with_debug_off():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        async with lock:
            with pytest.raises(LockOrderError):
                await lock.acquire()


async def test_ordered_lock_release_when_unlocked_raises():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with pytest.raises(RuntimeError, match="it is not locked"):
        lock.release()


async def test_ordered_lock_release_by_non_owner_raises():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        await lock.acquire()

        async def intruder() -> None:
            lock.release()

        with pytest.raises(RuntimeError, match="not the current task"):
            await asyncio.create_task(intruder())
        assert lock.owned_by_current_task()
        lock.release()


async def test_ordered_lock_serves_waiters_first_in_first_out():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    order: list[int] = []

    async def worker(i: int) -> None:
        async with lock:
            order.append(i)
            await asyncio.sleep(0)

    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        tasks = []
        for i in range(5):
            tasks.append(spawn(worker(i)))
            await wait_until(lambda n=i + 1: waiters(lock) == n)
        lock.release()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_ordered_lock_newcomer_cannot_overtake_a_woken_waiter():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    order: list[str] = []

    async def take(name: str) -> None:
        async with lock:
            order.append(name)

    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        waiter = spawn(take("waiter"))
        await wait_until(lambda: waiters(lock) == 1)
        lock.release()
        # The lock now belongs to the waiter, although it has not run yet.
        assert lock.locked()
        newcomer = spawn(take("newcomer"))
        await asyncio.gather(waiter, newcomer)
    assert order == ["waiter", "newcomer"]


async def test_acquire_outside_a_task_is_rejected():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    loop = asyncio.get_running_loop()
    for coro_fn in (
        lock.acquire,
        rw.acquire_read,
        rw.acquire_write,
    ):
        coro = coro_fn()
        # Step the coroutine from a plain callback, where no task is current.
        fut: asyncio.Future[BaseException] = loop.create_future()

        def step(c=coro, f=fut) -> None:
            try:
                c.send(None)
            except BaseException as err:
                f.set_result(err)

        loop.call_soon(step)
        exc = await fut
        assert isinstance(exc, RuntimeError)
        assert "inside" in str(exc)
    assert not lock.locked()
    assert not rw.locked()


# --- lock order checking ---------------------------------------------------


async def test_rank_inversion_raises_naming_both_locks():
    mapping = OrderedLock(LockRank.MAPPING, "AddressSpace.mapping")
    active = OrderedRWLock(LockRank.ACTIVE, "AddressSpace.active")
    async with active.write():
        with pytest.raises(LockOrderError) as excinfo:
            await mapping.acquire()
        message = str(excinfo.value)
        assert "'AddressSpace.mapping' (rank MAPPING=10)" in message
        assert "'AddressSpace.active' (rank ACTIVE=30)" in message
        assert not mapping.locked()
    # Nothing was left behind: the right order works.
    async with mapping, active.write():
        pass


@pytest.mark.parametrize("mode", ["lock", "read", "write"])
async def test_rank_inversion_raises_for_each_acquisition_kind(mode):
    translate = OrderedLock(LockRank.TRANSLATE, "CachedFile.data")
    target = (
        OrderedLock(LockRank.MAPPABLE, "m")
        if mode == "lock"
        else OrderedRWLock(LockRank.MAPPABLE, "m")
    )
    acquire = {
        "lock": getattr(target, "acquire", None),
        "read": getattr(target, "acquire_read", None),
        "write": getattr(target, "acquire_write", None),
    }[mode]
    async with translate:
        with pytest.raises(LockOrderError, match="rank MAPPABLE=20"):
            await acquire()
    assert not target.locked()
    assert held_locks() == ()


async def test_same_rank_needs_a_nested_acquisition():
    parent = OrderedRWLock(LockRank.ACTIVE, "parent.active")
    child = OrderedRWLock(LockRank.ACTIVE, "child.active")
    third = OrderedLock(LockRank.ACTIVE, "third.active")
    async with parent.write():
        with pytest.raises(LockOrderError, match="needs nested=True"):
            await child.acquire_write()
        async with child.write(nested=True):
            assert held_locks() == (parent, child)
            # Exactly one extra lock of the innermost rank is allowed.
            with pytest.raises(LockOrderError, match="only one extra lock"):
                await third.acquire(nested=True)
            # Lower ranks are still fine under the pair.
            async with OrderedLock(LockRank.TRANSLATE, "data"):
                pass
        async with child.read(nested=True):
            pass
        async with third.nested():
            assert third.owned_by_current_task()
    assert held_locks() == ()


async def test_nested_acquisition_below_the_innermost_rank_is_still_an_error():
    active = OrderedLock(LockRank.ACTIVE, "active")
    mappable = OrderedLock(LockRank.MAPPABLE, "mappable")
    async with active:
        with pytest.raises(LockOrderError):
            await mappable.acquire(nested=True)


async def test_nested_flag_on_an_ordinary_acquisition_is_accepted():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedLock(LockRank.ACTIVE, "active")
    async with mapping, active.nested():
        assert held_locks() == (mapping, active)


async def test_full_lock_order_has_no_false_positives():
    mapping = OrderedRWLock(LockRank.MAPPING, "mapping")
    mappable = OrderedLock(LockRank.MAPPABLE, "mappable")
    active = OrderedRWLock(LockRank.ACTIVE, "active")
    translate = OrderedLock(LockRank.TRANSLATE, "translate")
    for _ in range(3):
        async with mapping.write(), mappable, active.read(), translate:
            assert held_locks() == (mapping, mappable, active, translate)
        async with mapping.read(), active.write():
            active.downgrade()
            async with translate:
                pass
        # Skipping ranks is fine.
        async with mapping.read(), translate:
            pass
        async with mappable:
            pass
        async with translate:
            pass
    assert held_locks() == ()


async def test_releasing_an_outer_lock_first_keeps_the_inner_one_checked():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    mappable = OrderedLock(LockRank.MAPPABLE, "mappable")
    active = OrderedLock(LockRank.ACTIVE, "active")
    translate = OrderedLock(LockRank.TRANSLATE, "translate")
    await mapping.acquire()
    await active.acquire()
    mapping.release()
    assert held_locks() == (active,)
    with pytest.raises(LockOrderError):
        await mappable.acquire()
    async with translate:
        pass
    active.release()
    async with mappable:
        pass


@pytest.mark.usefixtures("debug_off")
async def test_no_order_tracking_with_debug_off():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedRWLock(LockRank.ACTIVE, "active")
    with anyio.fail_after(DEADLINE):
        async with active.write(), mapping:
            assert held_locks() == ()
        async with active.read(), mapping:
            pass
        check_may_take(LockRank.MAPPING, "anything")


async def test_debug_switched_on_while_a_lock_is_held():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedLock(LockRank.ACTIVE, "active")
    set_debug(False)
    await active.acquire()
    set_debug(True)
    # The lock taken with debug off is unknown to the checker, so no error.
    async with mapping:
        pass
    active.release()
    assert held_locks() == ()


async def test_debug_switched_off_while_a_lock_is_held_leaves_no_stale_entry():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedLock(LockRank.ACTIVE, "active")
    await active.acquire()
    set_debug(False)
    active.release()
    set_debug(True)
    # The entry recorded for `active` is stale: it no longer counts.
    assert held_locks() == ()
    async with mapping, active:
        assert held_locks() == (mapping, active)


async def test_child_task_inherits_the_parents_held_locks():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedLock(LockRank.ACTIVE, "active")
    translate = OrderedLock(LockRank.TRANSLATE, "translate")

    async def child_takes(lock: OrderedLock) -> None:
        async with lock:
            pass

    with anyio.fail_after(DEADLINE):
        async with active:
            with pytest.raises(LockOrderError, match="which created this task"):
                await asyncio.create_task(child_takes(mapping))
            # The parent's own lock: an order violation, not re-entry.
            with pytest.raises(LockOrderError, match="strictly increasing"):
                await asyncio.create_task(child_takes(active))
            await asyncio.create_task(child_takes(translate))

            async def child_cannot_release() -> None:
                assert held_locks() == (active,)
                with pytest.raises(RuntimeError):
                    active.release()

            await asyncio.create_task(child_cannot_release())
        assert not mapping.locked()


async def test_child_task_is_not_bound_by_locks_its_parent_released():
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    active = OrderedLock(LockRank.ACTIVE, "active")
    go = asyncio.Event()

    async def long_lived() -> None:
        await go.wait()
        assert held_locks() == ()
        async with mapping:
            pass

    with anyio.fail_after(DEADLINE):
        async with active:
            task = asyncio.create_task(long_lived())
            await asyncio.sleep(0)
        go.set()
        await task


async def test_check_may_take():
    mappable = OrderedLock(LockRank.MAPPABLE, "mappable")
    active = OrderedRWLock(LockRank.ACTIVE, "active")
    check_may_take(LockRank.MAPPING, "anything")
    async with mappable:
        check_may_take(LockRank.ACTIVE, "the bus")
        with pytest.raises(LockOrderError, match=r"the bus takes locks of rank"):
            check_may_take(LockRank.MAPPABLE, "the bus")
        async with active.read():
            with pytest.raises(LockOrderError, match="'active' \\(rank ACTIVE=30\\)"):
                check_may_take(LockRank.ACTIVE, "the bus")
    with pytest.raises(TypeError, match="rank must be a LockRank"):
        check_may_take(30, "x")


async def test_failed_order_check_leaves_the_waiters_alone():
    active = OrderedLock(LockRank.ACTIVE, "active")
    mapping = OrderedLock(LockRank.MAPPING, "mapping")
    with anyio.fail_after(DEADLINE):

        async def holder(ready: asyncio.Event, done: asyncio.Event) -> None:
            async with mapping:
                ready.set()
                await done.wait()

        ready, done = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(holder(ready, done))
        await ready.wait()
        async with active:
            # Raised before waiting, although the lock is busy.
            with pytest.raises(LockOrderError):
                await mapping.acquire()
        assert waiters(mapping) == 0
        done.set()
        await task
        assert not mapping.locked()


# --- cancellation -----------------------------------------------------------


async def test_mutex_cancel_while_waiting_leaves_state_consistent():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        waiter = spawn(lock.acquire())
        await wait_until(lambda: waiters(lock) == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiters(lock) == 0
        assert lock.owned_by_current_task()
        lock.release()
        assert not lock.locked()
        # No lost wakeup and no phantom owner: the lock is immediately free.
        async with lock:
            pass


async def test_mutex_cancel_after_handover_passes_the_lock_on():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    got: list[str] = []

    async def take(name: str) -> None:
        async with lock:
            got.append(name)

    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        first = spawn(take("first"))
        await wait_until(lambda: waiters(lock) == 1)
        second = spawn(take("second"))
        await wait_until(lambda: waiters(lock) == 2)
        lock.release()
        # `first` owns the lock now but has not run; cancel it right away.
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert got == ["second"]
        assert not lock.locked()
        assert waiters(lock) == 0


async def test_mutex_cancel_after_handover_with_no_one_waiting_frees_the_lock():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        waiter = spawn(lock.acquire())
        await wait_until(lambda: waiters(lock) == 1)
        lock.release()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not lock.locked()
        async with lock:
            pass


async def test_cancel_one_of_many_waiters_keeps_the_order_of_the_rest():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    order: list[int] = []

    async def take(i: int) -> None:
        async with lock:
            order.append(i)

    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        tasks = []
        for i in range(4):
            tasks.append(spawn(take(i)))
            await wait_until(lambda n=i + 1: waiters(lock) == n)
        tasks[1].cancel()
        await asyncio.sleep(0)
        lock.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert order == [0, 2, 3]
    assert not lock.locked()


async def test_read_waiter_cancelled_while_a_writer_holds():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        reader = spawn(rw.acquire_read())
        await wait_until(lambda: waiters(rw) == 1)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert waiters(rw) == 0
        rw.release_write()
        assert not rw.locked()
        async with rw.write():
            pass


async def test_read_waiter_cancelled_after_admission_lets_the_writer_in():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    writer_in = asyncio.Event()

    async def writer() -> None:
        async with rw.write():
            writer_in.set()

    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        reader = spawn(rw.acquire_read())
        await wait_until(lambda: waiters(rw) == 1)
        w = spawn(writer())
        await wait_until(lambda: waiters(rw) == 2)
        rw.release_write()
        # The reader was admitted (readers queued in a write phase go first).
        assert rw.reader_count() == 1
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await writer_in.wait()
        await w
        assert not rw.locked()


async def test_read_waiter_cancelled_after_admission_alongside_other_readers():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        r1 = spawn(rw.acquire_read())
        r2 = spawn(rw.acquire_read())
        await wait_until(lambda: waiters(rw) == 2)
        rw.release_write()
        assert rw.reader_count() == 2
        r1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r1
        await r2
        assert rw.reader_count() == 1


async def test_write_waiter_cancelled_admits_the_readers_queued_behind_it():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    reader_in = asyncio.Event()

    async def reader() -> None:
        async with rw.read():
            reader_in.set()

    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 1)
        late_reader = spawn(reader())
        await wait_until(lambda: waiters(rw) == 2)
        assert not reader_in.is_set()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await reader_in.wait()
        await late_reader
        rw.release_read()
        assert not rw.locked()
        assert waiters(rw) == 0


async def test_write_waiter_cancelled_after_handover_passes_the_lock_on():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    got: list[str] = []

    async def write(name: str) -> None:
        async with rw.write():
            got.append(name)

    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        first = spawn(write("first"))
        await wait_until(lambda: waiters(rw) == 1)
        second = spawn(write("second"))
        await wait_until(lambda: waiters(rw) == 2)
        rw.release_read()
        assert rw.write_locked()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert got == ["second"]
        assert not rw.locked()


async def test_write_waiter_cancelled_after_handover_with_no_one_waiting():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 1)
        rw.release_read()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        assert not rw.locked()
        async with rw.write():
            pass


async def test_write_waiter_cancelled_while_a_writer_holds():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 1)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        assert rw.write_owned_by_current_task()
        assert waiters(rw) == 0
        rw.release_write()
        assert not rw.locked()


async def test_mutex_release_skips_waiters_cancelled_in_the_same_step():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    with anyio.fail_after(DEADLINE):
        await lock.acquire()
        doomed = spawn(lock.acquire())
        await wait_until(lambda: waiters(lock) == 1)
        survivor = spawn(lock.acquire())
        await wait_until(lambda: waiters(lock) == 2)
        # The cancelled waiter has not run its cleanup when the lock is freed.
        doomed.cancel()
        lock.release()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await survivor
        assert lock.locked()
        assert not lock.owned_by_current_task()
        assert waiters(lock) == 0


async def test_rw_release_skips_waiters_cancelled_in_the_same_step():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        doomed_writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 1)
        doomed_reader = spawn(rw.acquire_read())
        reader = spawn(rw.acquire_read())
        await wait_until(lambda: waiters(rw) == 3)
        writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 4)
        doomed_writer.cancel()
        doomed_reader.cancel()
        rw.release_write()
        # Only the live reader got in; the live writer waits for it.
        assert rw.reader_count() == 1
        results = await asyncio.gather(
            doomed_writer, doomed_reader, reader, return_exceptions=True
        )
        assert [type(r) for r in results[:2]] == [asyncio.CancelledError] * 2
        assert results[2] is None
        assert not writer.done()


async def test_rw_last_reader_release_skips_a_cancelled_writer():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        doomed = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 1)
        writer = spawn(rw.acquire_write())
        await wait_until(lambda: waiters(rw) == 2)
        doomed.cancel()
        rw.release_read()
        assert rw.write_locked()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await writer
        assert waiters(rw) == 0


async def test_cancelled_waiter_leaves_no_held_entry():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    mapping = OrderedLock(LockRank.MAPPING, "mapping")

    async def try_take() -> None:
        try:
            await lock.acquire()
        finally:
            assert held_locks() == ()
        raise AssertionError("unreachable")  # pragma: no cover

    with anyio.fail_after(DEADLINE):
        async with lock:
            task = spawn(try_take())
            await wait_until(lambda: waiters(lock) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # The current task's own bookkeeping is clean as well.
        async with mapping:
            pass


async def test_fail_after_while_waiting_for_a_lock():
    lock = OrderedLock(LockRank.ACTIVE, "a")
    rw = OrderedRWLock(LockRank.MAPPING, "rw")
    with anyio.fail_after(DEADLINE):
        async with rw.write(), lock:

            async def impatient() -> str:
                with anyio.move_on_after(0.01):
                    await lock.acquire()
                    return "acquired"  # pragma: no cover
                with anyio.move_on_after(0.01):
                    await rw.acquire_read()
                    return "acquired"  # pragma: no cover
                return "gave up"

            assert await spawn(impatient()) == "gave up"
            assert waiters(lock) == 0
            assert waiters(rw) == 0
        assert not lock.locked()
        assert not rw.locked()


# --- OrderedRWLock ----------------------------------------------------------


async def test_rw_readers_share_and_writers_exclude():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    inside = 0
    peak_readers = 0
    writer_overlap = False
    all_in = asyncio.Event()

    async def reader() -> None:
        nonlocal inside, peak_readers
        async with rw.read():
            inside += 1
            peak_readers = max(peak_readers, inside)
            if inside == 3:
                all_in.set()
            await all_in.wait()
            inside -= 1

    async def writer() -> None:
        nonlocal writer_overlap
        async with rw.write():
            writer_overlap = writer_overlap or inside != 0 or rw.reader_count() != 0

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reader)
            tg.start_soon(writer)
    assert peak_readers == 3
    assert not writer_overlap
    assert not rw.locked()


async def test_rw_state_queries():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    async with rw.read():
        assert rw.locked()
        assert not rw.write_locked()
        assert rw.owned_by_current_task()
        assert not rw.write_owned_by_current_task()
        assert rw.reader_count() == 1
        assert "read-locked by 1 task(s)" in repr(rw)
    async with rw.write():
        assert rw.write_locked()
        assert rw.write_owned_by_current_task()
        assert "write-locked by" in repr(rw)
    assert not rw.owned_by_current_task()


async def test_rw_writer_preference_blocks_new_readers():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    events: list[str] = []

    async def writer() -> None:
        async with rw.write():
            events.append("writer")

    async def late_reader() -> None:
        async with rw.read():
            events.append("late reader")

    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        w = spawn(writer())
        await wait_until(lambda: waiters(rw) == 1)
        r = spawn(late_reader())
        await wait_until(lambda: waiters(rw) == 2)
        # The late reader waits behind the writer although only readers hold.
        assert rw.reader_count() == 1
        rw.release_read()
        await asyncio.gather(w, r)
    assert events == ["writer", "late reader"]


async def test_rw_readers_queued_in_a_write_phase_go_before_the_next_writer():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    events: list[str] = []

    async def reader(name: str) -> None:
        async with rw.read():
            events.append(name)
            await asyncio.sleep(0)

    async def writer(name: str) -> None:
        async with rw.write():
            events.append(name)

    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        tasks = [spawn(reader("r1"))]
        await wait_until(lambda: waiters(rw) == 1)
        tasks.append(spawn(writer("w2")))
        await wait_until(lambda: waiters(rw) == 2)
        tasks.append(spawn(reader("r3")))
        await wait_until(lambda: waiters(rw) == 3)
        rw.release_write()
        # Both queued readers are in at once; the writer waits for them.
        assert rw.reader_count() == 2
        await asyncio.gather(*tasks)
    assert events[2] == "w2"
    assert sorted(events[:2]) == ["r1", "r3"]


async def test_rw_writers_are_served_in_order():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    order: list[int] = []

    async def writer(i: int) -> None:
        async with rw.write():
            order.append(i)

    with anyio.fail_after(DEADLINE):
        await rw.acquire_write()
        tasks = []
        for i in range(4):
            tasks.append(spawn(writer(i)))
            await wait_until(lambda n=i + 1: waiters(rw) == n)
        rw.release_write()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_rw_continuous_readers_cannot_starve_a_writer():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    writer_done = asyncio.Event()
    reads_after_writer_queued = 0
    writer_queued = False

    async def reader_stream() -> None:
        nonlocal reads_after_writer_queued
        while not writer_done.is_set():
            async with rw.read():
                if writer_queued:
                    reads_after_writer_queued += 1
                await asyncio.sleep(0)

    async def writer() -> None:
        nonlocal writer_queued
        writer_queued = True
        async with rw.write():
            writer_done.set()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(reader_stream)
            await wait_until(lambda: rw.reader_count() > 0)
            tg.start_soon(writer)
    assert writer_done.is_set()
    # Only readers already inside finished; none got in after the writer queued.
    assert reads_after_writer_queued <= 4


async def test_rw_downgrade_admits_readers_but_not_writers():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    events: list[str] = []
    reader_in = asyncio.Event()

    async def reader() -> None:
        async with rw.read():
            events.append("reader")
            reader_in.set()

    async def writer() -> None:
        async with rw.write():
            events.append("writer")

    with anyio.fail_after(DEADLINE):
        async with rw.write():
            r = spawn(reader())
            await wait_until(lambda: waiters(rw) == 1)
            w = spawn(writer())
            await wait_until(lambda: waiters(rw) == 2)
            rw.downgrade()
            assert not rw.write_locked()
            assert rw.owned_by_current_task()
            assert rw.reader_count() == 2
            await reader_in.wait()
            # The writer still waits, for this task's read hold.
            for _ in range(5):
                await asyncio.sleep(0)
            assert events == ["reader"]
            assert waiters(rw) == 1
        # Leaving the block released the read hold.
        await asyncio.gather(r, w)
    assert events == ["reader", "writer"]
    assert not rw.locked()


async def test_rw_downgrade_with_nobody_waiting():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    await rw.acquire_write()
    rw.downgrade()
    assert rw.reader_count() == 1
    rw.release_read()
    assert not rw.locked()


async def test_rw_downgrade_without_write_hold_raises():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with pytest.raises(RuntimeError, match="cannot downgrade"):
        rw.downgrade()
    async with rw.read():
        with pytest.raises(RuntimeError, match="cannot downgrade"):
            rw.downgrade()


async def test_rw_reentry_raises_in_every_combination():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        async with rw.read():
            with pytest.raises(LockOrderError, match="for reading"):
                await rw.acquire_read()
            with pytest.raises(LockOrderError, match="for reading"):
                await rw.acquire_write()
        async with rw.write():
            with pytest.raises(LockOrderError, match="for writing"):
                await rw.acquire_read()
            with pytest.raises(LockOrderError, match="for writing"):
                await rw.acquire_write(nested=True)
        assert not rw.locked()


@pytest.mark.usefixtures("debug_off")
async def test_rw_reentry_raises_with_debug_off():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        async with rw.read():
            with pytest.raises(LockOrderError):
                await rw.acquire_read()
        async with rw.write():
            with pytest.raises(LockOrderError):
                await rw.acquire_write()


async def test_rw_release_without_holding_raises():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with pytest.raises(RuntimeError, match="for reading"):
        rw.release_read()
    with pytest.raises(RuntimeError, match="for writing"):
        rw.release_write()
    async with rw.read():
        with pytest.raises(RuntimeError, match="for writing"):
            rw.release_write()
    async with rw.write():
        with pytest.raises(RuntimeError, match="for reading"):
            rw.release_read()


async def test_rw_release_by_another_task_raises():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")

    async def intruder_read() -> None:
        rw.release_read()

    async def intruder_write() -> None:
        rw.release_write()

    with anyio.fail_after(DEADLINE):
        async with rw.read():
            with pytest.raises(RuntimeError):
                await asyncio.create_task(intruder_read())
            assert rw.owned_by_current_task()
        async with rw.write():
            with pytest.raises(RuntimeError):
                await asyncio.create_task(intruder_write())
            assert rw.write_owned_by_current_task()


async def test_rw_write_block_released_by_hand_reports_the_misuse():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with pytest.raises(RuntimeError, match="for reading"):
        async with rw.write():
            rw.release_write()
    assert not rw.locked()


@pytest.mark.usefixtures("debug_off")
async def test_rw_fast_paths_with_debug_off():
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    with anyio.fail_after(DEADLINE):
        await rw.acquire_read()
        rw.release_read()
        await rw.acquire_write()
        rw.downgrade()
        rw.release_read()
        async with rw.read():
            pass
        async with rw.write():
            pass
        assert not rw.locked()


# --- stress -------------------------------------------------------------------


@pytest.mark.parametrize("debug", [True, False])
async def test_stress_random_tasks_in_rank_order(debug):
    set_debug(debug)
    rng = random.Random(1234)
    mapping = [OrderedRWLock(LockRank.MAPPING, f"mapping{i}") for i in range(2)]
    mappable = [OrderedLock(LockRank.MAPPABLE, f"mappable{i}") for i in range(2)]
    active = [OrderedRWLock(LockRank.ACTIVE, f"active{i}") for i in range(2)]
    translate = [OrderedLock(LockRank.TRANSLATE, f"translate{i}") for i in range(2)]
    writers_inside = [0, 0]
    readers_inside = [0, 0]
    completed = 0

    async def worker(seed: int) -> None:
        nonlocal completed
        r = random.Random(seed)
        for _ in range(30):
            i = r.randrange(2)
            j = r.randrange(2)
            async with mapping[i].read() if r.random() < 0.7 else mapping[i].write():
                if r.random() < 0.5:
                    async with mappable[j]:
                        await asyncio.sleep(0)
                if r.random() < 0.5:
                    async with active[j].write():
                        assert readers_inside[j] == 0
                        writers_inside[j] += 1
                        assert writers_inside[j] == 1
                        await asyncio.sleep(0)
                        writers_inside[j] -= 1
                        if r.random() < 0.5:
                            active[j].downgrade()
                            await asyncio.sleep(0)
                else:
                    async with active[j].read():
                        assert writers_inside[j] == 0
                        readers_inside[j] += 1
                        async with translate[r.randrange(2)]:
                            await asyncio.sleep(0)
                        readers_inside[j] -= 1
        completed += 1

    try:
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(worker, rng.randrange(1 << 30))
    finally:
        set_debug(True)
    assert completed == 12
    for lock in (*mapping, *mappable, *active, *translate):
        assert not lock.locked()
        assert waiters(lock) == 0


async def test_stress_random_cancellations_leave_locks_usable():
    rng = random.Random(99)
    lock = OrderedLock(LockRank.MAPPABLE, "m")
    rw = OrderedRWLock(LockRank.ACTIVE, "rw")
    inside_writer = 0

    async def worker(r: random.Random) -> None:
        nonlocal inside_writer
        for _ in range(20):
            async with lock:
                await asyncio.sleep(0)
            if r.random() < 0.5:
                async with rw.write():
                    inside_writer += 1
                    assert inside_writer == 1
                    await asyncio.sleep(0)
                    inside_writer -= 1
            else:
                async with rw.read():
                    assert inside_writer == 0
                    await asyncio.sleep(0)

    with anyio.fail_after(DEADLINE):
        tasks = [
            asyncio.create_task(worker(random.Random(rng.randrange(1 << 30))))
            for _ in range(16)
        ]
        for _ in range(40):
            await asyncio.sleep(0)
            victim = tasks[rng.randrange(len(tasks))]
            victim.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not lock.locked()
    assert not rw.locked()
    assert waiters(lock) == 0
    assert waiters(rw) == 0
    async with lock, rw.write():
        pass
