"""A child engine process: an engine and its pager, serving the process that started it.

``map_file(url)`` without an engine starts one such process per client
process (and reuses it for every later region): ``python -m
aiomemmap.pager.child`` runs an :class:`~aiomemmap.Engine` and its
:class:`~aiomemmap.pager.server.Pager` on a private socket, prints the
pager's address on one line of its standard output, and serves until its
standard input reaches its end, which happens when the parent closes it or
exits (however it exits, killed included).

Being another process, it serves faults whatever the client's threads do
with the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from aiomemmap.engine.engine import Engine
from aiomemmap.pager.server import Pager

__all__ = ["main", "serve_until_parent_leaves"]


async def serve_until_parent_leaves(cache_limit: int | None = None) -> None:
    """Serve until standard input ends; announce the address on standard output.

    Raises:
        OSError: The socket could not be created.

    Cancellation:
        Closes the pager and the engine before the cancellation propagates.
    """
    loop = asyncio.get_running_loop()
    gone = loop.create_future()

    def on_input() -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and not gone.done():
            gone.set_result(None)

    async with Engine(cache_limit=cache_limit) as engine, Pager(engine) as pager:
        sys.stdout.write(pager.address + "\n")
        sys.stdout.flush()
        loop.add_reader(sys.stdin.fileno(), on_input)
        try:
            await gone
        finally:
            loop.remove_reader(sys.stdin.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the child engine; return its exit status."""
    parser = argparse.ArgumentParser(prog="python -m aiomemmap.pager.child")
    parser.add_argument("--cache-limit", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_until_parent_leaves(args.cache_limit))
    else:
        uvloop.run(serve_until_parent_leaves(args.cache_limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
