"""The clients the remote rows measure aiomemmap against.

Each function reads files served over HTTP the way one well-known client
does, from a cold start (a new aiohttp session, a new fsspec filesystem
outside fsspec's instance cache, a new obstore store), and returns once every
byte asked for has arrived:

* :func:`whole_get`: one aiohttp ``GET`` per file, the body streamed and
  dropped: the wire's ceiling for one connection per file.
* :func:`range_fetch`: a minimal parallel range fetcher: one ``HEAD`` per
  file for its size, then ranges of 8 MiB, 8 in flight in all, each response
  chunk landed with ``os.pwrite`` into a memfd at its offset; optionally the
  bytes read out of the memfd in order, as a scan reads them.
* :func:`range_gets`: raw aiohttp range ``GET`` requests by concurrent tasks.
* :func:`fsspec_scan` and :func:`fsspec_random`: fsspec's HTTP file with one
  cache type, one thread per reader, each with a handle of its own.
* :func:`obstore_scan` and :func:`obstore_random`: obstore's ``HTTPStore``
  (imported when called: obstore comes with the ``bench`` extra).

The fsspec functions block; callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import os
import typing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import aiohttp
import fsspec
import fsspec.asyn

if typing.TYPE_CHECKING:
    from obstore.store import HTTPStore

__all__ = [
    "FSSPEC_CACHE_TYPES",
    "RANGE_FETCH_IN_FLIGHT",
    "RANGE_FETCH_PART",
    "fsspec_cache_types",
    "fsspec_random",
    "fsspec_scan",
    "obstore_random",
    "obstore_scan",
    "range_fetch",
    "range_gets",
    "whole_get",
]

_MIB: Final[int] = 1 << 20

#: The fsspec cache types every remote row compares with, when installed.
FSSPEC_CACHE_TYPES: Final[tuple[str, ...]] = (
    "readahead",
    "blockcache",
    "bytes",
    "background",
    "adaptive",
)
#: Bytes per range request of the minimal fetcher.
RANGE_FETCH_PART: Final[int] = 8 * _MIB
#: Range requests the minimal fetcher keeps in flight per file.
RANGE_FETCH_IN_FLIGHT: Final[int] = 8


def fsspec_cache_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split :data:`FSSPEC_CACHE_TYPES` by whether this fsspec has them.

    Returns:
        ``(installed, missing)``.
    """
    import fsspec.caching

    known = fsspec.caching.caches
    return (
        tuple(ct for ct in FSSPEC_CACHE_TYPES if ct in known),
        tuple(ct for ct in FSSPEC_CACHE_TYPES if ct not in known),
    )


def _short(what: str, got: int, want: int) -> RuntimeError:
    return RuntimeError(f"{what} read {got} bytes instead of {want}")


async def whole_get(urls: Sequence[str]) -> int:
    """GET each of ``urls`` whole, concurrently, on one new session.

    Returns:
        The body bytes received.
    """

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        n = 0
        async with session.get(url) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_any():
                n += len(chunk)
        return n

    async with aiohttp.ClientSession() as session:
        return sum(await asyncio.gather(*(one(session, u) for u in urls)))


async def whole_get_landed(urls: Sequence[str]) -> int:
    """GET each of ``urls`` whole, landing its body in a memfd of its own.

    The floor for any client that keeps what it reads in memfd pages, as a
    page cache does: one stream per file, each piece of the answer written
    with ``os.pwrite`` as it arrives, the memfds closed (their pages freed)
    at the end. What it costs over :func:`whole_get` is what holding the
    bytes costs: allocating, filling and freeing the pages.

    Returns:
        The bytes landed.
    """

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        fd = os.memfd_create("whole-get-landed")
        try:
            pos = 0
            async with session.get(url) as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_any():
                    pos += os.pwrite(fd, chunk, pos)
            return pos
        finally:
            os.close(fd)

    async with aiohttp.ClientSession() as session:
        return sum(await asyncio.gather(*(one(session, u) for u in urls)))


async def range_fetch(urls: Sequence[str], read_size: int | None = None) -> int:
    """Land each of ``urls`` in a memfd of its own with parallel range GETs.

    A ``HEAD`` per file for its size, then :data:`RANGE_FETCH_IN_FLIGHT`
    workers, for all the files together, each taking the next
    :data:`RANGE_FETCH_PART` bytes (the files' parts interleaved) and writing
    each chunk of the answer with ``os.pwrite`` at its offset. The memfds
    are closed at the end.

    With ``read_size``, the bytes are also read, as a scan reads them: one
    reader per file waits for each part in order and copies it out of the
    memfd (``os.preadv``) in reads of ``read_size`` bytes into one reused
    buffer, so that every byte reaches the reader once, as a cached file's
    ``readinto`` gives it.

    Returns:
        The bytes landed, or with ``read_size`` the bytes read.

    Raises:
        RuntimeError: A range came back short.
    """

    async def size_of(session: aiohttp.ClientSession, url: str) -> int:
        async with session.head(url) as resp:
            resp.raise_for_status()
            return int(resp.headers["Content-Length"])

    async def land(
        session: aiohttp.ClientSession, url: str, fd: int, start: int, end: int
    ) -> None:
        pos = start
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_any():
                pos += os.pwrite(fd, chunk, pos)
        if pos != end:
            raise _short(f"range {start}-{end} of {url}", pos - start, end - start)

    async def read_out(fd: int, parts: Sequence[tuple[int, asyncio.Event]]) -> int:
        assert read_size is not None
        buf = bytearray(read_size)
        done = 0
        for end, landed in parts:
            await landed.wait()
            while done < end:
                view = memoryview(buf)[: min(read_size, end - done)]
                n = os.preadv(fd, [view], done)
                if n <= 0:
                    raise _short("a read of the memfd", n, len(view))
                done += n
        return done

    async with aiohttp.ClientSession() as session:
        sizes = await asyncio.gather(*(size_of(session, u) for u in urls))
        fds: list[int] = []
        try:
            for size in sizes:
                fds.append(os.memfd_create("range-fetch"))
                os.ftruncate(fds[-1], size)
            order = [
                (i, start, min(start + RANGE_FETCH_PART, size), asyncio.Event())
                for start in range(0, max(sizes, default=0), RANGE_FETCH_PART)
                for i, size in enumerate(sizes)
                if start < size
            ]
            parts = iter(order)

            async def worker() -> None:
                for i, start, end, landed in parts:
                    await land(session, urls[i], fds[i], start, end)
                    landed.set()

            async with asyncio.TaskGroup() as tg:
                for _ in range(RANGE_FETCH_IN_FLIGHT):
                    tg.create_task(worker())
                readers = [
                    tg.create_task(
                        read_out(fd, [(e, ev) for j, _, e, ev in order if j == i])
                    )
                    for i, fd in enumerate(fds)
                    if read_size is not None
                ]
        finally:
            for fd in fds:
                os.close(fd)
    if read_size is not None:
        return sum(r.result() for r in readers)
    return sum(sizes)


