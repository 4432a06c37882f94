"""Ordered async locks, and the one statement of aiomemmap's lock order.

Lock order, outermost first. A task that holds a lock may only take locks
listed below it, that is of strictly greater rank:

.. code-block:: text

    AddressSpace mapping lock                       LockRank.MAPPING   = 10
      Mappable locks, except those taken inside     LockRank.MAPPABLE  = 20
      translate() (e.g. the set of mappings)
        AddressSpace active lock                    LockRank.ACTIVE    = 30
          locks taken by Mappable.translate()       LockRank.TRANSLATE = 40
          (e.g. a cached file's page data)
            MemoryFile's internal threading.Lock    (not an OrderedLock)

Rules that follow from the order:

* ``MappingSpace.invalidate()`` takes only ACTIVE locks and below. A Mappable
  may therefore call it, or publish on the :class:`~aiomemmap.InvalidationBus`,
  while it holds a MAPPABLE lock, but never while it holds a TRANSLATE lock.
* ``Mappable.add_mapping``/``remove_mapping``/``copy_mapping`` run with the
  mapping lock held (for writing) and the active lock not held;
  ``Mappable.translate`` runs with the mapping lock held for reading. An
  address space does not hold its active lock while it awaits a translation:
  it records the invalidations that arrive meanwhile and discards a result
  that one of them overlaps, so faults on different pages fetch concurrently.
* ``MappingIdentity.dec_ref`` and ``MappingIdentity.msync`` run only after the
  mapping lock has been released: an address space collects the identities it
  dropped and releases them once it is out of the lock.
* Only ``AddressSpace.fork`` holds the ACTIVE locks of two address spaces: the
  parent's first, then the child's as a *nested* acquisition
  (``nested=True``), which the checker accepts for exactly one extra lock of
  the same rank as the innermost one held.
* ``MemoryFile``'s ``threading.Lock`` is the bottom of the order: it is never
  held across an ``await``, so no other lock can be taken under it.

Checking. While :func:`~aiomemmap._core.debug.is_debug` is true, each acquisition
of an :class:`OrderedLock` or :class:`OrderedRWLock` is checked against the
locks the current task holds, and taking a lock whose rank is not strictly
greater than every held lock's raises :class:`~aiomemmap.LockOrderError`
before the task waits. While debug is off, acquisitions do no tracking at all.
Re-acquiring a lock the current task already holds raises in both modes,
rather than deadlocking.

What a child task inherits. The held locks are tracked in a
:class:`contextvars.ContextVar` holding an immutable tuple, and a new task
starts with a copy of its creator's context. A task created while its parent
holds locks therefore starts out treated as holding them too, for as long as
the parent still holds them. This is intended: a parent that awaits a child
while holding a lock deadlocks if the child waits for a lock that is ranked at
or outside the held one (the child may be queued behind a task that is itself
waiting for the parent's lock). Entries the parent has since released are
ignored, so a long-lived task started under a lock is not constrained once its
creator lets go. The inherited locks are not owned by the child: it cannot
release them, and re-taking one is an order violation, not re-entry. A
background task that its creator never waits for while holding locks (a fetch
started from ``translate()``, say) should be created with
``context=detached_context()`` so that it starts with nothing held.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
from types import TracebackType
from typing import Final, final

from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import LockOrderError

__all__ = [
    "LockRank",
    "OrderedLock",
    "OrderedRWLock",
    "check_may_take",
    "detached_context",
    "held_locks",
]


class LockRank(enum.IntEnum):
    """The rank of a lock in aiomemmap's lock order; smaller ranks are outer.

    The order itself, and what belongs to each rank, is described in the
    :mod:`aiomemmap._core.locks` module docstring.
    """

    MAPPING = 10
    MAPPABLE = 20
    ACTIVE = 30
    TRANSLATE = 40


# A waiter is the future it sleeps on and the task it stands for.
_Waiter = tuple["asyncio.Future[None]", "asyncio.Task[object]"]
# What the debug tracker records per held lock: the lock and its owner.
_HeldEntry = tuple["_RankedLock", "asyncio.Task[object]"]

_held: Final[contextvars.ContextVar[tuple[_HeldEntry, ...]]] = contextvars.ContextVar(
    "aiomemmap_held_locks", default=()
)


# The task that runs the current code: asyncio's public lookup, bound once.
# Each call asks for the running loop (on Python 3.11 that includes a getpid()
# system call); asyncio offers no cheaper way that is right whatever loop or
# thread the caller is in.
_running_task: Final = asyncio.current_task


def _discard(waiters: collections.deque[_Waiter], waiter: _Waiter) -> None:
    """Remove ``waiter`` from ``waiters`` unless a release already popped it."""
    try:
        waiters.remove(waiter)
    except ValueError:
        return


def _task_name(task: asyncio.Task[object]) -> str:
    return task.get_name()


class _RankedLock:
    """What the order checker needs from a lock: a rank, a name, its holders.

    Concurrency:
        Task-compatible: used from the event loop's thread only.
    """

    __slots__ = ("_name", "_rank")

    def __init__(self, rank: LockRank, name: str) -> None:
        if not isinstance(rank, LockRank):
            raise TypeError(f"rank must be a LockRank, got {rank!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self._rank = rank
        self._name = name

    @property
    def rank(self) -> LockRank:
        """The lock's rank in the lock order."""
        return self._rank

    @property
    def name(self) -> str:
        """The name given at construction, used in error messages."""
        return self._name

    def _is_held_by(self, task: asyncio.Task[object]) -> bool:
        raise NotImplementedError

    def _describe(self) -> str:
        return f"{self._name!r} (rank {self._rank.name}={self._rank.value})"


