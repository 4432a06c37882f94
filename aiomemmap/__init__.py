"""aiomemmap: an asyncio, event-driven memory-mapping engine.

The public API, by layer (each layer builds only on the ones before it):

* pages and ranges: :data:`PAGE_SIZE`, :func:`page_round_up`,
  :class:`AddrRange`, :class:`MappableRange`, :class:`FileRange`,
  :class:`AccessType`;
* the memmap interfaces: :class:`Mappable`, :class:`MappingSpace`,
  :class:`MappingIdentity`, :class:`File`, :class:`Translation`,
  :func:`check_translate_result`, :class:`BlockSeq`;
* the memory file: :class:`MemoryFile`, and :class:`EvictableUser`, what a
  Mappable implements to have its pages evicted under the cache budget;
* the mapping set, ordered locks and the invalidation bus:
  :class:`MappingSet`, :class:`OrderedLock`, :class:`InvalidationBus`;
* backings, the Mappables and the address space: :class:`Backing`,
  :func:`open_backing`, :class:`CachedFile`, :class:`SharedMemory`,
  :class:`AddressSpace`, and the :class:`Platform` seam through which an
  address space's page mappings reach a host;
* the engine, which owns a memory file, a bus and the open files its users
  share, on the caller's loop or a thread of its own: :class:`Engine`,
  :class:`EngineThread`, :func:`default_engine`;
* the faces over an engine: :func:`open` (a synchronous, thread-safe
  :class:`RemoteFile` for pyarrow, h5py, zipfile...) and :func:`open_async`
  (an :class:`AsyncRemoteFile` on the caller's loop). ``aiomemmap.open``
  is a name of this package only: it shadows nothing inside it;
* real memory: :func:`map_file` maps a file into this process as a
  :class:`Region` whose pages an engine's :class:`Pager` serves through
  userfaultfd.

Every name is loaded on first use (PEP 562): ``import aiomemmap`` runs this
module alone, on the standard library, and ``aiomemmap.CachedFile`` imports
what a cached file needs. Only :class:`HttpBacking`, :class:`FsspecBacking`
and :func:`open_backing` of a URL that needs them load aiohttp or fsspec.
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import typing as _typing

if _typing.TYPE_CHECKING:
    from aiomemmap._core.access import AccessType as AccessType
    from aiomemmap._core.blockseq import BlockSeq as BlockSeq
    from aiomemmap._core.blockseq import copy_seq as copy_seq
    from aiomemmap._core.blockseq import zero_seq as zero_seq
    from aiomemmap._core.debug import is_debug as is_debug
    from aiomemmap._core.debug import set_debug as set_debug
    from aiomemmap._core.errors import AccessDeniedError as AccessDeniedError
    from aiomemmap._core.errors import AddressSpaceError as AddressSpaceError
    from aiomemmap._core.errors import AiomemmapError as AiomemmapError
    from aiomemmap._core.errors import AlignmentError as AlignmentError
    from aiomemmap._core.errors import BusError as BusError
    from aiomemmap._core.errors import ClosedError as ClosedError
    from aiomemmap._core.errors import InvariantError as InvariantError
    from aiomemmap._core.errors import LockOrderError as LockOrderError
    from aiomemmap._core.errors import MemoryFault as MemoryFault
    from aiomemmap._core.errors import OutOfMemoryError as OutOfMemoryError
    from aiomemmap._core.errors import RefCountError as RefCountError
    from aiomemmap._core.errors import StaleVersionError as StaleVersionError
    from aiomemmap._core.errors import WrongLoopError as WrongLoopError
    from aiomemmap._core.locks import LockRank as LockRank
    from aiomemmap._core.locks import OrderedLock as OrderedLock
    from aiomemmap._core.locks import OrderedRWLock as OrderedRWLock
    from aiomemmap._core.pages import HUGE_PAGE_SIZE as HUGE_PAGE_SIZE
    from aiomemmap._core.pages import PAGE_SIZE as PAGE_SIZE
    from aiomemmap._core.pages import is_page_aligned as is_page_aligned
    from aiomemmap._core.pages import page_round_down as page_round_down
    from aiomemmap._core.pages import page_round_up as page_round_up
    from aiomemmap._core.ranges import AddrRange as AddrRange
    from aiomemmap._core.ranges import FileRange as FileRange
    from aiomemmap._core.ranges import MappableRange as MappableRange
    from aiomemmap.backings.base import Backing as Backing
    from aiomemmap.backings.base import RetryPolicy as RetryPolicy
    from aiomemmap.backings.fsspec_backing import FsspecBacking as FsspecBacking
    from aiomemmap.backings.http import HttpBacking as HttpBacking
    from aiomemmap.backings.local import LocalFileBacking as LocalFileBacking
    from aiomemmap.backings.memory import BytesBacking as BytesBacking
    from aiomemmap.backings.opener import open_backing as open_backing
    from aiomemmap.backings.testing import (
        FaultInjectingBacking as FaultInjectingBacking,
    )
    from aiomemmap.engine.default import default_engine as default_engine
    from aiomemmap.engine.engine import Engine as Engine
    from aiomemmap.engine.engine import EngineStatistics as EngineStatistics
    from aiomemmap.engine.thread import EngineThread as EngineThread
    from aiomemmap.faces.async_file import AsyncRemoteFile as AsyncRemoteFile
    from aiomemmap.faces.async_file import open_async as open_async
    from aiomemmap.faces.remote_file import RemoteFile as RemoteFile
    from aiomemmap.faces.remote_file import open as open
    from aiomemmap.mappables.cached_file import CachedFile as CachedFile
    from aiomemmap.mappables.cached_file import CacheStatistics as CacheStatistics
    from aiomemmap.mappables.cached_file import ReadableBacking as ReadableBacking
    from aiomemmap.mappables.cached_view import CachedView as CachedView
    from aiomemmap.mappables.readahead import AdaptiveReadahead as AdaptiveReadahead
    from aiomemmap.mappables.readahead import FixedReadahead as FixedReadahead
    from aiomemmap.mappables.readahead import NoReadahead as NoReadahead
    from aiomemmap.mappables.readahead import ReadaheadHint as ReadaheadHint
    from aiomemmap.mappables.shared_memory import SharedMemory as SharedMemory
    from aiomemmap.memmap.bus import BusStatistics as BusStatistics
    from aiomemmap.memmap.bus import InvalidationBus as InvalidationBus
    from aiomemmap.memmap.interfaces import EvictableUser as EvictableUser
    from aiomemmap.memmap.interfaces import File as File
    from aiomemmap.memmap.interfaces import InvalidateOpts as InvalidateOpts
    from aiomemmap.memmap.interfaces import Mappable as Mappable
    from aiomemmap.memmap.interfaces import MappingIdentity as MappingIdentity
    from aiomemmap.memmap.interfaces import MappingSpace as MappingSpace
    from aiomemmap.memmap.interfaces import MLockMode as MLockMode
    from aiomemmap.memmap.interfaces import MMapOpts as MMapOpts
    from aiomemmap.memmap.interfaces import TranslateResult as TranslateResult
    from aiomemmap.memmap.interfaces import Translation as Translation
    from aiomemmap.memmap.interfaces import (
        check_translate_result as check_translate_result,
    )
    from aiomemmap.memmap.mapping_set import MappingSet as MappingSet
    from aiomemmap.mm.address_space import AddressSpace as AddressSpace
    from aiomemmap.mm.options import AddressSpaceStatistics as AddressSpaceStatistics
    from aiomemmap.mm.options import Advice as Advice
    from aiomemmap.mm.options import Layout as Layout
    from aiomemmap.mm.options import Limits as Limits
    from aiomemmap.mm.options import MRemapMove as MRemapMove
    from aiomemmap.mm.platform import NoPlatform as NoPlatform
    from aiomemmap.mm.platform import Platform as Platform
    from aiomemmap.pager.client import Region as Region
    from aiomemmap.pager.client import map_file as map_file
    from aiomemmap.pager.server import Pager as Pager
    from aiomemmap.pgalloc.memory_file import MemoryFile as MemoryFile
    from aiomemmap.pgalloc.memory_file import (
        MemoryFileStatistics as MemoryFileStatistics,
    )
    from aiomemmap.pgalloc.memory_file import MemoryKind as MemoryKind


__version__ = "0.1.0.dev0"

__all__ = [
    "HUGE_PAGE_SIZE",
    "PAGE_SIZE",
    "AccessDeniedError",
    "AccessType",
    "AdaptiveReadahead",
    "AddrRange",
    "AddressSpace",
    "AddressSpaceError",
    "AddressSpaceStatistics",
    "Advice",
    "AiomemmapError",
    "AlignmentError",
    "AsyncRemoteFile",
    "Backing",
    "BlockSeq",
    "BusError",
    "BusStatistics",
    "BytesBacking",
    "CacheStatistics",
    "CachedFile",
    "CachedView",
    "ClosedError",
    "Engine",
    "EngineStatistics",
    "EngineThread",
    "EvictableUser",
    "FaultInjectingBacking",
    "File",
    "FileRange",
    "FixedReadahead",
    "FsspecBacking",
    "HttpBacking",
    "InvalidateOpts",
    "InvalidationBus",
    "InvariantError",
    "Layout",
    "Limits",
    "LocalFileBacking",
    "LockOrderError",
    "LockRank",
    "MLockMode",
    "MMapOpts",
    "MRemapMove",
    "Mappable",
    "MappableRange",
    "MappingIdentity",
    "MappingSet",
    "MappingSpace",
    "MemoryFault",
    "MemoryFile",
    "MemoryFileStatistics",
    "MemoryKind",
    "NoPlatform",
    "NoReadahead",
    "OrderedLock",
    "OrderedRWLock",
    "OutOfMemoryError",
    "Pager",
    "Platform",
    "ReadableBacking",
    "ReadaheadHint",
    "RefCountError",
    "Region",
    "RemoteFile",
    "RetryPolicy",
    "SharedMemory",
    "StaleVersionError",
    "TranslateResult",
    "Translation",
    "WrongLoopError",
    "check_translate_result",
    "copy_seq",
    "default_engine",
    "is_debug",
    "is_page_aligned",
    "map_file",
    "open",
    "open_async",
    "open_backing",
    "page_round_down",
    "page_round_up",
    "set_debug",
    "zero_seq",
]

# Where each public name is defined, by name.
_MODULE_OF: _typing.Final[dict[str, str]] = {
    "AccessDeniedError": "aiomemmap._core.errors",
    "AccessType": "aiomemmap._core.access",
    "AdaptiveReadahead": "aiomemmap.mappables.readahead",
    "AddrRange": "aiomemmap._core.ranges",
    "AddressSpace": "aiomemmap.mm.address_space",
    "AddressSpaceError": "aiomemmap._core.errors",
    "AddressSpaceStatistics": "aiomemmap.mm.options",
    "Advice": "aiomemmap.mm.options",
    "AiomemmapError": "aiomemmap._core.errors",
    "AlignmentError": "aiomemmap._core.errors",
    "AsyncRemoteFile": "aiomemmap.faces.async_file",
    "Backing": "aiomemmap.backings.base",
    "BlockSeq": "aiomemmap._core.blockseq",
    "BusError": "aiomemmap._core.errors",
    "BusStatistics": "aiomemmap.memmap.bus",
    "BytesBacking": "aiomemmap.backings.memory",
    "CacheStatistics": "aiomemmap.mappables.cached_file",
    "CachedFile": "aiomemmap.mappables.cached_file",
    "CachedView": "aiomemmap.mappables.cached_view",
    "ReadableBacking": "aiomemmap.mappables.cached_file",
    "ClosedError": "aiomemmap._core.errors",
    "Engine": "aiomemmap.engine.engine",
    "EngineStatistics": "aiomemmap.engine.engine",
    "EngineThread": "aiomemmap.engine.thread",
    "EvictableUser": "aiomemmap.memmap.interfaces",
    "FaultInjectingBacking": "aiomemmap.backings.testing",
    "File": "aiomemmap.memmap.interfaces",
    "FileRange": "aiomemmap._core.ranges",
    "FixedReadahead": "aiomemmap.mappables.readahead",
    "FsspecBacking": "aiomemmap.backings.fsspec_backing",
    "HUGE_PAGE_SIZE": "aiomemmap._core.pages",
    "HttpBacking": "aiomemmap.backings.http",
    "InvalidateOpts": "aiomemmap.memmap.interfaces",
    "InvalidationBus": "aiomemmap.memmap.bus",
    "InvariantError": "aiomemmap._core.errors",
    "Layout": "aiomemmap.mm.options",
    "Limits": "aiomemmap.mm.options",
    "LocalFileBacking": "aiomemmap.backings.local",
    "LockOrderError": "aiomemmap._core.errors",
    "LockRank": "aiomemmap._core.locks",
    "MLockMode": "aiomemmap.memmap.interfaces",
    "MMapOpts": "aiomemmap.memmap.interfaces",
    "MRemapMove": "aiomemmap.mm.options",
    "Mappable": "aiomemmap.memmap.interfaces",
    "MappableRange": "aiomemmap._core.ranges",
    "MappingIdentity": "aiomemmap.memmap.interfaces",
    "MappingSet": "aiomemmap.memmap.mapping_set",
    "MappingSpace": "aiomemmap.memmap.interfaces",
    "MemoryFault": "aiomemmap._core.errors",
    "MemoryFile": "aiomemmap.pgalloc.memory_file",
    "MemoryFileStatistics": "aiomemmap.pgalloc.memory_file",
    "MemoryKind": "aiomemmap.pgalloc.memory_file",
    "NoPlatform": "aiomemmap.mm.platform",
    "NoReadahead": "aiomemmap.mappables.readahead",
    "OrderedLock": "aiomemmap._core.locks",
    "OrderedRWLock": "aiomemmap._core.locks",
    "OutOfMemoryError": "aiomemmap._core.errors",
    "Pager": "aiomemmap.pager.server",
    "PAGE_SIZE": "aiomemmap._core.pages",
    "Platform": "aiomemmap.mm.platform",
    "ReadaheadHint": "aiomemmap.mappables.readahead",
    "RefCountError": "aiomemmap._core.errors",
    "Region": "aiomemmap.pager.client",
    "RemoteFile": "aiomemmap.faces.remote_file",
    "RetryPolicy": "aiomemmap.backings.base",
    "SharedMemory": "aiomemmap.mappables.shared_memory",
    "StaleVersionError": "aiomemmap._core.errors",
    "TranslateResult": "aiomemmap.memmap.interfaces",
    "Translation": "aiomemmap.memmap.interfaces",
    "WrongLoopError": "aiomemmap._core.errors",
    "check_translate_result": "aiomemmap.memmap.interfaces",
    "copy_seq": "aiomemmap._core.blockseq",
    "default_engine": "aiomemmap.engine.default",
    "is_debug": "aiomemmap._core.debug",
    "is_page_aligned": "aiomemmap._core.pages",
    "map_file": "aiomemmap.pager.client",
    "open": "aiomemmap.faces.remote_file",
    "open_async": "aiomemmap.faces.async_file",
    "open_backing": "aiomemmap.backings.opener",
    "page_round_down": "aiomemmap._core.pages",
    "page_round_up": "aiomemmap._core.pages",
    "set_debug": "aiomemmap._core.debug",
    "zero_seq": "aiomemmap._core.blockseq",
}


def _load(name: str) -> object:
    """Import the module that defines ``name`` and keep the name here.

    Raises:
        AttributeError: ``name`` is not a public name of the package.
    """
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Return the module's names, the public ones loaded or not."""
    return sorted({*globals(), *__all__})


# Hidden from type checkers, which see every public name above with its type
# and should still report a misspelt one.
if not _typing.TYPE_CHECKING:
    __getattr__ = _load


# fsspec's cache type "aiomemmap" is registered when its module is imported;
# a program that imported fsspec's caches before this package gets it now.
# Otherwise nothing is imported here: ``import aiomemmap.faces.fsspec_cache``
# (or any use of the ``aiomemmap::`` protocol) registers it later.
if "fsspec.caching" in _sys.modules:
    _importlib.import_module("aiomemmap.faces.fsspec_cache")
