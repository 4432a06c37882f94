"""Shrinking a failing sequence to a minimal reproducer (delta debugging).

:func:`ddmin` is Zeller's minimising delta debugging over a list: it removes
ever smaller chunks while the failure persists, and ends 1-minimal (removing
any single element makes the failure go away). :func:`shrink` applies it to
a sequence's operations, then to the operations of each fork, and then tries
to let kept children exit, keeping only changes after which the difference
has the same :meth:`~tests.linux_oracle.compare.Difference.signature`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from tests.linux_oracle.compare import Difference, Oracle
from tests.linux_oracle.ops import Fork, Op

__all__ = ["ddmin", "shrink"]

_T = TypeVar("_T")


async def ddmin(
    items: Sequence[_T], fails: Callable[[list[_T]], Awaitable[bool]]
) -> list[_T]:
    """Return a 1-minimal sublist of ``items`` for which ``fails`` holds.

    Args:
        items: A list for which ``fails`` holds.
        fails: Whether a sublist (order kept) still fails.
    """
    current = list(items)
    n = 2
    while len(current) >= 2:
        size = -(-len(current) // n)
        chunks = [current[i : i + size] for i in range(0, len(current), size)]
        for chunk in chunks:
            if await fails(chunk):
                current, n = chunk, 2
                break
        else:
            for k in range(len(chunks)):
                rest = [x for j, c in enumerate(chunks) if j != k for x in c]
                if await fails(rest):
                    current, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(current):
                    break
                n = min(len(current), 2 * n)
    if len(current) == 1 and await fails([]):
        return []
    return current


async def shrink(
    oracle: Oracle, ops: tuple[Op, ...], found: Difference
) -> tuple[tuple[Op, ...], Difference]:
    """Return a minimal sequence showing a difference like ``found``, and it.

    Args:
        oracle: Runs the candidates.
        ops: A sequence that shows ``found``.
        found: The difference to keep.
    """
    want = found.signature()
    last: dict[str, Difference] = {"diff": found}

    async def fails(candidate: list[Op]) -> bool:
        diff = await oracle.check(tuple(candidate))
        if diff is not None and diff.signature() == want:
            last["diff"] = diff
            return True
        return False

    current = await ddmin(list(ops), fails)
    for i, op in enumerate(current):
        if not isinstance(op, Fork):
            continue

        async def child_fails(inner: list[Op], i: int = i, op: Fork = op) -> bool:
            return await fails(
                [*current[:i], replace(op, ops=tuple(inner)), *current[i + 1 :]]
            )

        inner = await ddmin(list(op.ops), child_fails)
        current[i] = op = replace(op, ops=tuple(inner))
        if op.keep and await fails(
            [*current[:i], replace(op, keep=False), *current[i + 1 :]]
        ):
            current[i] = replace(op, keep=False)
    # Report the difference of exactly the sequence returned.
    await fails(current)
    return tuple(current), last["diff"]
