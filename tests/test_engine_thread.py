"""EngineThread and default_engine: an engine for synchronous code.

Threads, closing, fork safety and interpreter exit, with real servers: the
RangeHTTPServer on 127.0.0.1 runs on a loop thread of its own, as a remote
server would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import aiomemmap
from aiomemmap import ClosedError, Engine, EngineThread, default_engine
from aiomemmap.tools.http_server import RangeHTTPServer

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def pattern(n: int) -> bytes:
    return bytes(i * 13 % 251 for i in range(n))


@dataclass
class ThreadedServer:
    """A RangeHTTPServer on a loop thread, driven from the test's thread."""

    portal: BlockingPortal
    server: RangeHTTPServer

    def add(self, name: str, data: bytes) -> str:
        self.portal.call(lambda: self.server.add(name, data))
        return self.portal.call(lambda: self.server.url(name))

    def counters(self) -> tuple[int, int]:
        """(range requests, body bytes sent) so far."""
        return self.portal.call(
            lambda: (self.server.range_requests, self.server.bytes_sent)
        )

    def set_latency(self, seconds: float) -> None:
        def set_it() -> None:
            self.server.latency = seconds

        self.portal.call(set_it)


@contextmanager
def http_server_thread() -> Iterator[ThreadedServer]:
    with start_blocking_portal() as portal:
        server = RangeHTTPServer()
        portal.call(server.start)
        try:
            yield ThreadedServer(portal, server)
        finally:
            portal.call(server.stop)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_sixteen_threads_opening_one_url_share_one_file_and_fetch_each_page_once():
    data = pattern(4 * MiB)
    with http_server_thread() as srv, Engine().start_thread() as et:
        url = srv.add("obj", data)
        barrier = threading.Barrier(16)

        def user(i: int) -> tuple[int, bytes]:
            barrier.wait()
            f = et.open_file(url)
            chunk = et.call(f.read, i * 256 * 1024, 256 * 1024)
            return id(f), chunk

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(user, range(16)))
        assert len({fid for fid, _ in results}) == 1
        assert b"".join(chunk for _, chunk in results) == data
        stats = et.statistics()
        assert (stats.open_files, stats.users, stats.files_opened) == (1, 16, 1)
        # One fetch per page: nothing was fetched twice.
        assert stats.cache.bytes_fetched == len(data)
        _, sent = srv.counters()
        assert sent == len(data)
        f = et.open_file(url)
        for _ in range(17):
            et.close_file(f)
        assert et.statistics().open_files == 0
        with pytest.raises(ValueError, match="not open"):
            et.close_file(f)


