"""Helpers for Mappables that keep file pages in a memory file (gVisor's ``fsutil``).

The file range set and the dirty set.
"""
