"""AsyncRemoteFile: a seekable binary file for asyncio code, over an engine.

:func:`open_async` opens a local or remote file on the caller's event loop::

    async with await aiomemmap.open_async("s3://bucket/key") as f:
        header = await f.read(4096)
        footer = await f.pread(f.size - 8, 8)

Without an engine argument, the file is served by the engine of the running
loop: one :class:`~aiomemmap.Engine` per event loop, started by the first
:func:`open_async` on that loop and closed when the last file opened through
it is closed (so a second ``asyncio.run`` starts afresh, and no engine
outlives its loop). Files of one object open at the same time on one loop
share one cache. A program that wants the cache to outlive its files passes
an engine of its own: an :class:`~aiomemmap.Engine` running on the same loop,
or an :class:`~aiomemmap.EngineThread`, whose cache every loop and thread of
the process may share (each call then crosses to the engine's thread without
blocking the caller's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeVar, final

from aiomemmap._core.cancel import finish_shielded
from aiomemmap._core.errors import ClosedError, WrongLoopError
from aiomemmap._core.pages import is_int
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.faces.landing import Landing
from aiomemmap.faces.position import seek_target
from aiomemmap.mappables.cached_file import CachedFile, CacheStatistics
from aiomemmap.mappables.page_cache import writable_bytes

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["AsyncRemoteFile", "open_async"]

_T = TypeVar("_T")

READ_CHUNK: Final[int] = 1 << 20
"""Bytes asked for at a time by ``read()`` past the known size."""


@final
class _LoopEngine:
    """The engine of one event loop and how many files use it.

    Concurrency:
        Task-compatible: used on its loop's thread only.
    """

    __slots__ = ("engine", "files")

    def __init__(self) -> None:
        self.engine = Engine()
        self.files = 0


# The engine of each event loop that has files open through open_async.
_loop_engines: Final[
    weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngine]
] = weakref.WeakKeyDictionary()
# Serialises changes of _loop_engines between loops in different threads.
_loop_engines_lock: Final = threading.Lock()


async def open_async(
    url_or_path: str,
    *,
    engine: Engine | EngineThread | None = None,
    **storage_options: object,
) -> AsyncRemoteFile:
    """Open a local or remote file for reading, on the caller's event loop.

    Args:
        url_or_path: A local path or a URL (``https://``, ``s3://``, any
            fsspec URL).
        engine: Whose cache to read through: ``None`` for the engine of
            the running loop (see the module docstring); an
            :class:`~aiomemmap.Engine` running on this loop; or an
            :class:`~aiomemmap.EngineThread`.
        **storage_options: Options of the backing (e.g. ``headers`` for
            HTTP; ``endpoint_url``, ``key``, ``secret`` for S3).

    Returns:
        The open file, positioned at 0.

    Raises:
        TypeError: ``url_or_path`` is not a str, or ``engine`` is not an
            engine.
        ValueError: A bad URL or path.
        FileNotFoundError, PermissionError, OSError: The object cannot be
            opened.
        ClosedError: The engine is closed.
        WrongLoopError: ``engine`` is an :class:`~aiomemmap.Engine` that
            runs on another loop.

    Cancellation:
        Nothing is left open.
    """
    if not isinstance(url_or_path, str):
        raise TypeError(f"url_or_path must be a str, got {url_or_path!r}")
    if engine is None:
        return await _open_on_loop_engine(url_or_path, storage_options)
    if isinstance(engine, Engine):
        opened = await _open_sized(engine, url_or_path, storage_options)
        return AsyncRemoteFile(_SameLoop(engine, None), *opened, url_or_path)
    if isinstance(engine, EngineThread):
        calls = _OtherLoop(engine)
        opened = await calls.run(
            _open_sized, engine.engine, url_or_path, storage_options
        )
        return AsyncRemoteFile(calls, *opened, url_or_path)
    raise TypeError(
        f"engine must be an Engine, an EngineThread or None, got {engine!r}"
    )


async def _open_on_loop_engine(
    url_or_path: str, storage_options: dict[str, object]
) -> AsyncRemoteFile:
    loop = asyncio.get_running_loop()
    with _loop_engines_lock:
        shared = _loop_engines.get(loop)
        if shared is None:
            shared = _LoopEngine()
            _loop_engines[loop] = shared
        shared.files += 1
    try:
        opened = await _open_sized(shared.engine, url_or_path, storage_options)
    except BaseException:
        await finish_shielded(_drop_loop_engine_user(loop, shared))
        raise
    return AsyncRemoteFile(_SameLoop(shared.engine, shared), *opened, url_or_path)


async def _open_sized(
    engine: Engine, url_or_path: str, storage_options: dict[str, object]
) -> tuple[CachedFile, int]:
    """Open through ``engine``; return the file and its size, read on its loop."""
    cached_file = await engine.open_file(url_or_path, **storage_options)
    size = cached_file.size
    return cached_file, 0 if size is None else size


async def _drop_loop_engine_user(
    loop: asyncio.AbstractEventLoop, shared: _LoopEngine
) -> None:
    """Count one file of ``shared`` less; close the engine after its last."""
    with _loop_engines_lock:
        shared.files -= 1
        last = shared.files == 0
        if last and _loop_engines.get(loop) is shared:
            del _loop_engines[loop]
    if last:
        await shared.engine.aclose()


@final
class _SameLoop:
    """Runs a file's calls on the caller's loop, where its engine runs."""

    __slots__ = ("engine", "loop", "shared")

    def __init__(self, engine: Engine, shared: _LoopEngine | None) -> None:
        self.engine = engine
        self.shared = shared
        self.loop = asyncio.get_running_loop()

    def check_loop(self) -> None:
        """Raise unless called on the loop the file was opened on."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            raise WrongLoopError.between(
                f"an AsyncRemoteFile of {self.engine!r}",
                self.loop,
                loop,
                "Its engine runs on the loop it was opened on: open the file "
                "again on this loop, or open it with engine= an EngineThread "
                "to use it from any loop.",
            )

    async def run(self, func: Callable[..., Awaitable[_T]], *args: object) -> _T:
        self.check_loop()
        return await func(*args)

    async def readinto(
        self, cached_file: CachedFile, offset: int, target: memoryview
    ) -> int:
        self.check_loop()
        # On this loop: the copy is made only if the read is not cancelled.
        return await cached_file.readinto(offset, target)

    async def release(self, cached_file: CachedFile) -> None:
        self.check_loop()
        shared = self.shared
        try:
            await self.engine.close_file(cached_file)
        finally:
            if shared is not None:
                await _drop_loop_engine_user(asyncio.get_running_loop(), shared)


