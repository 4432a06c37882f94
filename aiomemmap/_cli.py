"""The ``aiomemmap`` command line: ``demo``, ``cat`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

_NOT_YET = (
    "aiomemmap {cmd}: not available in this version; it needs the address-space "
    "layer. Available now: 'aiomemmap bench'."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiomemmap",
        description=(
            "An asyncio memory-mapping engine: lazily paged files, invalidation "
            "and guest address spaces on host memfds."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo", help="map a file served over HTTP lazily and report what was fetched"
    )
    cat = sub.add_parser("cat", help="write a byte range of any fsspec URL to stdout")
    cat.add_argument("url")
    cat.add_argument("--offset", type=int, default=0)
    cat.add_argument("--length", type=int, default=None)
    bench = sub.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bench.add_argument(
        "--only", metavar="IDS", help="comma-separated row ids to run, e.g. M1,M3"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("demo", "cat"):
        print(_NOT_YET.format(cmd=args.command), file=sys.stderr)
        parser.print_help()
        return 0 if args.command == "demo" else 2
    return _bench(args, parser)


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from aiomemmap.bench import render_table, run_benchmarks, write_json

    only = None if args.only is None else args.only.split(",")
    try:
        rows = run_benchmarks(only)
    except ValueError as exc:
        parser.exit(2, f"aiomemmap bench: {exc}\n")
    render_table(rows, sys.stdout)
    if args.json:
        write_json(rows, args.json)
    return 0
