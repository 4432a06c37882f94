"""The Mappables.

``SharedMemory`` (tmpfs-like memory) and ``CachedFile`` (pages of a backing
fetched on demand), with the fetcher and the readahead policies that serve
them.
"""
