"""The backing protocol, and what every backing and its callers share.

A :class:`Backing` is random-access storage behind a
:class:`~aiomemmap.CachedFile`: bytes in memory, a local file, an object on
HTTP or S3, anything an fsspec filesystem can read. Every method is a
coroutine, so a backing may wait for the network without blocking the loop.

Transient failures (a dropped connection, a timeout, a 5xx answer) are retried
by the caller through :func:`read_fully` or :func:`call_with_retry` with a
:class:`RetryPolicy`; a backing's own methods make one attempt each. What is
not transient fails at once, without a retry: a missing object, a refused
permission, a refused connection (see :func:`is_transient`), a
:class:`~aiomemmap._core.errors.BusError` (the final word of a retry loop
below). A read answered by another version of the object than the one the
backing is tied to raises
:class:`~aiomemmap._core.errors.StaleVersionError`, which is never retried
either: the caller revalidates instead.

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

from aiomemmap._core.errors import BusError, StaleVersionError
from aiomemmap._core.pages import is_int

__all__ = [
    "Backing",
    "RetryPolicy",
    "call_with_retry",
    "is_refused",
    "is_transient",
    "read_fully",
]

_T = TypeVar("_T")


class Backing(Protocol):
    """Random-access storage of a file's bytes.

    Every method may be called concurrently with any other from tasks of one
    event loop; implementations serialise internally if they must.

    Versions: a backing whose storage tells one version of the object from
    another ties its reads to one version, the *pinned* one: the version its
    latest :meth:`version` call answered or, before any such call, the one
    its first :meth:`size` or :meth:`read_into` call met. A read that meets
    another version, or that ends before the pinned version's end (the
    object shrank), raises
    :class:`~aiomemmap._core.errors.StaleVersionError` instead of returning
    bytes: bytes of two versions are never passed off as one file, and a
    file that shrank never reads as zeros. Changes made through the backing
    itself (:meth:`write_from`, :meth:`truncate`) move the pin with them.

    To move on to the object's new version after a ``StaleVersionError``,
    drop whatever was read of the old one and call :meth:`version` again:
    the answer is the version later reads are tied to (this is what
    :meth:`~aiomemmap.CachedFile.revalidate` does). Bytes that reads
    started before that call return may belong to either version: a cache
    must not keep them. A backing that pins nothing (one whose every change
    is made through it, like :class:`~aiomemmap.BytesBacking`, or one written
    before pins existed) keeps working: its :meth:`version` is only a
    question, and :func:`read_fully` with ``known_size`` still refuses to
    end a read before the size the caller knows.

    Timeouts: each backing of this package bounds the time one call may wait
    for its storage (a ``timeout`` option, 60 seconds by default; see each
    class) and raises ``TimeoutError`` (an ``OSError`` with ``ETIMEDOUT``,
    transient) past it. :attr:`RetryPolicy.timeout` bounds every attempt of
    :func:`read_fully` and :func:`call_with_retry` the same way, for any
    backing.

    Attributes:
        readonly: Whether :meth:`write_from` and :meth:`truncate` always fail.
    """

    readonly: bool

    async def size(self) -> int:
        """Return the current size of the file in bytes.

        The first call of a backing that pins versions and has none pinned
        yet pins the version it meets.

        Raises:
            OSError: The storage could not be asked (e.g. ``ConnectionError``).
            ClosedError: The backing was closed.
        """
        ...

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` into ``buf``.

        Returns:
            The number of bytes read, an int in ``[0, len(buf)]``. It is
            short only at the end of the file (0 at or past the end).

        Raises:
            StaleVersionError: The object is no longer the pinned version.
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
        ``None`` if the storage offers nothing of the kind. A backing that
        pins versions ties its later reads to the version answered (see
        the class docstring).

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
# ECONNREFUSED is not one of them (see is_transient).
_TRANSIENT_ERRNOS: Final[frozenset[int]] = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ECONNABORTED,
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
    BusError,
    StaleVersionError,
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


def is_refused(exc: BaseException) -> bool:
    """Return whether ``exc`` says a connection was refused.

    True for a ``ConnectionRefusedError``, or any ``OSError`` with
    ``ECONNREFUSED`` (aiohttp's ``ClientConnectorError`` carries the errno
    of the connection attempt), found in ``exc`` or its explicit causes.
    """
    for link in exception_chain(exc):
        if isinstance(link, ConnectionRefusedError) or (
            isinstance(link, OSError) and link.errno == errno.ECONNREFUSED
        ):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Return whether retrying the operation that raised ``exc`` may succeed.

    Transient: ``ConnectionError`` (reset, aborted, broken pipe; not
    refused), ``TimeoutError`` (which ``asyncio.TimeoutError`` and fsspec's
    ``FSTimeoutError`` are), aiohttp's client errors (connection and payload
    errors, a server that disconnected), HTTP 5xx, 408 and 429 answers
    however they are surfaced: fsspec's HTTP filesystem raises aiohttp's
    ``ClientResponseError`` carrying ``.status``; s3fs raises an ``OSError``
    (``EREMOTEIO`` for 500, ``EBUSY`` for 503, ``EIO`` for others) whose
    ``__cause__`` is botocore's ``ClientError`` with the HTTP status. An
    ``OSError`` whose ``errno`` names a network or busy condition is transient
    too.

    Never transient: ``asyncio.CancelledError`` and other non-``Exception``
    exceptions, :class:`~aiomemmap._core.errors.StaleVersionError` (the
    object changed: retrying reads the new version),
    :class:`~aiomemmap._core.errors.BusError` (it reports a failure that
    was already retried), ``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``,
    ``ValueError``, ``TypeError``, HTTP 4xx other than 408/429, a refused
    connection (see :func:`is_refused`), and anything unrecognised.

    A refused connection is the host's own immediate answer that nothing
    listens at the address: the server is down or the address is wrong. A
    retry within a budget of well under a second meets the same answer, so
    it is not made, at the first request to a server as at any later one
    (fsspec's HTTP filesystem does not retry it either). A server that dies
    while a file is read thus fails the file's next fetch within one retry
    budget: requests cut off in flight (a reset, a disconnect, a cut body)
    are transient and retried, and the retries, refused, fail at once.

    Args:
        exc: The exception to classify.

    Returns:
        ``True`` if the error is transient.
    """
    if not isinstance(exc, Exception) or isinstance(exc, _PERMANENT) or is_refused(exc):
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


