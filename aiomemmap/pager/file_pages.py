"""FilePages: the memfd that holds one file's pages at the file's offsets.

Every client of one file and one uid maps the same memfd (see the package
documentation for why the pages live here). The memfd is sized to the file
rounded up to pages and sealed against growing, shrinking and further
seals, so that no client can change its size under the others. The pager
never writes or reads the memfd through a mapping of its own. It fills a
hole in one of two ways, both of which publish a page whole:

* into a shared client's mapping, with ``UFFDIO_COPY`` (the page enters the
  memfd and the client's page table at once);
* for a private client, with :meth:`FilePages.publish`: a ``pwrite`` of
  complete pages into the memfd, after which the client maps the page with
  ``UFFDIO_CONTINUE``. The kernel keeps a page locked, and not up to date,
  from the moment the write allocates it until the write has filled it;
  every fault and read of the memfd waits for that lock (and fault-around
  skips a locked page), so a shared client that touches the page meanwhile
  sees it only whole. ``UFFDIO_COPY`` is never used for a private client:
  it would give the client anonymous pages, which no punch can revoke.

A ``FilePages`` is also a :class:`~aiomemmap.MappingSpace` of its cached
file, mapping the whole file at addresses equal to the offsets: when the
cached file invalidates offsets (a truncation, a revalidation that found the
object changed, an eviction under the cache budget), it first *revokes*
them (a new generation, which an installation in flight checks before it
copies) and then punches them out of the memfd, which unmaps them from
every client; each client's next touch faults again and gets the current
bytes. The copy of the pages that clients map therefore never outlives the
cache's: it is bound by the same budget.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from typing import Final, final

from aiomemmap._core.errors import ClosedError
from aiomemmap._core.host import punch_hole
from aiomemmap._core.pages import PAGE_SIZE, page_round_up
from aiomemmap._core.ranges import AddrRange
from aiomemmap.memmap.interfaces import InvalidateOpts

__all__ = ["FilePages"]

_SEALS: Final = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_LOG_LENGTH: Final = 64


@final
class FilePages:
    """A sealed memfd of ``length`` bytes and the count of its users.

    Args:
        name: Shown in ``/proc/PID/maps`` of every client as ``/memfd:NAME``.
        size: The file's size in bytes (positive).

    Raises:
        ValueError: ``size`` is not positive.
        OSError: The host refused the memfd.

    Concurrency:
        Task-compatible: used on the pager's loop only.
    """

    __slots__ = ("__weakref__", "_fd", "_log", "generation", "length", "size", "users")

    def __init__(self, name: str, size: int) -> None:
        if type(size) is not int or size <= 0:
            raise ValueError(f"FilePages: size must be a positive int, got {size!r}")
        self.size = size
        self.length = page_round_up(size)
        self.users = 0
        self.generation = 0
        """Bumped by every invalidation, before its punch."""
        self._log: deque[tuple[int, int, int]] = deque(maxlen=_LOG_LENGTH)
        fd = os.memfd_create(name[:200], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self.length)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __repr__(self) -> str:
        return f"<FilePages fd={self._fd} size={self.size} users={self.users}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._fd < 0

    def fileno(self) -> int:
        """Return the memfd, to send to a client.

        Raises:
            ClosedError: It is closed.
        """
        if self._fd < 0:
            raise ClosedError(f"{self!r} is closed")
        return self._fd

    def resident_bytes(self) -> int:
        """Return the bytes of memory the memfd's pages take now (0 once closed)."""
        if self._fd < 0:
            return 0
        return os.fstat(self._fd).st_blocks * 512

    def publish(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, whole pages, into the memfd at offset ``start``.

        Preconditions: the bytes are the file's current ones at those
        offsets (read at :attr:`generation`, which has not changed since):
        a page already present then holds the same bytes, so writing over
        it changes nothing any client can see.

        Args:
            start: Page-aligned offset.
            data: A non-empty multiple of the page size, ending inside the
                memfd.

        Raises:
            ValueError: A misaligned or out-of-range span.
            ClosedError: It is closed.
            OSError: The host refused the memory.

        Locking:
            Takes no lock; never awaits.
        """
        view = memoryview(data).cast("B")
        n = len(view)
        if start % PAGE_SIZE or n % PAGE_SIZE or n == 0 or start + n > self.length:
            raise ValueError(
                f"FilePages.publish: [{start}, {start + n}) is not whole pages "
                f"inside {self.length} bytes"
            )
        fd = self.fileno()
        done = 0
        while done < n:
            done += os.pwrite(fd, view[done:], start + done)

    def changed_since(self, generation: int, start: int, end: int) -> bool:
        """Return whether ``[start, end)`` was invalidated after ``generation``.

        Bytes read for those offsets before the invalidation may be stale
        and must be read again before they are installed. When the record
        does not reach back that far, the answer is yes.
        """
        if generation == self.generation:
            return False
        if not self._log or self._log[0][0] > generation + 1:
            return True
        return any(
            gen > generation and a < end and start < b for gen, a, b in self._log
        )

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        """Revoke, then punch out, the pages at offsets ``ar`` (a ``MappingSpace``).

        Every client's mapping of them is zapped by the punch: the next
        touch faults and is served anew. Poison markers stay (a later
        successful installation replaces them).

        Locking:
            Takes no lock; never awaits, so the revoke and the punch are one
            step on the loop.
        """
        self.revoke(ar.start, ar.end)

    def revoke(self, start: int, end: int) -> None:
        """Revoke, then punch out, offsets ``[start, end)`` (page-aligned).

        The step of :meth:`invalidate`, for the pager's own use (to replace a
        page some client holds poisoned while others have it).
        """
        end = min(end, self.length)
        if start >= end or self._fd < 0:
            return
        self.generation += 1
        self._log.append((self.generation, start, end))
        punch_hole(self._fd, start, end - start)

    def close(self) -> None:
        """Close the pager's descriptor; the pages go once clients unmap them."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
