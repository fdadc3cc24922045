"""Metered use: purposes signed with queries and restricted by policy; ``trustspace usage``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace.api import Federation
from trustspace.cli.main import main
from trustspace.errors import ConfigError, PolicyError
from trustspace.node.usage import usage


def _parts() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)  # test data only
    return {
        f"n{i}": pd.DataFrame({"age": rng.integers(18, 90, 80), "sex": rng.choice(["F", "M"], 80)})
        for i in range(3)
    }


POLICY = {
    "min_group_size": 5,
    "rules": [
        {"analysts": ["analyst"], "operations": ["count"], "purposes": ["census-2026"]},
        {"analysts": ["analyst"], "operations": ["mean"]},
    ],
}


def test_purposes_are_signed_checked_and_metered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = _parts()
    with Federation.local(parts, POLICY, workdir=tmp_path, purpose="census-2026") as fed:
        assert fed.count() == 240
        assert fed.count(where="age > 40") > 0
        fed.mean("default", "age")  # a rule without purposes: any purpose
        fed.purpose = "marketing"
        with pytest.raises(PolicyError, match=r"policy rule 'purposes'.*'census-2026'"):
            fed.count()
        fed.purpose = None
        with pytest.raises(PolicyError, match="declared: None"):
            fed.count()
    logs = sorted((tmp_path / "audit").glob("*.jsonl"))
    assert len(logs) == 3
    recs = [json.loads(x) for x in logs[0].read_text().splitlines()]
    allowed = [r for r in recs if r["decision"] == "allow" and r["operation"] == "count"]
    assert allowed and all(r["purpose"] == "census-2026" for r in allowed)
    assert all(r["query"]["purpose"] == "census-2026" for r in allowed)  # signed with it
    by_purpose = usage(logs, by="purpose").set_index("purpose")
    # two counts and a mean under census-2026 (one request id each, however many stages)
    assert by_purpose.loc["census-2026", "queries"] == 3
    assert by_purpose.loc["census-2026", "nodes"] == 3
    assert (
        by_purpose.loc["marketing", "refused"] == 1 and by_purpose.loc["marketing", "queries"] == 0
    )
    by_analyst = usage(logs).set_index("analyst")
    assert by_analyst.loc["analyst", "queries"] == 3 and by_analyst.loc["analyst", "refused"] == 2
    assert "count" in by_analyst.loc["analyst", "operations"]
    assert by_analyst.loc["analyst", "ms"] > 0
    # the CLI: table, csv, json; --since in the future leaves nothing
    assert main(["usage", *map(str, logs), "--by", "purpose", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("purpose,queries,refused,operations,epsilon")
    assert main(["usage", *map(str, logs), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["queries"] == 3
    assert main(["usage", *map(str, logs), "--since", "2999-01-01"]) == 0
    assert "no requests" in capsys.readouterr().out


def test_usage_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"decision": "allow"}\nnot json\n')
    with pytest.raises(Exception, match=r"bad\.jsonl: line 2 is not JSON"):
        usage([bad])
    with pytest.raises(ConfigError, match="--by 'who'"):
        usage([bad], by="who")
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        usage([bad], since="yesterday")
    assert main(["usage", str(tmp_path / "missing.jsonl")]) == 2  # a bad parameter
