"""The benchmark suite behind ``aiomemmap bench``.

Every row measures one of our operations and, in the same run, a baseline that
bounds what it could achieve (a plain ``memoryview`` copy, a bare syscall, a
direct call). Figures are medians of several repeats; what matters is the
ratio, since the machine is shared and absolute figures drift.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TextIO, final

__all__ = [
    "BenchRow",
    "Benchmark",
    "measure_async_rate",
    "measure_rate",
    "register",
    "registered",
    "render_table",
    "run_benchmarks",
    "write_json",
]


@final
@dataclass(frozen=True, slots=True)
class BenchRow:
    """One benchmark result.

    Attributes:
        id: The row's identifier (``M1``... for layer micro-benchmarks,
            ``P1``... for the targets of the specification).
        name: What was measured.
        unit: The unit of ``ours`` and ``baseline``.
        ours: Our figure.
        baseline: The baseline's figure, measured in the same run.
        baseline_name: What the baseline is.
        ratio: ``ours / baseline`` for rates, ``baseline / ours`` for costs,
            so that higher is always better.
        target: The target, in words, or ``""`` for none.
        met: Whether the target is met; ``None`` without a target.
    """

    id: str
    name: str
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    ratio: float
    target: str = ""
    met: bool | None = None


Benchmark = Callable[[], Awaitable[list[BenchRow]]]

_REGISTRY: dict[str, Benchmark] = {}


def register(ids: str) -> Callable[[Benchmark], Benchmark]:
    """Register a benchmark producing the rows named in ``ids`` (comma separated)."""

    def wrap(fn: Benchmark) -> Benchmark:
        _REGISTRY[ids] = fn
        return fn

    return wrap


def registered() -> dict[str, Benchmark]:
    """Return the registered benchmarks, keyed by their comma-separated row ids."""
    from aiomemmap.tools.bench import (  # noqa: F401  (register on import)
        _addrspace,
        _faces,
        _micro,
        _realmem,
        _remote,
    )

    return dict(_REGISTRY)


def measure_rate(
    fn: Callable[[], object], *, batch: int, repeats: int = 5, min_time: float = 0.1
) -> float:
    """Return the median rate of ``fn`` in calls per second.

    ``fn`` is called ``batch`` times per timing; each of ``repeats`` timings
    runs batches until ``min_time`` seconds have passed.
    """
    rates = []
    for _ in range(repeats):
        calls = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(batch):
                fn()
            calls += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        rates.append(calls / elapsed)
    return statistics.median(rates)


async def measure_async_rate(
    fn: Callable[[], Awaitable[object]],
    *,
    batch: int,
    repeats: int = 5,
    min_time: float = 0.1,
) -> float:
    """Like :func:`measure_rate` for a coroutine function."""
    rates = []
    for _ in range(repeats):
        calls = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(batch):
                await fn()
            calls += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        rates.append(calls / elapsed)
    return statistics.median(rates)


def _selected(ids: str, only: set[str] | None) -> bool:
    return only is None or bool({i.upper() for i in ids.split(",")} & only)


def run_benchmarks(only: Iterable[str] | None = None) -> list[BenchRow]:
    """Run the registered benchmarks (or those with a row id in ``only``).

    Uses uvloop when it is installed.

    Raises:
        ValueError: ``only`` names no known row.
    """
    wanted = None if only is None else {s.strip().upper() for s in only if s.strip()}
    benches = registered()
    if wanted is not None:
        known = {i.upper() for ids in benches for i in ids.split(",")}
        unknown = wanted - known
        if unknown:
            raise ValueError(
                f"unknown benchmark ids {sorted(unknown)}; known: {sorted(known)}"
            )

    async def main() -> list[BenchRow]:
        rows: list[BenchRow] = []
        for ids, bench in benches.items():
            if _selected(ids, wanted):
                rows.extend(
                    r for r in await bench() if wanted is None or r.id.upper() in wanted
                )
        rows.sort(key=_row_order)
        return rows

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional extra
        return asyncio.run(main())
    return uvloop.run(main())


def _row_order(row: BenchRow) -> tuple[bool, int]:
    """Micro-benchmarks (M) first, then the targets (P), by number.

    The sort is stable: rows of one number keep the order their benchmark
    gave them (P3's rows, then P3c's, each with its target rows first).
    """
    digits = ""
    for c in row.id[1:]:
        if not c.isdigit():
            break
        digits += c
    return (row.id[0] != "M", int(digits or 0))


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render_table(rows: list[BenchRow], out: TextIO) -> None:
    """Print ``rows`` as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="aiomemmap bench (medians; ratio > 1 means we beat the baseline)"
    )
    for col in ("id", "what", "ours", "baseline", "ratio", "target", "met"):
        table.add_column(col, justify="right" if col in ("ours", "ratio") else "left")
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        table.add_row(
            r.id,
            r.name,
            f"{_fmt(r.ours)} {r.unit}",
            f"{_fmt(r.baseline)} {r.unit} ({r.baseline_name})",
            f"{r.ratio:.2f}",
            r.target,
            met,
        )
    Console(file=out, width=160).print(table)


def write_json(rows: list[BenchRow], path: str) -> None:
    """Write ``rows`` to ``path`` as a JSON list of objects."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump([asdict(r) for r in rows], f, indent=2)
        f.write("\n")
