"""Access pins: the pages an access is about to copy stay cached until it is done.

An access through an address space (a copy or a fault) asks Mappables to
translate the pages it needs, one range after another, installs them, and
copies only once every range is in place. A cache that pins a range only
while its own ``translate`` waits would let the cache budget evict the first
ranges while the access waits for the last ones; the space then drops those
translations, asks again, evicts the other ranges, and so on: an access
larger than the budget never finishes.

An :class:`Access` is the scope of one such access. A cache whose
``translate`` runs inside one hands its pin over to it
(:meth:`Access.defer`), and the pin is released when the access ends, after
the copy. Outside any access (a plain ``read``, or a ``translate`` called
directly) a cache releases its pin when its own wait is over.

The scope is carried by a context variable of the task doing the access:
fetch tasks, created in a detached context, never see it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final, final

__all__ = ["Access", "current_access"]

_CURRENT: Final[ContextVar[Access | None]] = ContextVar(
    "aiomemmap_access", default=None
)


def current_access() -> Access | None:
    """Return the access the current task is inside, or ``None``."""
    return _CURRENT.get()


@final
class Access:
    """The scope of one access: pins handed to it are released when it ends.

    Used as a context manager around the whole access. A scope entered inside
    another one of the same task adds nothing: the outer access keeps the
    pins until it ends.

    Concurrency:
        Task-compatible: used by the one task doing the access.
    """

    __slots__ = ("_releases", "_token")

    def __init__(self) -> None:
        self._releases: list[Callable[[], None]] = []
        self._token: Token[Access | None] | None = None

    def __enter__(self) -> Access:
        if _CURRENT.get() is None:
            self._token = _CURRENT.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _CURRENT.reset(token)
        self.release_all()

    def defer(self, release: Callable[[], None]) -> None:
        """Call ``release`` when the access ends (at once if it is not running)."""
        if self._token is None:
            release()
            return
        self._releases.append(release)

    def release_all(self) -> None:
        """Release every pin handed over so far, the last one first.

        A release that raises does not stop the others; the first error is
        raised once all have run.
        """
        releases, self._releases = self._releases, []
        error: BaseException | None = None
        while releases:
            try:
                releases.pop()()
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error
