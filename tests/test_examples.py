"""Every script in examples/ runs to completion."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from tests.test_kvm_guest import KVM_USABLE

EXAMPLES = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py")
)


def test_examples_exist():
    assert EXAMPLES


# What an example may import from the package: the public API, and the test
# HTTP server documented as a public tool.
PUBLIC_MODULES = frozenset({"aiomemmap", "aiomemmap.tools.http_server"})


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_imports_only_public_names(script: pathlib.Path):
    tree = ast.parse(script.read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            used.add(node.module)
            assert all(not a.name.startswith("_") for a in node.names), node.module
        elif isinstance(node, ast.Import):
            used.update(a.name for a in node.names)
    ours = {m for m in used if m.partition(".")[0] == "aiomemmap"}
    assert ours
    assert ours <= PUBLIC_MODULES


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: pathlib.Path):
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if script.name == "kvm_guest.py" and not KVM_USABLE:
        # A host without a usable /dev/kvm: the example says so and fails.
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "/dev/kvm is not usable" in proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done" in proc.stdout
