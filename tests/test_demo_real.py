"""aiomemmap demo --real: numpy in a client process reads the file as real memory.

The demo runs as users run it (the command line's entry, in this process and
as ``python -m aiomemmap``); each test reads the report's verified
checksums and its counts, never its times. A host without userfaultfd is
made for real, with the system-call filter a container runtime applies: the
``userfaultfd`` system call and ``/dev/userfaultfd``'s ioctl refused.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import io
import platform
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from aiomemmap.tools import cli
from aiomemmap.tools.demo import DemoOptions, format_bytes, run_demo
from aiomemmap.tools.demo_real import (
    UNUSABLE_STATUS,
    ClientError,
    real_memory_problem,
    run_real_phases,
)
from aiomemmap.tools.http_server import RangeHTTPServer

DEADLINE = 300.0
PAGE = 4096
SMALL = ["--size", "4M", "--latency", "0.5", "--random-reads", "32", "--no-compare"]
REAL_HEADER = [
    "phase",
    "time",
    "rate",
    "faults",
    "chunks",
    "requests",
    "fetched",
    "pages fetched",
    "pages resident",
]

# -- a host without userfaultfd: a seccomp filter, as containers install ----

_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_USERFAULTFD = 323
_NR_IOCTL = 16
_NR_SECCOMP = 317
_USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00)
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def refuse_userfaultfd() -> None:
    """Refuse userfaultfd to the calling thread and every process it starts.

    A seccomp filter without TSYNC binds the calling thread only (and what
    it forks). Refused: the ``userfaultfd`` system call and the
    ``USERFAULTFD_IOC_NEW`` ioctl of ``/dev/userfaultfd``, with ``EPERM``.
    """
    program = [
        (_LD_W_ABS, 0, 0, 4),  # 0: the architecture
        (_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),  # 1
        (_RET_K, 0, 0, _ALLOW),  # 2
        (_LD_W_ABS, 0, 0, 0),  # 3: the system call
        (_JEQ_K, 4, 0, _NR_USERFAULTFD),  # 4: -> 9
        (_JEQ_K, 0, 2, _NR_IOCTL),  # 5: else -> 8
        (_LD_W_ABS, 0, 0, 24),  # 6: the ioctl's request (low word)
        (_JEQ_K, 1, 0, _USERFAULTFD_IOC_NEW),  # 7: -> 9
        (_RET_K, 0, 0, _ALLOW),  # 8
        (_RET_K, 0, 0, _ERRNO | errno.EPERM),  # 9
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*f) for f in program))
    prog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.syscall(_NR_SECCOMP, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)):
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER)")


needs_userfaultfd = pytest.mark.skipif(
    real_memory_problem() is not None,
    reason=f"this host cannot map real memory: {real_memory_problem()}",
)
x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64",
    reason="the seccomp filter is written for x86_64's system call numbers",
)


# -- reading the report --------------------------------------------------------


def real_table(report: str) -> dict[str, dict[str, str]]:
    """The real-memory table of a report, by phase."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("phase "))
    assert re.split(r"\s{2,}", lines[start].strip()) == REAL_HEADER
    table = {}
    for line in lines[start + 1 : start + 4]:
        cells = dict(zip(REAL_HEADER, re.split(r"\s{2,}", line.strip()), strict=True))
        table[cells["phase"]] = cells
    assert list(table) == ["cold scan", "resident rescan", "random touches"]
    return table


def of(cell: str) -> tuple[int, int]:
    """``"12 of 1024"`` -> ``(12, 1024)``."""
    m = re.fullmatch(r"(\d+) of (\d+)", cell)
    assert m is not None, cell
    return int(m.group(1)), int(m.group(2))


