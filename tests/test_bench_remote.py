"""The remote benchmark rows: a server in a process of its own, counts from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import aiohttp
import anyio

from aiomemmap.tools.bench._served import ServedFiles, ServerCounts, serve_payloads

MiB = 1 << 20

SCAN_ROWS = ["P3", "P3b", "P3m", "P3l", "P3v", "P3o", "P3f"]
CONCURRENT_ROWS = ["P3c", "P3cb", "P3cm", "P3cl", "P3cv", "P3co", "P3cf"]
RANDOM_ROWS = ["P4", "P4b", "P4c", "P4r", "P4o", "P4f"]
FSSPEC_CACHE_TYPES = ["readahead", "blockcache", "bytes", "background", "adaptive"]

_COUNTS = re.compile(r"(\d+) ms, (\d+) req, ([\d.]+) MiB")


def counts(text: str) -> tuple[int, float]:
    """The requests and MiB of the one ``N ms, R req, B MiB`` in ``text``."""
    (found,) = _COUNTS.findall(text)
    return int(found[1]), float(found[2])


async def test_served_files_count_what_the_child_process_sends():
    payloads = {"a.bin": bytes(range(256)) * 64, "dir/b.bin": b"x" * 1000}
    with serve_payloads(payloads, latency=0.0) as served:
        assert served.url("a.bin") == served.base_url + "a.bin"
        start = served.counts()
        with anyio.fail_after(60):
            async with aiohttp.ClientSession() as session:
                async with session.get(served.url("a.bin")) as resp:
                    assert await resp.read() == payloads["a.bin"]
                headers = {"Range": "bytes=10-19"}
                async with session.get(served.url("dir/b.bin"), headers=headers) as r:
                    assert r.status == 206
                    assert await r.read() == b"x" * 10
                async with session.head(served.url("a.bin")) as resp:
                    assert resp.headers["Content-Length"] == str(len(payloads["a.bin"]))
        used = served.counts() - start
        assert used == ServerCounts(
            requests=3, bytes_sent=len(payloads["a.bin"]) + 10, range_requests=1
        )
        assert used.describe() == "3 req, 0.0 MiB"
        # Counting asks the child; it does not count as a request.
        assert served.counts() - start == used
    # Closed: the child is gone and nothing listens on its port any more.
    async with aiohttp.ClientSession() as session:
        try:
            await session.get(served.url("a.bin"))
        except aiohttp.ClientConnectionError:
            pass
        else:
            raise AssertionError("the server still answers after close")


def test_served_files_serve_a_directory(tmp_path):
    (tmp_path / "one.bin").write_bytes(b"1" * 100)
    with ServedFiles(tmp_path, latency=0.0) as served:
        assert served.counts() == ServerCounts(0, 0, 0)
        served.close()
        served.close()


def test_remote_rows_run_against_a_served_process(tmp_path):
    """Every remote row, shrunk by the environment, with the server's counts."""
    out = tmp_path / "rows.json"
    env = dict(
        os.environ,
        AIOMEMMAP_BENCH_SCAN_BYTES=str(4 * MiB),
        AIOMEMMAP_BENCH_RANDOM_FILE_BYTES=str(4 * MiB),
        AIOMEMMAP_BENCH_RANDOM_READS="64",
        AIOMEMMAP_BENCH_REMOTE_REPEATS="1",
    )
    ids = SCAN_ROWS + CONCURRENT_ROWS + RANDOM_ROWS
    argv = ["bench", "--only", ",".join(ids), "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "aiomemmap", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    by_id: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_id.setdefault(str(row["id"]), []).append(row)
    assert set(by_id) == set(ids)
    for row in rows:
        assert row["ours"] > 0
        assert row["baseline"] > 0
        assert row["ratio"] > 0
    for target in (
        "P3",
        "P3b",
        "P3m",
        "P3l",
        "P3c",
        "P3cb",
        "P3cm",
        "P3cl",
        "P4",
        "P4b",
        "P4c",
    ):
        (row,) = by_id[target]
        assert row["met"] is not None
        assert row["target"]
    for info in ("P3v", "P3o", "P3f", "P3cv", "P3co", "P3cf", "P4r", "P4o", "P4f"):
        assert all(row["met"] is None for row in by_id[info])

    # Every fsspec cache type is measured, once per workload.
    for fs_id in ("P3f", "P3cf", "P4f"):
        named = [str(row["baseline_name"]) for row in by_id[fs_id]]
        for ct in FSSPEC_CACHE_TYPES:
            assert sum(f"fsspec {ct}," in n or f"fsspec {ct}:" in n for n in named) == 1

    # The counts are the server's: what each client asked for, exactly.
    (p3,) = by_id["P3"]
    requests, mib = counts(str(p3["name"]))
    assert requests > 0
    assert mib >= 4.0
    assert counts(str(p3["baseline_name"])) == (1, 4.0)
    (p3m,) = by_id["P3m"]
    # One HEAD, then one range of up to 8 MiB; reading it out asks nothing.
    assert counts(str(p3m["baseline_name"])) == (2, 4.0)
    assert "read out" in str(p3m["baseline_name"])
    # The other way round: ours through read_view, the fetcher landing only.
    (p3v,) = by_id["P3v"]
    assert "read_view" in str(p3v["name"])
    assert counts(str(p3v["baseline_name"])) == (2, 4.0)
    assert counts(str(p3v["name"]))[1] >= 4.0
    # The landing floor: one whole GET per file, every byte landed.
    (p3l,) = by_id["P3l"]
    assert counts(str(p3l["baseline_name"])) == (1, 4.0)
    (p3cl,) = by_id["P3cl"]
    assert counts(str(p3cl["baseline_name"])) == (4, 4.0)
    (p3c,) = by_id["P3c"]
    requests, mib = counts(str(p3c["name"]))
    assert requests >= 4
    assert mib >= 4.0
    assert counts(str(p3c["baseline_name"])) == (4, 4.0)
    (p3cm,) = by_id["P3cm"]
    assert counts(str(p3cm["baseline_name"])) == (8, 4.0)
    (p3cv,) = by_id["P3cv"]
    assert counts(str(p3cv["baseline_name"])) == (8, 4.0)
    (p3o,) = by_id["P3o"]
    assert counts(str(p3o["baseline_name"])) == (1, 4.0)
    (p4r,) = by_id["P4r"]
    assert counts(str(p4r["baseline_name"])) == (64, round(64 * 4096 / MiB, 1))
    (p4,) = by_id["P4"]
    requests, mib = counts(str(p4["name"]))
    assert requests > 0
    (p4c,) = by_id["P4c"]
    # P4c is ours' bytes over the 0.25 MiB read, as the server counted them.
    assert abs(p4c["ours"] * 0.25 - mib) <= 0.05
    assert p4c["ours"] <= 4
