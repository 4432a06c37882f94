"""Our side: the same operations through :class:`aiomemmap.AddressSpace`.

:func:`run_model` runs a sequence in a fresh space whose :class:`Layout` is
the window, with the file as a :class:`SharedMemory` holding the same bytes
under the memfd's name, and returns a trace of the shape of
:meth:`LinuxGuest.run <tests.linux_oracle.driver.LinuxGuest.run>`: one
``[outcome, maps]`` per operation, then the closing read-back; each step
and the read-back also list the pages that ``COPY_ON_WRITE_WINDOW`` (in
:mod:`tests.linux_oracle.differences`) allows to differ.

Outcomes: ``["ok", ...]`` with the result; ``["err", "EINVAL"]`` for an
:class:`AddressSpaceError`; ``["fault", errno, bytes_done, ...]`` for a copy
that stopped early; ``["exc", "ValueError"]`` for any other exception (Linux
never gives one, so it always differs). After each operation the space's
``check_invariants()`` runs; a broken invariant is an ``exc`` outcome too.
"""

from __future__ import annotations

import errno
from typing import Any

from aiomemmap import (
    AccessType,
    AddressSpace,
    AddressSpaceError,
    Advice,
    BusError,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
    MRemapMove,
    SharedMemory,
)
from tests.linux_oracle.differences import (
    ELSEWHERE,
    MOVED,
    largest_gap,
    normalise_maps,
    placeable,
)
from tests.linux_oracle.driver import errno_name
from tests.linux_oracle.ops import (
    Dontneed,
    Fork,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    Op,
    Read,
    Write,
    pattern,
)
from tests.linux_oracle.window import (
    FILE_NAME,
    FILE_SIZE,
    WINDOW_BASE,
    WINDOW_PAGES,
    WINDOW_SIZE,
    P,
    file_contents,
)

__all__ = ["ModelSide", "run_model"]

_U64 = (1 << 64) - 1
_MOVES = {
    "no": MRemapMove.NO_MOVE,
    "may": MRemapMove.MAY_MOVE,
    "must": MRemapMove.MUST_MOVE,
}
LAYOUT = Layout(
    min_addr=WINDOW_BASE,
    max_addr=WINDOW_BASE + WINDOW_SIZE,
    bottom_up_base=WINDOW_BASE,
    top_down_base=WINDOW_BASE + WINDOW_SIZE,
)


def _abs(rel: int) -> int:
    return (WINDOW_BASE + rel) & _U64


def _perms(prot: str) -> AccessType:
    return AccessType(prot[0] == "r", prot[1] == "w", prot[2] == "x")


def _pages(n: int) -> int:
    return (n + P - 1) & ~(P - 1)


def _exc(exc: BaseException) -> list[Any]:
    if isinstance(exc, AddressSpaceError) and exc.errno is not None:
        return ["err", errno_name(exc.errno)]
    return ["exc", type(exc).__name__]


