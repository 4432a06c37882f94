"""The exception hierarchy of aiomemmap.

Every exception raised on purpose derives from :class:`AiomemmapError`. Each
subclass also derives from the nearest builtin exception, so callers that catch
``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations

import errno as _errno
import os

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
    :class:`~aiomemmap.InvalidationBus`, for instance) bind to the loop they
    are first used on. The message names the object, the loop and thread it
    belongs to, and the loop and thread it was used from.
    """


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


class AccessDeniedError(AiomemmapError, PermissionError):
    """An access was asked for that the object never allows.

    For example, mapping memory-file pages for execution. ``errno`` is
    ``EACCES``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EACCES, message)


class BusError(AiomemmapError):
    """A Mappable could not provide the pages a fault or an access needed.

    A page fault that ends in a ``BusError`` corresponds to ``SIGBUS`` in a
    guest, as opposed to ``SIGSEGV`` for a :class:`MemoryFault`.

    Attributes:
        err: The underlying cause.
        bytes_done: For copies that stopped early, how many bytes were applied
            before the error; ``0`` otherwise.
        data: For ``copy_in`` that stopped early, the bytes read before the
            error; ``b""`` otherwise.
    """

    def __init__(self, err: BaseException) -> None:
        if not isinstance(err, BaseException):
            raise TypeError(f"err must be an exception, got {err!r}")
        super().__init__(err)
        self.err = err
        self.bytes_done = 0
        self.data = b""

    def __str__(self) -> str:
        return f"BusError: {self.err}"


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
