"""``fed.synthesize``: a DP synthetic table of Adult over three nodes (federated MST).

Its 2-way marginals are compared with the real union's (what no party of the federation can
do), its budget with the accounting, its columns with the declared types and domains; and the
bad requests are refused before anything is spent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace import Federation
from trustspace.dp import rho_for
from trustspace.errors import ConfigError, PolicyError

ADULT = Path(__file__).resolve().parents[1] / "demos" / "data" / "adult" / "adult.csv"
COLS = [
    "age", "sex", "race", "marital-status", "education", "workclass", "occupation", "salary-class"
]  # fmt: skip
AGE = [17, 25, 35, 45, 55, 65, 91]
POLICY = {
    "min_group_size": 10,
    "rules": [{"analysts": ["*"], "operations": ["*"]}],
    "dp": {"epsilon": 4.0, "delta": 1e-6},
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return pd.read_csv(ADULT, sep=";")[COLS]


@pytest.fixture(scope="module")
def domains(adult: pd.DataFrame) -> dict[str, list[str]]:
    return {c: sorted(adult[c].unique()) for c in COLS if c != "age"}


@pytest.fixture(scope="module")
def fed(adult: pd.DataFrame, domains: dict[str, list[str]]) -> Iterator[Federation]:
    parts = {f"n{i}": adult.iloc[i::3].reset_index(drop=True) for i in range(3)}
    with Federation.local(parts, POLICY, domains=domains, bounds={"age": (17, 90)}) as f:
        yield f


def _codes(frame: pd.DataFrame, domains: dict[str, list[str]]) -> pd.DataFrame:
    out = {c: frame[c].map({v: i for i, v in enumerate(domains[c])}) for c in COLS if c != "age"}
    out["age"] = np.minimum(np.searchsorted(AGE, frame["age"], side="right") - 1, len(AGE) - 2)
    return pd.DataFrame(out)[COLS]


def mean_tvd(a: pd.DataFrame, b: pd.DataFrame, domains: dict[str, list[str]]) -> float:
    """Mean over the 28 pairs of 0.5 * sum |p_a - p_b| (the issue's metric), with numpy."""
    size = {c: len(AGE) - 1 if c == "age" else len(domains[c]) for c in COLS}
    out = []
    for x, y in itertools.combinations(COLS, 2):
        n = size[x] * size[y]
        pa = np.bincount(a[x] * size[y] + a[y], minlength=n) / len(a)
        pb = np.bincount(b[x] * size[y] + b[y], minlength=n) / len(b)
        out.append(0.5 * np.abs(pa - pb).sum())
    return float(np.mean(out))


def test_a_synthetic_adult_resembles_the_union(
    fed: Federation, adult: pd.DataFrame, domains: dict[str, list[str]]
) -> None:
    before = fed.budget("default")["rho_spent"].to_numpy()
    syn = fed.synthesize("default", COLS, epsilon=1.0, delta=1e-9, bins={"age": AGE})
    spent = fed.budget("default")["rho_spent"].to_numpy() - before
    assert np.allclose(spent, rho_for(1.0, 1e-9), rtol=1e-6)  # the whole budget, no more
    assert list(syn.columns) == COLS and abs(len(syn) - len(adult)) < 500  # the noisy count
    assert syn["age"].dtype == np.int64 and syn["age"].between(17, 90).all()
    for c in COLS[1:]:
        assert set(syn[c]) <= set(domains[c])
    real, fake = _codes(adult, domains), _codes(syn, domains)
    tvd = mean_tvd(real, fake, domains)
    # independent marginals score 0.077 on this table (the measurements), central
    # MST 0.042; the real halves 0.025
    independent = pd.DataFrame(
        {c: real[c].sample(frac=1, random_state=i).to_numpy() for i, c in enumerate(COLS)}
    )
    assert tvd < mean_tvd(real, independent, domains) - 0.01, tvd
    prov = syn.attrs["provenance"]
    assert prov["epsilon"] == 1.0 and prov["delta"] == 1e-9 and prov["dataset"] == "default"
    assert [s["step"] for s in prov["steps"]] == [
        "1-way marginals",
        "selection (all 2-way marginals)",
        "2-way marginals of the tree",
    ]
    assert sum(s["rho"] for s in prov["steps"]) == pytest.approx(rho_for(1.0, 1e-9))
    assert len(prov["tree"]) == len(COLS) - 1
    report = syn.attrs["report"]
    assert len(report) == len(COLS) + 28 and (report["noise_std_cells"] > 0).all()


def test_rows_and_more_epsilon(
    fed: Federation, adult: pd.DataFrame, domains: dict[str, list[str]]
) -> None:
    syn = fed.synthesize(
        "default", ["sex", "age", "salary-class"], epsilon=2.0, rows=5000, bins={"age": AGE}
    )
    assert len(syn) == 5000
    real = adult.assign(age=np.minimum(np.searchsorted(AGE, adult.age, side="right") - 1, 5))
    fake = syn.assign(age=np.minimum(np.searchsorted(AGE, syn.age, side="right") - 1, 5))
    want = pd.crosstab(real["sex"], real["salary-class"], normalize=True)
    got = pd.crosstab(fake["sex"], fake["salary-class"], normalize=True)
    assert float((want - got).abs().to_numpy().sum()) / 2 < 0.03


def test_bad_requests_are_refused_before_anything_is_spent(
    fed: Federation, domains: dict[str, list[str]]
) -> None:
    before = fed.budget("default")["rho_spent"].to_numpy()
    with pytest.raises(PolicyError, match="beyond the remaining budget at n0: epsilon"):
        fed.synthesize("default", COLS, epsilon=50.0, bins={"age": AGE})
    with pytest.raises(ConfigError, match="rows must be a positive integer"):
        fed.synthesize("default", COLS, epsilon=0.5, rows=0)
    with pytest.raises(ConfigError, match="only 'mst' is available"):
        fed.synthesize("default", COLS, epsilon=0.5, method="aim")
    with pytest.raises(ConfigError, match="two or more distinct columns"):
        fed.synthesize("default", ["sex"], epsilon=0.5)
    with pytest.raises(
        ConfigError, match=r"'age' x 'education' would have 1000 x 16 = 16000 cells"
    ):
        fed.synthesize("default", ["age", "education"], epsilon=0.5, bins={"age": 1000})
    assert np.array_equal(fed.budget("default")["rho_spent"].to_numpy(), before)


def test_a_column_without_a_public_domain_is_named(adult: pd.DataFrame) -> None:
    parts = {f"n{i}": adult.iloc[i::3].head(300).reset_index(drop=True) for i in range(3)}
    with Federation.local(parts, POLICY) as fed:  # no domains, no bounds
        with pytest.raises(ConfigError, match=r"column 'sex' \(str\) has no public domain"):
            fed.synthesize("default", ["sex", "race"], epsilon=1.0)
        with pytest.raises(ConfigError, match=r"numeric column 'age' has no public bounds"):
            fed.synthesize("default", ["age", "sex"], epsilon=1.0, bins=6)


def test_the_command_line_writes_a_csv_and_its_report(
    fed: Federation, domains: dict[str, list[str]], tmp_path: Path
) -> None:
    import json

    from trustspace.cli.main import main

    assert fed.workdir is not None
    out = tmp_path / "synthetic.csv"
    args = ["synthesize", "-a", fed.aggregator.address, "-c", str(fed.workdir / "ca" / "analyst")]
    args += ["--server-name", "aggregator", "default", "age,sex,salary-class", "--epsilon", "0.5"]
    assert main([*args, "--rows", "300", "--bins", "age=17,30,45,60,91", "-o", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["age", "sex", "salary-class"] and len(frame) == 300
    assert set(frame["sex"]) <= set(domains["sex"]) and frame["age"].between(17, 90).all()
    doc = json.loads(out.with_name("synthetic.csv.report.json").read_text())
    assert doc["provenance"]["epsilon"] == 0.5 and doc["provenance"]["rows"] == 300
    assert doc["provenance"]["bins"] == {"age": [17.0, 30.0, 45.0, 60.0, 91.0]}
    assert {r["marginal"] for r in doc["report"]} >= {"sex", "age x sex"}
    assert main([*args, "--bins", "age=x", "-o", str(out)]) == 2
    before = fed.budget("default")["rho_spent"].to_numpy()
    assert main([*args, "-o", str(tmp_path / "no" / "such" / "x.csv")]) == 2  # nothing spent
    assert np.array_equal(fed.budget("default")["rho_spent"].to_numpy(), before)
