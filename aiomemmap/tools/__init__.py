"""The command line and what it needs.

``demo``, ``cat`` and ``bench`` (:mod:`~aiomemmap.tools.cli`), and
:class:`~aiomemmap.tools.http_server.RangeHTTPServer`, the HTTP test server
with simulated latency that they, the examples and the tests run; it is the
one public name of this package. Nothing below this layer imports it.
"""
