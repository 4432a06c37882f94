"""AddressSpace against the real kernel (SPEC R7), and the tester's own parts.

The first test runs a bounded number of seeded random sequences on both
sides; the others prove that the tester works: the driver reports what the
kernel does, the text form round-trips, the normalisations do exactly what
the table of intended differences says, and a deliberately wrong model is
caught and shrunk to a minimal reproducer.

:data:`FIXED` lists the differences the tester found, all fixed: each
reproducer (and the random sequence that found it first) agrees with Linux.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.linux_oracle.compare import Oracle, replay_command
from tests.linux_oracle.differences import (
    ERROR_ORDER,
    INTENDED_DIFFERENCES,
    MULTI_VMA_MOVE,
    differ_only_in,
    explain,
    normalise_maps,
)
from tests.linux_oracle.driver import LinuxGuest
from tests.linux_oracle.model import ModelSide, run_model
from tests.linux_oracle.ops import (
    Mmap,
    Mprotect,
    Read,
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
    for index in range(CI_SEQUENCES):
        ops = generate(random.Random(f"{CI_SEED}:{index}"))
        diff = await oracle.check(ops)
        if diff is None:
            continue
        small, small_diff = await shrink(oracle, ops, diff)
        pytest.fail(
            f"sequence {index} of seed {CI_SEED} differs from Linux:\n"
            f"{diff.describe()}\nshrunk to:\n"
            f"{small_diff.describe()}\n{replay_command(small)}"
        )


# ---------------------------------------------------------------------------
# Fixed differences


@dataclass(frozen=True)
class Fixed:
    """A difference found and fixed: its reproducer, and where it was found.

    ``found_at`` is ``(seed, index)`` as ``python -m tests.linux_oracle
    --seed S --first I --runs 1`` numbers a random sequence that showed it.
    """

    name: str
    reproducer: str
    found_at: tuple[int, int]


FIXED: tuple[Fixed, ...] = (
    Fixed(
        "a write runs on from writable pages into read-only ones after fork",
        "mmap(0x0,0x3000,r--,ap,fixed,0x0);mprotect(0x1000,0x1000,rw-);"
        "fork(exit,[]);write(0x1000,0x10,2);write(0x1800,0x1000,3)",
        (2, 22),
    ),
    Fixed(
        "mmap of a file at offset 2**64 - 4096 raises ValueError, not EOVERFLOW",
        "mmap(0x3000,0x1000,r-x,fp,fixed,0xfffffffffffff000)",
        (7, 98),
    ),
    Fixed(
        "mmap of a file past the 2**63 - 1 file size limit succeeds, not EOVERFLOW",
        "mmap(0x1000,0x1000,rwx,fs,fixed,0xffffffffffffe000)",
        (1, 0),
    ),
    Fixed(
        "mremap with old_size 0 of a private mapping is not refused with EINVAL",
        "mmap(0x4000,0x3000,rwx,ap,fixed,0x0);mremap(0x5000,0x0,0x3000,may,0x0)",
        (1, 76),
    ),
    Fixed(
        "a failed MREMAP_FIXED has already unmapped its destination (or tail)",
        "mmap(0xb000,0x4000,rw-,as,noreplace,0x0);"
        "mmap(0x7000,0x1000,rwx,ap,noreplace,0x0);"
        "mremap(0x7000,0x3000,0x2000,must,0xd000)",
        (1, 14),
    ),
    Fixed(
        "a copy by MREMAP_FIXED onto its own old_addr fails on an assertion",
        "mmap(0x2000,0x3000,rw-,as,fixed,0x0);mremap(0x3000,0x0,0x1000,must,0x3000)",
        (11, 185),
    ),
)


@pytest.mark.parametrize("entry", FIXED, ids=lambda e: e.name)
async def test_fixed_differences_agree_with_linux(oracle: Oracle, entry: Fixed) -> None:
    ops = parse(entry.reproducer)
    diff = await oracle.check(ops)
    assert diff is None, diff.describe()
    seed, index = entry.found_at
    diff = await oracle.check(generate(random.Random(f"{seed}:{index}")))
    assert diff is None, diff.describe()


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
    # A file mapping past the largest file: gVisor refuses it before
    # placing it, Linux after.
    past = Mmap(0x1000, P, "rwx", "fs", "noreplace", 2**63 - P)
    assert explain(past, ["err", "EEXIST"], ["err", "EOVERFLOW"]) is ERROR_ORDER
    inside = Mmap(0x1000, P, "rwx", "fs", "noreplace", 2**63 - 2 * P)
    assert explain(inside, ["err", "EEXIST"], ["err", "EOVERFLOW"]) is None


def test_reported_differences_are_not_intended_differences() -> None:
    write = parse(FIXED[0].reproducer)[-1]
    assert explain(write, ["fault", "EFAULT", 0x800], ["ok", 0x1000]) is None
    (mmap,) = parse(FIXED[1].reproducer)
    assert explain(mmap, ["err", "EOVERFLOW"], ["exc", "ValueError"]) is None
    (mmap,) = parse(FIXED[2].reproducer)
    assert explain(mmap, ["err", "EOVERFLOW"], ["ok", 0x1000]) is None
    assert MULTI_VMA_MOVE in INTENDED_DIFFERENCES
    assert len({d.name for d in INTENDED_DIFFERENCES}) == len(INTENDED_DIFFERENCES)


# A write to a private file mapping copies page 0x1000 with page 0x2000;
# then the file changes under page 0x1000 through a shared mapping.
COW_WINDOW = (
    "mmap(0x1000,0x2000,rw-,fp,fixed,0x1000);write(0x2ff0,0x10,49);"
    "mmap(0x0,0x1000,rw-,fs,noreplace,0x1000);write(0x0,0x801,208);"
    "read(0x1000,0x10);read(0x0,0x10)"
)


async def test_copy_on_write_window_pages_are_listed_and_normalised(
    oracle: Oracle,
) -> None:
    ops = parse(COW_WINDOW)
    ours = await run_model(ops)
    assert ours[1][2] == [0x1000]
    linux = oracle.guest.run(ops)
    assert linux[4][0] != ours[4][0]
    assert linux[5][0] == ours[5][0]
    assert await oracle.check(ops) is None


class _FlipsFirstPage(ModelSide):
    """A wrong model: reads at the window's first page have a bit flipped."""

    async def read(self, addr: int, length: int) -> list[Any]:
        out = await super().read(addr, length)
        if out[0] == "ok" and addr < P:
            data = bytearray.fromhex(out[1])
            data[0] ^= 1
            out = ["ok", data.hex()]
        return out


async def test_copy_on_write_window_masks_no_other_page(guest: LinuxGuest) -> None:
    diff = await Oracle(guest, _FlipsFirstPage).check(parse(COW_WINDOW))
    assert diff is not None
    assert diff.where == "op 5"


def test_differ_only_in_names_the_pages() -> None:
    a = (b"x" * P + b"y" * P).hex()
    b = (b"x" * P + b"z" * P).hex()
    assert differ_only_in(a, b, 0, frozenset({P}))
    assert not differ_only_in(a, b, 0, frozenset({0}))
    assert differ_only_in(a[2 * P :], b[2 * P :], P, frozenset({P}))
    assert not differ_only_in(a, b[:-2], 0, frozenset({0, P}))


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
