"""The ``aiomemmap cat`` command: a byte range of any URL, through the engine.

The file is opened with :func:`~aiomemmap.open_backing`, paged by a
:class:`~aiomemmap.CachedFile` and mapped shared and read-only into an
:class:`~aiomemmap.AddressSpace`; the range is read with ``copy_in`` and
written out as it arrives.
"""

from __future__ import annotations

from typing import BinaryIO, Final

from aiomemmap._core.access import AccessType
from aiomemmap._core.pages import page_round_down, page_round_up
from aiomemmap.backings.base import call_with_retry
from aiomemmap.backings.opener import open_backing
from aiomemmap.mappables.cached_file import CachedFile
from aiomemmap.memmap.interfaces import MMapOpts
from aiomemmap.mm.address_space import AddressSpace
from aiomemmap.mm.options import Advice
from aiomemmap.pgalloc.memory_file import MemoryFile

__all__ = ["cat"]

_CHUNK: Final = 1 << 20


async def cat(
    url: str, out: BinaryIO, *, offset: int = 0, length: int | None = None
) -> int:
    """Write ``length`` bytes of ``url`` from ``offset`` to ``out``.

    Only the pages of the range are mapped, and only those are fetched
    (with the readahead of a sequential read).

    Args:
        url: A local path or any URL :func:`~aiomemmap.open_backing` takes.
        out: A binary stream.
        offset: The first byte to write.
        length: How many bytes; ``None`` means up to the end of the file.

    Returns:
        The number of bytes written.

    Raises:
        ValueError: A negative ``offset`` or ``length``, a range that runs
            past the end of the file, or a bad URL.
        ImportError: The URL's protocol needs a package that is not
            installed.
        OSError: The file could not be found or read
            (``FileNotFoundError``, ``PermissionError``...).
        aiomemmap.BusError: The file failed while being read; ``.err`` is
            the cause.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    backing = open_backing(url)
    try:
        size = await call_with_retry(backing.size)
        if offset > size:
            raise ValueError(f"offset {offset} is past the end of {url} ({size} bytes)")
        end = size if length is None else offset + length
        if end > size:
            raise ValueError(
                f"range [{offset}, {end}) runs past the end of {url} ({size} bytes)"
            )
        if end == offset:
            return 0
        with MemoryFile("aiomemmap-cat") as mf:
            cf = CachedFile(backing, mf, name=url)
            try:
                return await _copy_mapped(cf, mf, offset, end, out)
            finally:
                await cf.aclose()
    finally:
        await backing.aclose()


async def _copy_mapped(
    cf: CachedFile, mf: MemoryFile, offset: int, end: int, out: BinaryIO
) -> int:
    """Map the pages of ``[offset, end)`` of ``cf`` and copy them to ``out``."""
    start_p, end_p = page_round_down(offset), page_round_up(end)
    async with AddressSpace(mf) as asp:
        addr = await asp.mmap(
            MMapOpts(
                length=end_p - start_p,
                mappable=cf,
                mapping_identity=cf,
                offset=start_p,
                perms=AccessType.READ,
                max_perms=AccessType.READ,
            )
        )
        await asp.madvise(addr, end_p - start_p, Advice.SEQUENTIAL)
        base = addr - start_p
        pos = offset
        while pos < end:
            data = await asp.copy_in(base + pos, min(_CHUNK, end - pos))
            out.write(data)
            pos += len(data)
    out.flush()
    return end - offset
