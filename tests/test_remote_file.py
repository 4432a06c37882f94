"""aiomemmap.open: a synchronous, thread-safe file that readers accept as is."""

from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aiomemmap
from aiomemmap import ClosedError, Engine, RemoteFile
from tests.s3_server import moto_s3
from tests.test_engine_thread import http_server_thread

MiB = 1 << 20


def pattern(n: int) -> bytes:
    return bytes(i * 31 % 251 for i in range(n))


@pytest.fixture
def engine_thread():
    et = Engine().start_thread()
    yield et
    et.close()


def test_a_remote_file_is_a_seekable_raw_binary_file(tmp_path: Path, engine_thread):
    data = b"line one\nline two\nlast" + pattern(100_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with aiomemmap.open(str(path), engine=engine_thread) as f:
        assert isinstance(f, RemoteFile)
        assert isinstance(f, io.RawIOBase)
        assert (f.readable(), f.seekable(), f.writable()) == (True, True, False)
        assert (f.name, f.mode, f.size) == (str(path), "rb", len(data))
        assert f.readline() == b"line one\n"
        assert f.tell() == 9
        assert f.readline(4) == b"line"
        assert f.read(5) == b" two\n"
        buf = bytearray(4)
        assert f.readinto(buf) == 4
        assert bytes(buf) == b"last"
        assert f.seek(-3, io.SEEK_END) == len(data) - 3
        assert f.read() == data[-3:]
        assert f.read(10) == b""
        assert f.seek(len(data) + 10) == len(data) + 10
        assert f.read(10) == b""
        assert f.seek(-5, io.SEEK_CUR) == len(data) + 5
        assert f.pread(3, 5) == data[3:8]
        assert f.tell() == len(data) + 5  # pread leaves the position alone
        f.seek(0)
        assert f.read() == data
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
        with pytest.raises(TypeError):
            f.seek("0")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=">= 0"):
            f.pread(-1, 1)
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
    assert f.closed
    for op in (f.read, f.tell, f.readable, lambda: f.pread(0, 1)):
        with pytest.raises(ValueError, match="closed file"):
            op()
    f.close()  # Again: nothing.
    with io.BufferedReader(aiomemmap.open(str(path), engine=engine_thread)) as b:
        assert b.read(9) == b"line one\n"
        assert b.read() == data[9:]
    assert engine_thread.statistics().open_files == 0


def test_zipfile_and_pyarrow_read_through_it(engine_thread):
    table = pa.table({"x": list(range(50_000)), "y": [f"v{i}" for i in range(50_000)]})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"alpha" * 1000)
        zf.writestr("b.bin", pattern(300_000))
    with http_server_thread() as srv:
        pq_url = srv.add("t.parquet", parquet.getvalue())
        zip_url = srv.add("a.zip", archive.getvalue())
        with aiomemmap.open(pq_url, engine=engine_thread) as f:
            got = pq.read_table(f, columns=["x"])
            assert got.column("x").to_pylist() == list(range(50_000))
            # One column of two: less than the whole file was fetched.
            assert f.statistics().bytes_fetched < len(parquet.getvalue())
        with aiomemmap.open(zip_url, engine=engine_thread) as f:
            zf = zipfile.ZipFile(f)
            assert zf.namelist() == ["a.txt", "b.bin"]
            assert zf.read("b.bin") == pattern(300_000)


def test_sixteen_threads_reading_one_file_fetch_each_page_once(engine_thread):
    data = pattern(4 * MiB)
    with http_server_thread() as srv:
        url = srv.add("obj", data)
        f = aiomemmap.open(url, engine=engine_thread)
        barrier = threading.Barrier(16)
        piece = len(data) // 16

        def reader(i: int) -> bytes:
            barrier.wait()
            # Every thread reads everything, positionless, from a different start.
            parts = [f.pread(((i + k) % 16) * piece, piece) for k in range(16)]
            return b"".join(parts[16 - i :] + parts[: 16 - i])

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(reader, range(16)))
        assert all(r == data for r in results)
        stats = f.statistics()
        assert stats.bytes_fetched == len(data)
        assert srv.counters()[1] == len(data)

        def positional(_: int) -> int:
            # read() and seek() under the file's lock: each read is whole.
            total = 0
            while chunk := f.read(10_000):
                total += len(chunk)
            return total

        f.seek(0)
        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(positional, range(16))) == len(data)
        f.close()


def test_bad_input_is_refused_clearly(tmp_path: Path, engine_thread):
    with pytest.raises(ValueError, match="mode"):
        aiomemmap.open(str(tmp_path), "r+b", engine=engine_thread)
    with pytest.raises(TypeError, match="url_or_path"):
        aiomemmap.open(3, engine=engine_thread)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine"):
        aiomemmap.open(str(tmp_path), engine="mine")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        aiomemmap.open(str(tmp_path / "missing"), engine=engine_thread)
    assert engine_thread.statistics().open_files == 0
    with pytest.raises(ValueError, match="does not run"):
        aiomemmap.open(str(tmp_path), engine=Engine())


def test_s3_through_the_default_engine():
    data = pattern(200_000)
    with moto_s3("aiomemmap-remote-file") as (endpoint, client, bucket):
        client.put_object(Bucket=bucket, Key="k.bin", Body=data)
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        with aiomemmap.open(f"s3://{bucket}/k.bin", **opts) as f:
            assert f.read() == data
            assert f.pread(100, 10) == data[100:110]


def test_an_engine_on_the_callers_loop_serves_worker_threads(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(pattern(100_000))

    async def main() -> None:
        async with Engine() as engine:
            warm = await engine.open_file(str(path))

            def in_worker() -> bytes:
                with aiomemmap.open(str(path), engine=engine) as f:
                    return f.read()

            assert await asyncio.to_thread(in_worker) == path.read_bytes()
            assert warm.statistics().bytes_fetched == len(path.read_bytes())
            with pytest.raises(RuntimeError, match="own event loop"):
                aiomemmap.open(str(path), engine=engine)
            await engine.close_file(warm)
        with pytest.raises(ValueError, match="closed"):
            aiomemmap.open(str(path), engine=engine)

    asyncio.run(main())


def test_a_file_of_a_closed_engine_fails_and_still_closes(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    et = Engine().start_thread()
    f = aiomemmap.open(str(path), engine=et)
    et.close()
    with pytest.raises(ClosedError):
        f.read(1)
    f.close()
    assert f.closed
