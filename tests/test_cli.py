"""The aiomemmap command line: demo, cat and bench."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import subprocess
import sys

import aiohttp
import multidict
import pytest
import yarl

from aiomemmap import BusError
from aiomemmap.tools.cat import cat
from aiomemmap.tools.cli import describe_error, main
from aiomemmap.tools.demo import (
    DemoOptions,
    WorkloadResult,
    make_payload,
    parse_size,
    render_table,
    run_demo,
)
from aiomemmap.tools.http_server import RangeHTTPServer

PAYLOAD = make_payload(3 * 4096 + 123, seed=7)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiomemmap", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def run_async(*args: str) -> tuple[int, bytes, str]:
    """Run the CLI while this loop keeps serving (e.g. a RangeHTTPServer)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiomemmap",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def assert_one_line_error(returncode: int, stderr: str, *fragments: str) -> None:
    assert returncode != 0
    assert "Traceback" not in stderr
    assert stderr.strip().count("\n") == 0, stderr
    for fragment in fragments:
        assert fragment in stderr


@pytest.fixture
def payload_file(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    return path


# ---------------------------------------------------------------------------
# General


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "cat" in out


def test_cli_bad_arguments_exit_non_zero():
    proc = run("bench", "--nonsense")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("4k", 4096),
        ("16M", 16 << 20),
        ("1G", 1 << 30),
        ("2MiB", 2 << 20),
    ],
)
def test_parse_size_accepts_suffixes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "3X", "1.5M", "M"])
def test_parse_size_rejects_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_describe_error_is_one_line_without_class_noise():
    assert describe_error(FileNotFoundError(errno.ENOENT, "no such file: 'x'")) == (
        "no such file: 'x'"
    )
    assert describe_error(ValueError("bad URL 'x'")) == "bad URL 'x'"
    cause = FileNotFoundError(errno.ENOENT, "HTTP 404 for 'u'")
    assert describe_error(BusError(cause)).endswith("HTTP 404 for 'u'")
    assert describe_error(RuntimeError()) == "RuntimeError"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"
    assert describe_error(aiohttp.ClientConnectionError("refused")) == (
        "network error: refused"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "--size", "3X"], "not a size"),
        (["demo", "--latency", "fast"], "not a number"),
        (["demo", "--latency", "-1"], "must be in [0, 60000] ms"),
        (["demo", "--random-reads", "0"], "must be > 0"),
        (["demo", "--readers", "x"], "not an integer"),
        (["cat", "x", "--offset", "-5"], "must be >= 0"),
        (["cat"], "required: url"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_cli_argument_errors_are_one_line(capsys, args, fragment):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, fragment, "--help")


def test_describe_error_of_http_status_and_os_errors():
    request = aiohttp.RequestInfo(
        url=yarl.URL("http://h/x"),
        method="GET",
        headers=multidict.CIMultiDictProxy(multidict.CIMultiDict()),
        real_url=yarl.URL("http://h/x"),
    )
    exc = aiohttp.ClientResponseError(request, (), status=503, message="busy")
    assert describe_error(exc) == "server error: HTTP 503 (busy)"
    assert describe_error(PermissionError(errno.EACCES, "denied", "/f")) == (
        "denied: '/f'"
    )


# ---------------------------------------------------------------------------
# cat


