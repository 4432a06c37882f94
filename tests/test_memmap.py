"""The memmap interfaces: check_translate_result, the value types, the protocols."""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

import pytest

from aiomemmap import (
    AccessType,
    AddrRange,
    AlignmentError,
    BlockSeq,
    BusError,
    File,
    FileRange,
    InvalidateOpts,
    Mappable,
    MappableRange,
    MappingIdentity,
    MappingSpace,
    MLockMode,
    MMapOpts,
    TranslateResult,
    Translation,
    check_translate_result,
)

P = 0x1000
R = AccessType.READ
W = AccessType.WRITE
RW = AccessType.READ_WRITE


# --------------------------------------------------------------------------
# Tiny implementations of every protocol


class FakeFile:
    """A File of 16 pages in a bytearray, counting references per page."""

    def __init__(self, pages: int = 16) -> None:
        self.data = bytearray(pages * P)
        self.refs = [0] * pages

    def inc_ref(self, fr: FileRange, memcg_id: int = 0) -> None:
        for p in range(fr.start // P, fr.end // P):
            self.refs[p] += 1

    def dec_ref(self, fr: FileRange) -> None:
        for p in range(fr.start // P, fr.end // P):
            self.refs[p] -= 1

    def map_internal(self, fr: FileRange, at: AccessType) -> BlockSeq:
        return BlockSeq([memoryview(self.data)[fr.start : fr.end]])

    def fd(self) -> int:
        return -1

    def __repr__(self) -> str:
        return "F"


class FakeSpace:
    """A MappingSpace that records invalidations."""

    def __init__(self) -> None:
        self.invalidated: list[tuple[AddrRange, InvalidateOpts]] = []

    async def invalidate(self, ar: AddrRange, opts: InvalidateOpts) -> None:
        self.invalidated.append((ar, opts))


class FakeMappable:
    """A Mappable whose offset ``o`` lives at offset ``o`` of one file."""

    def __init__(self, file: FakeFile, size: int) -> None:
        self.file = file
        self.size = size
        self.mappings: list[tuple[MappingSpace, AddrRange, int, bool]] = []

    async def add_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        self.mappings.append((ms, ar, offset, writable))

    async def remove_mapping(
        self, ms: MappingSpace, ar: AddrRange, offset: int, writable: bool
    ) -> None:
        self.mappings.remove((ms, ar, offset, writable))

    async def copy_mapping(
        self,
        ms: MappingSpace,
        src_ar: AddrRange,
        dst_ar: AddrRange,
        offset: int,
        writable: bool,
    ) -> None:
        await self.add_mapping(ms, dst_ar, offset, writable)

    async def translate(
        self, required: MappableRange, optional: MappableRange, at: AccessType
    ) -> TranslateResult:
        end = min(optional.end, self.size)
        if end <= required.start:
            return TranslateResult([], BusError(EOFError("past the end")))
        source = MappableRange(required.start, end)
        ts = [Translation(source, self.file, source.start, AccessType.ANY)]
        err = None if end >= required.end else BusError(EOFError("past the end"))
        return TranslateResult(ts, err)

    async def invalidate_unsavable(self) -> None:
        for ms, ar, _, _ in self.mappings:
            await ms.invalidate(ar, InvalidateOpts())


class FakeIdentity:
    """A MappingIdentity with a reference count."""

    def __init__(self) -> None:
        self.refs = 1
        self.synced: list[MappableRange] = []

    def inc_ref(self) -> None:
        self.refs += 1

    async def dec_ref(self) -> None:
        self.refs -= 1

    def mapped_name(self) -> str:
        return "/fake"

    def device_id(self) -> int:
        return 7

    def inode_id(self) -> int:
        return 42

    async def msync(self, mr: MappableRange) -> None:
        self.synced.append(mr)


F = FakeFile()

# These assignments are what the type checker verifies: each fake satisfies
# its protocol structurally, without inheriting from it.
_file: File = FakeFile()
_space: MappingSpace = FakeSpace()
_mappable: Mappable = FakeMappable(FakeFile(), 4 * P)
_identity: MappingIdentity = FakeIdentity()


_DEFAULT: Any = object()


def mr(start: int, end: int) -> MappableRange:
    return MappableRange(start, end)


def tr(
    start: int,
    end: int,
    *,
    file: Any = F,
    offset: Any = 0,
    perms: Any = RW,
    source: Any = _DEFAULT,
) -> Translation:
    """A translation; ``file``, ``offset``, ``perms`` and ``source`` may be invalid."""
    return Translation(
        mr(start, end) if source is _DEFAULT else source, file, offset, perms
    )


# --------------------------------------------------------------------------
# check_translate_result: the derived vectors of the semantics document
# (required=[0x1000,0x3000), optional=[0,0x4000), at=read)

REQ = mr(0x1000, 0x3000)
OPT = mr(0, 0x4000)


def check(ts: list[Translation], err: BaseException | None = None) -> Exception | None:
    return check_translate_result(REQ, OPT, R, ts, err)


def assert_error(result: Exception | None, fragment: str) -> None:
    assert isinstance(result, ValueError), result
    assert fragment in str(result), str(result)


def test_vector_exact_translation_is_valid() -> None:
    assert check([tr(0x1000, 0x3000, perms=RW)]) is None


def test_vector_whole_optional_is_valid() -> None:
    assert check([tr(0, 0x4000, perms=R)]) is None


def test_vector_no_translations_and_no_error() -> None:
    assert_error(check([]), "no translations and no error")


def test_vector_no_translations_with_error_is_valid() -> None:
    assert check([], OSError(errno.EFAULT, "bad address")) is None
    assert check([], BusError(OSError(errno.EFAULT, "bad address"))) is None


def test_vector_first_translation_misses_start() -> None:
    assert_error(check([tr(0x2000, 0x3000)]), "does not cover the start 0x1000")


def test_vector_two_contiguous_translations_are_valid() -> None:
    assert check([tr(0x1000, 0x2000), tr(0x2000, 0x3000, offset=0x5000)]) is None


def test_vector_hole_between_translations() -> None:
    # The document's hole starts at 0x2800, which is caught as unaligned first.
    assert_error(
        check([tr(0x1000, 0x2000), tr(0x2800, 0x3000)]), "has an unaligned source"
    )
    # An aligned hole is caught by the contiguity check.
    assert_error(check([tr(0x1000, 0x2000), tr(0x3000, 0x4000)]), "are not contiguous")


def test_vector_short_without_error() -> None:
    assert_error(check([tr(0x1000, 0x2000)]), "does not reach the end 0x3000")


def test_vector_short_with_error_is_valid() -> None:
    assert check([tr(0x1000, 0x2000)], OSError(errno.EIO, "I/O error")) is None


def test_vector_outside_optional() -> None:
    assert_error(check([tr(0x1000, 0x5000)]), "lies outside optional range")


def test_vector_perms_do_not_permit_read() -> None:
    assert_error(check([tr(0x1000, 0x3000, perms=W)]), "does not permit")


def test_vector_unaligned_offset() -> None:
    assert_error(check([tr(0x1000, 0x3000, offset=0x800)]), "unaligned offset")


def test_vector_no_file() -> None:
    assert_error(check([tr(0x1000, 0x3000, file=None)]), "has no file")


# --------------------------------------------------------------------------
# check_translate_result: each check, and the order of the checks


def test_check_partial_prefix_with_error_is_valid() -> None:
    # A valid prefix followed by an error: the seed's "partial coverage".
    assert check([tr(0x1000, 0x2000)], BusError(OSError())) is None
    assert check([tr(0, 0x1000 + P)], BusError(EOFError())) is None
    # The error may also come with a complete translation.
    assert check([tr(0x1000, 0x3000)], BusError(EOFError())) is None


def test_check_error_does_not_excuse_bad_translations() -> None:
    assert_error(check([tr(0x1000, 0x3000, perms=W)], BusError(EOFError())), "permit")


def test_check_translation_may_start_before_required() -> None:
    assert check([tr(0, 0x2000), tr(0x2000, 0x3000)]) is None


def test_check_translation_past_required_but_within_optional() -> None:
    assert check([tr(0x1000, 0x3000), tr(0x3000, 0x4000)]) is not None
    # ...a whole trailing translation outside required is refused, but one
    # that straddles the end is fine.
    assert check([tr(0x1000, 0x2000), tr(0x2000, 0x4000)]) is None


def test_check_invalid_sources() -> None:
    assert_error(
        check([tr(0x1000, 0x2000), tr(0x2000, 0x2000)]),
        "translations[1] Translation(source=MappableRange(0x2000, 0x2000)",
    )
    assert_error(
        check([tr(0x1000, 0x2000), tr(0, 0, source=AddrRange(0x2000, 0x3000))]),
        "has an invalid source",
    )
    assert_error(
        check([tr(0x1000, 0x2000), tr(0, 0, source=None)]),
        "translations[1] Translation(source=None",
    )


def test_check_non_range_first_source_fails_the_first_check() -> None:
    # The first check cannot find required.start in something that is not a
    # MappableRange, just as it cannot in an empty one.
    result = check([tr(0, 0, source=AddrRange(0x1000, 0x3000))])
    assert_error(result, "first translation")


@pytest.mark.parametrize(
    ("offset", "fragment"),
    [
        (0x800, "unaligned offset"),
        (-P, "invalid offset"),
        (1 << 64, "invalid offset"),
        (1.0, "invalid offset"),
        ("0", "invalid offset"),
        (True, "invalid offset"),
        ((1 << 64) - P, "extends past 2**64"),
    ],
)
def test_check_offsets(offset: object, fragment: str) -> None:
    assert_error(check([tr(0x1000, 0x3000, offset=offset)]), fragment)


def test_check_largest_offset_that_fits() -> None:
    assert check([tr(0x1000, 0x3000, offset=(1 << 64) - 0x2000)]) is None


def test_check_perms_that_are_not_an_access_type() -> None:
    assert_error(check([tr(0x1000, 0x3000, perms="rw-")]), "does not permit")


def test_check_no_access_requested() -> None:
    ts = [tr(0x1000, 0x3000, perms=AccessType.NO_ACCESS)]
    assert check_translate_result(REQ, OPT, AccessType.NO_ACCESS, ts, None) is None
    assert check(ts) is not None


def test_check_accepts_tuples() -> None:
    assert check_translate_result(REQ, OPT, R, (tr(0x1000, 0x3000),), None) is None


def test_check_message_names_the_translation() -> None:
    result = check([tr(0x1000, 0x2000), tr(0x2000, 0x3000, offset=0x1800)])
    assert_error(result, "translations[1] Translation(source=MappableRange(0x2000")
    assert_error(result, "offset=0x1800")


# Each case violates one check and a later one; the earlier one is reported.
ORDER_CASES = [
    pytest.param(
        [tr(0x1000, 0x1000)],
        "first translation",
        id="start-before-invalid-source",
    ),
    pytest.param(
        [tr(0x2000, 0x3000, file=None)],
        "first translation",
        id="start-before-no-file",
    ),
    pytest.param(
        [tr(0x1000, 0x2000), tr(0x2800, 0x2800)],
        "invalid source",
        id="invalid-source-before-unaligned-source",
    ),
    pytest.param(
        [tr(0x1000, 0x2800, file=None)],
        "unaligned source",
        id="unaligned-source-before-no-file",
    ),
    pytest.param(
        [tr(0x1000, 0x3000, file=None, offset=0x800)],
        "no file",
        id="no-file-before-unaligned-offset",
    ),
    pytest.param(
        [tr(0x1000, 0x2000), tr(0x3000, 0x4000, offset=0x800)],
        "unaligned offset",
        id="unaligned-offset-before-contiguity",
    ),
    pytest.param(
        [tr(0x1000, 0x2000), tr(0x3000, 0x4000)],
        "not contiguous",
        id="contiguity-before-outside-required",
    ),
    pytest.param(
        [tr(0x1000, 0x3000), tr(0x3000, 0x5000)],
        "entirely outside required",
        id="outside-required-before-outside-optional",
    ),
    pytest.param(
        [tr(0x1000, 0x5000, perms=W)],
        "outside optional",
        id="outside-optional-before-perms",
    ),
    pytest.param(
        [tr(0x1000, 0x2000, perms=W)],
        "does not permit",
        id="perms-before-reaching-end",
    ),
    pytest.param(
        [tr(0x1000, 0x2000, perms=W), tr(0x2000, 0x3000, file=None)],
        "translations[0]",
        id="earlier-translation-before-later",
    ),
]


@pytest.mark.parametrize(("ts", "fragment"), ORDER_CASES)
def test_check_order(ts: list[Translation], fragment: str) -> None:
    assert_error(check(ts), fragment)


def test_check_coverage_checks_only_without_error() -> None:
    # Reaching the end is required only when no error is returned.
    assert_error(check([tr(0x1000, 0x2000)]), "does not reach the end")
    assert check([tr(0x1000, 0x2000)], BusError(EOFError())) is None


# --------------------------------------------------------------------------
# check_translate_result: invalid inputs raise


@pytest.mark.parametrize(
    ("required", "optional", "exc", "fragment"),
    [
        (mr(P, P), OPT, ValueError, "invalid required range [0x1000, 0x1000)"),
        # Empty and unaligned: emptiness is checked first.
        (mr(0x1800, 0x1800), OPT, ValueError, "invalid required range"),
        (mr(0x1800, 0x3000), OPT, AlignmentError, "unaligned required range"),
        # Unaligned and not contained: alignment of required comes first.
        (
            mr(0x1800, 0x3000),
            mr(0x2000, 0x3000),
            AlignmentError,
            "unaligned required range [0x1800, 0x3000)",
        ),
        (
            REQ,
            mr(0x2000, 0x4000),
            ValueError,
            "optional range [0x2000, 0x4000) does not contain "
            "required range [0x1000, 0x3000)",
        ),
        # Unaligned and not containing: containment comes first.
        (
            REQ,
            mr(0x1800, 0x2800),
            ValueError,
            "optional range [0x1800, 0x2800) does not contain",
        ),
        (
            REQ,
            mr(0x800, 0x4000),
            AlignmentError,
            "unaligned optional range [0x800, 0x4000)",
        ),
    ],
)
def test_check_invalid_inputs_raise(
    required: MappableRange,
    optional: MappableRange,
    exc: type[Exception],
    fragment: str,
) -> None:
    # The result is also invalid: the inputs are judged first.
    with pytest.raises(exc) as info:
        check_translate_result(required, optional, R, [], None)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((AddrRange(P, 2 * P), OPT, R, [], None), "required must be a MappableRange"),
        ((REQ, FileRange(0, 4 * P), R, [], None), "optional must be a MappableRange"),
        ((REQ, OPT, "r--", [], None), "at must be an AccessType"),
        ((REQ, OPT, R, None, None), "translations must be a list or tuple"),
        ((REQ, OPT, R, iter([]), None), "translations must be a list or tuple"),
        ((REQ, OPT, R, [tr(P, 2 * P), "t"], None), "translations[1] must be"),
        ((REQ, OPT, R, [], "failed"), "error must be an exception or None"),
        ((REQ, OPT, R, [], OSError), "error must be an exception or None"),
    ],
)
def test_check_type_errors(args: tuple[Any, ...], fragment: str) -> None:
    with pytest.raises(TypeError) as info:
        check_translate_result(*args)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------