def check_verified_report(report: str, size: int, touches: int) -> None:
    """The report of a generated file of ``size`` bytes, all verified."""
    pages = size // PAGE
    table = real_table(report)
    scan, rescan, touch = (
        table["cold scan"],
        table["resident rescan"],
        table["random touches"],
    )
    # The cold scan faulted the whole file in, fetching it whole (and no
    # more than twice); the rescan ran on resident pages only.
    assert 0 < int(scan["chunks"]) <= int(scan["faults"]) <= pages
    assert int(scan["requests"]) > 0
    fetched, file_pages = of(scan["pages fetched"])
    assert file_pages == pages
    assert pages <= fetched <= 2 * pages
    assert of(scan["pages resident"]) == (pages, pages)
    assert (rescan["faults"], rescan["chunks"], rescan["requests"]) == ("0", "0", "0")
    assert rescan["fetched"] == "0 B"
    assert of(rescan["pages resident"]) == (pages, pages)
    # Each random touch of a cold mapping is at most one fault; what was
    # fetched and what is resident stay far below the file.
    assert 0 < int(touch["faults"]) <= touches
    assert touch["rate"].endswith(" touches/s")
    touch_fetched, _ = of(touch["pages fetched"])
    assert touches <= touch_fetched < pages // 2
    resident, _ = of(touch["pages resident"])
    assert touches <= resident < pages // 2
    assert re.search(
        r"^  scan checksum   numpy sum 0x[0-9a-f]{16}, sha256 [0-9a-f]{16}… of "
        r"[\d.]+ MiB: both match the file's bytes$",
        report,
        re.MULTILINE,
    ), report
    assert re.search(
        rf"^  random touches  {touches} pages, each matches the file's bytes; "
        rf"[\d.]+ [KM]iB fetched for {re.escape(format_bytes(touches * PAGE))} touched "
        rf"\([\d.]+x\), "
        rf"{touch_fetched} of {pages} file pages$",
        report,
        re.MULTILINE,
    ), report
    assert report.rstrip().endswith("real memory: OK, verified")


# -- the demo with --real -------------------------------------------------------


@needs_userfaultfd
def test_demo_real_through_the_command_line(capsys: pytest.CaptureFixture[str]):
    status = cli.main(["demo", "--real", "--touches", "48", *SMALL])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "result: OK" in out  # the usual phases ran first
    assert out.index("result: OK") < out.index("real memory:")
    check_verified_report(out, 4 << 20, 48)
    assert "Traceback" not in err
    assert re.search(r"^real memory: client process \d+ maps http://", err, re.M)


