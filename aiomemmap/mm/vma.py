r"""The two kinds of segment an address space keeps: vmas and pmas.

A *vma* is a mapping the application asked for (``mmap``): what is mapped
there (a Mappable and an offset, or anonymous memory), with which
permissions, and how. A *pma* is a cached translation: which pages of which
:class:`~aiomemmap.File` currently back a range of addresses, with the
permissions they may be used for. Every pma holds one reference on the file
range it names.

Both are immutable values kept in :class:`~aiomemmap._core.segments.SegmentMap`\\ s;
a change replaces the value. The merge and split functions here follow
gVisor's rules: touching vmas merge only when they are the same mapping in
every respect (the same identity object, contiguous offsets...), touching
pmas only when they are contiguous in the same file with the same
permissions. A vma owns one reference on its :class:`~aiomemmap.MappingIdentity`,
so splitting one takes a reference and merging two gives one up; the address
space supplies the function that collects the given-up references, because
``MappingIdentity.dec_ref`` may only run once its mapping lock is released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq
from aiomemmap._core.ranges import FileRange
from aiomemmap._core.segments import NO_MERGE, NoMerge
from aiomemmap.memmap.interfaces import File, Mappable, MappingIdentity, MLockMode

__all__ = ["Pma", "Vma", "make_vma_functions", "merge_pmas", "split_pma"]


@final
class Vma:
    """One application mapping (a run of addresses mapped the same way).

    Attributes:
        mappable: What is mapped, or ``None`` for private anonymous memory.
        offset: The Mappable offset mapped at the vma's start (0 if
            anonymous).
        real_perms: The permissions as requested (reported by ``maps()``).
        effective_perms: ``real_perms.effective()``: what is enforced.
        max_perms: The most that ``mprotect`` may grant; also what accesses
            that ignore permissions may use.
        private: Writes go to private copies (copy-on-write).
        grows_down: A stack-like mapping.
        dontfork: Not copied into a child by ``fork`` (``MADV_DONTFORK``).
        mlock_mode: The memory-locking mode.
        identity: The identity the vma holds one reference on, or ``None``.
        name: The name ``maps()`` shows; empty to ask the identity.
        writable_mapping: Whether the Mappable was told the mapping may write
            its data (shared and ``max_perms`` allows writing).
    """

    __slots__ = (
        "dontfork",
        "effective_perms",
        "grows_down",
        "identity",
        "mappable",
        "max_perms",
        "mlock_mode",
        "name",
        "offset",
        "private",
        "real_perms",
        "writable_mapping",
    )

    def __init__(
        self,
        *,
        mappable: Mappable | None,
        offset: int,
        real_perms: AccessType,
        max_perms: AccessType,
        private: bool,
        grows_down: bool,
        dontfork: bool,
        mlock_mode: MLockMode,
        identity: MappingIdentity | None,
        name: str,
    ) -> None:
        self.mappable = mappable
        self.offset = offset
        self.real_perms = real_perms
        self.effective_perms = real_perms.effective()
        self.max_perms = max_perms
        self.private = private
        self.grows_down = grows_down
        self.dontfork = dontfork
        self.mlock_mode = mlock_mode
        self.identity = identity
        self.name = name
        self.writable_mapping = not private and max_perms.write

    def replace(self, **changes: object) -> Vma:
        """Return a copy with some attributes changed (no reference is taken)."""
        fields: dict[str, object] = {
            "mappable": self.mappable,
            "offset": self.offset,
            "real_perms": self.real_perms,
            "max_perms": self.max_perms,
            "private": self.private,
            "grows_down": self.grows_down,
            "dontfork": self.dontfork,
            "mlock_mode": self.mlock_mode,
            "identity": self.identity,
            "name": self.name,
        }
        fields.update(changes)
        return Vma(**fields)  # type: ignore[arg-type]

    @property
    def is_private_data(self) -> bool:
        """Whether the vma counts towards ``data_as`` (Linux's ``data_vm``)."""
        return self.private and self.real_perms.write and not self.grows_down

    def offset_at(self, vma_start: int, addr: int) -> int:
        """Return the Mappable offset mapped at ``addr``, for a vma at ``vma_start``."""
        return self.offset + (addr - vma_start)

    def __repr__(self) -> str:
        kind = (
            "anon" if self.mappable is None else f"{self.mappable!r}+{self.offset:#x}"
        )
        return (
            f"Vma({kind} {self.real_perms}{'p' if self.private else 's'} "
            f"max={self.max_perms} mlock={self.mlock_mode.name}"
            f"{' growsdown' if self.grows_down else ''}"
            f"{' dontfork' if self.dontfork else ''})"
        )


def make_vma_functions(
    drop_identity: Callable[[MappingIdentity], None],
) -> tuple[
    Callable[[int, int, int, Vma, Vma], Vma | NoMerge],
    Callable[[int, int, Vma, int], tuple[Vma, Vma]],
]:
    """Return the merge and split functions of an address space's vma map.

    Args:
        drop_identity: Called with the identity reference a merge gives up;
            the address space releases it after unlocking.

    Returns:
        ``(merge, split)`` for :class:`~aiomemmap._core.segments.SegmentMap`.
    """

    def merge(start: int, mid: int, end: int, left: Vma, right: Vma) -> Vma | NoMerge:
        if (
            left.mappable is not right.mappable
            or left.identity is not right.identity
            or (
                left.mappable is not None
                and left.offset + (mid - start) != right.offset
            )
            or left.real_perms != right.real_perms
            or left.max_perms != right.max_perms
            or left.private != right.private
            or left.grows_down != right.grows_down
            or left.dontfork != right.dontfork
            or left.mlock_mode != right.mlock_mode
            or left.name != right.name
        ):
            return NO_MERGE
        if right.identity is not None:
            drop_identity(right.identity)
        return left

    def split(start: int, end: int, vma: Vma, at: int) -> tuple[Vma, Vma]:
        if vma.identity is not None:
            vma.identity.inc_ref()
        offset = vma.offset + (at - start) if vma.mappable is not None else 0
        return vma, vma.replace(offset=offset)

    return merge, split


@final
class Pma:
    """A cached translation: which file pages back a run of addresses.

    Attributes:
        file: The file holding the pages.
        offset: The file offset of the pma's first page.
        translate_perms: What the translation allows (``ANY`` for private
            memory).
        effective_perms: What accesses may use the pages now: the vma's
            effective permissions within ``translate_perms``, without write
            while ``need_cow``.
        max_perms: What accesses that ignore permissions may use: the vma's
            maximum within ``translate_perms``, without write while
            ``need_cow``.
        need_cow: Writing must first copy the pages (copy-on-write).
        private: The pages are the address space's own memory (in its memory
            file) rather than a Mappable's.
        blocks: The pages mapped into this process for ``max_perms`` (without
            execute), or ``None`` until first needed.
        fr: The file range of the pma's pages, when it is already known (it
            is kept only by values that never change length).
        view: ``blocks`` as one memoryview, once asked for, if the pages lie
            in one block.
    """

    __slots__ = (
        "blocks",
        "effective_perms",
        "file",
        "fr",
        "max_perms",
        "need_cow",
        "offset",
        "private",
        "translate_perms",
        "view",
    )

    def __init__(
        self,
        file: File,
        offset: int,
        translate_perms: AccessType,
        effective_perms: AccessType,
        max_perms: AccessType,
        *,
        need_cow: bool,
        private: bool,
        blocks: BlockSeq | None = None,
        fr: FileRange | None = None,
    ) -> None:
        self.file = file
        self.offset = offset
        self.translate_perms = translate_perms
        self.effective_perms = effective_perms
        self.max_perms = max_perms
        self.need_cow = need_cow
        self.private = private
        self.blocks = blocks
        self.fr = fr
        self.view: memoryview | None = None

    def with_perms(
        self, effective_perms: AccessType, max_perms: AccessType, *, need_cow: bool
    ) -> Pma:
        """Return a copy with new permissions.

        The cached mapping is kept only if the maximum permissions stay the
        same, since it was made for them.
        """
        blocks = self.blocks if max_perms == self.max_perms else None
        return Pma(
            self.file,
            self.offset,
            self.translate_perms,
            effective_perms,
            max_perms,
            need_cow=need_cow,
            private=self.private,
            blocks=blocks,
            fr=self.fr,
        )

    def __repr__(self) -> str:
        write = "w" if self.effective_perms.write else ("c" if self.need_cow else "-")
        return (
            f"Pma({'r' if self.effective_perms.read else '-'}{write}"
            f"{'x' if self.effective_perms.execute else '-'}"
            f"{'p' if self.private else 's'} {self.file!r}@{self.offset:#x})"
        )


def merge_pmas(start: int, mid: int, end: int, left: Pma, right: Pma) -> Pma | NoMerge:
    """Merge touching pmas that continue each other in one file with equal perms."""
    if (
        left.file is not right.file
        or left.offset + (mid - start) != right.offset
        or left.translate_perms != right.translate_perms
        or left.effective_perms != right.effective_perms
        or left.max_perms != right.max_perms
        or left.need_cow != right.need_cow
        or left.private != right.private
    ):
        return NO_MERGE
    return Pma(
        left.file,
        left.offset,
        left.translate_perms,
        left.effective_perms,
        left.max_perms,
        need_cow=left.need_cow,
        private=left.private,
    )


def split_pma(start: int, end: int, pma: Pma, at: int) -> tuple[Pma, Pma]:
    """Split a pma at ``at``; each half keeps its part of the cached mapping."""
    n = at - start
    left_blocks = right_blocks = None
    if pma.blocks is not None:
        left_blocks = pma.blocks.take_first(n)
        right_blocks = pma.blocks.drop_first(n)
    left = Pma(
        pma.file,
        pma.offset,
        pma.translate_perms,
        pma.effective_perms,
        pma.max_perms,
        need_cow=pma.need_cow,
        private=pma.private,
        blocks=left_blocks,
    )
    right = Pma(
        pma.file,
        pma.offset + n,
        pma.translate_perms,
        pma.effective_perms,
        pma.max_perms,
        need_cow=pma.need_cow,
        private=pma.private,
        blocks=right_blocks,
    )
    return left, right