# Translation and TranslateResult


def test_translation_file_range() -> None:
    t = Translation(mr(0x1000, 0x3000), F, 0x8000, R)
    assert t.file_range() == FileRange(0x8000, 0xA000)


def test_translation_is_not_validated() -> None:
    no_file: Any = None
    t = Translation(mr(0x1000, 0x1000), no_file, 0x801, AccessType.NO_ACCESS)
    assert t.file is no_file
    assert t.offset == 0x801
    assert t.file_range() == FileRange(0x801, 0x801)


def test_translation_file_range_out_of_bounds() -> None:
    t = tr(0, 0x2000, offset=(1 << 64) - P)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        t.file_range()


def test_translation_is_a_frozen_value() -> None:
    t = Translation(mr(0, P), F, 0, R)
    assert t == Translation(mr(0, P), F, 0, R)
    assert t != Translation(mr(0, P), F, P, R)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.offset = 5  # type: ignore[misc]


def test_translation_repr() -> None:
    t = Translation(mr(0x1000, 0x2000), F, 0x5000, RW)
    assert repr(t) == (
        "Translation(source=MappableRange(0x1000, 0x2000), file=F, "
        "offset=0x5000, perms=AccessType(rw-))"
    )
    assert "offset='x'" in repr(tr(0, P, offset="x"))
    assert "offset=True" in repr(tr(0, P, offset=True))


