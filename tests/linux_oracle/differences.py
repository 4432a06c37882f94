"""The one table of intended differences, and the normalisation it allows.

Every way in which what the real kernel reports may legitimately differ from
what :class:`~aiomemmap.AddressSpace` reports is an entry of
:data:`INTENDED_DIFFERENCES`, with why it exists. The functions below
normalise exactly these, on both sides alike, and nothing else: a difference
that is not in the table is a finding.

Not entries, because they are choices of what is observed rather than
differences: only the window is looked at (maps lines are clipped to it),
and memory is read with the kernel's own copy from user memory (``pwrite``
from the address to a scratch file), which checks permissions as a CPU
access does: a page mapped ``-w-`` or ``--x`` is readable on x86-64, as
:meth:`AccessType.effective` says. ``process_vm_readv`` would check the
mapping's read bit instead, which no guest access does. Writes use
``process_vm_writev``, whose write check is the CPU's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.linux_oracle.ops import Mmap, Mremap, Op
from tests.linux_oracle.window import WINDOW_BASE, WINDOW_SIZE, P

__all__ = [
    "COPY_ON_WRITE_WINDOW",
    "ELSEWHERE",
    "INTENDED_DIFFERENCES",
    "MOVED",
    "IntendedDifference",
    "MapsLine",
    "differ_only_in",
    "explain",
    "largest_gap",
    "normalise_maps",
    "parse_maps",
    "placeable",
]


@dataclass(frozen=True, slots=True)
class IntendedDifference:
    """One way the space may differ from Linux, and what is done about it.

    Attributes:
        name: A short name.
        linux: What Linux does.
        ours: What the space does.
        why: Why the difference is intended.
        normalisation: What the tester does so the two compare equal.
        ends_comparison: The two sides' states differ afterwards, so the
            sequence is compared only up to this step.
    """

    name: str
    linux: str
    ours: str
    why: str
    normalisation: str
    ends_comparison: bool = False


VMA_MERGING = IntendedDifference(
    name="vma merging",
    linux=(
        "merges adjacent private anonymous vmas only if they share an "
        "anon_vma (not after fork, mremap or a separate first fault), and "
        "never merges across a split whose halves were faulted apart"
    ),
    ours=(
        "merges any two adjacent vmas with the same permissions, flags and "
        "contiguous offsets, as gVisor's vmaSetFunctions.Merge does"
    ),
    why=(
        "gVisor keeps no anon_vma; merging is an internal bookkeeping choice "
        "with no effect on what memory holds or allows"
    ),
    normalisation=(
        "adjacent maps lines with the same permissions, private/shared flag "
        "and path, whose offsets continue (or are both 0 for anonymous "
        "private memory), are joined into one line on both sides"
    ),
)

DEVICE_AND_INODE = IntendedDifference(
    name="device and inode numbers",
    linux="shows the memfd's (or /dev/zero's shmem) device and inode",
    ours="shows the Mappable's device_id() and inode_id()",
    why="they number different objects in different namespaces",
    normalisation="the device and inode columns are dropped; paths are compared",
)

KERNEL_PLACEMENT = IntendedDifference(
    name="addresses the kernel chooses",
    linux=(
        "places mmap without an address, with an address hint it cannot "
        "use, and a moving mremap, top-down from mmap_base anywhere in the "
        "process"
    ),
    ours="places them inside its Layout (the window)",
    why=(
        "the Layout is the space's whole world; the real process has other "
        "mappings, so the same search cannot give the same address"
    ),
    normalisation=(
        "such a result is reported as 'elsewhere' (mmap) or 'moved' "
        "(mremap) and the new mapping is removed at once on both sides; a "
        "usable hint, an in-place mremap and MREMAP_FIXED are compared "
        "exactly. When the window has no gap for the mapping, the space's "
        "ENOMEM counts as placed elsewhere (a moving mremap then unmaps the "
        "old range, as the move would have)"
    ),
)

BUS_ERROR = IntendedDifference(
    name="faults past the end of a file",
    linux=(
        "a copy from or to user memory that reaches a page past the end of "
        "a mapped file fails with EFAULT after the bytes before it"
    ),
    ours="raises BusError with the same bytes_done, keeping the cause",
    why=(
        "the space tells a Mappable's failure (SIGBUS for a real access) "
        "from an unmapped or protected page; a syscall's copy reports both "
        "as EFAULT"
    ),
    normalisation="BusError counts as EFAULT, bytes done compared",
)

ERROR_ORDER = IntendedDifference(
    name="which of several argument errors",
    linux=(
        "mmap checks the rounded length against TASK_SIZE (ENOMEM) before "
        "the alignment of a fixed address (EINVAL), and a file's size limit "
        "(EOVERFLOW) only after placement (EEXIST, ENOMEM); mremap checks "
        "MREMAP_FIXED's new_addr (EINVAL) before looking for the old vma"
    ),
    ours=(
        "checks in gVisor's order: mmap's length 0 (EINVAL), rounding "
        "overflow (ENOMEM), file offset alignment (EINVAL), a file mapping "
        "past the largest file (EOVERFLOW, gVisor's file layer checks it "
        "before the mapping is placed), fixed address alignment (EINVAL), "
        "then placement; mremap's vma at old_addr (EFAULT) before new_addr"
    ),
    why="gVisor documents its own order; a call with one error agrees anyway",
    normalisation=(
        "differing errnos count as equal when: both are among an mmap's "
        "argument errors (it has at least two); or the space's is "
        "EOVERFLOW for a file offset + rounded length past 2**63 - 1 and "
        "Linux's is EEXIST or ENOMEM; or, for MREMAP_FIXED with an "
        "unaligned or overlapping new_addr, Linux's is EINVAL and the "
        "space's EFAULT"
    ),
)

MULTI_VMA_MOVE = IntendedDifference(
    name="moving several vmas at once",
    linux=(
        "since 6.17, mremap(MREMAP_MAYMOVE | MREMAP_FIXED) with old_size == "
        "new_size moves a range spanning several vmas and gaps"
    ),
    ours="EFAULT unless the old range is one vma, as gVisor and earlier Linux",
    why="the space follows the behaviour gVisor models (Linux before 6.17)",
    normalisation=(
        "such a step (Linux moved, the space reports EFAULT) ends the "
        "comparison of the sequence"
    ),
    ends_comparison=True,
)

COPY_ON_WRITE_WINDOW = IntendedDifference(
    name="copy-on-write windows",
    linux=(
        "a write to a private file mapping copies the pages written; the "
        "others keep showing the file, later changes to it included"
    ),
    ours=(
        "copies the part of the written pma inside the 2 MiB-aligned window "
        "around the write (gVisor's copy range), so pages copied without "
        "being written stop showing later changes to the file"
    ),
    why=(
        "gVisor copies a window to take fewer faults; whether a private "
        "mapping sees changes made to the file after mmap is unspecified "
        "(mmap(2))"
    ),
    normalisation=(
        "the space's side lists the pages of private file mappings that a "
        "write copied without writing them (following them when mremap "
        "moves them, dropping them when they are unmapped or dropped); "
        "bytes read (by a read or the closing read-back) that differ only "
        "in those pages count as equal"
    ),
)

INTENDED_DIFFERENCES: tuple[IntendedDifference, ...] = (
    VMA_MERGING,
    DEVICE_AND_INODE,
    KERNEL_PLACEMENT,
    BUS_ERROR,
    ERROR_ORDER,
    MULTI_VMA_MOVE,
    COPY_ON_WRITE_WINDOW,
)

# The largest length the tests expect the kernel to be able to place.
_PLACEABLE = 1 << 40
_TASK_SIZE = 0x7FFF_FFFF_F000
# The farthest a file mapping may reach (MAX_LFS_FILESIZE).
_FILE_END_MAX = (1 << 63) - 1


def _mmap_argument_errors(op: Mmap) -> list[str]:
    """Return the errno of each argument error ``op`` has, on either side."""
    rounded = (op.length + P - 1) & ~(P - 1)
    file = op.kind in ("fp", "fs")
    checks = (
        (op.length == 0, "EINVAL"),
        (rounded > _TASK_SIZE, "ENOMEM"),
        (file and op.offset % P != 0, "EINVAL"),
        (file and op.offset + rounded > _FILE_END_MAX, "EOVERFLOW"),
        (op.place in ("fixed", "noreplace") and op.addr % P != 0, "EINVAL"),
    )
    return [err for applies, err in checks if applies]


def explain(op: Op, linux: Any, ours: Any) -> IntendedDifference | None:
    """Return the table entry that explains differing outcomes, if one does.

    Only :data:`ERROR_ORDER` and :data:`MULTI_VMA_MOVE` are decided here; the
    other entries are normalised where the outcomes are made.
    """
    if not (isinstance(linux, list) and isinstance(ours, list)):
        return None
    both_fail = linux[:1] == ours[:1] == ["err"]
    if both_fail and isinstance(op, Mmap):
        errs = _mmap_argument_errors(op)
        if len(errs) >= 2 and {linux[1], ours[1]} <= set(errs):
            return ERROR_ORDER
        too_far = op.offset + ((op.length + P - 1) & ~(P - 1)) > _FILE_END_MAX
        if (
            op.kind in ("fp", "fs")
            and too_far
            and ours[1] == "EOVERFLOW"
            and linux[1] in ("EEXIST", "ENOMEM")
        ):
            return ERROR_ORDER
    if (
        both_fail
        and isinstance(op, Mremap)
        and op.move == "must"
        and (linux[1], ours[1]) == ("EINVAL", "EFAULT")
        and (
            op.new_addr % P != 0
            or (
                op.new_addr < op.addr + op.old_size
                and op.addr < op.new_addr + op.new_size
            )
        )
    ):
        return ERROR_ORDER
    if (
        isinstance(op, Mremap)
        and op.move == "must"
        and op.old_size == op.new_size
        and linux[:1] == ["ok"]
        and ours == ["err", "EFAULT"]
    ):
        return MULTI_VMA_MOVE
    return None


def differ_only_in(linux: str, ours: str, start: int, pages: frozenset[int]) -> bool:
    """Whether bytes read at window offset ``start`` differ only in ``pages``.

    ``linux`` and ``ours`` are the bytes in hex; ``pages`` are window
    offsets of pages (:data:`COPY_ON_WRITE_WINDOW`'s pages copied without
    being written).
    """
    a, b = bytes.fromhex(linux), bytes.fromhex(ours)
    if len(a) != len(b):
        return False
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y and (start + i) & ~(P - 1) not in pages:
            return False
    return True


def placeable(length: int) -> bool:
    """Whether the kernel could place a mapping of ``length`` outside the window."""
    return 0 < length <= _PLACEABLE


def largest_gap(maps_text: str) -> int:
    """Return the largest unmapped stretch of the window, given maps text."""
    pos, best = 0, 0
    for line in parse_maps(maps_text):
        best = max(best, line.start - pos)
        pos = line.end
    return max(best, WINDOW_SIZE - pos)


# The result of a placement the kernel chose (KERNEL_PLACEMENT).
ELSEWHERE = "elsewhere"
MOVED = "moved"


@dataclass(frozen=True, slots=True)
class MapsLine:
    """One ``/proc/pid/maps`` line, window-relative, without device and inode."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    def __str__(self) -> str:
        return (
            f"{self.start:05x}-{self.end:05x} {self.perms} {self.offset:08x} "
            f"{self.path}"
        ).rstrip()


