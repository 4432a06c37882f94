"""Following the README leaves nothing unclosed.

Each example of the README's quick start runs in a child process, as a user
runs it, against a ``RangeHTTPServer`` on a thread of its own (the URL is
the only change), with ``-W error::ResourceWarning`` and the garbage
collector run at exit. Nothing may print "Unclosed client session",
"Unclosed connector" or any ``ResourceWarning`` on stderr, on the success
path or when the object is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Starts the server on a daemon thread and defines URL and MISSING.
PRELUDE = textwrap.dedent(
    """
    import asyncio
    import gc
    import io
    import threading

    from aiomemmap.tools.http_server import RangeHTTPServer

    def _serve():
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        srv = RangeHTTPServer()
        asyncio.run_coroutine_threadsafe(srv.start(), loop).result()
        srv.add("big.bin", bytes(range(256)) * 4096)
        return srv

    SERVER = _serve()
    URL = SERVER.url("big.bin")
    MISSING = SERVER.url("missing.bin")
    """
)

EXAMPLES = {
    "open": """
        import pyarrow as pa
        import pyarrow.parquet as pq

        import aiomemmap

        sink = io.BytesIO()
        pq.write_table(pa.table({"x": list(range(1000))}), sink)
        SERVER.add("data.parquet", sink.getvalue())
        with aiomemmap.open(SERVER.url("data.parquet")) as f:
            print(pq.read_table(f, columns=["x"]).num_rows)
        try:
            aiomemmap.open(MISSING)
        except FileNotFoundError:
            print("missing")
    """,
    "open_async": """
        import aiomemmap

        async def main() -> None:
            async with await aiomemmap.open_async(URL) as f:
                print(await f.read(16), await f.pread(f.size - 16, 16))
            try:
                await aiomemmap.open_async(MISSING)
            except FileNotFoundError:
                print("missing")

        asyncio.run(main())
    """,
    "engine": """
        from aiomemmap import Engine

        async def main() -> None:
            async with Engine(cache_limit=64 << 20) as engine:
                f = await engine.open_file(URL)
                again = await engine.open_file(URL)
                print(f is again, await f.read(0, 16))
                print(f.statistics())
                await engine.close_file(f)
                await engine.close_file(again)
                try:
                    await engine.open_file(MISSING)
                except FileNotFoundError:
                    print("missing")

        asyncio.run(main())
    """,
    "address_space": """
        from aiomemmap import AddressSpace, CachedFile, MemoryFile, MMapOpts
        from aiomemmap import open_backing

        async def main(url) -> None:
            with MemoryFile() as mf:
                backing = open_backing(url)
                async with CachedFile(backing, mf) as f, AddressSpace(mf) as asp:
                    size = await backing.size()
                    opts = MMapOpts(
                        length=size, mappable=f, mapping_identity=f, private=True
                    )
                    addr = await asp.mmap(opts)
                    header = await asp.copy_in(addr, 4096)
                    await asp.copy_out(addr, b"patched")
                    child = await asp.fork()
                    print(header[:16], await child.copy_in(addr, 7))
                    await child.aclose()
                    print(asp.maps())
                await backing.aclose()

        asyncio.run(main(URL))
    """,
    "cached_file_missing": """
        from aiomemmap import CachedFile, MemoryFile, open_backing

        async def main() -> None:
            with MemoryFile() as mf:
                backing = open_backing(MISSING)
                async with CachedFile(backing, mf) as f:
                    try:
                        await f.read(0, 16)
                    except FileNotFoundError:
                        print("missing")
                await backing.aclose()

        asyncio.run(main())
    """,
    "fsspec_backing": """
        from aiomemmap import CachedFile, MemoryFile, open_backing

        async def main() -> None:
            with MemoryFile() as mf:
                backing = open_backing(URL, block_size_hint=65536)
                async with CachedFile(backing, mf) as f:
                    print(await f.read(0, 16))
                await backing.aclose()

        asyncio.run(main())
    """,
}

FORBIDDEN = ("Unclosed client session", "Unclosed connector", "ResourceWarning")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_leaves_nothing_unclosed(name: str) -> None:
    source = PRELUDE + textwrap.dedent(EXAMPLES[name]) + "\ngc.collect()\n"
    proc = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", source],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), proc.stderr
    for text in FORBIDDEN:
        assert text not in proc.stderr, proc.stderr
