"""MemoryFile: allocation, references, decommit, internal mappings, lifetime."""

from __future__ import annotations

import errno
import gc
import os
import random
import threading
from collections.abc import Iterator

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from aiomemmap import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    AccessDeniedError,
    AccessType,
    AddrRange,
    AlignmentError,
    BlockSeq,
    ClosedError,
    FileRange,
    MemoryFile,
    MemoryFileStatistics,
    MemoryKind,
    OutOfMemoryError,
    RefCountError,
    copy_seq,
    set_debug,
)
from aiomemmap._core import host
from aiomemmap.pgalloc import memory_file as _memfile
from aiomemmap.pgalloc.free_extents import FreeExtents
from aiomemmap.pgalloc.memory_file import DEFAULT_CHUNK_SIZE, MAX_FILE_SIZE

P = PAGE_SIZE
CHUNK = HUGE_PAGE_SIZE  # Small chunks so that tests cross chunk boundaries.
RW = AccessType.READ_WRITE


def F(start: int, end: int) -> FileRange:
    return FileRange(start, end)


def read(mf: MemoryFile, fr: FileRange) -> bytes:
    return mf.map_internal(fr, AccessType.READ).tobytes()


def write(mf: MemoryFile, fr: FileRange, data: bytes) -> None:
    assert len(data) == fr.length
    blocks = mf.map_internal(fr, RW)
    assert copy_seq(blocks, BlockSeq([memoryview(data)])) == fr.length


def snapshot(mf: MemoryFile) -> tuple[object, ...]:
    """Everything a failed call must leave unchanged."""
    return (
        mf.statistics(),
        list(mf._used),
        mf._free.extents(),
        len(mf._maps),
        os.fstat(mf.fd()).st_size,
    )


def memfd_mappings(name: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if f"/memfd:{name} " in line)


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    with MemoryFile("test-memfile", chunk_size=CHUNK) as f:
        yield f


# ----------------------------------------------------------------------
# Construction


def test_defaults_and_properties():
    with MemoryFile() as mf:
        assert mf.name == "aiomemmap"
        assert mf.max_size is None
        assert mf.cache_limit is None
        assert mf.chunk_size == DEFAULT_CHUNK_SIZE
        assert DEFAULT_CHUNK_SIZE % HUGE_PAGE_SIZE == 0
        assert not mf.closed
        assert mf.statistics() == MemoryFileStatistics(
            file_size=0,
            used_bytes=0,
            committed_bytes=0,
            bytes_by_kind=dict.fromkeys(MemoryKind, 0),
            evictions=0,
        )
        assert "aiomemmap" in repr(mf)
        fr = mf.allocate(P)
        assert mf.statistics().file_size == DEFAULT_CHUNK_SIZE
        mf.dec_ref(fr)
    assert "closed" in repr(mf)


def test_options_are_stored():
    with MemoryFile(
        "x", max_size=3 * CHUNK, cache_limit=16 * P, chunk_size=2 * CHUNK
    ) as mf:
        assert (mf.name, mf.max_size, mf.cache_limit, mf.chunk_size) == (
            "x",
            3 * CHUNK,
            16 * P,
            2 * CHUNK,
        )