@needs_userfaultfd
def test_demo_real_as_python_m_aiomemmap():
    proc = subprocess.run(
        [sys.executable, "-m", "aiomemmap", "demo", "--real", "--seed", "7", *SMALL],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_verified_report(proc.stdout, 4 << 20, 256)
    assert "Traceback" not in proc.stderr


@needs_userfaultfd
async def test_demo_real_with_a_url_counts_the_engine_s_fetches(tmp_path: Path):
    path = tmp_path / "data.bin"
    path.write_bytes(random.Random(3).randbytes(1 << 20))
    out, err = io.StringIO(), io.StringIO()
    options = DemoOptions(
        url=str(path), random_reads=16, readers=2, compare=False, real=True, touches=8
    )
    with anyio.fail_after(DEADLINE):
        assert await run_demo(options, out, err) == 0
    report = out.getvalue()
    table = real_table(report)
    # No server of the demo's: the engine's own fetches are counted.
    assert int(table["cold scan"]["requests"]) > 0
    assert of(table["cold scan"]["pages resident"]) == (256, 256)
    assert table["resident rescan"]["requests"] == "0"
    assert 0 < int(table["random touches"]["faults"]) <= 8
    assert "of 1.0 MiB: not verified (not a generated file)" in report
    assert "8 pages, not verified (not a generated file)" in report
    assert report.rstrip().endswith("real memory: OK")


@needs_userfaultfd
async def test_bytes_that_differ_from_the_file_fail_the_phases():
    """The checks compare with the bytes the demo knows, page by page."""
    data = random.Random(5).randbytes(256 * PAGE)
    wrong = bytearray(data)
    for page in range(0, 256, 2):  # every other page differs
        wrong[page * PAGE] ^= 0xFF
    out = io.StringIO()
    async with RangeHTTPServer() as server:
        server.add("f.bin", data)
        with anyio.fail_after(DEADLINE):
            status = await run_real_phases(
                server.url("f.bin"),
                len(data),
                bytes(wrong),
                None,
                touches=32,
                seed=1,
                out=out,
                err=io.StringIO(),
            )
    assert status == 1
    report = out.getvalue()
    assert "FAILED: differ from the file's bytes" in report
    # The 32 touched pages, checked one by one against the wrong bytes.
    pages = random.Random(1).sample(range(256), 32)
    differing = sum(p % 2 == 0 for p in pages)
    assert f"32 pages, FAILED: {differing} differ from the file's bytes" in report
    assert report.rstrip().endswith("real memory: FAILED")
    # The client read the file's bytes: its digest is theirs.
    assert hashlib.sha256(data).hexdigest()[:16] in report


@needs_userfaultfd
async def test_a_file_that_fails_while_mapped_kills_the_client_with_sigbus():
    """A page the engine cannot fetch is poisoned, never read as zeros."""
    data = random.Random(9).randbytes(4 << 20)
    async with RangeHTTPServer() as server:
        server.add("f.bin", data)

        async def remove_once_opened() -> None:
            # The engine opens the file (one request) while the client
            # process is still starting; the scan's fetches come later.
            # The server has no event for a request: poll its counter.
            while server.requests == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            server.remove("f.bin")

        remover = asyncio.create_task(remove_once_opened())
        with anyio.fail_after(DEADLINE), pytest.raises(ClientError) as caught:
            await run_real_phases(
                server.url("f.bin"),
                len(data),
                data,
                None,
                touches=4,
                seed=1,
                out=io.StringIO(),
                err=io.StringIO(),
            )
        await remover
    assert re.fullmatch(
        r"the client process was killed by SIGBUS \(Fatal Python error: Bus error\)",
        str(caught.value),
    ), str(caught.value)


# -- a host that cannot ----------------------------------------------------------


@needs_userfaultfd
@x86_64_only
def test_without_userfaultfd_the_demo_says_why_in_one_line(
    capsys: pytest.CaptureFixture[str],
):
    """In a thread refused userfaultfd, as in a container, nothing runs."""
    result: list[object] = []

    def refused() -> None:
        try:
            refuse_userfaultfd()
            result.append(real_memory_problem())
            result.append(cli.main(["demo", "--real", *SMALL]))
        except BaseException as exc:  # reported to the test's thread
            result.append(exc)

    thread = threading.Thread(target=refused)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    problem, status = result
    assert isinstance(problem, str)
    assert "does not let this process use userfaultfd" in problem
    assert "Operation not permitted" in problem
    assert status == UNUSABLE_STATUS
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran: no server, no phase
    assert err == f"aiomemmap demo --real: {problem}\n"
    # The thread's filter went with it: this thread may still.
    assert real_memory_problem() is None


@needs_userfaultfd
@x86_64_only
def test_without_userfaultfd_python_m_aiomemmap_exits_with_status_3():
    proc = subprocess.run(
        [sys.executable, "-m", "aiomemmap", "demo", "--real", *SMALL],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        preexec_fn=refuse_userfaultfd,
    )
    assert proc.returncode == UNUSABLE_STATUS, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "aiomemmap demo --real: this host does not let this process use userfaultfd"
    )


def test_without_numpy_the_demo_says_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "numpy", None)
    problem = real_memory_problem()
    assert problem == "numpy is not installed, and the client process scans with it"
    out, err = io.StringIO(), io.StringIO()
    status = asyncio.run(run_demo(DemoOptions(size=1 << 20, real=True), out, err))
    assert status == UNUSABLE_STATUS
    assert (out.getvalue(), err.getvalue()) == (
        "",
        f"aiomemmap demo --real: {problem}\n",
    )


def test_touches_must_be_positive(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as caught:
        cli.main(["demo", "--real", "--touches", "0"])
    assert caught.value.code == 2
    assert "--touches: must be > 0" in capsys.readouterr().err
