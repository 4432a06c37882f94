"""Real readers over real protocols: every face gives what a local read gives.

parquet by pyarrow, netCDF by xarray/h5netcdf, a zarr v3 store by zarr and a
zip archive by zipfile, each served over HTTP (RangeHTTPServer) and over S3
(moto), each read through ``aiomemmap.open``, the ``aiomemmap::`` protocol
and ``cache_type="aiomemmap"``, compared value for value with a read of the
same bytes from memory.
"""

from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

import aiomemmap
from aiomemmap.tools.http_server import RangeHTTPServer
from tests import datasets
from tests.s3_server import moto_s3

FACES = ("open", "chained", "cache_type")
COLUMNS = ["value", "label", "count"]


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return datasets.all_files()


@pytest.fixture(scope="module")
def http(files: dict[str, bytes]) -> Iterator[datasets.Published]:
    """The datasets on a RangeHTTPServer running on a loop thread of its own."""
    started = threading.Event()
    stop: list[asyncio.Event] = []
    published: list[datasets.Published] = []

    async def serve() -> None:
        async with RangeHTTPServer() as srv:
            published.append(datasets.serve_http(srv, files))
            stop.append(asyncio.Event())
            started.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(30)
        yield published[0]
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def s3(files: dict[str, bytes]) -> Iterator[datasets.Published]:
    with moto_s3("aiomemmap-real-world") as (endpoint, client, bucket):
        yield datasets.put_s3(client, endpoint, bucket, files)


@pytest.fixture(params=["http", "s3"])
def published(request: pytest.FixtureRequest) -> datasets.Published:
    return request.getfixturevalue(request.param)


def remote_file(
    pub: datasets.Published, name: str, face: str
) -> AbstractContextManager[Any]:
    """Open object ``name`` of ``pub`` as a binary file through ``face``."""
    url = pub.url(name)
    options = dict(pub.storage_options)
    if face == "open":
        return aiomemmap.open(url, **options)
    if face == "chained":
        return fsspec.open(
            f"aiomemmap::{url}", "rb", **({pub.protocol: options} if options else {})
        ).open()
    assert face == "cache_type"
    fs, path = fsspec.url_to_fs(url, **options)
    return fs.open(path, "rb", cache_type="aiomemmap")


def chained_options(pub: datasets.Published) -> dict[str, Any]:
    return {pub.protocol: dict(pub.storage_options)} if pub.storage_options else {}


@pytest.mark.parametrize("face", FACES)
def test_parquet_columns_by_pyarrow(published, face):
    with remote_file(published, datasets.NAMES["parquet"], face) as f:
        table = pq.read_table(f, columns=COLUMNS)
    assert table.equals(datasets.parquet_table().select(COLUMNS))


@pytest.mark.parametrize("face", FACES)
def test_parquet_row_group_by_pyarrow(published, face):
    with remote_file(published, datasets.NAMES["parquet"], face) as f:
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_row_groups == (
            datasets.PARQUET_ROWS // datasets.PARQUET_ROW_GROUP
        )
        group = pf.read_row_group(3, columns=["id", "flag"])
    local = pq.ParquetFile(io.BytesIO(published.files[datasets.NAMES["parquet"]]))
    assert group.equals(local.read_row_group(3, columns=["id", "flag"]))


@pytest.mark.parametrize("face", FACES)
def test_netcdf_by_xarray_h5netcdf(published, face):
    expected = datasets.netcdf_dataset()
    with (
        remote_file(published, datasets.NAMES["netcdf"], face) as f,
        xr.open_dataset(f, engine="h5netcdf") as ds,
    ):
        part = ds[datasets.NETCDF_VARIABLE][2:5, 10:40, 30:90].load()
        xr.testing.assert_identical(
            part, expected[datasets.NETCDF_VARIABLE][2:5, 10:40, 30:90]
        )
        xr.testing.assert_identical(ds["mask"].load(), expected["mask"])
        assert ds.attrs["title"] == expected.attrs["title"]


def test_netcdf_by_xarray_from_a_chained_url(published):
    url = "aiomemmap::" + published.url(datasets.NAMES["netcdf"])
    with xr.open_dataset(
        url, engine="h5netcdf", storage_options=chained_options(published)
    ) as ds:
        xr.testing.assert_identical(ds.load(), datasets.netcdf_dataset())


def test_zarr_v3_store_by_zarr(published):
    url = "aiomemmap::" + published.url(datasets.ZARR_STORE)
    group = zarr.open_group(url, mode="r", storage_options=chained_options(published))
    assert group.metadata.zarr_format == 3
    assert group.attrs["title"] == "aiomemmap test store"
    grid = group[datasets.ZARR_ARRAY]
    assert grid.shape == datasets.ZARR_SHAPE
    np.testing.assert_array_equal(
        grid[30:170, 45:250], datasets.zarr_grid()[30:170, 45:250]
    )
    np.testing.assert_array_equal(group["small"][:], np.arange(10, dtype=np.int32))


def test_zarr_v3_array_by_zarr_open_array(published):
    url = "aiomemmap::" + published.url(f"{datasets.ZARR_STORE}/{datasets.ZARR_ARRAY}")
    grid = zarr.open_array(url, mode="r", storage_options=chained_options(published))
    np.testing.assert_array_equal(grid[:], datasets.zarr_grid())


@pytest.mark.parametrize("face", FACES)
def test_zip_listed_and_member_read_by_zipfile(published, face):
    members = datasets.zip_member_bytes()
    with (
        remote_file(published, datasets.NAMES["zip"], face) as f,
        zipfile.ZipFile(f) as zf,
    ):
        assert zf.namelist() == list(datasets.ZIP_MEMBERS)
        assert zf.read("data/numbers.bin") == members["data/numbers.bin"]
        assert zf.read("empty.txt") == b""
        with zf.open("data/words.txt") as member:
            assert member.read() == members["data/words.txt"]


@pytest.mark.parametrize("face", FACES)
def test_every_byte_equals_the_local_bytes(published, face):
    name = datasets.NAMES["netcdf"]
    local = published.files[name]
    with remote_file(published, name, face) as f:
        assert f.read() == local
        f.seek(len(local) // 3)
        assert f.read(5000) == local[len(local) // 3 : len(local) // 3 + 5000]
