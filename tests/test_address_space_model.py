"""AddressSpace against a byte-level reference model (SPEC R1, R6; gVisor mm §6).

A hypothesis state machine drives mmap, munmap, mremap, mprotect, madvise
(DONTNEED, DONTFORK/DOFORK), copy_in, copy_out, zero_out, fork and closing
spaces, plus writes and truncations of the Mappables behind file mappings,
over anonymous private and shared memory, a :class:`SharedMemory` (shared and
private mappings) and two :class:`CachedFile` objects over
:class:`BytesBacking` (a read-only one mapped privately or shared read-only,
and a writable one mapped privately or shared).

The model keeps, per space, a dict ``page address -> Page``: what is mapped
there (the source and its offset, or anonymous), how (private, perms,
max_perms, dontfork) and, for private pages that own their contents, the
bytes. Shared pages read and write their source's model bytes; private file
pages read the source until their first write, then own a copy; ``fork``
copies the page records (private bytes by value, shared ones by source).

After every step: ``check_invariants()`` of every space, the accounting
(``usage_as``, ``data_as``, the number of vmas as the number of maximal
mergeable runs of pages), and the bytes of a sample of pages read with
``copy_in(..., ignore_permissions=True)``. At teardown every space and every
Mappable is closed and the memory file must hold no page (SPEC R1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    AddressSpaceError,
    Advice,
    BusError,
    BytesBacking,
    CachedFile,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)

P = PAGE_SIZE
NPAGES = 64
MIN = 0x10000
MAX = MIN + NPAGES * P
LAYOUT = Layout(min_addr=MIN, max_addr=MAX, bottom_up_base=MIN, top_down_base=MAX)
FILE_PAGES = 16
ZERO_PAGE = bytes(P)
MAX_SPACES = 4

R = AccessType.READ
RW = AccessType.READ_WRITE
RX = AccessType.READ_EXECUTE
NONE = AccessType.NO_ACCESS
W_ONLY = AccessType(False, True, False)
ANY = AccessType.ANY
PERMS_BY_NAME = {"---": NONE, "r--": R, "rw-": RW, "r-x": RX, "-w-": W_ONLY, "rwx": ANY}
# Names, not AccessType values, so that failing examples print readably.
PERMS = ["---", "r--", "rw-", "rw-", "r-x", "-w-", "rwx", "rwx"]

KINDS = [
    "anon_p",  # anonymous private
    "anon_s",  # anonymous shared
    "shm_s",  # SharedMemory, shared
    "shm_p",  # SharedMemory, private
    "cfro_p",  # read-only CachedFile, private
    "cfro_s",  # read-only CachedFile, shared (max_perms READ)
    "cfrw_s",  # writable CachedFile, shared
    "cfrw_p",  # writable CachedFile, private
]


def _pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 31 + i * 7 + 1) % 251 for i in range(n))


class Src:
    """The model of a Mappable's contents."""

    def __init__(self, name: str, data: bytes, obj: Any) -> None:
        self.name = name
        self.data = bytearray(data)
        self.obj = obj  # the Mappable, or None for anonymous shared memory

    @property
    def eof(self) -> int:
        return -(-len(self.data) // P) * P

    def page(self, off: int) -> bytes:
        return bytes(self.data[off : off + P]).ljust(P, b"\0")

    def __repr__(self) -> str:
        return f"Src({self.name})"


@dataclasses.dataclass(frozen=True)
class Page:
    src: Src | None  # None: anonymous private memory
    off: int
    private: bool
    perms: AccessType
    max_perms: AccessType
    dontfork: bool = False
    data: bytes | None = None  # private bytes owned by the page
    # For a private file page without data: earlier versions of the file
    # page it may hold a copy of. gVisor breaks copy-on-write for a whole
    # pma window (up to 2 MiB around the write), so an unwritten neighbour of
    # a written page may already be a private copy; which one it is shows
    # only once the file changes, and is resolved by reading the page.
    cands: frozenset[bytes] = frozenset()

    def same_vma(self, nxt: Page) -> bool:
        """Whether ``nxt`` (the next page) belongs to the same vma (gVisor merge)."""
        return (
            self.src is nxt.src
            and (self.src is None or self.off + P == nxt.off)
            and self.private == nxt.private
            and self.perms == nxt.perms
            and self.max_perms == nxt.max_perms
            and self.dontfork == nxt.dontfork
        )


class Fail(Exception):
    """A model-predicted failure of a page access."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "EFAULT" or "BUS"


class SpaceModel:
    def __init__(
        self,
        asp: AddressSpace,
        pages: dict[int, Page],
        on_change: Callable[[Src, int, int], None],
    ) -> None:
        self.asp = asp
        self.pages = pages
        self.on_change = on_change
        self.max_rss = 0
        self.cow_copies = 0

    # -- vmas ------------------------------------------------------------

    def runs(self) -> Iterator[tuple[int, int]]:
        """Yield the model vmas: maximal runs of mergeable pages."""
        start = prev = None
        for a in sorted(self.pages):
            if start is not None and prev is not None:
                if a == prev + P and self.pages[prev].same_vma(self.pages[a]):
                    prev = a
                    continue
                yield start, prev + P
            start = prev = a
        if start is not None and prev is not None:
            yield start, prev + P

    def run_of(self, addr: int) -> tuple[int, int]:
        for s, e in self.runs():
            if s <= addr < e:
                return s, e
        raise KeyError(addr)

    def is_free(self, start: int, end: int) -> bool:
        return all(a not in self.pages for a in range(start, end, P))

    def lowest_free(self, length: int) -> int | None:
        a = MIN
        while a + length <= MAX:
            if self.is_free(a, a + length):
                return a
            a += P
        return None

    def unmap(self, start: int, end: int) -> None:
        for a in range(start, end, P):
            self.pages.pop(a, None)

    # -- contents --------------------------------------------------------

    def check_access(self, pg: Page, write: bool, ignore: bool) -> None:
        perms = pg.max_perms if ignore else pg.perms.effective()
        if not (perms.write if write else perms.read):
            raise Fail("EFAULT")
        if pg.data is None and pg.src is not None and pg.off >= pg.src.eof:
            raise Fail("BUS")

    def page_bytes(self, pg: Page) -> bytes:
        if pg.data is not None:
            return pg.data
        if pg.src is None:
            return ZERO_PAGE
        return pg.src.page(pg.off)

    def read(self, addr: int, n: int, ignore: bool) -> tuple[bytes, str | None]:
        out = bytearray()
        pos, end = addr, addr + n
        while pos < end:
            pa = pos & ~(P - 1)
            stop = min(end, pa + P)
            pg = self.pages.get(pa)
            try:
                if pg is None:
                    raise Fail("EFAULT")
                self.check_access(pg, False, ignore)
            except Fail as f:
                return bytes(out), f.kind
            out += self.page_bytes(pg)[pos - pa : stop - pa]
            pos = stop
        return bytes(out), None

    def write(self, addr: int, data: bytes, ignore: bool) -> tuple[int, str | None]:
        pos, end = addr, addr + len(data)
        while pos < end:
            pa = pos & ~(P - 1)
            stop = min(end, pa + P)
            pg = self.pages.get(pa)
            try:
                if pg is None:
                    raise Fail("EFAULT")
                self.check_access(pg, True, ignore)
            except Fail as f:
                return pos - addr, f.kind
            chunk = data[pos - addr : stop - addr]
            if pg.private:
                buf = bytearray(self.page_bytes(pg))
                buf[pos - pa : stop - pa] = chunk
                self.pages[pa] = dataclasses.replace(pg, data=bytes(buf))
            else:
                assert pg.src is not None
                o = pg.off + (pos - pa)
                self.on_change(pg.src, o, o + len(chunk))
                pg.src.data[o : o + len(chunk)] = chunk
            pos = stop
        return len(data), None


def _err(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    if isinstance(exc, BusError):
        return "BUS"
    if isinstance(exc, AddressSpaceError):
        return errno.errorcode[exc.errno]
    raise exc


class AddressSpaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.rng = random.Random(1234)
        self.mf = MemoryFile("asp-model")
        self.shm = SharedMemory(self.mf, FILE_PAGES * P, name="shm")
        ro_data = _pattern(1, FILE_PAGES * P)
        rw_data = _pattern(2, FILE_PAGES * P)
        self.ro_backing = BytesBacking(ro_data, readonly=True)
        self.rw_backing = BytesBacking(rw_data)
        self.ro_original = ro_data
        self.cf_ro = CachedFile(self.ro_backing, self.mf, name="ro")
        self.cf_rw = CachedFile(self.rw_backing, self.mf, writable=True, name="rw")
        self.src_shm = Src("shm", bytes(FILE_PAGES * P), self.shm)
        self.src_ro = Src("ro", ro_data, self.cf_ro)
        self.src_rw = Src("rw", rw_data, self.cf_rw)
        self.spaces: list[SpaceModel] = [
            SpaceModel(AddressSpace(self.mf, layout=LAYOUT), {}, self.src_changing)
        ]
        self.steps = 0

    def run(self, coro: Awaitable[Any]) -> Any:
        async def main() -> Any:
            return await coro

        return self.loop.run_until_complete(main())

    def call(self, coro: Awaitable[Any]) -> tuple[Any, BaseException | None]:
        try:
            return self.run(coro), None
        except (AddressSpaceError, BusError) as exc:
            return None, exc

    def space(self, i: int) -> SpaceModel:
        return self.spaces[i % len(self.spaces)]

    @staticmethod
    def pick_page(sp: SpaceModel, pick: int, page: int) -> int:
        """Mostly a mapped page (so operations succeed), sometimes any page."""
        if sp.pages and pick % 5:
            mapped = sorted(sp.pages)
            return mapped[pick % len(mapped)]
        return MIN + page * P

    def src_changing(self, src: Src, start: int, end: int) -> None:
        """Record the old versions of ``src`` pages about to change."""
        first, last = start & ~(P - 1), (end - 1) & ~(P - 1)
        for sp in self.spaces:
            for a, pg in sp.pages.items():
                if (
                    pg.src is src
                    and pg.private
                    and pg.data is None
                    and first <= pg.off <= last
                    and pg.off < src.eof
                ):
                    sp.pages[a] = dataclasses.replace(
                        pg, cands=pg.cands | {src.page(pg.off)}
                    )

    def resolve(self, sp: SpaceModel, start: int, end: int) -> None:
        """Read the ambiguous pages of ``[start, end)`` to learn what they hold."""
        for a in range(start & ~(P - 1), end, P):
            pg = sp.pages.get(a)
            if pg is None or not pg.cands:
                continue
            assert pg.src is not None
            assert pg.data is None
            if pg.off >= pg.src.eof:
                continue
            got, exc = self.call(sp.asp.copy_in(a, P, ignore_permissions=True))
            assert exc is None, (hex(a), pg, exc)
            cur = pg.src.page(pg.off)
            if got == cur:
                sp.pages[a] = dataclasses.replace(pg, cands=frozenset())
            else:
                assert got in pg.cands, f"page {a:#x} ({pg}) holds unknown bytes"
                sp.pages[a] = dataclasses.replace(pg, data=got, cands=frozenset())

    # ------------------------------------------------------------------
    # mappings

    def _new_pages(
        self, kind: str, n: int, offpage: int, perms: AccessType
    ) -> tuple[MMapOpts, list[Page]]:
        length = n * P
        if kind in ("anon_p", "anon_s"):
            private = kind == "anon_p"
            opts = MMapOpts(length, private=private, perms=perms, max_perms=ANY)
            src = None if private else Src("anon", bytes(length), None)
            pages = [
                Page(src, 0 if src is None else i * P, private, perms, ANY)
                for i in range(n)
            ]
            return opts, pages
        offpage = min(offpage, FILE_PAGES - n)
        src = {"shm": self.src_shm, "cfro": self.src_ro, "cfrw": self.src_rw}[
            kind.split("_")[0]
        ]
        private = kind.endswith("_p")
        max_perms = ANY
        if kind == "cfro_s":
            max_perms = R
            perms = perms.intersect(R)
        opts = MMapOpts(
            length,
            mappable=src.obj,
            mapping_identity=src.obj,
            offset=offpage * P,
            private=private,
            perms=perms,
            max_perms=max_perms,
        )
        pages = [
            Page(src, (offpage + i) * P, private, perms, max_perms) for i in range(n)
        ]
        return opts, pages

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        kind=st.sampled_from(KINDS),
        n=st.integers(1, 6),
        mode=st.sampled_from(["auto", "auto", "fixed", "noreplace", "fixed_keep"]),
        page=st.integers(0, NPAGES - 1),
        offpage=st.integers(0, FILE_PAGES - 1),
        perms=st.sampled_from(PERMS),
    )
    def mmap(
        self,
        si: int,
        kind: str,
        n: int,
        mode: str,
        page: int,
        offpage: int,
        perms: str,
    ) -> None:
        sp = self.space(si)
        opts, pages = self._new_pages(kind, n, offpage, PERMS_BY_NAME[perms])
        length = n * P
        want_addr = MIN + page * P
        if mode == "fixed":
            opts = dataclasses.replace(opts, addr=want_addr, fixed=True, unmap=True)
        elif mode == "noreplace":
            opts = dataclasses.replace(
                opts, addr=want_addr, fixed=True, no_replace=True
            )
        elif mode == "fixed_keep":
            opts = dataclasses.replace(opts, addr=want_addr, fixed=True)
        got, exc = self.call(sp.asp.mmap(opts))
        # The model's answer.
        expect_err: str | None = None
        if mode == "auto":
            addr = sp.lowest_free(length)
            if addr is None:
                expect_err = "ENOMEM"
        else:
            addr = want_addr
            if want_addr + length > MAX:
                expect_err = "ENOMEM"
            elif mode == "noreplace" and not sp.is_free(addr, addr + length):
                expect_err = "EEXIST"
            elif mode == "fixed_keep" and not sp.is_free(addr, addr + length):
                expect_err = "ENOMEM"
        assert _err(exc) == expect_err, (opts, got, exc, expect_err)
        if expect_err is not None:
            return
        assert got == addr, (hex(got), hex(addr) if addr else addr, opts)
        assert addr is not None
        sp.unmap(addr, addr + length)
        for i, pg in enumerate(pages):
            sp.pages[addr + i * P] = pg

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(0, NPAGES - 1),
        n=st.integers(1, 8),
        pick=st.integers(0, 1 << 16),
    )
    def munmap(self, si: int, page: int, n: int, pick: int) -> None:
        sp = self.space(si)
        addr = self.pick_page(sp, pick, page)
        self.run(sp.asp.munmap(addr, n * P))
        sp.unmap(addr, addr + n * P)

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(0, NPAGES - 1),
        old_n=st.integers(1, 4),
        new_n=st.integers(1, 6),
        move=st.sampled_from(list(MRemapMove)),
        new_page=st.integers(0, NPAGES - 1),
        pick=st.integers(0, 1 << 16),
    )
    def mremap(
        self,
        si: int,
        page: int,
        old_n: int,
        new_n: int,
        move: MRemapMove,
        new_page: int,
        pick: int,
    ) -> None:
        sp = self.space(si)
        old = self.pick_page(sp, pick, page)
        if old in sp.pages and pick % 3:
            # Mostly stay inside one vma, which is what mremap can move.
            old_n = min(old_n, (sp.run_of(old)[1] - old) // P)
        new_addr = MIN + new_page * P if move is MRemapMove.MUST_MOVE else 0
        got, exc = self.call(
            sp.asp.mremap(old, old_n * P, new_n * P, move=move, new_addr=new_addr)
        )
        expect_addr, expect_err = self._model_mremap(
            sp, old, old_n * P, new_n * P, move, new_addr
        )
        assert _err(exc) == expect_err, (
            hex(old),
            old_n,
            new_n,
            move,
            hex(new_addr),
            got,
            exc,
            expect_err,
        )
        if expect_err is None:
            assert got == expect_addr, (hex(got), hex(expect_addr))

    def _model_mremap(
        self,
        sp: SpaceModel,
        old: int,
        old_len: int,
        new_len: int,
        move: MRemapMove,
        new_addr: int,
    ) -> tuple[int, str | None]:
        """gVisor's MRemap (gvisor-semantics §6.6) in Linux's order, on the model."""
        if old not in sp.pages:
            return 0, "EFAULT"
        old_end = old + old_len
        if move is not MRemapMove.MUST_MOVE:
            if new_len <= old_len:
                sp.unmap(old + new_len, old_end)
                return old, None
            _, run_end = sp.run_of(old)
            if run_end < old_end:
                return 0, "EFAULT"
            grow_end = old + new_len
            if grow_end <= MAX and sp.is_free(old_end, grow_end):
                last = sp.pages[old_end - P]
                for i, a in enumerate(range(old_end, grow_end, P)):
                    off = 0 if last.src is None else last.off + (i + 1) * P
                    # gVisor grows in place by creating a new vma from MMapOpts,
                    # which carry no dontfork flag.
                    sp.pages[a] = dataclasses.replace(
                        last, off=off, data=None, cands=frozenset(), dontfork=False
                    )
                return old, None
            if move is MRemapMove.NO_MOVE:
                return 0, "ENOMEM"
            dest = sp.lowest_free(new_len)
            if dest is None:
                return 0, "ENOMEM"
        else:
            dest = new_addr
            if old < dest + new_len and dest < old_end:
                return 0, "EINVAL"
            if dest + new_len > MAX:
                return 0, "ENOMEM"
            # Checked before anything is unmapped (Linux's order): the part
            # of the old range that is kept must be one vma.
            kept_end = min(old_end, old + new_len)
            _, run_end = sp.run_of(old)
            if run_end < kept_end:
                return 0, "EFAULT"
            sp.unmap(dest, dest + new_len)
            sp.unmap(kept_end, old_end)
            old_end = kept_end
        _, run_end = sp.run_of(old)
        if run_end < old_end:
            return 0, "EFAULT"
        moved = [sp.pages.pop(a) for a in range(old, old_end, P)]
        first = moved[0]
        for i in range(new_len // P):
            if i < len(moved):
                sp.pages[dest + i * P] = moved[i]
            else:
                off = 0 if first.src is None else first.off + i * P
                sp.pages[dest + i * P] = dataclasses.replace(
                    first, off=off, data=None, cands=frozenset()
                )
        return dest, None

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(0, NPAGES - 1),
        n=st.integers(0, 4),
        perms_name=st.sampled_from(PERMS),
        pick=st.integers(0, 1 << 16),
    )
    def mprotect(self, si: int, page: int, n: int, perms_name: str, pick: int) -> None:
        perms = PERMS_BY_NAME[perms_name]
        sp = self.space(si)
        addr = self.pick_page(sp, pick, page)
        _, exc = self.call(sp.asp.mprotect(addr, n * P, perms))
        expect: str | None = None
        if n and addr not in sp.pages:
            expect = "ENOMEM"
        elif n:
            for a in range(addr, addr + n * P, P):
                pg = sp.pages.get(a)
                if pg is None:
                    expect = "ENOMEM"
                    break
                if not pg.max_perms.superset_of(perms.effective()):
                    expect = "EACCES"
                    break
                sp.pages[a] = dataclasses.replace(pg, perms=perms)
        assert _err(exc) == expect, (hex(addr), n, perms, exc, expect)

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(0, NPAGES - 1),
        n=st.integers(1, 4),
        advice=st.sampled_from([Advice.DONTNEED, Advice.DONTFORK, Advice.DOFORK]),
        pick=st.integers(0, 1 << 16),
    )
    def madvise(self, si: int, page: int, n: int, advice: Advice, pick: int) -> None:
        sp = self.space(si)
        addr = self.pick_page(sp, pick, page)
        _, exc = self.call(sp.asp.madvise(addr, n * P, advice))
        hole = False
        for a in range(addr, addr + n * P, P):
            pg = sp.pages.get(a)
            if pg is None:
                hole = True
                continue
            if advice is Advice.DONTNEED:
                if pg.private:
                    sp.pages[a] = dataclasses.replace(pg, data=None, cands=frozenset())
            else:
                sp.pages[a] = dataclasses.replace(
                    pg, dontfork=advice is Advice.DONTFORK
                )
        assert _err(exc) == ("ENOMEM" if hole else None), (hex(addr), n, advice, exc)

    # ------------------------------------------------------------------
    # copies

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(-1, NPAGES),
        inpage=st.one_of(st.just(0), st.integers(0, P - 1)),
        n=st.one_of(st.integers(0, 64), st.integers(0, 3 * P)),
        ignore=st.booleans(),
        pick=st.integers(0, 1 << 16),
    )
    def copy_in(
        self, si: int, page: int, inpage: int, n: int, ignore: bool, pick: int
    ) -> None:
        sp = self.space(si)
        addr = self.pick_page(sp, pick, page) + inpage
        self.resolve(sp, addr, addr + n)
        got, exc = self.call(sp.asp.copy_in(addr, n, ignore_permissions=ignore))
        if addr + n > MAX:
            assert isinstance(exc, MemoryFault), exc
            assert exc.errno == errno.EFAULT
            assert exc.bytes_done == 0
            return
        want, kind = sp.read(addr, n, ignore)
        if kind is None:
            assert exc is None, (hex(addr), n, exc)
            assert got == want
            return
        assert _err(exc) == kind, (hex(addr), n, ignore, exc, kind)
        assert exc is not None
        assert exc.bytes_done == len(want), (exc.bytes_done, len(want))
        assert exc.data == want  # type: ignore[union-attr]

    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        page=st.integers(-1, NPAGES),
        inpage=st.one_of(st.just(0), st.integers(0, P - 1)),
        n=st.one_of(st.integers(0, 64), st.integers(0, 3 * P)),
        seed=st.integers(0, 255),
        ignore=st.booleans(),
        zero=st.booleans(),
        pick=st.integers(0, 1 << 16),
    )
    def copy_out(
        self,
        si: int,
        page: int,
        inpage: int,
        n: int,
        seed: int,
        ignore: bool,
        zero: bool,
        pick: int,
    ) -> None:
        sp = self.space(si)
        addr = self.pick_page(sp, pick, page) + inpage
        data = bytes(n) if zero else _pattern(seed, n)
        self.resolve(sp, addr, addr + n)
        if zero:
            got, exc = self.call(sp.asp.zero_out(addr, n, ignore_permissions=ignore))
        else:
            got, exc = self.call(sp.asp.copy_out(addr, data, ignore_permissions=ignore))
        if addr + n > MAX:
            assert isinstance(exc, MemoryFault), exc
            assert exc.errno == errno.EFAULT
            assert exc.bytes_done == 0
            return
        done, kind = sp.write(addr, data, ignore)
        if kind is None:
            assert exc is None, (hex(addr), n, ignore, exc)
            assert got == n
            return
        assert _err(exc) == kind, (hex(addr), n, ignore, exc, kind)
        assert exc is not None
        assert exc.bytes_done == done, (exc.bytes_done, done)  # type: ignore[union-attr]

    @precondition(lambda self: any(sp.pages for sp in self.spaces))
    @rule(
        si=st.integers(0, MAX_SPACES - 1),
        pick=st.integers(0, 1 << 16),
        inpage=st.integers(0, P - 1),
        n=st.integers(1, 64),
        seed=st.integers(0, 255),
        ignore=st.booleans(),
    )
    def write_page(
        self, si: int, pick: int, inpage: int, n: int, seed: int, ignore: bool
    ) -> None:
        """A short write inside one mapped page (breaks copy-on-write often)."""
        sp = self.space(si)
        if not sp.pages:
            return
        mapped = sorted(sp.pages)
        addr = mapped[pick % len(mapped)] + min(inpage, P - n)
        data = _pattern(seed, n)
        self.resolve(sp, addr, addr + n)
        _, exc = self.call(sp.asp.copy_out(addr, data, ignore_permissions=ignore))
        done, kind = sp.write(addr, data, ignore)
        assert _err(exc) == kind, (hex(addr), n, ignore, exc, kind)
        if exc is not None:
            assert exc.bytes_done == done  # type: ignore[attr-defined]

    # ------------------------------------------------------------------
    # fork and exit

    @precondition(lambda self: len(self.spaces) < MAX_SPACES)
    @rule(si=st.integers(0, MAX_SPACES - 1))
    def fork(self, si: int) -> None:
        sp = self.space(si)
        child = self.run(sp.asp.fork())
        pages = {a: pg for a, pg in sp.pages.items() if not pg.dontfork}
        self.spaces.append(SpaceModel(child, pages, self.src_changing))

    @precondition(lambda self: len(self.spaces) > 1)
    @rule(si=st.integers(0, MAX_SPACES - 1))
    def close_space(self, si: int) -> None:
        sp = self.spaces.pop(si % len(self.spaces))
        self.run(sp.asp.aclose())
        assert sp.asp.closed

    # ------------------------------------------------------------------
    # the Mappables themselves

    @rule(
        which=st.sampled_from(["shm", "rw"]),
        off=st.integers(0, FILE_PAGES * P - 1),
        n=st.integers(1, 2 * P),
        seed=st.integers(0, 255),
    )
    def file_write(self, which: str, off: int, n: int, seed: int) -> None:
        src = self.src_shm if which == "shm" else self.src_rw
        n = min(n, len(src.data) - off)
        if n <= 0:
            return
        data = _pattern(seed + 100, n)
        self.src_changing(src, off, off + n)
        assert self.run(src.obj.write(off, data)) == n
        src.data[off : off + n] = data

    @rule(size_pages=st.integers(2, FILE_PAGES))
    def shm_truncate(self, size_pages: int) -> None:
        size = size_pages * P
        self.run(self.shm.truncate(size))
        src = self.src_shm
        if size < len(src.data):
            del src.data[size:]
            # Truncation invalidates with invalidate_private=True: private
            # copies past the new end are gone too (Linux evencows).
            for sp in self.spaces:
                for a, pg in list(sp.pages.items()):
                    if pg.src is src and pg.off >= size and pg.private:
                        sp.pages[a] = dataclasses.replace(
                            pg, data=None, cands=frozenset()
                        )
        else:
            src.data.extend(bytes(size - len(src.data)))

    # ------------------------------------------------------------------
    # checks

    def _check_contents(self, sp: SpaceModel, pages: list[int]) -> None:
        """Compare the model with copy_in(ignore_permissions=True) per run."""
        for a in pages:
            self.resolve(sp, a, a + P)
        i = 0
        while i < len(pages):
            a = pages[i]
            pg = sp.pages[a]
            if pg.data is None and pg.src is not None and pg.off >= pg.src.eof:
                _, exc = self.call(sp.asp.copy_in(a, P, ignore_permissions=True))
                assert isinstance(exc, BusError), (hex(a), pg, exc)
                assert exc.bytes_done == 0
                i += 1
                continue
            j = i + 1
            while j < len(pages) and pages[j] == pages[j - 1] + P:
                q = sp.pages[pages[j]]
                if q.data is None and q.src is not None and q.off >= q.src.eof:
                    break
                j += 1
            want, kind = sp.read(a, (j - i) * P, True)
            assert kind is None
            got, exc = self.call(
                sp.asp.copy_in(a, (j - i) * P, ignore_permissions=True)
            )
            assert exc is None, (hex(a), j - i, exc)
            if got != want:
                for k in range(j - i):
                    if got[k * P : (k + 1) * P] != want[k * P : (k + 1) * P]:
                        raise AssertionError(
                            f"page {a + k * P:#x} ({sp.pages[a + k * P]}) differs"
                        )
            i = j

    def _check_space(self, sp: SpaceModel) -> None:
        asp = sp.asp
        asp.check_invariants()
        s = asp.statistics()
        assert s.usage_as == len(sp.pages) * P, (s.usage_as, len(sp.pages) * P)
        data_as = sum(P for pg in sp.pages.values() if pg.private and pg.perms.write)
        assert s.data_as == data_as, (s.data_as, data_as)
        nruns = sum(1 for _ in sp.runs())
        assert s.vmas == nruns, (s.vmas, nruns, asp.maps())
        assert s.max_rss >= s.rss
        assert s.max_rss >= sp.max_rss
        assert s.cow_copies >= sp.cow_copies
        sp.max_rss, sp.cow_copies = s.max_rss, s.cow_copies
        assert asp.maps().count("\n") == nruns + 1

    @invariant()
    def check(self) -> None:
        self.steps += 1
        for sp in self.spaces:
            self._check_space(sp)
            mapped = sorted(sp.pages)
            sample = [a for a in mapped if self.rng.random() < 0.25]
            self._check_contents(sp, sample)
            self._check_space(sp)
        self.mf.check_invariants()
        for src in (self.src_shm, self.src_rw, self.src_ro):
            got = self.run(src.obj.read(0, FILE_PAGES * P + P))
            assert got == bytes(src.data), src
        # Private writes never reach a backing.
        assert self.ro_backing.data == self.ro_original

    def teardown(self) -> None:
        try:
            for sp in self.spaces:
                self._check_space(sp)
                self._check_contents(sp, sorted(sp.pages))
            for sp in self.spaces:
                self.run(sp.asp.aclose())
            self.spaces.clear()
            assert not self.shm.is_mapped()
            assert not self.cf_ro.is_mapped()
            assert not self.cf_rw.is_mapped()
            self.run(self.shm.aclose())
            self.run(self.cf_ro.aclose())
            self.run(self.cf_rw.aclose())
            assert self.rw_backing.data == bytes(self.src_rw.data)
            assert self.ro_backing.data == self.ro_original
            stats = self.mf.statistics()
            assert stats.used_bytes == 0, stats
            assert all(v == 0 for v in stats.bytes_by_kind.values()), stats
        finally:
            for sp in self.spaces:
                with contextlib.suppress(Exception):  # cleanup after a failure
                    self.run(sp.asp.aclose())
            self.mf.close()
            self.loop.close()


AddressSpaceMachine.TestCase.settings = settings(
    settings.default, max_examples=100, stateful_step_count=50
)
TestAddressSpaceMachine = AddressSpaceMachine.TestCase