async def range_gets(url: str, shares: Sequence[Sequence[int]], length: int) -> int:
    """Read ``length`` bytes at each offset with raw range GETs.

    One task per share, each reading its offsets one after another; one new
    session for all.

    Returns:
        The body bytes received.
    """

    async def reader(session: aiohttp.ClientSession, share: Sequence[int]) -> int:
        n = 0
        for off in share:
            headers = {"Range": f"bytes={off}-{off + length - 1}"}
            async with session.get(url, headers=headers) as resp:
                resp.raise_for_status()
                n += len(await resp.read())
        return n

    async with aiohttp.ClientSession() as session:
        return sum(await asyncio.gather(*(reader(session, s) for s in shares)))


def _http_fs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("http", skip_instance_cache=True)


def _close_http_fs(fs: fsspec.AbstractFileSystem) -> None:
    """Close the aiohttp session a synchronous fsspec HTTP filesystem opened."""
    session = getattr(fs, "_session", None)
    if session is not None:
        fsspec.asyn.sync(typing.cast("Any", fs).loop, session.close)


def _in_threads(fn: typing.Callable[[Any], int], items: Sequence[Any]) -> int:
    """Run ``fn`` on each item in a thread of its own; re-raise any failure."""
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return sum(pool.map(fn, items))


def fsspec_scan(urls: Sequence[str], cache_type: str, read_size: int) -> int:
    """Read each of ``urls`` sequentially through fsspec, a thread per file.

    One new HTTP filesystem; each thread opens its file with ``cache_type``
    and fsspec's default block size and reads ``read_size`` bytes at a time
    to the end.

    Returns:
        The bytes read.
    """
    fs = _http_fs()

    def scan(url: str) -> int:
        n = 0
        with fs.open(url, "rb", cache_type=cache_type) as f:
            while chunk := f.read(read_size):
                n += len(chunk)
        return n

    try:
        return _in_threads(scan, urls)
    finally:
        _close_http_fs(fs)


def fsspec_random(
    url: str,
    shares: Sequence[Sequence[int]],
    length: int,
    cache_type: str,
    block_size: int,
) -> int:
    """Read ``length`` bytes at each offset through fsspec, a thread per share.

    One new HTTP filesystem; each thread opens a handle of its own with
    ``cache_type`` and ``block_size`` and seeks and reads its offsets.

    Returns:
        The bytes read.

    Raises:
        RuntimeError: A read came back short.
    """
    fs = _http_fs()

    def reader(share: Sequence[int]) -> int:
        n = 0
        with fs.open(url, "rb", cache_type=cache_type, block_size=block_size) as f:
            for off in share:
                f.seek(off)
                got = len(f.read(length))
                if got != length:
                    raise _short(f"fsspec {cache_type} at {off}", got, length)
                n += got
        return n

    try:
        return _in_threads(reader, shares)
    finally:
        _close_http_fs(fs)


def _obstore_http(base_url: str) -> HTTPStore:
    from obstore.store import HTTPStore

    return HTTPStore.from_url(base_url, client_options={"allow_http": True})


async def obstore_scan(base_url: str, names: Sequence[str], chunk: int) -> int:
    """Stream each named file whole through one new obstore ``HTTPStore``.

    The files are read concurrently, each with ``get_async`` and its
    stream of at least ``chunk`` bytes per item: obstore's own way to
    read an object from start to end.

    Returns:
        The bytes received.
    """
    import obstore

    store = _obstore_http(base_url)

    async def one(name: str) -> int:
        result = await obstore.get_async(store, name)
        n = 0
        async for part in result.stream(min_chunk_size=chunk):
            n += len(part)
        return n

    return sum(await asyncio.gather(*(one(name) for name in names)))


async def obstore_random(
    base_url: str, name: str, shares: Sequence[Sequence[int]], length: int
) -> int:
    """Read ``length`` bytes at each offset with obstore's ``get_range_async``.

    One new ``HTTPStore``; one task per share, reading its offsets in turn.

    Returns:
        The bytes received.
    """
    import obstore

    store = _obstore_http(base_url)

    async def reader(share: Sequence[int]) -> int:
        n = 0
        for off in share:
            data = await obstore.get_range_async(store, name, start=off, length=length)
            n += len(memoryview(data))
        return n

    return sum(await asyncio.gather(*(reader(s) for s in shares)))
