"""The aiomemmap command line, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aiomemmap._cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiomemmap", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_cli_demo_not_available_yet_prints_help(capsys):
    assert main(["demo"]) == 0
    captured = capsys.readouterr()
    assert "not available in this version" in captured.err
    assert "usage: aiomemmap" in captured.out


def test_cli_cat_not_available_yet_fails(capsys):
    assert main(["cat", "memory://x"]) == 2
    assert "not available" in capsys.readouterr().err


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


def test_cli_bad_arguments_exit_non_zero():
    proc = run("bench", "--nonsense")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_bench_rows_in_process(capsys):
    from aiomemmap.bench import render_table, run_benchmarks

    rows = run_benchmarks(["m1", "M2", "M3", "M4", "M5"])
    assert [r.id for r in rows] == ["M1", "M2", "M3", "M4", "M5"]
    for r in rows:
        assert r.ours > 0
        assert r.baseline > 0
        assert r.ratio > 0
    bus_rows = [r for r in rows if r.id in ("M4", "M5")]
    assert all(r.met is not None for r in bus_rows)
    render_table(rows, sys.stdout)
    assert "M5" in capsys.readouterr().out


def test_bench_remote_rows_in_process(monkeypatch):
    from aiomemmap.bench import _remote, run_benchmarks

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
