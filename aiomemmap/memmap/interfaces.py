"""The memmap interfaces: how Mappables, mapping spaces and files talk.

Four parties take part in a memory mapping:

* a :class:`Mappable` is something whose page-aligned offsets can be mapped
  (a shared-memory file, a cached remote file...); it answers
  :meth:`Mappable.translate` with :class:`Translation` values that say which
  pages of which :class:`File` hold its contents;
* a :class:`MappingSpace` (an address space) maps addresses to a Mappable's
  offsets and is told by :meth:`MappingSpace.invalidate` when translations it
  obtained are no longer valid;
* a :class:`MappingIdentity` keeps a Mappable alive while it is mapped and
  names it in ``/proc/pid/maps``-style listings;
* a :class:`File` is host memory with per-page reference counts, reachable as
  a :class:`~aiomemmap.BlockSeq` and by file descriptor.

:func:`check_translate_result` states the postconditions of
:meth:`Mappable.translate` as code; tests run it against every Mappable, and
callers may run it while debug checks are on. :class:`MMapOpts` describes a
mapping request to an address space.

The lock order that the ``Locking:`` sections refer to is documented once, in
``aiomemmap/_locks.py``; here locks are named by their ``LockRank``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Protocol, final

from aiomemmap._core.access import AccessType
from aiomemmap._core.blockseq import BlockSeq
from aiomemmap._core.errors import AlignmentError
from aiomemmap._core.pages import ADDR_LIMIT, PAGE_SIZE
from aiomemmap._core.ranges import AddrRange, FileRange, MappableRange

__all__ = [
    "EvictableUser",
    "File",
    "InvalidateOpts",
    "MLockMode",
    "MMapOpts",
    "Mappable",
    "MappingIdentity",
    "MappingSpace",
    "TranslateResult",
    "Translation",
    "check_translate_result",
]


# --------------------------------------------------------------------------
# Values


@final
@dataclass(frozen=True, slots=True, repr=False)
class Translation:
    """One piece of a Mappable's contents: where a range of offsets lives.

    The offsets ``source`` of the Mappable are held by the bytes
    ``[offset, offset + source.length)`` of ``file``, and may be mapped or
    accessed for the accesses in ``perms``.

    This is a plain value: nothing is validated when it is built, so a
    translation with a ``None`` file or an unaligned offset can exist.
    :func:`check_translate_result` is what judges a list of translations.

    Attributes:
        source: The translated range of Mappable offsets.
        file: The file holding the contents.
        offset: The file offset at which ``source.start`` lives.
        perms: The accesses for which the pages may be mapped or accessed
            through :meth:`File.map_internal`.

    Concurrency:
        Immutable.
    """

    source: MappableRange
    file: File
    offset: int
    perms: AccessType

    def file_range(self) -> FileRange:
        """Return the range of file offsets this translation covers.

        Returns:
            ``FileRange(offset, offset + source.length)``.

        Raises:
            TypeError: ``offset`` is not an int.
            ValueError: The range does not fit in ``[0, 2**64]``.
        """
        return FileRange(self.offset, self.offset + self.source.length)

    def __repr__(self) -> str:
        # Fields are not validated, so the offset may not be an int.
        offset: object = self.offset
        off = (
            f"{offset:#x}"
            if isinstance(offset, int) and not isinstance(offset, bool)
            else repr(offset)
        )
        return (
            f"Translation(source={self.source!r}, file={self.file!r}, "
            f"offset={off}, perms={self.perms!r})"
        )


class TranslateResult(NamedTuple):
    """What :meth:`Mappable.translate` returns: ``ts, err = await m.translate(...)``.

    A result may cover only part of the required range, as long as ``error``
    says why the rest is missing; see :func:`check_translate_result`.

    Attributes:
        translations: Contiguous translations in increasing offset order.
        error: Why the translations may stop before the end of the
            required range (usually a :class:`~aiomemmap.BusError`). It is
            ``None`` only if every required offset was translated.
    """

    translations: list[Translation]
    error: BaseException | None = None


@final
@dataclass(frozen=True, slots=True)
class InvalidateOpts:
    """Options of :meth:`MappingSpace.invalidate`.

    Attributes:
        invalidate_private: Also discard private (copy-on-write broken) pages
            in the range, losing their data. Truncation sets it; eviction
            does not.

    Raises:
        TypeError: ``invalidate_private`` is not a ``bool``.

    Concurrency:
        Immutable.
    """

    invalidate_private: bool = False

    def __post_init__(self) -> None:
        if type(self.invalidate_private) is not bool:
            raise TypeError(
                "InvalidateOpts: invalidate_private must be a bool, "
                f"got {self.invalidate_private!r}"
            )


@final
class MLockMode(enum.IntEnum):
    """How a mapping is locked in memory (``mlock``).

    The numeric order is meaningful: an address space raises a new mapping's
    mode to its default mode (set by ``mlockall(future=True)``) whenever the
    default compares greater, that is ``max(requested, default)``. ``NONE`` is
    zero, so it is also the only false mode.
    """

    NONE = 0
    """No memory locking."""

    EAGER = 1
    """Locked as by ``mlock()`` (Linux ``VM_LOCKED``): the pages are made
    resident as soon as possible and kept resident."""

    LAZY = 2
    """Locked on fault (Linux ``VM_LOCKED | VM_LOCKONFAULT``): pages are kept
    resident once something has made them resident, but not populated in
    advance."""


def _require_type(owner: str, name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(
            f"{owner}: {name} must be {kind.__name__}, "
            f"got {type(value).__name__}: {value!r}"
        )


def _require_bool(owner: str, name: str, value: object) -> None:
    if type(value) is not bool:
        raise TypeError(f"{owner}: {name} must be a bool, got {value!r}")


def _require_methods(
    owner: str, name: str, value: object, protocol: str, methods: tuple[str, ...]
) -> None:
    if value is None:
        return
    missing = [m for m in methods if not callable(getattr(value, m, None))]
    if missing:
        raise TypeError(
            f"{owner}: {name} must be a {protocol} or None, got {value!r} "
            f"(missing {', '.join(missing)})"
        )


_MAPPABLE_METHODS = (
    "add_mapping",
    "remove_mapping",
    "copy_mapping",
    "translate",
    "invalidate_unsavable",
)
_IDENTITY_METHODS = (
    "inc_ref",
    "dec_ref",
    "mapped_name",
    "device_id",
    "inode_id",
    "msync",
)
_MMAP_BOOL_FIELDS = (
    "fixed",
    "unmap",
    "no_replace",
    "map_32bit",
    "private",
    "grows_down",
    "precommit",
    "force",
    "sentry_owned_content",
)


@final
@dataclass(frozen=True, slots=True)
class MMapOpts:
    """A request to create a memory mapping, as passed to ``AddressSpace.mmap``.

    This is a plain options record. Building one checks only the types of the
    fields; whether the combination makes sense (alignment, lengths, ``unmap``
    without ``fixed``...) is decided by the address space, which reports it
    with the errno Linux would give, in gVisor's order. Use
    :func:`dataclasses.replace` to derive a modified copy.

    Attributes:
        length: The length of the mapping in bytes.
        mapping_identity: Keeps ``mappable`` alive and provides what
            ``/proc/pid/maps`` shows for the mapping. An address space that
            creates the mapping takes one reference on it.
        mappable: What to map; ``None`` maps anonymous memory. Otherwise it
            must stay usable for as long as a reference on
            ``mapping_identity`` is held.
        offset: The offset into ``mappable`` where the mapping starts;
            ignored for anonymous mappings.
        addr: The suggested address of the mapping (the required one if
            ``fixed``).
        fixed: The mapping must be placed exactly at ``addr``.
        unmap: Mappings already in the range may be replaced (``MAP_FIXED``);
            requires ``fixed``.
        no_replace: ``MAP_FIXED_NOREPLACE``: the mapping goes exactly at
            ``addr`` but must not replace anything; requires ``fixed`` and not
            ``unmap``; a conflict fails with ``EEXIST``.
        map_32bit: Every address inside the mapping must fit in 32 bits (the
            end, one past its last byte, need not). Ignored if ``fixed``.
        perms: The permissions the mapping starts with.
        max_perms: The most permissive access the mapping may ever allow
            (``mprotect`` cannot exceed it). If ``mappable`` is set, every
            translation it returns for this mapping must permit all of
            ``max_perms``. It should already be an effective access type,
            since access cannot be limited below what the host enforces.
        private: Writes go to copies exclusive to the address space
            (copy-on-write) instead of reaching ``mappable``.
        grows_down: The mapping is extended downwards when its guard page is
            touched (a stack).
        precommit: Memory for the whole mapping is committed eagerly instead
            of on first touch.
        mlock_mode: The memory-locking behaviour of the mapping.
        hint: The name shown for the mapping in ``/proc/pid/maps``; when empty,
            ``mapping_identity.mapped_name()`` is shown instead.
        force: Skip the checks of ``addr`` and ``length`` against the
            address-space layout, to create special mappings outside the
            normal user range. Requires ``fixed`` and ``unmap``; use with care.
        sentry_owned_content: The engine alone controls the memory behind the
            mapping, so its contents cannot change without the engine's
            involvement.

    Raises:
        TypeError: A field has the wrong type (the message names it).

    Concurrency:
        Immutable.
    """

    length: int
    mapping_identity: MappingIdentity | None = None
    mappable: Mappable | None = None
    offset: int = 0
    addr: int = 0
    fixed: bool = False
    unmap: bool = False
    no_replace: bool = False
    map_32bit: bool = False
    perms: AccessType = AccessType.READ_WRITE
    max_perms: AccessType = AccessType.ANY
    private: bool = False
    grows_down: bool = False
    precommit: bool = False
    mlock_mode: MLockMode = MLockMode.NONE
    hint: str = ""
    force: bool = False
    sentry_owned_content: bool = False

    def __post_init__(self) -> None:
        owner = "MMapOpts"
        for name in ("length", "offset", "addr"):
            _require_type(owner, name, getattr(self, name), int)
        for name in _MMAP_BOOL_FIELDS:
            _require_bool(owner, name, getattr(self, name))
        _require_type(owner, "perms", self.perms, AccessType)
        _require_type(owner, "max_perms", self.max_perms, AccessType)
        _require_type(owner, "mlock_mode", self.mlock_mode, MLockMode)
        _require_type(owner, "hint", self.hint, str)
        _require_methods(
            owner, "mappable", self.mappable, "Mappable", _MAPPABLE_METHODS
        )
        _require_methods(
            owner,
            "mapping_identity",
            self.mapping_identity,
            "MappingIdentity",
            _IDENTITY_METHODS,
        )


# --------------------------------------------------------------------------
# The postconditions of Mappable.translate


def check_translate_result(
    required: MappableRange,
    optional: MappableRange,
    at: AccessType,
    translations: list[Translation] | tuple[Translation, ...],
    error: BaseException | None,
) -> Exception | None:
    """Judge whether a translate result meets :meth:`Mappable.translate`'s promises.

    The arguments are those of a ``translate(required, optional, at)`` call
    and the ``(translations, error)`` it returned. The checks run in this
    order, and the first one that fails is reported:

    1. If there are translations, the first one contains ``required.start``.
    2. For each translation, in order: its source is a non-empty
       ``MappableRange``; its source is page-aligned; its file is not
       ``None``; its offset is a page-aligned int whose file range fits below
       ``2**64``; it starts where the previous one ends; it overlaps
       ``required``; it lies within ``optional``; its perms allow every access
       in ``at``.
    3. If ``error`` is ``None``: there is at least one translation, and the
       last one contains ``required.end - 1``.

    So a result with an error may translate any prefix of ``required``,
    including none of it.

    Args:
        required: The offsets the caller needed.
        optional: The offsets the caller allowed.
        at: The accesses the caller asked for.
        translations: The translations returned.
        error: The error returned, or ``None``.

    Returns:
        ``None`` if the result is valid; otherwise a ``ValueError`` (returned,
        not raised) whose message explains the first violated postcondition
        and names the offending translation by index.

    Raises:
        TypeError: ``required`` or ``optional`` is not a ``MappableRange``,
            ``at`` is not an ``AccessType``, ``translations`` is not a list or
            tuple of ``Translation`` values, or ``error`` is neither an
            exception nor ``None``.
        ValueError: The inputs break :meth:`Mappable.translate`'s
            preconditions; checked in this order: ``required`` is empty,
            ``required`` is not page-aligned (``AlignmentError``),
            ``optional`` does not contain ``required``, ``optional`` is not
            page-aligned (``AlignmentError``).

    Preconditions:
        Those of :meth:`Mappable.translate` on ``required`` and ``optional``
        (checked, see ``Raises``).

    Complexity:
        O(len(translations)).
    """
    if not isinstance(required, MappableRange):
        raise TypeError(f"required must be a MappableRange, got {required!r}")
    if not isinstance(optional, MappableRange):
        raise TypeError(f"optional must be a MappableRange, got {optional!r}")
    if not isinstance(at, AccessType):
        raise TypeError(f"at must be an AccessType, got {at!r}")
    if not isinstance(translations, (list, tuple)):
        raise TypeError(
            "translations must be a list or tuple of Translation, "
            f"got {type(translations).__name__}"
        )
    for i, t in enumerate(translations):
        if not isinstance(t, Translation):
            raise TypeError(f"translations[{i}] must be a Translation, got {t!r}")
    if error is not None and not isinstance(error, BaseException):
        raise TypeError(f"error must be an exception or None, got {error!r}")

    # The inputs themselves: a failure here is a bug of the caller.
    if required.length == 0:
        raise ValueError(f"invalid required range {required}: it is empty")
    if not required.is_page_aligned():
        raise AlignmentError(f"unaligned required range {required}")
    if not optional.is_superset_of(required):
        raise ValueError(
            f"optional range {optional} does not contain required range {required}"
        )
    if not optional.is_page_aligned():
        raise AlignmentError(f"unaligned optional range {optional}")

    # The result. Translations are not validated when built, so their
    # fields are examined as plain objects.
    if translations:
        first = translations[0]
        first_source: object = first.source
        if not (
            isinstance(first_source, MappableRange)
            and first_source.contains(required.start)
        ):
            return ValueError(
                f"the first translation {first!r} does not cover the start "
                f"{required.start:#x} of required range {required}"
            )
    prev: MappableRange | None = None
    for i, t in enumerate(translations):
        source: object = t.source
        if not isinstance(source, MappableRange) or source.length == 0:
            return ValueError(
                f"translations[{i}] {t!r} has an invalid source "
                "(it must be a non-empty MappableRange)"
            )
        if not source.is_page_aligned():
            return ValueError(f"translations[{i}] {t!r} has an unaligned source")
        file: object = t.file
        if file is None:
            return ValueError(f"translations[{i}] {t!r} has no file")
        offset: object = t.offset
        if (
            not isinstance(offset, int)
            or isinstance(offset, bool)
            or not 0 <= offset < ADDR_LIMIT
        ):
            return ValueError(
                f"translations[{i}] {t!r} has an invalid offset "
                "(it must be an int in [0, 2**64))"
            )
        if offset % PAGE_SIZE:
            return ValueError(f"translations[{i}] {t!r} has an unaligned offset")
        if offset + source.length > ADDR_LIMIT:
            return ValueError(
                f"translations[{i}] {t!r} has an invalid offset "
                "(its file range extends past 2**64)"
            )
        if prev is not None and prev.end != source.start:
            return ValueError(
                f"translations[{i - 1}] {translations[i - 1]!r} and "
                f"translations[{i}] {t!r} are not contiguous"
            )
        if source.intersect(required).length == 0:
            return ValueError(
                f"translations[{i}] {t!r} lies entirely outside "
                f"required range {required}"
            )
        if not optional.is_superset_of(source):
            return ValueError(
                f"translations[{i}] {t!r} lies outside optional range {optional}"
            )
        perms: object = t.perms
        if not isinstance(perms, AccessType) or not perms.superset_of(at):
            return ValueError(
                f"translations[{i}] {t!r} does not permit all requested "
                f"access types {at}"
            )
        prev = source
    if error is None:
        if not translations:
            return ValueError("no translations and no error")
        last = translations[-1]
        if not last.source.contains(required.end - 1):
            return ValueError(
                f"the last translation {last!r} does not reach the end "
                f"{required.end:#x} of required range {required}, "
                "but no error was returned"
            )
    return None


# --------------------------------------------------------------------------
# Protocols


class Mappable(Protocol):
    """Something whose contents can be mapped: offsets to pages of files.

    A Mappable is a mutable mapping from page-aligned offsets to
    ``(File, file offset)`` pairs. It keeps track of who maps which of its
    offsets (usually with a ``MappingSet``) so that when its contents move or
    vanish (truncation, eviction, a remote object changed) it can tell every
    affected :class:`MappingSpace` through :meth:`MappingSpace.invalidate`.

    Preconditions:
        Shared by every method: each ``AddrRange`` and ``MappableRange``
        argument is non-empty, and every address and offset is page-aligned.
        (:meth:`copy_mapping` is the one exception: its ``src_ar`` may be
        empty.)

    Locking:
        An implementation's locks come in two ranks: ``LockRank.MAPPABLE``
        for mapping bookkeeping (taken by :meth:`add_mapping`,
        :meth:`remove_mapping` and :meth:`copy_mapping`, and held while
        calling :meth:`MappingSpace.invalidate`), and ``LockRank.TRANSLATE``
        for the contents (taken by :meth:`translate`). It must never call
        :meth:`MappingSpace.invalidate` while holding a ``TRANSLATE`` lock.
    """

    async def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Record that ``ms`` maps addresses ``ar`` to some of our offsets.

        The mapped offsets are ``[offset, offset + ar.length)``. ``writable``
        says whether the mapping can change this Mappable's data: it is a
        shared mapping through which :meth:`translate` may be asked for write
        access. It is fixed when the mapping is created and never changes.

        Args:
            ms: The mapping space.
            ar: The addresses mapped.
            offset: The offset that ``ar.start`` maps.
            writable: Whether the mapping may write this Mappable's data.

        Raises:
            Exception: The mapping is refused (for instance ``PermissionError``
                for a writable mapping of write-sealed memory); nothing was
                recorded.

        Preconditions:
            ``offset + ar.length`` does not exceed ``2**64``.

        Postconditions:
            On success the mapping is recorded, and :meth:`MappingSpace.invalidate`
            will be called on ``ms`` for it when translations of these offsets
            become invalid, until :meth:`remove_mapping` removes it.

        Locking:
            Called with the address space's ``LockRank.MAPPING`` lock held and
            without its ``LockRank.ACTIVE`` lock. May take ``LockRank.MAPPABLE``
            locks and await while holding them.

        Cancellation:
            If cancelled, nothing must be recorded, as when it raises; the
            caller then treats the mapping as never added.
        """
        ...

    async def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        """Forget that ``ms`` maps addresses ``ar`` to some of our offsets.

        Args:
            ms: The mapping space.
            ar: The addresses no longer mapped.
            offset: The offset that ``ar.start`` mapped.
            writable: The value given to the matching :meth:`add_mapping`.

        Preconditions:
            * ``offset + ar.length`` does not exceed ``2**64``.
            * The mapping exists: it was added by :meth:`add_mapping` (or
              :meth:`copy_mapping`) with the same ``writable``.

        Postconditions:
            ``ms`` receives no more invalidations for this mapping.

        Locking:
            Called with the address space's ``LockRank.MAPPING`` lock held and
            without its ``LockRank.ACTIVE`` lock. May take ``LockRank.MAPPABLE``
            locks and await while holding them.

        Cancellation:
            Removal cannot fail: implementations should not raise, and callers
            shield the call from cancellation so that it always completes.
        """
        ...

    async def copy_mapping(
        self,
        ms: MappingSpace,
        src_ar: AddrRange,
        dst_ar: AddrRange,
        offset: int,
        writable: bool,
    ) -> None:
        """Record that a mapping of ``ms`` is being copied within ``ms``.

        This is ``mremap`` moving or growing a mapping: the mapping at
        ``src_ar`` is copied to ``dst_ar``, which maps offsets
        ``[offset, offset + dst_ar.length)``. The lengths may differ, and
        ``src_ar`` may be empty. Most Mappables treat it as
        ``add_mapping(ms, dst_ar, offset, writable)``; one that cannot be
        moved or resized raises.

        Args:
            ms: The mapping space, which maps both ranges.
            src_ar: The addresses of the existing mapping.
            dst_ar: The addresses of the new mapping.
            offset: The offset that ``src_ar.start`` and ``dst_ar.start`` map.
            writable: The value given to :meth:`add_mapping` for ``src_ar``.

        Raises:
            Exception: The copy is refused; nothing was recorded.

        Preconditions:
            * ``offset + src_ar.length`` and ``offset + dst_ar.length`` do not
              exceed ``2**64``.
            * The mapping at ``src_ar`` exists, with the same ``writable``.

        Postconditions:
            On success the mapping at ``dst_ar`` is recorded as by
            :meth:`add_mapping`; the one at ``src_ar`` is untouched (the
            caller removes it separately).

        Locking:
            As :meth:`add_mapping`.

        Cancellation:
            As :meth:`add_mapping`: if cancelled, nothing must be recorded.
        """
        ...

    async def translate(
        self, required: MappableRange, optional: MappableRange, at: AccessType
    ) -> TranslateResult:
        """Return where our offsets live, for at least ``required``.

        Returns translations for at least the offsets ``required`` and at
        most ``optional``, usable for the accesses ``at``. A Mappable may
        translate more than ``required`` (up to ``optional``) when that is
        cheap, to save later calls. If it cannot translate all of
        ``required`` it returns the translations of a prefix (possibly none)
        and an error explaining why, usually a :class:`~aiomemmap.BusError`.

        Translations stay valid until :meth:`MappingSpace.invalidate` is
        called for their offsets, or until the caller removes its mapping of
        them.

        Args:
            required: The offsets that must be translated.
            optional: The offsets that may be translated.
            at: The accesses the translations must permit.

        Returns:
            ``(translations, error)``.

        Raises:
            Exception: Only for broken preconditions; failures to provide the
                contents are returned as ``error``, not raised.

        Preconditions:
            * ``required`` is non-empty; ``optional`` contains ``required``;
              both are page-aligned.
            * The caller has mapped every queried offset with
              :meth:`add_mapping`.
            * The caller keeps its calls in step with invalidation: it either
              holds its ``LockRank.ACTIVE`` lock (which
              :meth:`MappingSpace.invalidate` also takes), or it notices every
              invalidation of the queried offsets that happens while the call
              is in flight and then discards the result (an
              :class:`~aiomemmap.AddressSpace` does the latter, so that faults
              on different pages fetch concurrently).

        Postconditions:
            * ``check_translate_result(required, optional, at, *result)`` is
              ``None``.
            * The Mappable holds at least one reference on every page of every
              returned translation's file range, so :meth:`File.inc_ref` on
              them is allowed, and the pages stay allocated until the
              translation is invalidated.

        Locking:
            Called with the mapping space's ``LockRank.MAPPING`` lock held
            (so the mapping stays), and possibly its ``LockRank.ACTIVE`` lock
            (see the preconditions). May take ``LockRank.TRANSLATE`` locks and
            await (for instance backing I/O) while holding them; must not
            take ``LockRank.MAPPABLE`` locks.

        Cancellation:
            If cancelled, no translation was handed out and no reference was
            leaked. Work that other callers share (a fetch several faults wait
            for) must not be abandoned because one of its waiters was
            cancelled.
        """
        ...

    async def invalidate_unsavable(self) -> None:
        """Invalidate the translations that cannot survive save and restore.

        Raises:
            Exception: The invalidation failed.

        Preconditions:
            No other method of this Mappable runs concurrently.

        Locking:
            May take ``LockRank.MAPPABLE`` locks and call
            :meth:`MappingSpace.invalidate` while holding them.
        """
        ...


