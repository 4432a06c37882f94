"""The chaos soak (:mod:`tests.chaos`), seeded and bounded for every test run.

Each seed runs a fixed number of operations (readers, writers, truncates,
revalidations and version changes; address spaces that map, fault, copy,
fork and unmap) over many files under a budget far below their size, with
latency spikes, injected errors, short reads, hung ranges and cancellations.
Every byte read is checked against the model; every operation has a
deadline; at the end every space and file passes ``check_invariants`` and
the memory file holds no page.

``AIOMEMMAP_CHAOS_SEEDS`` (comma-separated) and ``AIOMEMMAP_CHAOS_OPS`` run
other or longer soaks; ``python -m tests.chaos`` runs them outside pytest.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import SoakConfig, soak

SEEDS = [int(s) for s in os.environ.get("AIOMEMMAP_CHAOS_SEEDS", "1,2").split(",")]
OPS = int(os.environ.get("AIOMEMMAP_CHAOS_OPS", str(SoakConfig.ops)))


@pytest.mark.parametrize("seed", SEEDS)
async def test_chaos_soak_reads_only_what_the_files_held(seed: int) -> None:
    report = await soak(SoakConfig(seed, ops=OPS))
    # The soak did what it is for: evictions under the budget, every kind of
    # operation and fault, and nothing left over (checked by the soak).
    assert report.evictions > 0
    assert sum(report.ops.values()) >= OPS
    for kind in ("read", "write", "copy_in", "copy_out", "truncate", "replace"):
        assert report.ops[kind] > 0, kind
    assert report.faults["errors_injected"] > 0
    assert report.faults["versions_replaced"] > 0
    assert report.faults["cancellations"] > 0
    assert report.bytes_fetched > 0
