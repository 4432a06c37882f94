"""The host calls behind a memory file: memfd, hole punching, chunk mappings."""

from __future__ import annotations

import errno
import os

import pytest

from aiomemmap import PAGE_SIZE
from aiomemmap._core import host

P = PAGE_SIZE


@pytest.fixture
def fd():
    fd = host.memfd_create("test-host")
    yield fd
    os.close(fd)


def test_memfd_is_close_on_exec_and_named(fd):
    assert not os.get_inheritable(fd)
    assert os.readlink(f"/proc/self/fd/{fd}") == "/memfd:test-host (deleted)"
    assert os.fstat(fd).st_size == 0


def test_resize_and_map_shared_see_the_same_bytes(fd):
    host.resize(fd, 4 * P)
    assert os.fstat(fd).st_size == 4 * P
    m = host.map_shared(fd, P, 2 * P)
    try:
        m[:5] = b"hello"
        assert os.pread(fd, 5, P) == b"hello"
        os.pwrite(fd, b"world", 2 * P)
        assert m[P : P + 5] == b"world"
    finally:
        m.close()


def test_punch_hole_frees_and_zeroes_keeping_the_size(fd):
    host.resize(fd, 4 * P)
    os.pwrite(fd, b"\x01" * (4 * P), 0)
    committed = os.fstat(fd).st_blocks
    host.punch_hole(fd, P, 2 * P)
    assert os.fstat(fd).st_size == 4 * P
    assert os.fstat(fd).st_blocks < committed
    assert os.pread(fd, 4 * P, 0) == b"\x01" * P + bytes(2 * P) + b"\x01" * P


def test_punch_hole_without_fallocate(monkeypatch, fd):
    monkeypatch.setattr(host, "fallocate", None)
    with pytest.raises(OSError, match="fallocate") as info:
        host.punch_hole(fd, 0, P)
    assert info.value.errno == errno.ENOSYS


def test_punch_hole_reports_host_errors():
    with pytest.raises(OSError, match="fallocate") as info:
        host.punch_hole(-1, 0, P)
    assert info.value.errno == errno.EBADF


def test_find_fallocate_in_a_library_without_it():
    assert host.find_fallocate(object()) is None
    assert host.fallocate is not None


def test_map_shared_reports_host_errors(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(P))
    ro = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(PermissionError) as info:
            host.map_shared(ro, 0, P)
        assert info.value.errno == errno.EACCES
    finally:
        os.close(ro)
