"""BlockSeq, copy_seq and zero_seq: unit tests and properties against a bytes model."""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemmap import BlockSeq, copy_seq, zero_seq
from tests.strategies import SplitBuffer, split_buffers


def views(*chunks: bytes) -> list[memoryview]:
    """Writable views of separate copies of ``chunks``."""
    return [memoryview(bytearray(c)) for c in chunks]


def seq(*chunks: bytes) -> BlockSeq:
    return BlockSeq(views(*chunks))


def check_invariants(bs: BlockSeq) -> None:
    total = 0
    for b in bs:
        assert type(b) is memoryview
        assert b.format == "B"
        assert b.ndim == 1
        assert b.contiguous
        assert len(b) > 0
        total += len(b)
    assert total == bs.num_bytes
    assert bs.is_empty() == (len(bs) == 0) == (bs.num_bytes == 0)


# --------------------------------------------------------------------------
# Construction


def test_blockseq_empty() -> None:
    bs = BlockSeq()
    assert len(bs) == 0
    assert bs.num_bytes == 0
    assert bs.is_empty()
    assert not bs
    assert bs.tobytes() == b""
    assert list(bs) == []
    assert not bs.readonly
    check_invariants(bs)


def test_blockseq_keeps_blocks_in_order() -> None:
    bs = seq(b"ab", b"cde", b"f")
    assert len(bs) == 3
    assert bs.num_bytes == 6
    assert bs.tobytes() == b"abcdef"
    assert [bytes(b) for b in bs] == [b"ab", b"cde", b"f"]
    assert not bs.is_empty()
    check_invariants(bs)


def test_blockseq_drops_zero_length_blocks() -> None:
    bs = seq(b"", b"ab", b"", b"", b"c", b"")
    assert len(bs) == 2
    assert bs.num_bytes == 3
    assert bs.tobytes() == b"abc"
    assert seq(b"", b"").is_empty()
    check_invariants(bs)


def test_blockseq_accepts_any_iterable() -> None:
    bs = BlockSeq(v for v in views(b"x", b"yz"))
    assert bs.tobytes() == b"xyz"


def test_blockseq_views_memory_without_copying() -> None:
    buf = bytearray(b"hello")
    bs = BlockSeq([memoryview(buf)])
    buf[0:1] = b"J"
    assert bs.tobytes() == b"Jello"
    bs[0][4] = ord("y")
    assert buf == b"Jelly"


def test_blockseq_recasts_one_byte_formats() -> None:
    raw = bytearray(b"\x01\x02\x03")
    char = memoryview(raw).cast("c")
    signed = memoryview(raw).cast("b")
    flags = (ctypes.c_bool * 2)(True, False)
    bs = BlockSeq([char, signed, memoryview(flags)])  # type: ignore[list-item]
    assert [b.format for b in bs] == ["B", "B", "B"]
    assert bs.tobytes() == b"\x01\x02\x03\x01\x02\x03\x01\x00"
    check_invariants(bs)


def test_blockseq_survives_release_of_callers_view() -> None:
    buf = bytearray(b"abc")
    with memoryview(buf) as mv:
        bs = BlockSeq([mv])
    assert bs.tobytes() == b"abc"


def test_blockseq_accepts_read_only_blocks() -> None:
    bs = BlockSeq([memoryview(b"ro"), memoryview(bytearray(b"rw"))])
    assert bs.readonly
    assert bs.tobytes() == b"rorw"
    assert not seq(b"rw").readonly


@pytest.mark.parametrize(
    "blocks",
    [
        [b"bytes"],
        [bytearray(b"bytearray")],
        [1],
        [None],
        [memoryview(b"ok"), "str"],
    ],
)
def test_blockseq_rejects_non_memoryview_blocks(blocks: list[object]) -> None:
    with pytest.raises(TypeError, match=r"block \d+ must be a memoryview"):
        BlockSeq(blocks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "single", [memoryview(b"abc"), b"abc", bytearray(b"abc"), "abc"]
)
def test_blockseq_rejects_a_single_buffer(single: object) -> None:
    with pytest.raises(TypeError, match=r"not a single .*BlockSeq\(\[view\]\)"):
        BlockSeq(single)  # type: ignore[arg-type]


def test_blockseq_rejects_non_iterable() -> None:
    with pytest.raises(TypeError):
        BlockSeq(42)  # type: ignore[arg-type]


def test_blockseq_rejects_multidimensional_block() -> None:
    grid = memoryview(bytearray(8)).cast("B", (2, 4))
    with pytest.raises(ValueError, match=r"block 0 must be one-dimensional"):
        BlockSeq([grid])


