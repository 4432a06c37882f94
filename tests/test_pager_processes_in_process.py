"""The serve entry point, run in this process.

``aiomemmap serve`` (:mod:`aiomemmap.pager.serve`) is tested as a process in
``tests/test_pager.py``; here its functions run in the test's own process,
so that what they do at start and stop is checked step by step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from aiomemmap.pager import serve as serve_module

DEADLINE = 60


def _when(condition: Callable[[], bool], then: Callable[[], None]) -> threading.Thread:
    """Run ``then()`` on a thread once ``condition()`` holds (or a minute passed)."""

    def wait() -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        then()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


async def test_serve_announces_its_address_and_stops_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "pager.sock"
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with anyio.fail_after(DEADLINE):
        task = asyncio.create_task(
            serve_module.serve(socket_path=str(sock), ready=ready)
        )
        assert await ready == f"unix:{sock}"
        assert sock.exists()
        os.kill(os.getpid(), signal.SIGTERM)
        await task
    # Stopped and cleaned up: the socket is gone.
    assert not sock.exists()


async def test_serve_refuses_firecracker_without_a_snapshot() -> None:
    with pytest.raises(ValueError, match="together"):
        await serve_module.serve(firecracker="/nonexistent.sock")


def test_serve_main_prints_the_address_and_exits_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "pager.sock"
    stopper = _when(sock.exists, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert serve_module.main(["--socket", str(sock)]) == 0
    stopper.join(DEADLINE)
    assert capsys.readouterr().out.strip() == f"unix:{sock}"
    assert not sock.exists()


def test_serve_main_rejects_half_a_firecracker_setup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        serve_module.main(["--snapshot", "/some/file"])
    assert info.value.code == 2
    assert "--firecracker and --snapshot go together" in capsys.readouterr().err
