"""The core that every layer builds on.

Pages, ranges, access types, errors, block sequences, segment maps, ordered
locks, the cancellation shield and the host's system calls. It imports
nothing of aiomemmap outside itself and nothing beyond the standard library
and ``sortedcontainers``.
"""