def _live_entries(held: tuple[_HeldEntry, ...]) -> list[_HeldEntry]:
    """Return the entries whose lock is still held by the task that took it."""
    return [entry for entry in held if entry[0]._is_held_by(entry[1])]


def _check_order(
    lock: _RankedLock, task: asyncio.Task[object], *, nested: bool
) -> None:
    """Raise LockOrderError if ``task`` may not take ``lock`` now.

    Only called while debug checks are on.
    """
    held = _held.get()
    if not held:
        return
    live = _live_entries(held)
    if not live:
        return
    rank = lock.rank
    top = max(entry[0].rank for entry in live)
    if rank > top:
        return
    at_top = [entry for entry in live if entry[0].rank == top]
    if nested and rank == top and len(at_top) == 1:
        return
    if nested and rank == top:
        first, second = at_top[0][0], at_top[1][0]
        raise LockOrderError(
            f"cannot take {lock._describe()} as a nested lock: the task already "
            f"holds {first._describe()} and {second._describe()}, and a nested "
            f"acquisition allows only one extra lock of the innermost rank"
        )
    # Name the outermost held lock that the new one may not be taken under.
    offender, owner = min(
        (entry for entry in live if entry[0].rank >= rank),
        key=lambda entry: entry[0].rank,
    )
    inherited = (
        f" (held by task {_task_name(owner)!r}, which created this task)"
        if owner is not task
        else ""
    )
    hint = (
        "; a second lock of the same rank needs nested=True"
        if rank == top and not nested
        else ""
    )
    raise LockOrderError(
        f"cannot take {lock._describe()} while holding "
        f"{offender._describe()}{inherited}: locks must be taken in strictly "
        f"increasing rank order{hint}"
    )


def _push_held(lock: _RankedLock, task: asyncio.Task[object]) -> None:
    held = _held.get()
    if held:
        held = tuple(entry for entry in _live_entries(held) if entry[0] is not lock)
    _held.set((*held, (lock, task)))


def _pop_held(lock: _RankedLock, task: asyncio.Task[object]) -> None:
    held = _held.get()
    if held:
        _held.set(
            tuple(
                entry for entry in held if entry[0] is not lock or entry[1] is not task
            )
        )


def detached_context() -> contextvars.Context:
    """Return a copy of the current context in which no lock counts as held.

    Pass it as ``context=`` to :func:`asyncio.create_task` (or
    ``loop.create_task``) for a task that must not inherit its creator's held
    locks: one the creator never waits for while it holds them.

    Returns:
        A new context; the current one is unchanged.

    Locking:
        Takes no lock.
    """
    context = contextvars.copy_context()
    context.run(_held.set, ())
    return context


