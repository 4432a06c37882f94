"""The watchdog: a client fails fast, never hangs, when its engine dies.

A client keeps its own copy of its userfaultfd (if it closed it, the engine's
death would release the descriptor and every untouched page would read as
zeros). So when the engine dies, a thread blocked in a fault would wait
forever, and ignore ``SIGINT`` meanwhile. The watchdog is a small process
started by :func:`~aiomemmap.pager.client.map_file` for each region served by
another process. It holds a copy of the region's userfaultfd and a pidfd of
the engine's process and of the client's, and waits:

* the client exits (or closes the region, which stops the watchdog): the
  watchdog exits;
* the engine exits: the watchdog poisons every page of the region not yet
  mapped in the client and wakes the waiting threads, so that a raw access
  dies at once with ``SIGBUS`` (and a ``faulthandler`` traceback) and a
  checked read raises :class:`~aiomemmap.BusError`; then it exits.

It is a process, not a thread, because a thread of the client could not run
while the blocked access holds the GIL. Only the standard library and the
core are imported: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Final

from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    UffdError,
    UffdExists,
    UffdRetry,
    Userfaultfd,
)

__all__ = ["main", "poison_unpopulated", "start_watchdog"]

_READY: Final = b"watching\n"
_START_TIMEOUT: Final = 30.0


def poison_unpopulated(uffd: Userfaultfd, start: int, length: int) -> int:
    """Poison every page of ``[start, start + length)`` not mapped, then wake all.

    Returns:
        The pages poisoned.

    Raises:
        UffdError: The process is gone or the range unmapped (nothing left
            to protect), or the kernel has no poison.
    """
    end, at, poisoned = start + length, start, 0
    while at < end:
        try:
            uffd.poison(at, end - at, wake=False)
            poisoned += (end - at) // PAGE_SIZE
            at = end
        except UffdRetry as exc:
            if exc.bytes_done:
                poisoned += exc.bytes_done // PAGE_SIZE
                at += exc.bytes_done
            else:
                time.sleep(0.0002)
        except UffdExists:
            at += PAGE_SIZE
    uffd.wake(start, length)
    return poisoned


def start_watchdog(
    uffd: Userfaultfd, start: int, length: int, engine_pid: int
) -> subprocess.Popen[bytes]:
    """Start the watchdog of a region; return it once it watches.

    Args:
        uffd: The region's userfaultfd (a copy goes to the watchdog).
        start: The region's address.
        length: The region's registered length.
        engine_pid: The pid of the process that serves the region.

    Raises:
        ProcessLookupError: The engine's process is already gone.
        OSError: The watchdog could not start.
    """
    engine_fd = os.pidfd_open(engine_pid)
    client_fd = os.pidfd_open(os.getpid())
    uffd_fd = uffd.dup()
    fds = (uffd_fd, engine_fd, client_fd)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiomemmap.pager.watchdog",
                *map(str, (*fds, start, length)),
            ],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT)
    if not ready or proc.stdout.readline() != _READY:
        proc.kill()
        proc.wait()
        raise OSError("the region's watchdog did not start")
    proc.stdout.close()
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    """Watch: ``UFFD_FD ENGINE_PIDFD CLIENT_PIDFD START LENGTH``."""
    args = list(sys.argv[1:] if argv is None else argv)
    uffd_fd, engine_fd, client_fd, start, length = (int(a) for a in args)
    uffd = Userfaultfd(uffd_fd, 0, 0)
    poller = select.poll()
    poller.register(engine_fd, select.POLLIN)
    poller.register(client_fd, select.POLLIN)
    sys.stdout.buffer.write(_READY)
    sys.stdout.flush()
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if engine_fd in ready and client_fd not in ready:
            try:
                poison_unpopulated(uffd, start, length)
            except UffdError:
                return 1
            return 0
        if ready:
            return 0


if __name__ == "__main__":
    sys.exit(main())
