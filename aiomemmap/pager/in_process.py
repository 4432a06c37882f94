"""The pager of an engine in this very process.

``map_file(url, engine=e)`` with an :class:`~aiomemmap.Engine` or an
:class:`~aiomemmap.EngineThread` serves the region from that engine: a
:class:`~aiomemmap.pager.server.Pager` is started on the engine's loop the
first time, on an abstract Unix socket (no file to clean up), and kept for
the engine's life. The client side still speaks the socket protocol, so
there is one way in.

Only accessors that release the GIL may touch such a region (see
:mod:`aiomemmap.pager.client`); :func:`pager_address` refuses to run on the
engine's own loop thread, where the handshake itself could never complete.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Final

from aiomemmap._core.errors import ClosedError, WrongLoopError
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.pager.server import Pager

__all__ = ["pager_address"]

_START_TIMEOUT: Final = 30.0
_lock = threading.Lock()
_pagers: weakref.WeakKeyDictionary[Engine, Pager] = weakref.WeakKeyDictionary()


def pager_address(engine: Engine | EngineThread) -> str:
    """Return the address of ``engine``'s pager, starting it on first use.

    Args:
        engine: An engine running on a loop (of another thread than this
            one), or an engine thread.

    Returns:
        ``"unix:"`` and an abstract socket name (starting with NUL), for
        :func:`~aiomemmap.pager.client.map_file`.

    Raises:
        TypeError: ``engine`` is neither.
        ClosedError: The engine is closed.
        WrongLoopError: Called on the engine's own loop thread, or the
            engine has not run on a loop yet.

    Locking:
        Takes a module lock while it starts a pager (on the engine's loop).
    """
    if isinstance(engine, EngineThread):
        target, loop = engine.engine, engine.loop
    elif isinstance(engine, Engine):
        target, found = engine, engine.loop
        if found is None:
            raise WrongLoopError(
                f"map_file: {engine!r} has not run on an event loop yet; use it "
                "there first, or pass an EngineThread"
            )
        loop = found
    else:
        raise TypeError(
            "map_file: engine must be None, 'unix:PATH', an Engine or an "
            f"EngineThread, got {engine!r}"
        )
    if target.closed:
        raise ClosedError(f"map_file: {target!r} is closed")
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise WrongLoopError(
            "map_file: called on the engine's own loop thread, which must serve "
            "the handshake and every fault of the region: call it from another "
            "thread (asyncio.to_thread)"
        )
    with _lock:
        pager = _pagers.get(target)
        if pager is None:
            pager = Pager(
                target, socket_path=f"\0aiomemmap-{os.getpid()}-{id(target):x}"
            )
            future = asyncio.run_coroutine_threadsafe(pager.start(), loop)
            future.result(_START_TIMEOUT)
            _pagers[target] = pager
    return pager.address
