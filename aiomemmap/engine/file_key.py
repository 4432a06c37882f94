"""The key under which an engine shares one open file among its users.

Two opens name the same object when their URLs (or paths) and storage
options are the same after normalisation: a local path becomes the absolute,
symlink-resolved path (``file://`` and ``local://`` URLs are paths), a URL's
scheme and host are lower-cased, and storage options are compared as values
(dicts by their items, lists and tuples element by element). An option value
that cannot be compared as a value (an unhashable object that is not a
container) is compared by identity: the same object gives the same key.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import final

__all__ = ["FileKey", "file_key"]

# Schemes whose URLs name a local file.
_LOCAL_SCHEMES = frozenset({"file", "local"})


@final
@dataclass(frozen=True, slots=True)
class FileKey:
    """What identifies one object for an engine's registry of open files.

    Attributes:
        target: The normalised path or URL.
        options: The storage options as a sorted tuple of hashable items.
        pinned: The option values compared by identity, held so that their
            ids stay theirs while the key lives.

    Concurrency:
        Immutable.
    """

    target: str
    options: tuple[tuple[str, Hashable], ...]
    pinned: tuple[object, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileKey):
            return NotImplemented
        return self.target == other.target and self.options == other.options

    def __hash__(self) -> int:
        return hash((self.target, self.options))

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.options)
        return f"FileKey({self.target!r}, options=[{names}])"


def file_key(url_or_path: str, storage_options: Mapping[str, object]) -> FileKey:
    """Return the key of ``url_or_path`` opened with ``storage_options``.

    Does no I/O besides resolving a local path's symlinks.

    Args:
        url_or_path: A local path or a URL.
        storage_options: The options the object is opened with.

    Returns:
        The key.

    Raises:
        TypeError: ``url_or_path`` is not a str, or an option name is not one.
        ValueError: ``url_or_path`` is empty or contains a NUL.
    """
    if not isinstance(url_or_path, str):
        raise TypeError(f"url_or_path must be a str, got {url_or_path!r}")
    if not url_or_path or "\x00" in url_or_path:
        raise ValueError(f"not a path or URL: {url_or_path!r}")
    pinned: list[object] = []
    options = []
    for name, value in storage_options.items():
        if not isinstance(name, str):
            raise TypeError(f"storage option names must be str, got {name!r}")
        options.append((name, _freeze(value, pinned)))
    options.sort(key=lambda item: item[0])
    return FileKey(_normalise(url_or_path), tuple(options), tuple(pinned))


def _normalise(url_or_path: str) -> str:
    scheme, sep, _rest = url_or_path.partition("://")
    if not sep:
        return os.path.realpath(url_or_path)
    if "::" in url_or_path:
        # A chained URL: its parts are each another filesystem's business.
        return url_or_path
    parts = urllib.parse.urlsplit(url_or_path)
    if scheme.lower() in _LOCAL_SCHEMES and parts.netloc in ("", "localhost"):
        return os.path.realpath(urllib.parse.unquote(parts.path) or "/")
    return urllib.parse.urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, "")
    )


def _freeze(value: object, pinned: list[object]) -> Hashable:
    """Return a hashable value equal for equal options."""
    if isinstance(value, Mapping):
        items = [
            (repr(k), _freeze(k, pinned), _freeze(v, pinned)) for k, v in value.items()
        ]
        items.sort(key=lambda item: item[0])
        return ("mapping", tuple((k, v) for _, k, v in items))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_freeze(v, pinned) for v in value))
    if isinstance(value, set | frozenset):
        frozen = [_freeze(v, pinned) for v in value]
        return ("set", frozenset(frozen))
    try:
        hash(value)
    except TypeError:
        pinned.append(value)
        return ("identity", id(value))
    return ("value", type(value).__qualname__, value)
