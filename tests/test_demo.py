"""`trustspace demo` end to end: separate processes, mutual TLS, answers equal to pandas."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_to_the_end_and_agrees_with_pandas(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustspace.cli.main",
            "demo",
            "--key-bits",
            "2048",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "agree with pandas to 1e-6: yes" in out
    exact = re.search(r"exact:  sum\(age\) - sum\(age where \.\.\.\) = (\d+)\.00", out)
    assert exact and 17 <= int(exact.group(1)) <= 90  # one person's age, exactly
    assert "DP (epsilon 0.5 each)" in out and "budget left" in out
    assert "refused: node org-a refused the request (policy rule 'operations')" in out
    assert '"decision": "deny"' in out
    # the aggregator's certificate cannot make a node compute a round nobody signed
    assert "refused: node org-a: the round asked for in round 0 is not the one" in out
    # vertical partitions: the PSI size and the cross-node crosstab agree with pandas
    psi = re.search(r"ECDH PSI over X25519: (\d+) customers in common \(pandas merge: (\d+)\)", out)
    assert psi and psi.group(1) == psi.group(2) == "1000"
    assert "equal to pandas on the join: yes" in out
    assert "information value of org-b's features" in out
    # every child process was stopped: their logs end with the drain message
    for log in ("org-a.log", "org-b.log", "org-c.log", "aggregator.log"):
        assert "stopped" in (tmp_path / log).read_text(), log


def test_demo_refuses_fewer_than_three_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    from trustspace.cli.main import main

    assert main(["demo", "--nodes", "2"]) == 2
    assert "--nodes must be at least 3" in capsys.readouterr().err