def check_timeout(timeout: object) -> float | None:
    """Return ``timeout`` as seconds, or ``None`` for no bound.

    Raises:
        ValueError: ``timeout`` is not ``None`` or a finite number ``> 0``.
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(
            f"timeout must be None or a finite number > 0, got {timeout!r}"
        )
    return float(timeout)


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
        timeout: Seconds one attempt (one call of the backing) may take
            before it is abandoned with a ``TimeoutError``, which counts as a
            transient failure; ``None`` (the default) leaves the bound to
            the backing's own ``timeout`` option.

    Concurrency:
        immutable.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    timeout: float | None = None

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
        check_timeout(self.timeout)
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
        retry: The retry policy; ``None`` means ``RetryPolicy()``. Its
            ``timeout`` bounds each attempt.

    Raises:
        TypeError: ``retry`` is not a ``RetryPolicy`` or ``None``.
        TimeoutError: The last attempt outlived ``retry.timeout``.
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
            if policy.timeout is None:
                return await fn()
            return await within(
                policy.timeout,
                fn(),
                getattr(fn, "__self__", fn),
                f"{getattr(fn, '__name__', 'the call')}()",
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
        await asyncio.sleep(policy.backoff(failures))


# ---------------------------------------------------------------------------
# Argument checks and time limits shared by the backings.
# ---------------------------------------------------------------------------


async def within(
    seconds: float | None, aw: Awaitable[_T], owner: object, what: str
) -> _T:
    """Await ``aw``, giving up after ``seconds``.

    Args:
        seconds: Seconds allowed; ``None`` waits as long as it takes.
        aw: What to await; cancelled when the time is up.
        owner: Who waits (a backing), named in the error.
        what: What is awaited, named in the error.

    Raises:
        TimeoutError: The time ran out; ``errno`` is ``ETIMEDOUT`` and the
            message names ``owner``, ``what`` and the bound. A
            ``TimeoutError`` raised by ``aw`` itself passes unchanged.

    Cancellation:
        Propagates; ``aw`` is cancelled with the caller.
    """
    if seconds is None:
        return await aw
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await aw
    except TimeoutError as exc:
        if not limit.expired():
            raise
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"{owner!r}: {what} did not finish within {seconds:g} s",
        ) from exc


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
    known_size: int | None = None,
) -> int:
    """Fill ``buf`` from ``backing`` at ``offset``, stopping only at end of file.

    A short read is not trusted to mean end of file: reading goes on from
    where it stopped. A read that returns ``0`` ends the loop only if
    ``backing.size()`` confirms that the position is at or past the end
    and, when ``known_size`` is given, that the position is at or past it
    too: a file that ends before the size its caller knows has shrunk
    since, which raises
    :class:`~aiomemmap._core.errors.StaleVersionError`, never a short
    count that the caller would fill with zeros. A zero-byte read before
    the end counts as a failed attempt (it may be an eventually consistent
    store catching up) and, once attempts run out, raises ``OSError(EIO)``.
    Zero bytes are never passed off as data.

    Transient errors (see :func:`is_transient`) are retried with the
    policy's deterministic exponential backoff; an attempt that outlives
    ``retry.timeout`` is one of them. The budget counts failures in a row:
    a read that makes progress resets it, so a long read through a flaky
    backing is not failed by errors spread across many chunks. Permanent
    errors (``StaleVersionError`` among them) are raised at once.

    Args:
        backing: Where to read from.
        offset: File offset of ``buf[0]``.
        buf: Writable destination.
        retry: The retry policy; ``None`` means ``RetryPolicy()``. Use
            ``RetryPolicy(attempts=1)`` for no retries.
        known_size: The file's size as the caller last learnt it (a
            cache's), or ``None`` to trust ``backing.size()`` alone.

    Returns:
        Bytes read: ``len(buf)``, or fewer only if the end of file came first.

    Raises:
        TypeError: ``buf`` is not writable or ``offset`` is not an int.
        ValueError: ``offset`` is negative.
        StaleVersionError: The backing reported a change of version, or the
            file ended before ``known_size``.
        TimeoutError: The last attempt outlived ``retry.timeout`` (or the
            backing's own bound).
        OSError: A permanent error, the last transient error once
            ``retry.attempts`` attempts in a row failed, or ``EIO`` when
            ``backing.read_into`` returned something other than a byte
            count in ``[0, asked]`` (the message names the backing and
            what it returned). ``buf[:k]`` may already hold bytes read
            before the error.
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
    if known_size is not None:
        known_size = check_size(known_size)
    timeout = policy.timeout
    want = len(view)
    done = 0
    failures = 0
    while done < want:
        pos = offset + done
        size = -1
        try:
            if timeout is None:
                n = await backing.read_into(pos, view[done:])
            else:
                n = await within(
                    timeout,
                    backing.read_into(pos, view[done:]),
                    backing,
                    f"read_into at {pos}",
                )
            if n == 0 and is_int(n):
                if timeout is None:
                    size = await backing.size()
                else:
                    size = await within(timeout, backing.size(), backing, "size()")
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures >= policy.attempts:
                raise
            await asyncio.sleep(policy.backoff(failures))
            continue
        if type(n) is not int and not is_int(n):
            raise _bad_count(backing, pos, want - done, n)
        if n < 0 or n > want - done:
            raise _bad_count(backing, pos, want - done, n)
        if n == 0:
            if pos >= size:
                if known_size is not None and pos < known_size:
                    raise StaleVersionError(
                        f"{backing!r} ended at {size}, before offset {pos} of "
                        f"the {known_size} bytes the file had: it shrank",
                        expected=f"size:{known_size}",
                        found=f"size:{size}",
                    )
                return done
            failures += 1
            if failures >= policy.attempts:
                raise OSError(
                    errno.EIO,
                    f"{backing!r} returned no bytes at offset {pos} "
                    f"before its end at {size}",
                )
            await asyncio.sleep(policy.backoff(failures))
            continue
        done += n
        failures = 0
    return done


def _bad_count(backing: Backing, pos: int, asked: int, n: object) -> OSError:
    """Return the error for a ``read_into`` that returned ``n``, not a count."""
    what = f"{n} bytes" if is_int(n) else f"{n!r} ({type(n).__name__})"
    return OSError(
        errno.EIO,
        f"{backing!r}.read_into({pos}, <{asked} bytes>) returned {what}, "
        f"not a byte count in [0, {asked}]",
    )
