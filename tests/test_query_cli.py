"""`trustspace query` as an analyst uses it: integer figures, histograms, federated anonymize."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import query_cli_args as _base

from trustspace.anon import Hierarchy, anonymize
from trustspace.api import Federation
from trustspace.cli.main import main

ALLOW_ALL = {"analysts": ["*"], "operations": ["*"]}


def _part(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)  # test data only
    return pd.DataFrame({"age": rng.integers(20, 60, n), "sex": rng.choice(["F", "M"], n)})


@pytest.fixture(scope="module")
def parts() -> dict[str, pd.DataFrame]:
    return {"a": _part(60, 1), "b": _part(60, 2), "c": _part(60, 3)}


@pytest.fixture(scope="module")
def fed(
    parts: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    policy = {"min_group_size": 3, "release_rows": True, "rules": [ALLOW_ALL]}
    # node c keeps its anonymized rows: asking for them is refused there
    policies = {"a": policy, "b": policy, "c": {**policy, "release_rows": False}}
    work = tmp_path_factory.mktemp("fed")
    with Federation.local(
        parts, policy=policies, domains={"age": list(range(100))}, workdir=work
    ) as f:
        yield f


@pytest.fixture(scope="module")
def fed_open(parts: dict[str, pd.DataFrame]) -> Iterator[Federation]:
    policy = {"min_group_size": 3, "release_rows": True, "rules": [ALLOW_ALL]}
    with Federation.local(parts, policy=policy, domains={"age": list(range(100))}) as f:
        yield f


def test_count_prints_an_integer(
    fed: Federation, parts: dict[str, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    """`count` printed 3865.0."""
    assert main([*_base(fed), "count", "default", "--where", "sex = 'F'"]) == 0
    want = sum(int((p.sex == "F").sum()) for p in parts.values())
    assert capsys.readouterr().out == f"{want}\n"


def test_histogram_from_the_command_line(
    fed: Federation, parts: dict[str, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    union = pd.concat(parts.values())
    assert (
        main([*_base(fed), "histogram", "default", "age", "--bins", "4", "--range", "20", "60"])
        == 0
    )
    got = [int(line.split()[-1]) for line in capsys.readouterr().out.splitlines()[1:]]
    assert got == np.histogram(union.age, bins=4, range=(20, 60))[0].tolist()
    assert main([*_base(fed), "histogram", "default", "age", "--edges", "20", "30", "60"]) == 0
    got = [int(line.split()[-1]) for line in capsys.readouterr().out.splitlines()[1:]]
    assert got == np.histogram(union.age, bins=[20, 30, 60])[0].tolist()
    assert main([*_base(fed), "histogram", "default", "age", "--bins", "4"]) == 2
    assert "histogram needs --range LO HI" in capsys.readouterr().err


def _sex_hierarchy(tmp_path: Path) -> Path:
    path = tmp_path / "sex.csv"
    path.write_text("F;*\nM;*\n")
    return path


def test_federated_anonymize_writes_the_release_and_a_report(
    fed_open: Federation, parts: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    out, report = tmp_path / "out.csv", tmp_path / "report.json"
    args = [
        *_base(fed_open),
        "anonymize",
        "default",
        "--qi",
        "age=interval:10,50",
        "--qi",
        f"sex={_sex_hierarchy(tmp_path)}",
        "--k",
        "4",
        "-o",
        str(out),
        "--report",
        str(report),
    ]
    assert main(args) == 0
    # the same search on the union, locally: same levels, same rows (as a multiset)
    union = pd.concat(parts.values(), ignore_index=True)
    qis = {
        "age": Hierarchy.intervals("age", range(100), widths=(10, 50)),
        "sex": Hierarchy("sex", [("F", "*"), ("M", "*")]),
    }
    local = anonymize(union, qis, k=4)
    got = pd.read_csv(out, dtype=str)
    rows = Counter(map(tuple, got.astype(str).to_numpy().tolist()))
    want = Counter(map(tuple, local.data.astype(str).to_numpy().tolist()))
    assert rows == want
    assert all(
        n >= 4 for n in Counter(map(tuple, got[["age", "sex"]].to_numpy().tolist())).values()
    )
    rep = json.loads(report.read_text())
    assert rep["levels"] == dict(
        zip(local.result.quasi_identifiers, local.result.levels, strict=True)
    )
    assert rep["output"] == str(out) and rep["released_rows"] == len(got)


def test_federated_anonymize_without_output_keeps_rows_at_the_nodes(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qi = ["--qi", "age=interval:10,50", "--qi", f"sex={_sex_hierarchy(tmp_path)}", "--k", "4"]
    assert main([*_base(fed), "anonymize", "default", *qi]) == 0
    err = capsys.readouterr().err
    assert "kept at the nodes: a " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sex.csv"]
    # asking for the rows: node c keeps them, so the whole command fails, naming it
    assert main([*_base(fed), "anonymize", "default", *qi, "-o", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err
    assert "node c" in err and "release_rows" in err
    assert not (tmp_path / "o.csv").exists()


def test_federated_anonymize_builder_needs_a_declared_domain(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_base(fed), "anonymize", "default", "--qi", "sex=mask"]) == 2
    err = capsys.readouterr().err
    assert "the nodes declare no domain for column 'sex'" in err
    assert "datasets.default.domains.sex" in err
    assert main([*_base(fed), "anonymize", "default"]) == 2
    assert "at least one --qi" in capsys.readouterr().err


def test_a_warning_is_one_line_naming_the_command(
    fed: Federation, parts: dict[str, pd.DataFrame]
) -> None:
    """A suppressed figure's warning printed Python's ``.../cli/main.py:64: UserWarning:
    ...`` and the source line ``code: int = args._run(args)``; it is one line, like errors.
    A real process: under pytest warnings are recorded, not printed."""
    import os
    import subprocess
    import sys

    union = pd.concat(parts.values())
    sizes = union.age.value_counts()
    age = int(sizes[(sizes > 0) & (sizes < 3)].index[0])  # fewer than min_group_size (3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PYTHONWARNINGS", None)
    query = ["count", "default", "--where", f"age = {age}"]
    proc = subprocess.run(
        [sys.executable, "-m", "trustspace.cli.main", *_base(fed), *query],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "NaN\n"
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("trustspace query: warning: count: some figures were suppressed")
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr
    assert "args._run" not in proc.stderr


def test_marginals_from_the_command_line(
    fed: Federation, parts: dict[str, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    union = pd.concat(parts.values())
    args = [*_base(fed), "marginals", "default", "--marginal", "sex", "--marginal", "sex,age"]
    assert main([*args, "--cuts", "age=20,40,60", "--levels", "sex=F,M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["columns"] for d in doc] == [["sex"], ["sex", "age"]]
    assert doc[0]["counts"] == [float((union.sex == s).sum()) for s in ("F", "M")]
    want = pd.crosstab(union.sex, pd.cut(union.age, [20, 40, 60], right=False)).to_numpy().ravel()
    assert doc[1]["counts"] == [float(v) for v in want]
    assert main([*args, "--cuts", "age=20,x"]) == 2
    assert "--cuts 'age=20,x': expected COLUMN=E1,E2" in capsys.readouterr().err
    assert main([*_base(fed), "marginals", "default"]) == 2
