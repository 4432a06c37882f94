"""The invalidation bus: fanning a Mappable's invalidations out to mapping spaces.

When a Mappable's contents or size change, it tells every mapping space that
maps the affected offsets to forget its translations. It does so through
:meth:`InvalidationBus.publish`, which delivers the invalidations to all the
spaces concurrently and returns once each has applied its share. Lock ranks
are those of the :mod:`aiomemmap._core.locks` module docstring.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Final, final

import anyio

from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import AlignmentError
from aiomemmap._core.locks import LockRank, check_may_take
from aiomemmap._core.ranges import AddrRange
from aiomemmap.memmap.interfaces import InvalidateOpts, MappingSpace

__all__ = ["BusStatistics", "InvalidationBus", "default_bus"]


@final
@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters of an :class:`InvalidationBus`, as returned by ``statistics()``.

    Attributes:
        publishes: Calls of :meth:`InvalidationBus.publish` whose input was
            valid (the empty ones included).
        deliveries: ``invalidate`` calls that finished, successfully or not.
        failures: ``invalidate`` calls that raised.
        spaces_in_flight: Spaces that have deliveries queued or running now;
            the bus keeps state for these spaces only.

    Concurrency:
        Immutable.
    """

    publishes: int
    deliveries: int
    failures: int
    spaces_in_flight: int


@final
class _Job:
    """The ranges one publish delivers to one space, applied one after another.

    Concurrency:
        Task-compatible: used by the bus on the event loop's thread only.
    """

    __slots__ = (
        "deferred",
        "finished",
        "invalidate",
        "key",
        "next_range",
        "prev",
        "ranges",
        "space",
        "waiter",
    )

    def __init__(
        self,
        space: MappingSpace,
        invalidate: Callable[[AddrRange, InvalidateOpts], Awaitable[None]],
        ar: AddrRange,
    ) -> None:
        self.space = space
        # Bound once, when the input is checked.
        self.invalidate = invalidate
        self.key = id(space)
        self.ranges = [ar]
        # Index of the next range to apply; a cancelled attempt leaves it at
        # the range it interrupted, so that range is applied again.
        self.next_range = 0
        # The job delivering to the same space just before this one, until
        # this one has waited for it.
        self.prev: _Job | None = None
        # True once this job and every earlier job for the space are over.
        self.finished = False
        # Set by the next job for this space while it waits for this one.
        self.waiter: asyncio.Future[None] | None = None
        # The next job, if it ended before its turn came: it is retired
        # together with this one.
        self.deferred: _Job | None = None


@final
class _Join:
    """What one publish waits on: its unfinished jobs and collected errors.

    Concurrency:
        Task-compatible: used by the bus on the event loop's thread only.
    """

    __slots__ = ("errors", "remaining", "tasks", "waiter")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.errors: list[BaseException] = []
        # Strong references, so a task blocked on a future only it can see is
        # not garbage-collected.
        self.tasks: list[asyncio.Task[None]] = []
        self.waiter: asyncio.Future[None] | None = None

    def job_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


@final
class _Batch:
    """Jobs that may start at once, claimed in order by whichever worker is free.

    Concurrency:
        Task-compatible: used by the bus on the event loop's thread only.
    """

    __slots__ = ("jobs", "next")

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs
        # Index of the first job no worker has claimed yet.
        self.next = 0


