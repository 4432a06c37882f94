"""The Mappables.

``SharedMemory`` (tmpfs-like memory) and ``CachedFile`` (pages of a backing
fetched on demand). A cached file is made of parts, one a module: the page
cache (``page_cache``), the fetcher (``fetcher``), writes and write-back
(``writeback``), revalidation (``revalidation``), eviction under the cache
budget (``cache_eviction``, ``cache_units``); the readahead policies that
serve it are in ``readahead``.
"""
