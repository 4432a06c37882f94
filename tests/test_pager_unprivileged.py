"""Clients whose userfaultfd reports user-mode faults only.

The kernel's own accesses of a missing page (a system call reading the
region) fail with ``EFAULT`` there; the pager installs pages on request so
that such a client's checked reads still work.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path

import anyio
import pytest

from aiomemmap import Engine
from aiomemmap._core.pages import PAGE_SIZE
from aiomemmap._core.uffd import (
    FEATURE_MINOR_SHMEM,
    FEATURE_POISON,
    REGISTER_MODE_MINOR,
    REGISTER_MODE_MISSING,
    Userfaultfd,
    buffer_address,
)
from aiomemmap.pager.fault_around import FaultAround
from aiomemmap.pager.file_pages import FilePages
from aiomemmap.pager.protocol import (
    MAX_POPULATE_BYTES,
    PopulateRequest,
    ProtocolError,
    decode_populate_reply,
    decode_populate_request,
    decode_register_reply,
    populate_request,
)
from aiomemmap.pager.session import Session

DEADLINE = 60.0
SIZE = 256 * 1024


def kernel_read(view: memoryview, a: int, b: int) -> bytes | int:
    """Read ``view[a:b]`` through a system call: the bytes, or the errno."""
    r, w = os.pipe()
    try:
        with view[a:b] as part:
            os.write(w, part)
        return os.read(r, b - a)
    except OSError as exc:
        return exc.errno or 0
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("private", [False, True])
async def test_populate_installs_what_a_system_call_then_reads(
    tmp_path: Path, private: bool
) -> None:
    data = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    path = tmp_path / "pages.bin"
    path.write_bytes(data)
    with anyio.fail_after(DEADLINE):
        async with Engine() as engine:
            cached = await engine.open_file(str(path))
            pages = FilePages("populate", SIZE)
            flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
            region = mmap.mmap(pages.fileno(), SIZE, flags=flags, prot=mmap.PROT_READ)
            uffd = Userfaultfd.create(
                features=FEATURE_MINOR_SHMEM if private else 0,
                optional_features=FEATURE_POISON,
                user_mode_only=True,
            )
            with buffer_address(region) as (start, _):
                pass
            mode = REGISTER_MODE_MISSING | (REGISTER_MODE_MINOR if private else 0)
            uffd.register(start, SIZE, mode)
            session = Session(
                uffd=uffd,
                start=start,
                pages=pages,
                cached_file=cached,
                policy=FaultAround(SIZE),
                client_pid=os.getpid(),
            )
            view = memoryview(region)
            try:
                session.start_serving()
                assert kernel_read(view, 0, 100) == 14  # EFAULT
                assert await session.populate(0, 2 * PAGE_SIZE) == []
                assert kernel_read(view, 0, 2 * PAGE_SIZE) == data[: 2 * PAGE_SIZE]
                reply = await session.answer(
                    populate_request(SIZE - PAGE_SIZE, PAGE_SIZE)
                )
                request = PopulateRequest(SIZE - PAGE_SIZE, PAGE_SIZE)
                assert decode_populate_reply(reply, request) == []
                assert (
                    kernel_read(view, SIZE - PAGE_SIZE, SIZE)
                    == data[SIZE - PAGE_SIZE :]
                )
                with pytest.raises(ProtocolError):
                    await session.answer(populate_request(SIZE, PAGE_SIZE))
                assert session.counters.poisoned == 0
            finally:
                view.release()
                await session.aclose()
                region.close()
                pages.close()
                await engine.close_file(cached)


def test_populate_messages_are_checked() -> None:
    assert decode_populate_request(populate_request(4096, 8192), 65536) == (
        PopulateRequest(4096, 8192)
    )
    for offset, length in (
        (1, 4096),
        (0, 0),
        (0, MAX_POPULATE_BYTES + 4096),
        (61440, 8192),
    ):
        with pytest.raises(ProtocolError):
            decode_populate_request(populate_request(offset, length), 65536)
    request = PopulateRequest(4096, 8192)
    bad = json.dumps({"ok": True, "poisoned": [0]}).encode()
    with pytest.raises(ProtocolError):
        decode_populate_reply(bad, request)
    assert decode_register_reply(b'{"ok": true}') == frozenset()
    assert decode_register_reply(b'{"ok": true, "requests": ["populate"]}') == {
        "populate"
    }
