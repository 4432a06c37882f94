"""Backings: where a ``CachedFile``'s bytes come from.

Bytes in memory, a local file, HTTP, any fsspec filesystem, and a
fault-injecting wrapper for tests. Each lives in its own module so that
importing one loads no network library another needs.
"""
