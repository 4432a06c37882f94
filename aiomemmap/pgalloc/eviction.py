"""The page-cache budget of a memory file and the users it evicts from.

A :class:`~aiomemmap.MemoryFile` with a ``cache_limit`` owns one
:class:`Evictor`. The evictor keeps the books of the budget and a registry of
evictable ranges, and, when room is needed, asks the least recently used
ranges' users to evict them, through the
:class:`~aiomemmap.memmap.interfaces.EvictableUser` protocol (gVisor's
``EvictableMemoryUser``): any owner of memory-file pages that implements it
can register ranges and be evicted.

The books are:

* the page-cache bytes, read from the memory file's accounting;
* *reserved* bytes: room promised to allocations not made yet
  (:meth:`Evictor.try_reserve`, :meth:`Evictor.release`);
* *evicting* bytes: pages a user has revoked whose memory is freed once the
  spaces mapping them have dropped them (:meth:`Evictor.begin_eviction`,
  :meth:`Evictor.end_eviction`); the budget counts them as gone;
* *pinned* bytes: pages an access in progress is about to copy
  (:meth:`Evictor.pin`, :meth:`Evictor.unpin`; see
  :mod:`~aiomemmap.pgalloc.access_pins`). Users never evict them. When what
  is cached is pinned (or dirty) the budget cannot be met: a reservation is
  then forced and the cache exceeds the limit until the accesses end,
  rather than evicting pages an access still needs and starting it over
  (which would never end);
* the registry: one entry per ``(user, start)``, least recently used first,
  across every user of the file. Popping removes the entry, so two evictors
  never pick the same range. An entry is a hint: the user decides, when asked
  to evict it, what of it can really go, and tolerates ranges that changed
  meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import final

from aiomemmap._core.errors import InvariantError
from aiomemmap._core.pages import PAGE_MASK, PAGE_SHIFT
from aiomemmap._core.ranges import MappableRange
from aiomemmap.memmap.interfaces import EvictableUser

__all__ = ["Evictor"]


@final
class Evictor:
    """The cache budget of one memory file, and the evictable ranges of its users.

    Args:
        lock: The memory file's lock; every method takes it (briefly) and
            none awaits under it, so the evictor adds no lock to the order.
        limit: The budget in bytes, or ``None`` for no budget.
        cached_bytes: Returns the page-cache bytes allocated now; called
            with ``lock`` held.

    Invariants:
        ``0 <= reserved``, ``0 <= evicting``, ``0 <= pinned``; registry
        keys are distinct ``(user, start)`` pairs with ``start < end``.

    Concurrency:
        Thread-safe through ``lock``. :meth:`reserve` awaits the users it
        evicts from, never holding the lock across an await.
    """

    __slots__ = (
        "_cached_bytes",
        "_evictable",
        "_evicting",
        "_evictions",
        "_limit",
        "_lock",
        "_pinned",
        "_reserved",
    )

    def __init__(
        self, lock: threading.Lock, limit: int | None, cached_bytes: Callable[[], int]
    ) -> None:
        self._lock = lock
        self._limit = limit
        self._cached_bytes = cached_bytes
        # Everything below is protected by self._lock.
        self._reserved = 0
        self._evicting = 0
        self._evictions = 0
        self._pinned = 0
        self._evictable: OrderedDict[tuple[EvictableUser, int], int] = OrderedDict()

    @property
    def limit(self) -> int | None:
        """The budget in bytes, or ``None``."""
        return self._limit

    @property
    def evictions(self) -> int:
        """Pages evicted so far (counted by :meth:`begin_eviction`)."""
        return self._evictions

    @property
    def pinned_bytes(self) -> int:
        """Bytes pinned by accesses in progress (:meth:`pin`); never evicted."""
        return self._pinned

    def pin(self, length: int) -> None:
        """Record that ``length`` more bytes are pinned by accesses in progress.

        Users report the bytes that became pinned (counted once however
        many accesses pin them); pinned pages are not evicted until
        :meth:`unpin`.

        Raises:
            ValueError: ``length`` is negative.

        Locking:
            Takes the lock briefly.
        """
        if length < 0:
            raise ValueError(f"pin: length must be >= 0, got {length}")
        with self._lock:
            self._pinned += length

    def unpin(self, length: int) -> None:
        """Record that ``length`` bytes pinned by :meth:`pin` are no longer pinned.

        Raises:
            ValueError: More is unpinned than is pinned.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            if not 0 <= length <= self._pinned:
                raise ValueError(
                    f"unpin: {length} bytes, but {self._pinned} are pinned"
                )
            self._pinned -= length

    # ------------------------------------------------------------------
    # The budget

    def try_reserve(self, length: int) -> bool:
        """Reserve room for ``length`` bytes of page cache if the budget allows.

        Granted when there is no limit, or when the page-cache bytes, minus
        those being evicted, plus every reservation outstanding, plus
        ``length`` fit in it. A granted reservation must be given back with
        :meth:`release` once the pages are allocated (or not needed).

        Raises:
            ValueError: ``length`` is negative.

        Locking:
            Takes the lock briefly.
        """
        if length < 0:
            raise ValueError(f"try_reserve_cache: length must be >= 0, got {length}")
        with self._lock:
            limit = self._limit
            if limit is not None:
                want = self._cached_bytes() - self._evicting + self._reserved + length
                if want > limit:
                    return False
            self._reserved += length
            return True

    def force_reserve(self, length: int) -> None:
        """Reserve room for ``length`` bytes even past the budget.

        Locking:
            Takes the lock briefly.
        """
        if length < 0:
            raise ValueError(f"force_reserve_cache: length must be >= 0, got {length}")
        with self._lock:
            self._reserved += length

    def release(self, length: int) -> None:
        """Give back a reservation.

        Raises:
            ValueError: More is released than is reserved.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            if not 0 <= length <= self._reserved:
                raise ValueError(
                    f"release_cache_reservation: {length} bytes, but "
                    f"{self._reserved} are reserved"
                )
            self._reserved -= length

    def over_budget(self) -> int:
        """Return how many bytes the page cache would have to shed to fit.

        Counts as :meth:`try_reserve` does; 0 without a limit or within it.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            limit = self._limit
            if limit is None:
                return 0
            used = self._cached_bytes() - self._evicting + self._reserved
            return max(0, used - limit)

    def begin_eviction(self, length: int) -> None:
        """Record that a user revoked ``length`` bytes of pages to evict them.

        Counts the pages as evictions and the bytes as gone for the budget
        until :meth:`end_eviction`.

        Raises:
            ValueError: ``length`` is negative or not page-aligned.

        Locking:
            Takes the lock briefly.
        """
        if length < 0 or length & PAGE_MASK:
            raise ValueError(f"begin_eviction: bad length {length}")
        with self._lock:
            self._evicting += length
            self._evictions += length >> PAGE_SHIFT

    def end_eviction(self, length: int) -> None:
        """Record that ``length`` bytes revoked by :meth:`begin_eviction` are freed.

        Raises:
            ValueError: More is ended than is being evicted.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            if not 0 <= length <= self._evicting:
                raise ValueError(
                    f"end_eviction: {length} bytes, but {self._evicting} "
                    "are being evicted"
                )
            self._evicting -= length

    async def reserve(self, length: int) -> None:
        """Make room for ``length`` bytes of page cache, evicting; reserve them.

        Pops the least recently used evictable ranges, of any user, and asks
        each user to evict its range until the reservation is granted. Each
        range registered at the start is tried at most about once; if the
        budget still does not allow it (what is left is dirty, pinned by an
        access in progress, or not registered yet), the reservation is
        forced: the cache then exceeds the limit by at most ``length`` more,
        rather than waiting for room that may never come. Users' ``evict``
        never waits for storage (a dirty range's write-back runs on its
        own), so neither does this call.

        The caller gives the reservation back with :meth:`release` once the
        pages are allocated.

        Locking:
            Call holding no lock; users' :meth:`~aiomemmap.memmap.interfaces.
            EvictableUser.evict` run from here.

        Cancellation:
            Nothing is reserved unless the call returns.
        """
        tries = self.evictable_count()
        while not self.try_reserve(length):
            victim = self.pop() if tries > 0 else None
            if victim is None:
                self.force_reserve(length)
                return
            tries -= 1
            user, start, end = victim
            await user.evict(MappableRange(start, end))

    # ------------------------------------------------------------------
    # The registry of evictable ranges

    def mark_evictable(self, user: EvictableUser, start: int, end: int) -> None:
        """Register ``[start, end)`` of ``user`` as evictable, most recently used.

        Registering an existing ``(user, start)`` again replaces its end and
        makes it the most recently used.

        Raises:
            ValueError: Unless ``0 <= start < end``.

        Locking:
            Takes the lock briefly.
        """
        if not 0 <= start < end:
            raise ValueError(f"mark_evictable: bad range [{start:#x}, {end:#x})")
        with self._lock:
            key = (user, start)
            self._evictable[key] = end
            self._evictable.move_to_end(key)

    def touch(self, user: EvictableUser, start: int) -> None:
        """Make the range of ``user`` starting at ``start`` the most recently used.

        Does nothing if no such range is registered.

        Locking:
            Takes the lock briefly.
        """
        with self._lock, contextlib.suppress(KeyError):
            self._evictable.move_to_end((user, start))

    def touch_all(self, user: EvictableUser, starts: Iterable[int]) -> None:
        """:meth:`touch` each range of ``user`` starting at ``starts``, in order.

        Locking:
            Takes the lock once.
        """
        with self._lock:
            move = self._evictable.move_to_end
            for start in starts:
                with contextlib.suppress(KeyError):
                    move((user, start))

    def mark_unevictable(self, user: EvictableUser, start: int) -> None:
        """Forget the range of ``user`` starting at ``start``, if registered.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            self._evictable.pop((user, start), None)

    def forget(self, user: EvictableUser, starts: Iterable[int]) -> None:
        """Forget the ranges of ``user`` that start at ``starts``.

        Locking:
            Takes the lock once.
        """
        with self._lock:
            pop = self._evictable.pop
            for start in starts:
                pop((user, start), None)

    def pop(self) -> tuple[EvictableUser, int, int] | None:
        """Remove and return the least recently used range: ``(user, start, end)``.

        ``None`` when nothing is registered.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            if not self._evictable:
                return None
            (user, start), end = self._evictable.popitem(last=False)
            return user, start, end

    def evictable_count(self) -> int:
        """Return how many evictable ranges are registered.

        Locking:
            Takes the lock briefly.
        """
        with self._lock:
            return len(self._evictable)

    # ------------------------------------------------------------------
    # For the memory file (called with the lock held)

    def clear_locked(self) -> None:
        """Forget every registered range (the memory file is closing)."""
        self._evictable.clear()

    def check_invariants_locked(self) -> None:
        """Check the books and the registry; raise :class:`InvariantError`."""
        if self._reserved < 0 or self._evicting < 0 or self._pinned < 0:
            raise InvariantError(
                f"cache budget books went negative: reserved={self._reserved}, "
                f"evicting={self._evicting}, pinned={self._pinned}"
            )
        for (_, start), end in self._evictable.items():
            if not 0 <= start < end:
                raise InvariantError(
                    f"evictable range [{start:#x}, {end:#x}) is empty or negative"
                )
