"""AddressSpace syscalls: the errno tables of gVisor (reference §6.6, §6.7).

Each error case is a row of a ``parametrize`` table, run against a fixed
"world" of mappings. After an error the space must be unchanged (``maps()``,
``statistics()`` and ``check_invariants()``), except where gVisor documents
partial application (mprotect, mlock, madvise, mremap's destination unmap);
those rows assert the exact partial result instead. Bad input (wrong types,
out-of-range ints) raises ``TypeError``/``ValueError`` naming the argument,
and changes nothing.

The world (``LAYOUT``: addresses in ``[0x10000, 2**32)``)::

    A  0x400000  2 pages  anonymous private rw-, max ANY
       0x402000  1 page   hole
    B  0x403000  1 page   anonymous private rw-, max ANY
    C  0x404000  1 page   anonymous private r--, max r--
    S  0x500000  2 pages  shared mapping of a SharedMemory (4 pages), rw-
    L  0x600000  1 page   anonymous private rw-, mlocked (eager)
    G  0x700000  3 pages  anonymous private rw-, grows down
    N  0x800000  1 page   anonymous private ---, max ANY
    FREE 0x900000 and above: nothing mapped
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiomemmap import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    Advice,
    BusError,
    ClosedError,
    Layout,
    Limits,
    MappableRange,
    MemoryFault,
    MemoryFile,
    MLockMode,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)

P = PAGE_SIZE
U64 = 1 << 64
BASE = 0x100000
TOP = 1 << 32
LAYOUT = Layout(min_addr=0x10000, max_addr=TOP, bottom_up_base=BASE, top_down_base=TOP)
R = AccessType.READ
W = AccessType.WRITE
RW = AccessType.READ_WRITE
RX = AccessType.READ_EXECUTE
X = AccessType.EXECUTE
ANY = AccessType.ANY
NONE = AccessType.NO_ACCESS
NO_MOVE, MAY_MOVE, MUST_MOVE = (
    MRemapMove.NO_MOVE,
    MRemapMove.MAY_MOVE,
    MRemapMove.MUST_MOVE,
)

A, HOLE, B, C = 0x400000, 0x402000, 0x403000, 0x404000
S, L, G, N, FREE = 0x500000, 0x600000, 0x700000, 0x800000, 0x900000
SM_SIZE = 4 * P
SM_DATA = bytes((i * 7 + 1) % 251 + 1 for i in range(SM_SIZE))


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    f = MemoryFile("t")
    try:
        yield f
        # R1: everything the test made is closed; no page is in use.
        assert f.statistics().used_bytes == 0, f.statistics()
    finally:
        f.close()


def anon(length: int = P, **kw: Any) -> MMapOpts:
    return MMapOpts(length=length, private=True, **kw)


def file_opts(m: Any, length: int, **kw: Any) -> MMapOpts:
    return MMapOpts(length=length, mappable=m, mapping_identity=m, **kw)


class RecordingIdentity:
    """A MappingIdentity that records msync calls (the Mappable is separate)."""

    def __init__(self, name: str = "/rec") -> None:
        self.name = name
        self.refs = 1
        self.synced: list[tuple[int, int]] = []

    def inc_ref(self) -> None:
        self.refs += 1

    async def dec_ref(self) -> None:
        assert self.refs > 0
        self.refs -= 1

    def mapped_name(self) -> str:
        return self.name

    def device_id(self) -> int:
        return 0

    def inode_id(self) -> int:
        return 7

    async def msync(self, mr: MappableRange) -> None:
        self.synced.append((mr.start, mr.end))


class FailingAddMapping:
    """A Mappable whose add_mapping fails (everything else is delegated)."""

    def __init__(self, inner: SharedMemory) -> None:
        self.inner = inner

    async def add_mapping(self, *args: Any) -> None:
        raise RuntimeError("add_mapping failed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def vmas(asp: AddressSpace) -> list[tuple[int, int, str]]:
    """(start, end, perms) of each maps line (without the vsyscall line)."""
    out = []
    for line in asp.maps().splitlines()[:-1]:
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        out.append((start, end, perms))
    return out


def snapshot(asp: AddressSpace) -> tuple[str, Any]:
    """maps and statistics; the fault counter is not state."""
    asp.check_invariants()
    return asp.maps(), dataclasses.replace(asp.statistics(), faults=0)


async def expect_errno(
    asp: AddressSpace,
    err: int,
    aw: Awaitable[Any],
    exc: type[BaseException] = AddressSpaceError,
) -> BaseException:
    """Await ``aw``: it must fail with ``err`` and change nothing."""
    before = snapshot(asp)
    with pytest.raises(exc) as info:
        await aw
    assert isinstance(info.value, AddressSpaceError)
    assert info.value.errno == err, info.value
    assert snapshot(asp) == before
    return info.value


@dataclasses.dataclass
class World:
    asp: AddressSpace
    sm: SharedMemory
    mf: MemoryFile


@asynccontextmanager
async def world(mf: MemoryFile, limits: Limits | None = None) -> AsyncIterator[World]:
    sm = SharedMemory(mf, SM_SIZE, name="/shm/world")
    await sm.write(0, SM_DATA)
    asp = AddressSpace(mf, layout=LAYOUT, limits=limits)
    try:
        assert await asp.mmap(anon(2 * P, addr=A, fixed=True)) == A
        assert await asp.mmap(anon(P, addr=B, fixed=True)) == B
        assert await asp.mmap(anon(P, addr=C, fixed=True, perms=R, max_perms=R)) == C
        assert await asp.mmap(file_opts(sm, 2 * P, addr=S, fixed=True)) == S
        got = await asp.mmap(anon(P, addr=L, fixed=True, mlock_mode=MLockMode.EAGER))
        assert got == L
        assert await asp.mmap(anon(3 * P, addr=G, fixed=True, grows_down=True)) == G
        assert await asp.mmap(anon(P, addr=N, fixed=True, perms=NONE)) == N
        await asp.copy_out(A, b"a" * (2 * P))
        await asp.copy_out(B, b"b" * P)
        assert vmas(asp) == WORLD_VMAS
        asp.check_invariants()
        yield World(asp, sm, mf)
        asp.check_invariants()
    finally:
        await asp.aclose()
        assert not sm.is_mapped()
        await sm.dec_ref()


WORLD_VMAS = [
    (A, A + 2 * P, "rw-p"),
    (B, B + P, "rw-p"),
    (C, C + P, "r--p"),
    (S, S + 2 * P, "rw-s"),
    (L, L + P, "rw-p"),
    (G, G + 3 * P, "rw-p"),
    (N, N + P, "---p"),
]

Call = Callable[[World], Awaitable[Any]]


# ==========================================================================
# mmap


MMAP_ERRORS: list[Any] = [
    pytest.param(
        lambda w: anon(2 * P, addr=TOP - P, fixed=True, no_replace=True),
        errno.ENOMEM,
        id="no-replace-past-max",
    ),
    # Checked in gVisor's order; the rows with two faults show which wins.
    pytest.param(lambda w: anon(0), errno.EINVAL, id="length-0"),
    pytest.param(
        lambda w: anon(0, perms=RW, max_perms=R),
        errno.EINVAL,
        id="length-0-before-eacces",
    ),
    pytest.param(lambda w: anon(U64 - 1), errno.ENOMEM, id="length-rounding-overflows"),
    pytest.param(
        lambda w: anon(U64 - 1, perms=RW, max_perms=R),
        errno.ENOMEM,
        id="overflow-before-eacces",
    ),
    pytest.param(
        lambda w: file_opts(w.sm, P, offset=1), errno.EINVAL, id="file-offset-unaligned"
    ),
    pytest.param(
        lambda w: file_opts(w.sm, P, offset=U64 - 1),
        errno.EINVAL,
        id="unaligned-before-eoverflow",
    ),
    pytest.param(
        lambda w: file_opts(w.sm, 2 * P, offset=U64 - P),
        errno.EOVERFLOW,
        id="offset-overflow",
    ),
    pytest.param(
        lambda w: file_opts(w.sm, 2 * P, offset=U64 - P, addr=FREE + 1, fixed=True),
        errno.EOVERFLOW,
        id="eoverflow-before-fixed-unaligned",
    ),
    pytest.param(
        lambda w: anon(addr=FREE + 1, fixed=True), errno.EINVAL, id="fixed-unaligned"
    ),
    pytest.param(
        lambda w: anon(addr=FREE + 1, fixed=True, perms=RW, max_perms=R),
        errno.EINVAL,
        id="fixed-unaligned-before-eacces",
    ),
    pytest.param(
        lambda w: anon(perms=RW, max_perms=R), errno.EACCES, id="eacces-write"
    ),
    pytest.param(lambda w: anon(perms=RX, max_perms=R), errno.EACCES, id="eacces-exec"),
    pytest.param(
        lambda w: anon(perms=W, max_perms=R), errno.EACCES, id="eacces-write-only"
    ),
    pytest.param(
        lambda w: file_opts(w.sm, P, perms=RW, max_perms=R),
        errno.EACCES,
        id="eacces-file",
    ),
    pytest.param(
        lambda w: anon(perms=RW, max_perms=R, unmap=True),
        errno.EACCES,
        id="eacces-before-unmap",
    ),
    pytest.param(lambda w: anon(unmap=True), errno.EINVAL, id="unmap-without-fixed"),
    pytest.param(
        lambda w: anon(no_replace=True), errno.EINVAL, id="no-replace-without-fixed"
    ),
    pytest.param(
        lambda w: anon(addr=FREE, fixed=True, unmap=True, no_replace=True),
        errno.EINVAL,
        id="no-replace-with-unmap",
    ),
    pytest.param(
        lambda w: file_opts(w.sm, P, grows_down=True),
        errno.EINVAL,
        id="grows-down-file",
    ),
    pytest.param(
        lambda w: anon(addr=A, fixed=True), errno.ENOMEM, id="fixed-over-mapping"
    ),
    pytest.param(
        lambda w: anon(2 * P, addr=A + P, fixed=True),
        errno.ENOMEM,
        id="fixed-partly-over-mapping",
    ),
    pytest.param(
        lambda w: anon(3 * P, addr=HOLE - P, fixed=True),
        errno.ENOMEM,
        id="fixed-over-hole-and-two",
    ),
    pytest.param(
        lambda w: anon(addr=A, fixed=True, no_replace=True),
        errno.EEXIST,
        id="no-replace-over",
    ),
    pytest.param(
        lambda w: anon(2 * P, addr=HOLE, fixed=True, no_replace=True),
        errno.EEXIST,
        id="no-replace-partly-over",
    ),
    pytest.param(lambda w: anon(addr=TOP, fixed=True), errno.ENOMEM, id="fixed-at-max"),
    pytest.param(
        lambda w: anon(2 * P, addr=TOP - P, fixed=True),
        errno.ENOMEM,
        id="fixed-past-max",
    ),
    pytest.param(
        lambda w: anon(2 * P, addr=TOP - P, fixed=True, unmap=True),
        errno.ENOMEM,
        id="fixed-unmap-past-max",
    ),
    pytest.param(
        lambda w: anon(addr=0, fixed=True), errno.ENOMEM, id="fixed-below-min"
    ),
    pytest.param(
        lambda w: anon(addr=0x1000, fixed=True, unmap=True),
        errno.ENOMEM,
        id="fixed-unmap-below-min",
    ),
    pytest.param(
        lambda w: anon(addr=G - P, fixed=True), errno.ENOMEM, id="fixed-in-stack-guard"
    ),
    pytest.param(lambda w: anon(TOP), errno.ENOMEM, id="no-room"),
    pytest.param(
        lambda w: anon(TOP - 0x10000, map_32bit=False), errno.ENOMEM, id="no-room-2"
    ),
    pytest.param(
        lambda w: anon(0x4000_0000 + P, map_32bit=True),
        errno.ENOMEM,
        id="no-room-32bit",
    ),
    pytest.param(
        lambda w: anon(P, addr=A, fixed=True, no_replace=True, perms=RW, max_perms=R),
        errno.EACCES,
        id="eacces-before-eexist",
    ),
]


@pytest.mark.parametrize(("make", "err"), MMAP_ERRORS)
async def test_mmap_errors(
    mf: MemoryFile, make: Callable[[World], MMapOpts], err: int
) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, w.asp.mmap(make(w)))


async def test_mmap_anonymous_offset_is_ignored(mf: MemoryFile) -> None:
    async with world(mf) as w:
        addr = await w.asp.mmap(anon(P, offset=1, addr=FREE, fixed=True))
        assert addr == FREE
        assert w.asp.maps().splitlines()[-2].split()[2] == "00000000"
        addr = await w.asp.mmap(anon(P, offset=U64 - P, addr=FREE + P, fixed=True))
        assert addr == FREE + P


async def test_mmap_unaligned_length_rounds_up(mf: MemoryFile) -> None:
    async with world(mf) as w:
        addr = await w.asp.mmap(anon(1, addr=FREE, fixed=True))
        assert vmas(w.asp)[-1] == (FREE, FREE + P, "rw-p")
        assert addr == FREE


async def test_mmap_fixed_unmap_replaces(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        # Replace the second page of A and the hole with a read-only mapping.
        assert (
            await asp.mmap(anon(2 * P, addr=A + P, fixed=True, unmap=True, perms=R))
            == A + P
        )
        assert vmas(asp)[:3] == [
            (A, A + P, "rw-p"),
            (A + P, B, "r--p"),
            (B, B + P, "rw-p"),
        ]
        assert await asp.copy_in(A + P, 4) == bytes(4)
        # no_replace may use a free range in the stack guard.
        assert await asp.mmap(anon(addr=G - P, fixed=True, no_replace=True)) == G - P


async def test_mmap_unmap_happens_before_add_mapping(mf: MemoryFile) -> None:
    """gVisor unmaps the old range before AddMapping: a failure leaves it gone."""
    async with world(mf) as w:
        asp = w.asp
        failing = FailingAddMapping(w.sm)
        opts = MMapOpts(
            length=2 * P,
            mappable=failing,
            mapping_identity=w.sm,
            addr=A,
            fixed=True,
            unmap=True,
        )
        before = asp.statistics()
        with pytest.raises(RuntimeError, match="add_mapping failed"):
            await asp.mmap(opts)
        assert vmas(asp) == WORLD_VMAS[1:]
        st = asp.statistics()
        assert st.usage_as == before.usage_as - 2 * P
        assert st.rss == before.rss - 2 * P
        asp.check_invariants()
        # Without unmap nothing changes.
        before_s = snapshot(asp)
        with pytest.raises(RuntimeError):
            await asp.mmap(dataclasses.replace(opts, addr=FREE, unmap=False))
        assert snapshot(asp) == before_s


async def test_mmap_rlimit_as(mf: MemoryFile) -> None:
    async with AddressSpace(
        mf, layout=LAYOUT, limits=Limits(address_space=4 * P)
    ) as asp:
        await asp.mmap(anon(2 * P, addr=A, fixed=True))
        await expect_errno(asp, errno.ENOMEM, asp.mmap(anon(3 * P)))
        # Checked after placement: a conflict is reported first.
        await expect_errno(
            asp,
            errno.EEXIST,
            asp.mmap(anon(3 * P, addr=A, fixed=True, no_replace=True)),
        )
        # With unmap, the replaced bytes do not count.
        assert await asp.mmap(anon(3 * P, addr=A, fixed=True, unmap=True)) == A
        assert asp.statistics().usage_as == 3 * P
        await expect_errno(asp, errno.ENOMEM, asp.mmap(anon(2 * P)))
        await asp.mmap(anon(P))
        assert asp.statistics().usage_as == 4 * P
        await expect_errno(asp, errno.ENOMEM, asp.mmap(anon(P)))
        await expect_errno(
            asp, errno.ENOMEM, asp.mmap(MMapOpts(length=P, private=False))
        )


@pytest.mark.parametrize(
    ("limits", "opts", "err"),
    [
        pytest.param(
            Limits(memlock=0),
            anon(P, mlock_mode=MLockMode.EAGER),
            errno.EPERM,
            id="zero-eager",
        ),
        pytest.param(
            Limits(memlock=0),
            anon(P, mlock_mode=MLockMode.LAZY),
            errno.EPERM,
            id="zero-lazy",
        ),
        pytest.param(
            Limits(memlock=2 * P),
            anon(3 * P, mlock_mode=MLockMode.EAGER),
            errno.EAGAIN,
            id="exceeded",
        ),
        pytest.param(
            Limits(address_space=P, memlock=0),
            anon(2 * P, mlock_mode=MLockMode.EAGER),
            errno.ENOMEM,
            id="rlimit-as-first",
        ),
        pytest.param(
            Limits(address_space=P, memlock=0),
            anon(P, mlock_mode=MLockMode.EAGER),
            errno.EPERM,
            id="then-memlock",
        ),
    ],
)
async def test_mmap_memlock_limits(
    mf: MemoryFile, limits: Limits, opts: MMapOpts, err: int
) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=limits) as asp:
        await expect_errno(asp, err, asp.mmap(opts))


async def test_mmap_memlock_accounting(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=2 * P)) as asp:
        # Unlocked mappings are not limited.
        await asp.mmap(anon(8 * P, addr=FREE, fixed=True))
        a = await asp.mmap(anon(2 * P, addr=A, fixed=True, mlock_mode=MLockMode.EAGER))
        st = asp.statistics()
        assert st.locked_as == 2 * P
        await expect_errno(
            asp, errno.EAGAIN, asp.mmap(anon(P, mlock_mode=MLockMode.LAZY))
        )
        # Replacing locked memory with locked memory: the replaced bytes do not count.
        await asp.mmap(
            anon(2 * P, addr=a, fixed=True, unmap=True, mlock_mode=MLockMode.LAZY)
        )
        assert asp.statistics().locked_as == 2 * P
        await asp.munmap(a, P)
        assert asp.statistics().locked_as == P
        await asp.mmap(anon(P, mlock_mode=MLockMode.EAGER))
        assert asp.statistics().locked_as == 2 * P
        asp.check_invariants()


async def test_mlockall_future_with_zero_memlock_fails_later_mmaps(
    mf: MemoryFile,
) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=0)) as asp:
        # future only: no limit check now (gVisor checks only for current)...
        await asp.mlockall(MLockMode.EAGER, current=False, future=True)
        # ...but every later mapping is locked, so it fails.
        await expect_errno(asp, errno.EPERM, asp.mmap(anon(P)))
        await asp.munlockall()
        await asp.mmap(anon(P))
        assert asp.statistics().locked_as == 0


async def test_mmap_eager_lock_populates(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        big = HUGE_PAGE_SIZE + P
        await asp.mmap(anon(big))
        assert asp.statistics().rss == 0
        await asp.mmap(anon(big, mlock_mode=MLockMode.EAGER))
        assert asp.statistics().rss == big
        await asp.mmap(anon(big, mlock_mode=MLockMode.LAZY))
        assert asp.statistics().rss == big
        await asp.mmap(anon(big, precommit=True))
        assert asp.statistics().rss == 2 * big
        # Without permissions nothing is populated.
        await asp.mmap(anon(P, perms=NONE))
        assert asp.statistics().rss == 2 * big
        asp.check_invariants()


# ==========================================================================
# munmap


MUNMAP_ERRORS: list[Any] = [
    pytest.param(A + 1, P, id="unaligned"),
    pytest.param(A, 0, id="length-0"),
    pytest.param(A + 1, 0, id="unaligned-length-0"),
    pytest.param(FREE, 0, id="length-0-unmapped"),
    pytest.param(A, U64 - 1, id="length-rounding-overflows"),
    pytest.param(U64 - P, 2 * P, id="end-overflows"),
]


@pytest.mark.parametrize(("addr", "length"), MUNMAP_ERRORS)
async def test_munmap_errors(mf: MemoryFile, addr: int, length: int) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, errno.EINVAL, w.asp.munmap(addr, length))


async def test_munmap_holes_are_not_errors(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        before = snapshot(asp)
        await asp.munmap(HOLE, P)
        await asp.munmap(FREE, 1 << 20)
        await asp.munmap(TOP, P)  # beyond the layout
        assert snapshot(asp) == before
        # Partly mapped: the mapped part goes; an unaligned length rounds up.
        await asp.munmap(A + P, P + 1)  # A's second page and the hole
        assert vmas(asp) == [(A, A + P, "rw-p"), *WORLD_VMAS[1:]]
        asp.check_invariants()


# ==========================================================================
# mremap


MREMAP_ERRORS: list[Any] = [
    pytest.param(
        lambda w: w.asp.mremap(L, P, 2 * P), errno.ENOMEM, id="grow-into-stack-guard"
    ),
    pytest.param(
        lambda w: w.asp.mremap(A + 1, P, 2 * P), errno.EINVAL, id="old-unaligned"
    ),
    pytest.param(lambda w: w.asp.mremap(A, P, 0), errno.EINVAL, id="new-size-0"),
    pytest.param(
        lambda w: w.asp.mremap(A, P, U64 - 1), errno.EINVAL, id="new-size-overflows"
    ),
    pytest.param(
        lambda w: w.asp.mremap(U64 - P, 2 * P, P),
        errno.EINVAL,
        id="old-range-overflows",
    ),
    pytest.param(
        lambda w: w.asp.mremap(HOLE, P, 2 * P), errno.EFAULT, id="no-vma-no-move"
    ),
    pytest.param(
        lambda w: w.asp.mremap(HOLE, P, 2 * P, move=MAY_MOVE),
        errno.EFAULT,
        id="no-vma-may-move",
    ),
    pytest.param(
        lambda w: w.asp.mremap(HOLE, P, 2 * P, move=MUST_MOVE, new_addr=FREE),
        errno.EFAULT,
        id="no-vma-must-move",
    ),
    pytest.param(
        lambda w: w.asp.mremap(HOLE, P, P, move=MUST_MOVE, new_addr=FREE + 1),
        errno.EFAULT,
        id="efault-before-new-addr-checks",
    ),
    pytest.param(
        lambda w: w.asp.mremap(FREE, 0, P, move=MAY_MOVE),
        errno.EFAULT,
        id="copy-of-nothing",
    ),
    pytest.param(
        lambda w: w.asp.mremap(S, 0, P), errno.ENOMEM, id="no-move-old-size-0"
    ),
    pytest.param(
        lambda w: w.asp.mremap(B, P, 2 * P), errno.ENOMEM, id="no-move-grow-blocked"
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, P, 2 * P), errno.ENOMEM, id="no-move-grow-inside-vma"
    ),
    pytest.param(
        lambda w: w.asp.mremap(B, 2 * P, 3 * P), errno.EFAULT, id="grow-spans-two-vmas"
    ),
    pytest.param(
        lambda w: w.asp.mremap(B, 2 * P, 3 * P, move=MAY_MOVE),
        errno.EFAULT,
        id="may-move-spans-two",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, TOP, move=MAY_MOVE),
        errno.ENOMEM,
        id="may-move-no-room",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=FREE + 1),
        errno.EINVAL,
        id="must-move-new-unaligned",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=A + P),
        errno.EINVAL,
        id="must-move-overlap-after",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=A - P),
        errno.EINVAL,
        id="must-move-overlap-before",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=A),
        errno.EINVAL,
        id="must-move-same-place",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=U64 - P),
        errno.EINVAL,
        id="must-move-new-overflows",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=TOP - P),
        errno.ENOMEM,
        id="must-move-past-max",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 2 * P, 2 * P, move=MUST_MOVE, new_addr=0),
        errno.ENOMEM,
        id="must-move-below-min",
    ),
    # Linux refuses to copy private memory (old_size 0), whatever the move.
    pytest.param(
        lambda w: w.asp.mremap(A, 0, P), errno.EINVAL, id="private-old-size-0"
    ),
    pytest.param(
        lambda w: w.asp.mremap(A + P, 0, 2 * P, move=MAY_MOVE),
        errno.EINVAL,
        id="may-move-private-old-size-0",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 0, P, move=MUST_MOVE, new_addr=FREE),
        errno.EINVAL,
        id="must-move-private-old-size-0",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A, 0, P, move=MUST_MOVE, new_addr=A),
        errno.EINVAL,
        id="must-move-private-old-size-0-same-place",
    ),
    # A failing MUST_MOVE has unmapped neither its destination nor the
    # old range's tail (expect_errno checks that nothing changed).
    pytest.param(
        lambda w: w.asp.mremap(B, 2 * P, 2 * P, move=MUST_MOVE, new_addr=A),
        errno.EFAULT,
        id="must-move-spans-two-keeps-destination",
    ),
    pytest.param(
        lambda w: w.asp.mremap(A + P, 3 * P, 2 * P, move=MUST_MOVE, new_addr=S),
        errno.EFAULT,
        id="must-move-shrink-spans-two-keeps-destination-and-tail",
    ),
]


@pytest.mark.parametrize(("call", "err"), MREMAP_ERRORS)
async def test_mremap_errors(mf: MemoryFile, call: Call, err: int) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, call(w))


# The move matrix of §6.6, on a 2-page shared file mapping M at A (offsets
# [0, 2P)), with free space after it and at FREE.
#   result: "ENOMEM", or (where, lines) with where "old"/"new"/"free" and the
#   vmas expected as (start-key, length, offset).
MATRIX: list[Any] = [
    # old_size = 0: a copy of the mapping (same offsets), or ENOMEM.
    pytest.param(NO_MOVE, 0, P, "ENOMEM", id="no-move-0"),
    pytest.param(
        MAY_MOVE, 0, P, ("search", [("old", 2 * P, 0), ("new", P, 0)]), id="may-move-0"
    ),
    pytest.param(
        MUST_MOVE,
        0,
        3 * P,
        ("free", [("old", 2 * P, 0), ("new", 3 * P, 0)]),
        id="must-move-0",
    ),
    # old < new
    pytest.param(
        NO_MOVE, 2 * P, 3 * P, ("old", [("old", 3 * P, 0)]), id="no-move-grow"
    ),
    pytest.param(
        MAY_MOVE, 2 * P, 3 * P, ("old", [("old", 3 * P, 0)]), id="may-move-grow"
    ),
    pytest.param(
        MUST_MOVE, 2 * P, 3 * P, ("free", [("new", 3 * P, 0)]), id="must-move-grow"
    ),
    # old = new
    pytest.param(
        NO_MOVE, 2 * P, 2 * P, ("old", [("old", 2 * P, 0)]), id="no-move-same"
    ),
    pytest.param(
        MAY_MOVE, 2 * P, 2 * P, ("old", [("old", 2 * P, 0)]), id="may-move-same"
    ),
    pytest.param(
        MUST_MOVE, 2 * P, 2 * P, ("free", [("new", 2 * P, 0)]), id="must-move-same"
    ),
    # old > new
    pytest.param(NO_MOVE, 2 * P, P, ("old", [("old", P, 0)]), id="no-move-shrink"),
    pytest.param(MAY_MOVE, 2 * P, P, ("old", [("old", P, 0)]), id="may-move-shrink"),
    pytest.param(MUST_MOVE, 2 * P, P, ("free", [("new", P, 0)]), id="must-move-shrink"),
]


@pytest.mark.parametrize(("move", "old_size", "new_size", "expected"), MATRIX)
async def test_mremap_matrix(
    mf: MemoryFile, move: MRemapMove, old_size: int, new_size: int, expected: Any
) -> None:
    sm = SharedMemory(mf, SM_SIZE, name="/m")
    await sm.write(0, SM_DATA)
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        assert await asp.mmap(file_opts(sm, 2 * P, addr=A, fixed=True)) == A
        assert await asp.copy_in(A, 2 * P) == SM_DATA[: 2 * P]
        if expected == "ENOMEM":
            await expect_errno(
                asp,
                errno.ENOMEM,
                asp.mremap(A, old_size, new_size, move=move, new_addr=FREE),
            )
        else:
            where, want = expected
            got = await asp.mremap(A, old_size, new_size, move=move, new_addr=FREE)
            if where == "old":
                assert got == A
            elif where == "free":
                assert got == FREE
            else:
                assert got not in (A, FREE)
                assert not A <= got < A + 2 * P
            places = {"old": A, "new": got}
            expect = sorted((places[k], places[k] + n, off) for k, n, off in want)
            actual = []
            for line in asp.maps().splitlines()[:-1]:
                span, perms, off_s = line.split()[:3]
                start, end = (int(x, 16) for x in span.split("-"))
                assert perms == "rw-s"
                actual.append((start, end, int(off_s, 16)))
            assert actual == expect
            # Every mapping shows the file at its offsets.
            for start, end, off in actual:
                assert (
                    await asp.copy_in(start, end - start)
                    == SM_DATA[off : off + end - start]
                )
            # Shared: a write through the result is seen by the file.
            await asp.copy_out(got, b"W")
            assert await sm.read(0, 1) == b"W"
            st = asp.statistics()
            assert st.usage_as == sum(e - s for s, e, _ in actual)
        asp.check_invariants()
    assert not sm.is_mapped()
    await sm.dec_ref()


@pytest.mark.parametrize(
    ("move", "new_addr"),
    [(MAY_MOVE, 0), (MUST_MOVE, FREE)],
    ids=["may-move-blocked", "must-move"],
)
async def test_mremap_move_carries_private_pages(
    mf: MemoryFile, move: MRemapMove, new_addr: int
) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(2 * P, addr=A, fixed=True))
        await asp.mmap(anon(P, addr=A + 2 * P, fixed=True, perms=R))  # blocks growth
        await asp.copy_out(A, b"x" * P + b"y" * P)
        used = mf.statistics().used_bytes
        rss = asp.statistics().rss
        got = await asp.mremap(A, 2 * P, 3 * P, move=move, new_addr=new_addr)
        assert got != A
        if move is MUST_MOVE:
            assert got == FREE
        # The private data moved with the mapping, without copying.
        assert await asp.copy_in(got, 3 * P) == b"x" * P + b"y" * P + bytes(P)
        assert mf.statistics().used_bytes >= used
        assert asp.statistics().rss >= rss
        assert asp.statistics().cow_copies == 0
        assert (A, A + 2 * P, "rw-p") not in vmas(asp)
        with pytest.raises(MemoryFault):
            await asp.copy_in(A, 1)
        assert asp.statistics().usage_as == 4 * P
        asp.check_invariants()


async def test_mremap_shrink_in_place_ignores_what_follows(mf: MemoryFile) -> None:
    """Shrinking unmaps [old + new, old + old_size) whatever is there."""
    async with world(mf) as w:
        asp = w.asp
        assert await asp.mremap(A, 4 * P, P) == A
        # A's second page, the hole and B are gone.
        assert vmas(asp) == [(A, A + P, "rw-p"), *WORLD_VMAS[2:]]
        asp.check_invariants()


async def test_mremap_must_move_replaces_destination(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        assert await asp.mremap(B, P, P, move=MUST_MOVE, new_addr=A) == A
        # B replaced A's first page (and merged with its second); B is gone.
        assert vmas(asp) == [(A, A + 2 * P, "rw-p"), *WORLD_VMAS[2:]]
        assert await asp.copy_in(A, 2 * P) == b"b" * P + b"a" * P
        asp.check_invariants()


async def test_mremap_must_move_shrinking_unmaps_the_tail_beyond_the_mapping(
    mf: MemoryFile,
) -> None:
    """Only the part of the old range that is kept must be one mapping: the
    tail, whatever it covers, is unmapped (as Linux does)."""
    async with world(mf) as w:
        asp = w.asp
        got = await asp.mremap(A + P, 3 * P, P, move=MUST_MOVE, new_addr=FREE)
        assert got == FREE
        # A's second page moved; the hole and B (the tail) are gone.
        assert vmas(asp) == [
            (A, A + P, "rw-p"),
            *WORLD_VMAS[2:],
            (FREE, FREE + P, "rw-p"),
        ]
        assert await asp.copy_in(FREE, P) == b"a" * P
        asp.check_invariants()


async def test_mremap_copy_of_shared_mapping(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        got = await asp.mremap(S + P, 0, P, move=MUST_MOVE, new_addr=FREE)
        assert got == FREE
        assert await asp.copy_in(FREE, P) == SM_DATA[P : 2 * P]
        await asp.copy_out(FREE, b"C")
        assert await asp.copy_in(S + P, 1) == b"C"
        # old_size rounding to 0 (it overflows) also means a copy.
        got = await asp.mremap(S, U64 - 1, P, move=MUST_MOVE, new_addr=FREE + P)
        assert await asp.copy_in(got, 1) == SM_DATA[:1]
        asp.check_invariants()


async def test_mremap_rlimits(mf: MemoryFile) -> None:
    limits = Limits(address_space=4 * P, memlock=2 * P)
    async with AddressSpace(mf, layout=LAYOUT, limits=limits) as asp:
        await asp.mmap(anon(P, addr=A, fixed=True, mlock_mode=MLockMode.EAGER))
        await asp.mmap(anon(P, addr=B, fixed=True))
        # Locked memory may grow up to RLIMIT_MEMLOCK.
        await expect_errno(asp, errno.EAGAIN, asp.mremap(A, P, 3 * P, move=MAY_MOVE))
        assert await asp.mremap(A, P, 2 * P) == A
        assert asp.statistics().locked_as == 2 * P
        # RLIMIT_AS: usage is 3 pages of 4.
        await expect_errno(asp, errno.ENOMEM, asp.mremap(B, P, 3 * P))
        await expect_errno(asp, errno.ENOMEM, asp.mremap(B, P, 3 * P, move=MAY_MOVE))
        await expect_errno(
            asp, errno.ENOMEM, asp.mremap(B, P, 3 * P, move=MUST_MOVE, new_addr=FREE)
        )
        assert await asp.mremap(B, P, 2 * P, move=MAY_MOVE) == B
        assert asp.statistics().usage_as == 4 * P
        asp.check_invariants()


# ==========================================================================
# mprotect


MPROTECT_ERRORS: list[Any] = [
    pytest.param(
        lambda w: w.asp.mprotect(G - 2 * P, P, R, grows_down=True),
        errno.ENOMEM,
        id="grows-down-range-below-stack",
    ),
    pytest.param(
        lambda w: w.asp.mprotect(HOLE, P, R, grows_down=True),
        errno.EINVAL,
        id="grows-down-next-vma-does-not",
    ),
    pytest.param(
        lambda w: w.asp.mprotect(FREE, P, R, grows_down=True),
        errno.ENOMEM,
        id="grows-down-nothing-after",
    ),
    pytest.param(lambda w: w.asp.mprotect(A + 1, P, R), errno.EINVAL, id="unaligned"),
    pytest.param(
        lambda w: w.asp.mprotect(A + 1, 0, R), errno.EINVAL, id="unaligned-length-0"
    ),
    pytest.param(
        lambda w: w.asp.mprotect(A, U64 - 1, R), errno.ENOMEM, id="length-overflows"
    ),
    pytest.param(
        lambda w: w.asp.mprotect(U64 - P, 2 * P, R), errno.ENOMEM, id="end-overflows"
    ),
    pytest.param(
        lambda w: w.asp.mprotect(FREE, P, R), errno.ENOMEM, id="nothing-after"
    ),
    pytest.param(lambda w: w.asp.mprotect(HOLE, P, R), errno.ENOMEM, id="in-hole"),
    pytest.param(
        lambda w: w.asp.mprotect(HOLE, 2 * P, R), errno.ENOMEM, id="starts-in-hole"
    ),
    pytest.param(
        lambda w: w.asp.mprotect(0x10000, P, R), errno.ENOMEM, id="below-everything"
    ),
    pytest.param(
        lambda w: w.asp.mprotect(A, P, R, grows_down=True),
        errno.EINVAL,
        id="grows-down-flag",
    ),
    pytest.param(lambda w: w.asp.mprotect(C, P, RW), errno.EACCES, id="eacces"),
    pytest.param(
        lambda w: w.asp.mprotect(C, P, W), errno.EACCES, id="eacces-write-only"
    ),
    pytest.param(lambda w: w.asp.mprotect(C, P, RX), errno.EACCES, id="eacces-exec"),
    pytest.param(lambda w: w.asp.mprotect(S, 2 * P, RW), None, id="no-change-is-fine"),
]


@pytest.mark.parametrize(("call", "err"), MPROTECT_ERRORS)
async def test_mprotect_errors(mf: MemoryFile, call: Call, err: int | None) -> None:
    async with world(mf) as w:
        if err is None:
            before = snapshot(w.asp)
            await call(w)
            assert snapshot(w.asp) == before
        else:
            await expect_errno(w.asp, err, call(w))


async def test_mprotect_length_0_is_a_no_op_even_unmapped(mf: MemoryFile) -> None:
    async with world(mf) as w:
        before = snapshot(w.asp)
        await w.asp.mprotect(FREE, 0, RW)
        await w.asp.mprotect(HOLE, 0, RW)
        await w.asp.mprotect(A, 0, NONE)
        assert snapshot(w.asp) == before


async def test_mprotect_eacces_after_changing_earlier(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        data_before = asp.statistics().data_as
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(B, 2 * P, ANY)
        assert info.value.errno == errno.EACCES
        expect = list(WORLD_VMAS)
        expect[1] = (B, B + P, "rwxp")
        assert vmas(asp) == expect
        assert asp.statistics().data_as == data_before
        asp.check_invariants()


async def test_mprotect_hole_is_partial(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        data_before = asp.statistics().data_as
        with pytest.raises(AddressSpaceError) as info:
            await asp.mprotect(A, 4 * P, R)  # A, the hole, B
        assert info.value.errno == errno.ENOMEM
        expect = list(WORLD_VMAS)
        expect[0] = (A, A + 2 * P, "r--p")
        assert vmas(asp) == expect
        assert asp.statistics().data_as == data_before - 2 * P
        # The pmas lost write: writing now faults, reading still works.
        with pytest.raises(MemoryFault):
            await asp.copy_out(A, b"z")
        assert await asp.copy_in(A, 1) == b"a"
        asp.check_invariants()


async def test_mprotect_splits_and_remerges(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        data = asp.statistics().data_as
        await asp.mprotect(A + P, P, R)
        assert vmas(asp)[:2] == [(A, A + P, "rw-p"), (A + P, A + 2 * P, "r--p")]
        assert asp.statistics().data_as == data - P
        with pytest.raises(MemoryFault):
            await asp.copy_out(A + P, b"z")
        await asp.copy_out(A, b"z")
        await asp.mprotect(A + P, P, RW)
        assert vmas(asp) == WORLD_VMAS
        await asp.copy_out(A + P, b"z")
        # PROT_NONE, then back.
        await asp.mprotect(A, 2 * P, NONE)
        with pytest.raises(MemoryFault):
            await asp.copy_in(A, 1)
        with pytest.raises(MemoryFault) as info:
            await asp.handle_fault(A, R)
        assert info.value.errno == errno.EPERM
        await asp.mprotect(A, 2 * P, RW)
        assert await asp.copy_in(A, 1) == b"z"
        asp.check_invariants()


async def test_mprotect_grows_down_extends_to_vma_start(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        await asp.mprotect(G + P, P, R, grows_down=True)
        expect = [
            *WORLD_VMAS[:5],
            (G, G + 2 * P, "r--p"),
            (G + 2 * P, G + 3 * P, "rw-p"),
            *WORLD_VMAS[6:],
        ]
        assert vmas(asp) == expect
        # data_as does not count grows-down memory either way.
        asp.check_invariants()


# ==========================================================================
# brk


async def test_brk_table(mf: MemoryFile) -> None:
    heap = 0x300000
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.brk_setup(heap)
        assert await asp.brk(0) == heap  # below the start: EINVAL, unchanged
        assert await asp.brk(heap) == heap
        assert vmas(asp) == []
        assert await asp.brk(heap + 10) == heap + 10
        assert vmas(asp) == [(heap, heap + P, "rw-p")]
        assert asp.maps().splitlines()[0].endswith("[heap]")
        assert asp.statistics().data_as == P
        assert await asp.brk(heap + P) == heap + P  # same page
        assert vmas(asp) == [(heap, heap + P, "rw-p")]
        assert await asp.brk(heap + 3 * P + 1) == heap + 3 * P + 1
        assert vmas(asp) == [(heap, heap + 4 * P, "rw-p")]
        await asp.copy_out(heap, b"h")
        assert await asp.brk(heap + 1) == heap + 1
        assert vmas(asp) == [(heap, heap + P, "rw-p")]
        assert await asp.copy_in(heap, 1) == b"h"
        assert await asp.brk(heap - 1) == heap + 1
        assert await asp.brk(U64 - 1) == heap + 1  # rounding overflows
        # A mapping in the way: the break stays.
        await asp.mmap(anon(P, addr=heap + 2 * P, fixed=True))
        assert await asp.brk(heap + 3 * P) == heap + 1
        assert await asp.brk(heap + 2 * P) == heap + 2 * P
        # The heap is named: it does not merge with the anonymous mapping.
        assert vmas(asp) == [
            (heap, heap + 2 * P, "rw-p"),
            (heap + 2 * P, heap + 3 * P, "rw-p"),
        ]
        asp.check_invariants()
        # brk_setup unmaps the old heap.
        await asp.brk_setup(0x380000)
        assert vmas(asp) == [(heap + 2 * P, heap + 3 * P, "rw-p")]
        assert await asp.brk(0) == 0x380000
        asp.check_invariants()


@pytest.mark.parametrize(
    ("limit", "target", "ok"),
    [
        (0, P, False),
        (P, P, True),
        (P, P + 1, False),
        (3 * P, 2 * P + 5, True),
    ],
)
async def test_brk_data_limit(
    mf: MemoryFile, limit: int, target: int, ok: bool
) -> None:
    heap = 0x300000
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(data=limit)) as asp:
        await asp.brk_setup(heap)
        before = snapshot(asp)
        got = await asp.brk(heap + target)
        if ok:
            assert got == heap + target
        else:
            assert got == heap
            assert snapshot(asp) == before


async def test_brk_rlimit_as_leaves_break(mf: MemoryFile) -> None:
    heap = 0x300000
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(address_space=P)) as asp:
        await asp.brk_setup(heap)
        assert await asp.brk(heap + P) == heap + P
        assert await asp.brk(heap + P + 1) == heap + P
        assert asp.statistics().usage_as == P


async def test_brk_under_mlockall_future_is_locked(mf: MemoryFile) -> None:
    heap = 0x300000
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mlockall(MLockMode.EAGER, current=False, future=True)
        await asp.brk_setup(heap)
        assert await asp.brk(heap + 2 * P) == heap + 2 * P
        st = asp.statistics()
        assert st.locked_as == 2 * P
        assert st.rss == 2 * P
        asp.check_invariants()


# ==========================================================================
# mlock / munlock / mlockall / munlockall


MLOCK_ERRORS: list[Any] = [
    pytest.param(lambda w: w.asp.mlock(U64 - P, 2 * P), errno.EINVAL, id="overflow"),
    pytest.param(
        lambda w: w.asp.mlock(U64 - 1, 2), errno.EINVAL, id="overflow-unaligned"
    ),
    pytest.param(lambda w: w.asp.mlock(HOLE, P), errno.ENOMEM, id="hole"),
    pytest.param(lambda w: w.asp.mlock(FREE, P), errno.ENOMEM, id="nothing"),
    pytest.param(lambda w: w.asp.munlock(HOLE, P), errno.ENOMEM, id="munlock-hole"),
    pytest.param(
        lambda w: w.asp.munlock(U64 - P, 2 * P), errno.EINVAL, id="munlock-overflow"
    ),
]


@pytest.mark.parametrize(("call", "err"), MLOCK_ERRORS)
async def test_mlock_errors(mf: MemoryFile, call: Call, err: int) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, call(w))


async def test_mlock_length_0_and_unaligned(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        before = snapshot(asp)
        await asp.mlock(A, 0)
        await asp.mlock(FREE, 0)
        # A length that overflows when rounded is silently 0.
        await asp.mlock(0, U64 - 1)
        assert snapshot(asp) == before
        # An unaligned address widens to whole pages.
        locked = asp.statistics().locked_as
        await asp.mlock(A + 5, 1)
        assert asp.statistics().locked_as == locked + P
        assert asp.statistics().vmas == before[1].vmas + 1  # A split
        await asp.mlock(A + P - 1, 2)  # touches both pages of A
        assert asp.statistics().locked_as == locked + 2 * P
        assert asp.statistics().vmas == before[1].vmas
        await asp.munlock(A, 2 * P)
        assert snapshot(asp) == before


async def test_mlock_hole_is_partial(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        locked = asp.statistics().locked_as
        with pytest.raises(AddressSpaceError) as info:
            await asp.mlock(A, 4 * P)  # A, hole, B
        assert info.value.errno == errno.ENOMEM
        assert asp.statistics().locked_as == locked + 2 * P
        assert vmas(asp) == WORLD_VMAS
        asp.check_invariants()
        # munlock is partial the same way.
        with pytest.raises(AddressSpaceError) as info:
            await asp.munlock(A, 4 * P)
        assert info.value.errno == errno.ENOMEM
        assert asp.statistics().locked_as == locked


async def test_mlock_eager_without_permissions(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        locked = asp.statistics().locked_as
        with pytest.raises(AddressSpaceError) as info:
            await asp.mlock(N, P, MLockMode.EAGER)
        assert info.value.errno == errno.ENOMEM
        # The mode was applied before populating failed.
        assert asp.statistics().locked_as == locked + P
        asp.check_invariants()
        # Lazily it is fine.
        await asp.munlock(N, P)
        await asp.mlock(N, P, MLockMode.LAZY)
        assert asp.statistics().locked_as == locked + P


async def test_mlock_populates_eagerly_not_lazily(mf: MemoryFile) -> None:
    big = HUGE_PAGE_SIZE + P
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        a = await asp.mmap(anon(big))
        b = await asp.mmap(anon(big))
        await asp.mlock(a, big, MLockMode.LAZY)
        st = asp.statistics()
        assert (st.locked_as, st.rss) == (big, 0)
        await asp.mlock(b, big)  # EAGER by default
        st = asp.statistics()
        assert (st.locked_as, st.rss) == (2 * big, big)
        await asp.munlock(a, 2 * big)
        st = asp.statistics()
        assert (st.locked_as, st.rss) == (0, big)
        asp.check_invariants()


@pytest.mark.parametrize(
    ("limit", "length", "err"),
    [
        (0, P, errno.EPERM),
        (0, 0, errno.EPERM),  # the limit is checked before the length
        (P, 2 * P, errno.ENOMEM),
        (2 * P, 3 * P, errno.ENOMEM),  # 1 page already locked
    ],
)
async def test_mlock_memlock_limit(
    mf: MemoryFile, limit: int, length: int, err: int
) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=limit)) as asp:
        await asp.mmap(anon(4 * P, addr=A, fixed=True))
        if limit:
            await asp.mlock(A + 3 * P, P)
        await expect_errno(asp, err, asp.mlock(A, length))
        # Unlocking is never limited.
        await asp.munlock(A, 4 * P)
        assert asp.statistics().locked_as == 0


async def test_mlock_memlock_counts_already_locked_once(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=2 * P)) as asp:
        await asp.mmap(anon(4 * P, addr=A, fixed=True))
        await asp.mlock(A, 2 * P)
        await asp.mlock(A, 2 * P)  # relocking the same pages is within the limit
        await asp.mlock(A + P, P, MLockMode.LAZY)
        assert asp.statistics().locked_as == 2 * P
        await expect_errno(asp, errno.ENOMEM, asp.mlock(A + P, 2 * P))


async def test_mlockall_errors(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        await expect_errno(
            asp,
            errno.EINVAL,
            asp.mlockall(MLockMode.EAGER, current=False, future=False),
        )
        await expect_errno(
            asp, errno.EINVAL, asp.mlockall(MLockMode.NONE, current=False, future=False)
        )
    for limit, err in ((0, errno.EPERM), (P, errno.ENOMEM)):
        async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=limit)) as asp:
            await asp.mmap(anon(2 * P))
            await expect_errno(asp, err, asp.mlockall(MLockMode.EAGER))
            await expect_errno(asp, err, asp.mlockall(MLockMode.LAZY, future=True))
            # Unlocking all is never limited.
            await asp.munlockall()
            await asp.mlockall(MLockMode.NONE)


async def test_mlockall_current_and_future(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        await asp.mlockall(MLockMode.LAZY)
        st = asp.statistics()
        assert st.locked_as == st.usage_as
        # Not future: a new mapping is not locked.
        await asp.mmap(anon(P, addr=FREE, fixed=True))
        assert asp.statistics().locked_as == st.usage_as
        await asp.mlockall(MLockMode.EAGER, current=False, future=True)
        await asp.mmap(anon(P, addr=FREE + 2 * P, fixed=True))
        assert asp.statistics().locked_as == st.usage_as + P
        await asp.munlockall()
        assert asp.statistics().locked_as == 0
        await asp.mmap(anon(P, addr=FREE + 4 * P, fixed=True))
        assert asp.statistics().locked_as == 0
        asp.check_invariants()


# ==========================================================================
# msync


MSYNC_ERRORS: list[Any] = [
    pytest.param(lambda w: w.asp.msync(A + 1, P), errno.EINVAL, id="unaligned"),
    pytest.param(
        lambda w: w.asp.msync(A + 1, 0), errno.EINVAL, id="unaligned-length-0"
    ),
    pytest.param(
        lambda w: w.asp.msync(A, U64 - 1), errno.ENOMEM, id="length-overflows"
    ),
    pytest.param(
        lambda w: w.asp.msync(U64 - P, 2 * P), errno.ENOMEM, id="end-overflows"
    ),
    pytest.param(lambda w: w.asp.msync(FREE, P), errno.ENOMEM, id="nothing-after"),
    pytest.param(lambda w: w.asp.msync(HOLE, P), errno.ENOMEM, id="in-hole"),
    pytest.param(lambda w: w.asp.msync(A, 4 * P), errno.ENOMEM, id="hole-inside"),
    pytest.param(
        lambda w: w.asp.msync(L, P, invalidate=True),
        errno.EBUSY,
        id="invalidate-locked",
    ),
    pytest.param(
        lambda w: w.asp.msync(S, L + P - S, invalidate=True),
        errno.EBUSY,
        id="invalidate-reaches-locked",
    ),
]


@pytest.mark.parametrize(("call", "err"), MSYNC_ERRORS)
async def test_msync_errors(mf: MemoryFile, call: Call, err: int) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, call(w))


async def test_msync_ok_cases(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        before = snapshot(asp)
        await asp.msync(FREE, 0)
        await asp.msync(A, 2 * P)
        await asp.msync(A, 2 * P, invalidate=True)
        await asp.msync(L, P)  # locked without invalidate is fine
        await asp.msync(B, 2 * P - 1)  # rounds up to B and C
        assert snapshot(asp) == before


async def test_msync_calls_identity_for_shared_file_mappings(mf: MemoryFile) -> None:
    sm = SharedMemory(mf, 8 * P)
    ident = RecordingIdentity()
    async with AddressSpace(mf, layout=LAYOUT) as asp:

        def opts(addr: int, offset: int, private: bool = False) -> MMapOpts:
            return MMapOpts(
                length=2 * P,
                mappable=sm,
                mapping_identity=ident,
                offset=offset,
                addr=addr,
                fixed=True,
                private=private,
            )

        await asp.mmap(opts(A, 2 * P))
        await asp.mmap(opts(A + 3 * P, 6 * P))  # after a one-page hole
        await asp.mmap(opts(FREE, 0, private=True))
        await asp.msync(A + P, P)
        assert ident.synced == [(3 * P, 4 * P)]
        ident.synced.clear()
        # A hole: the mapped parts are synced, then ENOMEM.
        with pytest.raises(AddressSpaceError) as info:
            await asp.msync(A, 5 * P)
        assert info.value.errno == errno.ENOMEM
        assert ident.synced == [(2 * P, 4 * P), (6 * P, 8 * P)]
        ident.synced.clear()
        # Private mappings are never synced.
        await asp.msync(FREE, 2 * P)
        assert ident.synced == []
        assert ident.refs == 4
        asp.check_invariants()
    assert ident.refs == 1
    await sm.dec_ref()


# ==========================================================================
# madvise


MADVISE_ERRORS: list[Any] = [
    pytest.param(
        lambda w: w.asp.madvise(A + 1, P, Advice.DONTNEED), errno.EINVAL, id="unaligned"
    ),
    pytest.param(
        lambda w: w.asp.madvise(A + 1, 0, Advice.DONTNEED),
        errno.EINVAL,
        id="unaligned-0",
    ),
    pytest.param(
        lambda w: w.asp.madvise(A, U64 - 1, Advice.DONTNEED),
        errno.EINVAL,
        id="length-overflows",
    ),
    pytest.param(
        lambda w: w.asp.madvise(U64 - P, 2 * P, Advice.DONTNEED),
        errno.EINVAL,
        id="end-overflows",
    ),
    pytest.param(
        lambda w: w.asp.madvise(FREE, P, Advice.DONTNEED),
        errno.ENOMEM,
        id="nothing-after",
    ),
    pytest.param(
        lambda w: w.asp.madvise(HOLE, P, Advice.DONTNEED), errno.ENOMEM, id="in-hole"
    ),
    pytest.param(
        lambda w: w.asp.madvise(L, P, Advice.DONTNEED), errno.EINVAL, id="locked"
    ),
    pytest.param(
        lambda w: w.asp.madvise(FREE, P, Advice.DONTFORK),
        errno.ENOMEM,
        id="dontfork-nothing",
    ),
    pytest.param(
        lambda w: w.asp.madvise(A + 1, P, Advice.WILLNEED),
        errno.EINVAL,
        id="hint-unaligned",
    ),
]


@pytest.mark.parametrize(("call", "err"), MADVISE_ERRORS)
async def test_madvise_errors(mf: MemoryFile, call: Call, err: int) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, call(w))


async def test_madvise_length_0_and_hints(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        before = snapshot(asp)
        for advice in Advice:
            await asp.madvise(FREE, 0, advice)
            await asp.madvise(A, 0, advice)
        for advice in (
            Advice.NORMAL,
            Advice.RANDOM,
            Advice.SEQUENTIAL,
            Advice.WILLNEED,
        ):
            await asp.madvise(A, 2 * P, advice)
            await asp.madvise(S, 2 * P, advice)
        assert snapshot(asp) == before


async def test_madvise_dontneed_hole_applies_the_rest(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        rss = asp.statistics().rss
        with pytest.raises(AddressSpaceError) as info:
            await asp.madvise(A + P, 3 * P, Advice.DONTNEED)  # A's 2nd page, hole, B
        assert info.value.errno == errno.ENOMEM
        assert asp.statistics().rss == rss - 2 * P
        assert await asp.copy_in(A, 2 * P) == b"a" * P + bytes(P)
        assert await asp.copy_in(B, P) == bytes(P)
        assert vmas(asp) == WORLD_VMAS
        asp.check_invariants()
        # Starting in a hole: the mapped rest is still dropped.
        await asp.copy_out(B, b"b")
        with pytest.raises(AddressSpaceError) as info:
            await asp.madvise(HOLE, 2 * P, Advice.DONTNEED)
        assert info.value.errno == errno.ENOMEM
        assert await asp.copy_in(B, 1) == b"\0"


async def test_madvise_dontneed_stops_at_locked(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        await asp.copy_out(S, b"s")
        st = asp.statistics()
        with pytest.raises(AddressSpaceError) as info:
            await asp.madvise(S, L + P - S, Advice.DONTNEED)  # S, hole, L
        assert info.value.errno == errno.EINVAL
        # S was done before L stopped it: its pmas are gone; L's stay.
        after = asp.statistics()
        assert after.rss < st.rss
        assert after.rss >= P  # L is locked and populated
        # Shared data is not lost: it lives in the file.
        assert await asp.copy_in(S, 1) == b"s"
        assert vmas(asp) == WORLD_VMAS
        asp.check_invariants()


async def test_madvise_dontfork_hole_applies_the_rest(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        with pytest.raises(AddressSpaceError) as info:
            await asp.madvise(A, 4 * P, Advice.DONTFORK)
        assert info.value.errno == errno.ENOMEM
        async with await asp.fork() as child:
            assert vmas(child) == WORLD_VMAS[2:]
            child.check_invariants()
        with pytest.raises(AddressSpaceError):
            await asp.madvise(A, 4 * P, Advice.DOFORK)
        async with await asp.fork() as child:
            assert vmas(child) == WORLD_VMAS
        assert vmas(asp) == WORLD_VMAS


# ==========================================================================
# handle_fault


FAULTS: list[Any] = [
    pytest.param(HOLE, R, errno.EFAULT, id="hole"),
    pytest.param(FREE, R, errno.EFAULT, id="nothing"),
    pytest.param(0, R, errno.EFAULT, id="zero"),
    pytest.param(TOP, R, errno.EFAULT, id="at-max"),
    pytest.param(U64 - 1, R, errno.EFAULT, id="last-address"),
    pytest.param(C, W, errno.EPERM, id="write-read-only"),
    pytest.param(C + 100, RW, errno.EPERM, id="rw-read-only"),
    pytest.param(A, X, errno.EPERM, id="exec-rw"),
    pytest.param(N, R, errno.EPERM, id="prot-none-read"),
    pytest.param(N + P - 1, W, errno.EPERM, id="prot-none-write"),
]


@pytest.mark.parametrize(("addr", "at", "err"), FAULTS)
async def test_handle_fault_errors(
    mf: MemoryFile, addr: int, at: AccessType, err: int
) -> None:
    async with world(mf) as w:
        await expect_errno(w.asp, err, w.asp.handle_fault(addr, at), MemoryFault)


async def test_handle_fault_ok(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        faults = asp.statistics().faults
        for addr, at in [
            (A + 123, RW),
            (C, R),
            (S + P, W),
            (G + 3 * P - 1, RW),
            (A, NONE),
            (N, NONE),
        ]:
            await asp.handle_fault(addr, at)
        assert asp.statistics().faults >= faults + 6
        asp.check_invariants()


async def test_handle_fault_past_end_of_file_is_bus_error(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        await w.sm.truncate(P)
        await asp.handle_fault(S, R)
        with pytest.raises(BusError):
            await asp.handle_fault(S + P, R)
        with pytest.raises((BusError, MemoryFault)) as info:
            await asp.copy_in(S + P - 2, 4)
        exc = info.value
        assert isinstance(exc, (BusError, MemoryFault))
        assert exc.bytes_done == 2
        assert exc.data == SM_DATA[P - 2 : P]
        asp.check_invariants()


async def test_handle_fault_write_breaks_cow(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        addr = await asp.mmap(file_opts(w.sm, P, private=True, addr=FREE, fixed=True))
        await asp.handle_fault(addr, R)
        assert asp.statistics().cow_copies == 0
        await asp.handle_fault(addr, W)
        assert asp.statistics().cow_copies == 1
        await asp.copy_out(addr, b"!")
        assert await w.sm.read(0, 1) == SM_DATA[:1]


# ==========================================================================
# copy_in / copy_out / zero_out


COPY_ERRORS: list[Any] = [
    # (operation, addr, length, bytes_done)
    pytest.param("in", TOP + 1, 0, 0, id="in-past-max-len-0"),
    pytest.param("out", TOP + 1, 0, 0, id="out-past-max-len-0"),
    pytest.param("zero", TOP + 1, 0, 0, id="zero-past-max-len-0"),
    pytest.param("in", TOP - 1, 2, 0, id="in-crosses-max"),
    pytest.param("out", TOP - 1, 2, 0, id="out-crosses-max"),
    pytest.param("zero", TOP, 1, 0, id="zero-at-max"),
    pytest.param("in", U64 - 1, 2, 0, id="in-wraps"),
    pytest.param("in", HOLE, 1, 0, id="in-hole"),
    pytest.param("out", HOLE, 1, 0, id="out-hole"),
    pytest.param("zero", HOLE, 1, 0, id="zero-hole"),
    pytest.param("in", HOLE - 3, 10, 3, id="in-then-hole"),
    pytest.param("out", HOLE - 3, 10, 3, id="out-then-hole"),
    pytest.param("zero", HOLE - 3, 10, 3, id="zero-then-hole"),
    pytest.param("in", A, 4 * P, 2 * P, id="in-A-hole-B"),
    pytest.param("out", B + P - 5, 10, 5, id="out-then-read-only"),
    pytest.param("out", C, 1, 0, id="out-read-only"),
    pytest.param("in", N, 1, 0, id="in-prot-none"),
    pytest.param("zero", N, 1, 0, id="zero-prot-none"),
]


@pytest.mark.parametrize(("op", "addr", "length", "done"), COPY_ERRORS)
async def test_copy_errors(
    mf: MemoryFile, op: str, addr: int, length: int, done: int
) -> None:
    async with world(mf) as w:
        asp = w.asp
        expected = await asp.copy_in(addr, done) if op == "in" and done else b""
        if op == "in":
            aw: Awaitable[Any] = asp.copy_in(addr, length)
        elif op == "out":
            aw = asp.copy_out(addr, b"Q" * length)
        else:
            aw = asp.zero_out(addr, length)
        before_mem = await asp.copy_in(A, 2 * P) + await asp.copy_in(B, P)
        maps, stats = snapshot(asp)
        with pytest.raises(MemoryFault) as info:
            await aw
        assert info.value.errno == errno.EFAULT
        assert info.value.bytes_done == done
        if op == "in":
            assert info.value.data == expected
        assert asp.maps() == maps
        asp.check_invariants()
        # Exactly the first `done` bytes were written.
        after_mem = await asp.copy_in(A, 2 * P) + await asp.copy_in(B, P)
        if op == "in" or done == 0:
            assert after_mem == before_mem
        else:
            fill = b"Q" if op == "out" else b"\0"
            base = A if addr < B else B - 2 * P
            off = addr - base
            want = before_mem[:off] + fill * done + before_mem[off + done :]
            assert after_mem == want
        del stats


@pytest.mark.parametrize(
    ("op", "addr"),
    [
        ("in", TOP),
        ("out", TOP),
        ("zero", TOP),
        ("in", HOLE),
        ("out", HOLE),
        ("zero", FREE),
    ],
)
async def test_copy_zero_length_after_range_check(
    mf: MemoryFile, op: str, addr: int
) -> None:
    async with world(mf) as w:
        asp = w.asp
        before = snapshot(asp)
        if op == "in":
            assert await asp.copy_in(addr, 0) == b""
        elif op == "out":
            assert await asp.copy_out(addr, b"") == 0
        else:
            assert await asp.zero_out(addr, 0) == 0
        assert snapshot(asp) == before


async def test_copy_ignore_permissions_uses_max_perms(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        # PROT_NONE with max ANY: readable and writable when ignoring permissions.
        assert await asp.copy_out(N, b"n", ignore_permissions=True) == 1
        assert await asp.copy_in(N, 1, ignore_permissions=True) == b"n"
        assert await asp.zero_out(N, 1, ignore_permissions=True) == 1
        assert await asp.copy_in(N, 1, ignore_permissions=True) == b"\0"
        # max r--: never writable.
        with pytest.raises(MemoryFault) as info:
            await asp.copy_out(C, b"c", ignore_permissions=True)
        assert info.value.bytes_done == 0
        assert await asp.copy_in(C, 1) == b"\0"
        asp.check_invariants()


async def test_copy_out_to_shared_mapping_reaches_file(mf: MemoryFile) -> None:
    async with world(mf) as w:
        asp = w.asp
        assert await asp.copy_out(S + P - 2, b"WXYZ") == 4
        assert await w.sm.read(P - 2, 4) == b"WXYZ"
        assert await asp.zero_out(S, 3) == 3
        assert await w.sm.read(0, 3) == bytes(3)
        assert await asp.copy_in(S, 2 * P) == await w.sm.read(0, 2 * P)


# ==========================================================================
# Bad input: TypeError/ValueError naming the argument, nothing changed


BAD_INPUT: list[Any] = [
    pytest.param(lambda a: a.mmap("opts"), TypeError, "opts", id="mmap-opts"),
    pytest.param(lambda a: a.munmap(str(A), P), TypeError, "addr", id="munmap-addr"),
    pytest.param(
        lambda a: a.munmap(A, str(P)), TypeError, "length", id="munmap-length"
    ),
    pytest.param(lambda a: a.munmap(float(A), P), TypeError, "addr", id="munmap-float"),
    pytest.param(lambda a: a.munmap(-P, P), ValueError, "addr", id="munmap-negative"),
    pytest.param(lambda a: a.munmap(A, U64), ValueError, "length", id="munmap-too-big"),
    pytest.param(
        lambda a: a.mremap("A", P, P), TypeError, "old_addr", id="mremap-old-addr"
    ),
    pytest.param(
        lambda a: a.mremap(A, None, P), TypeError, "old_size", id="mremap-old-size"
    ),
    pytest.param(
        lambda a: a.mremap(A, P, "P"), TypeError, "new_size", id="mremap-new-size"
    ),
    pytest.param(
        lambda a: a.mremap(A, P, P, move=MUST_MOVE, new_addr="0"),
        TypeError,
        "new_addr",
        id="mremap-new-addr",
    ),
    pytest.param(
        lambda a: a.mremap(A, P, P, move=1), TypeError, "move", id="mremap-move"
    ),
    pytest.param(
        lambda a: a.mprotect("A", P, R), TypeError, "addr", id="mprotect-addr"
    ),
    pytest.param(
        lambda a: a.mprotect(A, P, "r"), TypeError, "perms", id="mprotect-perms"
    ),
    pytest.param(
        lambda a: a.mprotect(A, P, 1), TypeError, "perms", id="mprotect-prot-int"
    ),
    pytest.param(
        lambda a: a.mprotect(A, P, R, grows_down=1),
        TypeError,
        "grows_down",
        id="mprotect-grows-down",
    ),
    pytest.param(lambda a: a.brk("x"), TypeError, "addr", id="brk-addr"),
    pytest.param(lambda a: a.brk(-1), ValueError, "addr", id="brk-negative"),
    pytest.param(lambda a: a.brk_setup(1.5), TypeError, "addr", id="brk-setup-addr"),
    pytest.param(lambda a: a.mlock("A", P), TypeError, "addr", id="mlock-addr"),
    pytest.param(lambda a: a.mlock(A, P, "eager"), TypeError, "mode", id="mlock-mode"),
    pytest.param(lambda a: a.mlock(A, P, 1), TypeError, "mode", id="mlock-mode-int"),
    pytest.param(lambda a: a.munlock(A, "P"), TypeError, "length", id="munlock-length"),
    pytest.param(lambda a: a.mlockall("all"), TypeError, "mode", id="mlockall-mode"),
    pytest.param(
        lambda a: a.mlockall(MLockMode.EAGER, current=1),
        TypeError,
        "current",
        id="mlockall-current",
    ),
    pytest.param(
        lambda a: a.mlockall(MLockMode.EAGER, future="yes"),
        TypeError,
        "future",
        id="mlockall-future",
    ),
    pytest.param(lambda a: a.msync("A", P), TypeError, "addr", id="msync-addr"),
    pytest.param(
        lambda a: a.msync(A, P, invalidate=1),
        TypeError,
        "invalidate",
        id="msync-invalidate",
    ),
    pytest.param(
        lambda a: a.madvise(A, P, 4), TypeError, "advice", id="madvise-advice-int"
    ),
    pytest.param(
        lambda a: a.madvise(A, P, "dontneed"), TypeError, "advice", id="madvise-advice"
    ),
    pytest.param(
        lambda a: a.madvise(b"A", P, Advice.DONTNEED),
        TypeError,
        "addr",
        id="madvise-addr",
    ),
    pytest.param(lambda a: a.handle_fault("A", R), TypeError, "addr", id="fault-addr"),
    pytest.param(lambda a: a.handle_fault(A, "r"), TypeError, "at", id="fault-at"),
    pytest.param(
        lambda a: a.handle_fault(-1, R), ValueError, "addr", id="fault-negative"
    ),
    pytest.param(lambda a: a.copy_in("A", 1), TypeError, "addr", id="copy-in-addr"),
    pytest.param(lambda a: a.copy_in(A, "1"), TypeError, "length", id="copy-in-length"),
    pytest.param(
        lambda a: a.copy_in(A, -1), ValueError, "length", id="copy-in-negative"
    ),
    pytest.param(
        lambda a: a.copy_out("A", b"x"), TypeError, "addr", id="copy-out-addr"
    ),
    pytest.param(
        lambda a: a.copy_out(A, "text"), TypeError, "data", id="copy-out-data"
    ),
    pytest.param(
        lambda a: a.copy_out(-1, b"x"), ValueError, "addr", id="copy-out-negative"
    ),
    pytest.param(
        lambda a: a.zero_out(A, 1.0), TypeError, "length", id="zero-out-length"
    ),
    pytest.param(lambda a: a.zero_out(None, 1), TypeError, "addr", id="zero-out-addr"),
]


@pytest.mark.parametrize(("call", "exc", "name"), BAD_INPUT)
async def test_bad_input(
    mf: MemoryFile,
    call: Callable[[AddressSpace], Awaitable[Any]],
    exc: type[Exception],
    name: str,
) -> None:
    async with world(mf) as w:
        before = snapshot(w.asp)
        mem = await w.asp.copy_in(A, 2 * P)
        with pytest.raises(exc, match=name) as info:
            await call(w.asp)
        assert not isinstance(info.value, AddressSpaceError)
        assert snapshot(w.asp) == before
        assert await w.asp.copy_in(A, 2 * P) == mem


def test_bad_constructor_arguments(mf: MemoryFile) -> None:
    with pytest.raises(TypeError, match="memory_file"):
        AddressSpace("mf")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="layout"):
        AddressSpace(mf, layout={"min_addr": 0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limits"):
        AddressSpace(mf, limits=4096)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="memlock"):
        Limits(memlock="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="address_space"):
        Limits(address_space=-1)
    with pytest.raises(ValueError, match="min_addr"):
        Layout(min_addr=1)


# ==========================================================================
# Closed spaces


CLOSED_CALLS: list[Any] = [
    pytest.param(lambda a: a.mmap(anon()), id="mmap"),
    pytest.param(lambda a: a.munmap(A, P), id="munmap"),
    pytest.param(lambda a: a.mremap(A, P, P), id="mremap"),
    pytest.param(lambda a: a.mprotect(A, P, R), id="mprotect"),
    pytest.param(lambda a: a.brk(0), id="brk"),
    pytest.param(lambda a: a.brk_setup(A), id="brk_setup"),
    pytest.param(lambda a: a.mlock(A, P), id="mlock"),
    pytest.param(lambda a: a.munlock(A, P), id="munlock"),
    pytest.param(lambda a: a.mlockall(MLockMode.EAGER), id="mlockall"),
    pytest.param(lambda a: a.munlockall(), id="munlockall"),
    pytest.param(lambda a: a.msync(A, P), id="msync"),
    pytest.param(lambda a: a.madvise(A, P, Advice.DONTNEED), id="madvise"),
    pytest.param(lambda a: a.handle_fault(A, R), id="handle_fault"),
    pytest.param(lambda a: a.copy_in(A, 1), id="copy_in"),
    pytest.param(lambda a: a.copy_out(A, b"x"), id="copy_out"),
    pytest.param(lambda a: a.zero_out(A, 1), id="zero_out"),
    pytest.param(lambda a: a.fork(), id="fork"),
]


@pytest.mark.parametrize("call", CLOSED_CALLS)
async def test_closed_space_raises(
    mf: MemoryFile, call: Callable[[AddressSpace], Awaitable[Any]]
) -> None:
    asp = AddressSpace(mf, layout=LAYOUT)
    await asp.mmap(anon(2 * P, addr=A, fixed=True))
    await asp.aclose()
    assert asp.closed
    await asp.aclose()  # idempotent
    with pytest.raises(ClosedError):
        await call(asp)
    assert asp.statistics().usage_as == 0
    asp.check_invariants()


async def test_mprotect_grows_down_start_below_the_stack(mf: MemoryFile) -> None:
    """The start moves to the grows-down vma's start, even upwards."""
    async with world(mf) as w:
        asp = w.asp
        await asp.mprotect(G - P, 2 * P, R, grows_down=True)
        expect = [
            *WORLD_VMAS[:5],
            (G, G + P, "r--p"),
            (G + P, G + 3 * P, "rw-p"),
            *WORLD_VMAS[6:],
        ]
        assert vmas(asp) == expect
        asp.check_invariants()


