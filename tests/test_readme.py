"""Every Python snippet of the README runs as printed, against a local server.

The snippets' ``https://example.org/`` URLs are pointed at a RangeHTTPServer
on 127.0.0.1 serving the objects they name; each snippet runs in a fresh
interpreter with warnings as errors.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_engine_thread import http_server_thread

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIG = b"0123456789abcdef" * 100_000


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def parquet_bytes() -> bytes:
    out = io.BytesIO()
    table = pa.table({"x": list(range(1000)), "y": [str(i) for i in range(1000)]})
    pq.write_table(table, out)
    return out.getvalue()


# What each snippet prints, in README order.
EXPECTED = [
    ["1000"],
    ["b'0123456789abcdef' b'0123456789abcdef'"],
    ["True b'0123456789abcdef'", "CacheStatistics("],
    ["b'0123456789abcdef' b'patched'", "[vsyscall]"],
    ["b'0123456789abcdef' b'0123456789abcdef'"],
]


def test_the_readme_goes_from_files_to_engine_to_address_space_to_real_memory():
    code = snippets()
    assert len(code) == len(EXPECTED)
    assert "aiomemmap.open(" in code[0]
    assert len(code[0].strip().splitlines()) == 4  # import, blank... three lines
    assert "open_async" in code[1]
    assert "Engine" in code[2]
    assert "AddressSpace" in code[3]
    assert "map_file" in code[4]


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_readme_snippet_runs(index: int) -> None:
    code = snippets()[index]
    with http_server_thread() as srv:
        base = srv.add("big.bin", BIG).removesuffix("big.bin")
        srv.add("data.parquet", parquet_bytes())
        script = code.replace("https://example.org/", base)
        assert base in script
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for expected in EXPECTED[index]:
        assert expected in proc.stdout