class MappingSpace(Protocol):
    """A mutable mapping from addresses to ``(Mappable, offset)`` pairs.

    An address space is the usual implementation. Mappables call back into
    it when translations it obtained from them become invalid.
    """

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        """Forget every translation of the offsets that ``ar`` maps.

        Results of earlier :meth:`Mappable.translate` calls for the offsets
        mapped by addresses in ``ar`` are no longer valid: the space must
        stop using them, and drop the page references it took on them.

        Args:
            ar: The addresses whose translations are invalid.
            opts: With ``invalidate_private`` set, private copy-on-write
                copies in ``ar`` are discarded too (their data is lost);
                otherwise they are kept.

        Preconditions:
            ``ar`` is non-empty and page-aligned.

        Postconditions:
            No translation obtained before the call is used for ``ar``
            afterwards.

        Locking:
            Called by Mappables (through the invalidation bus) while they may
            hold ``LockRank.MAPPABLE`` locks, never ``LockRank.TRANSLATE``
            ones. The implementation may take its ``LockRank.ACTIVE`` lock and
            locks ranked after it, but no lock ranked before ``ACTIVE``
            (neither ``MAPPING`` nor ``MAPPABLE``).

        Cancellation:
            An invalidation must not be left half applied: callers shield it
            from cancellation, and an implementation cancelled anyway must
            leave no translation of ``ar`` usable.
        """
        ...


