"""EngineThread: an engine on a daemon thread and event loop of its own.

Synchronous programs (and code on other event loops) use an
:class:`~aiomemmap.Engine` through an :class:`EngineThread`: the engine runs
on an event loop in a daemon thread, and every call is handed to that loop
(``loop.call_soon_threadsafe``), run there as a task, and its result,
exception or cancellation carried back through a
:class:`concurrent.futures.Future`. Nothing of the engine is touched by any
other thread.

Why not anyio's ``BlockingPortal``: it spawns each call through a round trip
to the loop before the call itself runs, so a call costs about two hand-offs
between threads instead of one; measured here, a portal call of a coroutine
that returns at once took 1.5 to 2.7 times as long as a hand-off through
``call_soon_threadsafe`` (130-160 us against 55-100 us, uvloop and asyncio
loops), and the synchronous file faces make one call per read.

Lifetime:

* :meth:`EngineThread.close` cancels the calls in flight, closes the engine
  (every open file, its backing, the memory file) and ends the thread.
* At interpreter exit, every engine thread still running is closed by an
  :mod:`atexit` handler (with a deadline, after which the daemon thread is
  left to die with the process), so exit neither hangs nor leaves sessions
  unclosed.
* In a child process made by :func:`os.fork`, the thread does not exist:
  every engine thread of the parent is marked as forked, and using it raises
  :class:`~aiomemmap.ClosedError` at once (never a hang). The child starts
  engines of its own (:func:`~aiomemmap.default_engine` does so by itself).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib
import importlib.util
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar, TypeVarTuple, final

from aiomemmap._core.errors import ClosedError

if TYPE_CHECKING:
    from aiomemmap.engine.engine import Engine, EngineStatistics
    from aiomemmap.mappables.cached_file import CachedFile

__all__ = ["EXIT_DEADLINE", "EngineThread"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

EXIT_DEADLINE: Final[float] = 10.0
"""Seconds the exit handler gives each engine thread to close."""

START_DEADLINE: Final[float] = 60.0
"""Seconds :meth:`Engine.start_thread` waits for the new loop to run."""


@final
class EngineThread:
    """An :class:`~aiomemmap.Engine` running on a daemon thread's event loop.

    Made by :meth:`Engine.start_thread` (or :func:`~aiomemmap.default_engine`).
    From any other thread::

        et = Engine.start_thread(cache_limit=256 << 20)
        f = et.open_file("https://host/data.bin")   # a CachedFile
        head = et.call(f.read, 0, 4096)             # run on the engine's loop
        et.close_file(f)
        et.close()

    The :class:`~aiomemmap.CachedFile` that :meth:`open_file` returns lives
    on the engine's loop: call its coroutines through :meth:`call` (or
    :meth:`start_call`), never directly. :func:`aiomemmap.open` wraps all of
    this in a file object.

    Concurrency:
        Thread-safe: every method may be called from any thread but the
        engine's own (where the blocking ones raise ``RuntimeError`` instead
        of deadlocking; :meth:`call_soon` works there too). Calls run
        concurrently on the engine's loop, each as a task of its own.
    """

    __slots__ = (
        "__weakref__",
        "_accepting",
        "_calls",
        "_closed",
        "_engine",
        "_finished",
        "_forked",
        "_lock",
        "_loop",
        "_pid",
        "_stop",
        "_thread",
    )

    def __init__(self, engine: Engine, *, use_uvloop: bool | None = None) -> None:
        """Start ``engine`` on a new thread (use :meth:`Engine.start_thread`).

        Raises:
            ImportError: ``use_uvloop`` is true and uvloop is not installed.
            RuntimeError: The loop did not start.
        """
        if use_uvloop is None:
            use_uvloop = importlib.util.find_spec("uvloop") is not None
        elif use_uvloop and importlib.util.find_spec("uvloop") is None:
            raise ImportError("use_uvloop=True, but uvloop is not installed")
        self._engine = engine
        self._lock = threading.Lock()
        # Protected by self._lock: _closed and _accepting change once, in
        # close(); _forked in the fork hook.
        self._closed = False
        self._accepting = True
        self._forked = False
        self._pid = os.getpid()
        # The tasks of the calls in flight; used on the engine's loop only.
        self._calls: set[asyncio.Task[object]] = set()
        # Done when the thread ends: the engine's closing error, if any.
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        started: concurrent.futures.Future[
            tuple[asyncio.AbstractEventLoop, asyncio.Event]
        ] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run,
            args=(bool(use_uvloop), started),
            name=f"aiomemmap-engine-{id(engine):x}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._loop, self._stop = started.result(timeout=START_DEADLINE)
        except concurrent.futures.TimeoutError as exc:
            raise RuntimeError("the engine thread did not start its loop") from exc
        _live.add(self)

    def __repr__(self) -> str:
        if self._forked:
            state = f"of process {self._pid} (forked)"
        else:
            state = "closed" if self._closed else "running"
        return f"<EngineThread {self._thread.name} {state}>"

    @property
    def engine(self) -> Engine:
        """The engine: use it only in coroutines run by :meth:`call`."""
        return self._engine

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The engine's event loop."""
        return self._loop

    @property
    def closed(self) -> bool:
        """Whether the thread was closed, or belongs to a parent process."""
        return self._closed or self._forked

    @property
    def thread(self) -> threading.Thread:
        """The daemon thread the engine's loop runs in."""
        return self._thread

    # ------------------------------------------------------------------
    # Calls

    def call(self, func: Callable[[*_Ts], Awaitable[_T]], *args: *_Ts) -> _T:
        """Run ``await func(*args)`` on the engine's loop; wait for its result.

        Args:
            func: A coroutine function (or any callable returning an
                awaitable), e.g. a bound method of the engine or of a file
                it opened.
            *args: Its arguments.

        Returns:
            What it returned.

        Raises:
            ClosedError: The thread is closed (before or during the call), or
                belongs to the parent of this forked process.
            RuntimeError: Called from the engine's own thread.
            BaseException: Whatever ``func`` raised, re-raised here.

        Cancellation:
            An exception raised in the waiting thread (``KeyboardInterrupt``)
            cancels the call on the engine's loop.
        """
        future = self.start_call(func, *args)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def start_call(
        self, func: Callable[[*_Ts], Awaitable[_T]], *args: *_Ts
    ) -> concurrent.futures.Future[_T]:
        """Start ``await func(*args)`` on the engine's loop; return its future.

        From async code on another loop, ``await asyncio.wrap_future(
        et.start_call(...))`` waits without blocking that loop.

        Returns:
            A future of the result: cancelling it cancels the call on the
            engine's loop; closing the thread during the call sets
            :class:`~aiomemmap.ClosedError` on it.

        Raises:
            ClosedError: The thread is closed, or belongs to the parent of
                this forked process.
            RuntimeError: Called from the engine's own thread.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                f"{self!r}: a blocking call from the engine's own thread would "
                "never finish; await the coroutine there instead"
            )
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._schedule(func, args, future)
        return future

    def call_soon(self, func: Callable[[*_Ts], Awaitable[object]], *args: *_Ts) -> None:
        """Start ``await func(*args)`` on the engine's loop without waiting.

        Works from any thread, the engine's own included; does nothing once
        the thread is closed or forked. An error of the call goes to the
        loop's exception handler.
        """
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        try:
            self._schedule(func, args, future)
        except ClosedError:
            return
        future.add_done_callback(self._report)

    def _schedule(
        self,
        func: Callable[..., Awaitable[_T]],
        args: tuple[object, ...],
        future: concurrent.futures.Future[_T],
    ) -> None:
        call = _Call(self, func, args, future)
        with self._lock:
            self._check_usable()
            if not self._accepting:
                raise ClosedError(f"{self!r} is closed")
            self._loop.call_soon_threadsafe(call.start)

    # ------------------------------------------------------------------
    # The engine's methods, from this side

    def open_file(self, url_or_path: str, /, **storage_options: object) -> CachedFile:
        """Open an object for one more user (:meth:`Engine.open_file`).

        Returns:
            The shared cached file: call its coroutines through :meth:`call`
            and give it back with :meth:`close_file`.

        Raises:
            As :meth:`Engine.open_file`, and as :meth:`call`.
        """

        async def open_it() -> CachedFile:
            return await self._engine.open_file(url_or_path, **storage_options)

        return self.call(open_it)

    def close_file(self, cached_file: CachedFile) -> None:
        """Give back one open of ``cached_file`` (:meth:`Engine.close_file`).

        Raises:
            As :meth:`Engine.close_file`, and as :meth:`call`.
        """
        self.call(self._engine.close_file, cached_file)

    def statistics(self) -> EngineStatistics:
        """Return the engine's counters (:meth:`Engine.statistics`).

        Raises:
            As :meth:`call`.
        """

        async def stats() -> EngineStatistics:
            return self._engine.statistics()

        return self.call(stats)

    # ------------------------------------------------------------------
    # Lifetime

    def __enter__(self) -> EngineThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, *, timeout: float | None = None) -> None:
        """Close the engine and stop the thread; later calls do nothing.

        Calls still running on the loop are cancelled (their callers get
        :class:`~aiomemmap.ClosedError`), then every file, backing and the
        engine's memory file are closed, and the thread ends.

        Args:
            timeout: Seconds to wait for the thread to end; ``None`` waits
                as long as it takes.

        Raises:
            RuntimeError: Called from the engine's own thread.
            TimeoutError: The thread did not end within ``timeout`` (it
                is a daemon thread: it does not keep the process alive).
            Exception: The first error of closing the engine (it is closed
                anyway).
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(f"{self!r} cannot be closed from its own thread")
        with self._lock:
            if self._closed or self._forked:
                self._closed = True
                return
            self._closed = True
            self._accepting = False
            _live.discard(self)
            # Calls queued before this point see _accepting false and fail.
            self._loop.call_soon_threadsafe(self._stop.set)
        try:
            error = self._finished.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self!r} did not stop within {timeout} s") from None
        self._thread.join()
        if error is not None:
            raise error

    def _check_usable(self) -> None:
        if self._forked:
            raise ClosedError(
                f"{self!r} belongs to process {self._pid}; this is a child "
                f"made by fork() (pid {os.getpid()}), where it has no thread. "
                "Open files again in the child: aiomemmap.default_engine() "
                "gives it an engine of its own"
            )
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    def _mark_forked(self) -> None:
        # In the child, right after fork: only this thread exists, so the
        # lock (which another thread may have held at the fork) is replaced.
        self._lock = threading.Lock()
        self._forked = True

    @staticmethod
    def _report(future: concurrent.futures.Future[object]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not isinstance(exc, ClosedError):
            import logging

            logging.getLogger("aiomemmap").error(
                "a call_soon() of an engine thread failed", exc_info=exc
            )

    # ------------------------------------------------------------------
    # The thread

    def _run(
        self,
        use_uvloop: bool,
        started: concurrent.futures.Future[
            tuple[asyncio.AbstractEventLoop, asyncio.Event]
        ],
    ) -> None:
        """The body of the thread: run the loop until closed, then close."""
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if use_uvloop:
            factory = importlib.import_module("uvloop").new_event_loop
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._serve(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            self._finished.set_exception(exc)
        else:
            self._finished.set_result(None)

    async def _serve(
        self,
        started: concurrent.futures.Future[
            tuple[asyncio.AbstractEventLoop, asyncio.Event]
        ],
    ) -> None:
        stop = asyncio.Event()
        async with self._engine:
            started.set_result((asyncio.get_running_loop(), stop))
            await stop.wait()
            calls = list(self._calls)
            for task in calls:
                task.cancel()
            if calls:
                await asyncio.wait(calls)


@final
class _Call:
    """One call handed to the engine's loop: its task and its future.

    Concurrency:
        :meth:`start` and the task's callback run on the engine's loop; the
        future's callbacks may run on any thread and only hand work to the
        loop.
    """

    __slots__ = ("args", "func", "future", "owner", "task")

    def __init__(
        self,
        owner: EngineThread,
        func: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        future: concurrent.futures.Future[_T],
    ) -> None:
        self.owner = owner
        self.func = func
        self.args = args
        self.future: concurrent.futures.Future[object] = future  # type: ignore[assignment]
        self.task: asyncio.Task[object] | None = None

    def start(self) -> None:
        """Start the call's task, unless the future was cancelled first."""
        future, owner = self.future, self.owner
        if future.cancelled():
            return
        if not owner._accepting:
            if future.set_running_or_notify_cancel():
                future.set_exception(ClosedError(f"{owner!r} is closed"))
            return
        task = owner._loop.create_task(_awaited(self.func, self.args))
        self.task = task
        owner._calls.add(task)
        task.add_done_callback(self._done)
        # The future stays pending while the task runs, so that its owner
        # can still cancel it; a cancellation is handed to the loop.
        future.add_done_callback(self._future_done)

    def _future_done(self, future: concurrent.futures.Future[object]) -> None:
        if future.cancelled():
            with contextlib.suppress(RuntimeError):  # The loop is closed.
                self.owner._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        task = self.task
        if task is not None:
            task.cancel()

    def _done(self, task: asyncio.Task[object]) -> None:
        owner, future = self.owner, self.future
        owner._calls.discard(task)
        if not future.set_running_or_notify_cancel():
            return  # Cancelled by its owner.
        if task.cancelled():
            future.set_exception(ClosedError(f"{owner!r} closed during the call"))
            return
        exc = task.exception()
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(task.result())


async def _awaited(func: Callable[..., Awaitable[_T]], args: tuple[object, ...]) -> _T:
    return await func(*args)


# Every engine thread that runs, for the exit handler and the fork hook.
_live: Final[weakref.WeakSet[EngineThread]] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    # Exit goes on whatever a close raises: the process ends anyway.
    for engine_thread in list(_live):
        with contextlib.suppress(Exception):
            engine_thread.close(timeout=EXIT_DEADLINE)


def _after_fork_in_child() -> None:
    for engine_thread in list(_live):
        engine_thread._mark_forked()
    _live.clear()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