def test_blockseq_rejects_wide_items() -> None:
    wide = memoryview(bytearray(8)).cast("H")
    with pytest.raises(ValueError, match=r"block 1 must have one-byte items.*'H'"):
        BlockSeq([memoryview(b"x"), wide])


def test_blockseq_rejects_non_contiguous_block() -> None:
    strided = memoryview(bytearray(8))[::2]
    with pytest.raises(ValueError, match=r"block 0 must be contiguous"):
        BlockSeq([strided])


def test_blockseq_rejects_released_block() -> None:
    mv = memoryview(bytearray(4))
    mv.release()
    with pytest.raises(ValueError, match=r"block 0 is a released memoryview"):
        BlockSeq([mv])


def test_blockseq_validates_empty_blocks_before_dropping_them() -> None:
    empty = memoryview(bytearray(0))
    empty.release()
    with pytest.raises(ValueError, match="released"):
        BlockSeq([empty])
    with pytest.raises(ValueError, match="one-byte items"):
        BlockSeq([memoryview(bytearray(0)).cast("I")])
    with pytest.raises(TypeError):
        BlockSeq([b""])  # type: ignore[list-item]


# --------------------------------------------------------------------------
# Sequence behaviour


def test_blockseq_is_a_sequence() -> None:
    bs = seq(b"ab", b"c")
    assert isinstance(bs, Sequence)
    assert bytes(bs[0]) == b"ab"
    assert bytes(bs[-1]) == b"c"
    assert bs.index(bs[1]) == 1
    assert list(reversed(bs)) == [bs[1], bs[0]]
    with pytest.raises(IndexError):
        bs[2]


def test_blockseq_slice_is_a_blockseq() -> None:
    bs = seq(b"ab", b"cde", b"f", b"gh")
    middle = bs[1:3]
    assert isinstance(middle, BlockSeq)
    assert middle.tobytes() == b"cdef"
    assert middle.num_bytes == 4
    assert bs[::-1].tobytes() == b"ghfcdeab"
    assert bs[5:].is_empty()
    check_invariants(middle)


def test_blockseq_is_immutable() -> None:
    bs = seq(b"ab")
    with pytest.raises(AttributeError, match="immutable"):
        bs._num_bytes = 3
    with pytest.raises(AttributeError, match="immutable"):
        bs.extra = 1
    with pytest.raises(AttributeError, match="immutable"):
        del bs._blocks
    assert bs.num_bytes == 2


def test_blockseq_repr() -> None:
    assert repr(BlockSeq()) == "BlockSeq(num_bytes=0, block_lengths=[])"
    assert repr(seq(b"ab", b"c")) == "BlockSeq(num_bytes=3, block_lengths=[2, 1])"
    many = BlockSeq(views(*[b"x"] * 10))
    assert repr(many) == (
        "BlockSeq(num_bytes=10, block_lengths=[1, 1, 1, 1, 1, 1, 1, 1, ...])"
    )


# --------------------------------------------------------------------------
# drop_first / take_first


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, b"abcdef"),
        (1, b"bcdef"),
        (2, b"cdef"),
        (3, b"def"),
        (5, b"f"),
        (6, b""),
        (7, b""),
        (1 << 70, b""),
    ],
)
def test_drop_first(n: int, expected: bytes) -> None:
    bs = seq(b"ab", b"cde", b"f")
    dropped = bs.drop_first(n)
    assert dropped.tobytes() == expected
    assert dropped.num_bytes == len(expected)
    check_invariants(dropped)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, b""),
        (1, b"a"),
        (2, b"ab"),
        (3, b"abc"),
        (5, b"abcde"),
        (6, b"abcdef"),
        (7, b"abcdef"),
        (1 << 70, b"abcdef"),
    ],
)
def test_take_first(n: int, expected: bytes) -> None:
    bs = seq(b"ab", b"cde", b"f")
    taken = bs.take_first(n)
    assert taken.tobytes() == expected
    assert taken.num_bytes == len(expected)
    check_invariants(taken)


def test_take_first_on_a_block_boundary_keeps_whole_blocks() -> None:
    bs = seq(b"ab", b"cde", b"f")
    assert [bytes(b) for b in bs.take_first(5)] == [b"ab", b"cde"]
    assert [bytes(b) for b in bs.drop_first(2)] == [b"cde", b"f"]


def test_drop_and_take_return_self_when_nothing_changes() -> None:
    bs = seq(b"ab", b"c")
    assert bs.drop_first(0) is bs
    assert bs.take_first(3) is bs
    assert bs.take_first(10) is bs


