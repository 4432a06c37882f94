"""The pager of an engine in this very process.

``map_file(url, engine=e)`` with an :class:`~aiomemmap.Engine` or an
:class:`~aiomemmap.EngineThread` serves the region from that engine: a
:class:`~aiomemmap.pager.server.Pager` is started on the engine's loop the
first time (listening nowhere: each client is served on one end of a socket
pair) and kept for the engine's life. The client side still speaks the
socket protocol, so there is one way in.

Only accessors that release the GIL may touch such a region (see
:mod:`aiomemmap.pager.client`); :func:`connect_in_process` refuses to run on the
engine's own loop thread, where the handshake itself could never complete.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref

from aiomemmap._core.errors import ClosedError, WrongLoopError
from aiomemmap.engine.engine import Engine
from aiomemmap.engine.thread import EngineThread
from aiomemmap.pager.server import Pager

__all__ = ["connect_in_process"]

_lock = threading.Lock()
_pagers: weakref.WeakKeyDictionary[Engine, Pager] = weakref.WeakKeyDictionary()


def connect_in_process(engine: Engine | EngineThread) -> socket.socket:
    """Connect to ``engine``'s pager in this process; return the client's end.

    The pager is created on first use (it listens on no socket: each client
    gets one end of a socket pair, whose other end the pager serves on the
    engine's loop).

    Args:
        engine: An engine running on a loop (of another thread than this
            one), or an engine thread.

    Raises:
        TypeError: ``engine`` is neither.
        ClosedError: The engine is closed.
        WrongLoopError: Called on the engine's own loop thread, or the
            engine has not run on a loop yet.

    Locking:
        Takes a module lock to find or create the engine's pager.
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
        for closed in [e for e in _pagers if e.closed]:
            del _pagers[closed]
        pager = _pagers.get(target)
        if pager is None:
            pager = _pagers[target] = Pager(target)
    client, served = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        served.setblocking(False)
        loop.call_soon_threadsafe(pager.attach, served)
    except BaseException:
        client.close()
        served.close()
        raise
    return client
