"""AddressSpace against the real kernel (SPEC R7), and the tester's own parts.

The first test runs a bounded number of seeded random sequences on both
sides; the others prove that the tester works: the driver reports what the
kernel does, the text form round-trips, the normalisations do exactly what
the table of intended differences says, and a deliberately wrong model is
caught and shrunk to a minimal reproducer.

:data:`KNOWN_UNFIXED` lists the differences the tester found that are bugs
not fixed yet, each matched by a narrow signature. Fixing one makes its
reproducer agree with Linux, and :func:`test_known_unfixed_still_differ`
then fails until the entry is deleted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.linux_oracle.compare import Difference, Oracle, replay_command
from tests.linux_oracle.differences import (
    ERROR_ORDER,
    INTENDED_DIFFERENCES,
    MULTI_VMA_MOVE,
    explain,
    normalise_maps,
)
from tests.linux_oracle.driver import LinuxGuest
from tests.linux_oracle.model import ModelSide
from tests.linux_oracle.ops import (
    Fork,
    Mmap,
    Mprotect,
    Mremap,
    Op,
    Read,
    Write,
    encode,
    generate,
    parse,
    pattern,
)
from tests.linux_oracle.shrink import ddmin, shrink
from tests.linux_oracle.window import WINDOW_BASE, P

CI_SEED = 20240610
CI_SEQUENCES = 125


# ---------------------------------------------------------------------------
# Known, unfixed differences


def _rounded(n: int) -> int:
    return (n + P - 1) & ~(P - 1)


def _write_through_read_only(ops: tuple[Op, ...], diff: Difference) -> bool:
    # Linux stops a write at a page it may not write; ours wrote it all.
    op = diff.op
    return (
        diff.what == "outcome"
        and isinstance(op, Write)
        and any(isinstance(o, Fork) for o in ops)
        and diff.linux[:2] == ["fault", "EFAULT"]
        and diff.linux[2] < op.length
        and diff.ours == ["ok", op.length]
    )


def _file_offset_value_error(ops: tuple[Op, ...], diff: Difference) -> bool:
    op = diff.op
    return (
        diff.what == "outcome"
        and isinstance(op, Mmap)
        and op.kind in ("fp", "fs")
        and op.offset + _rounded(op.length) <= 1 << 64
        and diff.linux == ["err", "EOVERFLOW"]
        and diff.ours == ["exc", "ValueError"]
    )


def _file_offset_past_size_limit(ops: tuple[Op, ...], diff: Difference) -> bool:
    op = diff.op
    return (
        diff.what == "outcome"
        and isinstance(op, Mmap)
        and op.kind in ("fp", "fs")
        and op.offset + _rounded(op.length) > (1 << 63) - 1
        and diff.linux == ["err", "EOVERFLOW"]
        and diff.ours[:1] == ["ok"]
    )


def _mremap_private_copy(ops: tuple[Op, ...], diff: Difference) -> bool:
    # Linux refuses old_size 0 (a copy) of a private mapping with EINVAL.
    op = diff.op
    if not (
        diff.what == "outcome"
        and isinstance(op, Mremap)
        and op.old_size == 0
        and diff.linux == ["err", "EINVAL"]
    ):
        return False
    copied = ["ok", op.new_addr] if op.move == "must" else ["ok", "moved"]
    return diff.ours in (copied, ["err", "ENOMEM"], ["err", "EFAULT"])


def _mapped(lines: list[str]) -> set[int]:
    pages: set[int] = set()
    for line in lines:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        pages.update(range(start // P, end // P))
    return pages


def _failed_mremap_unmapped_destination(ops: tuple[Op, ...], diff: Difference) -> bool:
    # MREMAP_FIXED failed on both sides; ours had already unmapped the
    # destination (and, when shrinking, the old range's tail).
    op = diff.op
    if not (
        diff.what == "maps"
        and isinstance(op, Mremap)
        and op.move == "must"
        and diff.outcome[:1] == ["err"]
    ):
        return False
    lost = _mapped(diff.linux) - _mapped(diff.ours)
    allowed = set(range(op.new_addr // P, _rounded(op.new_addr + op.new_size) // P))
    if op.new_size < op.old_size:
        tail = _rounded(op.addr + op.new_size) // P
        allowed.update(range(tail, _rounded(op.addr + op.old_size) // P))
    return bool(lost) and _mapped(diff.ours) <= _mapped(diff.linux) and lost <= allowed


@dataclass(frozen=True)
class KnownUnfixed:
    """A difference found and not fixed yet: how to recognise it, and a reproducer."""

    name: str
    matches: Callable[[tuple[Op, ...], Difference], bool]
    reproducer: str


KNOWN_UNFIXED: tuple[KnownUnfixed, ...] = (
    KnownUnfixed(
        "a write runs on from writable pages into read-only ones after fork",
        _write_through_read_only,
        "mmap(0x0,0x3000,r--,ap,fixed,0x0);mprotect(0x1000,0x1000,rw-);"
        "fork(exit,[]);write(0x1000,0x10,2);write(0x1800,0x1000,3)",
    ),
    KnownUnfixed(
        "mmap of a file at offset 2**64 - 4096 raises ValueError, not EOVERFLOW",
        _file_offset_value_error,
        "mmap(0x3000,0x1000,r-x,fp,fixed,0xfffffffffffff000)",
    ),
    KnownUnfixed(
        "mmap of a file past the 2**63 - 1 file size limit succeeds, not EOVERFLOW",
        _file_offset_past_size_limit,
        "mmap(0x1000,0x1000,rwx,fs,fixed,0xffffffffffffe000)",
    ),
    KnownUnfixed(
        "mremap with old_size 0 of a private mapping is not refused with EINVAL",
        _mremap_private_copy,
        "mmap(0x4000,0x3000,rwx,ap,fixed,0x0);mremap(0x5000,0x0,0x3000,may,0x0)",
    ),
    KnownUnfixed(
        "a failed MREMAP_FIXED has already unmapped its destination (or tail)",
        _failed_mremap_unmapped_destination,
        "mmap(0xc000,0x1000,---,fs,hint,0x7000);mmap(0x8000,0x1000,rwx,ap,hint,0x0);"
        "mremap(0x8000,0x2000,0x4000,must,0xc000)",
    ),
)


def known_unfixed(ops: tuple[Op, ...], diff: Difference) -> KnownUnfixed | None:
    """Return the entry of :data:`KNOWN_UNFIXED` that ``diff`` is, if any."""
    for entry in KNOWN_UNFIXED:
        if entry.matches(ops, diff):
            return entry
    return None


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def guest() -> Iterator[LinuxGuest]:
    with LinuxGuest() as g:
        yield g


@pytest.fixture
def oracle(guest: LinuxGuest) -> Oracle:
    return Oracle(guest)


# ---------------------------------------------------------------------------
# The sequences


async def test_random_sequences_agree_with_linux(oracle: Oracle) -> None:
    known: dict[str, int] = {}
    for index in range(CI_SEQUENCES):
        ops = generate(random.Random(f"{CI_SEED}:{index}"))
        diff = await oracle.check(ops)
        if diff is None:
            continue
        entry = known_unfixed(ops, diff)
        if entry is not None:
            known[entry.name] = known.get(entry.name, 0) + 1
            continue
        small, small_diff = await shrink(oracle, ops, diff)
        pytest.fail(
            f"sequence {index} of seed {CI_SEED} differs from Linux:\n"
            f"{diff.describe()}\nshrunk to:\n"
            f"{small_diff.describe()}\n{replay_command(small)}"
        )


@pytest.mark.parametrize("entry", KNOWN_UNFIXED, ids=lambda e: e.name)
async def test_known_unfixed_still_differ(oracle: Oracle, entry: KnownUnfixed) -> None:
    ops = parse(entry.reproducer)
    diff = await oracle.check(ops)
    assert diff is not None, f"fixed? delete KNOWN_UNFIXED entry {entry.name!r}"
    assert entry.matches(ops, diff), diff.describe()
    # Each finding is recognised by its own entry only.
    assert [e for e in KNOWN_UNFIXED if e.matches(ops, diff)] == [entry]


# Where seeded random sequences find the two differences users reported:
# (seed, index) as ``python -m tests.linux_oracle --seed S --first I --runs 1``
# numbers them.
FOUND_AT: dict[str, tuple[int, int]] = {
    KNOWN_UNFIXED[0].name: (2, 22),
    KNOWN_UNFIXED[1].name: (7, 98),
}


@pytest.mark.parametrize("name", sorted(FOUND_AT))
async def test_reported_differences_are_found_by_random_sequences(
    oracle: Oracle, name: str
) -> None:
    (entry,) = [e for e in KNOWN_UNFIXED if e.name == name]
    seed, index = FOUND_AT[name]
    ops = generate(random.Random(f"{seed}:{index}"))
    diff = await oracle.check(ops)
    assert diff is not None, f"fixed? delete KNOWN_UNFIXED entry {name!r}"
    assert entry.matches(ops, diff), diff.describe()


# ---------------------------------------------------------------------------
# The driver


def _step(guest: LinuxGuest, text: str) -> list[Any]:
    (op,) = parse(text)
    return guest.step(op)


def test_driver_write_into_read_only_memory_is_efault(guest: LinuxGuest) -> None:
    guest.reset()
    assert _step(guest, "mmap(0x0,0x2000,rw-,ap,fixed,0x0)")[0] == ["ok", 0]
    assert _step(guest, "mprotect(0x1000,0x1000,r--)") == [
        ["ok"],
        ["00000-01000 rw-p 00000000", "01000-02000 r--p 00000000"],
    ]
    assert _step(guest, "write(0x800,0x1000,1)")[0] == ["fault", "EFAULT", 0x800]
    assert _step(guest, "write(0x1000,0x10,1)")[0] == ["fault", "EFAULT", 0]
    out, _ = _step(guest, "read(0x800,0x1000)")
    assert out == ["ok", (pattern(1, 0x800) + bytes(0x800)).hex()]


def test_driver_reads_write_only_memory_as_the_cpu_does(guest: LinuxGuest) -> None:
    guest.reset()
    _step(guest, "mmap(0x0,0x1000,-w-,ap,fixed,0x0)")
    assert _step(guest, "read(0x0,0x10)")[0] == ["ok", bytes(16).hex()]
    _step(guest, "mprotect(0x0,0x1000,---)")
    assert _step(guest, "read(0x0,0x10)")[0] == ["fault", "EFAULT", 0, ""]


def test_driver_errors_are_errnos(guest: LinuxGuest) -> None:
    guest.reset()
    assert _step(guest, "mmap(0x0,0x0,rw-,ap,fixed,0x0)")[0] == ["err", "EINVAL"]
    assert _step(guest, "munmap(0x10,0x1000)")[0] == ["err", "EINVAL"]
    _step(guest, "mmap(0x0,0x1000,rw-,ap,fixed,0x0)")
    assert _step(guest, "mmap(0x0,0x1000,rw-,ap,noreplace,0x0)")[0] == [
        "err",
        "EEXIST",
    ]


def test_driver_placement_outside_the_window_is_elsewhere(guest: LinuxGuest) -> None:
    guest.reset()
    assert _step(guest, "mmap(0x0,0x1000,rw-,ap,none,0x0)") == [["ok", "elsewhere"], []]
    assert _step(guest, "mmap(0x3000,0x1000,r--,fs,hint,0x1000)") == [
        ["ok", 0x3000],
        ["03000-04000 r--s 00001000 /memfd:aiomemmap-oracle (deleted)"],
    ]


def test_driver_fork_child_writes_private_copies(guest: LinuxGuest) -> None:
    ops = parse(
        "mmap(0x0,0x1000,rw-,ap,fixed,0x0);mmap(0x1000,0x1000,rw-,as,fixed,0x0);"
        "fork(keep,[write(0x0,0x4,1);write(0x1000,0x4,2)]);read(0x0,0x4);read(0x1000,0x4)"
    )
    trace = guest.run(ops)
    child_steps = trace[2][0][1]
    assert [s[0] for s in child_steps] == [["ok", 4], ["ok", 4]]
    assert trace[3][0] == ["ok", bytes(4).hex()]
    assert trace[4][0] == ["ok", pattern(2, 4).hex()]
    final = trace[-1]
    assert final[0] == "final"
    (child_window,) = final[3]
    assert child_window[0][1].startswith(pattern(1, 4).hex())


# ---------------------------------------------------------------------------
# The text form


def test_encode_parse_round_trip() -> None:
    for index in range(200):
        ops = generate(random.Random(f"round-trip:{index}"))
        assert parse(encode(ops)) == ops


@pytest.mark.parametrize(
    "text",
    [
        "mmap(0x0,0x1000,rw-,ap,fixed)",
        "mmap(0x0,0x1000,rwz,ap,fixed,0x0)",
        "frobnicate(0x0)",
        "fork(keep,[fork(exit,[])])",
        "fork(maybe,[])",
        "read(0x0,0x10",
    ],
)
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse(text)


# ---------------------------------------------------------------------------
# Normalisation (the table of intended differences)


def _maps(*lines: tuple[int, int, str, int, str]) -> str:
    out = []
    for start, end, perms, offset, path in lines:
        line = (
            f"{WINDOW_BASE + start:x}-{WINDOW_BASE + end:x} {perms} {offset:08x} "
            f"fe:01 1234"
        )
        out.append(line.ljust(73) + path if path else line)
    return "\n".join(out) + "\n"


def test_normalise_maps_joins_lines_that_continue() -> None:
    name = "/memfd:x (deleted)"
    text = _maps(
        (0x0, 0x1000, "rw-p", 0, ""),
        (0x1000, 0x2000, "rw-p", 0, ""),
        (0x2000, 0x3000, "r--p", 0, ""),
        (0x3000, 0x4000, "r--s", 0x1000, name),
        (0x4000, 0x5000, "r--s", 0x2000, name),
        (0x5000, 0x6000, "r--s", 0x1000, name),
    )
    assert normalise_maps(text) == [
        "00000-02000 rw-p 00000000",
        "02000-03000 r--p 00000000",
        f"03000-05000 r--s 00001000 {name}",
        f"05000-06000 r--s 00001000 {name}",
    ]


def test_normalise_maps_clips_to_the_window_and_drops_device_inode() -> None:
    text = _maps(
        (-0x2000, 0x1000, "r--s", 0x0, "/f"),
        (0x20000, 0x21000, "rw-p", 0, ""),
    )
    assert normalise_maps(text) == ["00000-01000 r--s 00002000 /f"]


def test_error_order_is_normalised_only_with_several_argument_errors() -> None:
    both = Mmap(0x123, 2**64 - P, "rw-", "fp", "fixed", 0)
    assert explain(both, ["err", "ENOMEM"], ["err", "EINVAL"]) is ERROR_ORDER
    single = Mmap(0x123, P, "rw-", "fp", "fixed", 0)
    assert explain(single, ["err", "ENOMEM"], ["err", "EINVAL"]) is None
    assert explain(single, ["err", "EINVAL"], ["ok", 0]) is None


def test_reported_differences_are_not_intended_differences() -> None:
    write = parse(KNOWN_UNFIXED[0].reproducer)[-1]
    assert explain(write, ["fault", "EFAULT", 0x800], ["ok", 0x1000]) is None
    (mmap,) = parse(KNOWN_UNFIXED[1].reproducer)
    assert explain(mmap, ["err", "EOVERFLOW"], ["exc", "ValueError"]) is None
    assert MULTI_VMA_MOVE in INTENDED_DIFFERENCES
    assert len({d.name for d in INTENDED_DIFFERENCES}) == len(INTENDED_DIFFERENCES)


# ---------------------------------------------------------------------------
# Shrinking


async def test_ddmin_finds_a_one_minimal_subset() -> None:
    calls = 0

    async def fails(items: list[int]) -> bool:
        nonlocal calls
        calls += 1
        return 3 in items and 17 in items

    assert await ddmin(list(range(40)), fails) == [3, 17]
    assert calls < 100


class _FlipsBigReads(ModelSide):
    """A wrong model: reads of more than 3000 bytes come back with a bit flipped."""

    async def read(self, addr: int, length: int) -> list[Any]:
        out = await super().read(addr, length)
        if out[0] == "ok" and length > 3000:
            data = bytearray.fromhex(out[1])
            data[0] ^= 1
            out = ["ok", data.hex()]
        return out


async def test_a_wrong_model_is_caught_and_shrunk(guest: LinuxGuest) -> None:
    oracle = Oracle(guest, _FlipsBigReads)
    noise = parse(
        "mmap(0x0,0x4000,rw-,ap,fixed,0x0);write(0x0,0x20,5);"
        "mprotect(0x2000,0x1000,r--);mmap(0x8000,0x2000,r--,fs,fixed,0x0);"
        "fork(exit,[write(0x10,0x10,6)]);read(0x0,0x10)"
    )
    ops = (*noise, Read(0x8000, 0x1000), *noise[2:3], Mprotect(0x0, P, "r--"))
    diff = await oracle.check(ops)
    assert diff is not None
    assert diff.signature() == ("outcome", "Read", ("ok",), ("ok",))
    small, small_diff = await shrink(oracle, ops, diff)
    assert small == (
        Mmap(0x8000, 0x2000, "r--", "fs", "fixed", 0),
        Read(0x8000, 0x1000),
    )
    assert small_diff.signature() == diff.signature()
    assert parse(encode(small)) == small
    assert replay_command(small) == (
        "python -m tests.linux_oracle --replay "
        "'mmap(0x8000,0x2000,r--,fs,fixed,0x0);read(0x8000,0x1000)'"
    )
    # The real model agrees on it.
    assert await Oracle(guest).check(small) is None
