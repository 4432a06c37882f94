"""Map a remote file lazily, read scattered ranges, see how little was fetched.

A 64 MiB file is served over HTTP on 127.0.0.1 with 2 ms of latency per
request (or pass any URL fsspec understands: ``python
examples/lazy_remote_file.py s3://bucket/key``). The file is mapped into an
address space through a :class:`~aiomemmap.CachedFile`; scattered reads of a
few hundred bytes each, done by concurrent tasks, fault in only the pages
they touch. The server is the package's HTTP test server,
``aiomemmap.tools.http_server.RangeHTTPServer``.

Run it with ``python examples/lazy_remote_file.py [URL]``.
"""

from __future__ import annotations

import asyncio
import random
import sys

from aiomemmap import (
    PAGE_SIZE,
    AccessType,
    AddressSpace,
    Advice,
    CachedFile,
    MemoryFile,
    MMapOpts,
    open_backing,
)
from aiomemmap.tools.http_server import RangeHTTPServer

SIZE = 64 << 20
READS = 64
READ_LENGTH = 300


async def read_scattered(url: str, expected: bytes | None) -> None:
    backing = open_backing(url)
    with MemoryFile("lazy-remote") as mf:
        cf = CachedFile(backing, mf, name=url)
        try:
            async with AddressSpace(mf) as asp:
                size = await backing.size()
                addr = await asp.mmap(
                    MMapOpts(
                        length=size,
                        mappable=cf,
                        mapping_identity=cf,
                        perms=AccessType.READ,
                        max_perms=AccessType.READ,
                    )
                )
                # Scattered reads: tell the file not to read ahead.
                await asp.madvise(addr, size, Advice.RANDOM)
                rng = random.Random(3)
                offsets = sorted(
                    rng.randrange(size - READ_LENGTH) for _ in range(READS)
                )

                async def read(off: int) -> None:
                    data = await asp.copy_in(addr + off, READ_LENGTH)
                    if expected is not None:
                        assert data == expected[off : off + READ_LENGTH], hex(off)

                async with asyncio.TaskGroup() as tg:
                    for off in offsets:
                        tg.create_task(read(off))
                print(asp.maps().splitlines()[0])
                st = cf.statistics()
                asp_st = asp.statistics()
            read_bytes = READS * READ_LENGTH
            print(f"file size      {size / (1 << 20):.1f} MiB")
            print(
                f"bytes read     {read_bytes} in {READS} reads of {READ_LENGTH} bytes"
            )
            print(
                f"bytes fetched  {st.bytes_fetched} in {st.fetches} fetches "
                f"({100 * st.bytes_fetched / size:.2f}% of the file)"
            )
            print(
                f"resident       {asp_st.rss // PAGE_SIZE} pages in the address space"
            )
            assert st.bytes_fetched <= 2 * READS * PAGE_SIZE
            if expected is not None:
                print("every byte read matches the source")
        finally:
            await cf.aclose()
            await backing.aclose()


async def main() -> None:
    if len(sys.argv) > 1:
        await read_scattered(sys.argv[1], None)
    else:
        data = random.Random(0).randbytes(SIZE)
        async with RangeHTTPServer(latency=0.002) as srv:
            srv.add("big.bin", data)
            await read_scattered(srv.url("big.bin"), data)
            print(
                f"the server answered {srv.requests} requests "
                f"and sent {srv.bytes_sent} bytes"
            )
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
