"""FilePages: the memfd that holds one file's pages at the file's offsets.

Every client of one file and one uid maps the same memfd (see the package
documentation for why the pages live here). The memfd is sized to the file
rounded up to pages and sealed against growing, shrinking and further
seals, so that no client can change its size under the others. The pager
installs pages with ``UFFDIO_COPY`` only; it never writes or reads the memfd
through a mapping of its own.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final, final

from aiomemmap._core.errors import ClosedError
from aiomemmap._core.pages import page_round_up

__all__ = ["FilePages"]

_SEALS: Final = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


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

    __slots__ = ("_fd", "length", "size", "users")

    def __init__(self, name: str, size: int) -> None:
        if type(size) is not int or size <= 0:
            raise ValueError(f"FilePages: size must be a positive int, got {size!r}")
        self.size = size
        self.length = page_round_up(size)
        self.users = 0
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

    def close(self) -> None:
        """Close the pager's descriptor; the pages go once clients unmap them."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
