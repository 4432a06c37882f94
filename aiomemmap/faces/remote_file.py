"""RemoteFile: a synchronous, seekable, thread-safe binary file over an engine.

:func:`open` gives synchronous programs (and the libraries they hand files
to: pyarrow, h5py, zipfile, pandas, ``io.BufferedReader``) a plain binary
file object whose reads go through an engine's shared page cache::

    import aiomemmap

    with aiomemmap.open("https://host/data.parquet") as f:
        table = pyarrow.parquet.read_table(f, columns=["x"])

Each read is handed to the engine's event loop, which runs on a thread of its
own (:class:`~aiomemmap.EngineThread`), and waited for; the calling thread
holds no lock of the engine. Every file of one object, in any thread, shares
one :class:`~aiomemmap.CachedFile`: each page is fetched once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, TypeVarTuple, final

from aiomemmap._core.errors import ClosedError
from aiomemmap._core.pages import is_int
from aiomemmap.engine.default import default_engine
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.faces.landing import Landing
from aiomemmap.faces.position import seek_target
from aiomemmap.mappables.cached_file import CachedFile, CacheStatistics
from aiomemmap.mappables.page_cache import writable_bytes

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["RemoteFile", "open"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

READ_CHUNK: Final[int] = 1 << 20
"""Bytes asked for at a time by ``readall`` past the known size."""

LINE_CHUNK: Final[int] = 8192
"""Bytes looked at a time by ``readline`` for the end of a line."""


class _Calls(Protocol):
    """How a file reaches its engine's loop from the calling thread."""

    @property
    def engine(self) -> Engine: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    def call(self, func: Callable[[*_Ts], Awaitable[_T]], *args: *_Ts) -> _T: ...

    def call_soon(
        self, func: Callable[[*_Ts], Awaitable[object]], *args: *_Ts
    ) -> None: ...


@final
class _EngineOnItsLoop:
    """Calls into an :class:`~aiomemmap.Engine` that runs on another thread's loop.

    For a synchronous file used from a worker thread of an async program
    (``asyncio.to_thread``) over the program's own engine.

    Concurrency:
        Thread-safe; blocking calls from the engine loop's thread raise.
    """

    __slots__ = ("_engine", "_loop")

    def __init__(self, engine: Engine) -> None:
        loop = engine.loop
        if loop is None or engine.closed:
            raise ValueError(
                f"{engine!r} does not run on an event loop yet (or is closed): "
                "use it (async with engine) before opening sync files over it"
            )
        self._engine = engine
        self._loop = loop

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def call(self, func: Callable[[*_Ts], Awaitable[_T]], *args: *_Ts) -> _T:
        if _on_loop_thread(self._loop):
            raise RuntimeError(
                f"a synchronous file over {self._engine!r} was used on the "
                "engine's own event loop, where waiting for it would deadlock; "
                "use aiomemmap.open_async there, or this file from another "
                "thread (asyncio.to_thread)"
            )
        coro = _awaited(func, args)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:
            coro.close()
            raise ClosedError(f"the loop of {self._engine!r} is closed") from exc
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            raise ClosedError(f"{self._engine!r}: the call was cancelled") from exc
        except BaseException:
            future.cancel()
            raise

    def call_soon(self, func: Callable[[*_Ts], Awaitable[object]], *args: *_Ts) -> None:
        loop = self._loop

        def start() -> None:
            loop.create_task(_awaited(func, args))

        with contextlib.suppress(RuntimeError):  # The loop is closed.
            loop.call_soon_threadsafe(start)


