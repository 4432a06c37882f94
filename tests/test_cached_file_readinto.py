"""CachedFile.readinto and read_view: contents, checks, pins, lifetimes; the faces."""

from __future__ import annotations

import asyncio
import gc
import io
import random

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomemmap import (
    PAGE_SIZE,
    AsyncRemoteFile,
    BytesBacking,
    CachedFile,
    ClosedError,
    Engine,
    FaultInjectingBacking,
    MappableRange,
    MemoryFile,
    NoReadahead,
    RemoteFile,
    open,
    open_async,
)
from aiomemmap.faces.landing import VIEW_MIN

P = PAGE_SIZE
KiB = 1024
FETCH = 16 * KiB
SIZE = 5 * FETCH + 3 * P + 123  # several fetches; the last page is partial
DEADLINE = 30


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


DATA = pattern(SIZE)


class GatedBacking:
    """A read-only backing over bytes whose reads wait for ``gate``.

    ``entered`` is set when a read is waiting at the gate.
    """

    def __init__(self, data: bytes) -> None:
        self.inner = BytesBacking(data)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.reads = 0

    async def size(self) -> int:
        return await self.inner.size()

    async def version(self) -> str | None:
        return await self.inner.version()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        self.reads += 1
        self.entered.set()
        await self.gate.wait()
        return await self.inner.read_into(offset, buf)

    async def aclose(self) -> None:
        await self.inner.aclose()


def new_file(
    mf: MemoryFile, data: bytes = DATA, *, writable: bool = False
) -> CachedFile:
    return CachedFile(
        BytesBacking(data, readonly=not writable),
        mf,
        readahead=NoReadahead(),
        writable=writable,
        max_fetch_bytes=FETCH,
    )


async def close_and_check_freed(cf: CachedFile, mf: MemoryFile) -> None:
    await cf.aclose()
    gc.collect()
    assert mf.statistics().used_bytes == 0
    assert mf.evictor.pinned_bytes == 0


# ----------------------------------------------------------------------
# Contents


@settings(max_examples=40, derandomize=True)
@given(
    reads=st.lists(
        st.tuples(st.integers(0, SIZE + 2 * P), st.integers(0, 3 * FETCH)),
        min_size=1,
        max_size=8,
    )
)
async def test_readinto_and_read_view_match_the_backing(
    reads: list[tuple[int, int]],
) -> None:
    with MemoryFile("readinto", chunk_size=2 * 1024 * 1024) as mf:
        cf = new_file(mf)
        for offset, n in reads:
            want = DATA[offset : offset + n]
            buf = bytearray(b"\xee" * (n + 7))
            got = await cf.readinto(offset, memoryview(buf)[:n])
            assert got == len(want)
            assert buf[:got] == want
            # Short only at the end of the file; the rest stays as it was.
            assert buf[got:] == b"\xee" * (n + 7 - got)
            async with cf.read_view(offset, n) as view:
                assert view.readonly
                assert view.format == "B"
                assert view == want
            assert await cf.read(offset, n) == want
        cf.check_invariants()
        await close_and_check_freed(cf, mf)


