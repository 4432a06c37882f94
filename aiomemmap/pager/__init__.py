"""Real memory: a range of a real process whose pages the engine serves.

A client process maps a file as ordinary memory (:func:`~aiomemmap.pager.
client.map_file` returns a :class:`~aiomemmap.pager.client.Region`): the first
touch of each page is a fault that the kernel reports on a userfaultfd, which
the client hands to the engine's :class:`~aiomemmap.pager.server.Pager`; the
pager reads the bytes through the engine's :class:`~aiomemmap.CachedFile` and
installs them; every later touch runs at memory speed, with no Python in the
way.

Where the pages live
--------------------
A missing-page fault on a shared mapping is resolved inside the very file
the client mapped, at the faulting offset; and a region is contiguous in the
file's offsets. The engine's :class:`~aiomemmap.MemoryFile` allocates a
cached file's pages wherever it has room, so a client cannot map the cache
itself as one contiguous range. Hence the decision:

* **A file mapped as real memory gets a memfd of its own** (one per file
  and client uid: :mod:`~aiomemmap.pager.file_pages`) whose offsets are the
  file's offsets, ``size`` rounded up to pages, sealed against resizing.
  Clients map it ``MAP_SHARED`` and register it for missing-page faults
  only: a page once installed is shared by every client of that file and
  uid, and never faults again.
* **Pages are published whole and atomically.** The pager reads the bytes
  of a fault-around chunk through the cached file (its own buffer, which no
  client can see), then installs them with one ``UFFDIO_COPY``: a page is
  either absent (and faults) or complete. The pager never writes into that
  memfd in place and never reads it through a mapping of its own, since
  with missing-only registration a half-written page, or a hole read as a
  zero page, would be seen by clients without a fault.
* **Private regions are filled through the same pages.** A client asking
  for a private (copy-on-write) region maps the same memfd
  ``MAP_PRIVATE`` and registers it for missing- and minor-page faults. Its
  faults are answered by writing the chunk's complete pages into the memfd
  (``pwrite``: the kernel keeps each new page locked until it is whole, and
  every fault or read of it waits for that lock, so the shared clients of
  the memfd still never see half a page) and mapping them with
  ``UFFDIO_CONTINUE``, which also replaces a poison marker when a page is
  repaired. Its clean pages are therefore the page cache's, which a punch
  revokes, while the pages it wrote are its own and survive (the rule of
  Linux, and gVisor, for a private mapping of a changing file).
  ``UFFDIO_COPY`` would give it anonymous pages, out of every punch's
  reach: it is never used for a private region. The pager reads from
  ``/proc/PID/smaps`` how the client mapped and registered its region and
  refuses anything else than these two kinds.
* **The client's descriptor reaches only that memfd.** Clients of another
  uid get another memfd, so a client that writes into its mapping (a
  shared memfd cannot be handed out read-only and still be registered)
  reaches only processes of its own uid, which could already write into
  each other's memory.

This is a second copy of the pages: the cached file keeps them in the
engine's memory file as well. The real-memory copy is not counted by the
engine's budget, but it follows it: the file's memfd is a mapping space of
the cached file, so every page the cache evicts (or a truncation or
revalidation drops) is punched out of it too; at most about twice the
budget is resident. It keeps the cached file unchanged and its invariants
intact for this first version. The follow-up is to let a cached file keep
its page cache in such a file-offset memfd, allocated and evicted under the
same budget, so that the engine's cache *is* the client's memory: faults
are then answered from pages already in place (``UFFDIO_CONTINUE`` with
minor-fault registration, a fetch published whole before any client may
see it), and evictions and invalidations punch holes in the one copy,
which every client refaults.

The rules of fault service (each measured on Linux 6)
-----------------------------------------------------
* read a whole batch of messages before serving its faults; the pager asks
  for no non-cooperative events, since file content is the right answer
  either way;
* ``EAGAIN`` from a copy means an event is in flight (or the copy stopped
  at a page already there): resume after the part copied, or retry on a
  short timer;
* ``EEXIST``: the page is present (a duplicate fault, or another client's
  fault installed it): wake it, go on with the next page;
* never answer a fault with a bare wake on a page believed installed;
* ``ENOENT``: the client unmapped its region: drop it; ``ESRCH``: the
  client has exited;
* a page whose bytes cannot be read is poisoned (``UFFDIO_POISON``, that
  page only): a raw access gets ``SIGBUS``, a checked read ``BusError``,
  never zeros; the pager reads it again in the background, backing off, and
  copies the bytes over the marker once they come (punching the page out of
  the shared memfd first if another client has it, since the marker stays
  in this client's page table until a copy replaces it);
* an invalidation of the cached file revokes, then punches, the pages out
  of the shared memfd (see :mod:`~aiomemmap.pager.file_pages`): every
  client refaults them;
* fault service never waits for the client.

A client that touches its region from the engine's own event-loop thread
would wait forever for a fault that thread must serve: checked reads refuse
(``WrongLoopError``); raw access is the caller's responsibility.

Modules: :mod:`~aiomemmap.pager.protocol` (the socket messages),
:mod:`~aiomemmap.pager.client` (``map_file``, ``Region``; standard library
and the core only, so a client process starts light),
:mod:`~aiomemmap.pager.watchdog` (a client fails fast when its engine
dies), :mod:`~aiomemmap.pager.file_pages`,
:mod:`~aiomemmap.pager.fault_around`, :mod:`~aiomemmap.pager.session` (one
client's fault service), :mod:`~aiomemmap.pager.server` (``Pager``),
:mod:`~aiomemmap.pager.in_process` (the pager of an engine of the client's
own process), :mod:`~aiomemmap.pager.child` (the child engine process that
``map_file`` starts by default), :mod:`~aiomemmap.pager.firecracker`
(Firecracker's handshake) and :mod:`~aiomemmap.pager.serve` (an engine
process serving real memory, for ``aiomemmap serve``). This package
module imports none of them.
"""
