"""Load soak (``make soak``): 16 concurrent analyst sessions x 50 mixed queries against three
node processes; every answer correct, no deadlock, memory flat across the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from _reliability import record
from test_load import check_load

#: Allowed RSS growth of any process from half-way to the end of the run. Flat means no
#: per-query leak: 400 queries leaking even 64 KiB each would add 25 MiB.
MAX_GROWTH_KIB = 24 * 1024


@pytest.mark.soak
def test_load_16_sessions_x_50_queries(tmp_path: Path) -> None:
    figures = check_load(tmp_path, sessions=16, queries=50)
    rss = figures["rss_kib"]
    assert isinstance(rss, dict)
    mid, end = rss["half-way"], rss["after the run"]
    growth = {name: end[name] - mid[name] for name in mid if name in end}
    record(
        "load",
        "memory across the 16 x 50 run (RSS growth half-way -> end)",
        ", ".join(f"{n} {g / 1024:+.1f} MiB" for n, g in sorted(growth.items())),
        ok=max(growth.values()) <= MAX_GROWTH_KIB,
    )
    assert max(growth.values()) <= MAX_GROWTH_KIB, growth