async def test_reads_across_fetches_that_are_not_contiguous_in_the_memory_file() -> (
    None
):
    with MemoryFile("fragmented") as mf:
        cf = new_file(mf)
        # Fetched last page first: neighbouring fetches land in pages of the
        # memory file that are not neighbours.
        for start in range(5 * FETCH, -1, -FETCH):
            await cf.prefetch(
                MappableRange(start, min(start + FETCH, SIZE + P) // P * P)
            )
        offset, n = FETCH - 100, 2 * FETCH + 200
        buf = bytearray(n)
        assert await cf.readinto(offset, buf) == n
        assert buf == DATA[offset : offset + n]
        assert await cf.read(offset, n) == DATA[offset : offset + n]
        view_cm = cf.read_view(offset, n)
        async with view_cm as view:
            assert not view_cm.zero_copy  # a copy: the pages are not one run
            assert view == DATA[offset : offset + n]
        inside = cf.read_view(FETCH + 10, FETCH - 20)
        async with inside as view:
            assert inside.zero_copy  # one fetch's pages are one run
            assert view == DATA[FETCH + 10 : 2 * FETCH - 10]
        assert not inside.zero_copy
        await close_and_check_freed(cf, mf)


async def test_at_and_past_the_end_of_the_file() -> None:
    with MemoryFile("eof") as mf:
        cf = new_file(mf)
        buf = bytearray(b"x" * 50)
        assert await cf.readinto(SIZE, buf) == 0
        assert await cf.readinto(SIZE + 10 * P, buf) == 0
        assert await cf.readinto(SIZE - 20, buf) == 20
        assert buf == DATA[-20:] + b"x" * 30
        assert await cf.readinto(0, bytearray()) == 0
        async with cf.read_view(SIZE, 10) as view:
            assert len(view) == 0
        async with cf.read_view(SIZE - 5, 10) as view:
            assert view == DATA[-5:]
        await close_and_check_freed(cf, mf)


async def test_dirty_pages_are_read_as_written() -> None:
    with MemoryFile("dirty") as mf:
        cf = new_file(mf, writable=True)
        assert await cf.read(0, SIZE) == DATA  # cached: writes change the cache
        await cf.write(FETCH - 3, b"A" * 10)
        await cf.write(SIZE + 5, b"tail")  # extends the file with a gap
        want = bytearray(DATA)
        want[FETCH - 3 : FETCH + 7] = b"A" * 10
        want += bytes(5) + b"tail"
        assert cf.statistics().dirty_bytes > 0
        buf = bytearray(len(want))
        assert await cf.readinto(0, buf) == len(want)
        assert buf == want
        async with cf.read_view(FETCH - 8, 20) as view:
            assert view == want[FETCH - 8 : FETCH + 12]
        async with cf.read_view(SIZE, 20) as view:
            assert view == want[SIZE:]
        await close_and_check_freed(cf, mf)


# ----------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("offset", "buf", "error"),
    [
        (-1, bytearray(4), ValueError),
        (1.5, bytearray(4), TypeError),
        (0, b"read-only", TypeError),
        (0, memoryview(bytearray(8)).toreadonly(), TypeError),
        (0, "not a buffer", TypeError),
        (0, 12, TypeError),
        (0, memoryview(bytearray(16))[::2], ValueError),
    ],
)
async def test_bad_input_raises_and_changes_nothing(
    offset: object, buf: object, error: type[Exception]
) -> None:
    with MemoryFile("bad") as mf:
        cf = new_file(mf)
        before = cf.statistics()
        used = mf.statistics().used_bytes
        with pytest.raises(error):
            await cf.readinto(offset, buf)  # type: ignore[arg-type]
        assert cf.statistics() == before
        assert mf.statistics().used_bytes == used == 0
        if isinstance(buf, memoryview) and not buf.readonly:
            assert buf.tobytes() == bytes(len(buf))
        with pytest.raises(ValueError, match="offset must be"):
            cf.read_view(-1, 4)
        with pytest.raises(ValueError, match="n must be"):
            cf.read_view(0, -4)
        with pytest.raises(TypeError):
            cf.read_view(0, 4.0)  # type: ignore[arg-type]
        await close_and_check_freed(cf, mf)


async def test_a_closed_file_raises() -> None:
    with MemoryFile("closed") as mf:
        cf = new_file(mf)
        await cf.aclose()
        with pytest.raises(ClosedError):
            await cf.readinto(0, bytearray(4))
        with pytest.raises(ClosedError):
            async with cf.read_view(0, 4):
                pass


async def test_a_view_is_entered_once_and_dies_with_its_block() -> None:
    with MemoryFile("once") as mf:
        cf = new_file(mf)
        cm = cf.read_view(0, 10)
        async with cm as view:
            assert view == DATA[:10]
        with pytest.raises(ValueError, match="released"):
            view.tobytes()  # released on exit
        with pytest.raises(RuntimeError):
            async with cm:
                pass
        await close_and_check_freed(cf, mf)


# ----------------------------------------------------------------------
# Concurrency and cancellation


