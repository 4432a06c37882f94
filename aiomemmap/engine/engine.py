"""Engine: one memory file, one bus and the open files every user shares.

An :class:`Engine` is what a program embeds to read remote and local files
through aiomemmap, in the way gVisor's kernel owns the memory file that every
file cache of the sandbox allocates from. It owns:

* a :class:`~aiomemmap.MemoryFile` holding every cached page, with the cache
  budget (``cache_limit``), or uses one it is given (without owning it);
* an :class:`~aiomemmap.InvalidationBus`, passed to every file it opens (a
  bus serves one event loop: the engine's);
* a registry of open :class:`~aiomemmap.CachedFile` objects keyed by the
  normalised URL or path and the storage options
  (:mod:`aiomemmap.engine.file_key`), so that every user of one object
  shares one cache and one fetch per page.

Each open file is reference counted by its users: :meth:`Engine.open_file`
adds a user (opening the backing and the cached file for the first),
:meth:`Engine.close_file` removes one, and the last one closes the cached
file and its backing. Closing the engine closes every file, whoever still
uses it.

An engine runs on one event loop, the one it is first used on: the caller's
(``async with Engine() as engine``), or one of its own on a thread
(:meth:`Engine.start_thread`, see :mod:`aiomemmap.engine.thread`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Final, Protocol, final, overload

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import BusError, ClosedError, WrongLoopError
from aiomemmap._core.pages import is_int
from aiomemmap.backings.base import Backing
from aiomemmap.backings.opener import open_backing
from aiomemmap.engine.file_key import FileKey, file_key
from aiomemmap.mappables.cached_file import CachedFile, CacheStatistics
from aiomemmap.memmap.bus import InvalidationBus
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryFileStatistics

if TYPE_CHECKING:
    from aiomemmap.engine.thread import EngineThread

__all__ = ["Engine", "EngineStatistics"]

_CACHE_FIELDS: Final = (
    "hits",
    "misses",
    "fetches",
    "bytes_fetched",
    "fetches_in_flight",
    "resident_bytes",
    "dirty_bytes",
    "evictions",
)


@final
@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """A snapshot of an engine's counters.

    Attributes:
        open_files: Cached files open now (one per object, however many
            users share it).
        users: Users of those files: opens not yet matched by a close.
        files_opened: Cached files the engine has created since it started
            (an object opened again after its last user left counts again).
        cache: The counters of the open files, added up field by field.
        files: The counters of each open file, by its normalised URL or
            path (objects opened with different storage options appear
            once each, under the same name, the last one listed winning).
        memory: The memory file's sizes, or ``None`` once the engine has
            closed a memory file it owned.

    Concurrency:
        Immutable.
    """

    open_files: int
    users: int
    files_opened: int
    cache: CacheStatistics
    files: Mapping[str, CacheStatistics]
    memory: MemoryFileStatistics | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


@final
class _OpenFile:
    """One object of the registry: its cached file, backing and users.

    Concurrency:
        Task-compatible: used on the engine's loop only.
    """

    __slots__ = ("backing", "cached_file", "closed", "key", "users")

    def __init__(self, key: FileKey, cached_file: CachedFile, backing: Backing) -> None:
        self.key = key
        self.cached_file = cached_file
        self.backing = backing
        self.users = 0
        self.closed = False


class _StartNew(Protocol):
    def __call__(
        self,
        *,
        cache_limit: int | None = None,
        memory_file: MemoryFile | None = None,
        use_uvloop: bool | None = None,
    ) -> EngineThread: ...


class _StartThis(Protocol):
    def __call__(self, *, use_uvloop: bool | None = None) -> EngineThread: ...


@final
class _ThreadStarter:
    """``Engine.start_thread``: a new engine on the class, this one on an engine."""

    @overload
    def __get__(self, engine: None, owner: type[Engine]) -> _StartNew: ...

    @overload
    def __get__(self, engine: Engine, owner: type[Engine]) -> _StartThis: ...

    def __get__(
        self, engine: Engine | None, owner: type[Engine]
    ) -> _StartNew | _StartThis:
        if engine is not None:
            return engine._start_thread

        def start_new(
            *,
            cache_limit: int | None = None,
            memory_file: MemoryFile | None = None,
            use_uvloop: bool | None = None,
        ) -> EngineThread:
            new = owner(cache_limit=cache_limit, memory_file=memory_file)
            return new._start_thread(use_uvloop=use_uvloop)

        return start_new


@final
class Engine:
    """The embedding unit: a memory file, a bus and shared open files.

    Use it on an event loop::

        async with Engine(cache_limit=256 << 20) as engine:
            f = await engine.open_file("https://host/data.bin")
            try:
                head = await f.read(0, 4096)
            finally:
                await engine.close_file(f)

    or on a thread of its own for synchronous code (:meth:`start_thread`).

    Args:
        cache_limit: The most bytes of cached pages the engine's memory file
            keeps (least recently used pages are evicted beyond it); ``None``
            for no limit. Only with a memory file the engine creates.
        memory_file: A memory file to allocate from instead of creating one;
            the engine does not close it.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``cache_limit`` is out of range, or both arguments are
            given (a given memory file has its own budget).

    Concurrency:
        Task-safe on the event loop the engine runs on: the loop of its first
        :meth:`open_file` (or of ``async with``). Its coroutines, and the
        files it returns, must be used on that loop only;
        :class:`~aiomemmap.EngineThread` (and the sync and async files of
        :mod:`aiomemmap.faces`) hand calls made elsewhere to that loop.
        :meth:`statistics` may also be called from the loop's thread when
        no loop is running.
    """

    __slots__ = (
        "__weakref__",
        "_bus",
        "_by_id",
        "_closed",
        "_files",
        "_files_opened",
        "_loop_ref",
        "_memory_file",
        "_owns_memory_file",
        "_thread_id",
    )

    def __init__(
        self,
        *,
        cache_limit: int | None = None,
        memory_file: MemoryFile | None = None,
    ) -> None:
        if memory_file is not None and not isinstance(memory_file, MemoryFile):
            raise TypeError(
                f"Engine: memory_file must be a MemoryFile or None, got {memory_file!r}"
            )
        if cache_limit is not None and not is_int(cache_limit):
            raise TypeError(
                f"Engine: cache_limit must be an int or None, got {cache_limit!r}"
            )
        if memory_file is not None and cache_limit is not None:
            raise ValueError(
                "Engine: give cache_limit or memory_file, not both "
                "(a memory file has its own cache_limit)"
            )
        if memory_file is not None and memory_file.closed:
            raise ClosedError(f"Engine: {memory_file!r} is closed")
        if memory_file is None:
            memory_file = MemoryFile("aiomemmap-engine", cache_limit=cache_limit)
            self._owns_memory_file = True
        else:
            self._owns_memory_file = False
        self._memory_file = memory_file
        self._bus = InvalidationBus(name=f"the bus of engine {id(self):#x}")
        # Both protected by running on the engine's loop only.
        self._files: dict[FileKey, _OpenFile] = {}
        self._by_id: dict[int, _OpenFile] = {}
        self._files_opened = 0
        self._closed = False
        self._loop_ref: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._thread_id: int | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"files={len(self._files)}"
        return f"<Engine {id(self):#x} {state}>"

    # ------------------------------------------------------------------
    # Properties

    @property
    def memory_file(self) -> MemoryFile:
        """The memory file every cached page of the engine lives in."""
        return self._memory_file

    @property
    def bus(self) -> InvalidationBus:
        """The bus the engine's files publish invalidations on.

        Address spaces that map the engine's files should be created with
        ``bus=engine.bus`` and ``memory_file=engine.memory_file``.
        """
        return self._bus

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has started."""
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the engine runs on; ``None`` before its first use."""
        ref = self._loop_ref
        return None if ref is None else ref()

    # ------------------------------------------------------------------
    # Lifetime

    async def __aenter__(self) -> Engine:
        self._enter_loop()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every open file and its backing, then an owned memory file.

        Files are closed whoever still uses them: their later use raises
        :class:`~aiomemmap.ClosedError`. Later calls do nothing.

        Raises:
            WrongLoopError: Called on another loop than the engine's.
            Exception: The first error of closing a file or backing; every
                other file and backing is closed anyway.

        Postconditions:
            ``closed``; no page of the memory file belongs to a file of the
            engine (with a given memory file, the engine's use of it is 0).

        Cancellation:
            Once started, closing completes before the cancellation
            propagates.
        """
        self._enter_loop()
        if self._closed:
            return
        self._closed = True
        await finish_shielded(self._close_everything())

    async def _close_everything(self) -> None:
        entries = list(self._files.values())
        self._files.clear()
        self._by_id.clear()
        first_error: Exception | None = None
        for entry in entries:
            try:
                await self._close_entry(entry)
            except Exception as exc:
                if first_error is None:
                    first_error = exc
        if self._owns_memory_file:
            self._memory_file.close()
        if first_error is not None:
            raise first_error

    start_thread = _ThreadStarter()
    """Run an engine on a daemon thread and event loop of its own.

    For synchronous programs: every call made through the returned
    :class:`~aiomemmap.EngineThread` is handed to that loop. Called on the
    class, ``Engine.start_thread(cache_limit=..., memory_file=...,
    use_uvloop=...)`` creates the engine and starts it; called on an engine
    that was never used, ``engine.start_thread(use_uvloop=...)`` starts that
    one.

    Args:
        cache_limit: As for :class:`Engine` (on the class only).
        memory_file: As for :class:`Engine` (on the class only).
        use_uvloop: Run the thread's loop on uvloop: ``None`` when uvloop
            is installed, ``True`` to require it, ``False`` for asyncio's
            own loop.

    Returns:
        The running engine thread; closing it closes the engine.

    Raises:
        ClosedError: The engine is closed.
        RuntimeError: The engine already runs on a loop.
        ImportError: ``use_uvloop`` is true and uvloop is not installed.
    """

    def _start_thread(self, *, use_uvloop: bool | None = None) -> EngineThread:
        from aiomemmap.engine.thread import EngineThread

        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._loop_ref is not None:
            raise RuntimeError(
                f"{self!r} already runs on an event loop; start_thread() needs "
                "an engine that was never used"
            )
        return EngineThread(self, use_uvloop=use_uvloop)

    # ------------------------------------------------------------------
    # Files

    async def open_file(
        self, url_or_path: str, /, **storage_options: object
    ) -> CachedFile:
        """Open an object for one more user and return its cached file.

        The first open of an object (same normalised URL or path, same
        storage options) opens its backing
        (:func:`~aiomemmap.open_backing`, which takes the storage options)
        and a read-only :class:`~aiomemmap.CachedFile` in the engine's memory
        file; later opens, concurrent ones included, return that same file.
        Every open asks for the size (once per file), so that a missing
        object or refused credentials fail here and not at the first read.

        Read the file with its coroutines, e.g. ``await f.read(offset, n)``,
        on the engine's loop; give it back with :meth:`close_file` once per
        open. Do not close it yourself: other users may share it.

        Args:
            url_or_path: A local path or a URL (``https://``, ``s3://``, any
                fsspec URL).
            **storage_options: Options of the backing (e.g. ``headers`` for
                HTTP; ``endpoint_url``, ``key``, ``secret`` for S3).

        Returns:
            The shared cached file, its size known.

        Raises:
            TypeError, ValueError: Bad URL, path or options (nothing opened).
            FileNotFoundError, PermissionError, OSError: The object cannot be
                opened or its size not read (the error of the backing).
            ImportError: The protocol needs a package that is not installed.
            ClosedError: The engine is closed.
            WrongLoopError: Called on another loop than the engine's.

        Cancellation:
            The user is not added: an open cancelled while it waits for the
            size leaves the registry as it was (a file it created is closed
            again, unless a concurrent open shares it).
        """
        self._enter_loop()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        key = file_key(url_or_path, storage_options)
        entry = self._files.get(key)
        if entry is None:
            backing = open_backing(url_or_path, **storage_options)
            try:
                cached_file = CachedFile(
                    backing, self._memory_file, name=key.target, bus=self._bus
                )
            except BaseException:
                await finish_shielded(backing.aclose())
                raise
            entry = _OpenFile(key, cached_file, backing)
            self._files[key] = entry
            self._by_id[id(cached_file)] = entry
            self._files_opened += 1
        entry.users += 1
        try:
            # Any read learns the size; an empty one reads nothing else.
            await entry.cached_file.read(0, 0)
        except BaseException as exc:
            await finish_shielded(self._release(entry))
            if isinstance(exc, BusError) and isinstance(exc.err, Exception):
                raise exc.err from exc
            raise
        return entry.cached_file

    async def close_file(self, cached_file: CachedFile) -> None:
        """Give back one open of ``cached_file``; the last one closes it.

        Closing the file closes its backing too, and frees its pages.

        Args:
            cached_file: A file :meth:`open_file` returned.

        Raises:
            ValueError: ``cached_file`` is not open in this engine (never
                opened here, or given back as often as it was opened).
            OSError: Closing the file or its backing failed (it is closed
                and forgotten anyway).
            WrongLoopError: Called on another loop than the engine's.

        Cancellation:
            Once started, the close completes before the cancellation
            propagates.
        """
        self._enter_loop()
        entry = self._by_id.get(id(cached_file))
        if entry is None or entry.cached_file is not cached_file:
            if self._closed:
                return
            raise ValueError(
                f"{cached_file!r} is not open in {self!r} "
                "(never opened here, or closed as often as it was opened)"
            )
        await finish_shielded(self._release(entry))

    def users_of(self, cached_file: CachedFile) -> int:
        """Return how many opens of ``cached_file`` are not given back yet.

        Returns:
            The number of users; 0 for a file not open in this engine.
        """
        entry = self._by_id.get(id(cached_file))
        if entry is None or entry.cached_file is not cached_file:
            return 0
        return entry.users

    async def _release(self, entry: _OpenFile) -> None:
        if entry.closed:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        if self._files.get(entry.key) is entry:
            del self._files[entry.key]
        self._by_id.pop(id(entry.cached_file), None)
        await self._close_entry(entry)

    @staticmethod
    async def _close_entry(entry: _OpenFile) -> None:
        if entry.closed:
            return
        entry.closed = True
        entry.users = 0
        try:
            await entry.cached_file.aclose()
        finally:
            await entry.backing.aclose()

    # ------------------------------------------------------------------
    # Statistics

    def statistics(self) -> EngineStatistics:
        """Return the engine's counters, across its open files.

        Raises:
            WrongLoopError: Called from another thread than the engine
                loop's.

        Complexity:
            O(files x cached segments).
        """
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise WrongLoopError(
                f"{self!r} runs on a loop of another thread; ask its "
                "EngineThread for statistics() instead"
            )
        per_file = [
            (entry.key.target, entry.cached_file.statistics())
            for entry in self._files.values()
        ]
        totals = {
            name: sum(getattr(stats, name) for _, stats in per_file)
            for name in _CACHE_FIELDS
        }
        memory = None if self._memory_file.closed else self._memory_file.statistics()
        return EngineStatistics(
            open_files=len(self._files),
            users=sum(entry.users for entry in self._files.values()),
            files_opened=self._files_opened,
            cache=CacheStatistics(**totals),
            files=dict(per_file),
            memory=memory,
        )

    # ------------------------------------------------------------------
    # The loop

    def _enter_loop(self) -> None:
        """Bind the engine to the running loop, or check that it is bound to it.

        Raises:
            WrongLoopError: The engine runs on another loop.
            RuntimeError: No loop is running.
        """
        loop = asyncio.get_running_loop()
        ref = self._loop_ref
        if ref is None:
            self._loop_ref = weakref.ref(loop)
            self._thread_id = threading.get_ident()
            return
        bound = ref()
        if bound is not loop:
            raise WrongLoopError.between(
                repr(self),
                bound,
                loop,
                "An engine, its files and their connections serve the loop they "
                "were first used on. Create an engine in each asyncio.run() "
                "(async with Engine() as engine: ...), or share one across loops "
                "and threads through an EngineThread (Engine.start_thread(), "
                "aiomemmap.open).",
            )
