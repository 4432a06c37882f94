"""Light imports: what ``import aiomemmap`` and each public name load.

Each check runs in a fresh interpreter, so that modules the test session
already imported do not hide what the code under test imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aiomemmap

PACKAGE = Path(aiomemmap.__file__).resolve().parent

# Libraries a client of the package must not pay for unless it uses them.
NETWORK = frozenset({"aiohttp", "yarl", "fsspec", "s3fs", "aiobotocore", "botocore"})
HEAVY = NETWORK | {"rich", "anyio", "sortedcontainers", "uvloop"}


def loaded_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter; return the top-level modules loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _json, sys as _sys
        print(_json.dumps(sorted({m.partition(".")[0] for m in _sys.modules})))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PACKAGE.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_import_aiomemmap_loads_only_the_standard_library():
    loaded = loaded_after("import aiomemmap")
    assert loaded & HEAVY == set()
    at_start = loaded_after("pass")
    assert loaded - at_start - set(sys.stdlib_module_names) == {"aiomemmap"}


def test_import_aiomemmap_loads_no_submodule():
    code = """
        import sys
        import aiomemmap
        print(sorted(m for m in sys.modules if m.startswith("aiomemmap.")))
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "names",
    [
        ["CachedFile"],
        ["AddressSpace"],
        ["BytesBacking"],
        ["LocalFileBacking"],
        ["SharedMemory", "MemoryFile", "MappingSet", "InvalidationBus"],
        ["Backing", "RetryPolicy", "FaultInjectingBacking"],
    ],
    ids=lambda names: "+".join(names),
)
def test_core_names_load_no_network_library(names: list[str]):
    loaded = loaded_after(
        "import aiomemmap\n" + "".join(f"aiomemmap.{n}\n" for n in names)
    )
    assert loaded & NETWORK == set()
    assert "rich" not in loaded


def test_a_cached_file_on_a_local_file_loads_no_network_library(tmp_path: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 10_000)
    loaded = loaded_after(
        f"""
        import asyncio
        from aiomemmap import CachedFile, MemoryFile, open_backing

        async def main():
            backing = open_backing({str(data)!r})
            with MemoryFile("probe") as mf:
                cf = CachedFile(backing, mf)
                try:
                    assert await cf.read(0, 5) == b"xxxxx"
                finally:
                    await cf.aclose()
                    await backing.aclose()

        asyncio.run(main())
        """
    )
    assert loaded & NETWORK == set()


def test_open_of_a_local_path_loads_no_network_library(tmp_path: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"y" * 10_000)
    loaded = loaded_after(
        f"""
        import asyncio
        import aiomemmap

        with aiomemmap.open({str(data)!r}) as f:
            assert f.read(3) == b"yyy"

        async def main():
            async with await aiomemmap.open_async({str(data)!r}) as f:
                assert await f.pread(5, 2) == b"yy"

        asyncio.run(main())
        """
    )
    assert loaded & NETWORK == set()


def test_engine_names_load_no_network_library():
    loaded = loaded_after(
        "import aiomemmap\naiomemmap.Engine\naiomemmap.EngineThread\n"
        "aiomemmap.default_engine\naiomemmap.open\naiomemmap.open_async"
    )
    assert loaded & NETWORK == set()


def test_http_backing_loads_aiohttp_and_not_fsspec():
    loaded = loaded_after("import aiomemmap\naiomemmap.HttpBacking")
    assert {"aiohttp", "yarl"} <= loaded
    assert "fsspec" not in loaded


def test_fsspec_backing_loads_fsspec_and_not_aiohttp():
    loaded = loaded_after("import aiomemmap\naiomemmap.FsspecBacking")
    assert "fsspec" in loaded
    assert loaded & {"aiohttp", "yarl"} == set()


def test_open_backing_loads_what_the_url_needs(tmp_path: Path):
    local = tmp_path / "f.bin"
    local.write_bytes(b"abc")
    assert (
        loaded_after(
            f"from aiomemmap import open_backing\nopen_backing({str(local)!r})"
        )
        & NETWORK
        == set()
    )
    http = loaded_after(
        "from aiomemmap import open_backing\nopen_backing('http://127.0.0.1:9/x.bin')"
    )
    assert {"aiohttp", "yarl"} <= http
    assert "fsspec" not in http
    memory = loaded_after(
        "from aiomemmap import open_backing\nopen_backing('memory://bucket/x.bin')"
    )
    assert "fsspec" in memory


def test_backing_protocol_module_loads_no_network_library():
    loaded = loaded_after(
        """
        from aiomemmap.backings.base import (
            Backing, RetryPolicy, call_with_retry, is_transient, read_fully,
        )
        assert is_transient(ConnectionResetError())
        assert not is_transient(FileNotFoundError())
        assert not is_transient(ValueError())
        """
    )
    assert loaded & NETWORK == set()


def test_every_public_name_resolves_and_is_listed():
    code = """
        import aiomemmap
        missing = [n for n in aiomemmap.__all__ if n not in dir(aiomemmap)]
        assert missing == [], missing
        for name in aiomemmap.__all__:
            value = getattr(aiomemmap, name)
            assert value is not None, name
            assert vars(aiomemmap)[name] is value, name
    """
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )


def test_dir_lists_every_public_name_loaded_or_not():
    listed = dir(aiomemmap)
    assert listed == sorted(listed)
    assert set(aiomemmap.__all__) <= set(listed)
    assert "__version__" in listed


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = aiomemmap.no_such_name  # type: ignore[attr-defined]
    assert not hasattr(aiomemmap, "HttpBackingX")
    from aiomemmap.backings import base

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = base.no_such_name  # type: ignore[attr-defined]


def test_type_checking_imports_match_the_lazy_table():
    """What type checkers see is what the package loads, name for name."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    seen: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Attribute | ast.Name)
            and ast.unparse(node.test).endswith("TYPE_CHECKING")
        ):
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.unparse(stmt)
                for alias in stmt.names:
                    assert alias.asname == alias.name, ast.unparse(stmt)
                    assert stmt.module is not None
                    seen[alias.name] = stmt.module
    table = aiomemmap._MODULE_OF
    assert seen == table
    assert sorted(table) == sorted(aiomemmap.__all__)
    for name, module in table.items():
        defined_in = getattr(aiomemmap, name)
        if isinstance(defined_in, type) or callable(defined_in):
            assert defined_in.__module__ == module, name
