"""Small, deterministic files in the formats real readers open remotely.

Each maker returns the file's bytes (or, for a zarr store, its objects by
key), built from a fixed seed, so that every test compares a remote read
against a local read of exactly the same data:

* :func:`parquet_bytes`: a parquet file with several columns and row groups;
* :func:`netcdf_bytes`: a netCDF4 (HDF5) file with a chunked variable;
* :func:`zarr_objects`: the objects of a zarr v3 store (a group, two arrays);
* :func:`zip_bytes`: a zip archive with stored and deflated members.

:func:`serve_http` and :func:`put_s3` publish them, :class:`Published` says
where.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 20260913

PARQUET_ROWS = 40_000
PARQUET_ROW_GROUP = 8_000
PARQUET_COLUMNS = ("id", "value", "label", "flag", "count")

NETCDF_SHAPE = (12, 64, 96)  # time, y, x
NETCDF_CHUNKS = (1, 32, 48)
NETCDF_VARIABLE = "temperature"

ZARR_STORE = "store.zarr"
ZARR_ARRAY = "grid"
ZARR_SHAPE = (200, 300)
ZARR_CHUNKS = (50, 60)

ZIP_MEMBERS = ("README.txt", "data/numbers.bin", "data/words.txt", "empty.txt")

NAMES = {
    "parquet": "table.parquet",
    "netcdf": "cube.nc",
    "zip": "archive.zip",
}


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def parquet_table() -> Any:
    """The table :func:`parquet_bytes` writes (a ``pyarrow.Table``)."""
    import pyarrow as pa

    rng = _rng()
    n = PARQUET_ROWS
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "value": pa.array(rng.standard_normal(n)),
            "label": pa.array(words[rng.integers(0, len(words), n)].tolist()),
            "flag": pa.array(rng.integers(0, 2, n).astype(bool)),
            "count": pa.array(rng.integers(0, 1_000_000, n, dtype=np.int32)),
        }
    )


def parquet_bytes() -> bytes:
    """A parquet file of :func:`parquet_table`, in several row groups."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(parquet_table(), buf, row_group_size=PARQUET_ROW_GROUP)
    return buf.getvalue()


def netcdf_dataset() -> Any:
    """The dataset :func:`netcdf_bytes` writes (an ``xarray.Dataset``)."""
    import xarray as xr

    rng = _rng()
    t, y, x = NETCDF_SHAPE
    data = rng.standard_normal(NETCDF_SHAPE).astype(np.float32)
    return xr.Dataset(
        {
            NETCDF_VARIABLE: (("time", "y", "x"), data, {"units": "K"}),
            "mask": (("y", "x"), rng.integers(0, 2, (y, x)).astype(np.int8)),
        },
        coords={
            "time": np.arange(t, dtype=np.int64),
            "y": np.linspace(-1.0, 1.0, y),
            "x": np.linspace(0.0, 2.0, x),
        },
        attrs={"title": "aiomemmap test cube"},
    )


def netcdf_bytes() -> bytes:
    """A netCDF4 file of :func:`netcdf_dataset`, its main variable chunked."""
    encoding = {NETCDF_VARIABLE: {"chunksizes": NETCDF_CHUNKS, "zlib": True}}
    out = netcdf_dataset().to_netcdf(engine="h5netcdf", encoding=encoding)
    return bytes(out)


def zarr_grid() -> np.ndarray:
    """The values of the store's main array."""
    return _rng().standard_normal(ZARR_SHAPE).astype(np.float64)


def zarr_objects() -> dict[str, bytes]:
    """The objects of a zarr v3 store: a group with two arrays, by key."""
    import zarr
    from zarr.storage import MemoryStore

    store_dict: dict[str, Any] = {}
    group = zarr.open_group(MemoryStore(store_dict), mode="w", zarr_format=3)
    group.attrs["title"] = "aiomemmap test store"
    grid = group.create_array(
        ZARR_ARRAY, shape=ZARR_SHAPE, chunks=ZARR_CHUNKS, dtype="f8"
    )
    grid[:] = zarr_grid()
    small = group.create_array("small", shape=(10,), chunks=(10,), dtype="i4")
    small[:] = np.arange(10, dtype=np.int32)
    return {key: value.to_bytes() for key, value in sorted(store_dict.items())}


def zip_member_bytes() -> dict[str, bytes]:
    """The members of :func:`zip_bytes`, by name."""
    rng = _rng()
    return {
        "README.txt": b"A small archive for the aiomemmap tests.\n" * 20,
        "data/numbers.bin": rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes(),
        "data/words.txt": "\n".join(f"word {i}" for i in range(5_000)).encode(),
        "empty.txt": b"",
    }


def zip_bytes() -> bytes:
    """A zip archive of :func:`zip_member_bytes`, with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, data) in enumerate(zip_member_bytes().items()):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def all_files() -> dict[str, bytes]:
    """Every dataset as objects to publish, by name (the store under its prefix)."""
    files = {
        NAMES["parquet"]: parquet_bytes(),
        NAMES["netcdf"]: netcdf_bytes(),
        NAMES["zip"]: zip_bytes(),
    }
    for key, data in zarr_objects().items():
        files[f"{ZARR_STORE}/{key}"] = data
    return files


@dataclass(frozen=True)
class Published:
    """Where the datasets are served.

    Attributes:
        base: The URL prefix; the object ``name`` is at ``f"{base}/{name}"``.
        storage_options: The options a reader passes for ``base``'s protocol
            (e.g. the S3 endpoint).
        files: The objects served, by name.
    """

    base: str
    storage_options: Mapping[str, Any]
    files: Mapping[str, bytes]

    def url(self, name: str) -> str:
        """The URL of object ``name``."""
        return f"{self.base}/{name}"

    @property
    def protocol(self) -> str:
        """The protocol of :attr:`base` (``http``, ``s3``)."""
        return self.base.partition("://")[0]


def serve_http(server: Any, files: Mapping[str, bytes]) -> Published:
    """Add ``files`` to a running ``RangeHTTPServer``; return where they are."""
    for name, data in files.items():
        server.add(name, data)
    return Published(f"http://127.0.0.1:{server.port}", {}, dict(files))


def put_s3(
    client: Any, endpoint: str, bucket: str, files: Mapping[str, bytes]
) -> Published:
    """Upload ``files`` to ``bucket`` with a boto3 client; return where they are."""
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=name, Body=data)
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return Published(f"s3://{bucket}", options, dict(files))
