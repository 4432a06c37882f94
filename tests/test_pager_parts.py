"""The pager's parts on their own: fault-around, the protocol, file pages, set-up."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import anyio
import pytest

from aiomemmap import ClosedError, Engine, Pager
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap.pager.fault_around import FaultAround
from aiomemmap.pager.file_pages import FilePages
from aiomemmap.pager.protocol import (
    MAX_REQUEST_BYTES,
    MapRequest,
    ProtocolError,
    decode_map_reply,
    decode_map_request,
    decode_register_request,
    decode_status,
    encode,
    error_reply,
)

KiB, MiB = 1024, 1024 * 1024


def test_fault_around_grows_on_a_sequential_scan_up_to_the_maximum() -> None:
    policy = FaultAround(64 * MiB)
    sizes, offset = [], 0
    while offset < 8 * MiB:
        start, end = policy.chunk(offset)
        assert start == offset
        sizes.append(end - start)
        offset = end
    assert sizes[:6] == [64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, MiB, MiB]
    assert max(sizes) == MiB


def test_fault_around_shrinks_on_random_faults_down_to_a_page() -> None:
    policy = FaultAround(64 * MiB)
    offsets = [40 * MiB + 5, 3 * MiB, 50 * MiB + 123, 7 * MiB, 20 * MiB, 33 * MiB]
    chunks = [policy.chunk(off) for off in offsets]
    sizes = [end - start for start, end in chunks]
    assert sizes == [64 * KiB, 32 * KiB, 16 * KiB, 8 * KiB, 4 * KiB, 4 * KiB]
    for off, (start, end) in zip(offsets, chunks, strict=True):
        assert start <= off < end
        assert start % PAGE_SIZE == 0


def test_fault_around_stays_inside_the_region() -> None:
    policy = FaultAround(5 * PAGE_SIZE)
    assert policy.chunk(4 * PAGE_SIZE + 10) == (0, 5 * PAGE_SIZE)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 3000}, {"initial": 6 * PAGE_SIZE}, {"minimum": 2 * MiB}],
)
def test_fault_around_refuses_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="FaultAround"):
        FaultAround(MiB, **kwargs)


def test_map_request_round_trip_and_limits() -> None:
    data = encode(
        {"op": "map", "version": 1, "url": "https://h/x", "options": {"a": 1}}
    )
    assert decode_map_request(data) == MapRequest("https://h/x", {"a": 1})
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"url": "x" * MAX_REQUEST_BYTES})
    with pytest.raises(ProtocolError, match="empty"):
        decode_map_request(b"")
    too_many = {f"o{i}": i for i in range(100)}
    with pytest.raises(ProtocolError, match="at most"):
        decode_map_request(
            json.dumps(
                {"op": "map", "version": 1, "url": "u", "options": too_many}
            ).encode()
        )


def test_map_reply_must_be_consistent() -> None:
    def reply(size: int, length: int) -> bytes:
        return json.dumps(
            {"ok": True, "size": size, "length": length, "pid": 1, "thread": 2}
        ).encode()

    assert decode_map_reply(reply(5000, 2 * PAGE_SIZE)).length == 2 * PAGE_SIZE
    for size, length in [
        (5000, PAGE_SIZE),
        (5000, 3 * PAGE_SIZE),
        (5000, 5000),
        (-1, 0),
    ]:
        with pytest.raises(ProtocolError):
            decode_map_reply(reply(size, length))


def test_register_request_checks_alignment_and_overflow() -> None:
    def req(start: int, length: int) -> bytes:
        return json.dumps(
            {
                "op": "register",
                "start": start,
                "length": length,
                "features": 0,
                "ioctls": 0,
            }
        ).encode()

    assert decode_register_request(req(PAGE_SIZE, PAGE_SIZE)).start == PAGE_SIZE
    for start, length in [
        (1, PAGE_SIZE),
        (0, 0),
        (0, 100),
        (2**64 - PAGE_SIZE, 2 * PAGE_SIZE),
    ]:
        with pytest.raises(ProtocolError):
            decode_register_request(req(start, length))
    with pytest.raises(ProtocolError, match="must be an int"):
        decode_register_request(req(True, PAGE_SIZE))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("protocol", ProtocolError),
        ("not_found", FileNotFoundError),
        ("permission", PermissionError),
        ("value", ValueError),
        ("os", OSError),
    ],
)
def test_refusals_become_errors_of_their_kind(
    kind: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match="pager refused: why"):
        decode_status(error_reply(kind, "why"), "reply")


def test_file_pages_are_sealed_and_sized_to_pages() -> None:
    pages = FilePages("test", 3 * PAGE_SIZE + 1)
    try:
        assert (pages.size, pages.length) == (3 * PAGE_SIZE + 1, 4 * PAGE_SIZE)
        fd = pages.fileno()
        assert os.fstat(fd).st_size == 4 * PAGE_SIZE
        assert pages.resident_bytes() == 0
        with pytest.raises(PermissionError):
            os.ftruncate(fd, PAGE_SIZE)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 8 * PAGE_SIZE)
    finally:
        pages.close()
    pages.close()
    assert pages.closed
    assert pages.resident_bytes() == 0
    with pytest.raises(ClosedError):
        pages.fileno()
    with pytest.raises(ValueError, match="positive"):
        FilePages("test", 0)


async def test_pager_set_up_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Engine"):
        Pager("engine")  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with Engine() as engine:
            with pytest.raises(ValueError, match="FaultAround"):
                Pager(engine, fault_around=1000)
            with pytest.raises(ValueError, match="handshake_timeout"):
                Pager(engine, handshake_timeout=0)
            with pytest.raises(ValueError, match="allowed_uids"):
                Pager(engine, allowed_uids=[-1])
            pager = Pager(engine, socket_path=tmp_path / "s")
            with pytest.raises(RuntimeError, match="not started"):
                _ = pager.socket_path
            async with pager:
                assert pager.address == f"unix:{tmp_path / 's'}"
                mode = os.stat(pager.socket_path).st_mode
                assert stat.S_ISSOCK(mode)
                assert mode & 0o777 == 0o600
                with pytest.raises(RuntimeError, match="started already"):
                    await pager.start()
                stats = pager.statistics()
                assert (stats.clients, stats.connections, stats.files) == (0, 0, 0)
            assert not (tmp_path / "s").exists()
            await pager.aclose()


def test_the_watchdog_poisons_only_unpopulated_pages_and_wakes() -> None:
    import errno
    import mmap

    from aiomemmap._core.uffd import Userfaultfd, buffer_address
    from aiomemmap.pager.watchdog import poison_unpopulated

    region = mmap.mmap(-1, 8 * PAGE_SIZE)
    with buffer_address(region) as (start, _):
        pass
    r, w = os.pipe()
    try:
        with Userfaultfd.create(optional_features=0) as uffd:
            uffd.register(start, 8 * PAGE_SIZE)
            uffd.copy_from(start + 2 * PAGE_SIZE, b"\x07" * PAGE_SIZE)
            uffd.copy_from(start + 5 * PAGE_SIZE, b"\x09" * (2 * PAGE_SIZE))
            assert poison_unpopulated(uffd, start, 8 * PAGE_SIZE) == 5
            assert region[2 * PAGE_SIZE] == 7
            assert region[6 * PAGE_SIZE] == 9
            for page in (0, 1, 3, 4, 7):
                with pytest.raises(OSError, match="Bad address") as info:
                    os.write(w, memoryview(region)[page * PAGE_SIZE :][:8])
                assert info.value.errno == errno.EFAULT
    finally:
        os.close(r)
        os.close(w)
        region.close()
