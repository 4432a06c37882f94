"""The ``aiomemmap`` command line: ``demo``, ``cat`` and ``bench``.

Failures of ``demo`` and ``cat`` are reported as one line on stderr,
``aiomemmap COMMAND: what went wrong``, with exit status 1; bad arguments
exit with status 2; ``demo --real`` on a host that cannot map real memory
(no userfaultfd for this process, no numpy) says why in one line and exits
with status 3 before anything runs. Both commands run on uvloop when it is
installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

import aiohttp

from aiomemmap._core.errors import BusError
from aiomemmap.tools.cat import cat
from aiomemmap.tools.demo import DemoOptions, parse_size, run_demo

__all__ = ["main"]

_T = TypeVar("_T")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"must be in [0, 60000] ms, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, pointing to ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Report a bad command line on stderr and exit with status 2.

        Args:
            message: What is wrong.
        """
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiomemmap",
        description=(
            "An asyncio memory-mapping engine: lazily paged files, invalidation "
            "and guest address spaces on host memfds."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="map a file served over HTTP lazily and report what was fetched",
        description=(
            "Serve a generated file over HTTP on 127.0.0.1 with a simulated "
            "latency, map it lazily into an address space, run a sequential "
            "scan and concurrent random reads, verify every byte, and compare "
            "with fsspec's HTTP caches."
        ),
    )
    demo.add_argument(
        "--size",
        type=_size,
        default="256M",
        help="size of the generated file, e.g. 4M, 256M, 1G (default 256M); "
        "with --url, the most bytes the scan reads",
    )
    demo.add_argument(
        "--latency",
        type=_milliseconds,
        default=2.0,
        metavar="MS",
        help="simulated round-trip latency per request in ms (default 2)",
    )
    demo.add_argument(
        "--url",
        help="read this fsspec URL or path instead of a generated file "
        "(no verification)",
    )
    demo.add_argument(
        "--random-reads",
        type=_positive,
        default=2048,
        metavar="N",
        help="number of random 4 KiB reads (default 2048)",
    )
    demo.add_argument(
        "--readers",
        type=_positive,
        default=16,
        metavar="N",
        help="concurrent tasks doing the random reads (default 16)",
    )
    demo.add_argument(
        "--seed",
        type=_non_negative,
        default=1,
        help="seed of the generated file and the random offsets (default 1)",
    )
    demo.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip the fsspec comparison",
    )
    demo.add_argument(
        "--real",
        action="store_true",
        help="then map the file as real memory in a client process (map_file), "
        "scan it with numpy and touch random pages of it; exits with status 3 "
        "if this host cannot (no userfaultfd, no numpy)",
    )
    demo.add_argument(
        "--touches",
        type=_positive,
        default=256,
        metavar="N",
        help="random pages touched by the --real phase (default 256)",
    )
    cat = sub.add_parser(
        "cat",
        help="write a byte range of any fsspec URL to stdout",
        description=(
            "Read a byte range of a path or any fsspec URL through the engine "
            "(mapped into an address space) and write it to stdout."
        ),
    )
    cat.add_argument("url", help="a local path or a URL (file://, http://, s3://...)")
    cat.add_argument(
        "--offset", type=_non_negative, default=0, help="first byte (default 0)"
    )
    cat.add_argument(
        "--length",
        type=_non_negative,
        default=None,
        help="number of bytes (default: to the end of the file)",
    )
    # Listed here for the help; its own parser reads its options.
    sub.add_parser(
        "serve",
        help="serve real memory (map_file) to client processes until SIGINT/SIGTERM",
        add_help=False,
        description="Serve real memory to client processes (see aiomemmap serve -h).",
    )
    bench = sub.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bench.add_argument(
        "--only", metavar="IDS", help="comma-separated row ids to run, e.g. M1,M3"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; ``None`` means
            ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        from aiomemmap.pager.serve import main as serve_main

        return serve_main(arguments[1:])
    parser = _parser()
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        return _bench(args, parser)
    try:
        if args.command == "demo":
            return _demo(args)
        return _cat(args)
    except KeyboardInterrupt:
        print(f"aiomemmap {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Any failure is one line on stderr, never a traceback.
        print(f"aiomemmap {args.command}: {describe_error(exc)}", file=sys.stderr)
        return 1


def describe_error(exc: BaseException) -> str:
    """Return a one-line description of ``exc`` for the user.

    Args:
        exc: What went wrong.

    Returns:
        The description, without the exception's class where the message
        says enough.
    """
    if isinstance(exc, BusError):
        return f"the file failed while being read: {describe_error(exc.err)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"server error: HTTP {exc.status} ({exc.message})"
    if isinstance(exc, aiohttp.ClientError):
        return f"network error: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None and repr(exc.filename) not in text:
            text += f": {exc.filename!r}"
        return text
    if isinstance(exc, ValueError | ImportError) and str(exc):
        return str(exc)
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a new event loop, uvloop's if installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        size=args.size,
        latency=args.latency / 1000,
        url=args.url,
        random_reads=args.random_reads,
        readers=args.readers,
        seed=args.seed,
        compare=args.compare,
        real=args.real,
        touches=args.touches,
    )
    return _run(run_demo(options, sys.stdout, sys.stderr))


def _cat(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    try:
        _run(cat(args.url, out, offset=args.offset, length=args.length))
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep the
        # interpreter from complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from aiomemmap.tools.bench import render_table, run_benchmarks, write_json

    only = None if args.only is None else args.only.split(",")
    try:
        rows = run_benchmarks(only)
    except ValueError as exc:
        parser.exit(2, f"aiomemmap bench: {exc}\n")
    render_table(rows, sys.stdout)
    if args.json:
        write_json(rows, args.json)
    return 0
