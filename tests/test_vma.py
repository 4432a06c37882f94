"""Vma and pma values: gVisor's merge and split rules, identity references."""

from __future__ import annotations

import pytest

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpaceStatistics,
    Advice,
    Layout,
    Limits,
    MemoryFile,
    MLockMode,
    MRemapMove,
)
from aiomemmap._core.segments import NO_MERGE, SegmentMap
from aiomemmap.mm.pma import Pma, merge_pmas, split_pma
from aiomemmap.mm.vma import Vma, make_vma_functions

P = PAGE_SIZE


class Identity:
    """A MappingIdentity that counts references."""

    def __init__(self) -> None:
        self.refs = 1

    def inc_ref(self) -> None:
        self.refs += 1

    async def dec_ref(self) -> None:
        self.refs -= 1

    def mapped_name(self) -> str:
        return "/x"

    def device_id(self) -> int:
        return 0

    def inode_id(self) -> int:
        return 1

    async def msync(self, mr: object) -> None:
        return None


MAPPABLE = object()


def vma(**changes: object) -> Vma:
    fields: dict[str, object] = {
        "mappable": None,
        "offset": 0,
        "real_perms": AccessType.READ_WRITE,
        "max_perms": AccessType.ANY,
        "private": True,
        "grows_down": False,
        "dontfork": False,
        "mlock_mode": MLockMode.NONE,
        "identity": None,
        "name": "",
    }
    fields.update(changes)
    return Vma(**fields)  # type: ignore[arg-type]


def vma_map() -> tuple[SegmentMap[Vma], list[object]]:
    dropped: list[object] = []
    merge, split = make_vma_functions(dropped.append)
    return SegmentMap(merge, split), dropped


def test_vma_effective_perms_and_private_data() -> None:
    v = vma(real_perms=AccessType(False, True, False))
    assert v.effective_perms == AccessType.READ_WRITE
    assert v.is_private_data
    assert not vma(real_perms=AccessType.READ).is_private_data
    assert not vma(grows_down=True).is_private_data
    assert not vma(private=False).is_private_data
    assert vma(private=False, max_perms=AccessType.ANY).writable_mapping
    assert not vma(private=False, max_perms=AccessType.READ).writable_mapping
    assert not vma(private=True).writable_mapping


def test_adjacent_identical_anonymous_vmas_merge() -> None:
    vmas, dropped = vma_map()
    vmas.insert(0, P, vma())
    vmas.insert(P, 2 * P, vma())
    assert len(vmas) == 1
    assert dropped == []


