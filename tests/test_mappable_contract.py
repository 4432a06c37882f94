"""Run the Mappable contract suite against every Mappable of the package.

To add a Mappable, write a factory like :func:`make_shared_memory` and add one
line to :data:`FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from aiomemmap._memfile import MemoryFile
from aiomemmap._shared_memory import SharedMemory
from tests.mappable_contract import CONTRACT_CHECKS, Cleanup, Factory


async def make_shared_memory(
    size: int, contents: bytes
) -> tuple[SharedMemory, MemoryFile, Cleanup]:
    mf = MemoryFile("contract", chunk_size=2 * 1024 * 1024)
    sm = SharedMemory(mf, 0)
    assert await sm.write(0, contents) == len(contents)
    await sm.truncate(size)
    return sm, mf, sm.aclose


FACTORIES: dict[str, Factory] = {
    "shared_memory": make_shared_memory,
}


@pytest.fixture(params=list(FACTORIES), ids=list(FACTORIES))
def make_mappable(request: pytest.FixtureRequest) -> Factory:
    return FACTORIES[request.param]


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__[6:])
async def test_mappable_contract(
    make_mappable: Factory, check: Callable[[Factory], Awaitable[None]]
) -> None:
    await check(make_mappable)