async def test_concurrent_readers_share_fetches() -> None:
    rng = random.Random(7)
    with MemoryFile("concurrent") as mf:
        backing = FaultInjectingBacking(BytesBacking(DATA), latency=0.002, seed=3)
        cf = CachedFile(backing, mf, readahead=NoReadahead(), max_fetch_bytes=FETCH)

        async def reader(seed: int) -> None:
            r = random.Random(seed)
            for _ in range(10):
                offset, n = r.randrange(SIZE), r.randrange(1, 2 * FETCH)
                if r.random() < 0.5:
                    buf = bytearray(n)
                    got = await cf.readinto(offset, buf)
                    assert buf[:got] == DATA[offset : offset + n]
                else:
                    async with cf.read_view(offset, n) as view:
                        assert view == DATA[offset : offset + n]

        with anyio.fail_after(DEADLINE):
            async with asyncio.TaskGroup() as tg:
                for _ in range(16):
                    tg.create_task(reader(rng.randrange(1 << 30)))
        # One fetch per page range: never more bytes than the file's pages.
        assert cf.statistics().bytes_fetched <= SIZE + P
        await close_and_check_freed(cf, mf)


@pytest.mark.parametrize("cache_limit", [None, 8 * FETCH])
@pytest.mark.parametrize("how", ["readinto", "read_view"])
async def test_cancelled_while_waiting_for_a_fetch_leaks_nothing(
    cache_limit: int | None, how: str
) -> None:
    with MemoryFile("cancel", cache_limit=cache_limit) as mf:
        backing = GatedBacking(DATA)
        cf = CachedFile(backing, mf, readahead=NoReadahead(), max_fetch_bytes=FETCH)
        assert await cf.read(0, 0) == b""  # learns the size
        buf = bytearray(b"\xee" * 3 * P)
        entered_view = False

        async def go() -> None:
            nonlocal entered_view
            if how == "readinto":
                await cf.readinto(P + 1, buf)
            else:
                async with cf.read_view(P + 1, len(buf)):
                    entered_view = True

        with anyio.fail_after(DEADLINE):
            task = asyncio.get_running_loop().create_task(go())
            await backing.entered.wait()
            assert mf.evictor.pinned_bytes == (0 if cache_limit is None else 4 * P)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert buf == b"\xee" * 3 * P
            assert not entered_view
            assert mf.evictor.pinned_bytes == 0
            # The fetch carries on and lands its pages for the next reader.
            backing.gate.set()
            assert await cf.read(P + 1, 10) == DATA[P + 1 : P + 11]
        assert backing.reads == 1
        await close_and_check_freed(cf, mf)


# ----------------------------------------------------------------------
# Views held while pages leave the cache


async def test_a_view_is_pinned_under_eviction_pressure() -> None:
    limit = 4 * FETCH
    big = pattern(40 * FETCH, seed=5)
    with MemoryFile("pressure", cache_limit=limit) as mf:
        cf = new_file(mf, big)
        held = cf.read_view(FETCH + 100, FETCH - 200)
        async with held as view:
            assert held.zero_copy
            assert mf.evictor.pinned_bytes == FETCH
            # Scan the rest: every other fetch evicts something.
            buf = bytearray(FETCH)
            for offset in range(2 * FETCH, len(big), FETCH):
                assert await cf.readinto(offset, buf) == FETCH
                assert buf == big[offset : offset + FETCH]
            assert cf.statistics().evictions > 0
            assert view == big[FETCH + 100 : 2 * FETCH - 100]
            # Still cached: the view's pages were never evicted.
            fetches = cf.statistics().fetches
            assert await cf.read(FETCH, FETCH) == big[FETCH : 2 * FETCH]
            assert cf.statistics().fetches == fetches
        assert mf.evictor.pinned_bytes == 0
        cf.check_invariants()
        await close_and_check_freed(cf, mf)


async def test_truncation_while_a_view_is_held() -> None:
    with MemoryFile("truncate") as mf:
        cf = new_file(mf, writable=True)
        used_before = mf.statistics().used_bytes
        async with cf.read_view(0, 3 * P + 100) as view:
            used_with_view = mf.statistics().used_bytes
            assert used_with_view > used_before
            await cf.truncate(P + 10)
            assert cf.size == P + 10
            # The page the file keeps is zeroed past the new end, as the
            # file reads; the pages truncated away keep their bytes, held by
            # the view and never handed out again meanwhile.
            assert view[: P + 10] == DATA[: P + 10]
            assert view[P + 10 : 2 * P] == bytes(P - 10)
            assert view[2 * P :] == DATA[2 * P : 3 * P + 100]
            assert mf.statistics().used_bytes == used_with_view
            # New pages never reuse the held ones.
            await cf.write(P + 10, b"B" * (3 * P))
            assert view[2 * P :] == DATA[2 * P : 3 * P + 100]
        assert await cf.read(0, 5 * P) == DATA[: P + 10] + b"B" * (3 * P)
        await close_and_check_freed(cf, mf)


