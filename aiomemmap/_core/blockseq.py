"""Block sequences: byte ranges of host memory seen as ``memoryview`` pieces.

A :class:`BlockSeq` is how the engine touches memory it does not own through
Python objects: :meth:`File.map_internal` returns one for a file range, and
guest reads and writes are built from :func:`copy_seq` and :func:`zero_seq`
over them. A file range that crosses a chunk of the host mapping, or a guest
access that crosses pages backed by different files, becomes several blocks;
the helpers move bytes across block boundaries with one slice assignment per
pair of overlapping blocks, never with per-byte Python work.

Every block is a one-dimensional, contiguous ``memoryview`` of unsigned bytes
(format ``"B"``). Views with another one-byte format (``"b"``, ``"c"``...)
are recast to ``"B"`` when the sequence is built, so any two blocks can be
assigned to each other. Zero-length blocks are dropped when the sequence is
built, so every stored block holds at least one byte, and a sequence has no
blocks exactly when it has no bytes.

A ``BlockSeq`` never copies data: its blocks, and the blocks of the sequences
derived from it with :meth:`BlockSeq.drop_first` and
:meth:`BlockSeq.take_first`, are views of the caller's memory. The memory
must stay valid (for memory-file pages: a page reference must be held) for as
long as the sequence is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NoReturn, final, overload

__all__ = ["BlockSeq", "copy_seq", "zero_seq"]

_ZERO_CHUNK: Final[int] = 256 * 1024
"""The most bytes :func:`zero_seq` writes with one slice assignment."""

_ZEROS: Final[memoryview] = memoryview(bytes(_ZERO_CHUNK))

_MAX_REPR_BLOCKS: Final[int] = 8


def _check_block(index: int, block: object) -> memoryview:
    """Validate one block for :class:`BlockSeq` and return the view to store."""
    if type(block) is not memoryview:
        raise TypeError(
            f"BlockSeq: block {index} must be a memoryview, "
            f"got {type(block).__name__}: {block!r}"
        )
    try:
        ndim, itemsize = block.ndim, block.itemsize
        contiguous, fmt = block.contiguous, block.format
    except ValueError as exc:  # The view was released.
        raise ValueError(f"BlockSeq: block {index} is a released memoryview") from exc
    if ndim != 1:
        raise ValueError(
            f"BlockSeq: block {index} must be one-dimensional, got ndim={ndim}"
        )
    if itemsize != 1:
        raise ValueError(
            f"BlockSeq: block {index} must have one-byte items, "
            f"got format {fmt!r} with itemsize {itemsize}"
        )
    if not contiguous:
        raise ValueError(
            f"BlockSeq: block {index} must be contiguous, got strides {block.strides}"
        )
    # A view of our own: the caller may release theirs without affecting us.
    return block[:] if fmt == "B" else block.cast("B")


def _check_count(name: str, n: object) -> int:
    if type(n) is not int:
        if isinstance(n, int) and not isinstance(n, bool):
            return _check_count(name, int(n))
        raise TypeError(f"{name} must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must not be negative, got {n}")
    return n


@final
class BlockSeq(Sequence[memoryview]):
    """An immutable sequence of ``memoryview`` blocks of host memory.

    ``len()`` is the number of blocks; :attr:`num_bytes` is the total number
    of bytes. Iteration and integer indexing give the blocks; slicing gives a
    ``BlockSeq`` of the selected blocks.

    Args:
        blocks: One-dimensional, contiguous ``memoryview`` objects with
            one-byte items. Empty views are allowed and left out. The
            sequence keeps views of its own, so releasing the given views
            later does not affect it.

    Raises:
        TypeError: ``blocks`` is a single buffer rather than an iterable of
            them, or an element is not a ``memoryview``.
        ValueError: A block is released, not one-dimensional, not contiguous
            or has items larger than one byte.

    Invariants:
        Every block is a non-empty, contiguous, one-dimensional view of
        format ``"B"``; :attr:`num_bytes` is the sum of their lengths.

    Concurrency:
        Immutable. The memory the blocks view is not: writers of that memory
        must be coordinated by its owner.
    """

    __slots__ = ("_blocks", "_num_bytes")

    _blocks: tuple[memoryview, ...]
    _num_bytes: int

    def __init__(self, blocks: Iterable[memoryview] = ()) -> None:
        if isinstance(blocks, (memoryview, bytes, bytearray, str)):
            raise TypeError(
                "BlockSeq takes an iterable of memoryview blocks, not a single "
                f"{type(blocks).__name__}; wrap it in a list: BlockSeq([view])"
            )
        kept: list[memoryview] = []
        total = 0
        for i, block in enumerate(blocks):
            view = _check_block(i, block)
            n = len(view)
            if n:
                kept.append(view)
                total += n
        object.__setattr__(self, "_blocks", tuple(kept))
        object.__setattr__(self, "_num_bytes", total)

    @classmethod
    def _trusted(cls, blocks: tuple[memoryview, ...], num_bytes: int) -> BlockSeq:
        """Build a sequence from blocks already known to satisfy the invariants.

        Preconditions:
            Every block is a non-empty, contiguous, one-dimensional ``"B"``
            view and ``num_bytes`` is the sum of their lengths.
        """
        seq = object.__new__(cls)
        object.__setattr__(seq, "_blocks", blocks)
        object.__setattr__(seq, "_num_bytes", num_bytes)
        return seq

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"BlockSeq is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"BlockSeq is immutable; cannot delete {name!r}")

    @property
    def num_bytes(self) -> int:
        """The total number of bytes in all blocks."""
        return self._num_bytes

    @property
    def readonly(self) -> bool:
        """Whether any block is a read-only view (so the sequence cannot be written)."""
        return any(b.readonly for b in self._blocks)

    def is_empty(self) -> bool:
        """Return whether the sequence holds no bytes (and so no blocks)."""
        return self._num_bytes == 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self._blocks)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...

    @overload
    def __getitem__(self, index: slice) -> BlockSeq: ...

    def __getitem__(self, index: int | slice) -> memoryview | BlockSeq:
        if isinstance(index, slice):
            blocks = self._blocks[index]
            return BlockSeq._trusted(blocks, sum(len(b) for b in blocks))
        return self._blocks[index]

    def tobytes(self) -> bytes:
        """Return a copy of all the bytes, in order."""
        return b"".join(self._blocks)

    def drop_first(self, n: int) -> BlockSeq:
        """Return the sequence without its first ``n`` bytes.

        The result views the same memory; nothing is copied. Dropping more
        bytes than there are gives an empty sequence.

        Args:
            n: The number of bytes to leave out.

        Returns:
            A sequence of ``max(num_bytes - n, 0)`` bytes.

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` is negative.

        Complexity:
            O(number of blocks).
        """
        n = _check_count("n", n)
        if n == 0:
            return self
        if n >= self._num_bytes:
            return _EMPTY
        blocks = self._blocks
        i = 0
        skip = n
        while skip >= len(blocks[i]):
            skip -= len(blocks[i])
            i += 1
        head = blocks[i][skip:] if skip else blocks[i]
        return BlockSeq._trusted((head, *blocks[i + 1 :]), self._num_bytes - n)

    def take_first(self, n: int) -> BlockSeq:
        """Return the first ``n`` bytes of the sequence.

        The result views the same memory; nothing is copied. Taking more
        bytes than there are gives the whole sequence.

        Args:
            n: The number of bytes to keep.

        Returns:
            A sequence of ``min(num_bytes, n)`` bytes.

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` is negative.

        Complexity:
            O(number of blocks).
        """
        n = _check_count("n", n)
        if n >= self._num_bytes:
            return self
        if n == 0:
            return _EMPTY
        blocks = self._blocks
        i = 0
        keep = n
        while keep > len(blocks[i]):
            keep -= len(blocks[i])
            i += 1
        last = blocks[i] if keep == len(blocks[i]) else blocks[i][:keep]
        return BlockSeq._trusted((*blocks[:i], last), n)

    def __repr__(self) -> str:
        lengths = [str(len(b)) for b in self._blocks[:_MAX_REPR_BLOCKS]]
        if len(self._blocks) > _MAX_REPR_BLOCKS:
            lengths.append("...")
        return (
            f"BlockSeq(num_bytes={self._num_bytes}, "
            f"block_lengths=[{', '.join(lengths)}])"
        )


_EMPTY: Final[BlockSeq] = BlockSeq()


def _check_seq(name: str, seq: object) -> BlockSeq:
    if not isinstance(seq, BlockSeq):
        raise TypeError(f"{name} must be a BlockSeq, got {type(seq).__name__}")
    return seq


def _check_writable(func: str, blocks: tuple[memoryview, ...], n: int) -> None:
    """Raise unless the blocks holding the first ``n`` bytes are all writable."""
    covered = 0
    for i, b in enumerate(blocks):
        if covered >= n:
            return
        if b.readonly:
            raise TypeError(
                f"{func}: destination block {i} ({len(b)} bytes) is read-only; "
                "nothing was written"
            )
        covered += len(b)


def copy_seq(dst: BlockSeq, src: BlockSeq) -> int:
    """Copy bytes from ``src`` into ``dst``, across block boundaries.

    Copies ``min(dst.num_bytes, src.num_bytes)`` bytes from the start of
    ``src`` to the start of ``dst``, with one slice assignment per pair of
    overlapping blocks.

    Args:
        dst: Where the bytes go.
        src: Where the bytes come from.

    Returns:
        The number of bytes copied.

    Raises:
        TypeError: ``dst`` or ``src`` is not a :class:`BlockSeq`, or a block
            of ``dst`` that would be written is read-only. In both cases
            nothing was copied.

    Preconditions:
        ``dst`` and ``src`` do not view overlapping memory, except where a
        block is copied onto itself at the same position.

    Complexity:
        O(bytes copied) in C, plus O(blocks of ``dst`` + blocks of ``src``)
        Python steps.
    """
    dst = _check_seq("dst", dst)
    src = _check_seq("src", src)
    n = min(dst._num_bytes, src._num_bytes)
    if n == 0:
        return 0
    dblocks, sblocks = dst._blocks, src._blocks
    _check_writable("copy_seq", dblocks, n)
    d, s = dblocks[0], sblocks[0]
    dlen, slen = len(d), len(s)
    if dlen >= n and slen >= n:
        # The common case: one block on each side.
        d[:n] = s if slen == n else s[:n]
        return n
    di = si = doff = soff = 0
    left = n
    while True:
        # Copy the overlap of the current block pair: k bytes. k never
        # exceeds left, since the shorter sequence ends exactly at n.
        drem = dlen - doff
        srem = slen - soff
        k = drem if drem <= srem else srem
        if soff == 0 and k == slen:
            d[doff : doff + k] = s  # Whole source block: no new view needed.
        else:
            d[doff : doff + k] = s[soff : soff + k]
        left -= k
        if not left:
            return n
        if k == drem:
            di += 1
            d = dblocks[di]
            dlen = len(d)
            doff = 0
        else:
            doff += k
        if k == srem:
            si += 1
            s = sblocks[si]
            slen = len(s)
            soff = 0
        else:
            soff += k


def zero_seq(dst: BlockSeq) -> int:
    """Fill every byte of ``dst`` with zero.

    Args:
        dst: The memory to clear.

    Returns:
        ``dst.num_bytes``, the number of bytes zeroed.

    Raises:
        TypeError: ``dst`` is not a :class:`BlockSeq`, or one of its blocks
            is read-only. In both cases nothing was written.

    Complexity:
        O(bytes) in C, plus one Python step per block and per 256 KiB.
    """
    dst = _check_seq("dst", dst)
    blocks = dst._blocks
    _check_writable("zero_seq", blocks, dst._num_bytes)
    for b in blocks:
        m = len(b)
        if m <= _ZERO_CHUNK:
            b[:] = _ZEROS[:m]
            continue
        for off in range(0, m, _ZERO_CHUNK):
            k = min(_ZERO_CHUNK, m - off)
            b[off : off + k] = _ZEROS[:k]
    return dst._num_bytes
