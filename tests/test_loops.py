"""Files used from a second event loop either work or say why they cannot.

Each test drives two event loops one after the other, as two calls of
``asyncio.run`` do, with ``asyncio.Runner`` (on asyncio's loop and on
uvloop), so that what is bound to the first loop can still be closed on it.

| object                                  | on a second loop                      |
|-----------------------------------------|---------------------------------------|
| ``CachedFile`` over bytes, a local file | works (fetches cut off by the end of  |
| or a sync fsspec filesystem             | the first loop are fetched again)     |
| ``CachedFile`` on the default bus       | works: it publishes on each loop's    |
|                                         | default bus                           |
| ``CachedFile`` on a given bus           | ``WrongLoopError`` from the bus       |
| ``HttpBacking`` (and a file over it)    | an error naming the other event loop  |
| ``FsspecBacking``, asynchronous fs      | ``WrongLoopError``; closing it works  |
|                                         | once the first loop has ended         |
| ``Engine``                              | ``WrongLoopError`` naming both loops  |
| ``AsyncRemoteFile``                     | resident bytes read; a fetch or a     |
|                                         | close raises an error naming the loop |
| ``RemoteFile`` (``aiomemmap.open``)     | works: its engine has its own thread  |
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import fsspec
import pytest
import uvloop

import aiomemmap
from aiomemmap import (
    PAGE_SIZE,
    AddressSpace,
    AddrRange,
    BusError,
    BytesBacking,
    CachedFile,
    Engine,
    FaultInjectingBacking,
    HttpBacking,
    InvalidateOpts,
    InvalidationBus,
    MemoryFile,
    MMapOpts,
    NoReadahead,
    WrongLoopError,
    open_backing,
)
from aiomemmap.tools.http_server import RangeHTTPServer

_T = TypeVar("_T")

DEADLINE = 60
DATA = bytes((i * 31 + 7) % 253 for i in range(32 * PAGE_SIZE))

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    return LOOPS[request.param]


def run(runner: asyncio.Runner, coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on ``runner``'s loop under the test deadline."""

    async def bounded() -> _T:
        with anyio.fail_after(DEADLINE):
            return await coro

    return runner.run(bounded())


@contextlib.contextmanager
def served(runner: asyncio.Runner) -> Iterator[RangeHTTPServer]:
    """A server of ``DATA`` on ``runner``'s loop (served while it runs)."""
    srv = RangeHTTPServer()
    run(runner, srv.start())
    srv.add("data", DATA)
    try:
        yield srv
    finally:
        run(runner, srv.stop())


@contextlib.contextmanager
def served_on_a_thread() -> Iterator[RangeHTTPServer]:
    """A server of ``DATA`` on a loop of its own thread, as a real server is."""
    with asyncio.Runner() as server_runner:
        srv = RangeHTTPServer()
        run(server_runner, srv.start())
        srv.add("data", DATA)
        loop = server_runner.get_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            run(server_runner, srv.stop())


# ------------------------------------------------------------- works


@pytest.mark.parametrize("kind", ["bytes", "local", "fsspec-memory"])
def test_cached_file_over_thread_backings_works_on_a_second_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop], kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    if kind == "bytes":
        inner: Any = BytesBacking(DATA)
    elif kind == "local":
        inner = open_backing(str(path))
    else:
        fsspec.filesystem("memory").pipe(f"/loops/{path.name}", DATA)
        inner = open_backing(f"memory://loops/{path.name}", readonly=True)
    # Slow enough that the first loop ends with fetches still in flight.
    backing = FaultInjectingBacking(inner, latency=0.001, seed=1)
    with MemoryFile("two-loops") as mf:
        cf = CachedFile(backing, mf, readahead=NoReadahead())

        async def first() -> None:
            assert await cf.read(0, PAGE_SIZE) == DATA[:PAGE_SIZE]
            # Left in flight when the loop ends: asyncio.run cancels them.
            for i in range(4, 12):
                asyncio.get_running_loop().create_task(
                    cf.read(i * PAGE_SIZE, PAGE_SIZE)
                )
            await asyncio.sleep(0)

        async def second() -> None:
            reads = [cf.read(i * PAGE_SIZE, 2 * PAGE_SIZE) for i in range(16)]
            got = await asyncio.gather(*reads)
            for i, data in enumerate(got):
                assert data == DATA[i * PAGE_SIZE : (i + 2) * PAGE_SIZE]
            await cf.aclose()
            await backing.aclose()

        with asyncio.Runner(loop_factory=new_loop) as runner:
            run(runner, first())
        with asyncio.Runner(loop_factory=new_loop) as runner:
            run(runner, second())
        assert mf.statistics().used_bytes == 0


