"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, cast

from hypothesis import strategies as st

from aiomemmap import BlockSeq

__all__ = ["SplitBuffer", "split_buffers"]


@dataclass(frozen=True)
class SplitBuffer:
    """Bytes held in writable memory and seen as a list of block views.

    ``views`` cover the memory in order; some may be empty. ``read_back()``
    returns the current contents of the memory itself (not through the
    views), so a test can tell whether writes reached it.
    """

    views: list[memoryview]
    memory: list[bytearray]
    start: int
    length: int

    def read_back(self) -> bytes:
        return b"".join(self.memory)[self.start : self.start + self.length]

    def seq(self) -> BlockSeq:
        return BlockSeq(self.views)


@st.composite
def split_buffers(
    draw: st.DrawFn, data: bytes | None = None, max_size: int = 64
) -> SplitBuffer:
    """Draw a :class:`SplitBuffer` holding ``data`` (or random bytes).

    The split points are random (repeated points give empty blocks). The
    blocks are either separate ``bytearray`` objects or slices of one larger
    ``bytearray`` at a random offset, and are viewed with one of the one-byte
    formats ``B``, ``b`` and ``c``.
    """
    if data is None:
        data = draw(st.binary(max_size=max_size))
    n = len(data)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    bounds = [0, *cuts, n]
    pieces = list(itertools.pairwise(bounds))
    fmt: Literal["B", "b", "c"] = draw(st.sampled_from(["B", "b", "c"]))
    if draw(st.booleans()):
        memory = [bytearray(data[a:b]) for a, b in pieces]
        views = [memoryview(m) for m in memory]
        start = 0
    else:
        pad_before = draw(st.integers(0, 16))
        pad_after = draw(st.integers(0, 16))
        big = bytearray(b"\xee" * pad_before + data + b"\xee" * pad_after)
        memory = [big]
        whole = memoryview(big)
        views = [whole[pad_before + a : pad_before + b] for a, b in pieces]
        start = pad_before
    if fmt != "B":
        # Typed as byte views: BlockSeq recasts them to "B" anyway.
        views = [cast(memoryview, v.cast(fmt)) for v in views]
    return SplitBuffer(views=views, memory=memory, start=start, length=n)