class MappingIdentity(Protocol):
    """Keeps a Mappable alive and says how its mappings are listed.

    It is distinct from the :class:`Mappable`: every Mappable that is coherent
    with another compares equal to it, while several identities (like several
    open files of one inode) may stand for the same Mappable.
    """

    def inc_ref(self) -> None:
        """Take one more reference.

        Locking:
            May be called with any lock held; takes none and never waits.
        """
        ...

    async def dec_ref(self) -> None:
        """Drop one reference; the last one may release the Mappable.

        Locking:
            Called without the address space's ``LockRank.MAPPING`` lock
            (address spaces collect identities and release them after
            unlocking). May take ``LockRank.MAPPABLE`` locks and await.

        Cancellation:
            Callers shield it, so the reference is always dropped.
        """
        ...

    def mapped_name(self) -> str:
        """Return the name shown for mappings in ``/proc/pid/maps``."""
        ...

    def device_id(self) -> int:
        """Return the device number shown in ``/proc/pid/maps``."""
        ...

    def inode_id(self) -> int:
        """Return the inode number shown in ``/proc/pid/maps``."""
        ...

    async def msync(self, mr: MappableRange) -> None:
        """Write back the data of offsets ``mr`` to where it is stored.

        Like ``fdatasync`` restricted to the byte range ``mr``: when it
        returns, modified contents of ``mr`` have reached the backing store.

        Args:
            mr: The offsets to write back.

        Raises:
            Exception: Writing back failed (for instance an ``OSError`` from
                the backing store).

        Locking:
            Called without the address space's ``LockRank.MAPPING`` lock. May
            take ``LockRank.MAPPABLE`` and ``LockRank.TRANSLATE`` locks and
            await I/O.
        """
        ...


