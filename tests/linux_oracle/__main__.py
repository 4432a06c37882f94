"""``python -m tests.linux_oracle``: run random sequences, or replay one.

Sequence ``i`` of seed ``s`` is drawn from ``random.Random(f"{s}:{i}")``, so
``--seed s --first i --runs 1`` runs it alone. Each distinct difference (by
its signature) is shrunk once and printed with the command that replays it;
the exit status is 1 if any was found.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from tests.linux_oracle.compare import Difference, Oracle, replay_command
from tests.linux_oracle.driver import LinuxGuest
from tests.linux_oracle.ops import Op, encode, generate, parse
from tests.linux_oracle.shrink import shrink


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def sequence(seed: int, index: int) -> tuple[Op, ...]:
    """Return sequence ``index`` of ``seed``."""
    return generate(random.Random(f"{seed}:{index}"))


def _report(ops: tuple[Op, ...], diff: Difference) -> None:
    _say(diff.describe())
    _say(f"  {len(ops)} operation(s): {encode(ops)}")
    _say(f"  replay: {replay_command(ops)}")


async def _main(args: argparse.Namespace) -> int:
    with LinuxGuest() as guest:
        oracle = Oracle(guest)
        if args.replay is not None:
            ops = parse(args.replay)
            diff = await oracle.check(ops)
            if diff is None:
                _say(f"no difference ({len(ops)} operations)")
                return 0
            _report(ops, diff)
            return 1
        seen: dict[tuple[object, ...], int] = {}
        for index in range(args.first, args.first + args.runs):
            ops = sequence(args.seed, index)
            diff = await oracle.check(ops)
            if diff is None:
                continue
            sig = diff.signature()
            seen[sig] = seen.get(sig, 0) + 1
            if seen[sig] > 1:
                continue
            _say(f"--- seed {args.seed} sequence {index}: new difference {sig}")
            if not args.no_shrink:
                ops, diff = await shrink(oracle, ops, diff)
            _report(ops, diff)
        _say(
            f"seed {args.seed}: {args.runs} sequences "
            f"({args.first}..{args.first + args.runs - 1}), "
            f"{sum(seen.values())} with a difference, {len(seen)} distinct"
        )
        for sig, count in seen.items():
            _say(f"  {count:6d} x {sig}")
        return 1 if seen else 0


def main() -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.linux_oracle",
        description="Compare AddressSpace with the real kernel on random sequences.",
    )
    parser.add_argument("--runs", type=int, default=200, help="how many sequences")
    parser.add_argument("--seed", type=int, default=0, help="which seed")
    parser.add_argument("--first", type=int, default=0, help="first sequence index")
    parser.add_argument("--replay", help="run this one sequence (its text form)")
    parser.add_argument(
        "--no-shrink", action="store_true", help="print differences unshrunk"
    )
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
