"""The memmap interfaces (gVisor's ``memmap`` package).

The protocols every Mappable, mapping space, identity and file implements,
the mapping set that records who maps which offsets, and the invalidation bus
that fans invalidations out to mapping spaces.
"""