def test_calls_carry_results_errors_and_refuse_the_engines_own_thread(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello world")
    with Engine().start_thread() as et:
        assert isinstance(et, EngineThread)
        f = et.open_file(str(path))
        assert et.call(f.read, 6, 5) == b"world"
        with pytest.raises(ValueError, match="offset"):
            et.call(f.read, -1, 5)
        with pytest.raises(FileNotFoundError):
            et.open_file(str(tmp_path / "missing"))

        async def from_inside() -> str:
            try:
                et.call(f.read, 0, 1)
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        assert "own thread" in et.call(from_inside)
        done = threading.Event()

        async def mark() -> None:
            done.set()

        et.call_soon(mark)
        assert done.wait(30)
        et.close_file(f)


def test_close_cancels_calls_in_flight_and_frees_everything():
    data = pattern(MiB)
    with http_server_thread() as srv:
        url = srv.add("obj", data)
        et = Engine().start_thread()
        memory_file = et.engine.memory_file
        f = et.open_file(url)
        assert et.call(f.read, 0, 10) == data[:10]
        srv.set_latency(60.0)
        pending = et.start_call(f.read, MiB // 2, 10)
        et.close()
        with pytest.raises(ClosedError):
            pending.result(timeout=30)
        assert et.closed
        assert memory_file.closed
        with pytest.raises(ClosedError, match="closed"):
            et.call(f.read, 0, 1)
        with pytest.raises(ClosedError):
            et.open_file(url)
        et.close()  # Again: nothing.
        assert not et.thread.is_alive()


def test_cancelling_a_started_call_cancels_it_on_the_loop():
    data = pattern(MiB)
    with http_server_thread() as srv, Engine().start_thread() as et:
        url = srv.add("obj", data)
        f = et.open_file(url)
        srv.set_latency(60.0)
        pending = et.start_call(f.read, 0, 10)
        assert pending.cancel()
        srv.set_latency(0.0)
        assert et.call(f.read, 0, 10) == data[:10]
        et.close_file(f)
        assert et.statistics().memory.used_bytes == 0  # type: ignore[union-attr]


def test_default_engine_is_one_per_process_and_restarts_after_close():
    with ThreadPoolExecutor(16) as pool:
        engines = list(pool.map(lambda _: default_engine(), range(16)))
    first = engines[0]
    assert all(e is first for e in engines)
    assert aiomemmap.default_engine() is first
    first.close()
    second = default_engine()
    assert second is not first
    assert not second.closed


def test_cache_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from aiomemmap.engine.default import cache_limit_from_environment

    monkeypatch.setenv("AIOMEMMAP_CACHE_LIMIT", "64M")
    assert cache_limit_from_environment() == 64 * MiB
    monkeypatch.setenv("AIOMEMMAP_CACHE_LIMIT", "4096")
    assert cache_limit_from_environment() == 4096
    monkeypatch.setenv("AIOMEMMAP_CACHE_LIMIT", "")
    assert cache_limit_from_environment() is None
    monkeypatch.setenv("AIOMEMMAP_CACHE_LIMIT", "lots")
    with pytest.raises(ValueError, match="AIOMEMMAP_CACHE_LIMIT"):
        cache_limit_from_environment()


def test_a_forked_child_gets_a_clear_error_or_a_new_engine(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"parent and child")
    proc = run_python(
        f"""
        import os, sys
        import aiomemmap
        from aiomemmap import ClosedError
        parent = aiomemmap.default_engine()
        f = aiomemmap.open({str(path)!r})
        assert f.read(6) == b"parent"
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                f.read(4)
                code = 10
            except ClosedError as exc:
                if "fork" not in str(exc):
                    code = 11
            child = aiomemmap.default_engine()
            if child is parent or child.closed:
                code = 12
            with aiomemmap.open({str(path)!r}) as g:
                if g.read() != b"parent and child":
                    code = 13
            f.close()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert f.read(4) == b" and"
        print("ok")
        """,
        "-W",
        "error",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr == ""


def test_exit_with_files_open_neither_hangs_nor_warns():
    data_server = """
        import threading
        import aiomemmap
        from anyio.from_thread import start_blocking_portal
        from aiomemmap.tools.http_server import RangeHTTPServer

        cm = start_blocking_portal()
        portal = cm.__enter__()
        srv = RangeHTTPServer()
        portal.call(srv.start)
        portal.call(lambda: srv.add("obj", b"x" * 100_000))
        url = portal.call(lambda: srv.url("obj"))
        f = aiomemmap.open(url)
        g = aiomemmap.open(url)
        assert f.read(5) == b"xxxxx"
        other = aiomemmap.Engine().start_thread()
        h = aiomemmap.open(url, engine=other)
        assert h.pread(10, 3) == b"xxx"
        # The test's server goes first; the files stay open.
        portal.call(srv.stop)
        cm.__exit__(None, None, None)
        print("exiting with files open")
    """
    proc = run_python(data_server, "-W", "error", "-X", "dev")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exiting with files open"
    assert proc.stderr == ""


def test_start_thread_on_the_class_creates_and_starts_an_engine(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"0123456789")
    with Engine.start_thread(cache_limit=1 * MiB, use_uvloop=False) as et:
        assert isinstance(et, EngineThread)
        assert et.engine.memory_file.cache_limit == 1 * MiB
        f = et.open_file(str(path))
        assert et.call(f.read, 2, 3) == b"234"
        et.close_file(f)
    assert et.engine.closed


def test_start_thread_on_an_engine_that_already_ran_is_refused():
    engine = Engine()
    with (
        engine.start_thread() as et,
        pytest.raises(RuntimeError, match="already runs"),
    ):
        engine.start_thread()
    with pytest.raises(ClosedError):
        et.engine.start_thread()
