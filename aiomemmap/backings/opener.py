"""``open_backing``: the backing for a path or a URL.

A path or ``file://`` URL gives a local file backing, an ``http(s)`` URL the
aiohttp backing, any other URL an fsspec one. The modules of the network
backings, and fsspec itself, are imported only when a URL needs them.
"""

from __future__ import annotations

import typing
import urllib.parse
from collections.abc import Mapping
from typing import Final

from aiomemmap._core.pages import is_int
from aiomemmap.backings.base import Backing
from aiomemmap.backings.local import LocalFileBacking

__all__ = ["open_backing"]

# URL schemes that name a host: a URL of theirs without one is malformed.
_NEEDS_NETLOC: Final[frozenset[str]] = frozenset(
    {"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "ftp", "sftp", "ssh"}
)


def open_backing(url_or_path: str, **storage_options: object) -> Backing:
    """Return a backing for a local path or a URL. Does no network I/O.

    * A plain path or a ``file://`` URL gives a :class:`~aiomemmap.LocalFileBacking`
      (opened at once); the only option accepted is ``writable``.
    * An ``http://`` or ``https://`` URL gives an :class:`~aiomemmap.HttpBacking`
      (aiohttp directly, a session of its own, fsspec not even loaded) when
      the only option given, if any, is ``headers``. With any other option it
      goes through fsspec like the URLs below and gives an
      :class:`~aiomemmap.FsspecBacking` over fsspec's HTTP filesystem, with every option
      (``headers`` included) passed on.
    * Any other URL goes through ``fsspec.core.url_to_fs(url,
      **storage_options)`` and gives an :class:`~aiomemmap.FsspecBacking`. Async-capable
      protocols (``http``, ``https``, ``s3``...) are created with
      ``asynchronous=True`` and ``skip_instance_cache=True``: the backing then
      owns a private filesystem whose client session binds to the loop the
      backing is first used on, and its
      :meth:`~aiomemmap.FsspecBacking.aclose` closes it.
      ``readonly`` and ``block_size_hint`` are taken out of
      ``storage_options`` and passed to :class:`~aiomemmap.FsspecBacking`.

    Args:
        url_or_path: A path, or a URL such as ``http://host/x`` or
            ``s3://bucket/key``.
        **storage_options: Options for the filesystem (e.g.
            ``endpoint_url``, ``key``, ``secret`` for S3; ``headers`` for
            HTTP).

    Returns:
        The backing.

    Raises:
        TypeError: ``url_or_path`` is not a str.
        ValueError: Empty or malformed URL, or an unknown protocol; the
            message names the URL.
        ImportError: The protocol needs a package that is not installed.
        FileNotFoundError: A local file does not exist.
    """
    if not isinstance(url_or_path, str):
        raise TypeError(f"url_or_path must be a str, got {url_or_path!r}")
    if not url_or_path or "\x00" in url_or_path:
        raise ValueError(f"not a path or URL: {url_or_path!r}")
    scheme, sep, _rest = url_or_path.partition("://")
    if not sep:
        return _open_local(url_or_path, url_or_path, storage_options)
    if scheme.lower() in ("file", "local"):
        parts = urllib.parse.urlsplit(url_or_path)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"malformed file URL: {url_or_path!r}")
        path = urllib.parse.unquote(parts.path)
        return _open_local(url_or_path, path, storage_options)
    chained = "::" in url_or_path
    if not chained:
        if not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
            raise ValueError(f"malformed URL: {url_or_path!r}")
        protocol = scheme.lower()
        parts = urllib.parse.urlsplit(url_or_path)
        if protocol in _NEEDS_NETLOC and not parts.netloc:
            raise ValueError(f"malformed URL (no host or bucket): {url_or_path!r}")
        if protocol in ("http", "https") and storage_options.keys() <= {"headers"}:
            from aiomemmap.backings.http import HttpBacking

            headers = storage_options.get("headers")
            return HttpBacking(
                url_or_path,
                headers=typing.cast("Mapping[str, str] | None", headers),
            )
        import fsspec

        try:
            cls = fsspec.get_filesystem_class(protocol)
        except ValueError as exc:
            raise ValueError(
                f"unknown protocol {protocol!r} in URL {url_or_path!r}"
            ) from exc
        except ImportError as exc:
            raise ImportError(
                f"the protocol {protocol!r} of {url_or_path!r} needs a package "
                f"that is not installed: {exc}"
            ) from exc
        if protocol in ("s3", "s3a", "gs", "gcs") and parts.path.strip("/") == "":
            raise ValueError(f"malformed URL (no object key): {url_or_path!r}")
        if getattr(cls, "async_impl", False):
            storage_options.setdefault("asynchronous", True)
            storage_options.setdefault("skip_instance_cache", True)
    readonly = storage_options.pop("readonly", None)
    hint = storage_options.pop("block_size_hint", None)
    if readonly is not None and not isinstance(readonly, bool):
        raise TypeError(f"readonly must be a bool or None, got {readonly!r}")
    if hint is not None and not is_int(hint):
        raise TypeError(f"block_size_hint must be an int or None, got {hint!r}")
    import fsspec.core

    from aiomemmap.backings.fsspec_backing import owning_backing

    try:
        fs, path = fsspec.core.url_to_fs(url_or_path, **storage_options)
    except ValueError as exc:
        raise ValueError(f"cannot open {url_or_path!r}: {exc}") from exc
    return owning_backing(
        fs, path, readonly=readonly, block_size_hint=typing.cast("int | None", hint)
    )


def _open_local(url: str, path: str, options: dict[str, object]) -> LocalFileBacking:
    writable = options.pop("writable", False)
    if options:
        raise ValueError(
            f"unsupported options for local file {url!r}: {sorted(options)}"
        )
    if not isinstance(writable, bool):
        raise TypeError(f"writable must be a bool, got {writable!r}")
    return LocalFileBacking(path, writable=writable)