def held_locks() -> tuple[OrderedLock | OrderedRWLock, ...]:
    """Return the locks the debug checker counts as held by the current task.

    This includes locks inherited from the task that created the current one,
    for as long as that task still holds them (see the module docstring).

    Returns:
        The held locks, in the order they were taken. Always empty while debug
        checks are off, because nothing is tracked then.

    Locking:
        Takes no lock.
    """
    held = _held.get()
    if not held:
        return ()
    result: list[OrderedLock | OrderedRWLock] = []
    for lock, _ in _live_entries(held):
        assert isinstance(lock, (OrderedLock, OrderedRWLock))
        result.append(lock)
    return tuple(result)


def check_may_take(rank: LockRank, what: str) -> None:
    """Check, in debug mode, that the current task could take a lock of ``rank``.

    Entry points that will take locks of ``rank`` in other tasks (the
    invalidation bus delivering to ``MappingSpace.invalidate``, for instance)
    call this so that a caller holding a lock it must not hold fails at once
    with a clear message, instead of deadlocking later.

    Args:
        rank: The rank of the locks that will be taken on the caller's behalf.
        what: What is about to take them, for the error message.

    Raises:
        TypeError: ``rank`` is not a :class:`LockRank`.
        LockOrderError: Debug checks are on and the current task holds a lock
            whose rank is not strictly smaller than ``rank``.

    Locking:
        Takes no lock.
    """
    if not isinstance(rank, LockRank):
        raise TypeError(f"rank must be a LockRank, got {rank!r}")
    if not is_debug():
        return
    held = _held.get()
    if not held:
        return
    blocking = [entry[0] for entry in _live_entries(held) if entry[0].rank >= rank]
    if blocking:
        names = ", ".join(lock._describe() for lock in blocking)
        raise LockOrderError(
            f"{what} takes locks of rank {rank.name}={rank.value}, but the "
            f"current task holds {names}"
        )


@final
class _LockGuard:
    """``async with`` support for :meth:`OrderedLock.nested`.

    Concurrency:
        Immutable; one instance may be shared by any number of tasks.
    """

    __slots__ = ("_lock", "_nested")

    def __init__(self, lock: OrderedLock, nested: bool) -> None:
        self._lock = lock
        self._nested = nested

    async def __aenter__(self) -> None:
        await self._lock.acquire(nested=self._nested)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()