def test_drop_and_take_share_memory() -> None:
    buf = bytearray(b"0123456789")
    bs = BlockSeq([memoryview(buf)[:4], memoryview(buf)[4:]])
    part = bs.drop_first(2).take_first(5)
    assert part.tobytes() == b"23456"
    buf[3] = ord("X")
    assert part.tobytes() == b"2X456"
    part[1][0] = ord("Y")
    assert buf == bytearray(b"012XY56789")


@pytest.mark.parametrize("method", ["drop_first", "take_first"])
def test_drop_and_take_reject_bad_counts(method: str) -> None:
    bs = seq(b"abc")
    fn = getattr(bs, method)
    with pytest.raises(ValueError, match=r"n must not be negative, got -1"):
        fn(-1)
    for bad in (1.0, "1", None, True):
        with pytest.raises(TypeError, match="n must be an int"):
            fn(bad)


def test_drop_and_take_accept_int_subclasses() -> None:
    class Count(enum.IntEnum):
        ONE = 1

    bs = seq(b"abc")
    assert bs.drop_first(Count.ONE).tobytes() == b"bc"
    assert bs.take_first(Count.ONE).tobytes() == b"a"


# --------------------------------------------------------------------------
# copy_seq


def test_copy_seq_single_blocks() -> None:
    dst = seq(b"......")
    assert copy_seq(dst, seq(b"abc")) == 3
    assert dst.tobytes() == b"abc..."
    assert copy_seq(dst, seq(b"0123456789")) == 6
    assert dst.tobytes() == b"012345"


def test_copy_seq_across_blocks() -> None:
    dst = seq(b"...", b"..", b"....")
    src = seq(b"ab", b"cdef", b"g", b"hijk")
    assert copy_seq(dst, src) == 9
    assert dst.tobytes() == b"abcdefghi"
    assert [bytes(b) for b in dst] == [b"abc", b"de", b"fghi"]


def test_copy_seq_stops_at_the_shorter_side() -> None:
    dst = seq(b"..", b"..", b"..")
    assert copy_seq(dst, seq(b"a", b"bc")) == 3
    assert dst.tobytes() == b"abc..."


def test_copy_seq_with_empty_sides() -> None:
    assert copy_seq(BlockSeq(), seq(b"abc")) == 0
    dst = seq(b"abc")
    assert copy_seq(dst, BlockSeq()) == 0
    assert dst.tobytes() == b"abc"


def test_copy_seq_from_read_only_source() -> None:
    dst = seq(b"....")
    assert copy_seq(dst, BlockSeq([memoryview(b"ro"), memoryview(b"RO")])) == 4
    assert dst.tobytes() == b"roRO"


def test_copy_seq_into_read_only_block_copies_nothing() -> None:
    first = bytearray(b"...")
    dst = BlockSeq([memoryview(first), memoryview(b"read-only")])
    with pytest.raises(TypeError, match=r"copy_seq: destination block 1 .*read-only"):
        copy_seq(dst, seq(b"abcdefgh"))
    assert first == b"..."


def test_copy_seq_ignores_read_only_blocks_it_does_not_reach() -> None:
    first = bytearray(b"...")
    dst = BlockSeq([memoryview(first), memoryview(b"read-only")])
    assert copy_seq(dst, seq(b"abc")) == 3
    assert first == b"abc"
    # Nothing to copy, so nothing is written, so nothing is refused.
    assert copy_seq(BlockSeq([memoryview(b"ro")]), BlockSeq()) == 0


def test_copy_seq_onto_itself_is_harmless() -> None:
    bs = seq(b"ab", b"cd")
    assert copy_seq(bs, bs) == 4
    assert bs.tobytes() == b"abcd"


