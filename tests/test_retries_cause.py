"""Retries fit the cause: what cannot succeed fails at once, a dying server fails fast.

Against a real HTTP server on 127.0.0.1 (and a port where nothing listens):

* a missing object is asked for once, through ``HttpBacking`` and through
  fsspec's HTTP filesystem (whose own probe is a ``HEAD`` then a ``GET``);
* a refused connection at the first request fails at once, and is reported
  as the connection error, never as a missing file;
* a server stopped between two reads of a scan, or while a fetch is in
  flight, fails the next fetch with a ``BusError`` caused by the connection
  error, within one retry budget (counted in calls of the backing);
* a transient answer (503) is still retried.

Backings are wrapped in ``FaultInjectingBacking`` with no faults injected: a
real wrapper that counts the calls.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

from aiomemmap import (
    PAGE_SIZE,
    BusError,
    CachedFile,
    Engine,
    FaultInjectingBacking,
    HttpBacking,
    MemoryFile,
    NoReadahead,
    RetryPolicy,
    open_backing,
)
from aiomemmap.backings.base import is_refused
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 60
DATA = bytes((i * 13 + 5) % 251 for i in range(64 * PAGE_SIZE))
# A budget of several attempts with short waits: the counts, not the time,
# are what the tests check.
BUDGET = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def server() -> AsyncIterator[RangeHTTPServer]:
    async with RangeHTTPServer() as srv:
        srv.add("data", DATA)
        yield srv


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port was listened on and closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data"


def caused_by_connection_error(err: BaseException) -> bool:
    cause = err.err if isinstance(err, BusError) else err
    return isinstance(cause, ConnectionError | aiohttp.ClientConnectionError)


async def test_missing_object_is_asked_for_once(server: RangeHTTPServer) -> None:
    with MemoryFile("missing-once") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("missing")))
        cf = CachedFile(backing, mf, retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
                await cf.read(0, 1)
        finally:
            await cf.aclose()
            await backing.aclose()
    assert backing.calls == 1
    assert server.requests == 1


async def test_missing_object_through_fsspec_http_is_not_retried(
    server: RangeHTTPServer,
) -> None:
    inner = open_backing(server.url("missing"), block_size_hint=PAGE_SIZE)
    backing = FaultInjectingBacking(inner)
    with MemoryFile("missing-fsspec") as mf:
        cf = CachedFile(backing, mf, retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(FileNotFoundError):
                await cf.read(0, 1)
        finally:
            await cf.aclose()
            await backing.aclose()
    assert backing.calls == 1
    # fsspec's own probe: a HEAD, then a GET; no retry of either.
    assert server.requests == 2


async def test_refused_connection_at_open_fails_at_once() -> None:
    url = closed_port_url()
    with MemoryFile("refused-open") as mf:
        backing = FaultInjectingBacking(HttpBacking(url))
        cf = CachedFile(backing, mf, retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(BusError) as info:
                await cf.read(0, 1)
        finally:
            await cf.aclose()
            await backing.aclose()
    assert backing.calls == 1
    err = info.value
    assert err.errno == errno.ECONNREFUSED
    assert is_refused(err.err)
    assert caused_by_connection_error(err)
    assert not isinstance(err, FileNotFoundError)


async def test_refused_connection_through_fsspec_http_is_not_a_missing_file() -> None:
    inner = open_backing(closed_port_url(), block_size_hint=PAGE_SIZE)
    backing = FaultInjectingBacking(inner)
    with MemoryFile("refused-fsspec") as mf:
        cf = CachedFile(backing, mf, retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE), pytest.raises(BusError) as info:
                await cf.read(0, 1)
        finally:
            await cf.aclose()
            await backing.aclose()
    assert backing.calls == 1
    assert not isinstance(info.value, FileNotFoundError)
    assert is_refused(info.value.err)
    assert info.value.errno == errno.ECONNREFUSED


async def test_refused_connection_at_engine_open_fails_at_once() -> None:
    async with Engine() as engine:
        with (
            anyio.fail_after(DEADLINE),
            pytest.raises(OSError, match="Connect") as info,
        ):
            await engine.open_file(closed_port_url())
        assert engine.statistics().open_files == 0
    assert info.value.errno == errno.ECONNREFUSED
    assert not isinstance(info.value, FileNotFoundError)


async def test_server_stopped_between_reads_fails_the_next_fetch(
    server: RangeHTTPServer,
) -> None:
    with MemoryFile("stopped-between") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("data")))
        cf = CachedFile(backing, mf, readahead=NoReadahead(), retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE):
                assert await cf.read(0, PAGE_SIZE) == DATA[:PAGE_SIZE]
                await server.stop()
                reads_before = backing.reads
                with pytest.raises(BusError) as info:
                    await cf.read(8 * PAGE_SIZE, PAGE_SIZE)
                attempts = backing.reads - reads_before
                # The pages stay absent: the next access fails the same way.
                with pytest.raises(BusError):
                    await cf.read(8 * PAGE_SIZE, PAGE_SIZE)
                # Resident pages are still served.
                assert await cf.read(0, 16) == DATA[:16]
        finally:
            await cf.aclose()
            await backing.aclose()
    assert 1 <= attempts <= BUDGET.attempts
    assert caused_by_connection_error(info.value)


async def test_server_stopped_under_a_fetch_in_flight_fails_it(
    server: RangeHTTPServer,
) -> None:
    with MemoryFile("stopped-in-flight") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("data")))
        cf = CachedFile(backing, mf, readahead=NoReadahead(), retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE):
                assert await cf.read(0, PAGE_SIZE) == DATA[:PAGE_SIZE]
                # The server now never answers: the fetch stays in flight
                # until the server is stopped under it.
                server.latency = 10 * DEADLINE
                requests = server.requests
                reads_before = backing.reads
                errors: list[BaseException] = []

                async def read() -> None:
                    try:
                        await cf.read(8 * PAGE_SIZE, PAGE_SIZE)
                    except BusError as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    # The server has no event for a request's arrival.
                    while server.requests == requests:  # noqa: ASYNC110
                        await anyio.sleep(0.001)
                    await server.stop()
                attempts = backing.reads - reads_before
        finally:
            await cf.aclose()
            await backing.aclose()
    assert len(errors) == 1
    assert 1 <= attempts <= BUDGET.attempts
    assert caused_by_connection_error(errors[0])


async def test_transient_answers_are_still_retried(server: RangeHTTPServer) -> None:
    with MemoryFile("retried-503") as mf:
        backing = FaultInjectingBacking(HttpBacking(server.url("data")))
        cf = CachedFile(backing, mf, readahead=NoReadahead(), retry=BUDGET)
        try:
            with anyio.fail_after(DEADLINE):
                assert await cf.read(0, PAGE_SIZE) == DATA[:PAGE_SIZE]
                server.fail_next(BUDGET.attempts - 1, 503)
                reads_before = backing.reads
                assert await cf.read(4 * PAGE_SIZE, 8) == DATA[4 * PAGE_SIZE :][:8]
        finally:
            await cf.aclose()
            await backing.aclose()
    assert backing.reads - reads_before == BUDGET.attempts