def test_concurrent_faults_share_one_fetch_on_each_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    backing = FaultInjectingBacking(BytesBacking(DATA), latency=0.001, seed=2)
    with MemoryFile("two-loops-single-flight") as mf:
        cf = CachedFile(backing, mf, readahead=NoReadahead())

        async def many(page: int) -> int:
            before = backing.reads
            got = await asyncio.gather(
                *(cf.read(page * PAGE_SIZE, 64) for _ in range(32))
            )
            assert set(got) == {DATA[page * PAGE_SIZE :][:64]}
            return backing.reads - before

        with asyncio.Runner(loop_factory=new_loop) as runner:
            assert run(runner, many(1)) == 1
        with asyncio.Runner(loop_factory=new_loop) as runner:
            assert run(runner, many(2)) == 1
            run(runner, cf.aclose())


def test_default_bus_of_each_loop_delivers_invalidations(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """A file without a bus publishes on the default bus of the running loop."""
    with MemoryFile("two-loops-bus") as mf:
        backing = BytesBacking(DATA)
        cf = CachedFile(backing, mf, writable=True, readahead=NoReadahead())
        space = AddressSpace(mf)

        async def map_and_touch() -> int:
            addr = await space.mmap(
                MMapOpts(
                    length=4 * PAGE_SIZE,
                    mappable=cf,
                    mapping_identity=cf,
                    private=False,
                )
            )
            assert await space.copy_in(addr, 16) == DATA[:16]
            return addr

        async def truncate_and_fault(addr: int) -> None:
            await cf.truncate(0)
            with pytest.raises(BusError):
                await space.copy_in(addr, 16)
            await space.aclose()
            await cf.aclose()

        with asyncio.Runner(loop_factory=new_loop) as runner:
            addr = run(runner, map_and_touch())
        with asyncio.Runner(loop_factory=new_loop) as runner:
            run(runner, truncate_and_fault(addr))


def test_remote_file_works_from_two_loops(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with served_on_a_thread() as srv:
        engine = Engine.start_thread()
        try:
            f = aiomemmap.open(srv.url("data"), engine=engine)
            with f:

                async def read(offset: int) -> bytes:
                    return await asyncio.to_thread(f.pread, offset, 32)

                for page in (0, 9):
                    with asyncio.Runner(loop_factory=new_loop) as runner:
                        got = run(runner, read(page * PAGE_SIZE))
                        assert got == DATA[page * PAGE_SIZE :][:32]
        finally:
            engine.close()


# --------------------------------------------------------- a clear error


def test_given_bus_refuses_a_second_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    bus = InvalidationBus(name="the first loop's bus")
    space_calls: list[AddrRange] = []

    class Space:
        async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
            space_calls.append(ar)

    ar = AddrRange(0, PAGE_SIZE)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        run(runner, bus.publish([(Space(), ar)], InvalidateOpts()))
    with (
        asyncio.Runner(loop_factory=new_loop) as runner,
        pytest.raises(WrongLoopError, match="the first loop's bus") as info,
    ):
        run(runner, bus.publish([(Space(), ar)], InvalidateOpts()))
    assert "default_bus()" in str(info.value)
    assert space_calls == [ar]


def test_http_backing_names_its_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=new_loop) as first, served(first) as srv:
        backing = HttpBacking(srv.url("data"))
        with MemoryFile("http-two-loops") as mf:
            cf = CachedFile(backing, mf, readahead=NoReadahead())
            assert run(first, cf.read(0, 8)) == DATA[:8]
            with asyncio.Runner(loop_factory=new_loop) as second:
                with pytest.raises(RuntimeError, match="event loop"):
                    run(second, backing.read_into(0, memoryview(bytearray(8))))
                with pytest.raises(BusError) as info:
                    run(second, cf.read(8 * PAGE_SIZE, 8))
                assert isinstance(info.value.err, RuntimeError)
                assert "event loop" in str(info.value)
                with pytest.raises(RuntimeError, match="event loop"):
                    run(second, backing.aclose())
            run(first, cf.aclose())
            run(first, backing.aclose())


def test_async_fsspec_backing_names_its_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=new_loop) as first, served(first) as srv:
        backing = open_backing(srv.url("data"), block_size_hint=PAGE_SIZE)
        buf = memoryview(bytearray(8))
        assert run(first, backing.read_into(0, buf)) == 8
        with asyncio.Runner(loop_factory=new_loop) as second:
            with pytest.raises(WrongLoopError, match="not running") as info:
                run(second, backing.read_into(0, buf))
            assert "open_backing()" in str(info.value)
            # The first loop can still close it: closing here is refused.
            with pytest.raises(WrongLoopError):
                run(second, backing.aclose())
        run(first, backing.aclose())