def test_cli_cat_local_path_and_file_url(payload_file):
    proc = subprocess.run(
        [sys.executable, "-m", "aiomemmap", "cat", str(payload_file)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PAYLOAD
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiomemmap",
            "cat",
            payload_file.as_uri(),
            "--offset",
            "4000",
            "--length",
            "5000",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PAYLOAD[4000:9000]


async def test_cli_cat_http_url_and_server_errors():
    async with RangeHTTPServer() as srv:
        srv.add("payload.bin", PAYLOAD)
        url = srv.url("payload.bin")
        rc, out, err = await run_async(
            "cat", url, "--offset", "4095", "--length", "8193"
        )
        assert rc == 0, err
        assert out == PAYLOAD[4095 : 4095 + 8193]
        assert srv.range_requests >= 1

        rc, out, err = await run_async("cat", url, "--offset", str(len(PAYLOAD) - 10))
        assert rc == 0, err
        assert out == PAYLOAD[-10:]

        rc, out, err = await run_async("cat", srv.url("missing.bin"))
        assert_one_line_error(rc, err, "aiomemmap cat:", "404")
        assert out == b""

        srv.fail_next(100, 403)
        rc, out, err = await run_async("cat", url)
        srv.fail_next(0)
        assert_one_line_error(rc, err, "aiomemmap cat:", "403")


def test_cli_cat_errors_are_one_line(payload_file, tmp_path):
    cases = [
        (("cat", str(tmp_path / "missing.bin")), "no such file"),
        (("cat", "nosuchprotocol://x/y"), "unknown protocol 'nosuchprotocol'"),
        (("cat", str(payload_file), "--offset", str(len(PAYLOAD) + 1)), "past the end"),
        (("cat", str(payload_file), "--length", str(len(PAYLOAD) + 1)), "past the end"),
        (("cat", str(payload_file), "--offset", "-1"), "--offset"),
        (("cat", str(payload_file), "--length", "ten"), "--length"),
        (("cat",), "url"),
        (("cat", "http://127.0.0.1:1/x"), "network error"),
    ]
    for args, fragment in cases:
        proc = run(*args)
        assert proc.stdout == "", args
        assert_one_line_error(proc.returncode, proc.stderr, fragment)


async def test_cat_in_process_writes_the_range(payload_file):
    out = io.BytesIO()
    n = await cat(str(payload_file), out, offset=100, length=9000)
    assert n == 9000
    assert out.getvalue() == PAYLOAD[100:9100]
    out = io.BytesIO()
    assert await cat(payload_file.as_uri(), out, offset=len(PAYLOAD)) == 0
    assert out.getvalue() == b""


async def test_cat_in_process_rejects_bad_ranges(payload_file):
    with pytest.raises(ValueError, match="offset must be >= 0"):
        await cat(str(payload_file), io.BytesIO(), offset=-1)
    with pytest.raises(ValueError, match="length must be >= 0"):
        await cat(str(payload_file), io.BytesIO(), length=-1)
    with pytest.raises(ValueError, match="past the end"):
        await cat(str(payload_file), io.BytesIO(), offset=len(PAYLOAD) + 1)
    with pytest.raises(ValueError, match=r"runs past the end"):
        await cat(str(payload_file), io.BytesIO(), offset=1, length=len(PAYLOAD))


def test_cli_cat_in_process(payload_file, capsysbinary):
    assert main(["cat", str(payload_file), "--length", "10"]) == 0
    assert capsysbinary.readouterr().out == PAYLOAD[:10]
    assert main(["cat", str(payload_file) + ".missing"]) == 1
    err = capsysbinary.readouterr().err.decode()
    assert err.startswith("aiomemmap cat: no such file")


# ---------------------------------------------------------------------------
# demo


def test_cli_demo_small_run_verifies_and_compares():
    proc = run("demo", "--size", "4M", "--random-reads", "200", "--latency", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert "sequential scan" in out
    assert "random reads: 200 reads of 4 KiB" in out
    assert out.count("every byte matches the source") == 2
    assert "hit rate" in out
    assert "p50" in out
    assert "p99" in out
    for cache_type in ("readahead", "blockcache", "bytes"):
        assert f"fsspec {cache_type}" in out
    assert "no page left in use" in out
    assert out.rstrip().endswith("read and verified")
    # Progress goes to stderr as plain lines when it is not a terminal.
    assert "scan / aiomemmap" in proc.stderr


def test_cli_demo_url_runs_without_verification(payload_file):
    proc = run(
        "demo", "--url", str(payload_file), "--random-reads", "20", "--no-compare"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not verified" in proc.stdout
    assert "fsspec" not in proc.stdout


def test_cli_demo_errors_are_one_line(tmp_path):
    for args, fragment in [
        (("demo", "--size", "3X"), "not a size"),
        (("demo", "--latency", "-1"), "--latency"),
        (("demo", "--url", str(tmp_path / "missing.bin")), "no such file"),
    ]:
        proc = run(*args)
        assert_one_line_error(proc.returncode, proc.stderr, fragment)


def test_cli_demo_in_process(capsys, payload_file):
    args = ["--random-reads", "32", "--readers", "4", "--latency", "0"]
    assert main(["demo", "--size", "256K", "--no-compare", *args]) == 0
    captured = capsys.readouterr()
    assert "result: OK, 384.0 KiB read and verified" in captured.out
    assert main(["demo", "--url", payload_file.as_uri(), *args]) == 0
    captured = capsys.readouterr()
    assert "not verified" in captured.out
    assert "fsspec readahead" in captured.out
    assert main(["demo", "--url", str(payload_file) + ".missing"]) == 1
    assert capsys.readouterr().err.startswith("aiomemmap demo: no such file")


async def test_run_demo_in_process_reports_every_workload():
    out, err = io.StringIO(), io.StringIO()
    options = DemoOptions(size=1 << 20, latency=0.0005, random_reads=64, readers=4)
    assert await run_demo(options, out, err) == 0
    report = out.getvalue()
    assert "result: OK, 1.2 MiB read and verified" in report
    assert report.count("fsspec ") >= 6
    assert "done in" in err.getvalue()


def test_render_table_ratios():
    def row(impl, seconds):
        return WorkloadResult(
            "random reads", impl, seconds, 10, 40960, None, None, None, [0.001], None
        )

    out = io.StringIO()
    render_table([row("aiomemmap", 1.0), row("fsspec bytes", 2.5)], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[-1] == "speedup"
    assert lines[1].endswith("1.00x")
    assert lines[2].endswith("2.50x")
    assert "n/a" in lines[2]


# ---------------------------------------------------------------------------
# bench


def test_cli_bench_subset_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run("bench", "--only", "M1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "M1" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["M1"]
    row = rows[0]
    assert row["ours"] > 0
    assert row["baseline"] > 0
    assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])


def test_cli_bench_unknown_id_is_a_one_line_error():
    proc = run("bench", "--only", "Z9")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown benchmark ids ['Z9']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_rows_in_process(capsys):
    from aiomemmap.tools.bench import render_table as render_bench
    from aiomemmap.tools.bench import run_benchmarks

    rows = run_benchmarks(["m1", "M2", "M3", "M4", "M5"])
    assert [r.id for r in rows] == ["M1", "M2", "M3", "M4", "M5"]
    for r in rows:
        assert r.ours > 0
        assert r.baseline > 0
        assert r.ratio > 0
    bus_rows = [r for r in rows if r.id in ("M4", "M5")]
    assert all(r.met is not None for r in bus_rows)
    render_bench(rows, sys.stdout)
    assert "M5" in capsys.readouterr().out


def test_bench_remote_rows_in_process(monkeypatch):
    from aiomemmap.tools.bench import _remote, run_benchmarks

    monkeypatch.setattr(_remote, "SCAN_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(_remote, "RANDOM_FILE_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(_remote, "RANDOM_READS", 64)
    rows = {r.id: r for r in run_benchmarks(["P3", "P3b", "P4", "P4b", "P4c", "P7"])}
    assert set(rows) == {"P3", "P3b", "P4", "P4b", "P4c", "P7"}
    for r in rows.values():
        assert r.ours > 0
        assert r.baseline > 0
        assert r.met is not None
    # These two are counts, not timings: they hold on any machine.
    assert rows["P7"].ours == 1
    assert rows["P7"].met is True
    assert rows["P4c"].ours <= 4


def test_python_dash_m_aiomemmap_is_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["aiomemmap"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("aiomemmap", run_name="__main__")
    assert info.value.code == 0
    assert "serve" in capsys.readouterr().out
