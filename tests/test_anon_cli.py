"""Tests of ``trustspace anonymize``: runs on Adult, bad input, atomic output, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pycanon import anonymity as pc

from trustspace.cli.main import main

ADULT = Path(__file__).resolve().parent.parent / "demos" / "data" / "adult"
QI = ["age", "sex", "race", "marital-status", "education", "native-country", "workclass"]


def qi_args(cols: list[str] = QI) -> list[str]:
    out = []
    for c in cols:
        out += ["--qi", f"{c}={ADULT / f'adult_hierarchy_{c}.csv'}"]
    return out


def test_cli_anonymizes_adult_and_writes_report(tmp_path: Path) -> None:
    out, rep = tmp_path / "out.csv", tmp_path / "report.json"
    argv = [
        "anonymize", str(ADULT / "adult.csv"), *qi_args(), "--k", "10", "--suppression",
        "0.02", "-o", str(out), "--report", str(rep),
    ]  # fmt: skip
    assert main(argv) == 0
    df = pd.read_csv(out, sep=";", dtype=str)
    report = json.loads(rep.read_text())
    assert pc.k_anonymity(df, QI) >= 10
    assert len(df) == report["records"] - report["suppressed_records"]
    assert report["suppressed_records"] <= 0.02 * report["records"]
    assert report["classes"] == df.groupby(QI).ngroups
    assert set(report["levels"]) == set(QI)
    assert 0 < report["metrics"]["loss"] < 1
    assert list(df.columns)[-1] == "salary-class"


def test_cli_mondrian_l_diversity_and_builders(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.read_csv(ADULT / "adult.csv", sep=";", dtype=str).iloc[:1500].to_csv(src, index=False)
    out = tmp_path / "out.csv"
    argv = [
        "anonymize", str(src), "--qi", "age=interval:5,10,20", *qi_args(QI[1:4]),
        "--k", "4", "--l", "2", "--sensitive", "salary-class", "--method", "mondrian",
        "-o", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    df = pd.read_csv(out, dtype=str)  # the input's ',' separator is kept
    assert len(df) == 1500
    assert pc.k_anonymity(df, QI[:4]) >= 4
    assert pc.l_diversity(df, QI[:4], ["salary-class"]) >= 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, d: a.__setitem__(1, str(d / "missing.csv")), "cannot read input file"),
        (lambda a, d: a.extend(["--qi", "salary=x.csv"]), "no such column"),
        (lambda a, d: a.extend(["--qi", f"occupation={ADULT / 'adult_hierarchy_sex.csv'}"]),
         "column 'occupation'.*not in its hierarchy"),
        (lambda a, d: a.extend(["--qi", "occupation=/nope/h.csv"]), "cannot read hierarchy"),
        (lambda a, d: a.extend(["--k", "40000"]), "no generalization satisfies"),
        (lambda a, d: a.extend(["--l", "2"]), "need sensitive"),
        (lambda a, d: a.extend(["--suppression", "1.5"]), "must be in"),
        (lambda a, d: a.extend(["--qi", "race=interval:5"]), "column 'race'.*integer values"),
        (lambda a, d: a.extend(["--qi", "race"]), "expected COLUMN=HIERARCHY"),
    ],
)  # fmt: skip
def test_cli_bad_input_exits_2_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object, message: str
) -> None:
    out = tmp_path / "out.csv"
    out.write_text("previous content\n")
    argv = ["anonymize", str(ADULT / "adult.csv"), *qi_args(QI[:2]), "-o", str(out)]
    change(argv, tmp_path)  # type: ignore[operator]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trustspace anonymize: error:" in err
    assert pytest.importorskip("re").search(message, err), err
    assert out.read_text() == "previous content\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temp files left


def test_cli_rejects_ragged_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("sex;age\nMale;39\nFemale\n")
    assert main(["anonymize", str(src), *qi_args(["sex"]), "-o", str(tmp_path / "o.csv")]) == 2
    assert "line 3 has 1 fields" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_cli_path_does_not_import_pandas_or_grpc(tmp_path: Path) -> None:
    """The whole-process target (1.5 s) needs a light import graph: no pandas, no grpc."""
    code = (
        "import argparse, sys\n"
        "from trustspace.cli import anonymize as a\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(); a.add_parser(s)\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "assert a.run(args) == 0\n"
        "print(sorted(m for m in ('pandas', 'grpc') if m in sys.modules))\n"
    )
    out = tmp_path / "o.csv"
    res = subprocess.run(
        [sys.executable, "-c", code, "anonymize", str(ADULT / "adult.csv"), *qi_args(QI[:3]),
         "--k", "5", "-o", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert res.stdout.strip() == "[]"
    assert out.exists()
