"""The faces: files that Python programs already know, over an engine.

* :mod:`~aiomemmap.faces.remote_file`: :func:`aiomemmap.open` and
  :class:`~aiomemmap.RemoteFile`, a synchronous, seekable, thread-safe
  binary file (an :class:`io.RawIOBase`) for pyarrow, h5py, zipfile and
  every other reader of file objects;
* :mod:`~aiomemmap.faces.async_file`: :func:`aiomemmap.open_async` and
  :class:`~aiomemmap.AsyncRemoteFile`, the same for asyncio code, served on
  the caller's loop;
* :mod:`~aiomemmap.faces.fsspec_fs`: the ``aiomemmap::`` chained fsspec
  protocol, an async filesystem reading through the engine;
* :mod:`~aiomemmap.faces.fsspec_cache`: ``cache_type="aiomemmap"`` for any
  fsspec file;
* :mod:`~aiomemmap.faces.fsspec_reads`: reads by URL through an engine, for
  the two above;
* :mod:`~aiomemmap.faces.position`: the seek arithmetic both files share.
"""