async def test_mremap_must_move_shrink_unmaps_the_tail(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        await asp.mmap(anon(3 * P, addr=A, fixed=True))
        await asp.copy_out(A, b"a" * P + b"b" * P + b"c" * P)
        got = await asp.mremap(A, 3 * P, 2 * P, move=MUST_MOVE, new_addr=FREE)
        assert got == FREE
        assert vmas(asp) == [(FREE, FREE + 2 * P, "rw-p")]
        assert await asp.copy_in(FREE, 2 * P) == b"a" * P + b"b" * P
        st = asp.statistics()
        assert (st.usage_as, st.rss, st.data_as) == (2 * P, 2 * P, 2 * P)
        assert mf.statistics().used_bytes == 2 * P
        asp.check_invariants()


async def test_max_rss_is_a_high_water_mark(mf: MemoryFile) -> None:
    async with AddressSpace(mf, layout=LAYOUT) as asp:
        addr = await asp.mmap(anon(4 * P))
        await asp.madvise(addr, 4 * P, Advice.DONTNEED)
        st = asp.statistics()
        assert (st.rss, st.max_rss) == (0, 4 * P)
        await asp.munmap(addr, 4 * P)
        assert asp.statistics().max_rss == 4 * P


@pytest.mark.parametrize(("limit", "ok"), [(3 * P, True), (3 * P - 1, False)])
async def test_mlockall_limit_is_the_whole_span(
    mf: MemoryFile, limit: int, ok: bool
) -> None:
    async with AddressSpace(mf, layout=LAYOUT, limits=Limits(memlock=limit)) as asp:
        await asp.mmap(anon(P, addr=A, fixed=True))
        await asp.mmap(anon(2 * P, addr=FREE, fixed=True, perms=NONE))
        if ok:
            await asp.mlockall(MLockMode.LAZY)
            assert asp.statistics().locked_as == 3 * P
        else:
            await expect_errno(asp, errno.ENOMEM, asp.mlockall(MLockMode.LAZY))
