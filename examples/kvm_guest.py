"""A minimal KVM virtual machine whose guest RAM is a lazily paged file.

A file (1 MiB of seeded random bytes served over HTTP on 127.0.0.1 by the
package's test server, or any URL or path given on the command line) is
mapped into this process with :func:`aiomemmap.map_file`: a
:class:`~aiomemmap.Region`, real memory whose pages a child engine process
installs through userfaultfd on first touch. That memory becomes guest
physical memory of a one-vCPU KVM virtual machine, read-only. The guest, 22
bytes of hand-assembled x86 code in a second, small memory slot, walks the
file's bytes, folds them into a 32-bit checksum and reports it on an I/O
port. Each first touch of a file page by the vCPU is a fault the kernel
reports on the region's userfaultfd; the engine fetches and installs the
page and the vCPU continues, never knowing. The supervisor (this script)
computes the same checksum from the file's bytes and compares.

Everything KVM needs is done with ``fcntl.ioctl`` on ``/dev/kvm`` and
``ctypes`` structures mirroring ``<linux/kvm.h>``; nothing else is needed.

Run it with ``python examples/kvm_guest.py [URL_OR_PATH] [--stride N]``.
It exits 0 when the checksums match, 1 when they differ, 2 when the KVM
device is not usable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import mmap
import os
import random
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Final

from aiomemmap import map_file
from aiomemmap.tools.http_server import RangeHTTPServer

# -- ioctl numbers ---------------------------------------------------------
#
# Linux encodes an ioctl request as  dir << 30 | size << 16 | type << 8 | nr
# (asm-generic/ioctl.h), with dir 0 = no data, 1 = the caller writes (the
# kernel reads the argument), 2 = the caller reads (the kernel fills it).
# KVM's type byte is 0xAE.

_IOC_NONE: Final = 0
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2
KVMIO: Final = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    """``_IO(KVMIO, nr)``: a request without an argument structure."""
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, struct: type[ctypes.Structure]) -> int:
    """``_IOW(KVMIO, nr, struct)``: the kernel reads ``struct`` from us."""
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _ior(nr: int, struct: type[ctypes.Structure]) -> int:
    """``_IOR(KVMIO, nr, struct)``: the kernel writes ``struct`` for us."""
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


# -- structures of <linux/kvm.h> (x86) ---------------------------------------


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region``: guest physical memory.

    Slot ``slot`` makes ``memory_size`` bytes at ``userspace_addr`` of this
    process the guest's physical memory from ``guest_phys_addr`` on.
    """

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),  # KVM_MEM_READONLY: guest writes exit
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),  # a multiple of the page size
        ("userspace_addr", ctypes.c_uint64),  # page-aligned
    )


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs``: the general registers, ``rip`` and ``rflags``."""

    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in (
            *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"),
            *("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
            *("rip", "rflags"),
        )
    )


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``: a segment register with its hidden part.

    KVM loads the hidden part (base, limit, attributes) directly, so the
    guest needs no descriptor table.
    """

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),  # the descriptor's 4 type bits
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),  # privilege level
        ("db", ctypes.c_uint8),  # 1: 32-bit default operand size
        ("s", ctypes.c_uint8),  # 1: code or data (not a system segment)
        ("l", ctypes.c_uint8),  # 1: 64-bit code
        ("g", ctypes.c_uint8),  # 1: the limit counts 4 KiB units
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    )


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable``: a descriptor table register (GDTR, IDTR)."""

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    )


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs``: segments, control registers, EFER."""

    _fields_ = (
        *(
            (name, KvmSegment)
            for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
        ),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        *(
            (name, ctypes.c_uint64)
            for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
        ),
        # KVM_NR_INTERRUPTS (256) bits of pending interrupts.
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    )