def open(
    url_or_path: str,
    mode: str = "rb",
    *,
    engine: EngineThread | Engine | None = None,
    **storage_options: object,
) -> RemoteFile:
    """Open a local or remote file for reading, as a synchronous binary file.

    Args:
        url_or_path: A local path or a URL (``https://``, ``s3://``, any
            fsspec URL).
        mode: ``"rb"``, the only mode.
        engine: Whose cache to read through: ``None`` for
            :func:`~aiomemmap.default_engine`; an
            :class:`~aiomemmap.EngineThread`; or an
            :class:`~aiomemmap.Engine` running on an event loop of this
            program, in which case the file may only be used from other
            threads than that loop's (e.g. in ``asyncio.to_thread``): on the
            loop's own thread, use :func:`~aiomemmap.open_async`.
        **storage_options: Options of the backing (e.g. ``headers`` for
            HTTP; ``endpoint_url``, ``key``, ``secret`` for S3).

    Returns:
        The open file, positioned at 0.

    Raises:
        ValueError: ``mode`` is not ``"rb"``; a bad URL or path; an
            :class:`~aiomemmap.Engine` that does not run yet.
        TypeError: ``url_or_path`` is not a str, or ``engine`` is not an
            engine.
        FileNotFoundError, PermissionError, OSError: The object cannot be
            opened.
        ClosedError: The engine is closed.
        RuntimeError: ``engine`` is an :class:`~aiomemmap.Engine` and this is
            its loop's thread.
    """
    if mode not in ("rb", "br"):
        raise ValueError(f"aiomemmap.open: mode must be 'rb', got {mode!r}")
    if not isinstance(url_or_path, str):
        raise TypeError(f"url_or_path must be a str, got {url_or_path!r}")
    calls: _Calls
    if engine is None:
        calls = default_engine()
    elif isinstance(engine, EngineThread):
        calls = engine
    elif isinstance(engine, Engine):
        calls = _EngineOnItsLoop(engine)
    else:
        raise TypeError(
            f"engine must be an EngineThread, an Engine or None, got {engine!r}"
        )
    opened = calls.call(
        functools.partial(_open_sized, calls.engine, url_or_path, storage_options)
    )
    return RemoteFile(calls, opened[0], opened[1], url_or_path)


async def _open_sized(
    engine: Engine, url_or_path: str, storage_options: dict[str, object]
) -> tuple[CachedFile, int]:
    cached_file = await engine.open_file(url_or_path, **storage_options)
    size = cached_file.size
    if size is None:  # open_file learns the size; a truncation raced it.
        size = 0
    return cached_file, size


