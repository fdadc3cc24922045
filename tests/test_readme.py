"""The README's analyst example runs as written and prints what pandas says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Analyst example", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None, "README has no python block under 'Analyst example'"
    return m.group(1)


@pytest.mark.slow
def test_readme_analyst_example_runs_and_agrees_with_pandas() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _example()], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    adult = pd.read_csv(ROOT / "demos/data/adult/adult.csv", sep=";")
    lines = proc.stdout.splitlines()
    assert float(lines[0]) == ((adult.age >= 40) & (adult.sex == "Female")).sum()
    assert abs(float(lines[1]) - adult.age.mean()) < 1e-9
    assert "count  30162.0" in proc.stdout
    female = adult[adult.sex == "Female"].age
    assert f"{female.mean():.6f}" in proc.stdout and f"{female.std():.6f}" in proc.stdout


def test_quick_start_is_the_two_commands() -> None:
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block is not None
    commands = [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]