class KvmRunIo(ctypes.Structure):
    """The ``io`` member of ``struct kvm_run``'s exit union (``KVM_EXIT_IO``).

    The data of the access is in the ``kvm_run`` mapping at ``data_offset``.
    """

    _fields_ = (
        ("direction", ctypes.c_uint8),  # KVM_EXIT_IO_OUT: the guest wrote
        ("size", ctypes.c_uint8),  # bytes per access: 1, 2 or 4
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),  # accesses (more than 1 for rep outs)
        ("data_offset", ctypes.c_uint64),
    )


class KvmRunHead(ctypes.Structure):
    """The start of ``struct kvm_run``, the page shared with a vCPU.

    KVM_RUN returns to us with ``exit_reason`` saying why the guest stopped;
    the union that follows (at offset 32) details it. Only the members this
    guest can cause are declared.
    """

    _fields_ = (
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("io", KvmRunIo),
    )


# -- constants of <linux/kvm.h> ----------------------------------------------

KVM_API_VERSION: Final = 12  # the only version there has ever been
KVM_GET_API_VERSION: Final = _io(0x00)
KVM_CREATE_VM: Final = _io(0x01)  # returns a VM descriptor
KVM_CHECK_EXTENSION: Final = _io(0x03)  # > 0 when a capability is present
KVM_GET_VCPU_MMAP_SIZE: Final = _io(0x04)  # the size of a vCPU's kvm_run
KVM_CREATE_VCPU: Final = _io(0x41)  # on the VM; returns a vCPU descriptor
KVM_SET_USER_MEMORY_REGION: Final = _iow(0x46, KvmUserspaceMemoryRegion)
KVM_RUN: Final = _io(0x80)  # on a vCPU: run the guest until an exit
KVM_SET_REGS: Final = _iow(0x82, KvmRegs)
KVM_GET_SREGS: Final = _ior(0x83, KvmSregs)
KVM_SET_SREGS: Final = _iow(0x84, KvmSregs)

# The layouts above must match the kernel's, byte for byte.
assert ctypes.sizeof(KvmUserspaceMemoryRegion) == 32
assert ctypes.sizeof(KvmRegs) == 144
assert ctypes.sizeof(KvmSregs) == 312
assert KvmRunHead.io.offset == 32
assert KVM_SET_USER_MEMORY_REGION == 0x4020_AE46

KVM_CAP_READONLY_MEM: Final = 81
KVM_MEM_READONLY: Final = 1 << 1

KVM_EXIT_IO: Final = 2
KVM_EXIT_HLT: Final = 5
KVM_EXIT_IO_OUT: Final = 1
EXIT_NAMES: Final = {
    0: "KVM_EXIT_UNKNOWN",
    1: "KVM_EXIT_EXCEPTION",
    2: "KVM_EXIT_IO",
    5: "KVM_EXIT_HLT",
    6: "KVM_EXIT_MMIO",
    8: "KVM_EXIT_SHUTDOWN",
    9: "KVM_EXIT_FAIL_ENTRY",
    17: "KVM_EXIT_INTERNAL_ERROR",
}

X86_CR0_PE: Final = 1 << 0  # protected mode
X86_RFLAGS_RESERVED: Final = 1 << 1  # bit 1 of RFLAGS always reads 1

# -- the guest ---------------------------------------------------------------
#
# Guest physical memory:
#   0x000000 .. 0x001000   slot 0, read-write: the guest's code (one page)
#   0x100000 .. +file      slot 1, read-only: the Region (the file)
#
# The vCPU starts directly in 32-bit protected mode with flat segments
# (base 0, limit 4 GiB: CR0.PE and the segments' hidden parts are set through
# KVM_SET_SREGS, so no descriptor table and no boot code are needed) and
# paging off: guest addresses are guest physical addresses.
#
# Where KVM has no hardware support and emulates code that runs without
# paging one instruction at a time, a scan of 1 MiB takes a few seconds.
#
# On entry: esi = address of the first byte, ecx = how many bytes to read,
# ebx = the distance between them, eax = 0. For each byte b the guest sets
# eax = rol(eax, 5) xor b; then it writes eax to port REPORT_PORT and halts.