class File(Protocol):
    """Host memory that can be mapped: a file of reference-counted pages.

    Every page is reference-counted. The methods are plain functions: they
    never wait, so they can be called under any lock and are atomic with
    respect to other tasks on the event loop.
    """

    def inc_ref(self, fr: FileRange, memcg_id: int = 0) -> None:
        """Take one more reference on every page of ``fr``.

        Args:
            fr: The pages.
            memcg_id: The memory cgroup to charge; it is recorded only for
                pages that were not tracked before.

        Raises:
            RefCountError: A page of ``fr`` holds no reference.

        Preconditions:
            * ``fr`` is non-empty and page-aligned.
            * At least one reference is held on every page of ``fr``. (How
              the first reference is obtained is up to the implementation.)
        """
        ...

    def dec_ref(self, fr: FileRange) -> None:
        """Drop one reference from every page of ``fr``.

        A page whose count reaches zero is freed.

        Args:
            fr: The pages.

        Raises:
            RefCountError: A page of ``fr`` holds no reference.

        Preconditions:
            * ``fr`` is non-empty and page-aligned.
            * At least one reference is held on every page of ``fr``.
        """
        ...

    def map_internal(self, fr: FileRange, at: AccessType) -> BlockSeq:
        """Return the bytes ``fr`` of the file as memory of this process.

        Args:
            fr: The file range; it need not be page-aligned.
            at: The accesses that will be made through the result.

        Returns:
            Blocks viewing the file's bytes ``fr``, in order.

        Raises:
            Exception: ``fr`` cannot be mapped for ``at`` (for instance
                ``PermissionError`` for execute access).

        Preconditions:
            * ``fr`` is non-empty.
            * At least one reference is held on every page of ``fr``.

        Postconditions:
            The result stays valid as long as a reference is held on the
            pages it views.
        """
        ...

    def fd(self) -> int:
        """Return the file's descriptor.

        The only permitted use of the descriptor is to map pages of the file,
        within what the translations that name them allow.
        """
        ...


