"""The operation language: what a sequence may do, its text form, and a generator.

Addresses are byte offsets from the start of the window (see
:mod:`tests.linux_oracle.window`); every other number is what the syscall
receives. A sequence prints as one line, operations separated by ``;``::

    mmap(0x3000,0x2000,r--,ap,fixed,0x0);mprotect(0x4000,0x1000,rw-);
    fork(keep,[write(0x4000,0x10,7)]);write(0x4000,0x1800,9)

and :func:`parse` reads it back, so a printed sequence can be replayed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

from tests.linux_oracle.window import FILE_SIZE, WINDOW_PAGES, WINDOW_SIZE, P

__all__ = [
    "KINDS",
    "PLACES",
    "PROTS",
    "Dontneed",
    "Fork",
    "Mmap",
    "Mprotect",
    "Mremap",
    "Munmap",
    "Op",
    "Read",
    "Write",
    "encode",
    "generate",
    "parse",
    "pattern",
]

Kind = Literal["ap", "as", "fp", "fs"]
Place = Literal["fixed", "noreplace", "hint", "none"]
Move = Literal["no", "may", "must"]

# Anonymous private/shared, file private/shared.
KINDS: tuple[Kind, ...] = ("ap", "as", "fp", "fs")
PLACES: tuple[Place, ...] = ("fixed", "noreplace", "hint", "none")
MOVES: tuple[Move, ...] = ("no", "may", "must")
PROTS = ("---", "r--", "-w-", "rw-", "--x", "r-x", "-wx", "rwx")


@dataclass(frozen=True, slots=True)
class Mmap:
    """``mmap(window + addr, length, prot, kind, place, offset)``."""

    addr: int
    length: int
    prot: str
    kind: Kind
    place: Place
    offset: int


@dataclass(frozen=True, slots=True)
class Munmap:
    """``munmap(window + addr, length)``."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class Mprotect:
    """``mprotect(window + addr, length, prot)``."""

    addr: int
    length: int
    prot: str


@dataclass(frozen=True, slots=True)
class Mremap:
    """``mremap(window + addr, old_size, new_size, move, window + new_addr)``."""

    addr: int
    old_size: int
    new_size: int
    move: Move
    new_addr: int


