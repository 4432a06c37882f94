"""Tests of what event loop, and so what thread, an invalidation bus belongs to."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import TypeVar

import pytest
import uvloop

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddrRange,
    AiomemmapError,
    InvalidateOpts,
    InvalidationBus,
    MappableRange,
    MappingSet,
    MemoryFile,
    MMapOpts,
    SharedMemory,
    WrongLoopError,
)
from aiomemmap.memmap.bus import default_bus

DEADLINE = 10
OPTS = InvalidateOpts()
T = TypeVar("T")

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the event loops a test creates itself (it runs each kind)."""
    return LOOP_FACTORIES[request.param]


class Space:
    """A mapping space that records the ranges it was asked to invalidate."""

    def __init__(self) -> None:
        self.ranges: list[AddrRange] = []

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        await asyncio.sleep(0)
        self.ranges.append(ar)


def page(n: int) -> AddrRange:
    return AddrRange(n * PAGE_SIZE, (n + 1) * PAGE_SIZE)


def run(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    coro: Coroutine[object, object, T],
) -> T:
    """Run ``coro`` to its end on a new loop made by ``new_loop``."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


def in_thread(target: Callable[[], T], name: str) -> T:
    """Call ``target`` in a new thread named ``name``; return or raise its outcome."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return outcome[0]


# --- the error ----------------------------------------------------------------------


def test_wrong_loop_error_is_a_runtime_error():
    assert issubclass(WrongLoopError, AiomemmapError)
    assert issubclass(WrongLoopError, RuntimeError)


def test_bus_name_is_checked_and_shown():
    with pytest.raises(TypeError, match=r"name must be a str or None, got 3"):
        InvalidationBus(name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"name must be a non-empty str"):
        InvalidationBus(name="")
    bus = InvalidationBus(name="engine bus")
    assert bus.name == "engine bus"
    assert repr(bus) == "<InvalidationBus 'engine bus' publishes=0 spaces_in_flight=0>"
    unnamed = InvalidationBus()
    assert unnamed.name == f"InvalidationBus@{id(unnamed):#x}"


# --- an explicit bus ----------------------------------------------------------------


def test_bus_used_from_another_thread_raises_and_changes_nothing(new_loop):
    bus = InvalidationBus(name="the main bus")
    home = new_loop()
    try:
        first = Space()
        home.run_until_complete(bus.publish([(first, page(0))], OPTS))
        before = bus.statistics()
        stranger = Space()

        async def publish_there() -> None:
            await bus.publish([(stranger, page(1))], OPTS)

        with pytest.raises(WrongLoopError) as excinfo:
            in_thread(lambda: run(new_loop, publish_there()), "the other thread")
        message = str(excinfo.value)
        assert message.startswith("the main bus belongs to event loop ")
        owner, _, user = message.partition("; it was used from ")
        main = threading.current_thread()
        assert f"@{id(home):#x} in thread {main.name!r} (ident {main.ident})" in owner
        assert re.search(r"in thread 'the other thread' \(ident \d+\)", user)
        assert f"@{id(home):#x}" not in user
        # Nothing was delivered or counted, and the bus still serves its loop.
        assert stranger.ranges == []
        assert bus.statistics() == before
        home.run_until_complete(bus.publish([(first, page(2))], OPTS))
    finally:
        home.close()
    assert first.ranges == [page(0), page(2)]
    assert bus.statistics().publishes == 2


def test_bus_used_from_a_second_loop_in_the_same_thread_raises(new_loop):
    bus = InvalidationBus()
    space = Space()

    async def publish(n: int) -> None:
        await bus.publish([(space, page(n))], OPTS)

    run(new_loop, publish(0))
    second = publish(1)
    with pytest.raises(WrongLoopError, match=re.escape(bus.name) + " belongs to"):
        run(new_loop, second)
    assert space.ranges == [page(0)]
    assert bus.statistics().publishes == 1


def test_bus_is_bound_by_its_first_publish_even_an_empty_one(new_loop):
    bus = InvalidationBus()

    async def publish_nothing() -> None:
        await bus.publish([], OPTS)

    run(new_loop, publish_nothing())
    with pytest.raises(WrongLoopError):
        run(new_loop, publish_nothing())


