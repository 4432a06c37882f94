"""The invalidation bus: fanning a Mappable's invalidations out to mapping spaces.

When a Mappable's contents or size change, it tells every mapping space that
maps the affected offsets to forget its translations. It does so through
:meth:`InvalidationBus.publish`, which delivers the invalidations to all the
spaces concurrently and returns once each has applied its share. Lock ranks
are those of the :mod:`aiomemmap._core.locks` module docstring.

A bus serves the tasks of one event loop: it binds to the loop it first
publishes on, and publishing on it from any other loop (and so from any other
thread) raises :class:`~aiomemmap._core.errors.WrongLoopError`. Each event
loop also has a default bus of its own, :func:`default_bus`, which a
:class:`~aiomemmap.MappingSet` created without a bus publishes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Final, final

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import AlignmentError, WrongLoopError
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

    A bus belongs to one event loop: the one it first publishes on. From then
    on, :meth:`publish` called from another loop, which is to say from another
    thread or after the loop was replaced (a second ``asyncio.run``), raises
    :class:`~aiomemmap._core.errors.WrongLoopError` and changes nothing. Code
    that runs on several loops gives each its own bus, or uses the default bus
    of each loop (:func:`default_bus`).

    Args:
        name: A name for messages; by default one made from the bus's id.

    Raises:
        TypeError: ``name`` is neither a str nor ``None``.
        ValueError: ``name`` is empty.

    Concurrency:
        Task-safe within the event loop it is bound to; :meth:`statistics` may
        be called from any thread. Deliveries to one space are applied in the
        order their publishes were called.
    """

    __slots__ = (
        "__weakref__",
        "_deliveries",
        "_failures",
        "_loop_ref",
        "_name",
        "_owner",
        "_publishes",
        "_tails",
    )

    def __init__(self, *, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if name == "":
            raise ValueError("name must be a non-empty str or None, got ''")
        self._name = name
        # The loop the bus is bound to, held weakly so that the default bus
        # of a loop, kept in a table keyed weakly by that loop, does not keep
        # the loop alive. None until the first publish.
        self._loop_ref: weakref.ref[asyncio.AbstractEventLoop] | None = None
        # The bound loop and its thread, described for error messages.
        self._owner = ""
        # id(space) -> the last job queued for that space. The job holds the
        # space, so the id stays valid while the entry exists.
        self._tails: dict[int, _Job] = {}
        self._publishes = 0
        self._deliveries = 0
        self._failures = 0

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        return (
            f"<InvalidationBus{name} publishes={self._publishes} "
            f"spaces_in_flight={len(self._tails)}>"
        )

    @property
    def name(self) -> str:
        """The name used in messages: the one given, or one made from the id."""
        name = self._name
        return name if name is not None else f"InvalidationBus@{id(self):#x}"

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the bus to ``loop``, or raise if it belongs to another one.

        Called by :meth:`publish` when ``loop`` is not the bound loop, so
        only on the first publish or on a misuse.

        Raises:
            WrongLoopError: The bus is bound to another loop (alive or not).
        """
        with _binding_lock:
            ref = self._loop_ref
            if ref is None:
                self._loop_ref = weakref.ref(loop)
                self._owner = _describe_loop(loop)
                return
            if ref() is loop:
                return
        raise WrongLoopError(
            f"{self.name} belongs to {self._owner}; it was used from "
            f"{_describe_loop(loop)}. A bus serves one event loop: give each "
            f"loop its own bus, or use the default bus of each loop "
            f"(default_bus())"
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
            WrongLoopError: The bus is bound to another event loop (see the
                class docstring). Raised before anything else is checked;
                nothing changes.
            RuntimeError: Not called from a running event loop.
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
        loop = asyncio.get_running_loop()
        ref = self._loop_ref
        if ref is None or ref() is not loop:
            self._bind(loop)
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
        join = _Join(len(jobs))
        for job in queued:
            self._spawn_worker(_Batch([job]), opts, join, loop)
        cancelled: asyncio.CancelledError | None = None
        if ready:
            cancelled = await self._work_in_caller(_Batch(ready), opts, join, loop)
        if join.remaining and cancelled is None:
            # Uncancelled, the wait is a bare await: the common case stays as
            # cheap as a future. A cancellation ends it (and cancels the future).
            waiter: asyncio.Future[None] = loop.create_future()
            join.waiter = waiter
            try:
                await waiter
            except asyncio.CancelledError as exc:
                cancelled = exc
        if join.remaining:
            # Cancelled: wait for the rest through the cancellation shield.
            waiter = loop.create_future()
            join.waiter = waiter
            try:
                await finish_shielded(waiter)
            except asyncio.CancelledError as exc:
                if cancelled is None:
                    cancelled = exc
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


def _describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """Name ``loop`` and the thread running it, for error messages."""
    thread = threading.current_thread()
    return (
        f"event loop {type(loop).__name__}@{id(loop):#x} in thread "
        f"{thread.name!r} (ident {thread.ident})"
    )


# Serialises binding buses, and creating default buses, across threads.
_binding_lock: Final = threading.Lock()
# The default bus of each event loop, dropped with the loop.
_defaults: Final[
    weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InvalidationBus]
] = weakref.WeakKeyDictionary()


def default_bus() -> InvalidationBus:
    """Return the default bus of the running event loop.

    Every event loop has a default bus of its own, created on first use and
    dropped with the loop; it is the bus a :class:`~aiomemmap.MappingSet`
    created without one publishes on while that loop runs it. Successive
    loops in one thread (two calls of ``asyncio.run``, say) and loops in
    different threads therefore never share a bus, and no state outlives its
    loop.

    Returns:
        The same :class:`InvalidationBus` on every call from one loop.

    Raises:
        RuntimeError: No event loop is running in the calling thread.

    Locking:
        Takes no :class:`~aiomemmap.OrderedLock`; the first call from a loop
        takes a ``threading.Lock`` of this module for an instant.
    """
    loop = asyncio.get_running_loop()
    bus = _defaults.get(loop)
    if bus is None:
        bus = InvalidationBus(
            name=f"the default bus of event loop {type(loop).__name__}@{id(loop):#x}"
        )
        bus._bind(loop)
        with _binding_lock:
            bus = _defaults.setdefault(loop, bus)
    return bus
