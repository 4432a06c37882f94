"""The backing protocol, and what every backing and its callers share.

A :class:`Backing` is random-access storage behind a
:class:`~aiomemmap.CachedFile`: bytes in memory, a local file, an object on
HTTP or S3, anything an fsspec filesystem can read. Every method is a
coroutine, so a backing may wait for the network without blocking the loop.

Transient failures (a dropped connection, a timeout, a 5xx answer) are retried
by the caller through :func:`read_fully` or :func:`call_with_retry` with a
:class:`RetryPolicy`; a backing's own methods make one attempt each.

The backings themselves live in modules of their own, so that using one loads
no library another needs: :mod:`~aiomemmap.backings.memory`,
:mod:`~aiomemmap.backings.local`, :mod:`~aiomemmap.backings.http` (the only
one on aiohttp), :mod:`~aiomemmap.backings.fsspec_backing` (the only one on
fsspec), :mod:`~aiomemmap.backings.testing` (fault injection) and
:mod:`~aiomemmap.backings.opener` (:func:`~aiomemmap.open_backing`). This
module imports none of those libraries: it recognises aiohttp's errors only
once something else has loaded aiohttp.
"""

from __future__ import annotations

import asyncio
import errno
import math
import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from aiomemmap._core.pages import is_int

__all__ = [
    "Backing",
    "RetryPolicy",
    "call_with_retry",
    "is_transient",
    "read_fully",
]

_T = TypeVar("_T")


