"""aiomemmap: an asyncio, event-driven memory-mapping engine.

The public API, by layer (each layer builds only on the ones before it):

* pages and ranges: :data:`PAGE_SIZE`, :func:`page_round_up`,
  :class:`AddrRange`, :class:`MappableRange`, :class:`FileRange`,
  :class:`AccessType`;
* the memmap interfaces: :class:`Mappable`, :class:`MappingSpace`,
  :class:`MappingIdentity`, :class:`File`, :class:`Translation`,
  :func:`check_translate_result`, :class:`BlockSeq`;
* the memory file: :class:`MemoryFile`;
* the mapping set, ordered locks and the invalidation bus:
  :class:`MappingSet`, :class:`OrderedLock`, :class:`InvalidationBus`.
"""

from __future__ import annotations

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
from aiomemmap._core.errors import LockOrderError as LockOrderError
from aiomemmap._core.errors import MemoryFault as MemoryFault
from aiomemmap._core.errors import OutOfMemoryError as OutOfMemoryError
from aiomemmap._core.errors import RefCountError as RefCountError
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
from aiomemmap.backings.base import BytesBacking as BytesBacking
from aiomemmap.backings.base import FaultInjectingBacking as FaultInjectingBacking
from aiomemmap.backings.base import FsspecBacking as FsspecBacking
from aiomemmap.backings.base import HttpBacking as HttpBacking
from aiomemmap.backings.base import LocalFileBacking as LocalFileBacking
from aiomemmap.backings.base import RetryPolicy as RetryPolicy
from aiomemmap.backings.base import open_backing as open_backing
from aiomemmap.mappables.cached_file import CachedFile as CachedFile
from aiomemmap.mappables.cached_file import CacheStatistics as CacheStatistics
from aiomemmap.mappables.readahead import AdaptiveReadahead as AdaptiveReadahead
from aiomemmap.mappables.readahead import FixedReadahead as FixedReadahead
from aiomemmap.mappables.readahead import NoReadahead as NoReadahead
from aiomemmap.mappables.readahead import ReadaheadHint as ReadaheadHint
from aiomemmap.mappables.shared_memory import SharedMemory as SharedMemory
from aiomemmap.memmap.bus import BusStatistics as BusStatistics
from aiomemmap.memmap.bus import InvalidationBus as InvalidationBus
from aiomemmap.memmap.interfaces import File as File
from aiomemmap.memmap.interfaces import InvalidateOpts as InvalidateOpts
from aiomemmap.memmap.interfaces import Mappable as Mappable
from aiomemmap.memmap.interfaces import MappingIdentity as MappingIdentity
from aiomemmap.memmap.interfaces import MappingSpace as MappingSpace
from aiomemmap.memmap.interfaces import MLockMode as MLockMode
from aiomemmap.memmap.interfaces import MMapOpts as MMapOpts
from aiomemmap.memmap.interfaces import TranslateResult as TranslateResult
from aiomemmap.memmap.interfaces import Translation as Translation
from aiomemmap.memmap.interfaces import check_translate_result as check_translate_result
from aiomemmap.memmap.mapping_set import MappingSet as MappingSet
from aiomemmap.mm.address_space import AddressSpace as AddressSpace
from aiomemmap.mm.options import (
    AddressSpaceStatistics as AddressSpaceStatistics,
)
from aiomemmap.mm.options import Advice as Advice
from aiomemmap.mm.options import Layout as Layout
from aiomemmap.mm.options import Limits as Limits
from aiomemmap.mm.options import MRemapMove as MRemapMove
from aiomemmap.pgalloc.memory_file import MemoryFile as MemoryFile
from aiomemmap.pgalloc.memory_file import MemoryFileStatistics as MemoryFileStatistics
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
    "Backing",
    "BlockSeq",
    "BusError",
    "BusStatistics",
    "BytesBacking",
    "CacheStatistics",
    "CachedFile",
    "ClosedError",
    "FaultInjectingBacking",
    "File",
    "FileRange",
    "FixedReadahead",
    "FsspecBacking",
    "HttpBacking",
    "InvalidateOpts",
    "InvalidationBus",
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
    "NoReadahead",
    "OrderedLock",
    "OrderedRWLock",
    "OutOfMemoryError",
    "ReadaheadHint",
    "RefCountError",
    "RetryPolicy",
    "SharedMemory",
    "TranslateResult",
    "Translation",
    "check_translate_result",
    "copy_seq",
    "is_debug",
    "is_page_aligned",
    "open_backing",
    "page_round_down",
    "page_round_up",
    "set_debug",
    "zero_seq",
]