def test_two_threads_racing_to_bind_one_bus_one_wins(new_loop):
    bus = InvalidationBus()
    ready = threading.Barrier(2)
    results: dict[str, str] = {}

    def contender(name: str) -> None:
        space = Space()

        async def publish() -> None:
            ready.wait(DEADLINE)
            await bus.publish([(space, page(0))], OPTS)

        try:
            run(new_loop, publish())
        except WrongLoopError:
            results[name] = "refused"
        else:
            results[name] = "published"

    threads = [
        threading.Thread(target=contender, args=(name,), name=name)
        for name in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(results.values()) == ["published", "refused"]
    assert bus.statistics().publishes == 1


async def test_explicit_bus_is_the_mapping_sets_bus():
    bus = InvalidationBus()
    mappings = MappingSet(bus)
    space = Space()
    mappings.add_mapping(space, page(3), 0, writable=False)
    await mappings.invalidate(MappableRange(0, PAGE_SIZE), OPTS)
    assert mappings.bus is bus
    assert space.ranges == [page(3)]
    assert bus.statistics().publishes == 1
    assert default_bus().statistics().publishes == 0


# --- the default bus of each loop ---------------------------------------------------


def test_two_threads_each_publish_on_their_own_loops_default_bus(new_loop):
    # Both threads are inside their loops at once, with a publish done before
    # and after they meet.
    both_running = threading.Barrier(2)

    def worker() -> tuple[InvalidationBus, InvalidationBus, int, list[AddrRange]]:
        mappings = MappingSet()
        space = Space()
        mappings.add_mapping(space, page(0), 0, writable=False)

        async def main() -> tuple[InvalidationBus, InvalidationBus, int, list]:
            await mappings.invalidate(MappableRange(0, PAGE_SIZE), OPTS)
            both_running.wait(DEADLINE)
            await mappings.invalidate(MappableRange(0, PAGE_SIZE), OPTS)
            bus = default_bus()
            return bus, mappings.bus, bus.statistics().publishes, space.ranges

        return run(new_loop, main())

    results: list[tuple[InvalidationBus, InvalidationBus, int, list]] = []
    threads = [
        threading.Thread(target=lambda: results.append(worker()), name=f"t{i}")
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(results) == 2
    (bus_a, set_bus_a, count_a, ranges_a), (bus_b, set_bus_b, count_b, ranges_b) = (
        results
    )
    assert bus_a is not bus_b
    assert set_bus_a is bus_a
    assert set_bus_b is bus_b
    assert count_a == count_b == 2
    assert ranges_a == ranges_b == [page(0), page(0)]


def test_asyncio_run_twice_with_the_default_bus(new_loop):
    mappings = MappingSet()
    space = Space()
    mappings.add_mapping(space, page(1), 0, writable=False)

    async def invalidate() -> tuple[InvalidationBus, int]:
        await mappings.invalidate(MappableRange(0, PAGE_SIZE), OPTS)
        return mappings.bus, mappings.bus.statistics().publishes

    first_bus, first_count = run(new_loop, invalidate())
    second_bus, second_count = run(new_loop, invalidate())
    assert first_bus is not second_bus
    assert first_count == second_count == 1
    assert space.ranges == [page(1), page(1)]


def test_a_mappable_created_outside_any_loop_invalidates_under_successive_loops(
    new_loop,
):
    with MemoryFile("bus-binding") as mf:
        shm = SharedMemory(mf, PAGE_SIZE, name="made outside a loop")

        async def map_fault_truncate() -> tuple[int, int, int]:
            asp = AddressSpace(mf)
            try:
                addr = await asp.mmap(
                    MMapOpts(
                        length=PAGE_SIZE,
                        mappable=shm,
                        mapping_identity=shm,
                        perms=AccessType.READ,
                        max_perms=AccessType.READ,
                    )
                )
                await asp.handle_fault(addr, AccessType.READ)
                resident = asp.statistics().rss
                await shm.truncate(0)
                after = asp.statistics().rss
                await shm.truncate(PAGE_SIZE)
                return resident, after, default_bus().statistics().publishes
            finally:
                await asp.aclose()

        try:
            assert run(new_loop, map_fault_truncate()) == (PAGE_SIZE, 0, 1)
            assert run(new_loop, map_fault_truncate()) == (PAGE_SIZE, 0, 1)
        finally:
            run(new_loop, shm.aclose())


def test_default_bus_of_one_loop_refuses_another(new_loop):
    captured = run(new_loop, _default_bus())
    space = Space()

    async def publish() -> None:
        await captured.publish([(space, page(0))], OPTS)

    with pytest.raises(WrongLoopError, match=r"^the default bus of event loop "):
        run(new_loop, publish())
    assert space.ranges == []


def test_default_bus_is_dropped_with_its_loop(new_loop):
    loop = new_loop()
    bus = loop.run_until_complete(_default_bus())
    gone = weakref.ref(bus)
    loop_gone = weakref.ref(loop)
    del bus
    loop.close()
    del loop
    gc.collect()
    assert loop_gone() is None
    assert gone() is None


def test_mapping_set_default_bus_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="no running event loop"):
        _ = MappingSet().bus


async def _default_bus() -> InvalidationBus:
    return default_bus()