def test_copy_seq_large_blocks() -> None:
    size = 4 << 20
    pattern = bytes(range(256)) * (size // 256)
    src = BlockSeq([memoryview(pattern)[: size // 3], memoryview(pattern)[size // 3 :]])
    dst_mem = bytearray(size)
    dst = BlockSeq([memoryview(dst_mem)[: size // 2], memoryview(dst_mem)[size // 2 :]])
    assert copy_seq(dst, src) == size
    assert dst_mem == pattern


@pytest.mark.parametrize(
    ("dst", "src", "name"),
    [
        (b"abc", BlockSeq(), "dst"),
        (BlockSeq(), [memoryview(b"x")], "src"),
        (None, BlockSeq(), "dst"),
    ],
)
def test_copy_seq_rejects_non_blockseqs(dst: object, src: object, name: str) -> None:
    with pytest.raises(TypeError, match=f"{name} must be a BlockSeq"):
        copy_seq(dst, src)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# zero_seq


def test_zero_seq() -> None:
    mem = [bytearray(b"abc"), bytearray(b"de")]
    dst = BlockSeq([memoryview(m) for m in mem])
    assert zero_seq(dst) == 5
    assert mem == [bytearray(3), bytearray(2)]
    assert zero_seq(BlockSeq()) == 0


def test_zero_seq_large_block() -> None:
    size = 600 * 1024 + 123  # more than one internal zero chunk, not a multiple
    mem = bytearray(b"\xff" * size)
    assert zero_seq(BlockSeq([memoryview(mem)])) == size
    assert mem.count(0) == size


def test_zero_seq_into_read_only_block_writes_nothing() -> None:
    first = bytearray(b"abc")
    dst = BlockSeq([memoryview(first), memoryview(b"ro")])
    with pytest.raises(TypeError, match=r"zero_seq: destination block 1 .*read-only"):
        zero_seq(dst)
    assert first == b"abc"


def test_zero_seq_rejects_non_blockseq() -> None:
    with pytest.raises(TypeError, match="dst must be a BlockSeq"):
        zero_seq(memoryview(bytearray(4)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Properties against a bytes model


@given(split_buffers())
def test_property_blockseq_matches_its_memory(buf: SplitBuffer) -> None:
    bs = buf.seq()
    check_invariants(bs)
    assert bs.tobytes() == buf.read_back()
    assert bs.num_bytes == buf.length
    assert len(bs) == sum(1 for v in buf.views if len(v))


@given(split_buffers(), st.integers(0, 80), st.integers(0, 80))
def test_property_drop_take_algebra(buf: SplitBuffer, a: int, b: int) -> None:
    bs = buf.seq()
    data = bs.tobytes()
    assert bs.drop_first(a).tobytes() == data[a:]
    assert bs.take_first(a).tobytes() == data[:a]
    assert bs.drop_first(a).num_bytes == max(len(data) - a, 0)
    assert bs.take_first(a).num_bytes == min(len(data), a)
    assert bs.drop_first(a).drop_first(b).tobytes() == bs.drop_first(a + b).tobytes()
    assert (
        bs.take_first(a).take_first(b).tobytes() == bs.take_first(min(a, b)).tobytes()
    )
    assert bs.drop_first(a).take_first(b).tobytes() == data[a : a + b]
    assert bs.take_first(a).tobytes() + bs.drop_first(a).tobytes() == data
    for derived in (bs.drop_first(a), bs.take_first(a), bs.drop_first(a).take_first(b)):
        check_invariants(derived)


@given(split_buffers(), split_buffers())
def test_property_copy_seq_matches_bytes_model(
    dst_buf: SplitBuffer, src_buf: SplitBuffer
) -> None:
    dst, src = dst_buf.seq(), src_buf.seq()
    before_dst, before_src = dst_buf.read_back(), src_buf.read_back()
    n = min(len(before_dst), len(before_src))
    assert copy_seq(dst, src) == n
    expected = before_src[:n] + before_dst[n:]
    assert dst_buf.read_back() == expected
    assert dst.tobytes() == expected
    assert src_buf.read_back() == before_src


@given(st.binary(max_size=64), st.data())
def test_property_copy_seq_same_bytes_any_splitting(
    payload: bytes, data: st.DataObject
) -> None:
    # Two different splittings of the same source copy the same bytes.
    first = data.draw(split_buffers(payload))
    second = data.draw(split_buffers(payload))
    out1 = data.draw(split_buffers(bytes(len(payload))))
    out2 = data.draw(split_buffers(bytes(len(payload))))
    copy_seq(out1.seq(), first.seq())
    copy_seq(out2.seq(), second.seq())
    assert out1.read_back() == out2.read_back() == payload


@given(split_buffers(), st.integers(0, 80), st.integers(0, 80))
def test_property_copy_seq_into_a_window(
    buf: SplitBuffer, skip: int, take: int
) -> None:
    # Copying into drop_first/take_first windows writes exactly that window.
    before = buf.read_back()
    window = buf.seq().drop_first(skip).take_first(take)
    n = window.num_bytes
    assert copy_seq(window, BlockSeq([memoryview(b"\xab" * 100)])) == n
    start = min(skip, len(before))
    assert buf.read_back() == before[:start] + b"\xab" * n + before[start + n :]


@given(split_buffers())
def test_property_zero_seq(buf: SplitBuffer) -> None:
    assert zero_seq(buf.seq()) == buf.length
    assert buf.read_back() == bytes(buf.length)


@given(split_buffers(), st.integers(0, 10), st.integers(0, 10))
def test_property_slices_match_blocks(buf: SplitBuffer, i: int, j: int) -> None:
    bs = buf.seq()
    part = bs[i:j]
    assert part.tobytes() == b"".join(list(bs)[i:j])
    check_invariants(part)
