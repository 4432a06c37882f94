"""A backing that holds the file's bytes in memory."""

from __future__ import annotations

import errno
import typing

from aiomemmap._core.errors import ClosedError
from aiomemmap.backings.base import byte_view, check_offset, check_size

__all__ = ["BytesBacking"]


@typing.final
class BytesBacking:
    """A backing that keeps the file's bytes in memory.

    Attributes:
        readonly: Whether writes and truncates raise ``PermissionError``.

    Concurrency:
        task-safe: every method completes without awaiting in between, so
        each call is atomic with respect to other tasks of the loop.
    """

    def __init__(
        self, data: bytes | bytearray = b"", *, readonly: bool = False
    ) -> None:
        """Create a backing holding a copy of ``data``.

        Args:
            data: Initial contents (copied).
            readonly: Refuse writes and truncates.

        Raises:
            TypeError: ``data`` is not bytes-like.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes or bytearray, got {type(data)!r}")
        self._data = bytearray(data)
        self.readonly = bool(readonly)
        self._generation = 0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"BytesBacking(size={len(self._data)}, readonly={self.readonly}, "
            f"closed={self._closed})"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("BytesBacking is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise PermissionError(errno.EACCES, "BytesBacking is read-only")

    @property
    def data(self) -> bytes:
        """A copy of the current contents (for tests and debugging)."""
        return bytes(self._data)

    async def size(self) -> int:
        """Return the number of bytes held.

        Raises:
            ClosedError: The backing was closed.
        """
        self._check_open()
        return len(self._data)

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Copy up to ``len(buf)`` bytes at ``offset`` into ``buf``.

        Returns:
            Bytes copied; short only at the end (0 at or past it).

        Raises:
            TypeError: Bad argument types.
            ValueError: ``offset`` is negative.
            ClosedError: The backing was closed.
        """
        offset = check_offset(offset)
        view = byte_view(buf, writable=True)
        self._check_open()
        chunk = self._data[offset : offset + len(view)]
        view[: len(chunk)] = chunk
        return len(chunk)

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset``, zero-filling any gap past the end.

        Returns:
            ``len(data)``.

        Raises:
            PermissionError: The backing is read-only.
            ClosedError: The backing was closed.
        """
        offset = check_offset(offset)
        view = byte_view(data, writable=False)
        self._check_writable()
        end = offset + len(view)
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))
        self._data[offset:end] = view
        self._generation += 1
        return len(view)

    async def truncate(self, size: int) -> None:
        """Set the size to ``size``, zero-filling when it grows.

        Raises:
            PermissionError: The backing is read-only.
            ClosedError: The backing was closed.
        """
        size = check_size(size)
        self._check_writable()
        if size < len(self._data):
            del self._data[size:]
        else:
            self._data.extend(bytes(size - len(self._data)))
        self._generation += 1

    async def version(self) -> str:
        """Return a counter, as a string, bumped by every write and truncate.

        Raises:
            ClosedError: The backing was closed.
        """
        self._check_open()
        return str(self._generation)

    async def aclose(self) -> None:
        """Mark the backing closed. Idempotent."""
        self._closed = True