class Backing(Protocol):
    """Random-access storage of a file's bytes.

    Every method may be called concurrently with any other from tasks of one
    event loop; implementations serialise internally if they must.

    Attributes:
        readonly: Whether :meth:`write_from` and :meth:`truncate` always fail.
    """

    readonly: bool

    async def size(self) -> int:
        """Return the current size of the file in bytes.

        Raises:
            OSError: The storage could not be asked (e.g. ``ConnectionError``).
            ClosedError: The backing was closed.
        """
        ...

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` into ``buf``.

        Returns:
            The number of bytes read. It is short only at the end of the file
            (0 at or past the end).

        Raises:
            OSError: The read failed; nothing is promised about ``buf``.
            ClosedError: The backing was closed.

        Preconditions:
            ``offset >= 0``; ``buf`` is writable.
        """
        ...

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset``, extending the file if needed.

        Returns:
            ``len(data)``: writes are never short without an error.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The write failed.
            ClosedError: The backing was closed.
        """
        ...

    async def truncate(self, size: int) -> None:
        """Set the file's size to ``size``, zero-filling when it grows.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The storage refused.
            ClosedError: The backing was closed.
        """
        ...

    async def version(self) -> str | None:
        """Return a token that changes whenever the contents change.

        An ETag, a generation number or size plus modification time;
        ``None`` if the storage offers nothing of the kind.

        Raises:
            OSError: The storage could not be asked.
            ClosedError: The backing was closed.
        """
        ...

    async def aclose(self) -> None:
        """Release the backing's resources. Idempotent."""
        ...


# ---------------------------------------------------------------------------
# Retry classification and policy.
# ---------------------------------------------------------------------------

# errno values an OSError may carry when the failure is worth retrying: the
# peer went away, the request timed out, the service asked us to slow down.
_TRANSIENT_ERRNOS: Final[frozenset[int]] = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.EREMOTEIO,
        errno.ETIMEDOUT,
    }
)

# Exceptions that are never transient, whatever they wrap.
_PERMANENT: Final[tuple[type[BaseException], ...]] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
)


def _aiohttp_errors() -> tuple[type[Exception], type[Exception]] | None:
    """Return aiohttp's ``(ClientResponseError, ClientError)`` once it is loaded.

    An exception of aiohttp's can only exist after aiohttp was imported (by
    :class:`~aiomemmap.backings.http.HttpBacking`, fsspec's HTTP filesystem,
    s3fs...), so while it is not loaded there is nothing of its to recognise,
    and this module never needs to import it.
    """
    aiohttp = sys.modules.get("aiohttp")
    response_error = getattr(aiohttp, "ClientResponseError", None)
    client_error = getattr(aiohttp, "ClientError", None)
    if isinstance(response_error, type) and isinstance(client_error, type):
        return response_error, client_error
    return None


def http_status(exc: BaseException) -> int | None:
    """Return the HTTP status an exception reports, if it reports one.

    Understands aiohttp's ``ClientResponseError`` (``.status``, raised by
    fsspec's HTTP filesystem through ``raise_for_status``) and botocore's
    ``ClientError`` (``.response["ResponseMetadata"]["HTTPStatusCode"]``, the
    ``__cause__`` of the ``OSError`` s3fs raises).
    """
    aiohttp_errors = _aiohttp_errors()
    if aiohttp_errors is not None and isinstance(exc, aiohttp_errors[0]):
        status = getattr(exc, "status", None)
        return status if isinstance(status, int) else None
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata")
        if isinstance(meta, dict):
            status = meta.get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """Return ``exc`` and its explicit causes, outermost first (bounded)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 8 and cur not in out:
        out.append(cur)
        cur = cur.__cause__
    return out


def _is_transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def is_transient(exc: BaseException) -> bool:
    """Return whether retrying the operation that raised ``exc`` may succeed.

    Transient: ``ConnectionError`` (refused, reset, aborted, broken pipe),
    ``TimeoutError`` (which ``asyncio.TimeoutError`` and fsspec's
    ``FSTimeoutError`` are), aiohttp's client errors (connection and payload
    errors, a server that disconnected), HTTP 5xx, 408 and 429 answers
    however they are surfaced: fsspec's HTTP filesystem raises aiohttp's
    ``ClientResponseError`` carrying ``.status``; s3fs raises an ``OSError``
    (``EREMOTEIO`` for 500, ``EBUSY`` for 503, ``EIO`` for others) whose
    ``__cause__`` is botocore's ``ClientError`` with the HTTP status. An
    ``OSError`` whose ``errno`` names a network or busy condition is transient
    too.

    Never transient: ``asyncio.CancelledError`` and other non-``Exception``
    exceptions, ``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``,
    ``ValueError``, ``TypeError``, HTTP 4xx other than 408/429, and anything
    unrecognised.

    Args:
        exc: The exception to classify.

    Returns:
        ``True`` if the error is transient.
    """
    if not isinstance(exc, Exception) or isinstance(exc, _PERMANENT):
        return False
    aiohttp_errors = _aiohttp_errors()
    if aiohttp_errors is not None:
        response_error, client_error = aiohttp_errors
        if isinstance(exc, response_error):
            status = http_status(exc)
            return status is not None and _is_transient_status(status)
        if isinstance(exc, client_error):
            return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    for link in exception_chain(exc):
        status = http_status(link)
        if status is not None:
            return _is_transient_status(status)
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


@typing.final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently :func:`read_fully` retries transient errors.

    The delay before retry ``k`` (1-based) is
    ``min(max_backoff, initial_backoff * multiplier ** (k - 1))``. There is no
    random jitter, so a policy always produces the same schedule.

    Attributes:
        attempts: Attempts in a row that may fail before the last error is
            raised; ``1`` means no retry.
        initial_backoff: Seconds to wait before the first retry.
        max_backoff: Upper bound of any one wait, in seconds.
        multiplier: Growth factor of the wait between retries.

    Concurrency:
        immutable.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not is_int(self.attempts) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff!r}) must be >= "
                f"initial_backoff ({self.initial_backoff!r})"
            )

    def backoff(self, retry: int) -> float:
        """Return the delay in seconds before retry number ``retry`` (1-based).

        Args:
            retry: Which retry; ``1`` is the first.

        Raises:
            ValueError: ``retry < 1``.
        """
        if not is_int(retry) or retry < 1:
            raise ValueError(f"retry must be an int >= 1, got {retry!r}")
        # Cap the exponent so huge retry numbers cannot overflow a float.
        exponent = min(retry - 1, 1024)
        try:
            delay = self.initial_backoff * self.multiplier**exponent
        except OverflowError:
            delay = self.max_backoff
        return float(min(self.max_backoff, delay))


_DEFAULT_RETRY: Final[RetryPolicy] = RetryPolicy()


async def call_with_retry(
    fn: Callable[[], Awaitable[_T]], *, retry: RetryPolicy | None = None
) -> _T:
    """Await ``fn()``, retrying transient errors as :func:`read_fully` does.

    For a backing's questions that are not reads (``size()``, ``version()``):
    a transient failure (see :func:`is_transient`) is retried with the
    policy's backoff; any other error, or the last transient one once
    ``retry.attempts`` calls in a row failed, propagates.

    Args:
        fn: Makes one attempt; called again for each retry.
        retry: The retry policy; ``None`` means ``RetryPolicy()``.

    Raises:
        TypeError: ``retry`` is not a ``RetryPolicy`` or ``None``.
        Exception: What the last attempt raised.

    Cancellation:
        Propagates at once, from the call or the backoff sleep; it is never
        retried.
    """
    policy = _DEFAULT_RETRY if retry is None else retry
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
    failures = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
        await asyncio.sleep(policy.backoff(failures))


# ---------------------------------------------------------------------------
# Argument checks shared by the backings.
# ---------------------------------------------------------------------------


def check_offset(offset: object) -> int:
    """Return ``offset`` if it is an int ``>= 0``.

    Raises:
        TypeError: ``offset`` is not an int.
        ValueError: ``offset`` is negative.
    """
    if not is_int(offset):
        raise TypeError(f"offset must be an int, got {offset!r}")
    assert isinstance(offset, int)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def check_size(size: object) -> int:
    """Return ``size`` if it is an int ``>= 0``.

    Raises:
        TypeError: ``size`` is not an int.
        ValueError: ``size`` is negative.
    """
    if not is_int(size):
        raise TypeError(f"size must be an int, got {size!r}")
    assert isinstance(size, int)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return size


def byte_view(buf: memoryview | bytearray, *, writable: bool) -> memoryview:
    """Return ``buf`` as a flat view of bytes.

    Raises:
        TypeError: ``writable`` is asked and ``buf`` is read-only.
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if writable and view.readonly:
        raise TypeError("buf must be writable")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def writable_byte_view(buf: memoryview | bytearray) -> memoryview:
    """``byte_view(buf, writable=True)``, with a fast path for a byte view."""
    if (
        type(buf) is memoryview
        and buf.itemsize == 1
        and buf.ndim == 1
        and not buf.readonly
    ):
        return buf
    return byte_view(buf, writable=True)


# ---------------------------------------------------------------------------
# The read loop.
# ---------------------------------------------------------------------------


async def read_fully(
    backing: Backing,
    offset: int,
    buf: memoryview | bytearray,
    *,
    retry: RetryPolicy | None = None,
) -> int:
    """Fill ``buf`` from ``backing`` at ``offset``, stopping only at end of file.

    A short read is not trusted to mean end of file: reading goes on from
    where it stopped. A read that returns ``0`` ends the loop only if
    ``backing.size()`` confirms that the position is at or past the end;
    otherwise the zero-byte read counts as a failed attempt (it may be an
    eventually consistent store catching up) and, once attempts run out,
    raises ``OSError(EIO)``. Zero bytes are never passed off as data.

    Transient errors (see :func:`is_transient`) are retried with the
    policy's deterministic exponential backoff. The budget counts failures
    in a row: a read that makes progress resets it, so a long read through a
    flaky backing is not failed by errors spread across many chunks.
    Permanent errors are raised at once.

    Args:
        backing: Where to read from.
        offset: File offset of ``buf[0]``.
        buf: Writable destination.
        retry: The retry policy; ``None`` means ``RetryPolicy()``. Use
            ``RetryPolicy(attempts=1)`` for no retries.

    Returns:
        Bytes read: ``len(buf)``, or fewer only if the end of file came first.

    Raises:
        TypeError: ``buf`` is not writable or ``offset`` is not an int.
        ValueError: ``offset`` is negative.
        OSError: A permanent error, or the last transient error once
            ``retry.attempts`` attempts in a row failed. ``buf[:k]`` may
            already hold bytes read before the error.
        ClosedError: The backing was closed.

    Preconditions:
        ``offset >= 0``; ``buf`` is writable.

    Postconditions:
        ``buf[:result]`` holds the file's bytes at
        ``[offset, offset + result)``.

    Cancellation:
        ``CancelledError`` is never retried; it propagates at once from the
        backing call or backoff sleep it lands in. ``buf`` may be partly
        filled.
    """
    if type(offset) is not int or offset < 0:
        offset = check_offset(offset)
    view = writable_byte_view(buf)
    policy = _DEFAULT_RETRY if retry is None else retry
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
    want = len(view)
    done = 0
    failures = 0
    while done < want:
        pos = offset + done
        size = -1
        try:
            n = await backing.read_into(pos, view[done:])
            if n == 0:
                size = await backing.size()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
            await asyncio.sleep(policy.backoff(failures))
            continue
        if n < 0 or n > want - done:
            raise OSError(
                errno.EIO,
                f"backing returned {n} bytes for a read of {want - done}",
            )
        if n == 0:
            if pos >= size:
                return done
            failures += 1
            if failures >= policy.attempts:
                raise OSError(
                    errno.EIO,
                    f"backing returned no bytes at offset {pos} "
                    f"before its end at {size}",
                )
            await asyncio.sleep(policy.backoff(failures))
            continue
        done += n
        failures = 0
    return done


# The backings that live in modules of their own, by the module that holds
# each; ``from aiomemmap.backings.base import HttpBacking`` resolves through
# here on first use, and loads only the module it names.
_MOVED: Final[dict[str, str]] = {
    "BytesBacking": "aiomemmap.backings.memory",
    "FaultInjectingBacking": "aiomemmap.backings.testing",
    "FsspecBacking": "aiomemmap.backings.fsspec_backing",
    "HttpBacking": "aiomemmap.backings.http",
    "LocalFileBacking": "aiomemmap.backings.local",
    "open_backing": "aiomemmap.backings.opener",
}


def _load_moved(name: str) -> object:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


if not typing.TYPE_CHECKING:
    __getattr__ = _load_moved
