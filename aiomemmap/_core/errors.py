"""The exception hierarchy of aiomemmap.

Every exception raised on purpose derives from :class:`AiomemmapError`. Each
subclass also derives from the nearest builtin exception, so callers that catch
``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
import typing
from typing import TYPE_CHECKING, ClassVar, Final, Self

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "AccessDeniedError",
    "AddressSpaceError",
    "AiomemmapError",
    "AlignmentError",
    "BusError",
    "ClosedError",
    "InvariantError",
    "LockOrderError",
    "MemoryFault",
    "OutOfMemoryError",
    "RefCountError",
    "StaleVersionError",
    "WrongLoopError",
    "check_invariant",
]


class AiomemmapError(Exception):
    """Root of every exception aiomemmap raises on purpose."""


class AlignmentError(AiomemmapError, ValueError):
    """An address, offset or length is not a multiple of ``PAGE_SIZE``."""


class RefCountError(AiomemmapError, RuntimeError):
    """A page reference count was misused.

    Raised when a reference is taken on or dropped from pages that are not
    tracked, or when a count would fall below zero. The message names the
    offending range.
    """


class OutOfMemoryError(AiomemmapError, MemoryError):
    """An allocation would grow a memory file past its ``max_size``."""


class LockOrderError(AiomemmapError, RuntimeError):
    """A lock was taken out of rank order while debug checks are on."""


class WrongLoopError(AiomemmapError, RuntimeError):
    """An object bound to one event loop was used from another loop or thread.

    Objects that keep state for the tasks of one event loop (an
    :class:`~aiomemmap.InvalidationBus`, an :class:`~aiomemmap.Engine`, a
    backing's client session) bind to the loop they are first used on. The
    message names the object, the loop it belongs to (and whether that loop
    has ended, as it has after ``asyncio.run`` returned), the loop and
    thread it was used from, and what to do instead.
    """

    @classmethod
    def between(
        cls,
        what: str,
        bound: asyncio.AbstractEventLoop | None,
        used: asyncio.AbstractEventLoop,
        advice: str,
    ) -> WrongLoopError:
        """Return the error for ``what``, bound to ``bound``, used on ``used``.

        Args:
            what: The object, as it should be named (e.g. its ``repr``).
            bound: The loop it is bound to; ``None`` if that loop no longer
                exists.
            used: The loop it was used from (the running one).
            advice: What to do instead, one or more sentences.

        Returns:
            The error, with a message naming both loops and the advice.
        """
        if bound is None:
            owner = "an event loop that no longer exists"
        else:
            if bound.is_closed():
                state = "closed: its asyncio.run() has returned"
            elif bound.is_running():
                state = "running in another thread"
            else:
                state = "not running"
            owner = f"event loop {_loop_name(bound)} ({state})"
        thread = threading.current_thread()
        return cls(
            f"{what} is bound to {owner}; it was used from another event "
            f"loop, {_loop_name(used)} in thread {thread.name!r}. {advice}"
        )


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__name__}@{id(loop):#x}"


class InvariantError(AiomemmapError, AssertionError):
    """An internal invariant does not hold: a bug in aiomemmap, never bad input.

    Raised by the ``check_invariants()`` methods. It is raised explicitly, so
    the checks keep working under ``python -O`` (where ``assert`` is
    skipped).
    """


def check_invariant(condition: object, message: str) -> None:
    """Raise :class:`InvariantError` with ``message`` unless ``condition`` holds.

    Args:
        condition: What must be true.
        message: What it means, for the error (build it cheaply, or use an
            ``if`` and raise directly when it is costly to format).

    Raises:
        InvariantError: ``condition`` is false.
    """
    if not condition:
        raise InvariantError(message)


class ClosedError(AiomemmapError, RuntimeError):
    """An object was used after it was closed."""


class StaleVersionError(AiomemmapError, OSError):
    """The object behind a backing changed while it was being read.

    A backing raises it when a read is answered by another version than the
    one the file was opened at (an HTTP ``412 Precondition Failed`` to an
    ``If-Match``, a changed ETag or generation, a local file whose size or
    modification time moved). The bytes of two versions are never mixed:
    the cached file revalidates, and the reads that cannot be served from
    one version fail with this error.

    Its ``errno`` is ``ESTALE``.

    Attributes:
        expected: The version the read was tied to.
        found: The version the store reported instead, or ``None`` if it
            did not say.
    """

    def __init__(
        self, message: str, *, expected: str | None, found: str | None
    ) -> None:
        super().__init__(_errno.ESTALE, message)
        self.expected = expected
        self.found = found

    def __reduce__(self) -> tuple[object, ...]:
        return (_stale_version_error, (self.strerror, self.expected, self.found))


def _stale_version_error(
    message: str, expected: str | None, found: str | None
) -> StaleVersionError:
    """Rebuild a pickled :class:`StaleVersionError`."""
    return StaleVersionError(message, expected=expected, found=found)


class AccessDeniedError(AiomemmapError, PermissionError):
    """An access was asked for that the object never allows.

    For example, mapping memory-file pages for execution. ``errno`` is
    ``EACCES``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EACCES, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.strerror,), dict(self.__dict__))


