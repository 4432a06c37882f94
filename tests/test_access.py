"""Tests for access types (``aiomemmap._core.access``)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import mmap
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiomemmap import AccessType

ALL_FLAGS = list(itertools.product([False, True], repeat=3))
ALL = [AccessType(r, w, x) for r, w, x in ALL_FLAGS]
all_access = pytest.mark.parametrize("at", ALL, ids=str)
access_types = st.sampled_from(ALL)


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        ((False, False, False), "---"),
        ((True, False, False), "r--"),
        ((False, True, False), "-w-"),
        ((False, False, True), "--x"),
        ((True, True, False), "rw-"),
        ((True, False, True), "r-x"),
        ((False, True, True), "-wx"),
        ((True, True, True), "rwx"),
    ],
)
def test_access_str(flags: tuple[bool, bool, bool], text: str):
    at = AccessType(*flags)
    assert str(at) == text
    assert len(str(at)) == 3
    assert repr(at) == f"AccessType({text})"


def test_access_str_is_distinct_for_all_combinations():
    assert len({str(at) for at in ALL}) == 8
    assert all(len(str(at)) == 3 for at in ALL)


def test_access_constants():
    assert AccessType() == AccessType.NO_ACCESS
    assert AccessType(read=True) == AccessType.READ
    assert AccessType(write=True) == AccessType.WRITE
    assert AccessType(execute=True) == AccessType.EXECUTE
    assert AccessType(read=True, write=True) == AccessType.READ_WRITE
    assert AccessType(read=True, execute=True) == AccessType.READ_EXECUTE
    assert AccessType(True, True, True) == AccessType.ANY
    assert [
        str(c)
        for c in (
            AccessType.NO_ACCESS,
            AccessType.READ,
            AccessType.WRITE,
            AccessType.EXECUTE,
            AccessType.READ_WRITE,
            AccessType.READ_EXECUTE,
            AccessType.ANY,
        )
    ] == ["---", "r--", "-w-", "--x", "rw-", "r-x", "rwx"]


def test_access_constants_are_access_types():
    names = ["NO_ACCESS", "READ", "WRITE", "EXECUTE", "READ_WRITE", "READ_EXECUTE"]
    for name in [*names, "ANY"]:
        assert type(getattr(AccessType, name)) is AccessType


def test_access_defaults_and_keywords():
    at = AccessType()
    assert (at.read, at.write, at.execute) == (False, False, False)
    at = AccessType(execute=True)
    assert (at.read, at.write, at.execute) == (False, False, True)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (AccessType.NO_ACCESS, "---"),
        (AccessType.READ, "r--"),
        (AccessType.WRITE, "rw-"),
        (AccessType.EXECUTE, "r-x"),
        (AccessType(write=True, execute=True), "rwx"),
        (AccessType.READ_WRITE, "rw-"),
        (AccessType.READ_EXECUTE, "r-x"),
        (AccessType.ANY, "rwx"),
    ],
    ids=str,
)
def test_access_effective(at: AccessType, expected: str):
    assert str(at.effective()) == expected


@all_access
def test_access_effective_properties(at: AccessType):
    eff = at.effective()
    assert eff.superset_of(at)
    assert eff.effective() == eff
    assert eff.read is at.any()
    assert (eff.write, eff.execute) == (at.write, at.execute)


def test_access_superset_of_vectors():
    assert AccessType.NO_ACCESS.superset_of(AccessType.NO_ACCESS)
    assert AccessType.READ.superset_of(AccessType.NO_ACCESS)
    assert not AccessType.NO_ACCESS.superset_of(AccessType.READ)
    assert AccessType.READ_WRITE.superset_of(AccessType.WRITE)
    assert not AccessType.READ_WRITE.superset_of(AccessType.EXECUTE)
    assert not AccessType.READ_EXECUTE.superset_of(AccessType.READ_WRITE)
    assert AccessType.ANY.superset_of(AccessType.ANY)
    assert not AccessType.WRITE.superset_of(AccessType.READ)


@all_access
def test_access_superset_of_self_and_bounds(at: AccessType):
    assert at.superset_of(at)
    assert at.superset_of(AccessType.NO_ACCESS)
    assert AccessType.ANY.superset_of(at)


@given(access_types, access_types)
def test_access_superset_of_definition(a: AccessType, b: AccessType):
    expected = (
        (a.read or not b.read)
        and (a.write or not b.write)
        and (a.execute or not b.execute)
    )
    assert a.superset_of(b) is expected
    if a.superset_of(b) and b.superset_of(a):
        assert a == b


def test_access_intersect_and_union_vectors():
    rw, rx = AccessType.READ_WRITE, AccessType.READ_EXECUTE
    assert rw.intersect(rx) == AccessType.READ
    assert rw.union(rx) == AccessType.ANY
    assert AccessType.WRITE.intersect(AccessType.EXECUTE) == AccessType.NO_ACCESS
    assert AccessType.WRITE.union(AccessType.EXECUTE) == AccessType(
        write=True, execute=True
    )


@given(access_types, access_types)
def test_access_intersect_and_union_are_bitwise(a: AccessType, b: AccessType):
    assert a.intersect(b).prot() == a.prot() & b.prot()
    assert a.union(b).prot() == a.prot() | b.prot()
    assert a.intersect(b) == b.intersect(a)
    assert a.union(b) == b.union(a)
    assert a.superset_of(a.intersect(b))
    assert a.union(b).superset_of(a)
    assert a.intersect(a) == a
    assert a.union(a) == a


@given(access_types, access_types, access_types)
def test_access_superset_of_is_transitive(a: AccessType, b: AccessType, c: AccessType):
    if a.superset_of(b) and b.superset_of(c):
        assert a.superset_of(c)


@all_access
def test_access_any(at: AccessType):
    assert at.any() is (at != AccessType.NO_ACCESS)


@pytest.mark.parametrize(
    ("at", "prot"),
    [
        (AccessType.NO_ACCESS, 0),
        (AccessType.READ, mmap.PROT_READ),
        (AccessType.WRITE, mmap.PROT_WRITE),
        (AccessType.EXECUTE, mmap.PROT_EXEC),
        (AccessType.READ_WRITE, mmap.PROT_READ | mmap.PROT_WRITE),
        (AccessType.READ_EXECUTE, mmap.PROT_READ | mmap.PROT_EXEC),
        (AccessType.ANY, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),
    ],
    ids=str,
)
def test_access_prot_vectors(at: AccessType, prot: int):
    assert at.prot() == prot
    assert AccessType.from_prot(prot) == at


@all_access
def test_access_prot_round_trip(at: AccessType):
    p = at.prot()
    assert 0 <= p <= 7
    back = AccessType.from_prot(p)
    assert back == at
    assert type(back) is AccessType


def test_access_prot_is_a_bijection_on_all_masks():
    prots = {at.prot() for at in ALL}
    assert prots == set(range(8))
    for p in range(8):
        assert AccessType.from_prot(p).prot() == p


@pytest.mark.parametrize("bad", [8, 0x10, 0xFF, 1 << 40, -1, -8])
def test_access_from_prot_rejects_unknown_bits(bad: int):
    with pytest.raises(ValueError, match="prot has unknown bits"):
        AccessType.from_prot(bad)


@pytest.mark.parametrize("bad", [1.0, "1", None, True, False, b"\x01"])
def test_access_from_prot_rejects_non_ints(bad: object):
    with pytest.raises(TypeError, match="prot must be an int") as info:
        AccessType.from_prot(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("which", ["read", "write", "execute"])
@pytest.mark.parametrize("bad", [1, 0, None, "yes", 1.0])
def test_access_rejects_non_bool_flags(which: str, bad: object):
    with pytest.raises(TypeError, match=f"{which} must be a bool") as info:
        AccessType(**{which: bad})  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("field", ["read", "write", "execute"])
def test_access_is_immutable(field: str):
    at = AccessType.READ
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(at, field, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(at, field)
    assert str(AccessType.READ) == "r--"


def test_access_rejects_other_attributes():
    at = AccessType.READ
    # Python 3.11's frozen slotted dataclasses raise TypeError here rather
    # than FrozenInstanceError; either way nothing may change.
    with pytest.raises((AttributeError, TypeError)):
        at.other = 1  # type: ignore[attr-defined]
    assert not hasattr(at, "other")


@all_access
def test_access_hash_and_equality(at: AccessType):
    twin = AccessType(at.read, at.write, at.execute)
    assert twin == at
    assert hash(twin) == hash(at)
    assert len(set(ALL)) == 8


@all_access
def test_access_pickle_and_copy_round_trip(at: AccessType):
    for clone in (pickle.loads(pickle.dumps(at)), copy.copy(at), copy.deepcopy(at)):
        assert clone == at
