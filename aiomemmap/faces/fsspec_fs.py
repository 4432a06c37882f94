"""The ``aiomemmap`` fsspec protocol: any fsspec URL read through the engine.

``aiomemmap::`` chains in front of any URL, and everything that speaks
fsspec then reads through an engine's shared cache::

    fsspec.open("aiomemmap::s3://bucket/key", s3={"anon": True})
    zarr.open_group("aiomemmap::https://host/store.zarr", mode="r")
    xarray.open_dataset("aiomemmap::https://host/cube.nc", engine="h5netcdf")

fsspec finds the protocol through the ``fsspec.specs`` entry point of this
package. :class:`AiomemmapFileSystem` is an asynchronous filesystem:

* reads (``cat_file``, ``cat_ranges``, ``open``) go through the engine:
  :func:`~aiomemmap.default_engine` unless the ``engine`` option names
  another, so every reader of one object in the process shares one cache
  and one fetch per page; ``cat_ranges`` merges nearby ranges of an object
  into one read;
* listings and metadata (``ls``, ``info``, and what fsspec builds on them:
  ``find``, ``exists``, ``glob``...) are the target filesystem's;
* storage options are given per protocol as fsspec passes them for chained
  URLs (``fsspec.open("aiomemmap::s3://b/k", s3={...})``), or as
  ``target_options``.

How it runs: used synchronously, its methods run on the engine's own loop
(the filesystem's ``loop`` is the engine thread's), so a read crosses one
thread. Created with ``asynchronous=True`` (as zarr does), its coroutines
run on the caller's loop and wait for the engine's loop without blocking
it. Nothing ever blocks the engine's loop: the target filesystem is used in
its synchronous form, in worker threads.
"""

from __future__ import annotations

import asyncio
import typing
import weakref
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractBufferedFile

from aiomemmap._core.pages import is_int
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.faces.fsspec_cache import AiomemmapCache, register, storage_options_of
from aiomemmap.faces.fsspec_reads import (
    DEFAULT_GAP,
    DEFAULT_KEEP_OPEN,
    EngineReads,
)

__all__ = ["AiomemmapFile", "AiomemmapFileSystem"]

register()

_PREFIXES = ("aiomemmap::", "aiomemmap://")


@typing.final
class AiomemmapFile(AbstractBufferedFile):  # type: ignore[misc]
    """A read-only fsspec file of the ``aiomemmap`` filesystem.

    Its reads are served by the engine (its cache type is ``"aiomemmap"``,
    whatever the caller asked for): blocks, readahead and caching are the
    engine's.
    """

    def _fetch_range(self, start: int, end: int) -> bytes:
        fs = typing.cast("AiomemmapFileSystem", self.fs)
        reads, url, options = fs.engine_source(self.path)
        return reads.call(lambda engine: reads.read(engine, url, options, start, end))


