"""aiomemmap demo: a server in a process of its own, a comparison it counts."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import anyio

from aiomemmap.tools import demo
from aiomemmap.tools.demo import DemoOptions, run_demo
from aiomemmap.tools.http_server import RangeHTTPServer

FSSPEC_CACHE_TYPES = ["readahead", "blockcache", "bytes", "background", "adaptive"]
HEADER = [
    "workload",
    "implementation",
    "time",
    "throughput",
    "requests",
    "fetched",
    "p50",
    "p99",
    "speedup",
]


def size_of(text: str) -> float:
    """Bytes of a size as the report writes it, e.g. ``"992.0 KiB"``."""
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}[unit]


def comparison(report: str) -> dict[tuple[str, str], dict[str, str]]:
    """The comparison table of a report, by (workload, implementation)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["workload"])
    assert re.split(r"\s{2,}", lines[start].strip()) == HEADER
    table = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = dict(zip(HEADER, re.split(r"\s{2,}", line.strip()), strict=True))
        table[cells["workload"], cells["implementation"]] = cells
    return table


async def test_demo_compares_every_client_with_the_server_s_counts(monkeypatch):
    async def no_server_here(self: RangeHTTPServer) -> None:
        raise AssertionError("the demo started a server in its own process")

    monkeypatch.setattr(RangeHTTPServer, "start", no_server_here)
    out, err = io.StringIO(), io.StringIO()
    options = DemoOptions(size=2 << 20, latency=0.001, random_reads=64, readers=4)
    with anyio.fail_after(300):
        assert await run_demo(options, out, err) == 0
    report = out.getvalue()
    assert "by a process of its own" in report
    assert "what the demo's server counted for each row" in report
    assert report.count("every byte matches the source") == 2
    assert "result: OK, 2.2 MiB read and verified" in report
    table = comparison(report)
    others = [f"fsspec {ct}" for ct in FSSPEC_CACHE_TYPES]
    assert set(table) == {
        *(
            ("sequential scan", impl)
            for impl in ["aiomemmap", *others, "aiohttp whole GET"]
        ),
        *(
            ("random reads", impl)
            for impl in ["aiomemmap", *others, "aiohttp range GETs"]
        ),
    }
    # The counts are the server's, for each row on its own.
    scan = table["sequential scan", "aiomemmap"]
    assert int(scan["requests"]) > 0
    assert scan["fetched"] == "2.0 MiB"
    get = table["sequential scan", "aiohttp whole GET"]
    assert (get["requests"], get["fetched"]) == ("1", "2.0 MiB")
    ranges = table["random reads", "aiohttp range GETs"]
    assert (ranges["requests"], ranges["fetched"]) == ("64", "256.0 KiB")
    for impl in others:
        # A HEAD or more, then at least one range per thread's first read.
        assert int(table["random reads", impl]["requests"]) >= 4
    ours = table["random reads", "aiomemmap"]
    assert int(ours["requests"]) > 0
    assert 0 < size_of(ours["fetched"]) <= 4 * 64 * 4096
    assert ours["speedup"] == "1.00x"


async def test_demo_fails_when_the_server_sends_other_bytes(monkeypatch):
    serve = demo.serve_payloads

    def corrupting(payloads, *, latency):
        return serve(
            {name: b"\xff" + data[1:] for name, data in payloads.items()},
            latency=latency,
        )

    monkeypatch.setattr(demo, "serve_payloads", corrupting)
    out = io.StringIO()
    options = DemoOptions(size=64 * 1024, latency=0, random_reads=8, compare=False)
    with anyio.fail_after(120):
        assert await run_demo(options, out, io.StringIO()) == 1
    assert "result: FAILED, some bytes read differ from the source" in out.getvalue()


def test_demo_needs_no_test_extras():
    """The demo, comparison included, runs with only the runtime dependencies."""
    script = (
        "import sys\n"
        "for name in ('obstore', 'pyarrow', 'numpy', 'xarray', 'zarr', 'h5py',"
        " 'pandas', 'pytest'):\n"
        "    sys.modules[name] = None\n"
        "from aiomemmap.tools.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["demo", "--size", "1M", "--latency", "1", "--random-reads", "32"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "fsspec adaptive" in proc.stdout
    assert "aiohttp whole GET" in proc.stdout
    assert proc.stdout.rstrip().endswith("read and verified")