@final
class OrderedLock(_RankedLock):
    """An async mutex with a rank in the lock order.

    Waiters are served first in, first out, and ownership is handed directly
    from the releasing task to the next waiter, so a task that arrives while
    others wait can never overtake them. Taking a free lock does not yield to
    the event loop.

    Args:
        rank: Where the lock sits in the lock order.
        name: A non-empty name for error messages, e.g.
            ``"AddressSpace.mapping"``.

    Raises:
        TypeError: ``rank`` is not a :class:`LockRank` or ``name`` not a str.
        ValueError: ``name`` is empty.

    Invariants:
        If the lock is free, no task waits for it. Every waiter in the queue
        whose future is not done is a task blocked in :meth:`acquire`.

    Concurrency:
        Task-safe within one event loop; not thread-safe.
    """

    __slots__ = ("_nested_cm", "_owner", "_waiters")

    def __init__(self, rank: LockRank, name: str) -> None:
        super().__init__(rank, name)
        self._owner: asyncio.Task[object] | None = None
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._nested_cm = _LockGuard(self, nested=True)

    def __repr__(self) -> str:
        state = (
            f"locked by {_task_name(self._owner)!r}"
            if self._owner is not None
            else "unlocked"
        )
        return (
            f"<OrderedLock {self._name!r} rank={self._rank.name} {state} "
            f"waiters={len(self._waiters)}>"
        )

    def locked(self) -> bool:
        """Return whether some task holds the lock."""
        return self._owner is not None

    def owned_by_current_task(self) -> bool:
        """Return whether the current task holds the lock.

        Returns ``False`` when called outside a task.
        """
        try:
            task = _running_task()
        except RuntimeError:
            return False
        return task is not None and self._owner is task

    def _is_held_by(self, task: asyncio.Task[object]) -> bool:
        return self._owner is task

    async def acquire(self, *, nested: bool = False) -> None:
        """Take the lock, waiting while another task holds it.

        Args:
            nested: Allow the lock to have the same rank as the innermost lock
                the task holds, provided it holds only one lock of that rank.
                Used where two objects of one kind are locked together (the
                parent's and the child's active locks in ``fork``). An
                acquisition marked nested whose rank is strictly greater than
                every held lock's is an ordinary one.

        Raises:
            LockOrderError: The current task already holds the lock (always
                checked), or, with debug checks on, taking it would break the
                lock order. Raised before waiting; nothing changes.
            RuntimeError: Not called from inside an asyncio task.

        Postconditions:
            The current task holds the lock.

        Locking:
            Takes this lock. The caller may hold only locks of lower rank
            (see the module docstring).

        Cancellation:
            If cancelled while waiting, the task does not get the lock and the
            queue is left as if it had never waited; if the lock had already
            been handed to it, it is passed on to the next waiter before the
            cancellation propagates.
        """
        task = _running_task()
        if task is not None and self._owner is None and not is_debug():
            self._owner = task
            return
        await self._acquire(task, nested)

    async def _acquire(self, task: asyncio.Task[object] | None, nested: bool) -> None:
        """Take the lock: the general path of :meth:`acquire`."""
        if task is None:
            raise RuntimeError("OrderedLock.acquire must be called inside a task")
        owner = self._owner
        if owner is task:
            raise LockOrderError(
                f"the current task already holds {self._describe()}; "
                f"OrderedLock is not reentrant"
            )
        debug = is_debug()
        if debug:
            _check_order(self, task, nested=nested)
        if owner is None:
            self._owner = task
        else:
            fut: asyncio.Future[None] = task.get_loop().create_future()
            waiter = (fut, task)
            self._waiters.append(waiter)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    # The lock was handed over just before the cancellation.
                    self._hand_over()
                else:
                    _discard(self._waiters, waiter)
                raise
        if debug:
            _push_held(self, task)

    def release(self) -> None:
        """Release the lock, handing it to the longest-waiting task if any.

        Raises:
            RuntimeError: The current task does not hold the lock.

        Postconditions:
            The current task no longer holds the lock.

        Locking:
            Releases this lock; never waits.
        """
        task = _running_task()
        if task is None or self._owner is not task:
            raise RuntimeError(
                f"cannot release {self._describe()}: "
                + (
                    "it is not locked"
                    if self._owner is None
                    else f"it is held by task {_task_name(self._owner)!r}, "
                    f"not the current task"
                )
            )
        if is_debug():
            _pop_held(self, task)
        if self._waiters:
            self._hand_over()
        else:
            self._owner = None

    def _hand_over(self) -> None:
        waiters = self._waiters
        while waiters:
            fut, task = waiters.popleft()
            if not fut.done():
                self._owner = task
                fut.set_result(None)
                return
        self._owner = None

    def nested(self) -> _LockGuard:
        """Return an async context manager that takes the lock nested.

        ``async with lock.nested():`` is ``await lock.acquire(nested=True)``
        followed, on exit, by :meth:`release`.

        Returns:
            The context manager.

        Locking:
            As :meth:`acquire` with ``nested=True``.
        """
        return self._nested_cm

    async def __aenter__(self) -> None:
        task = _running_task()
        if task is not None and self._owner is None and not is_debug():
            self._owner = task
            return
        await self._acquire(task, False)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@final
class _ReadGuard:
    """``async with`` support for :meth:`OrderedRWLock.read`.

    Concurrency:
        Immutable; one instance may be shared by any number of tasks.
    """

    __slots__ = ("_lock", "_nested")

    def __init__(self, lock: OrderedRWLock, nested: bool) -> None:
        self._lock = lock
        self._nested = nested

    async def __aenter__(self) -> None:
        lock = self._lock
        task = _running_task()
        if not lock._try_read_now(task):
            await lock._acquire_read(task, self._nested)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release_read()