class BusError(AiomemmapError, OSError):
    """A Mappable could not provide the pages a fault or an access needed.

    A page fault that ends in a ``BusError`` corresponds to ``SIGBUS`` in a
    guest, as opposed to ``SIGSEGV`` for a :class:`MemoryFault`.

    It is an ``OSError`` whose ``errno`` comes from its cause, so that code
    written for files (and for fsspec, which raises the builtin errors)
    catches it as it catches them. By cause:

    * ``FileNotFoundError`` (a missing local file, HTTP 404 or 410, S3
      ``NoSuchKey``): its ``errno``, else ``ENOENT``; the error is also a
      ``FileNotFoundError``.
    * ``PermissionError`` (HTTP 401 or 403, a read-only backing): its
      ``errno`` (``EACCES`` or ``EPERM``), else ``EACCES``; the error is
      also a ``PermissionError``.
    * ``TimeoutError``: its ``errno``, else ``ETIMEDOUT``.
    * :class:`StaleVersionError`: ``ESTALE``.
    * Any other ``OSError``: its ``errno``, else ``EIO``.
    * Anything else (``EOFError`` past the end of a file, a closed file, an
      HTTP error status that is not an ``OSError``...): ``EIO``.

    ``BusError(err)`` therefore returns an instance of a subclass of the
    class it is called on when the cause has a builtin counterpart (one
    class per pair, made once): ``isinstance(e, BusError)`` always holds,
    and ``except FileNotFoundError`` catches a fault on a missing object.
    ``strerror`` is the cause's own (its message otherwise) and ``filename``
    the cause's, if it has one. Instances pickle and copy as
    ``BusError(err)`` with ``bytes_done`` and ``data`` kept.

    Attributes:
        err: The underlying cause.
        bytes_done: For copies that stopped early, how many bytes were applied
            before the error; ``0`` otherwise.
        data: For ``copy_in`` that stopped early, the bytes read before the
            error; ``b""`` otherwise.
    """

    # The class ``BusError(err)`` was called on: itself, or for a class
    # made for a builtin counterpart, the class it was made for.
    _bus_origin: ClassVar[type[BusError]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "_bus_origin" not in cls.__dict__:
            cls._bus_origin = cls

    def __new__(cls, err: BaseException) -> Self:
        if not isinstance(err, BaseException):
            raise TypeError(f"err must be an exception, got {err!r}")
        target = _bus_error_class(cls._bus_origin, _builtin_counterpart(err))
        # OSError.__new__ keeps the class it is given and, for a class with a
        # __new__ of its own, sets errno, strerror and filename from these
        # arguments (its __init__ then ignores its own).
        return typing.cast("Self", OSError.__new__(target, *_os_error_args(err)))

    def __init__(self, err: BaseException) -> None:
        self.err = err
        self.bytes_done = 0
        self.data = b""

    def __str__(self) -> str:
        return f"BusError: {self.err}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.err!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (self._bus_origin, (self.err,), dict(self.__dict__))


BusError._bus_origin = BusError

# The builtin errors a BusError may also be, most specific first.
_COUNTERPARTS: Final[tuple[type[OSError], ...]] = (FileNotFoundError, PermissionError)
# (origin class, builtin) -> the class made for the pair.
_made: Final[dict[tuple[type[BusError], type[OSError]], type[BusError]]] = {}
_made_lock: Final = threading.Lock()


def _builtin_counterpart(err: BaseException) -> type[OSError] | None:
    """Return the builtin error a BusError caused by ``err`` also is, if any."""
    for builtin in _COUNTERPARTS:
        if isinstance(err, builtin):
            return builtin
    return None


def _bus_error_class(
    origin: type[BusError], builtin: type[OSError] | None
) -> type[BusError]:
    """Return the subclass of ``origin`` that is also ``builtin``, made once."""
    if builtin is None:
        return origin
    key = (origin, builtin)
    made = _made.get(key)
    if made is not None:
        return made
    namespace = {
        "__module__": origin.__module__,
        "__qualname__": f"{origin.__qualname__}[{builtin.__name__}]",
        "__doc__": f"A {origin.__name__} that is also a {builtin.__name__}.",
        "__slots__": (),
        "_bus_origin": origin,
    }
    with _made_lock:
        made = _made.get(key)
        if made is None:
            made = typing.cast(
                "type[BusError]", type(origin.__name__, (origin, builtin), namespace)
            )
            _made[key] = made
    return made


def _os_error_args(err: BaseException) -> tuple[int, str] | tuple[int, str, object]:
    """Return the ``OSError`` arguments of a BusError caused by ``err``.

    ``(errno, strerror)``, plus the cause's ``filename`` if it has one.
    """
    if isinstance(err, StaleVersionError):
        code = _errno.ESTALE
    elif isinstance(err, OSError) and isinstance(err.errno, int):
        code = err.errno
    elif isinstance(err, FileNotFoundError):
        code = _errno.ENOENT
    elif isinstance(err, PermissionError):
        code = _errno.EACCES
    elif isinstance(err, TimeoutError):
        code = _errno.ETIMEDOUT
    else:
        code = _errno.EIO
    strerror = err.strerror if isinstance(err, OSError) else None
    if not isinstance(strerror, str) or not strerror:
        strerror = str(err) or os.strerror(code)
    filename = err.filename if isinstance(err, OSError) else None
    if filename is None:
        return code, strerror
    return code, strerror, filename


class AddressSpaceError(AiomemmapError, OSError):
    """A syscall-like operation on an address space failed.

    ``errno`` holds the value Linux would return (``EINVAL``, ``ENOMEM``,
    ``EFAULT``...).
    """

    def __init__(self, errno: int, message: str = "") -> None:
        if not message:
            message = os.strerror(errno)
        super().__init__(errno, message)


class MemoryFault(AddressSpaceError):
    """A memory access found no mapping (``EFAULT``) or lacked permission (``EPERM``).

    Attributes:
        bytes_done: For copies that stopped early, how many bytes were applied
            before the fault; ``0`` otherwise.
        data: For ``copy_in`` that stopped early, the bytes read before the
            fault; ``b""`` otherwise.
    """

    def __init__(self, errno: int = _errno.EFAULT, message: str = "") -> None:
        super().__init__(errno, message)
        self.bytes_done = 0
        self.data = b""