async def test_closing_the_file_while_a_view_is_held() -> None:
    with MemoryFile("close") as mf:
        cf = new_file(mf)
        async with cf.read_view(10, 2 * P) as view:
            await cf.aclose()
            assert mf.statistics().used_bytes > 0
            assert view == DATA[10 : 10 + 2 * P]
        assert mf.statistics().used_bytes == 0


async def test_slices_and_exports_keep_the_pages_until_they_go() -> None:
    with MemoryFile("slices") as mf:
        cf = new_file(mf)
        async with cf.read_view(P, 2 * P) as view:
            part = view[10:20]
            array = np.frombuffer(view, dtype=np.uint8)
        await cf.aclose()
        gc.collect()
        # Both still read the pages, which are not freed under them.
        assert mf.statistics().used_bytes > 0
        assert part == DATA[P + 10 : P + 20]
        assert array.tobytes() == DATA[P : 3 * P]
        del part
        gc.collect()
        assert mf.statistics().used_bytes > 0
        del array
        gc.collect()
        assert mf.statistics().used_bytes == 0


# ----------------------------------------------------------------------
# The faces


@pytest.fixture
def local_file(tmp_path: object) -> str:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return str(path)


def test_remote_file_readinto(local_file: str) -> None:
    with Engine().start_thread() as et, open(local_file, engine=et) as f:
        assert isinstance(f, RemoteFile)
        buf = bytearray(3 * P)
        assert f.readinto(buf) == 3 * P
        assert buf == DATA[: 3 * P]
        assert f.tell() == 3 * P
        f.seek(SIZE - 10)
        assert f.readinto(buf) == 10
        assert buf[:10] == DATA[-10:]
        assert f.readinto(buf) == 0
        arr = np.zeros(100, dtype=np.uint32)
        f.seek(0)
        assert f.readinto(arr) == 400
        assert arr.tobytes() == DATA[:400]
        with pytest.raises(TypeError):
            f.readinto(b"read-only")
        f.seek(0)
        reader = io.BufferedReader(f, buffer_size=FETCH)
        assert reader.read() == DATA


async def test_async_remote_file_readinto_on_its_loop(local_file: str) -> None:
    async with await open_async(local_file) as f:
        assert isinstance(f, AsyncRemoteFile)
        buf = bytearray(2 * FETCH)
        assert await f.readinto(buf) == 2 * FETCH
        assert buf == DATA[: 2 * FETCH]
        f.seek(-5, io.SEEK_END)
        assert await f.readinto(buf) == 5
        assert buf[:5] == DATA[-5:]
        with pytest.raises(TypeError):
            await f.readinto(b"read-only")


async def test_async_remote_file_readinto_through_an_engine_thread(
    local_file: str,
) -> None:
    with Engine().start_thread() as et:
        async with await open_async(local_file, engine=et) as f:
            buf = bytearray(SIZE + 10)
            assert await f.readinto(buf) == SIZE
            assert buf[:SIZE] == DATA
            assert await f.readinto(buf) == 0


@pytest.mark.parametrize("through", ["sync", "async"])
async def test_large_face_reads_go_through_held_views(
    tmp_path: object, through: str
) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    big = pattern(3 * VIEW_MIN + 5, seed=9)
    path = tmp_path / "big.bin"
    path.write_bytes(big)
    with Engine().start_thread() as et:
        buf = bytearray(VIEW_MIN + 3)
        if through == "sync":
            with open(str(path), engine=et) as f:
                f.seek(VIEW_MIN - 1)
                n = await asyncio.to_thread(f.readinto, buf)
        else:
            async with await open_async(str(path), engine=et) as af:
                af.seek(VIEW_MIN - 1)
                n = await af.readinto(buf)
        assert n == len(buf)
        assert buf == big[VIEW_MIN - 1 : 2 * VIEW_MIN + 2]
