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

from aiomemmap._access import AccessType as AccessType
from aiomemmap._address_space import AddressSpace as AddressSpace
from aiomemmap._addrspace_options import (
    AddressSpaceStatistics as AddressSpaceStatistics,
)
from aiomemmap._addrspace_options import Advice as Advice
from aiomemmap._addrspace_options import Layout as Layout
from aiomemmap._addrspace_options import Limits as Limits
from aiomemmap._addrspace_options import MRemapMove as MRemapMove
from aiomemmap._backing import Backing as Backing
from aiomemmap._backing import BytesBacking as BytesBacking
from aiomemmap._backing import FaultInjectingBacking as FaultInjectingBacking
from aiomemmap._backing import FsspecBacking as FsspecBacking
from aiomemmap._backing import HttpBacking as HttpBacking
from aiomemmap._backing import LocalFileBacking as LocalFileBacking
from aiomemmap._backing import RetryPolicy as RetryPolicy
from aiomemmap._backing import open_backing as open_backing
from aiomemmap._blockseq import BlockSeq as BlockSeq
from aiomemmap._blockseq import copy_seq as copy_seq
from aiomemmap._blockseq import zero_seq as zero_seq
from aiomemmap._bus import BusStatistics as BusStatistics
from aiomemmap._bus import InvalidationBus as InvalidationBus
from aiomemmap._cached_file import CachedFile as CachedFile
from aiomemmap._cached_file import CacheStatistics as CacheStatistics
from aiomemmap._debug import is_debug as is_debug
from aiomemmap._debug import set_debug as set_debug
from aiomemmap._errors import AccessDeniedError as AccessDeniedError
from aiomemmap._errors import AddressSpaceError as AddressSpaceError
from aiomemmap._errors import AiomemmapError as AiomemmapError
from aiomemmap._errors import AlignmentError as AlignmentError
from aiomemmap._errors import BusError as BusError
from aiomemmap._errors import ClosedError as ClosedError
from aiomemmap._errors import LockOrderError as LockOrderError
from aiomemmap._errors import MemoryFault as MemoryFault
from aiomemmap._errors import OutOfMemoryError as OutOfMemoryError
from aiomemmap._errors import RefCountError as RefCountError
from aiomemmap._locks import LockRank as LockRank
from aiomemmap._locks import OrderedLock as OrderedLock
from aiomemmap._locks import OrderedRWLock as OrderedRWLock
from aiomemmap._mapping_set import MappingSet as MappingSet
from aiomemmap._memfile import MemoryFile as MemoryFile
from aiomemmap._memfile import MemoryFileStatistics as MemoryFileStatistics
from aiomemmap._memfile import MemoryKind as MemoryKind
from aiomemmap._memmap import File as File
from aiomemmap._memmap import InvalidateOpts as InvalidateOpts
from aiomemmap._memmap import Mappable as Mappable
from aiomemmap._memmap import MappingIdentity as MappingIdentity
from aiomemmap._memmap import MappingSpace as MappingSpace
from aiomemmap._memmap import MLockMode as MLockMode
from aiomemmap._memmap import MMapOpts as MMapOpts
from aiomemmap._memmap import TranslateResult as TranslateResult
from aiomemmap._memmap import Translation as Translation
from aiomemmap._memmap import check_translate_result as check_translate_result
from aiomemmap._pages import HUGE_PAGE_SIZE as HUGE_PAGE_SIZE
from aiomemmap._pages import PAGE_SIZE as PAGE_SIZE
from aiomemmap._pages import is_page_aligned as is_page_aligned
from aiomemmap._pages import page_round_down as page_round_down
from aiomemmap._pages import page_round_up as page_round_up
from aiomemmap._ranges import AddrRange as AddrRange
from aiomemmap._ranges import FileRange as FileRange
from aiomemmap._ranges import MappableRange as MappableRange
from aiomemmap._readahead import AdaptiveReadahead as AdaptiveReadahead
from aiomemmap._readahead import FixedReadahead as FixedReadahead
from aiomemmap._readahead import NoReadahead as NoReadahead
from aiomemmap._readahead import ReadaheadHint as ReadaheadHint
from aiomemmap._shared_memory import SharedMemory as SharedMemory

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