@pytest.mark.parametrize(
    "change",
    [
        {"real_perms": AccessType.READ},
        {"max_perms": AccessType.READ_WRITE},
        {"private": False},
        {"grows_down": True},
        {"dontfork": True},
        {"mlock_mode": MLockMode.EAGER},
        {"name": "[heap]"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_vmas_differing_in_anything_do_not_merge(change: dict[str, object]) -> None:
    vmas, _ = vma_map()
    vmas.insert(0, P, vma())
    vmas.insert(P, 2 * P, vma(**change))
    assert len(vmas) == 2


def test_file_vmas_merge_only_with_contiguous_offsets_and_same_identity() -> None:
    ident = Identity()
    vmas, dropped = vma_map()
    vmas.insert(0, P, vma(mappable=MAPPABLE, identity=ident, offset=0))
    vmas.insert(2 * P, 3 * P, vma(mappable=MAPPABLE, identity=ident, offset=5 * P))
    vmas.insert(P, 2 * P, vma(mappable=MAPPABLE, identity=ident, offset=2 * P))
    assert len(vmas) == 3
    other = Identity()
    vmas.insert(3 * P, 4 * P, vma(mappable=MAPPABLE, identity=other, offset=6 * P))
    assert len(vmas) == 4
    vmas.insert(4 * P, 5 * P, vma(mappable=MAPPABLE, identity=other, offset=7 * P))
    assert len(vmas) == 4
    # The merge gave up the second vma's identity reference.
    assert dropped == [other]


def test_vma_split_takes_an_identity_reference_and_shifts_the_offset() -> None:
    ident = Identity()
    vmas, _ = vma_map()
    vmas.insert(0, 4 * P, vma(mappable=MAPPABLE, identity=ident, offset=8 * P))
    vmas.split_at(P)
    left, right = list(vmas)
    assert ident.refs == 2
    assert left.value.offset == 8 * P
    assert right.value.offset == 9 * P
    anon, _ = vma_map()
    anon.insert(0, 4 * P, vma())
    anon.split_at(2 * P)
    assert [s.value.offset for s in anon] == [0, 0]


def test_vma_merge_function_refuses_directly() -> None:
    merge, _ = make_vma_functions(lambda i: None)
    assert merge(0, P, 2 * P, vma(), vma(name="x")) is NO_MERGE


def pma(offset: int, **changes: object) -> Pma:
    with MemoryFile("t") as mf:
        pass
    fields: dict[str, object] = {
        "file": changes.pop("file", mf),
        "offset": offset,
        "translate_perms": AccessType.ANY,
        "effective_perms": AccessType.READ_WRITE,
        "max_perms": AccessType.ANY,
    }
    fields.update(changes)
    kw = {
        "need_cow": fields.pop("need_cow", False),
        "private": fields.pop("private", True),
    }
    return Pma(**fields, **kw)  # type: ignore[arg-type]


def test_pmas_merge_when_contiguous_in_one_file_with_equal_perms() -> None:
    a = pma(0)
    b = pma(P, file=a.file)
    merged = merge_pmas(0, P, 2 * P, a, b)
    assert isinstance(merged, Pma)
    assert merged.offset == 0
    assert merged.blocks is None
    assert merge_pmas(0, P, 2 * P, a, pma(2 * P, file=a.file)) is NO_MERGE
    assert merge_pmas(0, P, 2 * P, a, pma(P)) is NO_MERGE
    assert merge_pmas(0, P, 2 * P, a, pma(P, file=a.file, need_cow=True)) is NO_MERGE
    assert (
        merge_pmas(0, P, 2 * P, a, pma(P, file=a.file, effective_perms=AccessType.READ))
        is NO_MERGE
    )
    assert merge_pmas(0, P, 2 * P, a, pma(P, file=a.file, private=False)) is NO_MERGE


def test_pma_split_shifts_the_file_offset_and_drops_nothing() -> None:
    left, right = split_pma(0, 4 * P, pma(8 * P), P)
    assert (left.offset, right.offset) == (8 * P, 9 * P)
    assert left.fr is None
    assert right.fr is None
    kept = pma(0).with_perms(AccessType.READ, AccessType.ANY, need_cow=False)
    assert kept.effective_perms == AccessType.READ


def test_limits_and_layout_validate() -> None:
    assert Limits().address_space is None
    with pytest.raises(ValueError, match="data"):
        Limits(data=-1)
    with pytest.raises(TypeError, match="memlock"):
        Limits(memlock="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page-aligned"):
        Layout(min_addr=1)
    with pytest.raises(ValueError, match="min_addr"):
        Layout(
            min_addr=P * 4, max_addr=P * 2, bottom_up_base=P * 4, top_down_base=P * 4
        )
    with pytest.raises(ValueError, match="bottom_up_base"):
        Layout(min_addr=P, max_addr=P * 4, bottom_up_base=P * 8, top_down_base=P * 2)
    with pytest.raises(TypeError, match="top_down"):
        Layout(top_down=1)  # type: ignore[arg-type]


def test_enums_carry_linux_values() -> None:
    assert int(Advice.DONTNEED) == 4
    assert int(Advice.DONTFORK) == 10
    assert int(Advice.DOFORK) == 11
    assert {m.name for m in MRemapMove} == {"NO_MOVE", "MAY_MOVE", "MUST_MOVE"}
    stats = AddressSpaceStatistics(1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert stats.cow_copies == 9
