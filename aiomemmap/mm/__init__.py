"""The address space (gVisor's ``mm``).

Vmas, pmas, the syscalls over them, faults, copies, fork,
``/proc/pid/maps``, and the platform seam through which every pma change
reaches the host.
"""
