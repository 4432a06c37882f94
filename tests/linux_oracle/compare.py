"""Running a sequence on both sides and finding the first disagreement.

:class:`Oracle` runs a sequence in a :class:`LinuxGuest` and through
:func:`run_model`, and compares the traces step by step: each outcome (errno,
bytes, byte counts), each maps line in the window, then the closing
read-back of the window, the file and every kept child's window. The first
disagreement is a :class:`Difference`; later steps depend on it and are not
looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.linux_oracle.differences import differ_only_in, explain
from tests.linux_oracle.driver import LinuxGuest
from tests.linux_oracle.model import ModelSide, run_model
from tests.linux_oracle.ops import Fork, Op, Read, encode
from tests.linux_oracle.window import P

__all__ = ["Difference", "Oracle", "compare_traces", "replay_command"]


def replay_command(ops: tuple[Op, ...] | list[Op]) -> str:
    """Return the shell command that replays ``ops``."""
    return f"python -m tests.linux_oracle --replay '{encode(ops)}'"


def _shape(outcome: Any) -> tuple[Any, ...]:
    """The kind of an outcome, without its bytes: what a shrink must keep."""
    if not isinstance(outcome, list) or not outcome:
        return (repr(outcome),)
    head = outcome[0]
    if head in ("err", "exc"):
        return (head, str(outcome[1]).split(" after ")[0])
    if head == "fault":
        return (head, outcome[1])
    return (head,)


@dataclass(frozen=True, slots=True)
class Difference:
    """The first place where Linux and the space disagree.

    Attributes:
        where: Which step: ``"op 3"``, ``"op 3, child op 1"``, ``"final
            window page 5"``, ``"final file"``, ``"final child 0 page 2"``.
        op: The operation of that step (``None`` for the read-back).
        what: ``"outcome"``, ``"maps"``, ``"window"`` or ``"file"``.
        linux: What Linux reported.
        ours: What the space reported.
        outcome: For a maps difference, the outcome both sides agreed on.
    """

    where: str
    op: Op | None
    what: str
    linux: Any
    ours: Any
    outcome: Any = None

    def signature(self) -> tuple[Any, ...]:
        """What a smaller reproducer must still show to count as the same."""
        op_name = type(self.op).__name__ if self.op is not None else "-"
        if self.what == "outcome":
            return (self.what, op_name, _shape(self.linux), _shape(self.ours))
        if self.what == "window":
            return (self.what, _shape(self.linux), _shape(self.ours))
        return (self.what, op_name)

    def describe(self) -> str:
        """Return a readable account of the difference."""
        head = f"{self.where}: {self.what} differs"
        if self.op is not None:
            head += f" after {encode([self.op])}"
        if self.what == "maps":
            return (
                f"{head}\n  linux: {self.linux}\n  ours:  {self.ours}"
                if self.linux or self.ours
                else head
            )
        return f"{head}\n  linux: {_brief(self.linux)}\n  ours:  {_brief(self.ours)}"


def _first_byte_difference(a: str, b: str) -> str:
    x, y = bytes.fromhex(a), bytes.fromhex(b)
    for i, (p, q) in enumerate(zip(x, y, strict=False)):
        if p != q:
            return f"first differing byte at +{i:#x}: {p:#04x} vs {q:#04x}"
    return f"lengths {len(x)} vs {len(y)}"


def _brief(value: Any) -> str:
    """Render an outcome, shortening long hex data."""
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, str) and len(item) > 40:
                parts.append(f"<{len(item) // 2} bytes>")
            else:
                parts.append(repr(item))
        return "[" + ", ".join(parts) + "]"
    return repr(value)


def _data_note(linux: Any, ours: Any) -> Any:
    """Add where the bytes differ, when both outcomes carry data."""
    if (
        isinstance(linux, list)
        and isinstance(ours, list)
        and linux[:1] == ours[:1]
        and isinstance(linux[-1], str)
        and isinstance(ours[-1], str)
        and linux[-1] != ours[-1]
    ):
        try:
            return _first_byte_difference(linux[-1], ours[-1])
        except ValueError:
            return None
    return None


class _Stop:
    """The comparison ends here (an entry with ``ends_comparison``)."""


_STOP = _Stop()


def _window_copied_only(linux: Any, ours: Any, start: int, pages: list[int]) -> bool:
    """Whether two read outcomes differ only in bytes of ``pages``.

    ``pages`` are our side's pages copied without being written
    (:data:`~tests.linux_oracle.differences.COPY_ON_WRITE_WINDOW`).
    """
    return (
        bool(pages)
        and isinstance(linux, list)
        and isinstance(ours, list)
        and len(linux) == len(ours)
        and linux[:-1] == ours[:-1]
        and isinstance(linux[-1], str)
        and isinstance(ours[-1], str)
        and differ_only_in(linux[-1], ours[-1], start, frozenset(pages))
    )


def _compare_steps(
    ops: tuple[Op, ...], linux: list[Any], ours: list[Any], prefix: str
) -> Difference | _Stop | None:
    for i, op in enumerate(ops):
        where = f"{prefix}op {i}"
        (l_out, l_maps), (o_out, o_maps, copies) = linux[i], ours[i]
        if isinstance(op, Fork) and l_out[:1] == o_out[:1] == ["fork"]:
            diff = _compare_steps(op.ops, l_out[1], o_out[1], f"{where}, child ")
            if diff is not None:
                return diff
        elif l_out != o_out:
            entry = explain(op, l_out, o_out)
            if entry is not None and entry.ends_comparison:
                return _STOP
            if entry is not None:
                continue
            if isinstance(op, Read) and _window_copied_only(
                l_out, o_out, op.addr, copies
            ):
                continue
            note = _data_note(l_out, o_out)
            if note is not None:
                l_out = [*l_out[:-1], l_out[-1], note]
            return Difference(where, op, "outcome", l_out, o_out)
        if l_maps != o_maps:
            return Difference(where, op, "maps", l_maps, o_maps, o_out)
    return None


def _compare_sweep(
    linux: list[Any], ours: list[Any], where: str, copies: list[int]
) -> Difference | None:
    for page, (a, b) in enumerate(zip(linux, ours, strict=True)):
        if a != b and not _window_copied_only(a, b, page * P, copies):
            note = _data_note(a, b)
            shown = [*a, note] if note is not None else a
            return Difference(
                f"{where} page {page} (+{page * P:#x})", None, "window", shown, b
            )
    return None


def compare_traces(
    ops: tuple[Op, ...], linux: list[Any], ours: list[Any]
) -> Difference | None:
    """Return the first difference between two traces of ``ops``, or ``None``."""
    diff = _compare_steps(ops, linux[:-1], ours[:-1], "")
    if isinstance(diff, _Stop):
        return None
    if diff is not None:
        return diff
    _, l_sweep, l_file, l_children = linux[-1]
    _, o_sweep, o_file, o_children, (copies, *child_copies) = ours[-1]
    diff = _compare_sweep(l_sweep, o_sweep, "final window", copies)
    if diff is not None:
        return diff
    if l_file != o_file:
        note = _first_byte_difference(l_file, o_file)
        return Difference("final file", None, "file", note, "")
    if len(l_children) != len(o_children):
        return Difference("final", None, "children", len(l_children), len(o_children))
    for k, (a, b) in enumerate(zip(l_children, o_children, strict=True)):
        diff = _compare_sweep(a, b, f"final child {k}", child_copies[k])
        if diff is not None:
            return diff
    return None


class Oracle:
    """Runs sequences on both sides and reports the first difference.

    Args:
        guest: Where sequences run for real.
        side: The class running operations on our side.
    """

    def __init__(self, guest: LinuxGuest, side: type[ModelSide] = ModelSide) -> None:
        self.guest = guest
        self.side = side
        self.runs = 0

    async def check(self, ops: tuple[Op, ...]) -> Difference | None:
        """Run ``ops`` on both sides; return the first difference or ``None``."""
        self.runs += 1
        linux = self.guest.run(ops)
        ours = await run_model(ops, self.side)
        return compare_traces(ops, linux, ours)
