"""The file position arithmetic that the sync and async files share."""

from __future__ import annotations

import io

from aiomemmap._core.pages import is_int

__all__ = ["seek_target"]


def seek_target(pos: int, size: int, offset: int, whence: int) -> int:
    """Return where a ``seek(offset, whence)`` from ``pos`` lands.

    Past the end is allowed (reads there are empty), as for a regular file.

    Args:
        pos: The current position.
        size: The file's size, for ``io.SEEK_END``.
        offset: Where to, relative to ``whence``.
        whence: ``io.SEEK_SET``, ``io.SEEK_CUR`` or ``io.SEEK_END``.

    Returns:
        The new position.

    Raises:
        TypeError: ``offset`` is not an int.
        ValueError: Bad ``whence``, or a negative resulting position.
    """
    if not is_int(offset):
        raise TypeError(f"offset must be an int, got {offset!r}")
    delta = int(offset)
    if whence == io.SEEK_SET:
        target = delta
    elif whence == io.SEEK_CUR:
        target = pos + delta
    elif whence == io.SEEK_END:
        target = size + delta
    else:
        raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
    if target < 0:
        raise ValueError(f"negative seek position {target}")
    return target
