"""Benchmark of the sync and fsspec faces under real readers (row P9).

pyarrow reads one column of a parquet file, xarray/h5netcdf a slice of a
netCDF variable, zarr a slice of a v3 array, over HTTP from a server in a
process of its own with 2 ms of latency per request. Each read runs cold
(a new engine, a new fsspec filesystem, a new store) through:

* ``aiomemmap.open`` and the ``aiomemmap::`` protocol (ours);
* fsspec's HTTP filesystem with its default cache type and with each of
  ``readahead``, ``blockcache``, ``bytes``, ``background``, ``adaptive`` and
  ``none`` (for zarr, which reads whole chunks without a file, fsspec's
  HTTP store as zarr uses it);
* obstore (its fsspec adapter for the file readers, its zarr store for
  zarr).

The server counts requests and body bytes. The readers (pyarrow, xarray,
h5netcdf, zarr, obstore) come with the ``bench`` extra.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import fsspec

import aiomemmap
from aiomemmap.tools.bench import BenchRow, register
from aiomemmap.tools.bench._served import ServedFiles, ServerCounts

__all__ = ["faces"]

_SEED: Final[int] = 20261125
_MIB: Final[int] = 1 << 20
LATENCY: Final[float] = 0.002
#: Cold runs per configuration (the median is reported).
REPEATS = int(os.environ.get("AIOMEMMAP_BENCH_P9_REPEATS", 3))
#: Rows of the parquet file (8 float64 columns); the environment may shrink it.
PARQUET_ROWS = int(os.environ.get("AIOMEMMAP_BENCH_P9_PARQUET_ROWS", 1 << 20))
#: Side of the square zarr array of float64 and of the netCDF grid.
GRID = int(os.environ.get("AIOMEMMAP_BENCH_P9_GRID", 2048))

FSSPEC_DEFAULT: Final[str] = "bytes"
FSSPEC_CACHE_TYPES: Final[tuple[str, ...]] = (
    "readahead",
    "blockcache",
    "bytes",
    "background",
    "adaptive",
    "none",
)


def _write_datasets(root: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xarray as xr
    import zarr

    rng = np.random.default_rng(_SEED)
    table = pa.table({f"c{i}": rng.standard_normal(PARQUET_ROWS) for i in range(8)})
    pq.write_table(table, root / "table.parquet", row_group_size=PARQUET_ROWS // 8)
    side = GRID // 8
    cube = rng.standard_normal((48, side, side)).astype(np.float32)
    xr.Dataset({"t": (("time", "y", "x"), cube)}).to_netcdf(
        root / "cube.nc",
        engine="h5netcdf",
        encoding={"t": {"chunksizes": (1, side // 2, side // 2)}},
    )
    grid = zarr.open_array(
        str(root / "store.zarr"),
        mode="w",
        shape=(GRID, GRID),
        chunks=(GRID // 8, GRID // 8),
        dtype="f8",
        zarr_format=3,
    )
    grid[:] = rng.standard_normal((GRID, GRID))


def _read_parquet(f: object) -> object:
    import pyarrow.parquet as pq

    return pq.read_table(f, columns=["c3"])


def _read_netcdf(f: object) -> object:
    import xarray as xr

    side = GRID // 8
    with xr.open_dataset(typing.cast("Any", f), engine="h5netcdf") as ds:
        return ds["t"][10:20, : side // 2, : side // 2].values


def _read_zarr(array: object) -> object:
    q = GRID // 8
    return typing.cast("Any", array)[q : 3 * q, q : 3 * q]


@final
@dataclass(frozen=True, slots=True)
class _Run:
    seconds: float
    used: ServerCounts


@contextmanager
def _engine_thread() -> Iterator[aiomemmap.EngineThread]:
    thread = aiomemmap.Engine().start_thread()
    try:
        yield thread
    finally:
        thread.close()


def _measure(
    served: ServedFiles,
    open_source: Callable[[], AbstractContextManager[Any]],
    read: Callable[[Any], object],
) -> _Run:
    """Median time and mean server counts of cold reads through ``open_source``."""
    times = []
    before = served.counts()
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        with open_source() as source:
            read(source)
        times.append(time.perf_counter() - t0)
    used = served.counts() - before
    return _Run(
        statistics.median(times),
        ServerCounts(used.requests // REPEATS, used.bytes_sent // REPEATS),
    )


@contextmanager
def _aiomemmap_open(url: str) -> Iterator[Any]:
    with _engine_thread() as thread, aiomemmap.open(url, engine=thread) as f:
        yield f


@contextmanager
def _chained_open(url: str) -> Iterator[Any]:
    with (
        _engine_thread() as thread,
        fsspec.open(
            f"aiomemmap::{url}",
            "rb",
            aiomemmap={"engine": thread, "skip_instance_cache": True},
        ) as f,
    ):
        yield f


def _close_http_fs(fs: object) -> None:
    session = getattr(fs, "_session", None)
    if session is not None:
        fsspec.asyn.sync(typing.cast("Any", fs).loop, session.close)


@contextmanager
def _fsspec_open(url: str, cache_type: str) -> Iterator[Any]:
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    try:
        with fs.open(url, "rb", cache_type=cache_type) as f:
            yield f
    finally:
        _close_http_fs(fs)


@contextmanager
def _obstore_open(url: str) -> Iterator[Any]:
    from obstore.fsspec import FsspecStore

    fs = typing.cast("Any", FsspecStore)("http", client_options={"allow_http": True})
    with fs.open(url, "rb") as f:
        yield f


@contextmanager
def _zarr_chained(url: str) -> Iterator[Any]:
    import zarr

    with _engine_thread() as thread:
        options = {"aiomemmap": {"engine": thread, "skip_instance_cache": True}}
        yield zarr.open_array(f"aiomemmap::{url}", mode="r", storage_options=options)


@contextmanager
def _zarr_fsspec(url: str) -> Iterator[Any]:
    import zarr

    yield zarr.open_array(url, mode="r", storage_options={"skip_instance_cache": True})


@contextmanager
def _zarr_obstore(url: str) -> Iterator[Any]:
    import zarr
    from obstore.store import HTTPStore
    from zarr.storage import ObjectStore

    store = ObjectStore(
        HTTPStore.from_url(url, client_options={"allow_http": True}), read_only=True
    )
    yield zarr.open_array(store, mode="r")


def _describe(run: _Run) -> str:
    return (
        f"{run.seconds * 1000:.0f} ms, {run.used.requests} req, "
        f"{run.used.bytes_sent / _MIB:.2f} MiB"
    )


def _rows(
    library: str, ours: dict[str, _Run], theirs: dict[str, _Run], other: _Run | None
) -> list[BenchRow]:
    default = theirs[FSSPEC_DEFAULT]
    best_name, best = min(theirs.items(), key=lambda kv: kv[1].seconds)
    rows = []
    for face, run in ours.items():
        rows.append(
            BenchRow(
                "P9",
                f"{library} via {face}: {_describe(run)}",
                "s",
                run.seconds,
                default.seconds,
                f"fsspec cache_type={FSSPEC_DEFAULT} (default): {_describe(default)}",
                default.seconds / run.seconds,
                target=">= 1.5x fsspec's default",
                met=default.seconds >= 1.5 * run.seconds,
            )
        )
        rows.append(
            BenchRow(
                "P9b",
                f"{library} via {face} against fsspec's best",
                "s",
                run.seconds,
                best.seconds,
                f"fsspec {best_name}: {_describe(best)}",
                best.seconds / run.seconds,
                target=">= 1x fsspec's best, bytes <= its bytes",
                met=best.seconds >= run.seconds
                and run.used.bytes_sent <= best.used.bytes_sent,
            )
        )
        if other is not None:
            rows.append(
                BenchRow(
                    "P9c",
                    f"{library} via {face} against obstore",
                    "s",
                    run.seconds,
                    other.seconds,
                    f"obstore: {_describe(other)}",
                    other.seconds / run.seconds,
                )
            )
    return rows


def _file_library(
    served: ServedFiles, library: str, name: str, read: Callable[[Any], object]
) -> list[BenchRow]:
    url = served.url(name)
    ours = {
        "aiomemmap.open": _measure(served, lambda: _aiomemmap_open(url), read),
        "aiomemmap::": _measure(served, lambda: _chained_open(url), read),
    }
    theirs = {
        ct: _measure(served, functools.partial(_fsspec_open, url, ct), read)
        for ct in FSSPEC_CACHE_TYPES
    }
    other = _measure(served, lambda: _obstore_open(url), read)
    return _rows(library, ours, theirs, other)


def _zarr_library(served: ServedFiles) -> list[BenchRow]:
    url = served.url("store.zarr")
    ours = {"aiomemmap::": _measure(served, lambda: _zarr_chained(url), _read_zarr)}
    plain = _measure(served, lambda: _zarr_fsspec(url), _read_zarr)
    other = _measure(served, lambda: _zarr_obstore(url), _read_zarr)
    return _rows("zarr slice", ours, {FSSPEC_DEFAULT: plain}, other)


def _run_all() -> list[BenchRow]:
    with tempfile.TemporaryDirectory(prefix="aiomemmap-p9-") as tmp:
        root = Path(tmp)
        _write_datasets(root)
        with ServedFiles(root, latency=LATENCY) as served:
            return [
                *_file_library(
                    served, "pyarrow column", "table.parquet", _read_parquet
                ),
                *_file_library(served, "xarray slice", "cube.nc", _read_netcdf),
                *_zarr_library(served),
            ]


@register("P9,P9b,P9c")
async def faces() -> list[BenchRow]:
    """P9: real readers through the sync and fsspec faces over HTTP."""
    return await asyncio.to_thread(_run_all)