async def test_translate_result_unpacks() -> None:
    m = FakeMappable(F, 2 * P)
    ts, err = await m.translate(mr(0, 2 * P), mr(0, 4 * P), R)
    assert err is None
    assert ts == [Translation(mr(0, 2 * P), F, 0, AccessType.ANY)]


def test_translate_result_fields() -> None:
    result = TranslateResult([])
    assert result.translations == []
    assert result.error is None
    assert isinstance(result, tuple)
    assert TranslateResult._fields == ("translations", "error")
    err = BusError(OSError())
    assert TranslateResult([], err) == ([], err)


# --------------------------------------------------------------------------
# MMapOpts, MLockMode, InvalidateOpts


def test_mmap_opts_defaults() -> None:
    opts = MMapOpts(4 * P)
    expected = {
        "length": 4 * P,
        "mapping_identity": None,
        "mappable": None,
        "offset": 0,
        "addr": 0,
        "fixed": False,
        "unmap": False,
        "no_replace": False,
        "map_32bit": False,
        "perms": AccessType.READ_WRITE,
        "max_perms": AccessType.ANY,
        "private": False,
        "grows_down": False,
        "precommit": False,
        "mlock_mode": MLockMode.NONE,
        "hint": "",
        "force": False,
        "sentry_owned_content": False,
    }
    assert [f.name for f in dataclasses.fields(MMapOpts)] == list(expected)
    assert {k: getattr(opts, k) for k in expected} == expected


