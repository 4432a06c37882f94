"""A backing wrapper that injects latency, errors and short reads, for tests.

Fault injection is kept out of the backings that serve real data: nothing but
tests, benchmarks and the demo needs it.
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
import typing
from collections.abc import Callable, Iterable
from typing import Final

from aiomemmap._core.pages import is_int
from aiomemmap.backings.base import Backing, byte_view

__all__ = ["FaultInjectingBacking"]


_FAULT_OPS: Final[frozenset[str]] = frozenset(
    {"size", "read_into", "write_from", "truncate", "version"}
)


@typing.final
class FaultInjectingBacking:
    """Wrap a backing and inject latency, errors and short reads.

    Every call (except :meth:`aclose`) first draws from a
    ``random.Random(seed)``, in call order and before awaiting anything:
    one draw for the latency jitter, then one for the error decision. The
    same seed and the same sequence of calls therefore give the same
    latencies and the same errors. The call then sleeps
    ``max(0, latency + uniform(-jitter, jitter))`` seconds (always yielding
    to the loop at least once), then raises ``error_factory()`` (default: a
    transient ``ConnectionError``) if the error draw fell below
    ``error_rate`` and the method is in ``ops``.

    Reads overlapping any ``(start, end)`` of :attr:`fail_ranges` raise a
    ``ConnectionError`` (or ``error_factory()``); the list may be changed
    at any time, e.g. cleared to let the storage "recover". With
    ``short_reads`` each read asks the inner backing for half of what was
    asked (at least one byte), so it is short but never empty mid-file.

    Attributes:
        inner: The wrapped backing.
        readonly: The inner backing's.
        latency: Seconds slept per call (may be changed at runtime).
        jitter: Half-width of the uniform jitter added to ``latency``.
        error_rate: Probability of an injected error per call.
        fail_ranges: ``[start, end)`` byte ranges whose reads fail.
        short_reads: Whether reads are cut short.
        ops: Method names subject to ``error_rate``.
        calls: Calls made (every method but ``aclose``).
        reads: ``read_into`` calls made, including those that failed.
        bytes_read: Bytes returned by successful reads.
        errors_injected: Errors raised on purpose.

    Concurrency:
        task-safe as far as the inner backing is.
    """

    def __init__(
        self,
        inner: Backing,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        fail_ranges: Iterable[tuple[int, int]] = (),
        short_reads: bool = False,
        error_factory: Callable[[], BaseException] | None = None,
        ops: Iterable[str] | None = None,
    ) -> None:
        """Create the wrapper.

        Args:
            inner: The backing to wrap.
            latency: Seconds to sleep before each call (``>= 0``).
            jitter: Up to this many seconds more or less (``>= 0``).
            error_rate: Probability in ``[0, 1]`` of an injected error.
            seed: Seed of the random sequence.
            fail_ranges: Byte ranges ``(start, end)`` whose reads fail.
            short_reads: Return fewer bytes than asked.
            error_factory: Makes the injected exception; default
                ``ConnectionError``.
            ops: Methods subject to ``error_rate``; default all but
                ``aclose``.

        Raises:
            ValueError: A parameter is out of range.
        """
        for name, value in (("latency", latency), ("jitter", jitter)):
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not _is_number(error_rate) or not 0 <= error_rate <= 1:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
        self.inner = inner
        self.readonly = inner.readonly
        self.latency = float(latency)
        self.jitter = float(jitter)
        self.error_rate = float(error_rate)
        self.fail_ranges: list[tuple[int, int]] = [_check_range(r) for r in fail_ranges]
        self.short_reads = bool(short_reads)
        self.ops = _FAULT_OPS if ops is None else frozenset(ops)
        if not self.ops <= _FAULT_OPS:
            raise ValueError(f"unknown ops: {sorted(self.ops - _FAULT_OPS)}")
        self._error_factory = error_factory
        self._rng = random.Random(seed)
        self.calls = 0
        self.reads = 0
        self.bytes_read = 0
        self.errors_injected = 0

    def __repr__(self) -> str:
        return f"FaultInjectingBacking({self.inner!r})"

    def _make_error(self, message: str) -> BaseException:
        self.errors_injected += 1
        if self._error_factory is not None:
            return self._error_factory()
        return ConnectionError(errno.ECONNRESET, message)

    async def _enter(self, op: str) -> None:
        self.calls += 1
        delay = self.latency + self._rng.uniform(-self.jitter, self.jitter)
        fail = self._rng.random() < self.error_rate
        await asyncio.sleep(max(0.0, delay))
        if fail and op in self.ops:
            raise self._make_error(f"injected error in {op} (call {self.calls})")

    async def size(self) -> int:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        await self._enter("size")
        return await self.inner.size()

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Forward to the inner backing, maybe failing or cutting it short.

        Returns:
            Bytes read.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        self.reads += 1
        await self._enter("read_into")
        view = byte_view(buf, writable=True)
        end = offset + len(view)
        for start, stop in list(self.fail_ranges):
            if start < end and offset < stop and len(view) > 0:
                raise self._make_error(
                    f"injected failure of read [{offset}, {end}) "
                    f"overlapping [{start}, {stop})"
                )
        if self.short_reads and len(view) > 1:
            view = view[: len(view) // 2]
        n = await self.inner.read_into(offset, view)
        self.bytes_read += n
        return n

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Forward to the inner backing after the injected faults.

        Returns:
            ``len(data)``.

        Raises:
            ConnectionError: An injected error.
            PermissionError: The inner backing is read-only.
            OSError: The inner backing's error.
        """
        await self._enter("write_from")
        return await self.inner.write_from(offset, data)

    async def truncate(self, size: int) -> None:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            PermissionError: The inner backing is read-only.
            OSError: The inner backing's error.
        """
        await self._enter("truncate")
        await self.inner.truncate(size)

    async def version(self) -> str | None:
        """Forward to the inner backing after the injected faults.

        Raises:
            ConnectionError: An injected error.
            OSError: The inner backing's error.
        """
        await self._enter("version")
        return await self.inner.version()

    async def aclose(self) -> None:
        """Close the inner backing. Idempotent if the inner one is."""
        await self.inner.aclose()


def _check_range(r: object) -> tuple[int, int]:
    if (
        not isinstance(r, tuple | list)
        or len(r) != 2
        or not all(is_int(x) for x in r)
        or not 0 <= r[0] <= r[1]
    ):
        raise ValueError(
            f"fail range must be (start, end) with 0 <= start <= end, got {r!r}"
        )
    return (int(r[0]), int(r[1]))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
