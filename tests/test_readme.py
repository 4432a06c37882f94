"""The README's quick start runs as printed (against a local file)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quick_start_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    data = tmp_path / "big.bin"
    data.write_bytes(b"0123456789abcdef" * 100_000)
    script = code.group(1).replace("https://example.org/big.bin", str(data))
    assert str(data) in script
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "b'0123456789abcdef' b'patched'" in out
    assert "[vsyscall]" in out