@final
class _OtherLoop:
    """Runs a file's calls on an engine thread, awaited without blocking."""

    __slots__ = ("engine_thread",)

    def __init__(self, engine_thread: EngineThread) -> None:
        self.engine_thread = engine_thread

    def check_loop(self) -> None:
        """Any loop may call: the engine thread's loop serves them all."""

    async def run(self, func: Callable[..., Awaitable[_T]], *args: object) -> _T:
        future = self.engine_thread.start_call(func, *args)
        return await asyncio.wrap_future(future)

    async def readinto(
        self, cached_file: CachedFile, offset: int, target: memoryview
    ) -> int:
        # The engine's thread copies into the buffer; once this returns (or
        # raises) it no longer may.
        landing = Landing(target)
        try:
            return await self.run(landing.fill, cached_file, offset)
        finally:
            landing.withdraw()

    async def release(self, cached_file: CachedFile) -> None:
        # ClosedError: the engine thread closed, nothing to give back.
        with contextlib.suppress(ClosedError):
            await self.run(self.engine_thread.engine.close_file, cached_file)


@final
class AsyncRemoteFile:
    """A read-only, seekable binary file for asyncio, read through an engine.

    Made by :func:`aiomemmap.open_async`. Use it as an async context manager,
    or call :meth:`aclose`, which gives the engine's file back.

    Concurrency:
        Task-safe on the loop it was opened on. Reads that use the position
        (:meth:`read`, :meth:`readinto`) are serialised by a lock of the
        file; :meth:`pread` takes none, so many tasks read at once.
    """

    __slots__ = ("_calls", "_closed", "_file", "_lock", "_name", "_pos", "_size")

    def __init__(
        self,
        calls: _SameLoop | _OtherLoop,
        cached_file: CachedFile,
        size: int,
        name: str,
    ) -> None:
        """Wrap an open of ``cached_file`` (use :func:`aiomemmap.open_async`)."""
        self._calls = calls
        self._file = cached_file
        self._name = name
        self._size = size
        self._pos = 0
        self._closed = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pos={self._pos}"
        return f"<AsyncRemoteFile {self._name!r} size={self._size} {state}>"

    @property
    def name(self) -> str:
        """The URL or path the file was opened with."""
        return self._name

    @property
    def size(self) -> int:
        """The size of the object when it was opened."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    def tell(self) -> int:
        """Return the position.

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; past the end is allowed (reads there are empty).

        A plain method: moving the position never waits.

        Returns:
            The new position.

        Raises:
            TypeError: ``offset`` is not an int.
            ValueError: Bad ``whence``, a negative resulting position, or
                the file is closed.
        """
        if not is_int(offset):
            raise TypeError(f"offset must be an int, got {offset!r}")
        self._check_open()
        pos = self._pos = seek_target(self._pos, self._size, offset, whence)
        return pos

    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes at the position and move past them.

        Args:
            size: How many bytes at most; negative reads to the end.

        Returns:
            The bytes; empty at or past the end.

        Raises:
            ValueError: The file is closed.
            BusError: The storage failed (after retries).

        Cancellation:
            The position does not move.
        """
        if not is_int(size):
            raise TypeError(f"size must be an int, got {size!r}")
        async with self._lock:
            self._check_open()
            pos = self._pos
            if size >= 0:
                data = await self._calls.run(self._file.read, pos, int(size))
                self._pos = pos + len(data)
                return data
            parts: list[bytes] = []
            while True:
                want = max(self._size - pos, READ_CHUNK)
                data = await self._calls.run(self._file.read, pos, want)
                pos += len(data)
                if data:
                    parts.append(data)
                if len(data) < want:
                    break
            self._pos = pos
            return b"".join(parts)

    async def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into ``buffer`` at the position and move past what was read.

        The bytes are copied straight from the cache into ``buffer`` (by the
        engine's thread when the engine runs on one): nothing is allocated
        for them.

        Returns:
            How many bytes were read; 0 at or past the end.

        Raises:
            TypeError: ``buffer`` is not a buffer, or it is read-only.
            ValueError: The file is closed, or ``buffer`` is not contiguous.
            BusError: The storage failed (after retries).

        Postconditions:
            Nothing writes to ``buffer`` once the call has returned or
            raised.

        Cancellation:
            The position does not move. ``buffer`` is unchanged, except with
            an engine on another thread that had already copied the bytes
            when the cancellation arrived.
        """
        with writable_bytes("readinto", buffer) as target:
            async with self._lock:
                self._check_open()
                pos = self._pos
                n = await self._calls.readinto(self._file, pos, target)
                self._pos = pos + n
                return n

    async def pread(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset``, leaving the position alone.

        Raises:
            TypeError: ``offset`` or ``n`` is not an int.
            ValueError: ``offset`` or ``n`` is negative, or the file is
                closed.
            BusError: The storage failed (after retries).
        """
        if not is_int(offset) or not is_int(n):
            raise TypeError(f"offset and n must be ints, got {offset!r} and {n!r}")
        if offset < 0 or n < 0:
            raise ValueError(f"offset and n must be >= 0, got {offset} and {n}")
        self._check_open()
        return await self._calls.run(self._file.read, int(offset), int(n))

    async def statistics(self) -> CacheStatistics:
        """Return the counters of the shared cache of this file's object.

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return await self._calls.run(_statistics, self._file)

    async def __aenter__(self) -> AsyncRemoteFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Give the engine's file back; later calls do nothing.

        Raises:
            WrongLoopError: Called on another loop than the one the file was
                opened on (unless it reads through an engine thread); the
                file stays open.

        Cancellation:
            Once started, closing completes before the cancellation
            propagates.
        """
        if self._closed:
            return
        # From another loop the file stays open, to be closed on its own.
        self._calls.check_loop()
        self._closed = True
        await finish_shielded(self._calls.release(self._file))

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file")


async def _statistics(cached_file: CachedFile) -> CacheStatistics:
    return cached_file.statistics()
