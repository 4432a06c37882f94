"""The one cancellation shield: steps finish, cancellations arrive afterwards."""

from __future__ import annotations

import asyncio
import contextvars

import anyio
import pytest

from aiomemmap._core.cancel import finish_shielded

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="")


async def _step(log: list[str], steps: int, result: str = "done") -> str:
    for _ in range(steps):
        await asyncio.sleep(0)
    log.append(result)
    return result


async def test_returns_the_result_when_not_cancelled() -> None:
    log: list[str] = []
    assert await finish_shielded(_step(log, 3)) == "done"
    assert log == ["done"]


async def test_a_done_future_is_returned_at_once() -> None:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(7)
    assert await finish_shielded(fut) == 7


async def test_the_step_finishes_and_the_cancellation_follows() -> None:
    log: list[str] = []
    started = asyncio.Event()

    async def caller() -> None:
        started.set()
        await finish_shielded(_step(log, 10))
        log.append("after")  # never reached

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["done"]


async def test_repeated_cancellations_do_not_stop_the_step() -> None:
    log: list[str] = []
    task = asyncio.create_task(finish_shielded(_step(log, 20)))
    for _ in range(5):
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["done"]


async def test_an_error_of_the_step_is_raised_when_not_cancelled() -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await finish_shielded(failing())


async def test_an_error_after_a_cancellation_gives_the_cancellation() -> None:
    gate = asyncio.Event()

    async def failing() -> None:
        await gate.wait()
        raise KeyError("boom")

    task = asyncio.create_task(finish_shielded(failing()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_step_cancelled_by_someone_else_raises_cancelled() -> None:
    inner = asyncio.create_task(asyncio.sleep(10))
    outer = asyncio.create_task(finish_shielded(inner))
    await asyncio.sleep(0)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not outer.cancelling()


async def test_the_step_sees_the_callers_context() -> None:
    _marker.set("caller")

    async def read_marker() -> str:
        await asyncio.sleep(0)
        return _marker.get()

    assert await finish_shielded(read_marker()) == "caller"


async def test_an_anyio_cancel_scope_waits_for_the_step() -> None:
    log: list[str] = []
    release = asyncio.Event()
    iterations = 0

    async def gated() -> str:
        await release.wait()
        log.append("done")
        return "done"

    async def count_iterations() -> None:
        nonlocal iterations
        while not release.is_set():
            iterations += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_iterations())
    with anyio.move_on_after(0) as scope:
        waiter = asyncio.get_running_loop().call_later(0.01, release.set)
        await finish_shielded(gated())
    waiter.cancel()
    await counter
    assert scope.cancelled_caught
    assert log == ["done"]
    # The shielded wait does not turn into a busy loop: only the counter's own
    # iterations ran meanwhile, not thousands of re-deliveries.
    assert iterations > 0