CODE_ADDRESS: Final = 0x000000
CODE_SLOT_SIZE: Final = 0x1000
FILE_ADDRESS: Final = 0x100000
# The file must fit below 4 GiB, where 32-bit addresses end.
MAX_FILE_SIZE: Final = 0xC000_0000
REPORT_PORT: Final = 0xE9

GUEST_CODE: Final = bytes(
    (
        # 00: jecxz +0x0d (to 0x0f)          nothing to read: report 0
        0xE3, 0x0D,
        # 02: movzx edx, byte [esi]          ModRM 00 010 110: edx <- [esi]
        0x0F, 0xB6, 0x16,
        # 05: rol eax, 5                     ModRM 11 000 000: /0 on eax
        0xC1, 0xC0, 0x05,
        # 08: xor eax, edx                   ModRM 11 010 000: eax ^= edx
        0x31, 0xD0,
        # 0a: add esi, ebx                   ModRM 11 011 110: esi += ebx
        0x01, 0xDE,
        # 0c: dec ecx                        one-byte form (32-bit code)
        0x49,
        # 0d: jnz -0x0d (to 0x02)            more bytes to read
        0x75, 0xF3,
        # 0f: mov edx, REPORT_PORT           imm32, little-endian
        0xBA, REPORT_PORT & 0xFF, REPORT_PORT >> 8, 0x00, 0x00,
        # 14: out dx, eax                    exits to us: KVM_EXIT_IO
        0xEF,
        # 15: hlt                            exits to us: KVM_EXIT_HLT
        0xF4,
    )
)  # fmt: skip

# Exits allowed before the guest is declared lost: one for the report, one
# for the halt; a vCPU may also come back early for a signal.
MAX_EXITS: Final = 64


class KvmUnavailable(OSError):
    """The KVM device cannot run a guest on this host."""


class GuestError(RuntimeError):
    """The guest stopped other than by reporting a checksum and halting."""


def checksum(data: bytes | memoryview, stride: int = 1) -> int:
    """Compute what the guest computes, from the bytes themselves.

    Args:
        data: The file's bytes.
        stride: Read every ``stride``-th byte, from the first (``>= 1``).

    Returns:
        The 32-bit checksum: for each byte ``b`` read,
        ``h = rol32(h, 5) ^ b``, from ``h = 0``.
    """
    h = 0
    for b in bytes(data[::stride]):
        h = (((h << 5) | (h >> 27)) & 0xFFFF_FFFF) ^ b
    return h


def _ioctl(fd: int, request: int, arg: int | ctypes.Structure = 0) -> int:
    """Issue ``request`` on ``fd``, retrying when a signal interrupts it."""
    while True:
        try:
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue


def open_vm(device: str = "/dev/kvm") -> tuple[int, int]:
    """Open the KVM device and create a virtual machine.

    Args:
        device: The KVM device's path.

    Returns:
        ``(kvm_fd, vm_fd)``; the caller closes both.

    Raises:
        KvmUnavailable: The device cannot be opened, speaks another API, or
            refuses a VM or read-only memory.
    """
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise KvmUnavailable(f"{device} is not usable: {exc.strerror}") from exc
    try:
        try:
            version = _ioctl(kvm, KVM_GET_API_VERSION)
        except OSError as exc:
            raise KvmUnavailable(
                f"{device} is not usable: it is not a KVM device ({exc.strerror})"
            ) from exc
        if version != KVM_API_VERSION:
            raise KvmUnavailable(
                f"{device} is not usable: KVM API version {version}, "
                f"not {KVM_API_VERSION}"
            )
        if _ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0:
            raise KvmUnavailable(f"{device} is not usable: no read-only memory")
        try:
            vm = _ioctl(kvm, KVM_CREATE_VM, 0)
        except OSError as exc:
            raise KvmUnavailable(
                f"{device} is not usable: KVM_CREATE_VM failed ({exc.strerror})"
            ) from exc
    except BaseException:
        os.close(kvm)
        raise
    return kvm, vm