def parse_maps(text: str) -> list[MapsLine]:
    """Parse maps text, keeping the part of each line inside the window.

    Device and inode are dropped (:data:`DEVICE_AND_INODE`). A line cut by
    the window's start has its offset advanced accordingly.
    """
    lo, hi = WINDOW_BASE, WINDOW_BASE + WINDOW_SIZE
    out = []
    for raw in text.splitlines():
        fields = raw.split(maxsplit=5)
        if len(fields) < 5:
            continue
        span, perms, offset = fields[0], fields[1], int(fields[2], 16)
        start_s, end_s = span.split("-")
        start, end = int(start_s, 16), int(end_s, 16)
        if end <= lo or start >= hi:
            continue
        path = fields[5].strip() if len(fields) > 5 else ""
        if start < lo:
            if path:
                offset += lo - start
            start = lo
        end = min(end, hi)
        out.append(MapsLine(start - lo, end - lo, perms, offset, path))
    return out


def _continues(a: MapsLine, b: MapsLine) -> bool:
    if a.end != b.start or a.perms != b.perms or a.path != b.path:
        return False
    if not a.path:
        return a.offset == b.offset == 0
    return b.offset == a.offset + (a.end - a.start)


def normalise_maps(text: str) -> list[str]:
    """Return the window's maps lines as compared: parsed, then merged.

    Merging is :data:`VMA_MERGING`'s normalisation.
    """
    merged: list[MapsLine] = []
    for line in parse_maps(text):
        if merged and _continues(merged[-1], line):
            last = merged[-1]
            merged[-1] = MapsLine(
                last.start, line.end, last.perms, last.offset, last.path
            )
        else:
            merged.append(line)
    return [str(line) for line in merged]
