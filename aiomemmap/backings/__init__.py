"""Backings: where a ``CachedFile``'s bytes come from.

One module per kind of storage, so that using one loads no library another
needs: :mod:`~aiomemmap.backings.base` (the :class:`Backing` protocol, retry
policy and read loop, standard library only), :mod:`~aiomemmap.backings.memory`
(bytes in memory), :mod:`~aiomemmap.backings.local` (a local file),
:mod:`~aiomemmap.backings.http` (aiohttp), :mod:`~aiomemmap.backings.fsspec_backing`
(any fsspec filesystem), :mod:`~aiomemmap.backings.testing` (fault injection)
and :mod:`~aiomemmap.backings.opener` (``open_backing``: a path or URL to
a backing).
"""
