"""``cache_type="aiomemmap"``: any fsspec file's reads served by the engine.

fsspec files take their caching strategy by name from ``fsspec.caching``'s
registry; :class:`AiomemmapCache` registers there as ``"aiomemmap"``. Opened
with it, a file of any filesystem reads through an engine
(:func:`~aiomemmap.default_engine` unless ``cache_options={"engine": ...}``
names another) instead of keeping blocks of its own::

    with fsspec.open("s3://bucket/key", cache_type="aiomemmap") as f:
        f.seek(1 << 30)
        f.read(4096)

The cache names the object by the file's URL and its filesystem's storage
options, so it shares one cache with every other user of the same object in
the same engine (``aiomemmap.open``, the ``aiomemmap`` filesystem, other
files). A file whose filesystem cannot be named that way (one built on
another filesystem instance, such as a ``dir::`` or a wrapped filesystem) is
served from a cached file of its own in the engine, filled through the
file's own fetcher.

Registration: importing this module registers the cache type; the
``aiomemmap`` filesystem imports it, and ``import aiomemmap`` imports it when
fsspec is in use.
"""

from __future__ import annotations

import asyncio
import errno
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Final

import fsspec
import fsspec.caching

from aiomemmap._core.cancel import finish_shielded
from aiomemmap.backings.base import byte_view, check_offset
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.faces.fsspec_reads import EngineReads
from aiomemmap.mappables.cached_file import CachedFile

__all__ = ["AiomemmapCache", "register", "storage_options_of"]

# Options of a filesystem instance that say how that instance runs, not which
# object it reaches: the engine opens its own.
_INSTANCE_OPTIONS: Final[frozenset[str]] = frozenset(
    {"asynchronous", "loop", "skip_instance_cache", "use_listings_cache"}
)


def storage_options_of(fs: object) -> dict[str, object]:
    """The storage options that reopen ``fs``'s objects elsewhere."""
    options = getattr(fs, "storage_options", {}) or {}
    return {k: v for k, v in options.items() if k not in _INSTANCE_OPTIONS}


def _reopenable_url(fs: object, path: object) -> str | None:
    """The URL that reopens ``path`` of ``fs``, or ``None`` if there is none.

    Only a filesystem that is the registered class of its own protocol is
    reopened by URL: anything else (a wrapper over another instance) holds
    state the URL does not carry.
    """
    if not isinstance(fs, fsspec.AbstractFileSystem) or not isinstance(path, str):
        return None
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    try:
        registered = fsspec.get_filesystem_class(protocols[0])
    except (ValueError, ImportError):
        return None
    if type(fs) is not registered:
        return None
    return str(fs.unstrip_protocol(path))


@typing.final
class _FetcherBacking:
    """A read-only backing over an fsspec file's own ranged fetcher.

    The fetcher blocks, so it runs in a worker thread.
    """

    def __init__(self, fetcher: Callable[[int, int], bytes], size: int) -> None:
        self._fetcher = fetcher
        self._size = size
        self.readonly = True

    async def size(self) -> int:
        return self._size

    async def read_into(self, offset: int, buf: memoryview) -> int:
        offset = check_offset(offset)
        view = byte_view(buf, writable=True)
        end = min(self._size, offset + len(view))
        if end <= offset:
            return 0
        data = await asyncio.to_thread(self._fetcher, offset, end)
        n = min(len(data), end - offset)
        view[:n] = data[:n]
        return n

    async def version(self) -> str | None:
        return None

    async def write_from(self, offset: int, data: memoryview) -> int:
        raise PermissionError(errno.EACCES, f"{self!r} is read-only")

    async def truncate(self, size: int) -> None:
        raise PermissionError(errno.EACCES, f"{self!r} is read-only")

    async def aclose(self) -> None:
        return None


async def _open_private(engine: Engine, backing: _FetcherBacking) -> CachedFile:
    return CachedFile(backing, engine.memory_file, bus=engine.bus)


async def _close_private(cached_file: CachedFile) -> None:
    await finish_shielded(cached_file.aclose())


def _close_private_soon(thread: EngineThread, cached_file: CachedFile) -> None:
    thread.call_soon(_close_private, cached_file)


@typing.final
class AiomemmapCache(fsspec.caching.BaseCache):  # type: ignore[misc]
    """An fsspec cache type whose reads are served by an aiomemmap engine.

    Args:
        blocksize: The file's block size (unused: the engine fetches what its
            readahead decides).
        fetcher: The file's ranged fetcher, ``fetcher(start, end)``.
        size: The file's size.
        engine: The :class:`~aiomemmap.EngineThread` to read through;
            ``None`` for :func:`~aiomemmap.default_engine`.

    Concurrency:
        thread-safe.
    """

    name: typing.ClassVar[str] = "aiomemmap"

    def __init__(
        self,
        blocksize: int,
        fetcher: Callable[[int, int], bytes],
        size: int,
        *,
        engine: EngineThread | None = None,
    ) -> None:
        super().__init__(blocksize, fetcher, size)
        if engine is not None and not isinstance(engine, EngineThread):
            raise TypeError(f"engine must be an EngineThread or None, got {engine!r}")
        owner = getattr(fetcher, "__self__", None)
        fs, path = getattr(owner, "fs", None), getattr(owner, "path", None)
        source = getattr(fs, "engine_source", None)
        self._url: str | None
        self._options: Mapping[str, object]
        if callable(source) and isinstance(path, str):
            # A file of the aiomemmap filesystem: read as that filesystem does.
            reads, self._url, self._options = source(path)
            self._reads: EngineReads = reads
        else:
            self._reads = EngineReads(engine, keep_open=1)
            self._url = _reopenable_url(fs, path)
            self._options = storage_options_of(fs)
            # The object stays open in the engine while this cache lives.
            weakref.finalize(self, self._reads.release_soon)
        self._private: CachedFile | None = None

    def _private_file(self, thread: EngineThread) -> CachedFile:
        if self._private is None:
            backing = _FetcherBacking(self.fetcher, self.size)
            cached_file = thread.call(_open_private, thread.engine, backing)
            self._private = cached_file
            weakref.finalize(self, _close_private_soon, thread, cached_file)
        return self._private

    def _fetch(self, start: int | None, stop: int | None) -> bytes:
        if start is None:
            start = 0
        if stop is None:
            stop = self.size
        if start >= self.size or start >= stop:
            return b""
        stop = min(stop, self.size)
        if self._url is not None:
            url, options, lo, hi = self._url, self._options, start, stop
            data: bytes = self._reads.call(
                lambda engine: self._reads.read(engine, url, options, lo, hi)
            )
        else:
            thread = self._reads.engine_thread()
            if thread is None:
                raise RuntimeError("the aiomemmap cache type needs an engine thread")
            cached_file = self._private_file(thread)
            data = thread.call(cached_file.read, start, stop - start)
        self.miss_count += 1
        self.total_requested_bytes += stop - start
        return data


def register() -> None:
    """Register :class:`AiomemmapCache` with fsspec as ``"aiomemmap"``.

    Idempotent.
    """
    if fsspec.caching.caches.get(AiomemmapCache.name) is not AiomemmapCache:
        fsspec.caching.register_cache(AiomemmapCache, clobber=True)


register()
