"""The cancellation shield: finish a step even if the caller is cancelled.

Some steps must not stop half way: removing a mapping, returning an identity
reference, freeing pages after an invalidation, waiting for the deliveries a
publish started. :func:`finish_shielded` runs such a step to its end and only
then delivers a cancellation that arrived meanwhile, so the caller still sees
``CancelledError`` and structured concurrency (asyncio timeouts, task groups,
anyio cancel scopes) works as usual.

It is the one helper for this in the package; every "finish despite
cancellation" path goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

__all__ = ["finish_shielded"]

_T = TypeVar("_T")


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen, so that asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


@contextlib.contextmanager
def _anyio_shield() -> Generator[None, None, None]:
    """Shield the current task from anyio cancel scopes, if anyio is in use.

    An anyio cancel scope that was cancelled cancels its tasks again on every
    loop iteration until they leave it; a task that must keep waiting would
    spin. A shielded inner scope stops that. anyio is looked up only if it is
    already imported: without it no anyio scope can exist, and the core stays
    on the standard library.
    """
    anyio = sys.modules.get("anyio")
    if anyio is None:
        yield
        return
    try:
        scope = anyio.CancelScope(shield=True)
    except Exception:  # pragma: no cover - anyio without a usable CancelScope
        yield
        return
    with scope:
        yield


async def finish_shielded(aw: Awaitable[_T]) -> _T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile.

    A coroutine is run as a task created in the caller's context (a copy of
    its context variables, so the lock-order checker sees the caller's locks
    as held); a future or task is awaited as it is.

    Args:
        aw: The step that must finish.

    Returns:
        The step's result, when the caller was not cancelled.

    Raises:
        asyncio.CancelledError: The caller was cancelled while the step ran
            (the first such cancellation, re-raised after the step finished;
            an error of the step is then only marked as retrieved), or the
            step itself was cancelled by someone else.
        BaseException: Whatever the step raised, when the caller was not
            cancelled.

    Cancellation:
        The point of this helper: a cancellation of the caller never stops
        the step; it is delivered once the step is over.
    """
    fut = asyncio.ensure_future(aw)
    if fut.done():
        return fut.result()
    cancelled: asyncio.CancelledError | None = None
    while not fut.done():
        # asyncio.wait neither cancels ``fut`` when the caller is cancelled
        # nor raises ``fut``'s outcome: both are dealt with below.
        try:
            if cancelled is None:
                await asyncio.wait((fut,))
            else:
                with _anyio_shield():
                    await asyncio.wait((fut,))
        except asyncio.CancelledError as exc:
            if cancelled is None:
                cancelled = exc
    if cancelled is not None and not fut.cancelled():
        _consume(fut)
        raise cancelled
    return fut.result()