def _flat_segment(selector: int, code: bool) -> KvmSegment:
    """A 32-bit segment covering all 4 GiB from address 0."""
    return KvmSegment(
        base=0,
        limit=0xFFFF_FFFF,
        selector=selector,
        # 0xB: code, execute/read, accessed; 0x3: data, read/write, accessed.
        type=0xB if code else 0x3,
        present=1,
        dpl=0,
        db=1,
        s=1,
        l=0,
        g=1,
    )


def run_guest(
    address: int, size: int, stride: int = 1, device: str = "/dev/kvm"
) -> int:
    """Run the guest over ``size`` bytes of memory at ``address`` of this process.

    The memory becomes read-only guest physical memory at ``FILE_ADDRESS``;
    the guest reads every ``stride``-th byte of its first ``size`` bytes.

    Args:
        address: Page-aligned address of the memory (``Region.address``);
            the memory must stay mapped until this returns.
        size: Bytes to checksum (``1 <= size <= MAX_FILE_SIZE``); the
            mapping covers them rounded up to whole pages.
        stride: The distance between bytes read (``>= 1``).
        device: The KVM device's path.

    Returns:
        The checksum the guest reported.

    Raises:
        ValueError: Bad arguments.
        KvmUnavailable: The device cannot run a guest.
        GuestError: The guest stopped without reporting, or reported twice.
        OSError: An ioctl failed (e.g. ``EFAULT`` when a page of the memory
            could not be served).
    """
    page = mmap.PAGESIZE
    if address % page:
        raise ValueError(f"run_guest: address {address:#x} is not page-aligned")
    if not 1 <= size <= MAX_FILE_SIZE:
        raise ValueError(f"run_guest: size must be in [1, {MAX_FILE_SIZE}], got {size}")
    if stride < 1:
        raise ValueError(f"run_guest: stride must be >= 1, got {stride}")
    kvm, vm = open_vm(device)
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, kvm)
        stack.callback(os.close, vm)

        # Slot 0: a page of anonymous memory holding the code.
        code = stack.enter_context(mmap.mmap(-1, CODE_SLOT_SIZE))
        code[: len(GUEST_CODE)] = GUEST_CODE
        code_address = ctypes.addressof(ctypes.c_char.from_buffer(code))
        # (the address is all we keep; the ctypes export is dropped at once)
        _ioctl(
            vm,
            KVM_SET_USER_MEMORY_REGION,
            KvmUserspaceMemoryRegion(
                slot=0,
                flags=0,
                guest_phys_addr=CODE_ADDRESS,
                memory_size=CODE_SLOT_SIZE,
                userspace_addr=code_address,
            ),
        )
        # Slot 1: the file, read-only (the Region is mapped PROT_READ; a
        # guest write to it would exit as MMIO instead of writing).
        _ioctl(
            vm,
            KVM_SET_USER_MEMORY_REGION,
            KvmUserspaceMemoryRegion(
                slot=1,
                flags=KVM_MEM_READONLY,
                guest_phys_addr=FILE_ADDRESS,
                memory_size=-(-size // page) * page,
                userspace_addr=address,
            ),
        )

        vcpu = _ioctl(vm, KVM_CREATE_VCPU, 0)
        stack.callback(os.close, vcpu)
        # The vCPU's kvm_run structure is shared memory of its descriptor.
        run_size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        run = stack.enter_context(mmap.mmap(vcpu, run_size, mmap.MAP_SHARED))

        sregs = KvmSregs()
        _ioctl(vcpu, KVM_GET_SREGS, sregs)
        sregs.cs = _flat_segment(0x08, code=True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, _flat_segment(0x10, code=False))
        sregs.cr0 |= X86_CR0_PE
        _ioctl(vcpu, KVM_SET_SREGS, sregs)
        count = -(-size // stride)
        regs = KvmRegs(
            rip=CODE_ADDRESS,
            rflags=X86_RFLAGS_RESERVED,
            rax=0,
            rbx=stride,
            rcx=count,
            rsi=FILE_ADDRESS,
            rsp=CODE_ADDRESS + CODE_SLOT_SIZE,
        )
        _ioctl(vcpu, KVM_SET_REGS, regs)

        reported: int | None = None
        for _ in range(MAX_EXITS):
            # The guest runs here, on this thread, until it needs us; its
            # first touch of each file page waits meanwhile for the engine.
            _ioctl(vcpu, KVM_RUN)
            head = KvmRunHead.from_buffer_copy(run)
            reason = head.exit_reason
            if reason == KVM_EXIT_HLT:
                if reported is None:
                    raise GuestError("the guest halted without reporting")
                return reported
            if reason != KVM_EXIT_IO:
                name = EXIT_NAMES.get(reason, str(reason))
                raise GuestError(f"the guest stopped unexpectedly: {name}")
            io = head.io
            if (io.direction, io.size, io.port, io.count) != (
                KVM_EXIT_IO_OUT,
                4,
                REPORT_PORT,
                1,
            ):
                raise GuestError(
                    f"unexpected port access: direction {io.direction}, "
                    f"port {io.port:#x}, size {io.size}, count {io.count}"
                )
            if reported is not None:
                raise GuestError("the guest reported twice")
            reported = int.from_bytes(
                run[io.data_offset : io.data_offset + 4], "little"
            )
        raise GuestError(f"the guest did not halt after {MAX_EXITS} exits")
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def serve_over_http(name: str, data: bytes) -> Iterator[str]:
    """Serve ``data`` as ``name`` on 127.0.0.1 from a thread; yield its URL."""
    ready = threading.Event()
    found: list[str] = []
    failed: list[BaseException] = []
    stop: list[asyncio.Event] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        server = RangeHTTPServer()
        await server.start()
        try:
            server.add(name, data)
            stop.append(asyncio.Event())
            loops.append(asyncio.get_running_loop())
            found.append(server.url(name))
            ready.set()
            await stop[0].wait()
        finally:
            await server.stop()

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="http-server")
    thread.start()
    try:
        ready.wait()
        if failed:
            raise failed[0]
        yield found[0]
    finally:
        if loops:
            loops[0].call_soon_threadsafe(stop[0].set)
        thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    """Map a file, run the guest over it, compare the checksums.

    Returns:
        0 when they match, 1 when they differ, 2 when KVM is not usable.
    """
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "source",
        nargs="?",
        help="URL or path of the file (default: a generated file over HTTP)",
    )
    parser.add_argument("--size", type=int, default=1 << 20, help="generated size")
    parser.add_argument("--stride", type=int, default=1, help="read every Nth byte")
    parser.add_argument("--device", default="/dev/kvm", help="the KVM device")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        source = args.source
        if source is None:
            data = random.Random(14).randbytes(args.size)
            source = stack.enter_context(serve_over_http("guest-ram.bin", data))
        region = stack.enter_context(map_file(source))
        before = region.statistics().resident_bytes
        print(f"mapped {source}: {region.size} bytes at {region.address:#x}")
        try:
            guest = run_guest(region.address, region.size, args.stride, args.device)
        except KvmUnavailable as exc:
            print(f"kvm_guest: {exc}", file=sys.stderr)
            return 2
        after = region.statistics().resident_bytes
        # The supervisor's own reading of the file, through the region too.
        expected = checksum(region.read(0, region.size), args.stride)
        pages = region.size // mmap.PAGESIZE
        print(
            f"resident before the guest ran: {before // mmap.PAGESIZE} of {pages} "
            f"pages; after: {after // mmap.PAGESIZE}"
        )
        print(f"guest checksum {guest:#010x}, expected {expected:#010x}")
        if guest != expected:
            print("kvm_guest: checksum mismatch", file=sys.stderr)
            return 1
        print("checksums match; done")
        return 0
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
