"""Landing: a caller's buffer that an engine on another thread fills.

A file face whose engine runs on a thread of its own reads into the caller's
buffer on that thread: a large read straight from the cached pages (held
while copied), a small one through ``bytes`` (see :data:`VIEW_MIN`). The
caller waits meanwhile, but it may stop waiting (an
interrupt, a cancellation) while the engine is still at work; from then on the
engine must not touch the buffer, which the caller may reuse at once. A
:class:`Landing` is that agreement: the engine copies only while holding its
lock and only if the caller has not withdrawn the buffer, and
:meth:`Landing.withdraw` takes the same lock, so that once it returns nothing
writes to the buffer any more.
"""

from __future__ import annotations

import threading
from typing import Final, final

from aiomemmap.mappables.cached_file import CachedFile

__all__ = ["VIEW_MIN", "Landing"]

VIEW_MIN: Final[int] = 2 * 1024 * 1024
"""The smallest read copied through a held view rather than through ``bytes``.

Holding a view costs a few tens of microseconds (page references taken and
dropped); copying through an intermediate ``bytes`` costs a second copy and
the allocation. Measured on a warm cache, the view is as fast at about
1-2 MiB and three to four times faster at 8 MiB.
"""


@final
class Landing:
    """A writable buffer lent to an engine's thread until withdrawn.

    Args:
        target: A writable, one-dimensional bytes view of the caller's
            buffer.

    Concurrency:
        Thread-safe: :meth:`fill` runs on the engine's loop,
        :meth:`withdraw` on the caller's thread.
    """

    __slots__ = ("_length", "_lock", "_target")

    def __init__(self, target: memoryview) -> None:
        self._target: memoryview | None = target
        self._length = len(target)
        self._lock = threading.Lock()

    async def fill(self, cached_file: CachedFile, offset: int) -> int:
        """Copy the bytes at ``offset`` of ``cached_file`` into the buffer.

        Returns:
            How many bytes were copied (short only at the end of the file);
            0 if the buffer was withdrawn first.

        Raises:
            BusError, ClosedError: As :meth:`~aiomemmap.CachedFile.read`.

        Locking:
            Holds the landing's lock while copying, and no other.

        Cancellation:
            The buffer is unchanged.
        """
        if self._length < VIEW_MIN:
            return self._put(await cached_file.read(offset, self._length))
        async with cached_file.read_view(offset, self._length) as view:
            return self._put(view)

    def _put(self, data: bytes | memoryview) -> int:
        with self._lock:
            target = self._target
            if target is None:
                return 0
            n = len(data)
            target[:n] = data
            return n

    def withdraw(self) -> None:
        """Take the buffer back: once this returns, nothing writes to it.

        Waits for a copy in progress to end.
        """
        with self._lock:
            self._target = None
