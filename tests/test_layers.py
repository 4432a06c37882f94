"""The package's layers import only downward (SPEC §2).

Every module of ``aiomemmap`` belongs to the subpackage it lives in, and each
subpackage is a layer. A module may import its own layer and the layers below
it, never one above: at module level, inside functions and under
``TYPE_CHECKING`` alike. The top-level package (the public facade) and
``__main__`` sit above every layer; of the layers, only the top one (the
command line and its tools) may import the facade.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import aiomemmap

# Lowest first. A new subpackage must be placed here before it can exist.
LAYERS: tuple[str, ...] = (
    "_core",  # pages, ranges, access, errors, blockseq, segments, locks, host calls
    "memmap",  # the interfaces, the mapping set, the invalidation bus
    "pgalloc",  # the memory file and its eviction
    "fsutil",  # the file range set and the dirty set shared by Mappables
    "backings",  # where a cached file's bytes come from
    "mappables",  # SharedMemory, CachedFile, fetcher, readahead
    "mm",  # the address space
    "engine",  # the embedding unit that owns a memory file and a bus
    "faces",  # sync, async and fsspec files over an engine
    "pager",  # real memory through userfaultfd
    "tools",  # the command line, the demo, the benchmarks, the test server
)
RANK = {name: i for i, name in enumerate(LAYERS)}

# Besides the standard library, the only third-party package the core may use.
CORE_THIRD_PARTY = frozenset({"sortedcontainers"})

PACKAGE_DIR = Path(aiomemmap.__file__).parent


def _modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _layer_of(path: Path) -> str | None:
    """The layer of a file of the package, or None for the facade."""
    rel = path.relative_to(PACKAGE_DIR)
    return rel.parts[0] if len(rel.parts) > 1 else None


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = ["aiomemmap", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module that ``path`` imports, absolute, with its line."""
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    return _imports_of(path.read_text(), package)


def _imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """Every module that ``source``, a module of ``package``, imports."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # ``from aiomemmap import mm`` names a subpackage too.
            if mod == "aiomemmap":
                out.extend((node.lineno, f"aiomemmap.{a.name}") for a in node.names)
    return out


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "aiomemmap" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK or (PACKAGE_DIR / parts[1]).is_dir() else None


def test_every_subpackage_is_a_known_layer() -> None:
    found = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").exists()}
    unknown = found - set(LAYERS)
    assert not unknown, f"subpackages not placed in LAYERS: {sorted(unknown)}"
    loose = sorted(
        p.name
        for p in PACKAGE_DIR.glob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    )
    assert not loose, f"modules outside every layer: {loose}"


def test_layers_import_only_downward() -> None:
    violations: list[str] = []
    for path in _modules():
        layer = _layer_of(path)
        if layer is None:
            continue
        for line, module in _imported_modules(path):
            target = _target_layer(module)
            if target is None:
                if module == "aiomemmap" and layer != LAYERS[-1]:
                    # Only the top layer (the command line) may use the
                    # facade, as any user of the package does.
                    violations.append(
                        f"{path.relative_to(PACKAGE_DIR)}:{line} imports the "
                        "facade `aiomemmap` (import from the layer instead)"
                    )
                continue
            if RANK[target] > RANK[layer]:
                violations.append(
                    f"{path.relative_to(PACKAGE_DIR)}:{line} ({layer}) imports "
                    f"{module} ({target}, a higher layer)"
                )
    assert not violations, "\n".join(violations)


def test_the_core_needs_only_the_standard_library() -> None:
    violations: list[str] = []
    for path in sorted((PACKAGE_DIR / "_core").rglob("*.py")):
        for line, module in _imported_modules(path):
            top = module.split(".")[0]
            if top in {"aiomemmap", "__future__"} or top in CORE_THIRD_PARTY:
                continue
            if top not in sys.stdlib_module_names:
                violations.append(f"_core/{path.name}:{line} imports {module}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from aiomemmap.mm.vma import Vma", "mm"),
        ("from aiomemmap import tools", "tools"),
        ("import aiomemmap.pgalloc.memory_file", "pgalloc"),
    ],
)
def test_the_checker_sees_each_import_form(source: str, expected: str) -> None:
    targets = [_target_layer(m) for _, m in _imports_of(source, "aiomemmap._core")]
    assert expected in targets


def test_the_checker_resolves_relative_imports() -> None:
    imports = _imports_of(
        "from ..mm import vma\nfrom . import pages\n", "aiomemmap._core"
    )
    assert [m for _, m in imports] == ["aiomemmap.mm", "aiomemmap._core"]
