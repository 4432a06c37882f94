"""The public API: every binding name is exported, and __all__ is tidy."""

from __future__ import annotations

import pytest

import aiomemmap

FOUNDATION = [
    "PAGE_SIZE",
    "HUGE_PAGE_SIZE",
    "page_round_down",
    "page_round_up",
    "is_page_aligned",
    "AddrRange",
    "MappableRange",
    "FileRange",
    "AccessType",
    "Translation",
    "TranslateResult",
    "check_translate_result",
    "BusError",
    "InvalidateOpts",
    "MLockMode",
    "MMapOpts",
    "Mappable",
    "MappingSpace",
    "MappingIdentity",
    "File",
    "BlockSeq",
    "copy_seq",
    "zero_seq",
    "MemoryFile",
    "MemoryKind",
    "MappingSet",
    "OrderedLock",
    "LockRank",
    "LockOrderError",
    "set_debug",
    "InvalidationBus",
    "AiomemmapError",
    "AlignmentError",
    "RefCountError",
    "OutOfMemoryError",
    "ClosedError",
    "InvariantError",
    "WrongLoopError",
    "EvictableUser",
    "MemoryFileStatistics",
]


MAPPABLES = [
    "Backing",
    "BytesBacking",
    "LocalFileBacking",
    "FsspecBacking",
    "open_backing",
    "FaultInjectingBacking",
    "SharedMemory",
    "CachedFile",
    "NoReadahead",
    "FixedReadahead",
    "AdaptiveReadahead",
    "CacheStatistics",
    "StaleVersionError",
]


ADDRSPACE = [
    "AddressSpace",
    "MRemapMove",
    "Advice",
    "AddressSpaceError",
    "MemoryFault",
    "AddressSpaceStatistics",
    "Limits",
    "Platform",
    "NoPlatform",
]


ENGINE = [
    "Engine",
    "EngineThread",
    "default_engine",
    "open",
    "open_async",
    "RemoteFile",
    "AsyncRemoteFile",
    "EngineStatistics",
]


REALMEM = ["map_file", "Region", "Pager"]


@pytest.mark.parametrize(
    "names",
    [FOUNDATION, MAPPABLES, ADDRSPACE, ENGINE, REALMEM],
    ids=["foundation", "mappables", "addrspace", "engine", "realmem"],
)
def test_public_api_exports_every_layer_name(names):
    missing = [n for n in names if not hasattr(aiomemmap, n)]
    assert missing == []
    assert set(names) <= set(aiomemmap.__all__)


def test_public_api_all_is_sorted_complete_and_public():
    assert aiomemmap.__all__ == sorted(
        aiomemmap.__all__, key=lambda n: (not n.isupper(), n)
    )
    assert all(not n.startswith("_") for n in aiomemmap.__all__)
    assert all(hasattr(aiomemmap, n) for n in aiomemmap.__all__)
    public = {
        n
        for n, v in vars(aiomemmap).items()
        if not n.startswith("_")
        and not isinstance(v, type(aiomemmap))
        and n != "annotations"
    }
    assert public == set(aiomemmap.__all__)


def test_public_api_errors_share_one_root_and_builtin_bases():
    for name in aiomemmap.__all__:
        obj = getattr(aiomemmap, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, aiomemmap.AiomemmapError), name
    assert issubclass(aiomemmap.AlignmentError, ValueError)
    assert issubclass(aiomemmap.RefCountError, RuntimeError)
    assert issubclass(aiomemmap.OutOfMemoryError, MemoryError)
    assert issubclass(aiomemmap.AddressSpaceError, OSError)
    assert issubclass(aiomemmap.LockOrderError, RuntimeError)
    assert issubclass(aiomemmap.InvariantError, AssertionError)
    assert issubclass(aiomemmap.WrongLoopError, RuntimeError)
    assert issubclass(aiomemmap.StaleVersionError, OSError)
    assert issubclass(aiomemmap.MemoryFault, aiomemmap.AddressSpaceError)


def test_public_api_bus_error_message_and_cause():
    cause = OSError(5, "I/O error")
    err = aiomemmap.BusError(cause)
    assert err.err is cause
    assert str(err) == "BusError: " + str(cause)
    assert err.bytes_done == 0
    assert err.data == b""
    with pytest.raises(TypeError, match="exception"):
        aiomemmap.BusError("not an exception")  # type: ignore[arg-type]


def test_public_api_address_space_error_carries_errno():
    import errno

    err = aiomemmap.AddressSpaceError(errno.EINVAL)
    assert err.errno == errno.EINVAL
    assert "Invalid argument" in str(err)
    fault = aiomemmap.MemoryFault(errno.EPERM, "no write permission")
    assert fault.errno == errno.EPERM
    assert fault.bytes_done == 0
    assert fault.data == b""


def test_public_api_open_is_ours_and_the_builtin_is_untouched():
    import builtins

    assert aiomemmap.open is not builtins.open
    assert aiomemmap.open.__module__ == "aiomemmap.faces.remote_file"
    assert builtins.open.__module__ in ("io", "_io")


def test_public_api_real_memory_client_loads_no_engine():
    import subprocess
    import sys

    code = (
        "import sys, aiomemmap; aiomemmap.map_file; aiomemmap.Region; "
        "print(sorted(m for m in sys.modules if m.startswith('aiomemmap.') "
        "and m.split('.')[1] not in ('_core', 'pager')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
