"""An engine process serving real memory: what ``aiomemmap serve`` runs.

``python -m aiomemmap.pager.serve [--socket PATH] [--cache-limit BYTES]
[--allow-uid UID ...] [--firecracker SOCKET --snapshot URL]`` runs an
:class:`~aiomemmap.Engine` and its :class:`~aiomemmap.pager.server.Pager`; it
prints the address that clients pass to ``map_file(url, engine=...)`` and
serves until ``SIGINT`` or ``SIGTERM``, then closes everything. With
``--firecracker`` it also serves Firecracker VMs restoring a snapshot whose
memory file is ``--snapshot``.

Only processes of the server's own uid are served unless ``--allow-uid``
names others: then its sockets are opened to every local uid (``0666``, in a
``0711`` directory) and each peer's kernel credentials decide, since no file
permission can admit exactly a set of uids (see
:mod:`~aiomemmap.pager.server`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Collection, Sequence

from aiomemmap.engine.engine import Engine
from aiomemmap.pager.server import Pager

__all__ = ["main", "serve"]


async def serve(
    *,
    socket_path: str | None = None,
    cache_limit: int | None = None,
    firecracker: str | None = None,
    snapshot: str | None = None,
    allowed_uids: Collection[int] | None = None,
    ready: asyncio.Future[str] | None = None,
) -> None:
    """Serve until ``SIGINT`` or ``SIGTERM`` (or cancellation).

    Args:
        socket_path: The pager's socket; a private one by default.
        cache_limit: The engine's cache budget in bytes.
        firecracker: A stream socket for Firecracker's handshake.
        snapshot: The snapshot's memory file (with ``firecracker``).
        allowed_uids: The uids served (by default only the server's own);
            the server's own is served only if listed.
        ready: Set to the pager's address once it listens.

    Raises:
        ValueError: ``firecracker`` without ``snapshot``, or the reverse.
        OSError: A socket could not be created.
    """
    if (firecracker is None) != (snapshot is None):
        raise ValueError("serve: give --firecracker and --snapshot together")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with (
            Engine(cache_limit=cache_limit) as engine,
            Pager(engine, socket_path=socket_path, allowed_uids=allowed_uids) as pager,
        ):
            if firecracker is not None and snapshot is not None:
                await pager.serve_firecracker(firecracker, snapshot)
            if ready is not None and not ready.done():
                ready.set_result(pager.address)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _uid(text: str) -> int:
    """A uid given on the command line: a non-negative integer."""
    try:
        uid = int(text)
    except ValueError:
        uid = -1
    if uid < 0:
        raise argparse.ArgumentTypeError(f"not a uid: {text!r}")
    return uid


def _announce(ready: asyncio.Future[str]) -> None:
    sys.stdout.write(ready.result() + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`serve` from the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="aiomemmap serve", description="Serve real memory to client processes."
    )
    parser.add_argument("--socket", default=None, help="the pager's socket path")
    parser.add_argument("--cache-limit", type=int, default=None, help="bytes")
    parser.add_argument("--firecracker", default=None, help="Firecracker's socket")
    parser.add_argument("--snapshot", default=None, help="the snapshot memory file")
    parser.add_argument(
        "--allow-uid",
        type=_uid,
        action="append",
        default=None,
        metavar="UID",
        help=(
            "also serve processes of this uid (repeatable; the server's own "
            "is always served). The sockets are then made 0666 in a 0711 "
            "directory, and each connecting process's kernel credentials "
            "(SO_PEERCRED) decide: file permissions cannot admit exactly a "
            "set of uids, credentials can"
        ),
    )
    args = parser.parse_args(argv)
    uids = None if args.allow_uid is None else {os.getuid(), *args.allow_uid}
    if (args.firecracker is None) != (args.snapshot is None):
        parser.error("--firecracker and --snapshot go together")

    async def run() -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(_announce)
        await serve(
            socket_path=args.socket,
            cache_limit=args.cache_limit,
            firecracker=args.firecracker,
            snapshot=args.snapshot,
            allowed_uids=uids,
            ready=ready,
        )

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