@final
class _WriteGuard:
    """``async with`` support for :meth:`OrderedRWLock.write`.

    Concurrency:
        Immutable; one instance may be shared by any number of tasks.
    """

    __slots__ = ("_lock", "_nested")

    def __init__(self, lock: OrderedRWLock, nested: bool) -> None:
        self._lock = lock
        self._nested = nested

    async def __aenter__(self) -> None:
        lock = self._lock
        task = _running_task()
        if not lock._try_write_now(task):
            await lock._acquire_write(task, self._nested)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock = self._lock
        if lock._writer is not None:
            lock.release_write()
        else:
            # The body downgraded to a read hold (or released by hand, in
            # which case release_read reports the misuse).
            lock.release_read()


@final
class OrderedRWLock(_RankedLock):
    """An async reader/writer lock with a rank in the lock order.

    Any number of tasks may hold the lock for reading at once; a writer holds
    it alone. Reading and writing acquisitions are ranked alike.

    Fairness rules:

    * Writers are preferred: a reader that arrives while a writer holds the
      lock or *waits* for it queues, so a stream of readers cannot starve a
      writer.
    * Readers are not starved either: when a writer releases the lock (or
      downgrades), every reader queued at that moment is admitted together,
      before the next writer; that writer then waits for them to finish.
    * Writers are served first in, first out, and the lock is handed directly
      to the next waiter, so no arriving task can overtake a woken one.
    * :meth:`downgrade` turns the writer into a reader without releasing the
      lock in between: the readers queued at that moment are admitted, and
      waiting writers keep waiting.

    A task may hold the lock only once: taking it again in either mode while
    holding it raises rather than deadlocking (with writers preferred, a
    second read acquisition would hang behind a waiting writer).

    Args:
        rank: Where the lock sits in the lock order.
        name: A non-empty name for error messages, e.g.
            ``"AddressSpace.active"``.

    Raises:
        TypeError: ``rank`` is not a :class:`LockRank` or ``name`` not a str.
        ValueError: ``name`` is empty.

    Invariants:
        There is never a writer and a reader at once. If nothing holds the
        lock, no task waits for it. A reader waits only while a writer holds
        the lock or waits for it.

    Concurrency:
        Task-safe within one event loop; not thread-safe.
    """

    __slots__ = (
        "_read_cm",
        "_read_waiters",
        "_readers",
        "_write_cm",
        "_write_waiters",
        "_writer",
    )

    def __init__(self, rank: LockRank, name: str) -> None:
        super().__init__(rank, name)
        self._writer: asyncio.Task[object] | None = None
        self._readers: set[asyncio.Task[object]] = set()
        self._read_waiters: collections.deque[_Waiter] = collections.deque()
        self._write_waiters: collections.deque[_Waiter] = collections.deque()
        self._read_cm = _ReadGuard(self, nested=False)
        self._write_cm = _WriteGuard(self, nested=False)

    def __repr__(self) -> str:
        if self._writer is not None:
            state = f"write-locked by {_task_name(self._writer)!r}"
        elif self._readers:
            state = f"read-locked by {len(self._readers)} task(s)"
        else:
            state = "unlocked"
        return (
            f"<OrderedRWLock {self._name!r} rank={self._rank.name} {state} "
            f"read_waiters={len(self._read_waiters)} "
            f"write_waiters={len(self._write_waiters)}>"
        )

    def locked(self) -> bool:
        """Return whether some task holds the lock, for reading or writing."""
        return self._writer is not None or bool(self._readers)

    def write_locked(self) -> bool:
        """Return whether some task holds the lock for writing."""
        return self._writer is not None

    def reader_count(self) -> int:
        """Return how many tasks hold the lock for reading."""
        return len(self._readers)

    def owned_by_current_task(self) -> bool:
        """Return whether the current task holds the lock in either mode.

        Returns ``False`` when called outside a task.
        """
        try:
            task = _running_task()
        except RuntimeError:
            return False
        return task is not None and self._is_held_by(task)

    def write_owned_by_current_task(self) -> bool:
        """Return whether the current task holds the lock for writing.

        Returns ``False`` when called outside a task.
        """
        try:
            task = _running_task()
        except RuntimeError:
            return False
        return task is not None and self._writer is task

    def _is_held_by(self, task: asyncio.Task[object]) -> bool:
        return self._writer is task or task in self._readers

    def _check_entry(
        self, task: asyncio.Task[object] | None, nested: bool, what: str
    ) -> asyncio.Task[object]:
        """Apply the checks every acquisition makes before it may wait."""
        if task is None:
            raise RuntimeError(f"OrderedRWLock.{what} must be called inside a task")
        if self._writer is task:
            mode = "writing"
        elif task in self._readers:
            mode = "reading"
        else:
            if is_debug():
                _check_order(self, task, nested=nested)
            return task
        raise LockOrderError(
            f"the current task already holds {self._describe()} for {mode}; "
            f"OrderedRWLock is not reentrant"
        )

    async def acquire_read(self, *, nested: bool = False) -> None:
        """Take the lock for reading.

        Args:
            nested: As for :meth:`OrderedLock.acquire`.

        Raises:
            LockOrderError: The current task already holds the lock in either
                mode (always checked), or, with debug checks on, taking it
                would break the lock order. Raised before waiting.
            RuntimeError: Not called from inside an asyncio task.

        Postconditions:
            The current task holds the lock for reading.

        Locking:
            Takes this lock shared. Waits while a writer holds it or waits for
            it (see the fairness rules in the class docstring).

        Cancellation:
            If cancelled while waiting, the task does not get the lock and no
            other waiter is affected; if it had already been admitted, it
            releases its read hold before the cancellation propagates.
        """
        task = _running_task()
        if not self._try_read_now(task):
            await self._acquire_read(task, nested)

    def _try_read_now(self, task: asyncio.Task[object] | None) -> bool:
        """Take a read hold without waiting or tracking, if nothing stands in the way.

        The uncontended path of every read acquisition while debug checks are
        off; it never yields to the loop.
        """
        if (
            task is not None
            and self._writer is None
            and not self._write_waiters
            and not is_debug()
            and task not in self._readers
        ):
            self._readers.add(task)
            return True
        return False

    async def _acquire_read(
        self, task: asyncio.Task[object] | None, nested: bool
    ) -> None:
        """Take the lock for reading: the general path."""
        task = self._check_entry(task, nested, "acquire_read")
        if self._writer is None and not self._write_waiters:
            self._readers.add(task)
        else:
            fut: asyncio.Future[None] = task.get_loop().create_future()
            waiter = (fut, task)
            self._read_waiters.append(waiter)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    # Admitted just before the cancellation landed: leave.
                    self._readers.discard(task)
                    if not self._readers:
                        self._wake(readers_first=False)
                else:
                    _discard(self._read_waiters, waiter)
                raise
        if is_debug():
            _push_held(self, task)

    async def acquire_write(self, *, nested: bool = False) -> None:
        """Take the lock for writing.

        Args:
            nested: As for :meth:`OrderedLock.acquire`.

        Raises:
            LockOrderError: The current task already holds the lock in either
                mode (always checked), or, with debug checks on, taking it
                would break the lock order. Raised before waiting.
            RuntimeError: Not called from inside an asyncio task.

        Postconditions:
            The current task holds the lock alone.

        Locking:
            Takes this lock exclusively. Waits for the current holders and
            for earlier writers (see the fairness rules in the class
            docstring).

        Cancellation:
            If cancelled while waiting, the task does not get the lock, and
            readers that queued only because it waited are admitted; if it had
            already been handed the lock, it is passed on before the
            cancellation propagates.
        """
        task = _running_task()
        if not self._try_write_now(task):
            await self._acquire_write(task, nested)

    def _try_write_now(self, task: asyncio.Task[object] | None) -> bool:
        """Take the lock for writing without waiting or tracking, if it is free.

        The uncontended path of every write acquisition while debug checks
        are off; it never yields to the loop.
        """
        if (
            task is not None
            and self._writer is None
            and not self._readers
            and not self._write_waiters
            and not self._read_waiters
            and not is_debug()
        ):
            self._writer = task
            return True
        return False

    async def _acquire_write(
        self, task: asyncio.Task[object] | None, nested: bool
    ) -> None:
        """Take the lock for writing: the general path."""
        task = self._check_entry(task, nested, "acquire_write")
        if (
            self._writer is None
            and not self._readers
            and not self._write_waiters
            and not self._read_waiters
        ):
            self._writer = task
        else:
            fut: asyncio.Future[None] = task.get_loop().create_future()
            waiter = (fut, task)
            self._write_waiters.append(waiter)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    # Handed the lock just before the cancellation landed.
                    self._writer = None
                    self._wake(readers_first=True)
                else:
                    _discard(self._write_waiters, waiter)
                    # Readers may have queued only because this task waited.
                    self._wake(readers_first=False)
                raise
        if is_debug():
            _push_held(self, task)

    def release_read(self) -> None:
        """Release the current task's read hold.

        Raises:
            RuntimeError: The current task does not hold the lock for reading.

        Postconditions:
            The current task no longer holds the lock. If it was the last
            reader, the next writer holds the lock.

        Locking:
            Releases this lock; never waits.
        """
        task = _running_task()
        readers = self._readers
        if task is None or task not in readers:
            raise RuntimeError(
                f"cannot release {self._describe()} for reading: the current "
                f"task does not hold it for reading"
            )
        if is_debug():
            _pop_held(self, task)
        readers.discard(task)
        if not readers and (self._write_waiters or self._read_waiters):
            self._wake(readers_first=False)

    def release_write(self) -> None:
        """Release the current task's write hold.

        Raises:
            RuntimeError: The current task does not hold the lock for writing.

        Postconditions:
            The current task no longer holds the lock. The readers queued at
            this moment, if any, have been admitted; otherwise the next writer
            holds the lock.

        Locking:
            Releases this lock; never waits.
        """
        task = _running_task()
        if task is None or self._writer is not task:
            raise RuntimeError(
                f"cannot release {self._describe()} for writing: the current "
                f"task does not hold it for writing"
            )
        if is_debug():
            _pop_held(self, task)
        self._writer = None
        if self._write_waiters or self._read_waiters:
            self._wake(readers_first=True)

    def downgrade(self) -> None:
        """Turn the current task's write hold into a read hold, atomically.

        No writer can take the lock in between. The readers queued at this
        moment are admitted alongside; waiting writers keep waiting until every
        reader, this task included, has released.

        Raises:
            RuntimeError: The current task does not hold the lock for writing.

        Postconditions:
            The current task holds the lock for reading. Inside
            ``async with lock.write():``, leaving the block releases the read
            hold.

        Locking:
            Never waits; the lock stays held throughout.
        """
        task = _running_task()
        if task is None or self._writer is not task:
            raise RuntimeError(
                f"cannot downgrade {self._describe()}: the current task does "
                f"not hold it for writing"
            )
        self._writer = None
        self._readers.add(task)
        self._wake(readers_first=True)

    def _wake(self, *, readers_first: bool) -> None:
        """Admit whoever the fairness rules say goes next, if anyone can go.

        Args:
            readers_first: A write phase just ended, so the readers queued
                during it go before the next writer.
        """
        if self._writer is not None:
            return
        write_waiters = self._write_waiters
        while write_waiters and write_waiters[0][0].done():
            write_waiters.popleft()
        read_waiters = self._read_waiters
        if read_waiters and (readers_first or not write_waiters):
            readers = self._readers
            while read_waiters:
                fut, task = read_waiters.popleft()
                if not fut.done():
                    readers.add(task)
                    fut.set_result(None)
            return
        if write_waiters and not self._readers:
            fut, task = write_waiters.popleft()
            self._writer = task
            fut.set_result(None)

    def read(self, *, nested: bool = False) -> _ReadGuard:
        """Return an async context manager holding the lock for reading.

        Args:
            nested: As for :meth:`OrderedLock.acquire`.

        Returns:
            The context manager: ``async with lock.read(): ...``.

        Locking:
            As :meth:`acquire_read`, then :meth:`release_read` on exit.
        """
        return _ReadGuard(self, nested=True) if nested else self._read_cm

    def write(self, *, nested: bool = False) -> _WriteGuard:
        """Return an async context manager holding the lock for writing.

        If the body calls :meth:`downgrade`, leaving the block releases the
        read hold instead.

        Args:
            nested: As for :meth:`OrderedLock.acquire`.

        Returns:
            The context manager: ``async with lock.write(): ...``.

        Locking:
            As :meth:`acquire_write`, then :meth:`release_write` (or
            :meth:`release_read` after a downgrade) on exit.
        """
        return _WriteGuard(self, nested=True) if nested else self._write_cm
