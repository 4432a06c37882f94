"""The command line and what it needs.

``demo``, ``cat`` and ``bench``, and the HTTP test server with simulated
latency that they (and the tests) run.
"""