@final
class RemoteFile(io.RawIOBase):
    """A read-only, seekable binary file read through an engine's cache.

    Made by :func:`aiomemmap.open`. A :class:`io.RawIOBase`: ``read``,
    ``readinto``, ``readall``, ``readline``, ``seek``, ``tell``,
    ``readable``, ``seekable``; plus :meth:`pread`, which reads at an offset
    without touching the position. Use it as a context manager, or call
    :meth:`close`, which gives the engine's file back (the last user of an
    object closes its cache).

    Concurrency:
        Thread-safe. Reads that use the position (``read``, ``readinto``,
        ``readline``, ``seek``) are serialised by a lock of the file, so each
        sees and moves the position atomically; :meth:`pread` takes no lock,
        and reads from many threads at once run concurrently on the
        engine's loop. Must not be used on the engine's own event loop
        thread (only :meth:`close` works there).
    """

    def __init__(
        self, calls: _Calls, cached_file: CachedFile, size: int, name: str
    ) -> None:
        """Wrap an open of ``cached_file`` (use :func:`aiomemmap.open`)."""
        super().__init__()
        self._calls = calls
        self._file = cached_file
        self._size = size
        self._name = name
        # Protected by self._lock: the position, and closing.
        self._lock = threading.Lock()
        self._pos = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pos={self._pos}"
        return f"<RemoteFile {self._name!r} size={self._size} {state}>"

    @property
    def name(self) -> str:
        """The URL or path the file was opened with."""
        return self._name

    @property
    def mode(self) -> str:
        """``"rb"``."""
        return "rb"

    @property
    def size(self) -> int:
        """The size of the object when it was opened."""
        return self._size

    def readable(self) -> bool:
        """Return True (the file is open for reading).

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return True

    def seekable(self) -> bool:
        """Return True.

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return True

    def tell(self) -> int:
        """Return the position.

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; past the end is allowed (reads there are empty).

        Args:
            offset: Where to, relative to ``whence``.
            whence: ``io.SEEK_SET``, ``io.SEEK_CUR`` or ``io.SEEK_END``.

        Returns:
            The new position.

        Raises:
            TypeError: ``offset`` is not an int.
            ValueError: Bad ``whence``, a negative resulting position, or
                the file is closed.
        """
        if not is_int(offset):
            raise TypeError(f"offset must be an int, got {offset!r}")
        with self._lock:
            self._check_open()
            pos = self._pos = seek_target(self._pos, self._size, offset, whence)
            return pos

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes at the position and move past them.

        Args:
            size: How many bytes at most; ``None`` or negative reads to the
                end of the file.

        Returns:
            The bytes; empty at or past the end.

        Raises:
            ValueError: The file is closed.
            BusError: The storage failed (after retries).
        """
        if size is None or size < 0:
            return self.readall()
        with self._lock:
            self._check_open()
            data = self._calls.call(self._file.read, self._pos, int(size))
            self._pos += len(data)
            return data

    def readall(self) -> bytes:
        """Read from the position to the end of the file.

        Raises:
            ValueError: The file is closed.
            BusError: The storage failed (after retries).
        """
        parts: list[bytes] = []
        with self._lock:
            self._check_open()
            while True:
                want = max(self._size - self._pos, READ_CHUNK)
                data = self._calls.call(self._file.read, self._pos, want)
                self._pos += len(data)
                if data:
                    parts.append(data)
                if len(data) < want:
                    break
        return b"".join(parts)

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into ``buffer`` at the position and move past what was read.

        The engine's thread copies the bytes straight from the cache into
        ``buffer``, while this thread waits: nothing is allocated for them.

        Args:
            buffer: A writable, C-contiguous buffer.

        Returns:
            How many bytes were read; 0 at or past the end.

        Raises:
            TypeError: ``buffer`` is not a buffer, or it is read-only.
            ValueError: The file is closed, or ``buffer`` is not contiguous.
            BusError: The storage failed (after retries).

        Postconditions:
            Nothing writes to ``buffer`` once the call has returned or
            raised (an interrupt included).
        """
        with writable_bytes("readinto", buffer) as target, self._lock:
            self._check_open()
            landing = Landing(target)
            try:
                n = self._calls.call(landing.fill, self._file, self._pos)
            finally:
                landing.withdraw()
            self._pos += n
            return n

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (up to and including a newline), at most ``size`` bytes.

        Raises:
            ValueError: The file is closed.
            BusError: The storage failed (after retries).
        """
        limit = -1 if size is None else int(size)
        parts: list[bytes] = []
        got = 0
        with self._lock:
            self._check_open()
            while limit < 0 or got < limit:
                want = LINE_CHUNK if limit < 0 else min(LINE_CHUNK, limit - got)
                chunk = self._calls.call(self._file.read, self._pos + got, want)
                if not chunk:
                    break
                end = chunk.find(b"\n")
                if end >= 0:
                    chunk = chunk[: end + 1]
                parts.append(chunk)
                got += len(chunk)
                if end >= 0:
                    break
            self._pos += got
        return b"".join(parts)

    def pread(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset``, leaving the position alone.

        Args:
            offset: Where to read.
            n: How many bytes at most.

        Returns:
            The bytes; short only at the end of the file.

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
        try:
            return self._calls.call(self._file.read, int(offset), int(n))
        except ClosedError as exc:
            if self.closed:
                raise ValueError("I/O operation on closed file") from exc
            raise

    def statistics(self) -> CacheStatistics:
        """Return the counters of the shared cache of this file's object.

        Raises:
            ValueError: The file is closed.
        """
        self._check_open()
        return self._calls.call(_statistics, self._file)

    def close(self) -> None:
        """Give the engine's file back; later calls do nothing.

        Waits for a read in progress that uses the position; a
        :meth:`pread` in progress in another thread may fail with
        ``ValueError``.
        """
        if self.closed:
            return
        on_loop = _on_loop_thread(self._calls.loop)
        if on_loop:
            # Garbage collected on the engine's own thread: no waiting.
            super().close()
            self._calls.call_soon(self._calls.engine.close_file, self._file)
            return
        with self._lock:
            if self._is_closed():
                return
            try:
                # The engine closed (or this is a forked child): nothing to
                # give back.
                with contextlib.suppress(ClosedError):
                    self._calls.call(self._calls.engine.close_file, self._file)
            finally:
                super().close()

    def _is_closed(self) -> bool:
        # A method call, so that a check made again under the lock is not
        # judged redundant by the type checker.
        return self.closed

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


async def _statistics(cached_file: CachedFile) -> CacheStatistics:
    return cached_file.statistics()


async def _awaited(func: Callable[..., Awaitable[_T]], args: tuple[object, ...]) -> _T:
    return await func(*args)


def _on_loop_thread(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Return whether ``loop`` is the loop running in the calling thread."""
    if loop is None:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