class EvictableUser(Protocol):
    """An owner of memory-file pages that can give some of them back on demand.

    gVisor's ``EvictableMemoryUser``. A user registers ranges of its own
    offsets (for a Mappable, its offsets) with the memory file's evictor
    (:meth:`~aiomemmap.MemoryFile.mark_evictable`); when the page-cache
    budget needs room, the evictor pops the least recently used range and
    calls :meth:`evict` on its user. Registration is only a hint: the user
    decides what of the range can go when asked.

    Users are registry keys, so they must be hashable (the default identity
    hash is what is meant).
    """

    async def evict(self, er: MappableRange) -> None:
        """Give back what can go of the pages of ``er``: a range the evictor picked.

        Args:
            er: A range previously registered by this user; it may have
                changed meanwhile (partly freed, truncated, dirty, in use),
                and the user must tolerate that, evicting only what it can.

        Postconditions:
            The pages evicted are no longer reachable through this user; the
            user accounts for them with the memory file's
            ``begin_eviction`` / ``end_eviction`` and drops its references
            once no mapping space can use them any more. Ranges (or parts)
            it keeps are registered again if they stay evictable.

        Locking:
            Called holding no lock. It must not wait for a lock whose holder
            may be waiting for the allocation that triggered the eviction
            (taking a free one is fine).

        Cancellation:
            What was not evicted stays with the user.
        """
        ...