class ModelSide:
    """One address space (the parent's or a forked child's) running operations.

    Args:
        asp: The space.
        file: The mapped file.
    """

    def __init__(self, asp: AddressSpace, file: SharedMemory) -> None:
        self.asp = asp
        self.file = file
        self.kept: list[ModelSide] = []
        # COPY_ON_WRITE_WINDOW: pages of private file mappings that a write
        # copied without writing them (window offsets).
        self.window_copies: set[int] = set()

    def maps(self) -> list[str]:
        return normalise_maps(self.asp.maps())

    async def mmap(self, op: Mmap) -> list[Any]:
        file = op.kind in ("fp", "fs")
        opts = MMapOpts(
            length=op.length,
            mappable=self.file if file else None,
            mapping_identity=self.file if file else None,
            offset=op.offset if file else 0,
            addr=_abs(op.addr) if op.place != "none" else 0,
            fixed=op.place in ("fixed", "noreplace"),
            unmap=op.place == "fixed",
            no_replace=op.place == "noreplace",
            perms=_perms(op.prot),
            private=op.kind in ("ap", "fp"),
        )
        room = largest_gap(self.asp.maps())
        try:
            addr = await self.asp.mmap(opts)
        except AddressSpaceError as exc:
            # KERNEL_PLACEMENT: the kernel would have placed it outside.
            chosen = op.place in ("hint", "none")
            if (
                chosen
                and exc.errno == errno.ENOMEM
                and placeable(op.length)
                and room < _pages(op.length)
            ):
                return ["ok", ELSEWHERE]
            raise
        if op.place in ("fixed", "noreplace"):
            return ["ok", addr - WINDOW_BASE]
        if op.place == "hint" and addr == _abs(op.addr & ~(P - 1)):
            return ["ok", addr - WINDOW_BASE]
        await self.asp.munmap(addr, _pages(op.length))
        return ["ok", ELSEWHERE]

    async def mremap(self, op: Mremap) -> list[Any]:
        old = _abs(op.addr)
        new_addr = _abs(op.new_addr) if op.move == "must" else 0
        room = largest_gap(self.asp.maps())
        try:
            res = await self.asp.mremap(
                old, op.old_size, op.new_size, move=_MOVES[op.move], new_addr=new_addr
            )
        except AddressSpaceError as exc:
            # KERNEL_PLACEMENT: the kernel would have moved it outside.
            grows = _pages(op.new_size) > _pages(op.old_size)
            if (
                op.move == "may"
                and exc.errno == errno.ENOMEM
                and grows
                and placeable(op.new_size)
                and room < _pages(op.new_size)
            ):
                if op.old_size:
                    await self.asp.munmap(old, _pages(op.old_size))
                return ["ok", MOVED]
            raise
        if res != old:
            self._move_window_copies(old, op.old_size, op.new_size, res)
        if res == old or op.move == "must":
            return ["ok", res - WINDOW_BASE]
        await self.asp.munmap(res, _pages(op.new_size))
        return ["ok", MOVED]

    async def read(self, addr: int, length: int) -> list[Any]:
        try:
            data = await self.asp.copy_in(_abs(addr), length)
        except (MemoryFault, BusError) as exc:
            return ["fault", "EFAULT", exc.bytes_done, (exc.data or b"").hex()]
        return ["ok", data.hex()]

    def _move_window_copies(
        self, old: int, old_size: int, new_size: int, new: int
    ) -> None:
        """Carry the window copies of a moved range to its new place."""
        kept = _pages(min(old_size, new_size))
        lo = old - WINDOW_BASE
        delta = new - old
        moved = {a for a in self.window_copies if lo <= a < lo + kept}
        self.window_copies -= moved
        self.window_copies |= {a + delta for a in moved}

    async def write(self, op: Write) -> list[Any]:
        before = _private_file_copies(self.asp)
        try:
            done = await self.asp.copy_out(_abs(op.addr), pattern(op.fill, op.length))
            out: list[Any] = ["ok", done]
        except (MemoryFault, BusError) as exc:
            done = exc.bytes_done
            out = ["fault", "EFAULT", done]
        written = set(range(op.addr & ~(P - 1), op.addr + done, P)) if done else set()
        self.window_copies |= _private_file_copies(self.asp) - before - written
        return out

    async def fork(self, op: Fork) -> list[Any]:
        child = ModelSide(await self.asp.fork(), self.file)
        child.window_copies = set(self.window_copies)
        steps = [await child.step(o) for o in op.ops]
        if op.keep:
            self.kept.append(child)
        else:
            await child.asp.aclose()
        return ["fork", steps]

    async def outcome(self, op: Op) -> list[Any]:
        asp = self.asp
        try:
            match op:
                case Mmap():
                    return await self.mmap(op)
                case Munmap(addr, length):
                    await asp.munmap(_abs(addr), length)
                    return ["ok"]
                case Mprotect(addr, length, prot):
                    await asp.mprotect(_abs(addr), length, _perms(prot))
                    return ["ok"]
                case Mremap():
                    return await self.mremap(op)
                case Dontneed(addr, length):
                    await asp.madvise(_abs(addr), length, Advice.DONTNEED)
                    return ["ok"]
                case Read(addr, length):
                    return await self.read(addr, length)
                case Write():
                    return await self.write(op)
                case Fork():
                    return await self.fork(op)
        except Exception as exc:
            return _exc(exc)

    async def step(self, op: Op) -> list[Any]:
        """Run ``op``; return ``[outcome, maps, window copies]``.

        The third element has no counterpart on Linux's side: the pages
        :data:`COPY_ON_WRITE_WINDOW` allows to differ.
        """
        out = await self.outcome(op)
        try:
            self.asp.check_invariants()
        except Exception as exc:
            out = ["exc", f"{type(exc).__name__} after {out!r}: {exc}"]
        self.window_copies &= _private_file_copies(self.asp)
        return [out, self.maps(), sorted(self.window_copies)]

    async def sweep(self) -> list[list[Any]]:
        return [await self.read(i * P, P) for i in range(WINDOW_PAGES)]

    async def final(self) -> list[Any]:
        """Return the closing read-back, then the window copies of each space.

        Linux's has the first four elements only.
        """
        file = await self.file.read(0, FILE_SIZE + P)
        children = [await child.sweep() for child in self.kept]
        copies = [sorted(side.window_copies) for side in (self, *self.kept)]
        return ["final", await self.sweep(), file.hex(), children, copies]

    async def aclose(self) -> None:
        for child in self.kept:
            await child.asp.aclose()
        self.kept.clear()
        await self.asp.aclose()


def _private_file_copies(asp: AddressSpace) -> set[int]:
    """Return the pages of private file mappings holding private copies."""
    out: set[int] = set()
    pmas = asp._pmas.segs
    for vseg in asp._vmas.segs:
        vma = vseg.value
        if vma.mappable is None or not vma.private:
            continue
        for pseg in pmas.segments(vseg.start, vseg.end):
            if pseg.value.private:
                lo, hi = max(pseg.start, vseg.start), min(pseg.end, vseg.end)
                out.update(range(lo - WINDOW_BASE, hi - WINDOW_BASE, P))
    return out


async def run_model(
    ops: tuple[Op, ...] | list[Op], side: type[ModelSide] = ModelSide
) -> list[Any]:
    """Run a sequence in a fresh space; return its trace.

    Args:
        ops: The sequence.
        side: The class that runs operations (a subclass may change what
            is reported, to check that the tester notices).
    """
    mf = MemoryFile("aiomemmap-oracle")
    try:
        file = SharedMemory(mf, FILE_SIZE, name=FILE_NAME)
        try:
            await file.write(0, file_contents())
            model = side(AddressSpace(mf, layout=LAYOUT), file)
            try:
                trace: list[Any] = [await model.step(op) for op in ops]
                trace.append(await model.final())
            finally:
                await model.aclose()
        finally:
            await file.dec_ref()
    finally:
        mf.close()
    return trace
