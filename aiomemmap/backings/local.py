"""A backing on a local file, read and written with ``pread`` and ``pwrite``."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import typing
from collections.abc import Callable
from typing import TypeVar

from aiomemmap._core.errors import ClosedError, StaleVersionError
from aiomemmap.backings.base import (
    byte_view,
    check_offset,
    check_size,
    check_timeout,
    within,
)

__all__ = ["LocalFileBacking"]

_T = TypeVar("_T")


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    """Read up to ``n`` bytes at ``offset``, looping over short reads."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _pread_and_stat(fd: int, n: int, offset: int) -> tuple[bytes, os.stat_result]:
    """Read up to ``n`` bytes at ``offset``, then ``fstat`` the file.

    The ``fstat`` comes after the read, so a change made before or during
    the read shows in it (within the file system's timestamp granularity).
    """
    data = _pread_all(fd, n, offset)
    return data, os.fstat(fd)


def _version_of(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _token(version: tuple[int, int]) -> str:
    return f"{version[0]}-{version[1]}"


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``, looping over short writes."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@typing.final
class LocalFileBacking:
    """A backing on a local file, read and written with ``pread``/``pwrite``.

    The file is opened in the constructor, so a missing file or a
    permission problem is reported at once, synchronously. Every system call
    that may block (``pread``, ``pwrite``, ``ftruncate``) runs in the loop's
    default executor, never on the event loop. The bytes are copied into the
    caller's buffer on the loop after the thread finished, so a cancelled
    read never writes into a buffer its caller gave up.

    :meth:`aclose` waits for no one: it marks the backing closed at once and
    the descriptor is closed when the last system call still running in a
    thread (including those of cancelled callers) returns, so a descriptor
    number is never reused under a running call.

    Versions: the version is the file's size and modification time
    (``st_size``, ``st_mtime_ns``). Reads are tied to the version pinned by
    the first call (or the latest :meth:`version`): every ``pread`` is
    followed by an ``fstat`` in the same thread, and a size or time that
    differs from the pinned one raises
    :class:`~aiomemmap._core.errors.StaleVersionError` instead of returning
    the bytes, so a file that another process rewrote or truncated is never
    read as a mix of versions or as zeros. Writes and truncates through the
    backing move the pin to the version they made. Limits: a change that
    keeps the size and lands within the file system's timestamp granularity
    of the pinned time, or that restores the old time (``touch -r``,
    ``rsync -t``), is not seen; nor is a change by another process made
    while a write through this backing is in flight.

    Timeouts: each system call round trip (a thread running ``pread``,
    ``pwrite`` or ``ftruncate``) is bounded by ``timeout`` seconds (60 by
    default); past it the caller gets ``TimeoutError`` (``ETIMEDOUT``,
    transient) while the thread, which cannot be interrupted, finishes in
    the background and keeps the descriptor open until it does.

    Attributes:
        readonly: ``not writable``.
        path: The file's path.

    Concurrency:
        task-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        writable: bool = False,
        timeout: float | None = 60.0,
    ) -> None:
        """Open ``path``.

        Args:
            path: A regular file.
            writable: Open for reading and writing; otherwise writes raise
                ``PermissionError``.
            timeout: Seconds one system call may take before the caller
                gets ``TimeoutError``; ``None`` waits as long as it takes.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            IsADirectoryError: ``path`` is a directory.
            PermissionError: The file cannot be opened in the asked mode.
            ValueError: ``timeout`` is not ``None`` or a number ``> 0``.
            OSError: Another failure to open.
        """
        self.path = os.fspath(path)
        self.readonly = not writable
        self._timeout = check_timeout(timeout)
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"no such file: {self.path!r}", self.path
            ) from exc
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(
                    errno.EISDIR, f"is a directory: {self.path!r}", self.path
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._closed = False
        self._in_flight = 0
        # The pinned version, learnt by the first call; None until then.
        self._pin: tuple[int, int] | None = None
        # Writes through this backing started, and those still running: a
        # read that overlaps one cannot tell its change from somebody else's.
        self._writes_started = 0
        self._writing = 0

    def __repr__(self) -> str:
        return (
            f"LocalFileBacking({self.path!r}, writable={not self.readonly}, "
            f"closed={self._closed})"
        )

    def _acquire(self) -> int:
        if self._closed or self._fd is None:
            raise ClosedError(f"LocalFileBacking({self.path!r}) is closed")
        self._in_flight += 1
        return self._fd

    def _release(self) -> None:
        self._in_flight -= 1
        if self._closed and self._in_flight == 0:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def _run(self, func: Callable[[int], _T]) -> _T:
        """Run ``func(fd)`` in a worker thread, keeping the fd open meanwhile."""
        fd = self._acquire()
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(None, func, fd)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(lambda _f: self._release())
        # The shield keeps the thread's future (and the fd reference) alive
        # when the caller is cancelled or times out; the callback releases
        # it later.
        return await within(self._timeout, asyncio.shield(fut), self, "the call")

    def _stat(self) -> os.stat_result:
        fd = self._acquire()
        try:
            return os.fstat(fd)
        finally:
            self._release()

    async def size(self) -> int:
        """Return the file's size from ``fstat``.

        Pins the version seen if none is pinned yet.

        Raises:
            OSError: ``fstat`` failed.
            ClosedError: The backing was closed.
        """
        st = self._stat()
        if self._pin is None:
            self._pin = _version_of(st)
        return st.st_size

    async def read_into(self, offset: int, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` with ``pread``.

        Returns:
            Bytes read; short only at the end of the file.

        Raises:
            StaleVersionError: The file's size or modification time, as
                ``fstat`` saw it after the read, is not the pinned one;
                ``buf`` is not touched.
            TimeoutError: The read took longer than ``timeout``.
            OSError: The read failed.
            ClosedError: The backing was closed.

        Cancellation:
            The thread finishes in the background; ``buf`` is not touched.
        """
        offset = check_offset(offset)
        view = byte_view(buf, writable=True)
        n = len(view)
        if n == 0:
            self._acquire()
            self._release()
            return 0
        pin = self._pin
        writes = self._writes_started
        data, st = await self._run(lambda fd: _pread_and_stat(fd, n, offset))
        seen = _version_of(st)
        if self._pin is None:
            self._pin = seen
        elif (
            seen != pin
            and seen != self._pin
            and self._writing == 0
            and writes == self._writes_started
        ):
            # Neither the version the read started under nor the current
            # pin, and no write of ours overlapped: somebody else's change.
            raise StaleVersionError(
                f"{self!r} changed under a read at {offset}: size and "
                f"modification time {_token(seen)}, pinned {_token(self._pin)}",
                expected=_token(self._pin),
                found=_token(seen),
            )
        view[: len(data)] = data
        return len(data)

    async def write_from(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset`` with ``pwrite``.

        Returns:
            ``len(data)``.

        Raises:
            PermissionError: The backing is read-only.
            OSError: The write failed.
            ClosedError: The backing was closed.

        Cancellation:
            The write may still complete in the background.
        """
        offset = check_offset(offset)
        payload = bytes(byte_view(data, writable=False))
        self._check_writable()
        await self._changing(lambda fd: _pwrite_all(fd, payload, offset))
        return len(payload)

    async def _changing(self, change: Callable[[int], None]) -> None:
        """Run ``change(fd)`` in a thread, then pin the version it made."""

        def change_and_stat(fd: int) -> os.stat_result:
            change(fd)
            return os.fstat(fd)

        self._writes_started += 1
        self._writing += 1
        try:
            st = await self._run(change_and_stat)
        finally:
            self._writing -= 1
        self._pin = _version_of(st)

    async def truncate(self, size: int) -> None:
        """Set the file's size with ``ftruncate``.

        Raises:
            PermissionError: The backing is read-only.
            OSError: ``ftruncate`` failed.
            ClosedError: The backing was closed.
        """
        size = check_size(size)
        self._check_writable()
        await self._changing(lambda fd: os.ftruncate(fd, size))

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"LocalFileBacking({self.path!r}) is closed")
        if self.readonly:
            raise PermissionError(
                errno.EACCES, f"LocalFileBacking({self.path!r}) is read-only"
            )

    async def version(self) -> str:
        """Return ``f"{size}-{mtime_ns}"`` from ``fstat``, and pin it.

        Later reads are tied to the version returned.

        Raises:
            OSError: ``fstat`` failed.
            ClosedError: The backing was closed.
        """
        version = _version_of(self._stat())
        self._pin = version
        return _token(version)

    async def aclose(self) -> None:
        """Close the file descriptor (once no thread uses it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight == 0:
            self._close_fd()
