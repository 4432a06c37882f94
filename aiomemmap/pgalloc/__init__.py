"""The memory file (gVisor's ``pgalloc``).

One growing memfd with a page allocator, per-page reference counts, decommit,
and the cache budget that evicts the ranges of evictable users.
"""
