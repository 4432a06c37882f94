"""The kernel as the oracle: differential testing of AddressSpace against Linux.

Random sequences of ``mmap``, ``munmap``, ``mprotect``, ``mremap``,
``madvise(MADV_DONTNEED)``, reads, writes and ``fork`` run twice: for real,
in a child process through libc (:mod:`~tests.linux_oracle.driver`), and
through :class:`aiomemmap.AddressSpace` (:mod:`~tests.linux_oracle.model`),
in the same window of address space with the same file. Every errno, byte,
byte count and maps line in the window is compared
(:mod:`~tests.linux_oracle.compare`), after the normalisations of the one
table of intended differences (:mod:`~tests.linux_oracle.differences`). A
difference is shrunk to a minimal sequence (:mod:`~tests.linux_oracle.shrink`)
and printed as a command that replays it::

    python -m tests.linux_oracle --runs 2000 --seed 7
    python -m tests.linux_oracle --replay 'mmap(0x0,0x1000,rw-,ap,fixed,0x0);...'

The operation language and its text form are in
:mod:`~tests.linux_oracle.ops`.
"""