def test_mmap_opts_fields_in_order() -> None:
    ident = FakeIdentity()
    m = FakeMappable(F, P)
    opts = MMapOpts(P, ident, m, P, 0x10000, True)
    assert opts.mapping_identity is ident
    assert opts.mappable is m
    assert (opts.offset, opts.addr, opts.fixed) == (P, 0x10000, True)


def test_mmap_opts_does_not_apply_semantic_rules() -> None:
    # Unaligned values and contradictory flags are the address space's to reject.
    opts = MMapOpts(
        length=123,
        addr=0x1001,
        offset=7,
        unmap=True,
        no_replace=True,
        force=True,
        max_perms=AccessType.WRITE,
        mlock_mode=MLockMode.LAZY,
    )
    assert opts.length == 123
    assert MMapOpts(0).length == 0


def test_mmap_opts_is_frozen_and_replaceable() -> None:
    opts = MMapOpts(P)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.length = 2 * P  # type: ignore[misc]
    bigger = dataclasses.replace(opts, length=2 * P, private=True)
    assert (bigger.length, bigger.private, opts.length) == (2 * P, True, P)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"length": "4096"}, "length must be int"),
        ({"length": True}, "length must be int"),
        ({"length": 4096.0}, "length must be int"),
        ({"offset": None}, "offset must be int"),
        ({"addr": "0x1000"}, "addr must be int"),
        ({"fixed": 1}, "fixed must be a bool"),
        ({"unmap": None}, "unmap must be a bool"),
        ({"no_replace": 0}, "no_replace must be a bool"),
        ({"map_32bit": "yes"}, "map_32bit must be a bool"),
        ({"private": 1}, "private must be a bool"),
        ({"grows_down": 1}, "grows_down must be a bool"),
        ({"precommit": 1}, "precommit must be a bool"),
        ({"force": 1}, "force must be a bool"),
        ({"sentry_owned_content": 1}, "sentry_owned_content must be a bool"),
        ({"perms": "rw-"}, "perms must be AccessType"),
        ({"max_perms": 7}, "max_perms must be AccessType"),
        ({"mlock_mode": 1}, "mlock_mode must be MLockMode"),
        ({"hint": None}, "hint must be str"),
        ({"mappable": object()}, "mappable must be a Mappable or None"),
        ({"mappable": FakeIdentity()}, "missing add_mapping"),
        ({"mapping_identity": "id"}, "mapping_identity must be a MappingIdentity"),
    ],
)
def test_mmap_opts_type_errors(kwargs: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"length": P, **kwargs}
    with pytest.raises(TypeError) as info:
        MMapOpts(**fields)
    assert fragment in str(info.value)
    assert "MMapOpts" in str(info.value)


