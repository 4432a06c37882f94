"""The KVM guest example: a virtual machine whose RAM is a lazily paged file.

Where ``/dev/kvm`` can run a guest, the guest's checksum of the file must
match the supervisor's; where it cannot, the example must say so, naming the
device, and fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pathlib
import random
import re
import subprocess
import sys
from types import ModuleType

import pytest

from aiomemmap import map_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kvm_guest.py"
KVM = "/dev/kvm"
# _IO(0xAE, 0x00) and _IO(0xAE, 0x01) of <linux/kvm.h>.
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


def _kvm_usable() -> bool:
    """Whether this process can open the device and create a VM on it."""
    try:
        fd = os.open(KVM, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != 12:
            return False
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    os.close(vm)
    return True


KVM_USABLE = _kvm_usable()


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvm_guest_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def _reported(stdout: str) -> tuple[int, int, int, int]:
    """(guest checksum, expected, resident pages after the guest, pages)."""
    sums = re.search(r"guest checksum (0x[0-9a-f]+), expected (0x[0-9a-f]+)", stdout)
    pages = re.search(r"of (\d+) pages; after: (\d+)", stdout)
    assert sums is not None, stdout
    assert pages is not None, stdout
    return (
        int(sums[1], 16),
        int(sums[2], 16),
        int(pages[2]),
        int(pages[1]),
    )


def test_the_guest_checksums_a_file_served_over_http(example: ModuleType) -> None:
    proc = _run()
    if not KVM_USABLE:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{KVM} is not usable" in proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checksums match; done" in proc.stdout
    guest, expected, resident, pages = _reported(proc.stdout)
    assert guest == expected
    # The example's file is 1 MiB of bytes seeded with 14, all read.
    assert guest == example.checksum(random.Random(14).randbytes(1 << 20))
    assert resident == pages == 256
    assert "resident before the guest ran: 0 of 256 pages" in proc.stdout


def test_a_sparse_guest_touches_only_some_pages() -> None:
    # One byte per 4 MiB of a 32 MiB file: 8 first touches, each a fault
    # served with its fault-around chunk, far from all 8192 pages.
    proc = _run("--size", str(32 << 20), "--stride", str(4 << 20))
    if not KVM_USABLE:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{KVM} is not usable" in proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    guest, expected, resident, pages = _reported(proc.stdout)
    assert guest == expected
    assert pages == 8192
    assert 8 <= resident < pages // 4


@pytest.mark.parametrize(
    ("device", "reason"),
    [("missing-kvm", "No such file or directory"), ("/dev/null", "not a KVM device")],
)
def test_an_unusable_device_is_named_and_fails(
    tmp_path: pathlib.Path, device: str, reason: str
) -> None:
    if device == "missing-kvm":
        device = str(tmp_path / device)
    proc = _run("--size", "4096", "--device", device)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"kvm_guest: {device} is not usable" in proc.stderr
    assert reason in proc.stderr
    assert "checksum" not in proc.stdout


def test_a_changed_byte_is_a_mismatch(
    example: ModuleType, tmp_path: pathlib.Path
) -> None:
    data = bytearray(random.Random(8).randbytes(64 << 10))
    original = tmp_path / "original.bin"
    original.write_bytes(data)
    data[40_000] ^= 0x01
    changed = tmp_path / "changed.bin"
    changed.write_bytes(data)
    want_original = example.checksum(original.read_bytes())
    want_changed = example.checksum(bytes(data))
    assert want_original != want_changed

    with contextlib.closing(map_file(str(original))) as region:
        if not KVM_USABLE:
            with pytest.raises(example.KvmUnavailable, match=f"{KVM} is not usable"):
                example.run_guest(region.address, region.size)
            return
        guest = example.run_guest(region.address, region.size)
        # A stride that skips the changed byte cannot tell the files apart;
        # one that reads it can.
        sparse = example.run_guest(region.address, region.size, 3)
    assert guest == want_original != want_changed
    assert 40_000 % 3 != 0
    assert sparse == example.checksum(original.read_bytes(), 3)
    assert sparse == example.checksum(bytes(data), 3)
