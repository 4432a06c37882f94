"""A :class:`~aiomemmap.tools.http_server.RangeHTTPServer` in a process of its own.

Remote benchmarks measure clients against a server that does not share their
interpreter (and its GIL), as a real server would not. :class:`ServedFiles`
starts ``python -m aiomemmap.tools.bench._served DIR --latency S``, which
serves every file under ``DIR`` by its relative path, and talks to it over
its standard streams: the child prints its port once it listens, and
answers each ``stats`` line with one JSON line of its counters. End of input
stops it. :func:`serve_payloads` serves byte strings made in this process
the same way, through a temporary directory.

Counts are taken by difference (:meth:`ServedFiles.counts` before and after
one client's run), so runs measured against one server must not overlap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, final

__all__ = ["ServedFiles", "ServerCounts", "serve_payloads"]

_START_TIMEOUT = 60.0
_MIB = 1 << 20


@final
@dataclass(frozen=True, slots=True)
class ServerCounts:
    """The server's counters at one moment.

    Attributes:
        requests: Requests answered (``HEAD`` included).
        bytes_sent: Body bytes sent.
        range_requests: Requests that carried a ``Range`` header.
    """

    requests: int
    bytes_sent: int
    range_requests: int = 0

    def __sub__(self, other: ServerCounts) -> ServerCounts:
        return ServerCounts(
            self.requests - other.requests,
            self.bytes_sent - other.bytes_sent,
            self.range_requests - other.range_requests,
        )

    def describe(self) -> str:
        """The counts in words, e.g. ``"12 req, 256.0 MiB"``."""
        return f"{self.requests} req, {self.bytes_sent / _MIB:.1f} MiB"


@final
class ServedFiles:
    """The files of a directory, served over HTTP by a child process.

    Use it as a context manager::

        with ServedFiles(root, latency=0.002) as served:
            url = served.url("table.parquet")
            before = served.counts()
            ...
            used = served.counts() - before

    Concurrency:
        for one thread at a time; the child serves any number of clients.
    """

    def __init__(self, root: Path, *, latency: float) -> None:
        """Prepare to serve the files under ``root`` (nothing runs yet).

        Args:
            root: The directory whose files are served, by relative path.
            latency: Seconds the server waits before each answer.
        """
        self._root = root
        self._latency = latency
        self._proc: subprocess.Popen[str] | None = None
        self._port = 0

    def _streams(self) -> tuple[IO[str], IO[str]]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the server process is not running")
        return proc.stdin, proc.stdout

    def __enter__(self) -> ServedFiles:
        self.start()
        return self

    def start(self) -> None:
        """Start the child and wait until it listens (it has loaded the files).

        Raises:
            RuntimeError: Already started, or the child exited before listening.
        """
        if self._proc is not None:
            raise RuntimeError("the server process is already running")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiomemmap.tools.bench._served",
                str(self._root),
                "--latency",
                repr(self._latency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _, out = self._streams()
            line = out.readline()
            if not line:
                raise RuntimeError("the server process exited before listening")
            self._port = int(line)
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child (closing its input) and wait for it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def base_url(self) -> str:
        """The URL the files' relative paths are resolved against."""
        return f"http://127.0.0.1:{self._port}/"

    def url(self, name: str) -> str:
        """The URL of the file at relative path ``name``."""
        return self.base_url + name

    def counts(self) -> ServerCounts:
        """Ask the child for its counters."""
        inp, out = self._streams()
        inp.write("stats\n")
        inp.flush()
        line = out.readline()
        if not line:
            raise RuntimeError("the server process exited")
        stats = json.loads(line)
        return ServerCounts(
            int(stats["requests"]),
            int(stats["bytes_sent"]),
            int(stats["range_requests"]),
        )


@contextmanager
def serve_payloads(
    payloads: Mapping[str, bytes], *, latency: float
) -> Iterator[ServedFiles]:
    """Serve ``payloads`` (relative path to bytes) from a child process.

    The bytes go through a temporary directory, removed once the child has
    loaded them (it serves from memory).

    Args:
        payloads: What to serve, by relative path.
        latency: Seconds the server waits before each answer.

    Yields:
        The running :class:`ServedFiles`; it is stopped on exit.
    """
    with tempfile.TemporaryDirectory(prefix="aiomemmap-served-") as tmp:
        root = Path(tmp)
        for name, data in payloads.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        served = ServedFiles(root, latency=latency)
        served.start()
    try:
        yield served
    finally:
        served.close()


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def _serve(root: Path, latency: float) -> None:
    from aiomemmap.tools.http_server import RangeHTTPServer

    files = await asyncio.to_thread(_files, root)
    async with RangeHTTPServer(latency=latency) as srv:
        for name, data in files.items():
            srv.add(name, data)
        print(srv.port, flush=True)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            if line.strip() == "stats":
                counts = {
                    "requests": srv.requests,
                    "bytes_sent": srv.bytes_sent,
                    "range_requests": srv.range_requests,
                }
                print(json.dumps(counts), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Serve a directory until standard input closes."""
    parser = argparse.ArgumentParser(prog="aiomemmap.tools.bench._served")
    parser.add_argument("root", type=Path)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional extra
        asyncio.run(_serve(args.root, args.latency))
    else:
        uvloop.run(_serve(args.root, args.latency))


if __name__ == "__main__":
    main()