def test_mmap_opts_accepts_protocol_implementations() -> None:
    opts = MMapOpts(P, mapping_identity=FakeIdentity(), mappable=FakeMappable(F, P))
    assert opts.mappable is not None


def test_mlock_mode_values_and_order() -> None:
    assert [int(m) for m in MLockMode] == [0, 1, 2]
    assert [m.name for m in MLockMode] == ["NONE", "EAGER", "LAZY"]
    assert MLockMode.NONE < MLockMode.EAGER < MLockMode.LAZY
    assert max(MLockMode.EAGER, MLockMode.NONE) is MLockMode.EAGER
    assert max(MLockMode.EAGER, MLockMode.LAZY) is MLockMode.LAZY
    assert not MLockMode.NONE
    assert MLockMode(0) is MLockMode.NONE


def test_invalidate_opts() -> None:
    assert InvalidateOpts().invalidate_private is False
    assert InvalidateOpts(True).invalidate_private is True
    assert InvalidateOpts(invalidate_private=True) == InvalidateOpts(True)
    assert hash(InvalidateOpts()) == hash(InvalidateOpts(False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        InvalidateOpts().invalidate_private = True  # type: ignore[misc]


@pytest.mark.parametrize("bad", [1, 0, None, "yes"])
def test_invalidate_opts_rejects_non_bool(bad: object) -> None:
    with pytest.raises(TypeError, match="invalidate_private must be a bool"):
        InvalidateOpts(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# The protocols, exercised through the fakes


async def test_fake_mappable_results_pass_the_checker() -> None:
    m: Mappable = FakeMappable(F, 3 * P)
    for required, optional in [
        (mr(0, P), mr(0, 4 * P)),
        (mr(P, 3 * P), mr(0, 3 * P)),
        (mr(2 * P, 4 * P), mr(0, 8 * P)),
        (mr(3 * P, 4 * P), mr(3 * P, 4 * P)),
    ]:
        ts, err = await m.translate(required, optional, R)
        assert check_translate_result(required, optional, R, ts, err) is None


async def test_fake_mappable_invalidates_its_spaces() -> None:
    space = FakeSpace()
    m = FakeMappable(F, 4 * P)
    ar = AddrRange(0x10000, 0x12000)
    await m.add_mapping(space, ar, 0, True)
    await m.copy_mapping(space, ar, AddrRange(0x20000, 0x23000), 0, True)
    await m.invalidate_unsavable()
    assert [r for r, _ in space.invalidated] == [ar, AddrRange(0x20000, 0x23000)]
    await m.remove_mapping(space, ar, 0, True)
    assert len(m.mappings) == 1


async def test_fake_identity_and_file() -> None:
    ident: MappingIdentity = FakeIdentity()
    ident.inc_ref()
    await ident.dec_ref()
    await ident.msync(mr(0, P))
    assert (ident.mapped_name(), ident.device_id(), ident.inode_id()) == (
        "/fake",
        7,
        42,
    )
    f: File = FakeFile()
    f.inc_ref(FileRange(0, 2 * P))
    f.inc_ref(FileRange(0, P), memcg_id=3)
    f.dec_ref(FileRange(0, P))
    blocks = f.map_internal(FileRange(0x10, 0x20), RW)
    assert blocks.num_bytes == 0x10
    assert f.fd() == -1