class AiomemmapFileSystem(AsyncFileSystem, ChainedFileSystem):  # type: ignore[misc]
    """An fsspec filesystem over another one, read through an aiomemmap engine.

    Args:
        target_protocol: The protocol of the filesystem read through the
            engine (``"s3"``, ``"https"``...); ``"file"`` by default.
        target_options: Its storage options.
        fo: The path of a chained URL (fsspec passes it; unused).
        engine: The :class:`~aiomemmap.EngineThread` to read through, or an
            :class:`~aiomemmap.Engine` on the loop of an asynchronous user;
            ``None`` for :func:`~aiomemmap.default_engine`.
        keep_open: How many recently read objects stay open in the engine.
        gap: ``cat_ranges`` reads ranges of one object closer than this as
            one.
        asynchronous: Whether the caller awaits the coroutine methods on its
            own loop (fsspec's meaning).
        loop: Ignored: a synchronous filesystem runs on the engine's loop.
        **kwargs: Passed to fsspec's filesystem base.

    Concurrency:
        thread-safe.
    """

    protocol = "aiomemmap"
    root_marker = ""
    async_impl = True

    def __init__(
        self,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        fo: str | None = None,
        *,
        engine: Engine | EngineThread | None = None,
        keep_open: int = DEFAULT_KEEP_OPEN,
        gap: int = DEFAULT_GAP,
        asynchronous: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: object,
    ) -> None:
        if not is_int(gap) or gap < 0:
            raise ValueError(f"gap must be an int >= 0, got {gap!r}")
        reads = EngineReads(engine, keep_open=keep_open)
        engine_loop: asyncio.AbstractEventLoop | None = None
        if not asynchronous:
            thread = reads.engine_thread()
            if thread is None:
                raise ValueError(
                    "an Engine running on a loop serves only an asynchronous "
                    "filesystem (asynchronous=True); give an EngineThread"
                )
            engine_loop = thread.loop
        super().__init__(asynchronous=asynchronous, loop=engine_loop, **kwargs)
        self.target_protocol = target_protocol or "file"
        self.target_options = dict(target_options or {})
        self.target = fsspec.filesystem(self.target_protocol, **self.target_options)
        self._reads = reads
        self._gap = gap
        self._target_engine_options = storage_options_of(self.target)
        weakref.finalize(self, reads.release_soon)

    def __repr__(self) -> str:
        return (
            f"AiomemmapFileSystem(target_protocol={self.target_protocol!r}, "
            f"reads={self._reads!r})"
        )

    # ------------------------------------------------------------------
    # Paths

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = str(path)
        for prefix in _PREFIXES:
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path

    def _target_path(self, path: str) -> str:
        return typing.cast(
            "str", self.target._strip_protocol(self._strip_protocol(path))
        )

    def _url(self, path: str) -> str:
        return typing.cast("str", self.target.unstrip_protocol(self._target_path(path)))

    def engine_source(self, path: str) -> tuple[EngineReads, str, Mapping[str, object]]:
        """How ``path`` is read: the engine reads, its URL and storage options.

        The ``"aiomemmap"`` cache type of this filesystem's files reads
        through it.
        """
        return self._reads, self._url(path), self._target_engine_options

    # ------------------------------------------------------------------
    # Reads, through the engine

    async def _cat_file(
        self,
        path: str,
        start: int | None = None,
        end: int | None = None,
        **kwargs: object,
    ) -> bytes:
        url, options = self._url(path), self._target_engine_options
        return await self._reads.run(
            lambda engine: self._reads.read(engine, url, options, start, end)
        )

    async def _cat_ranges(
        self,
        paths: list[str],
        starts: list[int | None] | int | None,
        ends: list[int | None] | int | None,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: object,
    ) -> list[bytes | BaseException]:
        n = len(paths)
        lo = starts if isinstance(starts, list) else [starts] * n
        hi = ends if isinstance(ends, list) else [ends] * n
        if len(lo) != n or len(hi) != n:
            raise ValueError("paths, starts and ends must have the same length")
        gap = self._gap if max_gap is None else max_gap
        by_path: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            by_path[self._url(p)].append(i)
        out: list[bytes | BaseException] = [b""] * n
        options = self._target_engine_options

        async def one_object(url: str, members: list[int]) -> None:
            ranges = [(lo[i], hi[i]) for i in members]
            try:
                datas = await self._reads.run(
                    lambda engine: self._reads.read_ranges(
                        engine, url, options, ranges, gap
                    )
                )
            except Exception as exc:
                if on_error != "return":
                    raise
                for i in members:
                    out[i] = exc
                return
            for i, data in zip(members, datas, strict=True):
                out[i] = data

        async with asyncio.TaskGroup() as tg:
            for url, members in by_path.items():
                tg.create_task(one_object(url, members))
        return out

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: object,
    ) -> AiomemmapFile:
        if mode != "rb":
            raise ValueError(f"the aiomemmap filesystem only reads: mode {mode!r}")
        url, options = self._url(path), self._target_engine_options
        size = self._reads.call(lambda engine: self._reads.size(engine, url, options))
        return AiomemmapFile(
            self,
            path,
            mode="rb",
            block_size=block_size,
            cache_type=AiomemmapCache.name,
            size=size,
        )

    async def _size(self, path: str) -> int:
        url, options = self._url(path), self._target_engine_options
        return await self._reads.run(
            lambda engine: self._reads.size(engine, url, options)
        )

    # ------------------------------------------------------------------
    # Listings and metadata, the target's

    async def _info(self, path: str, **kwargs: object) -> dict[str, Any]:
        return typing.cast(
            "dict[str, Any]",
            await asyncio.to_thread(
                self.target.info, self._target_path(path), **kwargs
            ),
        )

    async def _ls(self, path: str, detail: bool = True, **kwargs: object) -> list[Any]:
        return typing.cast(
            "list[Any]",
            await asyncio.to_thread(
                self.target.ls, self._target_path(path), detail=detail, **kwargs
            ),
        )

    def invalidate_cache(self, path: str | None = None) -> None:
        """Drop the target filesystem's listing cache (for ``path``)."""
        self.target.invalidate_cache(None if path is None else self._target_path(path))

    def ukey(self, path: str) -> str:
        """The target's key of ``path``'s version."""
        return typing.cast("str", self.target.ukey(self._target_path(path)))
