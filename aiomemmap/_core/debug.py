"""The debug switch shared by every layer.

Debug checks are off by default. They are turned on by the environment
variable ``AIOMEMMAP_DEBUG=1`` when aiomemmap is imported, or at any time with
:func:`set_debug`. While they are on, :class:`~aiomemmap.OrderedLock` checks
lock ranks on every acquisition and the data structures run their O(n)
``check_invariants()`` after mutations that promise to keep them.
"""

from __future__ import annotations

import os

__all__ = ["is_debug", "set_debug"]

_enabled = os.environ.get("AIOMEMMAP_DEBUG", "") not in ("", "0")


def set_debug(enabled: bool) -> None:
    """Turn debug checks on or off for the whole process.

    Args:
        enabled: ``True`` to turn the checks on.

    Raises:
        TypeError: ``enabled`` is not a ``bool``.
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _enabled = enabled


def is_debug() -> bool:
    """Return whether debug checks are on."""
    return _enabled