def test_async_fsspec_backing_closes_after_its_loop_ended(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with served_on_a_thread() as srv:
        backing = open_backing(srv.url("data"), block_size_hint=PAGE_SIZE)
        buf = memoryview(bytearray(8))

        async def read_and_drop_connections() -> int:
            n = await backing.read_into(0, buf)
            # Close the pooled connections the way the end of the loop
            # would leave them: gone with the loop.
            session = getattr(backing.fs, "_session", None)
            connector = getattr(session, "connector", None)
            if connector is not None:
                await connector.close()
            return n

        with asyncio.Runner(loop_factory=new_loop) as runner:
            assert run(runner, read_and_drop_connections()) == 8
        with asyncio.Runner(loop_factory=new_loop) as runner:
            with pytest.raises(WrongLoopError, match=r"closed: its asyncio.run"):
                run(runner, backing.read_into(0, buf))
            run(runner, backing.aclose())
            with pytest.raises(aiomemmap.ClosedError):
                run(runner, backing.read_into(0, buf))


def test_engine_names_both_loops(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=new_loop) as first, served(first) as srv:
        engine = Engine()

        async def open_and_read() -> bytes:
            f = await engine.open_file(srv.url("data"))
            data = await f.read(0, 8)
            await engine.close_file(f)
            return data

        assert run(first, open_and_read()) == DATA[:8]
        with asyncio.Runner(loop_factory=new_loop) as second:
            for call in (open_and_read, engine.aclose):
                with pytest.raises(WrongLoopError) as info:
                    run(second, call())
                message = str(info.value)
                assert repr(engine) in message
                assert "not running" in message
                assert "EngineThread" in message
        run(first, engine.aclose())


def test_async_remote_file_on_a_second_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=new_loop) as first, served(first) as srv:
        f = run(first, aiomemmap.open_async(srv.url("data")))
        assert run(first, f.pread(0, 8)) == DATA[:8]
        with asyncio.Runner(loop_factory=new_loop) as second:
            # Every call is refused, naming the loop the file belongs to,
            # whether or not its bytes are resident.
            for call in (
                lambda: f.pread(0, 8),
                lambda: f.pread(16 * PAGE_SIZE, 8),
                lambda: f.read(8),
                f.aclose,
            ):
                with pytest.raises(WrongLoopError, match="open the file again"):
                    run(second, call())
        assert run(first, f.pread(16 * PAGE_SIZE, 8)) == DATA[16 * PAGE_SIZE :][:8]
        run(first, f.aclose())
