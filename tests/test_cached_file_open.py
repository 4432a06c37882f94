"""CachedFile.open owns its backing; a backing written only for reading is enough."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest

from aiomemmap import (
    PAGE_SIZE,
    AlignmentError,
    CachedFile,
    MappableRange,
    MemoryFile,
)
from aiomemmap.tools.http_server import RangeHTTPServer

P = PAGE_SIZE
DATA = random.Random(11).randbytes(5 * P + 77)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def contents(path: Path) -> bytes:
    return path.read_bytes()


def fds_naming(path: Path) -> list[str]:
    """The descriptors of this process open on ``path``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                out.append(fd)
        except OSError:
            continue
    return out


class ReadOnlyBacking:
    """A backing written for reading alone: size, read_into, version, aclose."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False
        self.reads = 0

    async def size(self) -> int:
        return len(self.data)

    async def read_into(self, offset: int, buf: memoryview) -> int:
        self.reads += 1
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def version(self) -> str | None:
        return "v1"

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


# ----------------------------------------------------------------------
# CachedFile.open


async def test_open_reads_and_closes_its_backing(local_file: Path) -> None:
    with MemoryFile("open") as mf:
        cf = await CachedFile.open(str(local_file), mf)
        assert fds_naming(local_file)  # the backing holds the file open
        assert cf.size == len(DATA)  # learned by the open
        assert not cf.writable
        assert cf.mapped_name() == str(local_file)
        assert await cf.read(P - 3, 2 * P) == DATA[P - 3 : 3 * P - 3]
        await cf.aclose()
        assert fds_naming(local_file) == []
        assert mf.statistics().used_bytes == 0


async def test_open_as_a_context_manager(local_file: Path) -> None:
    with MemoryFile("with") as mf:
        async with await CachedFile.open(f"file://{local_file}", mf) as cf:
            buf = bytearray(len(DATA))
            assert await cf.readinto(0, buf) == len(DATA)
            assert buf == DATA
        assert cf.closed
        assert fds_naming(local_file) == []


async def test_open_writable_opens_a_local_backing_writable(local_file: Path) -> None:
    with MemoryFile("writable") as mf:
        cf = await CachedFile.open(str(local_file), mf, writable=True, name="mine")
        assert cf.writable
        assert cf.mapped_name() == "mine"
        assert await cf.read(0, P) == DATA[:P]
        await cf.write(1, b"XYZ")
        await cf.truncate(2 * P)
        await cf.aclose()  # writes back, then closes the backing
        assert contents(local_file) == DATA[:1] + b"XYZ" + DATA[4 : 2 * P]
        assert fds_naming(local_file) == []


async def test_file_options_and_storage_options_are_told_apart(
    local_file: Path,
) -> None:
    with MemoryFile("options") as mf:
        # A file option goes to the file...
        cf = await CachedFile.open(str(local_file), mf, max_fetch_bytes=2 * P)
        await cf.prefetch(MappableRange(0, 6 * P))
        assert cf.statistics().fetches == 3
        await cf.aclose()
        # ...any other keyword to the backing, which refuses what it does
        # not know; nothing is left open.
        before = open_fds()
        with pytest.raises(ValueError, match="unsupported options"):
            await CachedFile.open(str(local_file), mf, endpoint_url="http://x")
        assert open_fds() == before


async def test_open_over_http_passes_storage_options_and_closes_the_session() -> None:
    async with RangeHTTPServer() as server:
        server.add("obj", DATA)
        with MemoryFile("http") as mf, warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            cf = await CachedFile.open(
                server.url("obj"), mf, headers={"X-Test": "1"}, retry=None
            )
            assert cf.size == len(DATA)
            assert await cf.read(0, len(DATA)) == DATA
            await cf.aclose()
            assert mf.statistics().used_bytes == 0


async def test_a_failed_open_closes_the_backing(
    local_file: Path, tmp_path: Path
) -> None:
    with MemoryFile("failed") as mf:
        before = open_fds()
        # The file refuses an option: the backing opened for it is closed.
        with pytest.raises(AlignmentError):
            await CachedFile.open(str(local_file), mf, max_fetch_bytes=P + 1)
        assert open_fds() == before
        assert fds_naming(local_file) == []
        # A missing object fails at open with the storage's own error.
        with pytest.raises(FileNotFoundError):
            await CachedFile.open(str(tmp_path / "missing"), mf)
        assert open_fds() == before
        assert mf.statistics().used_bytes == 0


async def test_a_missing_http_object_fails_at_open() -> None:
    async with RangeHTTPServer() as server:
        with MemoryFile("missing") as mf:
            with pytest.raises(FileNotFoundError):
                await CachedFile.open(server.url("nothing"), mf)
            assert mf.statistics().used_bytes == 0


# ----------------------------------------------------------------------
# A backing written only for reading


async def test_a_read_only_backing_of_four_methods_is_enough() -> None:
    backing = ReadOnlyBacking(DATA)
    with MemoryFile("readonly") as mf:
        cf = CachedFile(backing, mf)
        assert not cf.writable  # read-only by default
        assert await cf.read(0, len(DATA)) == DATA
        buf = bytearray(100)
        assert await cf.readinto(len(DATA) - 50, buf) == 50
        async with cf.read_view(P, 10) as view:
            assert view == DATA[P : P + 10]
        await cf.sync()  # nothing to write back: nothing asked of the backing
        await cf.revalidate()
        with pytest.raises(PermissionError):
            await cf.write(0, b"x")
        with pytest.raises(PermissionError):
            await cf.truncate(0)
        await cf.aclose()
        # The backing is the caller's: the file does not close it.
        assert not backing.closed
        assert mf.statistics().used_bytes == 0
        await backing.aclose()


async def test_writable_over_a_backing_without_writes_is_refused() -> None:
    backing = ReadOnlyBacking(DATA)
    with MemoryFile("refused") as mf:
        with pytest.raises(TypeError, match="write_from and truncate"):
            CachedFile(backing, mf, writable=True)
        assert backing.reads == 0
        assert mf.statistics().used_bytes == 0


async def test_a_backing_missing_a_read_method_is_refused() -> None:
    class NoVersion:
        async def size(self) -> int:
            return 0

        async def read_into(self, offset: int, buf: memoryview) -> int:
            return 0

    with MemoryFile("refused") as mf, pytest.raises(TypeError, match="version"):
        CachedFile(NoVersion(), mf)  # type: ignore[arg-type]
