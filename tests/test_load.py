"""Load, reduced for ``make test``: 4 analyst sessions x 6 mixed queries against three node
processes; every answer correct, none hung. ``tests/soak/test_load_soak.py`` runs 16 x 50."""

from __future__ import annotations

from pathlib import Path

import pytest
from _load import load_module
from _reliability import record


def check_load(root: Path, sessions: int, queries: int) -> dict[str, object]:
    figures = load_module().run_load(root, sessions, queries)
    total = sessions * queries
    record(
        "load",
        f"{sessions} concurrent sessions x {queries} mixed queries, 3 node processes",
        f"{figures['correct']}/{total} correct, {figures['hung_sessions']} hung, "
        f"{figures['throughput_qps']} queries/s, p50 {figures['latency_ms']['p50']} ms, "
        f"p95 {figures['latency_ms']['p95']} ms",
        tries=total,
        ok=figures["correct"] == total and not figures["hung_sessions"],
    )
    print(figures)
    assert not figures["errors"], figures["errors"]
    assert not figures["wrong"], figures["wrong"]
    assert figures["hung_sessions"] == 0
    assert figures["correct"] == total
    assert all(code == 0 for code in figures["exit_codes"].values()), figures["exit_codes"]
    return figures


@pytest.mark.slow
def test_reduced_load(tmp_path: Path) -> None:
    check_load(tmp_path, sessions=4, queries=6)