def test_memfd_is_close_on_exec(mf):
    assert not os.get_inheritable(mf.fd())
    assert os.readlink(f"/proc/self/fd/{mf.fd()}").startswith("/memfd:test-memfile")


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"name": 3}, TypeError, "name"),
        ({"name": "a\0b"}, ValueError, "name"),
        ({"name": "n" * 250}, ValueError, "name"),
        ({"max_size": "1"}, TypeError, "max_size"),
        ({"max_size": True}, TypeError, "max_size"),
        ({"max_size": 0}, ValueError, "max_size"),
        ({"max_size": -P}, ValueError, "max_size"),
        ({"max_size": P + 1}, AlignmentError, "max_size"),
        ({"max_size": MAX_FILE_SIZE + P}, ValueError, "max_size"),
        ({"cache_limit": 1.5}, TypeError, "cache_limit"),
        ({"cache_limit": 0}, ValueError, "cache_limit"),
        ({"cache_limit": 100}, AlignmentError, "cache_limit"),
        ({"chunk_size": None}, TypeError, "chunk_size"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": -CHUNK}, ValueError, "chunk_size"),
        ({"chunk_size": P}, AlignmentError, "chunk_size"),
        ({"chunk_size": 3 * CHUNK // 2}, AlignmentError, "chunk_size"),
        ({"chunk_size": 1 << 41}, ValueError, "chunk_size"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, exc, word):
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(exc, match=word):
        MemoryFile(**kwargs)
    assert len(os.listdir("/proc/self/fd")) == before  # No memfd was leaked.


def test_largest_name_is_accepted():
    with MemoryFile("n" * 249) as mf:
        assert mf.name == "n" * 249


# ----------------------------------------------------------------------
# Allocation


@pytest.mark.parametrize("kind", list(MemoryKind))
def test_allocate_returns_zeroed_pages_with_one_reference(mf, kind):
    fr = mf.allocate(5 * P, kind=kind)
    assert fr == F(0, 5 * P)
    assert read(mf, fr) == bytes(5 * P)
    assert mf.has_unique_ref(fr)
    stats = mf.statistics()
    assert stats.used_bytes == 5 * P
    assert stats.bytes_by_kind[kind] == 5 * P
    assert sum(stats.bytes_by_kind.values()) == 5 * P
    mf.dec_ref(fr)
    assert mf.statistics().used_bytes == 0


def test_allocate_takes_the_lowest_free_range_that_fits(mf):
    a = mf.allocate(P)
    b = mf.allocate(2 * P)
    c = mf.allocate(P)
    d = mf.allocate(4 * P)
    e = mf.allocate(P)
    assert [x.start for x in (a, b, c, d, e)] == [0, P, 3 * P, 4 * P, 8 * P]
    mf.dec_ref(b)  # hole of 2 pages at P
    mf.dec_ref(d)  # hole of 4 pages at 4P
    assert mf.allocate(3 * P) == F(4 * P, 7 * P)  # b's hole is too small
    assert mf.allocate(P) == F(P, 2 * P)  # lowest hole that fits
    assert mf.allocate(2 * P) == F(9 * P, 11 * P)  # the 1-page holes are too small
    assert mf.allocate(P) == F(2 * P, 3 * P)
    assert mf.allocate(P) == F(7 * P, 8 * P)
    mf.check_invariants()


def test_allocate_scans_the_size_class_of_odd_lengths(mf):
    # Holes of 5, 6 and 7 pages (all in the 4..7-page class), then a request
    # for 7 pages must skip the two short ones.
    frs = [mf.allocate(n * P) for n in (5, 1, 6, 1, 7, 1)]
    for fr in frs[0::2]:
        mf.dec_ref(fr)
    assert mf.allocate(7 * P) == frs[4]
    assert mf.allocate(6 * P) == frs[2]
    assert mf.allocate(3 * P).start == frs[0].start


def test_neighbouring_allocations_share_a_run(mf):
    frs = [mf.allocate(P) for _ in range(100)]
    assert len(mf._used) == 1
    for fr in frs[::2]:
        mf.dec_ref(fr)
    assert len(mf._used) == 50
    for fr in frs[1::2]:
        mf.dec_ref(fr)
    assert len(mf._used) == 0
    assert mf._free.extents() == [(0, CHUNK)]


@pytest.mark.parametrize(
    ("length", "exc"),
    [
        (0, ValueError),
        (-P, ValueError),
        (P - 1, AlignmentError),
        (P + 1, AlignmentError),
        ("4096", TypeError),
        (4096.0, TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_allocate_rejects_bad_lengths(mf, length, exc):
    mf.dec_ref(mf.allocate(P))
    before = snapshot(mf)
    with pytest.raises(exc, match="length"):
        mf.allocate(length)
    assert snapshot(mf) == before


@pytest.mark.parametrize("kind", ["anonymous", 1, None, AccessType.READ])
def test_allocate_rejects_bad_kinds(mf, kind):
    before = snapshot(mf)
    with pytest.raises(TypeError, match="kind"):
        mf.allocate(P, kind=kind)
    assert snapshot(mf) == before


def test_allocate_accepts_int_subclasses(mf):
    class MyInt(int):
        pass

    fr = mf.allocate(MyInt(2 * P))
    assert type(fr.end) is int
    assert fr == F(0, 2 * P)


# ----------------------------------------------------------------------
# Growth, chunks, max_size


def test_file_grows_by_whole_chunks_and_maps_each_chunk_once(monkeypatch):
    calls: list[tuple[int, int]] = []
    real = _memfile._map_chunk

    def counting(fd, offset, length):
        calls.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(_memfile, "_map_chunk", counting)
    with MemoryFile("grow", chunk_size=CHUNK) as mf:
        a = mf.allocate(P)
        assert mf.statistics().file_size == CHUNK
        assert calls == [(0, CHUNK)]
        # Does not fit in what is left of chunk 0: the free tail is reused
        # and the file grows by one chunk.
        b = mf.allocate(CHUNK)
        assert b == F(P, CHUNK + P)
        assert mf.statistics().file_size == 2 * CHUNK
        # Several chunks at once.
        c = mf.allocate(3 * CHUNK)
        assert c == F(CHUNK + P, 4 * CHUNK + P)
        assert mf.statistics().file_size == 5 * CHUNK
        assert calls == [(i * CHUNK, CHUNK) for i in range(5)]
        # Mapping, freeing and reallocating never map again.
        for fr in (a, b, c):
            mf.map_internal(fr, RW)
            mf.dec_ref(fr)
        mf.map_internal(mf.allocate(5 * CHUNK), RW)
        assert len(calls) == 5
        assert memfd_mappings("grow") == 5
        assert len(mf._views) == 5
    assert memfd_mappings("grow") == 0


def test_max_size_cuts_the_last_chunk_and_refuses_more(monkeypatch):
    with MemoryFile("max", max_size=CHUNK + 64 * P, chunk_size=CHUNK) as mf:
        a = mf.allocate(CHUNK)
        b = mf.allocate(32 * P)
        assert mf.statistics().file_size == CHUNK + 64 * P
        assert len(mf._views[1]) == 64 * P
        c = mf.allocate(32 * P)
        assert c == F(CHUNK + 32 * P, CHUNK + 64 * P)
        before = snapshot(mf)
        with pytest.raises(OutOfMemoryError, match=r"max_size=0x240000") as info:
            mf.allocate(P)
        assert isinstance(info.value, MemoryError)
        with pytest.raises(OutOfMemoryError):
            mf.allocate(2 * CHUNK)
        assert snapshot(mf) == before
        # Freeing makes room again, without growing.
        mf.dec_ref(b)
        assert mf.allocate(16 * P) == F(CHUNK, CHUNK + 16 * P)
        mf.map_internal(F(CHUNK, CHUNK + 16 * P), RW)
        for fr in (a, c, F(CHUNK, CHUNK + 16 * P)):
            mf.dec_ref(fr)
        mf.check_invariants()


def test_max_size_smaller_than_one_chunk():
    with MemoryFile(max_size=8 * P, chunk_size=CHUNK) as mf:
        fr = mf.allocate(8 * P)
        assert mf.statistics().file_size == 8 * P
        with pytest.raises(OutOfMemoryError):
            mf.allocate(P)
        mf.dec_ref(fr)


def test_allocation_past_the_mappable_limit_is_out_of_memory(mf):
    before = snapshot(mf)
    with pytest.raises(OutOfMemoryError, match="largest file"):
        mf.allocate(MAX_FILE_SIZE + P)
    assert snapshot(mf) == before


def test_failed_growth_changes_nothing(monkeypatch, mf):
    a = mf.allocate(P)
    real = _memfile._map_chunk
    calls = 0

    def failing(fd, offset, length):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOMEM, "no room")
        return real(fd, offset, length)

    monkeypatch.setattr(_memfile, "_map_chunk", failing)
    before = snapshot(mf)
    with pytest.raises(OutOfMemoryError, match="could not grow") as info:
        mf.allocate(3 * CHUNK)
    assert isinstance(info.value.__cause__, OSError)
    assert snapshot(mf) == before
    assert memfd_mappings("test-memfile") == 1
    monkeypatch.setattr(_memfile, "_map_chunk", real)
    b = mf.allocate(3 * CHUNK)
    assert b == F(P, 3 * CHUNK + P)
    mf.dec_ref(a)
    mf.dec_ref(b)


# ----------------------------------------------------------------------
# Reference counting


def test_refcounts_across_inc_dec_and_unique(mf):
    fr = mf.allocate(4 * P)
    write(mf, fr, b"\x5a" * fr.length)
    assert mf.has_unique_ref(fr)
    mf.inc_ref(fr)
    assert not mf.has_unique_ref(fr)
    mf.inc_ref(F(P, 2 * P), memcg_id=7)
    assert list(mf._used) == [
        (0, P, (2, MemoryKind.ANONYMOUS)),
        (P, 2 * P, (3, MemoryKind.ANONYMOUS)),
        (2 * P, 4 * P, (2, MemoryKind.ANONYMOUS)),
    ]
    mf.dec_ref(fr)
    assert not mf.has_unique_ref(fr)
    assert mf.has_unique_ref(F(0, P))
    assert not mf.has_unique_ref(F(P, 2 * P))
    assert mf.has_unique_ref(F(2 * P, 4 * P))
    assert mf.statistics().used_bytes == 4 * P
    # Dropping the last reference of a middle part frees only that part.
    mf.dec_ref(F(2 * P, 3 * P))
    assert mf.statistics().used_bytes == 3 * P
    assert read(mf, F(0, 2 * P)) == b"\x5a" * 2 * P
    assert read(mf, F(3 * P, 4 * P)) == b"\x5a" * P
    assert os.pread(mf.fd(), P, 2 * P) == bytes(P)
    mf.dec_ref(F(1 * P, 2 * P))
    assert list(mf._used) == [
        (0, 2 * P, (1, MemoryKind.ANONYMOUS)),
        (3 * P, 4 * P, (1, MemoryKind.ANONYMOUS)),
    ]
    mf.dec_ref(F(0, 2 * P))
    mf.dec_ref(F(3 * P, 4 * P))
    assert mf.statistics().used_bytes == 0
    assert len(mf._used) == 0


def test_dec_ref_over_runs_with_different_counts_and_kinds(mf):
    a = mf.allocate(2 * P, kind=MemoryKind.TMPFS)
    b = mf.allocate(2 * P, kind=MemoryKind.PAGE_CACHE)
    c = mf.allocate(2 * P, kind=MemoryKind.TMPFS)
    mf.inc_ref(F(P, 5 * P))
    whole = F(0, 6 * P)
    write(mf, whole, bytes(range(256)) * (whole.length // 256))
    mf.dec_ref(whole)  # frees pages 0 and 5, keeps 1..4 at one reference
    stats = mf.statistics()
    assert stats.used_bytes == 4 * P
    assert stats.bytes_by_kind[MemoryKind.TMPFS] == 2 * P
    assert stats.bytes_by_kind[MemoryKind.PAGE_CACHE] == 2 * P
    assert mf.has_unique_ref(F(P, 5 * P))
    assert list(mf._used) == [
        (P, 2 * P, (1, MemoryKind.TMPFS)),
        (2 * P, 4 * P, (1, MemoryKind.PAGE_CACHE)),
        (4 * P, 5 * P, (1, MemoryKind.TMPFS)),
    ]
    assert os.pread(mf.fd(), P, 0) == bytes(P)
    assert os.pread(mf.fd(), P, 5 * P) == bytes(P)
    mf.dec_ref(F(P, 5 * P))
    assert mf.statistics().used_bytes == 0
    del a, b, c


def test_dec_ref_merges_runs_that_become_equal(mf):
    fr = mf.allocate(3 * P)
    mf.inc_ref(F(0, P))
    mf.inc_ref(F(2 * P, 3 * P))
    assert len(mf._used) == 3
    mf.inc_ref(F(P, 2 * P))
    assert len(mf._used) == 1
    mf.dec_ref(F(0, 2 * P))
    mf.dec_ref(F(2 * P, 3 * P))
    assert list(mf._used) == [(0, 3 * P, (1, MemoryKind.ANONYMOUS))]
    mf.dec_ref(fr)


def test_dec_ref_frees_adjacent_runs_with_one_hole_punch(monkeypatch, mf):
    punched: list[tuple[int, int]] = []
    real = _memfile._punch_hole

    def recording(fd, offset, length):
        punched.append((offset, length))
        real(fd, offset, length)

    mf.allocate(2 * P, kind=MemoryKind.TMPFS)
    mf.allocate(2 * P, kind=MemoryKind.SYSTEM)
    mf.allocate(P, kind=MemoryKind.MAPPED)
    mf.inc_ref(F(4 * P, 5 * P))
    mf.allocate(P, kind=MemoryKind.MAPPED)
    monkeypatch.setattr(_memfile, "_punch_hole", recording)
    mf.dec_ref(F(0, 6 * P))
    assert punched == [(0, 4 * P), (5 * P, P)]
    mf.dec_ref(F(4 * P, 5 * P))


def test_freed_pages_read_zero_when_reused(mf):
    fr = mf.allocate(16 * P)
    pattern = bytes(range(1, 256)) * (fr.length // 255) + b"\xff" * (fr.length % 255)
    write(mf, fr, pattern)
    assert os.pread(mf.fd(), fr.length, fr.start) == pattern
    mf.dec_ref(fr)
    again = mf.allocate(16 * P)
    assert again == fr
    assert read(mf, again) == bytes(fr.length)
    assert os.pread(mf.fd(), fr.length, fr.start) == bytes(fr.length)
    mf.dec_ref(again)


def test_dec_ref_below_zero_raises(mf):
    fr = mf.allocate(P)
    mf.dec_ref(fr)
    before = snapshot(mf)
    with pytest.raises(RefCountError, match=r"\[0x0, 0x1000\)"):
        mf.dec_ref(fr)
    assert snapshot(mf) == before


def _misuse_cases() -> list[tuple[str, FileRange]]:
    # File: [0, CHUNK); used: [0, 4P) and [6P, 8P); free elsewhere.
    return [
        ("free page", F(4 * P, 5 * P)),
        ("used then free", F(2 * P, 5 * P)),
        ("free then used", F(5 * P, 7 * P)),
        ("free gap inside", F(0, 8 * P)),
        ("past the file", F(CHUNK, CHUNK + P)),
        ("straddles the end", F(CHUNK - P, CHUNK + P)),
        ("at the top", F(2**64 - P, 2**64)),
    ]


@pytest.mark.parametrize("method", ["inc_ref", "dec_ref", "has_unique_ref", "decommit"])
@pytest.mark.parametrize(("label", "fr"), _misuse_cases())
def test_refcount_misuse_names_the_range_and_changes_nothing(mf, method, label, fr):
    mf.allocate(4 * P)
    mf.allocate(2 * P)
    mf.allocate(2 * P)
    mf.dec_ref(F(4 * P, 6 * P))
    write(mf, F(0, 4 * P), b"\x11" * 4 * P)
    before = snapshot(mf)
    with pytest.raises(RefCountError) as info:
        getattr(mf, method)(fr)
    assert str(fr) in str(info.value), label
    assert method in str(info.value)
    assert snapshot(mf) == before
    assert read(mf, F(0, 4 * P)) == b"\x11" * 4 * P


@pytest.mark.parametrize("method", ["inc_ref", "dec_ref", "has_unique_ref", "decommit"])
@pytest.mark.parametrize(
    ("fr", "exc"),
    [
        (F(0, 0), ValueError),
        (F(P, P), ValueError),
        (F(0, P + 1), AlignmentError),
        (F(1, P), AlignmentError),
        (AddrRange(0, P), TypeError),
        ((0, P), TypeError),
        (None, TypeError),
    ],
)
def test_range_arguments_are_validated(mf, method, fr, exc):
    mf.allocate(2 * P)
    before = snapshot(mf)
    with pytest.raises(exc, match="fr"):
        getattr(mf, method)(fr)
    assert snapshot(mf) == before


@pytest.mark.parametrize(("memcg_id", "exc"), [(-1, ValueError), ("0", TypeError)])
def test_inc_ref_validates_memcg_id(mf, memcg_id, exc):
    fr = mf.allocate(P)
    before = snapshot(mf)
    with pytest.raises(exc, match="memcg_id"):
        mf.inc_ref(fr, memcg_id)
    assert snapshot(mf) == before


def test_refcount_error_is_a_runtime_error(mf):
    with pytest.raises(RuntimeError):
        mf.dec_ref(F(0, P))


# ----------------------------------------------------------------------
# Decommit


def test_decommit_zeroes_and_releases_memory_but_keeps_references(mf):
    fr = mf.allocate(64 * P)
    write(mf, fr, b"\x77" * fr.length)
    committed = mf.statistics().committed_bytes
    assert committed >= fr.length
    mf.decommit(F(16 * P, 48 * P))
    assert mf.statistics().committed_bytes == committed - 32 * P
    data = read(mf, fr)
    assert data == b"\x77" * 16 * P + bytes(32 * P) + b"\x77" * 16 * P
    assert mf.statistics().used_bytes == fr.length
    assert mf.has_unique_ref(fr)
    mf.dec_ref(fr)


def test_decommit_falls_back_to_zeroing_when_punching_fails(monkeypatch):
    def refuse(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "no holes here")

    with MemoryFile(chunk_size=CHUNK) as mf:
        fr = mf.allocate(3 * CHUNK)  # zeroing crosses chunks, 1 MiB at a time
        write(mf, fr, b"\xee" * fr.length)
        monkeypatch.setattr(_memfile, "_punch_hole", refuse)
        mf.decommit(F(P, 3 * CHUNK - P))
        assert read(mf, fr) == b"\xee" * P + bytes(fr.length - 2 * P) + b"\xee" * P
        mf.dec_ref(fr)
        again = mf.allocate(3 * CHUNK)
        assert again == fr
        assert read(mf, again) == bytes(fr.length)
        mf.dec_ref(again)


def test_decommit_without_fallocate_zeroes_instead(monkeypatch, mf):
    monkeypatch.setattr(host, "fallocate", None)
    fr = mf.allocate(P)
    write(mf, fr, b"\x01" * P)
    mf.dec_ref(fr)  # zeroed instead
    assert read(mf, mf.allocate(P)) == bytes(P)


# ----------------------------------------------------------------------
# map_internal


def test_map_internal_one_block_per_chunk(mf):
    fr = mf.allocate(3 * CHUNK)
    part = F(100, 2 * CHUNK + 200)  # unaligned, touches all three chunks
    seq = mf.map_internal(part, RW)
    assert isinstance(seq, BlockSeq)
    assert [len(b) for b in seq] == [CHUNK - 100, CHUNK, 200]
    assert seq.num_bytes == part.length
    assert not seq.readonly
    data = random.Random(1).randbytes(part.length)
    assert copy_seq(seq, BlockSeq([memoryview(data)])) == part.length
    assert mf.map_internal(part, AccessType.READ).tobytes() == data
    assert os.pread(mf.fd(), part.length, part.start) == data
    # And the other way round.
    os.pwrite(mf.fd(), b"hello", CHUNK - 2)
    assert read(mf, F(CHUNK - 2, CHUNK + 3)) == b"hello"
    assert [len(b) for b in mf.map_internal(F(CHUNK - 2, CHUNK + 3), RW)] == [2, 3]
    mf.dec_ref(fr)


def test_map_internal_within_one_chunk_and_sub_page(mf):
    fr = mf.allocate(2 * P)
    seq = mf.map_internal(F(10, 20), RW)
    assert len(seq) == 1
    seq[0][:] = b"0123456789"
    assert read(mf, F(0, P))[10:20] == b"0123456789"
    assert mf.map_internal(F(P - 5, P + 5), AccessType.WRITE).num_bytes == 10
    mf.dec_ref(fr)


@pytest.mark.parametrize(
    "at", [AccessType.READ, AccessType.NO_ACCESS], ids=["read", "none"]
)
def test_map_internal_without_write_is_read_only(mf, at):
    mf.allocate(P)
    seq = mf.map_internal(F(0, P), at)
    assert seq.readonly
    assert all(b.readonly for b in seq)
    with pytest.raises(TypeError):
        seq[0][0] = 1


@pytest.mark.parametrize(
    "at", [AccessType.EXECUTE, AccessType.READ_EXECUTE, AccessType.ANY]
)
def test_map_internal_refuses_execute(mf, at):
    mf.allocate(P)
    with pytest.raises(AccessDeniedError, match="execut") as info:
        mf.map_internal(F(0, P), at)
    assert info.value.errno == errno.EACCES
    assert isinstance(info.value, PermissionError)


@pytest.mark.parametrize(
    ("fr", "exc", "word"),
    [
        (F(0, 0), ValueError, "empty"),
        (F(2 * P, 3 * P), RefCountError, "not allocated"),
        (F(P, 2 * P + 1), RefCountError, r"\[0x1000, 0x2001\)"),
        (F(2 * P - 1, 2 * P + 1), RefCountError, "not allocated"),
        (F(CHUNK - 1, CHUNK + 1), RefCountError, "past the end"),
        (AddrRange(0, P), TypeError, "fr"),
    ],
)
def test_map_internal_rejects_bad_ranges(mf, fr, exc, word):
    mf.allocate(2 * P)
    mf.allocate(P)
    mf.dec_ref(F(2 * P, 3 * P))
    with pytest.raises(exc, match=word):
        mf.map_internal(fr, RW)


def test_map_internal_rejects_bad_access_type(mf):
    mf.allocate(P)
    with pytest.raises(TypeError, match="at"):
        mf.map_internal(F(0, P), "rw")


def test_map_internal_spanning_several_runs(mf):
    mf.allocate(P, kind=MemoryKind.TMPFS)
    mf.allocate(P, kind=MemoryKind.SYSTEM)
    mf.inc_ref(F(P, 2 * P))
    assert mf.map_internal(F(0, 2 * P), RW).num_bytes == 2 * P


# ----------------------------------------------------------------------
# Statistics


def test_statistics_track_used_kinds_and_committed_memory(mf):
    anon = mf.allocate(8 * P)
    cache = mf.allocate(4 * P, kind=MemoryKind.PAGE_CACHE)
    tmpfs = mf.allocate(2 * P, kind=MemoryKind.TMPFS)
    stats = mf.statistics()
    assert stats.file_size == CHUNK
    assert stats.used_bytes == 14 * P
    assert dict(stats.bytes_by_kind) == {
        MemoryKind.SYSTEM: 0,
        MemoryKind.ANONYMOUS: 8 * P,
        MemoryKind.PAGE_CACHE: 4 * P,
        MemoryKind.TMPFS: 2 * P,
        MemoryKind.MAPPED: 0,
    }
    assert stats.committed_bytes == 0  # nothing written yet
    assert stats.evictions == 0

    write(mf, anon, b"\x01" * anon.length)
    write(mf, cache, b"\x02" * cache.length)
    assert mf.statistics().committed_bytes == 12 * P
    mf.inc_ref(cache)
    assert mf.statistics().used_bytes == 14 * P  # references are not bytes
    mf.dec_ref(cache)
    mf.dec_ref(cache)
    stats = mf.statistics()
    assert stats.committed_bytes == 8 * P
    assert stats.used_bytes == 10 * P
    assert stats.bytes_by_kind[MemoryKind.PAGE_CACHE] == 0
    mf.dec_ref(anon)
    mf.dec_ref(tmpfs)
    stats = mf.statistics()
    assert (stats.used_bytes, stats.committed_bytes) == (0, 0)
    assert stats.file_size == CHUNK


def test_statistics_are_immutable(mf):
    stats = mf.statistics()
    with pytest.raises(AttributeError):
        stats.used_bytes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.bytes_by_kind[MemoryKind.ANONYMOUS] = 1  # type: ignore[index]
    # A snapshot: later allocations do not show up in it.
    mf.allocate(P)
    assert stats.bytes_by_kind[MemoryKind.ANONYMOUS] == 0


def test_memory_kind_repr():
    assert repr(MemoryKind.PAGE_CACHE) == "MemoryKind.PAGE_CACHE"
    assert {k.value for k in MemoryKind} >= {"system", "anonymous", "tmpfs"}


# ----------------------------------------------------------------------
# Closing


def test_close_is_idempotent_and_closes_the_descriptor():
    mf = MemoryFile("closing", chunk_size=CHUNK)
    fd = mf.fd()
    mf.allocate(3 * CHUNK)  # references still held are forgotten
    assert memfd_mappings("closing") == 3
    mf.close()
    assert mf.closed
    assert memfd_mappings("closing") == 0
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    mf.close()
    assert mf.closed


_CALLS = {
    "fd": lambda mf: mf.fd(),
    "allocate": lambda mf: mf.allocate(P),
    "inc_ref": lambda mf: mf.inc_ref(F(0, P)),
    "dec_ref": lambda mf: mf.dec_ref(F(0, P)),
    "has_unique_ref": lambda mf: mf.has_unique_ref(F(0, P)),
    "decommit": lambda mf: mf.decommit(F(0, P)),
    "map_internal": lambda mf: mf.map_internal(F(0, P), RW),
    "statistics": lambda mf: mf.statistics(),
    "check_invariants": lambda mf: mf.check_invariants(),
    "__enter__": lambda mf: mf.__enter__(),
}


@pytest.mark.parametrize("name", list(_CALLS))
def test_every_method_raises_closed_error_after_close(name):
    with MemoryFile("closed", chunk_size=CHUNK) as mf:
        mf.allocate(P)
    with pytest.raises(ClosedError, match=name):
        _CALLS[name](mf)


def test_with_closes_on_error():
    files: list[MemoryFile] = []

    def use() -> None:
        with MemoryFile(chunk_size=CHUNK) as mf:
            files.append(mf)
            mf.allocate(P)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        use()
    assert files[0].closed


def test_close_with_views_still_held_keeps_their_memory_alive():
    mf = MemoryFile("held", chunk_size=CHUNK)
    fr = mf.allocate(2 * CHUNK)
    held = mf.map_internal(F(CHUNK + 8, CHUNK + 16), RW)
    view = mf.map_internal(F(0, 4), RW)[0]
    held[0][:] = b"abcdefgh"
    mf.close()  # does not raise although views are exported
    assert mf.closed
    # The caller's views are still valid memory, and still the file's bytes.
    assert held.tobytes() == b"abcdefgh"
    held[0][:4] = b"WXYZ"
    assert held.tobytes() == b"WXYZefgh"
    view[:] = b"1234"
    # The two chunks they view stay mapped until they are released.
    assert memfd_mappings("held") == 2
    del held
    gc.collect()
    assert memfd_mappings("held") == 1
    view.release()
    del view
    gc.collect()
    assert memfd_mappings("held") == 0
    del fr


def test_unclosed_file_closes_its_descriptor_when_collected():
    mf = MemoryFile("collected", chunk_size=CHUNK)
    mf.allocate(P)
    fd = mf.fd()
    del mf
    gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    assert memfd_mappings("collected") == 0


# ----------------------------------------------------------------------
# Threads


def test_threads_allocate_and_free_concurrently():
    n_threads, rounds = 4, 150
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    with MemoryFile("threads", chunk_size=CHUNK) as mf:

        def worker(tid: int) -> None:
            rng = random.Random(tid)
            held: list[tuple[FileRange, int]] = []
            try:
                start.wait()
                for i in range(rounds):
                    pages = rng.choice((1, 1, 2, 3, 8, 17))
                    kind = rng.choice(list(MemoryKind))
                    fr = mf.allocate(pages * P, kind=kind)
                    assert read(mf, fr) == bytes(fr.length)
                    tag = (tid * 64 + i) % 255 + 1
                    write(mf, fr, bytes([tag]) * fr.length)
                    if rng.random() < 0.3:
                        mf.inc_ref(fr)
                        mf.dec_ref(fr)
                    held.append((fr, tag))
                    if len(held) > 4 or rng.random() < 0.5:
                        old, old_tag = held.pop(rng.randrange(len(held)))
                        assert read(mf, old) == bytes([old_tag]) * old.length
                        mf.dec_ref(old)
                for fr, tag in held:
                    assert read(mf, fr) == bytes([tag]) * fr.length
                    mf.dec_ref(fr)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert errors == []
        mf.check_invariants()
        stats = mf.statistics()
        assert stats.used_bytes == 0
        assert stats.committed_bytes == 0
        assert all(v == 0 for v in stats.bytes_by_kind.values())


# ----------------------------------------------------------------------
# Invariant checker: it must catch corruption.


def _corruptions() -> dict[str, object]:
    def used_zero_refs(mf):
        seg = mf._used.find(0)
        mf._used.set_value(seg, (0, MemoryKind.ANONYMOUS))

    def used_unmerged(mf):
        mf._used.split_at(P)

    def kind_count(mf):
        mf._bytes_by_kind[MemoryKind.TMPFS] += P
        mf._used_bytes += P

    def used_total(mf):
        mf._used_bytes += P

    def free_overlaps_used(mf):
        mf._free.add(CHUNK, CHUNK + P)

    def size_unaligned(mf):
        mf._file_size += 1

    def truncated_behind(mf):
        os.ftruncate(mf._fd, 2 * CHUNK)

    def chunk_missing(mf):
        mf._views.pop()
        mf._maps.pop()

    def chunk_length(mf):
        mf._views[0] = mf._views[0][:P]

    def used_past_end(mf):
        mf._used.insert(CHUNK, CHUNK + P, (1, MemoryKind.ANONYMOUS))

    def free_dicts(mf):
        mf._free._by_end[123 * P] = 0

    def free_bad_extent(mf):
        mf._free._by_start[5 * P] = 5 * P
        mf._free._by_end[5 * P] = 5 * P

    def free_missing_end(mf):
        (end,) = list(mf._free._by_end)
        start = mf._free._by_end.pop(end)
        mf._free._by_end[end + P] = start

    def free_touching(mf):
        mf._free._insert(2 * P, 4 * P)

    def free_unindexed(mf):
        for lst in mf._free._classes:
            lst.clear()

    def free_mask(mf):
        mf._free._mask ^= 1

    def free_stale_class(mf):
        mf._free._classes[0].add(3)
        mf._free._mask |= 1

    return {
        f.__name__: f
        for f in (
            used_zero_refs,
            used_unmerged,
            kind_count,
            used_total,
            free_overlaps_used,
            size_unaligned,
            truncated_behind,
            chunk_missing,
            chunk_length,
            used_past_end,
            free_dicts,
            free_bad_extent,
            free_missing_end,
            free_touching,
            free_unindexed,
            free_mask,
            free_stale_class,
        )
    }


@pytest.mark.parametrize("corrupt", list(_corruptions()))
def test_check_invariants_catches_corruption(corrupt):
    mf = MemoryFile(chunk_size=CHUNK)
    try:
        mf.allocate(4 * P)
        mf.check_invariants()
        _corruptions()[corrupt](mf)  # type: ignore[operator]
        with pytest.raises(AssertionError):
            mf.check_invariants()
    finally:
        mf._views = [memoryview(m) for m in mf._maps]
        mf.close()


def test_free_extents_prefer_the_lowest_fit_across_classes():
    fe = FreeExtents()
    fe.add(0, 5 * P)  # class 2, too short for 6 pages
    fe.add(10 * P, 26 * P)  # class 4
    fe.add(40 * P, 47 * P)  # class 2, fits 6 pages but is higher
    fe.add(60 * P, 61 * P)  # class 0
    assert fe.find(6 * P) == 10 * P
    assert fe.find(5 * P) == 0
    assert fe.find(P) == 0
    assert fe.find(17 * P) is None
    fe.take(10 * P, 16 * P)
    assert fe.find(6 * P) == 40 * P
    assert fe.find(7 * P) == 40 * P
    assert fe.find(8 * P) is None
    fe.check_invariants()


def test_free_extents_find_take_add():
    fe = FreeExtents()
    assert fe.find(P) is None
    fe.add(0, 3 * P)
    fe.add(10 * P, 30 * P)
    fe.add(3 * P, 4 * P)  # joins the first extent
    assert fe.extents() == [(0, 4 * P), (10 * P, 30 * P)]
    assert fe.find(4 * P) == 0
    assert fe.find(5 * P) == 10 * P
    assert fe.find(21 * P) is None
    fe.take(10 * P, 20 * P)
    assert fe.extents() == [(0, 4 * P)]
    assert fe.start_of_extent_ending_at(4 * P) == 0
    assert fe.start_of_extent_ending_at(3 * P) is None
    fe.add(4 * P, 10 * P)
    assert fe.extents() == [(0, 10 * P)]
    assert len(fe) == 1
    fe.check_invariants()
    fe.clear()
    assert len(fe) == 0
    fe.check_invariants()


# ----------------------------------------------------------------------
# A model-based state machine


class MemoryFileMachine(RuleBasedStateMachine):
    """MemoryFile against a page -> references model, with exact placement."""

    CHUNK_PAGES = CHUNK // P
    MAX_PAGES = 2 * CHUNK // P + 64

    def __init__(self) -> None:
        super().__init__()
        self.mf = MemoryFile("machine", max_size=self.MAX_PAGES * P, chunk_size=CHUNK)
        self.refs: dict[int, int] = {}
        self.kinds: dict[int, MemoryKind] = {}
        self.contents: dict[int, int] = {}
        self.file_pages = 0

    # -- model helpers

    def expected_start(self, n: int) -> int | None:
        """Lowest fitting free run, or the free tail after growth; None: OOM."""
        run = 0
        for p in range(self.file_pages):
            if p in self.refs:
                run = 0
                continue
            run += 1
            if run == n:
                return p - n + 1
        tail = self.file_pages - run
        if tail + n > self.MAX_PAGES:
            return None
        chunks = -(-(tail + n) // self.CHUNK_PAGES)
        self.file_pages = min(chunks * self.CHUNK_PAGES, self.MAX_PAGES)
        return tail

    def live_run(self, data: st.DataObject) -> tuple[int, int]:
        """A run of referenced pages: (first page, number of pages)."""
        first = data.draw(st.sampled_from(sorted(self.refs)), label="first")
        n = 1
        limit = data.draw(st.integers(1, 12), label="limit")
        while n < limit and first + n in self.refs:
            n += 1
        return first, n

    def page_range(self, first: int, n: int) -> FileRange:
        return F(first * P, (first + n) * P)

    # -- rules

    @rule(
        n=st.one_of(st.integers(1, 6), st.integers(100, 600)),
        kind=st.sampled_from(list(MemoryKind)),
    )
    def allocate(self, n: int, kind: MemoryKind) -> None:
        before = snapshot(self.mf)
        file_pages = self.file_pages
        want = self.expected_start(n)
        if want is None:
            with pytest.raises(OutOfMemoryError):
                self.mf.allocate(n * P, kind=kind)
            assert snapshot(self.mf) == before
            assert self.file_pages == file_pages
            return
        fr = self.mf.allocate(n * P, kind=kind)
        assert fr == self.page_range(want, n)
        pages = range(want, want + n)
        assert not any(p in self.refs for p in pages)  # never handed out twice
        assert read(self.mf, fr) == bytes(fr.length)  # freed pages come back zero
        for p in pages:
            self.refs[p] = 1
            self.kinds[p] = kind
            self.contents[p] = 0

    @precondition(lambda self: self.refs)
    @rule(data=st.data(), value=st.integers(1, 255))
    def write_pattern(self, data: st.DataObject, value: int) -> None:
        first, n = self.live_run(data)
        write(self.mf, self.page_range(first, n), bytes([value]) * n * P)
        for p in range(first, first + n):
            self.contents[p] = value

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def contents_are_kept(self, data: st.DataObject) -> None:
        first, n = self.live_run(data)
        got = read(self.mf, self.page_range(first, n))
        want = b"".join(bytes([self.contents[p]]) * P for p in range(first, first + n))
        assert got == want

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def inc_ref(self, data: st.DataObject) -> None:
        first, n = self.live_run(data)
        self.mf.inc_ref(self.page_range(first, n))
        for p in range(first, first + n):
            self.refs[p] += 1

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def dec_ref(self, data: st.DataObject) -> None:
        first, n = self.live_run(data)
        self.mf.dec_ref(self.page_range(first, n))
        for p in range(first, first + n):
            self.refs[p] -= 1
            if self.refs[p] == 0:
                del self.refs[p], self.kinds[p], self.contents[p]

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def has_unique_ref(self, data: st.DataObject) -> None:
        first, n = self.live_run(data)
        want = all(self.refs[p] == 1 for p in range(first, first + n))
        assert self.mf.has_unique_ref(self.page_range(first, n)) == want

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def decommit(self, data: st.DataObject) -> None:
        first, n = self.live_run(data)
        self.mf.decommit(self.page_range(first, n))
        for p in range(first, first + n):
            self.contents[p] = 0

    @rule(
        data=st.data(),
        method=st.sampled_from(["inc_ref", "dec_ref", "decommit", "has_unique_ref"]),
    )
    def misuse(self, data: st.DataObject, method: str) -> None:
        free = [p for p in range(self.file_pages + 2) if p not in self.refs]
        p = data.draw(st.sampled_from(free), label="free page")
        before_pages = data.draw(st.integers(0, 2), label="before")
        after_pages = data.draw(st.integers(0, 2), label="after")
        first = max(p - before_pages, 0)
        fr = self.page_range(first, p + 1 + after_pages - first)
        before = snapshot(self.mf)
        with pytest.raises(RefCountError) as info:
            getattr(self.mf, method)(fr)
        assert str(fr) in str(info.value)
        assert snapshot(self.mf) == before

    # -- invariants

    @invariant()
    def structure_is_valid(self) -> None:
        self.mf.check_invariants()

    @invariant()
    def accounting_matches_the_model(self) -> None:
        stats = self.mf.statistics()
        assert stats.used_bytes == len(self.refs) * P
        by_kind = dict.fromkeys(MemoryKind, 0)
        for kind in self.kinds.values():
            by_kind[kind] += P
        assert dict(stats.bytes_by_kind) == by_kind
        assert stats.file_size == self.file_pages * P
        assert stats.committed_bytes <= stats.used_bytes

    def teardown(self) -> None:
        try:
            # One dec_ref per run of referenced pages, until none is left.
            while self.refs:
                pages = sorted(self.refs)
                first = prev = pages[0]
                for p in [*pages[1:], -1]:
                    if p == prev + 1:
                        prev = p
                        continue
                    self.mf.dec_ref(self.page_range(first, prev + 1 - first))
                    first = prev = p
                for p in pages:
                    self.refs[p] -= 1
                    if not self.refs[p]:
                        del self.refs[p]
            self.mf.check_invariants()
            stats = self.mf.statistics()
            assert stats.used_bytes == 0
            assert stats.committed_bytes == 0
        finally:
            self.mf.close()


TestMemoryFileMachine = MemoryFileMachine.TestCase


def test_operations_skip_invariant_checks_when_debug_is_off(monkeypatch, mf):
    def fail() -> None:
        raise AssertionError("checked")

    monkeypatch.setattr(mf, "_check_invariants_locked", fail)
    set_debug(False)
    fr = mf.allocate(2 * P)
    mf.inc_ref(fr)
    mf.dec_ref(fr)
    mf.dec_ref(fr)
    assert mf.statistics().used_bytes == 0
