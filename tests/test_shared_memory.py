"""SharedMemory: file operations, translate policy, identity, bad input,
cancellation, concurrency, and a model-based state machine."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from aiomemmap import (
    AccessType,
    AddrRange,
    AlignmentError,
    BusError,
    ClosedError,
    FileRange,
    InvalidationBus,
    MappableRange,
    MemoryFile,
    MemoryKind,
    RefCountError,
    SharedMemory,
    check_translate_result,
)
from aiomemmap.mappables.shared_memory import (
    FILL_LIMIT,
    MAX_SHARED_MEMORY_SIZE,
    SHARED_MEMORY_DEVICE_ID,
    TRANSLATE_LIMIT,
    max_optional_range,
)
from aiomemmap.memmap.bus import default_bus
from tests.mappable_contract import P, RecordingSpace, pattern

MiB = 1024 * 1024


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    f = MemoryFile("test-shm", chunk_size=4 * MiB)
    yield f
    f.close()


def used(mf: MemoryFile) -> int:
    return mf.statistics().used_bytes


def M(a: int, b: int) -> MappableRange:
    return MappableRange(a, b)


# --------------------------------------------------------------------------
# File operations


async def test_write_read_extend(mf: MemoryFile) -> None:
    sm = SharedMemory(mf)
    assert sm.size == 0
    assert await sm.read(0, 10) == b""
    assert await sm.write(5, b"hello") == 5
    assert sm.size == 10
    assert await sm.read(0, 100) == bytes(5) + b"hello"
    assert await sm.read(7, 2) == b"ll"
    assert await sm.read(10, 5) == b""
    assert await sm.read(1000, 5) == b""
    assert await sm.write(2, bytearray(b"XY")) == 2
    assert await sm.write(3, memoryview(b"Z")) == 1
    assert await sm.read(0, 10) == b"\0\0XZ\0hello"
    assert await sm.write(3, b"") == 0
    assert sm.size == 10
    assert used(mf) == P
    assert mf.statistics().bytes_by_kind[MemoryKind.TMPFS] == P
    sm.check_invariants()
    await sm.aclose()
    assert used(mf) == 0


async def test_write_across_pages_and_holes_read_as_zero(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 10 * P)
    assert used(mf) == 0
    assert await sm.read(0, 10 * P) == bytes(10 * P)
    data = pattern(2 * P + 50)
    await sm.write(3 * P - 25, data)
    assert used(mf) == 4 * P  # pages 2, 3, 4, 5
    assert sm.resident_bytes() == 4 * P
    got = await sm.read(0, 10 * P)
    assert got == bytes(3 * P - 25) + data + bytes(10 * P - (5 * P + 25))
    sm.check_invariants()
    await sm.aclose()


async def test_write_past_end_leaves_zero_gap(mf: MemoryFile) -> None:
    sm = SharedMemory(mf)
    await sm.write(0, b"a" * 100)
    await sm.write(3 * P, b"b")
    assert await sm.read(0, 3 * P + 1) == b"a" * 100 + bytes(3 * P - 100) + b"b"
    assert used(mf) == 2 * P  # the gap pages stay holes
    await sm.aclose()


async def test_truncate_shrink_zeroes_partial_page_and_frees(mf: MemoryFile) -> None:
    sm = SharedMemory(mf)
    data = pattern(5 * P)
    await sm.write(0, data)
    assert used(mf) == 5 * P
    await sm.truncate(2 * P + 10)
    assert sm.size == 2 * P + 10
    assert used(mf) == 3 * P
    assert await sm.read(0, 5 * P) == data[: 2 * P + 10]
    # The bytes past the end of the last page were zeroed.
    await sm.truncate(5 * P)
    assert await sm.read(0, 5 * P) == data[: 2 * P + 10] + bytes(3 * P - 10)
    await sm.truncate(0)
    assert used(mf) == 0
    assert await sm.read(0, 10) == b""
    sm.check_invariants()
    await sm.aclose()


async def test_truncate_grow_zeroes_bytes_written_past_end(mf: MemoryFile) -> None:
    sm = SharedMemory(mf)
    await sm.write(0, b"x" * 10)
    ms = RecordingSpace()
    await sm.add_mapping(ms, AddrRange(0, P), 0, True)
    (t,), err = await sm.translate(M(0, P), M(0, P), AccessType.WRITE)
    assert err is None
    # A shared mapping can store past the end inside the last page.
    view = t.file.map_internal(t.file_range(), AccessType.WRITE)[0]
    view[10:20] = b"y" * 10
    await sm.truncate(30)
    assert await sm.read(0, 30) == b"x" * 10 + bytes(20)
    view[40:50] = b"z" * 10
    await sm.write(60, b"w")
    assert await sm.read(0, 61) == b"x" * 10 + bytes(50) + b"w"
    del view
    await sm.remove_mapping(ms, AddrRange(0, P), 0, True)
    await sm.aclose()


# --------------------------------------------------------------------------
# translate


def test_max_optional_range() -> None:
    assert max_optional_range(M(0, 4 * P), M(0, 100 * P), 4 * P) == M(0, 4 * P)
    assert max_optional_range(M(P, 2 * P), M(0, 8 * P), 16 * P) == M(0, 8 * P)
    assert max_optional_range(M(P, 2 * P), M(0, 100 * P), 16 * P) == M(P, 17 * P)
    assert max_optional_range(M(90 * P, 91 * P), M(0, 95 * P), 16 * P) == M(
        90 * P, 95 * P
    )


async def test_translate_fills_64k_and_translates_up_to_2m(mf: MemoryFile) -> None:
    size = 4 * MiB
    sm = SharedMemory(mf, size)
    ms = RecordingSpace()
    await sm.add_mapping(ms, AddrRange(0, size), 0, True)
    req, opt = M(P, 2 * P), M(0, size)
    ts, err = await sm.translate(req, opt, AccessType.READ)
    assert err is None
    assert check_translate_result(req, opt, AccessType.READ, ts, err) is None
    # Holes were filled in [P, P + 64 KiB) only.
    assert sm.resident_bytes() == FILL_LIMIT == used(mf)
    assert ts[0].source.start == P
    assert ts[-1].source.end == P + FILL_LIMIT
    assert all(t.perms == AccessType.ANY for t in ts)
    await sm.remove_mapping(ms, AddrRange(0, size), 0, True)
    await sm.aclose()
    # Pages present in one run are translated up to 2 MiB past required.
    sm = SharedMemory(mf)
    await sm.write(0, bytes(3 * MiB))
    await sm.add_mapping(ms, AddrRange(0, size), 0, True)
    ts, err = await sm.translate(req, opt, AccessType.READ)
    assert err is None
    assert [t.source for t in ts] == [M(P, P + TRANSLATE_LIMIT)]
    assert check_translate_result(req, opt, AccessType.READ, ts, err) is None
    # A small optional range is used whole.
    ts, err = await sm.translate(M(2 * P, 3 * P), M(P, 5 * P), AccessType.WRITE)
    assert [t.source for t in ts] == [M(P, 5 * P)]
    # A run that starts past required is not included (it would not overlap
    # required); the translation stops at the end of the run.
    await sm.truncate(0)
    await sm.truncate(size)
    await sm.write(P, b"a")  # allocates [P, 2P) alone
    await sm.write(2 * P, bytes(P))  # a separate run [2P, 3P)
    ts, err = await sm.translate(req, opt, AccessType.READ)
    assert err is None
    assert check_translate_result(req, opt, AccessType.READ, ts, err) is None
    assert ts[0].source.start == P
    await sm.remove_mapping(ms, AddrRange(0, size), 0, True)
    await sm.aclose()


async def test_translate_clips_to_size_and_reports_eof(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 3 * P + 1)
    ts, err = await sm.translate(M(4 * P, 5 * P), M(0, 8 * P), AccessType.READ)
    assert ts == []
    assert isinstance(err, BusError)
    assert isinstance(err.err, EOFError)
    ts, err = await sm.translate(M(2 * P, 6 * P), M(0, 8 * P), AccessType.READ)
    assert isinstance(err, BusError)
    assert isinstance(err.err, EOFError)
    assert ts[0].source.start <= 2 * P
    assert ts[-1].source.end == 4 * P
    assert sm.resident_bytes() == 4 * P  # never past the page-rounded size
    await sm.aclose()


async def test_translate_out_of_memory_is_bus_error() -> None:
    with MemoryFile("tiny", max_size=2 * P, chunk_size=2 * MiB) as small:
        sm = SharedMemory(small, 8 * P)
        ts, err = await sm.translate(M(0, 4 * P), M(0, 4 * P), AccessType.READ)
        assert ts == []
        assert isinstance(err, BusError)
        assert small.statistics().used_bytes == 0
        with pytest.raises(MemoryError):
            await sm.write(0, bytes(3 * P))
        assert small.statistics().used_bytes == 0
        assert sm.size == 8 * P
        await sm.aclose()


# --------------------------------------------------------------------------
# Identity and lifetime


async def test_identity_methods(mf: MemoryFile) -> None:
    a = SharedMemory(mf)
    b = SharedMemory(mf, name="/dev/shm/x")
    assert a.inode_id() != b.inode_id()
    assert a.device_id() == b.device_id() == SHARED_MEMORY_DEVICE_ID
    assert a.mapped_name() == f"/memfd:shm-{a.inode_id()} (deleted)"
    assert b.mapped_name() == "/dev/shm/x"
    await a.msync(M(0, P))
    await a.invalidate_unsavable()
    a.inc_ref()
    await a.dec_ref()
    assert "closed" not in repr(a)
    await a.write(0, b"x")
    await a.dec_ref()  # the creator's reference: closes
    assert a.closed
    assert used(mf) == 0
    with pytest.raises(RefCountError):
        await a.dec_ref()
    await b.aclose()
    assert "closed" in repr(b)


async def test_aclose_refuses_while_mapped(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    ms = RecordingSpace()
    await sm.add_mapping(ms, AddrRange(0, P), 0, False)
    with pytest.raises(RuntimeError, match="still mapped"):
        await sm.aclose()
    assert not sm.closed
    await sm.remove_mapping(ms, AddrRange(0, P), 0, False)
    await sm.aclose()
    await sm.aclose()  # idempotent


async def test_aclose_after_memory_file_closed() -> None:
    f = MemoryFile("gone", chunk_size=2 * MiB)
    sm = SharedMemory(f)
    await sm.write(0, b"data")
    f.close()
    await sm.aclose()
    assert sm.closed


async def test_methods_after_close_raise_closed_error(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    await sm.aclose()
    ms = RecordingSpace()
    ar = AddrRange(0, P)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: sm.read(0, 1),
        lambda: sm.write(0, b"x"),
        lambda: sm.truncate(0),
        lambda: sm.add_mapping(ms, ar, 0, True),
        lambda: sm.remove_mapping(ms, ar, 0, True),
        lambda: sm.copy_mapping(ms, ar, ar, 0, True),
        lambda: sm.translate(M(0, P), M(0, P), AccessType.READ),
        lambda: sm.invalidate_unsavable(),
        lambda: sm.msync(M(0, P)),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            await call()
    with pytest.raises(ClosedError):
        sm.inc_ref()
    await sm.dec_ref()  # dropping a reference still works


# --------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        (("mf",), {}, TypeError),
        ((None,), {}, TypeError),
        ((1.0,), {}, TypeError),
        (("MF", -1), {}, ValueError),
        (("MF", 1.5), {}, TypeError),
        (("MF", True), {}, TypeError),
        (("MF", MAX_SHARED_MEMORY_SIZE + 1), {}, ValueError),
        (("MF",), {"name": 3}, TypeError),
        (("MF",), {"name": "a\0b"}, ValueError),
    ],
)
def test_constructor_rejects_bad_input(
    mf: MemoryFile, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type
) -> None:
    args = tuple(mf if a == "MF" else a for a in args)
    with pytest.raises(exc):
        SharedMemory(*args, **kwargs)


def test_constructor_rejects_closed_memory_file() -> None:
    f = MemoryFile("closed", chunk_size=2 * MiB)
    f.close()
    with pytest.raises(ClosedError):
        SharedMemory(f)


BAD_CALLS: list[tuple[str, Callable[[SharedMemory], Awaitable[object]], type]] = []


def _bad(name: str, exc: type) -> Callable[[Callable[..., Any]], None]:
    def deco(fn: Callable[[SharedMemory], Awaitable[object]]) -> None:
        BAD_CALLS.append((name, fn, exc))

    return deco


_ms = RecordingSpace()
_ar = AddrRange(0, P)
for _name, _fn, _exc in [
    ("read-offset-type", lambda s: s.read("0", 1), TypeError),
    ("read-offset-neg", lambda s: s.read(-1, 1), ValueError),
    ("read-n-type", lambda s: s.read(0, None), TypeError),
    ("read-n-neg", lambda s: s.read(0, -1), ValueError),
    ("read-overflow", lambda s: s.read(MAX_SHARED_MEMORY_SIZE, 1), ValueError),
    ("write-data-type", lambda s: s.write(0, "text"), TypeError),
    ("write-data-list", lambda s: s.write(0, [1, 2]), TypeError),
    ("write-offset-type", lambda s: s.write(1.0, b"x"), TypeError),
    ("write-offset-neg", lambda s: s.write(-5, b"x"), ValueError),
    ("write-overflow", lambda s: s.write(MAX_SHARED_MEMORY_SIZE, b"x"), ValueError),
    (
        "write-noncontiguous",
        lambda s: s.write(0, memoryview(b"abcd")[::2]),
        ValueError,
    ),
    ("truncate-type", lambda s: s.truncate("1"), TypeError),
    ("truncate-bool", lambda s: s.truncate(False), TypeError),
    ("truncate-neg", lambda s: s.truncate(-1), ValueError),
    ("truncate-huge", lambda s: s.truncate(MAX_SHARED_MEMORY_SIZE + 1), ValueError),
    ("add-ms", lambda s: s.add_mapping(object(), _ar, 0, True), TypeError),
    ("add-unhashable", lambda s: s.add_mapping(_Unhashable(), _ar, 0, True), TypeError),
    ("add-ar-type", lambda s: s.add_mapping(_ms, M(0, P), 0, True), TypeError),
    (
        "add-ar-empty",
        lambda s: s.add_mapping(_ms, AddrRange(P, P), 0, True),
        ValueError,
    ),
    (
        "add-ar-unaligned",
        lambda s: s.add_mapping(_ms, AddrRange(0, 10), 0, True),
        AlignmentError,
    ),
    ("add-off-unaligned", lambda s: s.add_mapping(_ms, _ar, 1, True), AlignmentError),
    ("add-off-neg", lambda s: s.add_mapping(_ms, _ar, -P, True), ValueError),
    ("add-off-type", lambda s: s.add_mapping(_ms, _ar, "0", True), TypeError),
    ("add-overflow", lambda s: s.add_mapping(_ms, _ar, 2**64 - P, True), ValueError),
    ("add-writable", lambda s: s.add_mapping(_ms, _ar, 0, 1), TypeError),
    ("remove-writable", lambda s: s.remove_mapping(_ms, _ar, 0, None), TypeError),
    ("remove-ar", lambda s: s.remove_mapping(_ms, (0, P), 0, True), TypeError),
    (
        "copy-src-unaligned",
        lambda s: s.copy_mapping(_ms, AddrRange(0, 1), _ar, 0, True),
        AlignmentError,
    ),
    ("copy-src-type", lambda s: s.copy_mapping(_ms, None, _ar, 0, True), TypeError),
    (
        "copy-dst-empty",
        lambda s: s.copy_mapping(_ms, _ar, AddrRange(0, 0), 0, True),
        ValueError,
    ),
    (
        "translate-req-type",
        lambda s: s.translate(AddrRange(0, P), M(0, P), AccessType.READ),
        TypeError,
    ),
    (
        "translate-req-empty",
        lambda s: s.translate(M(P, P), M(0, P), AccessType.READ),
        ValueError,
    ),
    (
        "translate-req-unaligned",
        lambda s: s.translate(M(0, 10), M(0, P), AccessType.READ),
        AlignmentError,
    ),
    (
        "translate-opt-unaligned",
        lambda s: s.translate(M(0, P), M(0, P + 1), AccessType.READ),
        AlignmentError,
    ),
    (
        "translate-opt-not-superset",
        lambda s: s.translate(M(0, 2 * P), M(0, P), AccessType.READ),
        ValueError,
    ),
    ("translate-at", lambda s: s.translate(M(0, P), M(0, P), "r"), TypeError),
    ("msync-type", lambda s: s.msync((0, P)), TypeError),
    ("msync-empty", lambda s: s.msync(M(0, 0)), ValueError),
]:
    _bad(_name, _exc)(_fn)


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    async def invalidate(self, ar: AddrRange, opts: object) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "call", "exc"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
async def test_bad_input_rejected_and_changes_nothing(
    mf: MemoryFile, name: str, call: Callable[[SharedMemory], Any], exc: type
) -> None:
    sm = SharedMemory(mf)
    await sm.write(0, b"abc")
    before = (sm.size, sm.resident_bytes(), used(mf), sm.is_mapped())
    with pytest.raises(exc):
        await call(sm)
    assert (sm.size, sm.resident_bytes(), used(mf), sm.is_mapped()) == before
    assert await sm.read(0, 10) == b"abc"
    await sm.aclose()


async def test_remove_of_unmapped_offset_raises_lookup_error(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, P)
    with pytest.raises(LookupError):
        await sm.remove_mapping(_ms, _ar, 0, True)
    await sm.aclose()


# --------------------------------------------------------------------------
# Cancellation


async def _hold(lock: Any, held: anyio.Event, release: anyio.Event) -> None:
    async with lock:
        held.set()
        await release.wait()


async def _cancel_while_blocked(
    sm: SharedMemory,
    op: Callable[[], Awaitable[object]],
    lock: Any | None,
    space: RecordingSpace | None = None,
    gate: anyio.Event | None = None,
) -> None:
    """Run ``op`` until it blocks on ``lock`` (or in ``space``), then cancel it."""
    held, release = anyio.Event(), anyio.Event()
    blocker = None
    if lock is not None:
        blocker = asyncio.create_task(_hold(lock, held, release))
        await held.wait()
    victim: asyncio.Future[object] = asyncio.ensure_future(op())
    if space is not None:
        await space.entered.wait()
    else:
        for _ in range(5):
            await asyncio.sleep(0)
        assert not victim.done()
    victim.cancel()
    if gate is not None:
        # The bus keeps delivering after the cancellation: let it finish.
        for _ in range(5):
            await asyncio.sleep(0)
        assert not victim.done()
        gate.set()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await victim
    if blocker is not None:
        await blocker


@pytest.mark.parametrize(
    ("op", "point"),
    [
        ("read", "data"),
        ("write", "mappings"),
        ("write", "data"),
        ("translate", "data"),
        ("truncate", "mappings"),
        ("truncate", "data"),
        ("truncate", "invalidate"),
        ("truncate", "free"),
        ("add_mapping", "mappings"),
        ("aclose", "mappings"),
        ("aclose", "data"),
    ],
)
async def test_cancel_at_each_await_leaks_nothing(
    mf: MemoryFile, op: str, point: str
) -> None:
    with _deadline():
        sm = SharedMemory(mf)
        data = pattern(6 * P)
        await sm.write(0, data)
        model = bytearray(data)
        gate = anyio.Event()
        ms = RecordingSpace(gate=gate if point == "invalidate" else None)
        await sm.add_mapping(ms, AddrRange(0x100000, 0x100000 + 6 * P), 0, True)
        ops: dict[str, Callable[[], Awaitable[object]]] = {
            "read": lambda: sm.read(0, P),
            "write": lambda: sm.write(8 * P, b"new"),
            "translate": lambda: sm.translate(
                M(7 * P, 8 * P), M(0, 8 * P), AccessType.WRITE
            ),
            "truncate": lambda: sm.truncate(2 * P + 7),
            "add_mapping": lambda: sm.add_mapping(ms, AddrRange(0, P), 0, False),
            "aclose": sm.aclose,
        }
        if op == "aclose":
            await sm.remove_mapping(ms, AddrRange(0x100000, 0x100000 + 6 * P), 0, True)
        if op == "translate":
            await sm.truncate(8 * P)
            model.extend(bytes(2 * P))
        if point == "free":
            # Block the second data-lock acquisition of truncate: hold the
            # lock from inside the space's invalidate callback.
            held, release = anyio.Event(), anyio.Event()
            blocker: list[asyncio.Task[None]] = []

            async def grab(ar: AddrRange, opts: Any) -> None:
                if not blocker:
                    blocker.append(
                        asyncio.create_task(
                            _hold(sm._data_lock, held, release),
                            context=_detached(),
                        )
                    )
                    await held.wait()

            ms.invalidate = grab  # type: ignore[method-assign]
            victim: asyncio.Future[object] = asyncio.ensure_future(ops[op]())
            await held.wait()
            for _ in range(5):
                await asyncio.sleep(0)
            assert not victim.done()
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            release.set()
            await blocker[0]
            # The pages past the end wait for the next data-lock holder.
            assert sm.size == 2 * P + 7
            assert sm._reap_from == 3 * P
            assert used(mf) == 6 * P
            assert await sm.read(0, 10 * P) == bytes(data[: 2 * P + 7])
            assert used(mf) == 3 * P
        else:
            lock = {
                "data": sm._data_lock,
                "mappings": sm._mappings_lock,
                "invalidate": None,
            }[point]
            await _cancel_while_blocked(
                sm,
                ops[op],
                lock,
                space=ms if point == "invalidate" else None,
                gate=gate if point == "invalidate" else None,
            )
            if op == "truncate" and point == "invalidate":
                # Completed, not rolled back: size changed, pages freed.
                del model[2 * P + 7 :]
                assert ms.pages() == set(range(0x100000 + 3 * P, 0x100000 + 6 * P, P))
            if op == "aclose":
                assert not sm.closed
                await sm.aclose()
                assert used(mf) == 0
                return
            assert sm.size == len(model)
            assert await sm.read(0, 20 * P) == bytes(model)
            assert used(mf) == sm.resident_bytes()
        sm.check_invariants()
        await sm.remove_mapping(ms, AddrRange(0x100000, 0x100000 + 6 * P), 0, True)
        assert not sm.is_mapped()
        await sm.aclose()
        assert used(mf) == 0


def _detached() -> Any:
    from aiomemmap._core.locks import detached_context

    return detached_context()


def _deadline() -> Any:
    return anyio.fail_after(30)


async def test_truncate_with_failing_space_still_completes(mf: MemoryFile) -> None:
    class Failing(RecordingSpace):
        async def invalidate(self, ar: AddrRange, opts: Any) -> None:
            raise OSError("boom")

    sm = SharedMemory(mf)
    await sm.write(0, pattern(4 * P))
    bad, good = Failing("bad"), RecordingSpace("good")
    await sm.add_mapping(bad, AddrRange(0, 4 * P), 0, True)
    await sm.add_mapping(good, AddrRange(0, 4 * P), 0, True)
    with pytest.raises(ExceptionGroup):
        await sm.truncate(P)
    assert sm.size == P
    assert used(mf) == P
    assert good.pages() == {P, 2 * P, 3 * P}
    for ms in (bad, good):
        await sm.remove_mapping(ms, AddrRange(0, 4 * P), 0, True)
    await sm.aclose()
    assert used(mf) == 0


# --------------------------------------------------------------------------
# Concurrency


async def test_concurrent_operations_match_model(mf: MemoryFile) -> None:
    class YieldingSpace(RecordingSpace):
        async def invalidate(self, ar: AddrRange, opts: Any) -> None:
            # Suspend so that other operations run during the publication.
            await asyncio.sleep(0)
            await super().invalidate(ar, opts)

    sm = SharedMemory(mf)
    ms = YieldingSpace()
    span = 32 * P
    await sm.add_mapping(ms, AddrRange(0, span), 0, True)
    model = bytearray()
    rng = random.Random(11)
    # Mutations are applied to the model in the order they take effect:
    # each one runs under the mappings lock, so their order is the order in
    # which they start (FIFO lock). Readers check a prefix-consistency bound.
    order: list[Callable[[bytearray], None]] = []

    async def writer(i: int) -> None:
        for _ in range(15):
            off = rng.randrange(0, 24 * P)
            data = bytes([i + 1]) * rng.randrange(1, 2 * P)
            order.append(functools.partial(_model_write, off=off, data=data))
            await sm.write(off, data)
            await asyncio.sleep(0)

    async def truncator() -> None:
        for _ in range(10):
            size = rng.randrange(0, 24 * P)
            order.append(functools.partial(_model_truncate, size=size))
            await sm.truncate(size)
            await asyncio.sleep(0)

    async def reader() -> None:
        for _ in range(30):
            got = await sm.read(0, span)
            assert len(got) <= span
            await asyncio.sleep(0)

    async def translator() -> None:
        for _ in range(30):
            a = rng.randrange(0, 31)
            req, opt = M(a * P, (a + 1) * P), M(0, span)
            ts, err = await sm.translate(req, opt, AccessType.READ_WRITE)
            assert (
                check_translate_result(req, opt, AccessType.READ_WRITE, ts, err) is None
            )
            await asyncio.sleep(0)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(writer, i)
            tg.start_soon(truncator)
            for _ in range(2):
                tg.start_soon(reader)
                tg.start_soon(translator)
    for step in order:
        step(model)
    assert sm.size == len(model)
    assert await sm.read(0, span * 2) == bytes(model)
    assert used(mf) == sm.resident_bytes()
    sm.check_invariants()
    await sm.remove_mapping(ms, AddrRange(0, span), 0, True)
    await sm.aclose()
    assert used(mf) == 0


def _model_write(m: bytearray, off: int, data: bytes) -> None:
    if off > len(m):
        m.extend(bytes(off - len(m)))
    m[off : off + len(data)] = data


def _model_truncate(m: bytearray, size: int) -> None:
    if size < len(m):
        del m[size:]
    else:
        m.extend(bytes(size - len(m)))


# --------------------------------------------------------------------------
# Model-based state machine


class SharedMemoryMachine(RuleBasedStateMachine):
    """Drive a SharedMemory against a bytearray; check contents and pages."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.mf = MemoryFile("machine", chunk_size=2 * MiB)
        self.sm = SharedMemory(self.mf)
        self.model = bytearray()
        self.present: set[int] = set()
        self.ms = RecordingSpace()
        self.span = 16 * P

    def run(self, coro: Awaitable[Any]) -> Any:
        async def main() -> Any:
            return await coro

        return self.loop.run_until_complete(main())

    @initialize()
    def map_all(self) -> None:
        self.run(self.sm.add_mapping(self.ms, AddrRange(0, self.span), 0, True))

    @rule(off=st.integers(0, 12 * P), n=st.integers(0, 3 * P), b=st.integers(1, 255))
    def write(self, off: int, n: int, b: int) -> None:
        data = bytes([b]) * n
        assert self.run(self.sm.write(off, data)) == n
        if n:
            _model_write(self.model, off, data)
            self.present |= set(range(off // P, (off + n - 1) // P + 1))

    @rule(size=st.integers(0, 14 * P))
    def truncate(self, size: int) -> None:
        self.ms.calls.clear()
        old = len(self.model)
        self.run(self.sm.truncate(size))
        _model_truncate(self.model, size)
        limit = -(-size // P)
        self.present = {p for p in self.present if p < limit}
        expected = set(range(limit * P, -(-old // P) * P, P)) if size < old else set()
        assert self.ms.pages() == expected
        assert all(o.invalidate_private for _, o in self.ms.calls)

    @rule(off=st.integers(0, 15 * P), n=st.integers(0, 4 * P))
    def read(self, off: int, n: int) -> None:
        assert self.run(self.sm.read(off, n)) == bytes(self.model[off : off + n])

    @rule(
        a=st.integers(0, 15),
        length=st.integers(1, 4),
        extra=st.integers(0, 4),
        write=st.booleans(),
        b=st.integers(1, 255),
    )
    def translate(self, a: int, length: int, extra: int, write: bool, b: int) -> None:
        end = min(a + length, 16)
        req = M(a * P, end * P)
        opt = M(max(0, a - extra) * P, min(16, end + extra) * P)
        at = AccessType.READ_WRITE if write else AccessType.READ
        ts, err = self.run(self.sm.translate(req, opt, at))
        assert check_translate_result(req, opt, at, ts, err) is None
        eof = -(-len(self.model) // P)
        fill = max_optional_range(
            M(a * P, min(end, eof) * P) if a < eof else req,
            M(opt.start, min(opt.end, eof * P)) if a < eof else opt,
            FILL_LIMIT,
        )
        if a < eof:
            self.present |= set(range(fill.start // P, fill.end // P))
        for t in ts:
            got = t.file.map_internal(t.file_range(), AccessType.READ).tobytes()
            want = bytes(self.model[t.source.start : t.source.end])
            assert got == want + bytes(t.source.length - len(want))
        if write and ts:
            # Store through the first translation, inside the file only.
            t = ts[0]
            lo, hi = t.source.start, min(t.source.end, len(self.model))
            if lo < hi:
                view = t.file.map_internal(
                    FileRange(t.offset, t.offset + (hi - lo)), AccessType.WRITE
                )
                view[0][0:1] = bytes([b])
                self.model[lo] = b

    @invariant()
    def pages_match(self) -> None:
        assert self.sm.size == len(self.model)
        assert self.sm.resident_bytes() == len(self.present) * P
        assert self.mf.statistics().used_bytes == len(self.present) * P
        self.sm.check_invariants()

    def teardown(self) -> None:
        try:
            self.run(self.sm.remove_mapping(self.ms, AddrRange(0, self.span), 0, True))
            self.run(self.sm.aclose())
            assert self.mf.statistics().used_bytes == 0
        finally:
            self.mf.close()
            self.loop.close()


TestSharedMemoryMachine = SharedMemoryMachine.TestCase


# --------------------------------------------------------------------------
# The bus


async def test_invalidations_go_to_the_given_bus(mf: MemoryFile) -> None:
    own = InvalidationBus()
    sm = SharedMemory(mf, 4 * P, bus=own)
    ms = RecordingSpace()
    await sm.add_mapping(ms, AddrRange(0, 4 * P), 0, True)
    before = default_bus().statistics()
    await sm.truncate(P)
    stats = own.statistics()
    assert (stats.publishes, stats.deliveries) == (1, 1)
    assert ms.pages() == {P, 2 * P, 3 * P}
    after = default_bus().statistics()
    assert (after.publishes, after.deliveries) == (before.publishes, before.deliveries)
    await sm.remove_mapping(ms, AddrRange(0, 4 * P), 0, True)
    await sm.aclose()


def test_bus_must_be_an_invalidation_bus(mf: MemoryFile) -> None:
    with pytest.raises(TypeError):
        SharedMemory(mf, bus=object())  # type: ignore[arg-type]