@final
class InvalidationBus:
    """Delivers invalidations to mapping spaces, concurrently and in order.

    The bus keeps no subscriptions: each :meth:`publish` names its spaces,
    and state for a space exists only while deliveries to it are in flight.

    How deliveries run: the calling task works through the spaces itself,
    starting each space's ``invalidate`` coroutine directly. A call that
    finishes without suspending costs no task. When one suspends, the worker
    first starts a helper task to carry on with the spaces nobody has claimed
    yet, then keeps driving the suspended call to its end (so each
    ``invalidate`` call runs, start to finish, in a single task and sees that
    task as current), then helps with whatever is left. Each space's calls run
    in their own copy of the context, as they would in a task of their own.

    Concurrency:
        Task-safe within one event loop; not thread-safe. Deliveries to one
        space are applied in the order their publishes were called.
    """

    __slots__ = ("_deliveries", "_failures", "_publishes", "_tails")

    def __init__(self) -> None:
        # id(space) -> the last job queued for that space. The job holds the
        # space, so the id stays valid while the entry exists.
        self._tails: dict[int, _Job] = {}
        self._publishes = 0
        self._deliveries = 0
        self._failures = 0

    def __repr__(self) -> str:
        return (
            f"<InvalidationBus publishes={self._publishes} "
            f"spaces_in_flight={len(self._tails)}>"
        )

    def statistics(self) -> BusStatistics:
        """Return the bus's counters.

        Returns:
            A snapshot of the counters.

        Locking:
            Takes no lock.
        """
        return BusStatistics(
            publishes=self._publishes,
            deliveries=self._deliveries,
            failures=self._failures,
            spaces_in_flight=len(self._tails),
        )

    async def publish(
        self,
        deliveries: Iterable[tuple[MappingSpace, AddrRange]],
        opts: InvalidateOpts,
    ) -> None:
        """Apply invalidations to mapping spaces and wait until all are done.

        Calls ``space.invalidate(ar, opts)`` for each ``(space, ar)`` pair.
        Deliveries to different spaces run concurrently. Deliveries to one
        space are applied one after another: those of one call in the order
        given, and after every delivery to that space from earlier calls of
        ``publish`` (the order is fixed when ``publish`` is called, before it
        first waits).

        Args:
            deliveries: ``(space, ar)`` pairs; each ``ar`` a non-empty,
                page-aligned :class:`~aiomemmap.AddrRange`.
            opts: The options passed to every ``invalidate`` call.

        Raises:
            TypeError: ``opts`` is not an ``InvalidateOpts``, ``deliveries``
                is not an iterable of pairs, a range is not an ``AddrRange``,
                or a space has no ``invalidate`` method.
            ValueError: A range is empty.
            AlignmentError: A range is not page-aligned.
            LockOrderError: Debug checks are on and the calling task holds a
                lock of rank ``ACTIVE`` or ``TRANSLATE``.
            ExceptionGroup: Some ``invalidate`` calls raised. Every other
                delivery was still applied; the group holds each failure, with
                a note naming its space and range. (A ``BaseExceptionGroup``
                if a delivery ended with something that is not an
                ``Exception``, such as a ``CancelledError`` it raised itself.)

        Preconditions:
            Each space's ``invalidate`` is idempotent (forgetting translations
            twice is forgetting them once) and leaves consistent state when
            cancelled, as every mapping space's must.

        Postconditions:
            If no exception is raised, every space has applied every range
            delivered to it. Input errors are raised before anything is
            delivered or queued.

        Locking:
            The caller may hold MAPPING and MAPPABLE locks, but no ACTIVE or
            TRANSLATE lock, since ``invalidate`` takes ACTIVE locks. Deliveries
            run in the calling task or in tasks it creates; either way the
            order checker counts the caller's held locks as held by them.

        Cancellation:
            Invalidations are never left half-applied, because the caller is
            usually about to free the pages. If this call is cancelled after
            its input was accepted, every delivery still runs to completion:
            the call keeps waiting, ignoring further cancellation, until the
            last space is done, and then re-raises the ``CancelledError``.
            Failures of deliveries are then not raised, only counted in
            :meth:`statistics`. An ``invalidate`` call that was running in the
            calling task receives the cancellation at its current ``await``;
            its range is then applied again from the start, in a new task,
            before the call returns. Cancellation before the input was
            accepted delivers nothing.
        """
        if not isinstance(opts, InvalidateOpts):
            raise TypeError(f"opts must be an InvalidateOpts, got {opts!r}")
        jobs = _plan(deliveries)
        if is_debug():
            check_may_take(LockRank.ACTIVE, "InvalidationBus.publish")
        self._publishes += 1
        if not jobs:
            return
        # Take each job's place in its space's queue before anything waits.
        tails = self._tails
        ready: list[_Job] = []
        queued: list[_Job] = []
        for job in jobs:
            key = job.key
            prev = tails.get(key)
            tails[key] = job
            if prev is None:
                ready.append(job)
            else:
                job.prev = prev
                queued.append(job)
        loop = asyncio.get_running_loop()
        join = _Join(len(jobs))
        for job in queued:
            self._spawn_worker(_Batch([job]), opts, join, loop)
        cancelled: asyncio.CancelledError | None = None
        if ready:
            cancelled = await self._work_in_caller(_Batch(ready), opts, join, loop)
        if join.remaining:
            late = await _wait_uncancellable(join, loop, shield=cancelled is not None)
            cancelled = cancelled or late
        if cancelled is not None:
            raise cancelled
        if join.errors:
            total = sum(len(job.ranges) for job in jobs)
            raise BaseExceptionGroup(
                f"{len(join.errors)} of {total} invalidation deliveries failed",
                join.errors,
            )

    async def _work_in_caller(
        self,
        batch: _Batch,
        opts: InvalidateOpts,
        join: _Join,
        loop: asyncio.AbstractEventLoop,
    ) -> asyncio.CancelledError | None:
        """Work through ``batch`` in the publishing task.

        Returns:
            The ``CancelledError`` that interrupted the work, if any; by then
            the interrupted job and the unclaimed ones were handed to tasks.
        """
        jobs = batch.jobs
        while batch.next < len(jobs):
            job = jobs[batch.next]
            batch.next += 1
            try:
                await self._run(job, batch, opts, join, loop)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                    # This call was cancelled. The interrupted range may be
                    # half-applied: apply it again, with the rest of the job
                    # and the unclaimed jobs, where the cancellation cannot
                    # reach.
                    self._spawn_worker(_Batch([job]), opts, join, loop)
                    self._add_worker(batch, opts, join, loop)
                    return exc
                if isinstance(exc, _PROPAGATE):
                    self._job_done(job, join)
                    self._add_worker(batch, opts, join, loop)
                    raise
                # Raised by the space itself (a CancelledError included): a
                # failure like any other.
                self._record_fatal(job, exc, join, called=True)
            self._job_done(job, join)
        return None

    async def _work(
        self,
        batch: _Batch,
        opts: InvalidateOpts,
        join: _Join,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Work through ``batch`` in a task of the bus's own.

        A job whose space has earlier jobs (only ever alone in its batch)
        first waits for them to finish.
        """
        jobs = batch.jobs
        while batch.next < len(jobs):
            job = jobs[batch.next]
            batch.next += 1
            called = False
            try:
                prev = job.prev
                if prev is not None:
                    if not prev.finished:
                        waiter: asyncio.Future[None] = loop.create_future()
                        prev.waiter = waiter
                        await waiter
                    job.prev = None
                called = True
                await self._run(job, batch, opts, join, loop)
            except BaseException as exc:
                # Not an Exception (those are recorded in _run).
                self._record_fatal(job, exc, join, called=called)
                if isinstance(exc, _PROPAGATE) or (
                    isinstance(exc, asyncio.CancelledError) and _being_cancelled()
                ):
                    # This task is going away; _worker_done drops the jobs
                    # nobody has claimed.
                    self._job_done(job, join)
                    raise
            self._job_done(job, join)

    def _spawn_worker(
        self,
        batch: _Batch,
        opts: InvalidateOpts,
        join: _Join,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Start a task working on ``batch``."""
        task = loop.create_task(self._work(batch, opts, join, loop))
        task.add_done_callback(functools.partial(self._worker_done, batch, join))
        join.tasks.append(task)

    def _worker_done(
        self, batch: _Batch, join: _Join, task: asyncio.Task[None]
    ) -> None:
        """Drop the jobs of ``batch`` left unclaimed by a worker that ended early.

        A worker only returns once every job is claimed, so this does
        something only when the task was cancelled from outside (possibly
        before it ever ran, when its own handlers could not) or ended with
        an error that propagates.
        """
        jobs = batch.jobs
        while batch.next < len(jobs):
            job = jobs[batch.next]
            batch.next += 1
            exc = asyncio.CancelledError(
                f"the bus task that was to deliver to {job.space!r} ended early"
            )
            self._record_fatal(job, exc, join, called=False)
            self._job_done(job, join)

    def _add_worker(
        self,
        batch: _Batch,
        opts: InvalidateOpts,
        join: _Join,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Start a task working on ``batch`` if it has unclaimed jobs."""
        if batch.next < len(batch.jobs):
            self._spawn_worker(batch, opts, join, loop)

    async def _run(
        self,
        job: _Job,
        batch: _Batch,
        opts: InvalidateOpts,
        join: _Join,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Deliver the job's ranges that are not yet applied, in order.

        Each ``invalidate`` coroutine is stepped directly; if it suspends, a
        helper worker takes over the unclaimed jobs of ``batch`` first. An
        ``Exception`` from one range is recorded and the next range is still
        delivered; anything else propagates, leaving ``job.next_range`` at the
        interrupted range.
        """
        invalidate = job.invalidate
        ranges = job.ranges
        context = contextvars.copy_context()
        while job.next_range < len(ranges):
            ar = ranges[job.next_range]
            try:
                call = invalidate(ar, opts)
                if type(call) is not types.CoroutineType:
                    call = _await(call)
                try:
                    pending = context.run(call.send, None)
                except StopIteration:
                    pass
                else:
                    self._add_worker(batch, opts, join, loop)
                    await _drive(call, pending, context)
            except Exception as exc:
                self._failures += 1
                exc.add_note(f"while invalidating {ar} in {job.space!r}")
                join.errors.append(exc)
            self._deliveries += 1
            job.next_range += 1

    def _record_fatal(
        self, job: _Job, exc: BaseException, join: _Join, *, called: bool
    ) -> None:
        """Record a job that ended with a non-``Exception``; drop the rest of it.

        The job's remaining ranges are not delivered: whatever ended the call
        (a ``CancelledError`` raised by the space, or the task being cancelled)
        would end them too. ``called`` says whether ``invalidate`` was called,
        so the counters count it.
        """
        if called:
            self._failures += 1
            self._deliveries += 1
        exc.add_note(
            f"while invalidating {job.ranges[job.next_range]} in {job.space!r}"
        )
        join.errors.append(exc)

    def _job_done(self, job: _Job, join: _Join) -> None:
        """Account for a job that is over, applied or not."""
        self._retire(job)
        join.job_done()

    def _retire(self, job: _Job | None) -> None:
        """Let the space's next job start, and drop the space's idle state.

        A job that ended before its turn (its task was cancelled while it
        waited) is retired only with its predecessor, so that no later job
        for the space can start while an earlier one still runs.
        """
        tails = self._tails
        while job is not None:
            prev = job.prev
            if prev is not None and not prev.finished:
                prev.waiter = None
                prev.deferred = job
                return
            job.prev = None
            job.finished = True
            if tails.get(job.key) is job:
                del tails[job.key]
            waiter = job.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            deferred = job.deferred
            job.deferred = None
            job = deferred


# Ends a delivery and is passed on rather than recorded as its failure.
_PROPAGATE: Final = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _being_cancelled() -> bool:
    """Return whether the current task has a cancellation request pending."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _await(awaitable: Awaitable[None]) -> None:
    """Wrap an awaitable that is not a coroutine so it can be stepped."""
    await awaitable


@types.coroutine
def _drive(
    call: Coroutine[Any, Any, object], pending: object, context: contextvars.Context
) -> Generator[Any, Any, None]:
    """Finish a coroutine that was stepped by hand and then suspended.

    This is what ``await call`` would have done from the point where the
    coroutine first yielded ``pending``: whatever the task sends or throws in
    is passed on, in ``context``, until the coroutine returns.
    """
    step: Callable[[Any], object]
    while True:
        try:
            value = yield pending
        except GeneratorExit:
            context.run(call.close)
            raise
        except BaseException as exc:
            step, value = call.throw, exc
        else:
            step = call.send
        try:
            pending = context.run(step, value)
        except StopIteration:
            return


def _plan(deliveries: Iterable[tuple[MappingSpace, AddrRange]]) -> list[_Job]:
    """Check the input and group it into one job per space, in order.

    Raises:
        TypeError, ValueError, AlignmentError: As for ``publish``.
    """
    try:
        items = list(deliveries)
    except TypeError:
        raise TypeError(
            f"deliveries must be an iterable of (space, AddrRange) pairs, "
            f"got {deliveries!r}"
        ) from None
    if len(items) == 1:
        return [_check_item(0, items[0], None)]
    jobs: dict[int, _Job] = {}
    for i, item in enumerate(items):
        job = _check_item(i, item, jobs)
        jobs[job.key] = job
    return list(jobs.values())


def _check_item(
    i: int, item: tuple[MappingSpace, AddrRange], jobs: dict[int, _Job] | None
) -> _Job:
    """Check one delivery; return its space's job, new or extended."""
    try:
        space, ar = item
    except (TypeError, ValueError):
        raise TypeError(
            f"deliveries[{i}] must be a (space, AddrRange) pair, got {item!r}"
        ) from None
    if type(ar) is not AddrRange:
        raise TypeError(f"deliveries[{i}]: the range must be an AddrRange, got {ar!r}")
    if ar.start == ar.end:
        raise ValueError(f"deliveries[{i}]: the range {ar} is empty")
    if not ar.is_page_aligned():
        raise AlignmentError(f"deliveries[{i}]: the range {ar} is not page-aligned")
    if jobs is not None:
        job = jobs.get(id(space))
        if job is not None:
            job.ranges.append(ar)
            return job
    invalidate = getattr(space, "invalidate", None)
    if not callable(invalidate):
        raise TypeError(
            f"deliveries[{i}]: {space!r} is not a MappingSpace "
            f"(it has no invalidate method)"
        )
    return _Job(space, invalidate, ar)


async def _wait_uncancellable(
    join: _Join, loop: asyncio.AbstractEventLoop, *, shield: bool
) -> asyncio.CancelledError | None:
    """Wait until every job of ``join`` has finished, whatever happens.

    Args:
        join: What to wait for.
        loop: The running loop.
        shield: The caller was already cancelled.

    Returns:
        The first ``CancelledError`` delivered to the calling task while it
        waited, or ``None``.
    """
    cancelled: asyncio.CancelledError | None = None
    while join.remaining:
        waiter = join.waiter = loop.create_future()
        try:
            if not shield:
                await waiter
            else:
                # Keep anyio cancel scopes from cancelling the task again on
                # every loop iteration while it waits.
                with anyio.CancelScope(shield=True):
                    await waiter
        except asyncio.CancelledError as exc:
            if cancelled is None:
                cancelled = exc
            shield = True
    return cancelled


_default_bus: InvalidationBus | None = None


def default_bus() -> InvalidationBus:
    """Return the process-wide bus that mapping sets use unless given another.

    The bus is bound to no event loop (it keeps state only while a publish is
    in flight), so successive loops in one process can share it.

    Returns:
        The same :class:`InvalidationBus` on every call.

    Locking:
        Takes no lock.
    """
    global _default_bus
    bus = _default_bus
    if bus is None:
        bus = _default_bus = InvalidationBus()
    return bus
