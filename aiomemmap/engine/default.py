"""The process-wide engine thread that the synchronous helpers use.

:func:`default_engine` starts it on first use, from whichever thread asks
first (creation is serialised by a lock). It lives until interpreter exit
(closed then by the exit handler of :mod:`aiomemmap.engine.thread`) or until
someone closes it, after which the next call starts a new one. In a child
made by :func:`os.fork` the parent's engine thread does not exist: the child
gets a new one on its first call.

The default engine's cache budget is read from the environment variable
``AIOMEMMAP_CACHE_LIMIT`` when the engine starts: a number of bytes, with an
optional ``K``, ``M``, ``G`` or ``T`` suffix (powers of 1024); unset or
empty means no limit.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread

__all__ = ["CACHE_LIMIT_VARIABLE", "default_engine"]

CACHE_LIMIT_VARIABLE: Final[str] = "AIOMEMMAP_CACHE_LIMIT"
"""The environment variable holding the default engine's cache budget."""

_SUFFIXES: Final[dict[str, int]] = {
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
}

# Serialises starting the default engine; replaced in a forked child.
_lock = threading.Lock()
# The default engine thread. Protected by _lock (read without it, then
# checked again under it).
_default: EngineThread | None = None


def default_engine() -> EngineThread:
    """Return the process-wide engine thread, starting it if needed.

    Returns:
        The same running :class:`~aiomemmap.EngineThread` on every call
        until it is closed (or the process forks); then a new one.

    Raises:
        ValueError: ``AIOMEMMAP_CACHE_LIMIT`` is set to something that is
            not a size.

    Locking:
        Takes a module ``threading.Lock`` when the engine must be started.
    """
    global _default
    current = _default
    if current is not None and not current.closed:
        return current
    with _lock:
        current = _default
        if current is None or current.closed:
            limit = cache_limit_from_environment()
            current = Engine(cache_limit=limit).start_thread()
            _default = current
        return current


def cache_limit_from_environment() -> int | None:
    """Return the cache budget that ``AIOMEMMAP_CACHE_LIMIT`` asks for.

    Returns:
        Bytes, or ``None`` when the variable is unset or empty.

    Raises:
        ValueError: The value is not a non-negative size.
    """
    text = os.environ.get(CACHE_LIMIT_VARIABLE, "").strip()
    if not text:
        return None
    scale = _SUFFIXES.get(text[-1].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not digits.isdigit():
        raise ValueError(
            f"{CACHE_LIMIT_VARIABLE} must be a size in bytes with an optional "
            f"K, M, G or T suffix, got {text!r}"
        )
    return int(digits) * scale


def _after_fork_in_child() -> None:
    global _default, _lock
    _lock = threading.Lock()
    _default = None


os.register_at_fork(after_in_child=_after_fork_in_child)