@dataclass(frozen=True, slots=True)
class Dontneed:
    """``madvise(window + addr, length, MADV_DONTNEED)``."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``length`` bytes at ``window + addr``."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class Write:
    """Write :func:`pattern` ``(fill, length)`` at ``window + addr``."""

    addr: int
    length: int
    fill: int


@dataclass(frozen=True, slots=True)
class Fork:
    """Fork; the child runs ``ops``, then exits, or stays alive if ``keep``.

    A kept child lives until the end of the sequence, when its whole window
    is read back.
    """

    keep: bool
    ops: tuple[Op, ...]


Op: TypeAlias = Mmap | Munmap | Mprotect | Mremap | Dontneed | Read | Write | Fork


def pattern(fill: int, length: int) -> bytes:
    """Return the bytes a :class:`Write` with ``fill`` writes (never all zero)."""
    base = bytes((fill * 31 + i * 7 + 1) % 251 + 1 for i in range(251))
    reps = length // len(base) + 1
    return (base * reps)[:length]


# ---------------------------------------------------------------------------
# Text form


def _num(n: int) -> str:
    return hex(n)


def _encode_op(op: Op) -> str:
    match op:
        case Mmap(addr, length, prot, kind, place, offset):
            args = [_num(addr), _num(length), prot, kind, place, _num(offset)]
            return f"mmap({','.join(args)})"
        case Munmap(addr, length):
            return f"munmap({_num(addr)},{_num(length)})"
        case Mprotect(addr, length, prot):
            return f"mprotect({_num(addr)},{_num(length)},{prot})"
        case Mremap(addr, old_size, new_size, move, new_addr):
            args = [_num(addr), _num(old_size), _num(new_size), move, _num(new_addr)]
            return f"mremap({','.join(args)})"
        case Dontneed(addr, length):
            return f"dontneed({_num(addr)},{_num(length)})"
        case Read(addr, length):
            return f"read({_num(addr)},{_num(length)})"
        case Write(addr, length, fill):
            return f"write({_num(addr)},{_num(length)},{fill})"
        case Fork(keep, ops):
            inner = ";".join(_encode_op(o) for o in ops)
            return f"fork({'keep' if keep else 'exit'},[{inner}])"


def encode(ops: tuple[Op, ...] | list[Op]) -> str:
    """Return the one-line text form of a sequence."""
    return ";".join(_encode_op(op) for op in ops)


_TOKEN = re.compile(r"\s*([a-z]+)\(")


def _split(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets, dropping empty parts."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [part for part in out if part]


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def _parse_op(text: str) -> Op:
    m = _TOKEN.match(text)
    if m is None or not text.endswith(")"):
        raise ValueError(f"not an operation: {text!r}")
    name = m.group(1)
    args = _split(text[m.end() : -1], ",")

    def nums(*idx: int) -> list[int]:
        return [int(args[i], 0) for i in idx]

    want = {
        "mmap": 6,
        "munmap": 2,
        "mprotect": 3,
        "mremap": 5,
        "dontneed": 2,
        "read": 2,
        "write": 3,
        "fork": 2,
    }
    if name not in want:
        raise ValueError(f"unknown operation {name!r} in {text!r}")
    if len(args) != want[name]:
        raise ValueError(f"{name} takes {want[name]} arguments: {text!r}")
    match name:
        case "mmap":
            addr, length, offset = nums(0, 1, 5)
            prot = _choice(args[2], PROTS, "prot")
            kind = _choice(args[3], KINDS, "kind")
            place = _choice(args[4], PLACES, "place")
            return Mmap(addr, length, prot, kind, place, offset)  # type: ignore[arg-type]
        case "munmap":
            return Munmap(*nums(0, 1))
        case "mprotect":
            addr, length = nums(0, 1)
            return Mprotect(addr, length, _choice(args[2], PROTS, "prot"))
        case "mremap":
            addr, old, new, new_addr = nums(0, 1, 2, 4)
            move = _choice(args[3], MOVES, "move")
            return Mremap(addr, old, new, move, new_addr)  # type: ignore[arg-type]
        case "dontneed":
            return Dontneed(*nums(0, 1))
        case "read":
            return Read(*nums(0, 1))
        case "write":
            return Write(*nums(0, 1, 2))
        case _:
            keep = _choice(args[0], ("keep", "exit"), "fork mode") == "keep"
            body = args[1]
            if not (body.startswith("[") and body.endswith("]")):
                raise ValueError(f"fork's operations must be in [...]: {text!r}")
            ops = tuple(_parse_op(o) for o in _split(body[1:-1], ";"))
            if any(isinstance(o, Fork) for o in ops):
                raise ValueError("a forked child cannot fork again")
            return Fork(keep, ops)


def parse(text: str) -> tuple[Op, ...]:
    """Read a sequence back from its text form (the inverse of :func:`encode`).

    Raises:
        ValueError: ``text`` is not a sequence.
    """
    return tuple(_parse_op(o) for o in _split(text, ";"))


# ---------------------------------------------------------------------------
# Random sequences

# File offsets worth trying: inside the file, at and past its end, unaligned,
# and near the top of the 64-bit (and 63-bit) offset range.
_EDGE_OFFSETS = (
    2**64 - P,
    2**64 - 2 * P,
    2**63,
    2**63 - P,
    2**62,
)


class _Gen:
    """Draws operations biased towards the edges where bugs live.

    Addresses are mostly page-aligned and drawn near the boundaries of what
    was mapped so far, so that operations overlap, split and straddle each
    other's mappings.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.points: list[int] = [0, WINDOW_SIZE // 2]
        # Ranges mapped at a chosen address, to operate on parts of.
        self.regions: list[tuple[int, int]] = []
        # Parts recently changed (mprotect, munmap, dontneed), to access.
        self.parts: list[tuple[int, int]] = []

    def inside(self) -> tuple[int, int] | None:
        """Return a page-aligned part of a mapped region, or ``None``."""
        r = self.rng
        if not self.regions:
            return None
        lo, hi = r.choice(self.regions)
        first, last = lo // P, -(-hi // P)
        if last - first < 1:
            return None
        start = r.randrange(first, last)
        n = r.randint(1, min(2, last - start))
        return start * P, n * P

    def page(self) -> int:
        r = self.rng
        if r.random() < 0.6 and self.points:
            base = r.choice(self.points)
            return max(0, min(WINDOW_PAGES - 1, base // P + r.randint(-1, 1)))
        return r.randrange(WINDOW_PAGES)

    def addr(self, aligned: float = 0.95) -> int:
        a = self.page() * P
        if self.rng.random() > aligned:
            a += self.rng.randrange(1, P)
        return a

    def pages(self, most: int = 6) -> int:
        return self.rng.choice((1, 1, 1, 2, 2, 3, 4, most))

    def length(self, start: int) -> int:
        r = self.rng
        roll = r.random()
        if roll < 0.02:
            return 0
        if roll < 0.04:
            return 2**64 - P
        n = self.pages() * P
        if r.random() < 0.1:
            n -= r.randrange(1, P)
        return self.clamp(start, n)

    def clamp(self, start: int, n: int) -> int:
        """Shorten ``n`` so that ``[start, start + n)`` ends inside the window."""
        room = WINDOW_SIZE - start
        if n > room:
            n = room - room % P if room >= P else room
        return max(n, 1)

    def prot(self) -> str:
        # Every protection, read-only and read-write most often.
        return self.rng.choice((*PROTS, "r--", "r--", "rw-", "rw-"))

    def note(self, addr: int, length: int) -> None:
        self.points.append(addr)
        if 0 < length < WINDOW_SIZE:
            self.points.append(addr + length)
        del self.points[:-12]

    def mmap(self) -> Mmap:
        r = self.rng
        kind = r.choice(KINDS)
        place: Place = r.choices(PLACES, weights=(8, 2, 2, 1))[0]
        addr = self.addr(aligned=0.97) if place != "none" else 0
        length = self.length(addr)
        offset = 0
        if kind in ("fp", "fs"):
            roll = r.random()
            if roll < 0.06:
                offset = r.choice(_EDGE_OFFSETS)
            elif roll < 0.08:
                offset = r.randrange(1, P)
            else:
                offset = r.randrange(0, FILE_SIZE // P + 3) * P
        self.note(addr, length)
        if place in ("fixed", "noreplace") and 0 < length <= WINDOW_SIZE:
            self.regions.append((addr, addr + length))
            del self.regions[:-6]
        return Mmap(addr, length, self.prot(), kind, place, offset)

    def access(self) -> tuple[int, int]:
        r = self.rng
        roll = r.random()
        if roll < 0.35 and self.parts:
            # Inside a part recently changed, or from inside it across its end.
            a, n = r.choice(self.parts)
            a += r.choice((0, 16, n // 2, n - 16))
            length = r.choice((16, n // 2, n, n + P // 2))
            return a, max(1, min(length, WINDOW_SIZE - a))
        if roll < 0.7:
            # Across a boundary: start shortly before it, end after it.
            edge = r.choice(self.points)
            before = r.choice((16, P // 2, P, P + P // 2))
            after = r.choice((1, 16, P // 2, P))
            a = max(0, edge - before)
            return a, max(1, min(before + after, WINDOW_SIZE - a))
        a = self.page() * P
        if r.random() < 0.7:
            a += r.choice((0, 1, P // 2, P - 16, r.randrange(P)))
        a = min(a, WINDOW_SIZE - 1)
        n = r.choice((1, 16, P // 2, P, P + P // 2, 2 * P, 3 * P))
        return a, max(1, min(n, WINDOW_SIZE - a))

    def op(self, in_child: bool = False) -> Op:
        r = self.rng
        choices = ["mmap", "munmap", "mprotect", "mremap", "dontneed", "read", "write"]
        weights = [14, 4, 10, 5, 3, 12, 18]
        if not in_child:
            choices.append("fork")
            weights.append(6)
        what = r.choices(choices, weights=weights)[0]
        if what == "mmap":
            return self.mmap()
        if what in ("munmap", "mprotect", "dontneed"):
            part = self.inside() if r.random() < 0.6 else None
            if part is not None:
                a, n = part
                self.parts.append(part)
                del self.parts[:-4]
            else:
                a = self.addr(aligned=0.97)
                n = self.length(a)
            self.note(a, n)
            if what == "munmap":
                return Munmap(a, n)
            if what == "dontneed":
                return Dontneed(a, n)
            return Mprotect(a, n, self.prot())
        if what == "mremap":
            a = self.addr(aligned=0.98)
            old = r.choice((0, P, 2 * P, 3 * P, self.pages() * P))
            if old:
                old = self.clamp(a, old)
            new = r.choice((P, 2 * P, 3 * P, 4 * P, self.pages() * P))
            move: Move = r.choice(MOVES)
            new_addr = 0
            if move == "must":
                new_addr = self.addr(aligned=0.98)
                new = self.clamp(new_addr, new)
            self.note(a, old)
            return Mremap(a, old, new, move, new_addr)
        if what == "read":
            return Read(*self.access())
        if what == "write":
            a, n = self.access()
            return Write(a, n, r.randrange(256))
        n = r.choice((0, 0, 1, 1, 2, 3))
        return Fork(r.random() < 0.35, tuple(self.op(in_child=True) for _ in range(n)))


def generate(rng: random.Random, length: int | None = None) -> tuple[Op, ...]:
    """Return a random sequence (``length`` operations, or 4 to 30)."""
    gen = _Gen(rng)
    n = length if length is not None else rng.randint(4, 30)
    # Most sequences start by mapping something, or there is little to do.
    ops: list[Op] = [gen.mmap() for _ in range(rng.randint(1, 3))]
    while len(ops) < n:
        ops.append(gen.op())
    return tuple(ops[:n] if length is not None else ops)
