r"""Pmas: the translations an address space caches, and the cache holding them.

A *pma* is a cached translation: which pages of which
:class:`~aiomemmap.File` currently back a range of addresses, with the
permissions they may be used for. Every pma holds one reference on the file
range it names. Pmas are immutable values kept in a
:class:`~aiomemmap._core.segments.SegmentMap`; touching pmas merge only when
they are contiguous in the same file with the same permissions.

:class:`PmaCache` is an address space's pma cache (gVisor's ``pma.go``): it
makes pmas (allocating anonymous memory, asking Mappables to translate,
breaking copy-on-write or taking pages over), moves and drops them, and
serves the lock-free resident fast path of faults and copies. Every pma it
installs or removes, and every change of a pma's permissions, reaches the
address space's :class:`~aiomemmap.mm.platform.Platform`, a removal before
the page reference is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq, copy_seq
from aiomemmap._core.debug import is_debug
from aiomemmap._core.errors import (
    BusError,
    InvariantError,
    OutOfMemoryError,
    check_invariant,
)
from aiomemmap._core.locks import LockRank, OrderedRWLock
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.ranges import FileRange, MappableRange
from aiomemmap._core.segments import NO_MERGE, NoMerge, Segment, SegmentMap
from aiomemmap.memmap.interfaces import File, check_translate_result
from aiomemmap.mm.args import U64, huge_round_down, huge_round_up
from aiomemmap.mm.platform import Platform
from aiomemmap.mm.vma import Vma, VmaMap
from aiomemmap.pgalloc.memory_file import MemoryFile, MemoryKind

__all__ = ["Pma", "PmaCache", "TranslateNeed", "merge_pmas", "split_pma"]

_T = TypeVar("_T")

_READ = AccessType.READ
_READ_WRITE = AccessType.READ_WRITE
_READ_EXECUTE = AccessType.READ_EXECUTE
_ANY = AccessType.ANY


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
    blocks = pma.blocks
    if blocks is None:
        return _piece(pma, pma.offset, None), _piece(pma, pma.offset + n, None)
    return (
        _piece(pma, pma.offset, blocks.take_first(n)),
        _piece(pma, pma.offset + n, blocks.drop_first(n)),
    )


_new_object = object.__new__

# The file range last dropped from a trimmed pma. A truncation reaches every
# space that maps the file, and each drops the same pages: the range is made
# once, not once per space (FileRange checks its bounds when made). Ranges
# are immutable, so the one shared slot needs no lock.
_last_dropped: list[FileRange] = [FileRange(0, 0)]


def _piece(pma: Pma, offset: int, blocks: BlockSeq | None) -> Pma:
    """Return a pma like ``pma`` for part of its pages, starting at ``offset``.

    ``blocks`` is the part's cached mapping (or ``None``); the file range and
    the view are left to be found again, since the length changed. This is
    :class:`Pma`'s constructor without its argument handling: pieces are
    made on every split and trim, which invalidation does once per space.
    """
    piece: Pma = _new_object(Pma)
    piece.file = pma.file
    piece.offset = offset
    piece.translate_perms = pma.translate_perms
    piece.effective_perms = pma.effective_perms
    piece.max_perms = pma.max_perms
    piece.need_cow = pma.need_cow
    piece.private = pma.private
    piece.blocks = blocks
    piece.fr = None
    piece.view = None
    return piece


@final
class TranslateNeed(NamedTuple):
    """A translation :meth:`PmaCache.ensure` found still missing.

    ``[req_start, req_end)`` must be translated, ``[opt_start, opt_end)``
    may be, with ``perms``, in the vma ``vseg``; ``upgrade`` means existing
    shared pmas get more permissions.
    """

    vseg: Segment[Vma]
    req_start: int
    req_end: int
    opt_start: int
    opt_end: int
    perms: AccessType
    upgrade: bool


_Translated = list[tuple[int, int, Pma, FileRange]]


@final
class PmaCache:
    """An address space's pmas, the active lock guarding them, and the RSS.

    Args:
        memory_file: Where anonymous memory and private copies are allocated.
        platform: Where every pma is mirrored.

    Attributes:
        segs: The pmas. Read it freely under the active lock (or, without
            it, when no task holds it for writing and nothing awaits); change
            it only through the methods here, which keep the platform and
            the counters in step.
        lock: The active lock (``LockRank.ACTIVE``, reader/writer).
        mf: The memory file of anonymous memory and private copies.
        platform: The platform mirroring the pmas.
        rss: The bytes the pmas cover.
        max_rss: The largest ``rss`` so far.
        cow_copies: Pages copied to break copy-on-write.

    Invariants:
        ``rss`` is the total length of the pmas; private pmas are pages of
        ``mf``; a pma that needs copy-on-write is not writable; a pma
        allows no more than any vma it lies in (its effective and maximum
        permissions are within each one's), since the resident fast path
        checks only the pma. Pmas merge across vmas, so every step that
        gives a pma more permissions changes only the part inside one vma.

    Concurrency:
        Task-compatible: caller holds ``lock`` for writing to change
        anything (see each method).
    """

    __slots__ = (
        "_invalidation_log",
        "_translates_in_flight",
        "cow_copies",
        "lock",
        "max_rss",
        "mf",
        "platform",
        "rss",
        "segs",
    )

    def __init__(self, memory_file: MemoryFile, platform: Platform) -> None:
        self.mf = memory_file
        self.platform = platform
        self.lock = OrderedRWLock(LockRank.ACTIVE, "AddressSpace.active")
        self.segs: SegmentMap[Pma] = SegmentMap(merge_pmas, split_pma)
        self.rss = 0
        self.max_rss = 0
        self.cow_copies = 0
        # While translations are awaited without the lock: the ranges
        # invalidated meanwhile (see get()).
        self._translates_in_flight = 0
        self._invalidation_log: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.segs)

    # ------------------------------------------------------------------
    # The resident fast path

    def resident(
        self, addr: int, end: int, at: AccessType, ignore_permissions: bool
    ) -> Segment[Pma] | None:
        """Return the pma covering ``[addr, end)`` if it allows ``at``.

        This is the one fast path of faults and copies: with no task holding
        the active lock for writing the pmas are consistent, so a caller
        that uses the result without awaiting needs no lock at all. Copies
        then read or write the pma's :meth:`view`.

        Args:
            addr: The first address.
            end: One past the last address (``addr < end``).
            at: The access.
            ignore_permissions: Check the pma's ``max_perms`` instead of its
                ``effective_perms``.

        Returns:
            The pma's segment, or ``None``: a writer holds the lock, or no
            single pma covers the range, or it does not allow ``at``.

        Locking:
            Takes no lock; see above.
        """
        if self.lock.write_locked():
            return None
        seg = self.segs.find(addr)
        if seg is None or seg.end < end:
            return None
        pma = seg.value
        perms = pma.max_perms if ignore_permissions else pma.effective_perms
        # AccessType.superset_of, spelled out: this runs on every access.
        if (
            (at.read and not perms.read)
            or (at.write and not perms.write)
            or (at.execute and not perms.execute)
        ):
            return None
        return seg

    def view(self, seg: Segment[Pma]) -> memoryview | None:
        """Return the pma's pages as one memoryview (cached in ``Pma.view``).

        Returns ``None`` when the pages are not in one block.
        """
        pma = seg.value
        view = pma.view
        if view is None:
            blocks = self.blocks(seg)
            if len(blocks) != 1:
                return None
            view = pma.view = blocks[0]
        return view

    def blocks(self, seg: Segment[Pma]) -> BlockSeq:
        """Return (and cache) the pma's pages mapped into this process."""
        pma = seg.value
        blocks = pma.blocks
        if blocks is None:
            at = _READ_WRITE if pma.max_perms.write else _READ
            blocks = pma.file.map_internal(
                FileRange(pma.offset, pma.offset + (seg.end - seg.start)), at
            )
            pma.blocks = blocks
        return blocks

    # ------------------------------------------------------------------
    # Installing and removing (each reaches the platform)

    def insert(self, start: int, end: int, pma: Pma) -> None:
        """Install ``pma`` at the free range ``[start, end)`` and map it.

        Preconditions: the lock is held for writing; the caller took the
        page reference the pma holds.
        """
        self.segs.insert(start, end, pma)
        rss = self.rss = self.rss + (end - start)
        if rss > self.max_rss:
            self.max_rss = rss
        self._map(start, end, pma)

    def remove(self, seg: Segment[Pma]) -> None:
        """Unmap a pma, remove it, then drop its page reference.

        Preconditions: the lock is held for writing.
        """
        start, end = seg.start, seg.end
        pma = seg.value
        n = end - start
        self.platform.unmap(start, n)
        self.segs.delete(seg)
        self.rss -= n
        fr = pma.fr
        pma.file.dec_ref(
            fr if fr is not None else FileRange(pma.offset, pma.offset + n)
        )

    def _map(self, start: int, end: int, pma: Pma) -> None:
        """Map (or map again, with new permissions) a pma on the platform."""
        fr = pma.fr
        if fr is None:
            fr = FileRange(pma.offset, pma.offset + (end - start))
        self.platform.map_file(start, pma.file, fr, pma.effective_perms)

    def invalidate_locked(self, start: int, end: int, private: bool) -> None:
        """Drop the pmas in ``[start, end)`` (private ones only if ``private``).

        A pma that reaches past the range keeps its part outside it: it is
        trimmed (one new value in place of the old, at the old key or at the
        range's edge) rather than split into pieces of which all but one are
        dropped again. The platform sees the dropped part unmapped before its
        page reference is dropped, exactly as for :meth:`remove`.

        Preconditions: the lock is held for writing.
        """
        if self._translates_in_flight:
            self._invalidation_log.append((start, end))
        segs = self.segs
        seg = segs.lower_bound_segment(start)
        while seg is not None:
            s0, e0, pma = seg
            if s0 >= end:
                return
            # Taken before seg changes; nothing after end is touched.
            nxt = segs.next_segment(seg) if e0 < end else None
            if private or not pma.private:
                if start <= s0:
                    if e0 <= end:
                        self.remove(seg)
                    else:
                        self._trim(seg, end, e0)
                elif e0 <= end:
                    self._trim(seg, s0, start)
                else:
                    self.remove(segs.isolate(seg, start, end))
            seg = nxt

    def _trim(self, seg: Segment[Pma], keep_start: int, keep_end: int) -> None:
        """Drop the pages of ``seg`` outside ``[keep_start, keep_end)``.

        The kept part stays mapped on the platform; the dropped part is
        unmapped, then its page reference is dropped.

        Preconditions: the lock is held for writing; ``[keep_start,
        keep_end)`` is a non-empty proper part of ``seg`` that shares one of
        its ends.
        """
        s0, e0, pma = seg
        blocks = pma.blocks
        if keep_start == s0:
            n = keep_end - s0
            kept = _piece(
                pma, pma.offset, None if blocks is None else blocks.take_first(n)
            )
            drop_addr, drop_off = keep_end, pma.offset + n
        else:
            n = keep_start - s0
            kept = _piece(
                pma, pma.offset + n, None if blocks is None else blocks.drop_first(n)
            )
            drop_addr, drop_off = s0, pma.offset
        dropped = (e0 - s0) - (keep_end - keep_start)
        self.platform.unmap(drop_addr, dropped)
        segs = self.segs
        segs.delete(seg)
        segs.insert_without_merging(keep_start, keep_end, kept)
        self.rss -= dropped
        fr = _last_dropped[0]
        if fr.start != drop_off or fr.end != drop_off + dropped:
            fr = _last_dropped[0] = FileRange(drop_off, drop_off + dropped)
        pma.file.dec_ref(fr)

    def move(self, old_start: int, old_end: int, new_start: int) -> None:
        """Move the pmas of ``[old_start, old_end)`` to start at ``new_start``.

        They keep their page references; the platform sees each unmapped at
        its old address and mapped at its new one.

        Preconditions: the lock is held for writing; the new range holds no
        pma.
        """
        segs = self.segs
        segs.split_at(old_start)
        segs.split_at(old_end)
        moved = segs.remove_range(old_start, old_end)
        delta = new_start - old_start
        for seg in moved:
            self.platform.unmap(seg.start, seg.end - seg.start)
        for seg in moved:
            segs.insert(seg.start + delta, seg.end + delta, seg.value)
            self._map(seg.start + delta, seg.end + delta, seg.value)

    def protect(self, start: int, end: int, effective: AccessType) -> None:
        """Give the pmas in ``[start, end)`` the effective permissions ``effective``.

        Each keeps within what its translation allows, and without write
        while it needs copy-on-write; the caller merges afterwards.

        Preconditions: the lock is held for writing.
        """
        segs = self.segs
        for pseg in list(segs.segments(start, end)):
            pseg = segs.isolate(pseg, start, end)
            pma = pseg.value
            eff = effective.intersect(pma.translate_perms)
            if pma.need_cow and eff.write:
                eff = AccessType(eff.read, False, eff.execute)
            pseg = segs.set_value(
                pseg, pma.with_perms(eff, pma.max_perms, need_cow=pma.need_cow)
            )
            if eff != pma.effective_perms:
                self._map(pseg.start, pseg.end, pseg.value)

    def share_private(self, child: PmaCache, start: int, end: int) -> None:
        """Share the private pmas of ``[start, end)`` copy-on-write with ``child``.

        Both sides lose write permission until one of them writes (and
        copies, or takes the pages over once it holds the only reference).

        Preconditions: both locks are held for writing; ``child`` has no pma
        in the range.
        """
        segs = self.segs
        for pseg in list(segs.segments(start, end)):
            if not pseg.value.private:
                continue
            pseg = segs.isolate(pseg, max(start, pseg.start), min(end, pseg.end))
            pma = pseg.value
            eff, mx = pma.effective_perms, pma.max_perms
            ro_eff = AccessType(eff.read, False, eff.execute)
            ro_max = AccessType(mx.read, False, mx.execute)
            shared = pma.with_perms(ro_eff, ro_max, need_cow=True)
            pseg = segs.set_value(pseg, shared)
            if ro_eff != eff:
                self._map(pseg.start, pseg.end, shared)
            pma.file.inc_ref(
                FileRange(pma.offset, pma.offset + (pseg.end - pseg.start))
            )
            child.insert(
                pseg.start, pseg.end, shared.with_perms(ro_eff, ro_max, need_cow=True)
            )
        segs.merge_inside_range(start, end)
        segs.merge_outside_range(start, end)

    # ------------------------------------------------------------------
    # Making pmas

    async def get(
        self,
        vmas: VmaMap,
        start: int,
        end: int,
        at: AccessType,
        use: Callable[[int, BaseException | None], _T],
    ) -> _T:
        """Make pmas cover ``[start, end)`` for ``at``, then call ``use`` on them.

        gVisor's ``getPMAsLocked``, with one change: the lock is not held
        while a Mappable's ``translate`` is awaited, so faults on different
        pages (and their fetches) proceed concurrently. A translation that
        an invalidation overlapped while it was in flight is thrown away and
        asked for again.

        ``use(reached, err)`` runs with the lock held for writing, right
        after the pmas of ``[start, reached)`` were checked, without awaiting
        in between; ``reached < end`` only with ``err`` saying why.

        Preconditions: the mapping lock is held (either mode), this lock is
        not; ``[start, end)`` is page-aligned and wholly mapped by vmas that
        allow ``at``.

        Raises:
            OutOfMemoryError: The memory file is full (nothing is lost).
        """
        lock = self.lock
        limit, limit_err = end, None
        while True:
            await lock.acquire_write()
            try:
                need = self.ensure(vmas, start, limit, at)
                if need is None:
                    return use(limit, limit_err)
                log_pos = self._begin_translate()
            finally:
                lock.release_write()
            try:
                new, err = await _translate(need)
            except BaseException:
                self._end_translate(log_pos, need.opt_start, need.opt_end)
                raise
            try:
                await lock.acquire_write()
            except BaseException:
                self._end_translate(log_pos, need.opt_start, need.opt_end)
                raise
            try:
                # Only the translated range matters (the whole optional range
                # if the Mappable gave nothing, to retry after a truncation).
                t_start = new[0][0] if new else need.opt_start
                t_end = new[-1][1] if new else need.opt_end
                stale = self._end_translate(log_pos, t_start, t_end)
                if not stale:
                    self.install(need, new)
                    if err is not None:
                        reached = new[-1][1] if new else need.req_start
                        if reached < need.req_end:
                            limit = max(reached, need.req_start)
                            limit_err = _as_bus_error(err)
            finally:
                lock.release_write()

    def _begin_translate(self) -> int:
        self._translates_in_flight += 1
        return len(self._invalidation_log)

    def _end_translate(self, log_pos: int, start: int, end: int) -> bool:
        """Finish an in-flight translate; return whether an invalidation hit it."""
        log = self._invalidation_log
        stale = any(s < end and start < e for s, e in log[log_pos:])
        self._translates_in_flight -= 1
        if self._translates_in_flight == 0:
            log.clear()
        return stale

    def ensure(
        self, vmas: VmaMap, start: int, end: int, at: AccessType
    ) -> TranslateNeed | None:
        """Do what needs no awaiting to make pmas cover ``[start, end)`` for ``at``.

        Allocates anonymous memory and breaks copy-on-write. Returns the
        first translation still needed, or ``None`` when the range is done.

        Preconditions: the mapping lock and this lock (writing) are held.
        """
        vsegs, segs = vmas.segs, self.segs
        addr = start
        while addr < end:
            vseg = vsegs.find(addr)
            assert vseg is not None, f"no vma at {addr:#x}"
            vend = min(vseg.end, end)
            vma = vseg.value
            while addr < vend:
                pseg = segs.find(addr)
                if pseg is None:
                    gap = segs.find_gap(addr)
                    assert gap is not None
                    opt_start = max(gap.start, vseg.start)
                    opt_end = min(gap.end, vseg.end)
                    if vma.mappable is None:
                        self._allocate_anonymous(
                            vma,
                            max(opt_start, huge_round_down(start)),
                            min(opt_end, huge_round_up(end)),
                        )
                        continue
                    if vma.private:
                        perms = _READ_EXECUTE if at.execute else _READ
                    else:
                        perms = at
                    return TranslateNeed(
                        vseg, addr, min(opt_end, end), opt_start, opt_end, perms, False
                    )
                pma = pseg.value
                if at.write and pma.need_cow:
                    if not (pma.private and self._take_over(pseg, vseg)):
                        self._break_cow(pseg, vseg, start, end)
                    continue
                if not pma.translate_perms.superset_of(at):
                    o_start, o_end = (
                        max(pseg.start, vseg.start),
                        min(pseg.end, vseg.end),
                    )
                    return TranslateNeed(
                        vseg,
                        max(o_start, start),
                        min(o_end, end),
                        o_start,
                        o_end,
                        pma.translate_perms.union(at),
                        True,
                    )
                addr = min(pseg.end, vend)
        return None

    def install(self, need: TranslateNeed, new: _Translated) -> None:
        """Insert translated pmas where the ranges are still free.

        For an upgrade (more permissions for an existing translation), shared
        pmas in the way are replaced; private pmas (the space's own copies)
        always stay. Each installed piece takes its own page reference.

        Preconditions: the lock is held for writing.
        """
        segs = self.segs
        for a0, a1, pma, fr in new:
            if need.upgrade:
                for seg in list(segs.segments(a0, a1)):
                    if not seg.value.private:
                        self.remove(segs.isolate(seg, a0, a1))
            for gap in list(segs.gaps(a0, a1)):
                g0, g1 = max(gap.start, a0), min(gap.end, a1)
                if g0 == a0 and g1 == a1:
                    piece, piece_fr = pma, fr
                else:
                    off = pma.offset + (g0 - a0)
                    piece_fr = FileRange(off, off + (g1 - g0))
                    piece = Pma(
                        pma.file,
                        off,
                        pma.translate_perms,
                        pma.effective_perms,
                        pma.max_perms,
                        need_cow=pma.need_cow,
                        private=False,
                        fr=piece_fr,
                    )
                pma.file.inc_ref(piece_fr)
                self.insert(g0, g1, piece)

    def _allocate_anonymous(self, vma: Vma, start: int, end: int) -> None:
        fr = self.mf.allocate(end - start, kind=MemoryKind.ANONYMOUS)
        self.insert(
            start,
            end,
            Pma(
                self.mf,
                fr.start,
                _ANY,
                vma.effective_perms,
                vma.max_perms,
                need_cow=False,
                private=True,
                fr=fr,
            ),
        )

    def _take_over(self, pseg: Segment[Pma], vseg: Segment[Vma]) -> bool:
        """Take over the pages of a private copy-on-write pma inside ``vseg``.

        When the space holds the only reference on the pages the pma has
        inside the vma, that part gets the vma's permissions and no longer
        needs copy-on-write; nothing is copied. A pma may span several vmas
        (pmas merge whatever vmas they lie in), so only the part inside
        ``vseg`` changes: the rest keeps permissions its own vmas allow.

        Returns:
            Whether the pages were taken over (``False``: they are shared,
            so they must be copied).
        """
        start, end = max(pseg.start, vseg.start), min(pseg.end, vseg.end)
        pma = pseg.value
        offset = pma.offset + (start - pseg.start)
        if not self.mf.has_unique_ref(FileRange(offset, offset + (end - start))):
            return False
        segs = self.segs
        pseg = segs.isolate(pseg, start, end)
        vma = vseg.value
        pseg = segs.set_value(
            pseg,
            pseg.value.with_perms(vma.effective_perms, vma.max_perms, need_cow=False),
        )
        self._map(start, end, pseg.value)
        segs.merge_next(segs.merge_prev(pseg))
        return True

    def _break_cow(
        self, pseg: Segment[Pma], vseg: Segment[Vma], start: int, end: int
    ) -> None:
        """Copy a copy-on-write pma's pages around ``[start, end)`` and use the copy.

        The old pages are unmapped from the platform before their reference
        is dropped.
        """
        vma = vseg.value
        if vma.effective_perms.execute:
            c_start, c_end = start, end
        elif vma.grows_down:
            c_start, c_end = max(start - PAGE_SIZE, 0), min(end + PAGE_SIZE, U64)
        else:
            c_start, c_end = huge_round_down(start), huge_round_up(end)
        c_start = max(c_start, pseg.start, vseg.start)
        c_end = min(c_end, pseg.end, vseg.end)
        segs = self.segs
        pseg = segs.isolate(pseg, c_start, c_end)
        old = pseg.value
        n = c_end - c_start
        src = self.blocks(pseg)
        fr = self.mf.allocate(n, kind=MemoryKind.ANONYMOUS)
        dst = self.mf.map_internal(fr, _READ_WRITE)
        copy_seq(dst, src)
        new = Pma(
            self.mf,
            fr.start,
            _ANY,
            vma.effective_perms,
            vma.max_perms,
            need_cow=False,
            private=True,
            blocks=dst if vma.max_perms.write else None,
        )
        self.platform.unmap(c_start, n)
        pseg = segs.set_value(pseg, new)
        self._map(c_start, c_end, new)
        old.file.dec_ref(FileRange(old.offset, old.offset + n))
        self.cow_copies += n // PAGE_SIZE
        segs.merge_next(segs.merge_prev(pseg))

    # ------------------------------------------------------------------
    # Checks

    def check_invariants(self, vmas: VmaMap) -> None:
        """Check the pmas against ``vmas`` and the counters.

        Raises:
            InvariantError: An invariant does not hold; the message says which.
        """
        self.segs.check_invariants()
        rss = 0
        for pseg in self.segs:
            pma = pseg.value
            rss += pseg.end - pseg.start
            hole = vmas.segs.first_hole(pseg.start, pseg.end)
            if hole is not None:
                raise InvariantError(f"pma {pseg} outside every vma at {hole}")
            check_invariant(pma.offset % PAGE_SIZE == 0, f"pma {pseg} not aligned")
            check_invariant(
                not pma.private or pma.file is self.mf,
                f"private pma {pseg} not in the memory file",
            )
            check_invariant(
                not pma.need_cow
                or not (pma.effective_perms.write or pma.max_perms.write),
                f"copy-on-write pma {pseg} is writable",
            )
            check_invariant(
                pma.translate_perms.superset_of(pma.effective_perms),
                f"pma {pseg}: effective permissions exceed the translation's",
            )
            for vseg in vmas.segs.segments(pseg.start, pseg.end):
                vma = vseg.value
                check_invariant(
                    vma.effective_perms.superset_of(pma.effective_perms)
                    and vma.max_perms.superset_of(pma.max_perms),
                    f"pma {pseg} allows more than vma {vseg} it lies in",
                )
            check_invariant(
                pma.blocks is None or pma.blocks.num_bytes == pseg.end - pseg.start,
                f"pma {pseg}: cached mapping of the wrong length",
            )
        if rss != self.rss:
            raise InvariantError(f"rss is {self.rss:#x}, the pmas add to {rss:#x}")
        check_invariant(
            self.max_rss >= self.rss, f"max_rss {self.max_rss:#x} below rss"
        )


def _pma_for_translation(vma: Vma, perms: AccessType, file: File, fr: FileRange) -> Pma:
    eff = vma.effective_perms.intersect(perms)
    mx = vma.max_perms.intersect(perms)
    if vma.private:
        eff = AccessType(eff.read, False, eff.execute)
        mx = AccessType(mx.read, False, mx.execute)
    return Pma(
        file, fr.start, perms, eff, mx, need_cow=vma.private, private=False, fr=fr
    )


async def _translate(
    need: TranslateNeed,
) -> tuple[_Translated, BaseException | None]:
    """Ask the vma's Mappable to translate; return the new pmas (not inserted)."""
    vseg = need.vseg
    vma = vseg.value
    mappable = vma.mappable
    assert mappable is not None
    base = vseg.start
    required = MappableRange(
        vma.offset_at(base, need.req_start), vma.offset_at(base, need.req_end)
    )
    optional = MappableRange(
        vma.offset_at(base, need.opt_start), vma.offset_at(base, need.opt_end)
    )
    perms = need.perms
    translations, err = await mappable.translate(required, optional, perms)
    if is_debug():
        problem = check_translate_result(required, optional, perms, translations, err)
        if problem is not None:
            raise AssertionError(
                f"{mappable!r}.translate broke its contract: {problem}"
            )
    out = []
    for t in translations:
        a0 = base + (t.source.start - vma.offset)
        a1 = a0 + t.source.length
        fr = t.file_range()
        out.append((a0, a1, _pma_for_translation(vma, t.perms, t.file, fr), fr))
    if err is None and not out:
        err = BusError(RuntimeError("translate returned nothing"))
    return out, err


def _as_bus_error(err: BaseException) -> BaseException:
    if isinstance(err, (BusError, OutOfMemoryError)):
        return err
    return BusError(err)
