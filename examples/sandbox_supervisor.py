"""A tiny sandbox supervisor: a guest address space with mmap, fork and COW.

The supervisor gives a guest an :class:`~aiomemmap.AddressSpace` and plays
the guest's system calls against it, as a gVisor-like syscall emulator
would:

* ``mmap`` a file privately (a :class:`~aiomemmap.CachedFile` over bytes in
  memory) and an anonymous region, and write to them;
* ``fork``: the child shares the private pages copy-on-write; when the
  parent writes afterwards, the child still sees the old bytes;
* ``mprotect`` to read-only: a write fault now fails with ``EPERM``;
* a fault at an address where nothing is mapped fails with ``EFAULT``;
* ``/proc/pid/maps`` of both processes.

Run it with ``python examples/sandbox_supervisor.py``.
"""

from __future__ import annotations

import asyncio
import errno

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    BytesBacking,
    CachedFile,
    Layout,
    MemoryFault,
    MemoryFile,
    MMapOpts,
)

# Small addresses keep the maps readable.
LAYOUT = Layout(
    min_addr=0x10000, max_addr=1 << 32, bottom_up_base=0x10000, top_down_base=1 << 32
)
LIBRARY = b"\x7fELF guest library, read from a file\n".ljust(4 * PAGE_SIZE, b".")


def errno_name(exc: OSError) -> str:
    """``EFAULT`` for ``errno.EFAULT``, and so on."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


async def fault(asp: AddressSpace, addr: int, at: AccessType) -> str:
    """Deliver a page fault as the supervisor would, and name the outcome."""
    try:
        await asp.handle_fault(addr, at)
    except MemoryFault as exc:
        return f"SIGSEGV ({errno_name(exc)})"
    return "resolved"


async def main() -> None:
    with MemoryFile("sandbox") as mf:
        library = CachedFile(BytesBacking(LIBRARY), mf, name="/usr/lib/libguest.so")
        parent = AddressSpace(mf, layout=LAYOUT)
        child: AddressSpace | None = None
        try:
            # The guest maps the library privately (writable, as for its
            # data segment) and some anonymous heap.
            lib = await parent.mmap(
                MMapOpts(
                    length=len(LIBRARY),
                    mappable=library,
                    mapping_identity=library,
                    private=True,
                    perms=AccessType.READ_WRITE,
                    max_perms=AccessType.ANY,
                )
            )
            heap = await parent.mmap(MMapOpts(length=2 * PAGE_SIZE, private=True))
            await parent.copy_out(heap, b"parent heap v1")
            await parent.copy_out(lib + PAGE_SIZE, b"patched v1")
            print(f"library at {lib:#x}, heap at {heap:#x}")
            print("library starts:", await parent.copy_in(lib, 18))

            # fork(): the child shares every private page copy-on-write.
            child = await parent.fork()
            await parent.copy_out(heap, b"parent heap v2")
            await parent.copy_out(lib + PAGE_SIZE, b"patched v2")
            child_heap = await child.copy_in(heap, 14)
            child_lib = await child.copy_in(lib + PAGE_SIZE, 10)
            print(
                "after the parent wrote, the child still sees:", child_heap, child_lib
            )
            assert child_heap == b"parent heap v1"
            assert child_lib == b"patched v1"
            assert await parent.copy_in(heap, 14) == b"parent heap v2"
            # Private writes never reach the file.
            assert (
                await library.read(PAGE_SIZE, 10) == LIBRARY[PAGE_SIZE : PAGE_SIZE + 10]
            )
            print("copy-on-write copies so far:", parent.statistics().cow_copies)

            # mprotect(PROT_READ): reads still work, a write fault is EPERM.
            await parent.mprotect(heap, 2 * PAGE_SIZE, AccessType.READ)
            print(
                "read fault on the read-only heap:",
                await fault(parent, heap, AccessType.READ),
            )
            outcome = await fault(parent, heap, AccessType.WRITE)
            print("write fault on the read-only heap:", outcome)
            assert outcome == "SIGSEGV (EPERM)"

            # Nothing is mapped at 0x9000_0000: EFAULT, as for a wild pointer.
            outcome = await fault(parent, 0x9000_0000, AccessType.READ)
            print("fault at an unmapped address:", outcome)
            assert outcome == "SIGSEGV (EFAULT)"
            try:
                await child.copy_in(0x9000_0000, 8)
            except MemoryFault as exc:
                print(f"copy_in there fails too: errno {errno_name(exc)}")

            print("parent /proc/pid/maps:")
            print(parent.maps(), end="")
            print("child /proc/pid/maps:")
            print(child.maps(), end="")
            parent.check_invariants()
            child.check_invariants()
            print("parent:", parent.statistics())
        finally:
            if child is not None:
                await child.aclose()
            await parent.aclose()
            await library.aclose()
        assert mf.statistics().used_bytes == 0
    print("done: both processes exited and every page was returned")


if __name__ == "__main__":
    asyncio.run(main())
