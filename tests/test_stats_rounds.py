"""The exact rounds the statistics state machine asks for, pinned byte for byte; and its
results, read by term, do not depend on the order of a round's terms.

Nodes will recompute the rounds of a query (``trustspace.stats.replay``) to check what they
are asked, so a refactoring of the state machine must not change a single term, centre,
bin or ``frac_bits``, nor their order. ``tests/data/stats_rounds.json`` holds the
``Round.to_dict()`` sequences of the queries below over a fixed fake dataset, generated from
the state machine as it was before it learnt to read totals by term (commit 1991bed). A
deliberate change of the rounds regenerates it with ``python tests/test_stats_rounds.py``;
it then also changes what nodes accept, so say so in the commit.

The fake node here computes every term in plain Python with ``math.fsum`` (exactly rounded
sums) and no ``**`` (libm's pow may differ by an ulp between platforms), so the totals, and
the centres and grids derived from them, are the same on every machine.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace.stats import OCTAVE_HALF, Query, Result, Round, TableSchema, Term, octave_key, start
from trustspace.stats._machine import Computation

PINNED = Path(__file__).parent / "data" / "stats_rounds.json"

SCHEMA = TableSchema(
    {
        "x": "float",
        "y": "float",
        "age": "int",
        "big": "float",
        "rare": "float",
        "sex": "str",
        "flag": "bool",
    },
    domains={"sex": ["M", "F"]},
    bounds={"age": (0, 127)},  # declared: no octave term for age
)

Row = dict[str, Any]


def _rows() -> list[Row]:
    """240 rows from integer arithmetic (no random generator whose stream could change)."""
    rows = []
    for i in range(240):
        rows.append(
            {
                "x": None if i % 11 == 0 else (i * 7919 % 1000) / 16 - 20.0,
                "y": None if i % 7 == 3 else ((i * i) % 97) * 0.375 + (i % 5) - 7.0,
                "age": float(18 + (i * 13) % 70),
                "big": (i % 9 - 4) * 2.5e9 + i,
                "rare": float(i) if i % 80 == 1 else None,  # 3 values: suppressed under k = 5
                "sex": None if i % 17 == 0 else "MFX"[i % 3],  # "X": the 'other' group
                "flag": i % 4 == 0,
            }
        )
    return rows


ROWS = _rows()
#: The filters the queries below use, as Python predicates (the engine would run SQL).
WHERE: dict[str | None, Callable[[Row], bool]] = {
    None: lambda r: True,
    "age > 30": lambda r: r["age"] > 30,
}


def _power(x: float, p: int) -> float:
    out = 1.0
    for _ in range(p):
        out *= x
    return out


def _term(t: Term, rows: Sequence[Row]) -> list[float]:
    """One term's entries over ``rows``, with the engine's semantics (``Term``'s docstring)."""
    if t.kind == "moment":
        parts = []
        for r in rows:
            if any(r[c] is None for c in t.columns):
                continue
            v = 1.0
            for c, p, centre in zip(t.columns, t.powers, t.centers, strict=True):
                v *= _power(r[c] - centre, p)
            parts.append(v)
        return [math.fsum(parts)]
    values = [r[t.columns[0]] for r in rows if r[t.columns[0]] is not None]
    out = [0.0] * t.size
    for v in values:
        if t.kind == "octaves":
            out[OCTAVE_HALF + octave_key(v)] += 1
        elif t.kind == "grid":
            end = t.start + t.nbins * t.width
            if v < t.start:
                out[0] += 1
            elif v >= end:
                out[-1] += 1
            else:
                out[1 + min(int((v - t.start) // t.width), t.nbins - 1)] += 1
        else:  # bins, numpy.histogram semantics with under- and overflow
            edges = t.edges
            if v < edges[0]:
                out[0] += 1
            elif v > edges[-1]:
                out[-1] += 1
            else:
                out[1 + min(int(np.searchsorted(edges, v, side="right")) - 1, len(edges) - 2)] += 1
    return out


def local(rnd: Round) -> np.ndarray:
    """The fake node's local vector for ``rnd`` (the round's layout, per group block)."""
    rows = [r for r in ROWS if WHERE[rnd.where](r)]
    if rnd.group_column is None:
        blocks = [rows]
    else:
        g = rnd.group_column
        known = [r for r in rows if r[g] is not None]
        blocks = [[r for r in known if r[g] == v] for v in rnd.group_values]
        blocks.append([r for r in known if r[g] not in rnd.group_values])
    out = [e for block in blocks for t in rnd.terms for e in _term(t, block)]
    return np.asarray(out, dtype=np.float64)


QUERIES: dict[str, tuple[Query, int]] = {
    "count_rows": (Query("count", "d"), 0),
    "mean_x": (Query("mean", "d", "x"), 0),
    "mean_big": (Query("mean", "d", "big"), 2),
    "var_xy_filtered": (Query("var", "d", ["x", "y"], where="age > 30"), 3),
    "skew_x": (Query("skew", "d", "x"), 0),
    "kurt_yx": (Query("kurt", "d", ["y", "x"]), 0),
    "describe": (Query("describe", "d", ["x", "y", "age", "rare"]), 5),
    "describe_grid16": (
        Query("describe", "d", ["y"], params={"percentiles": [0.1, 0.9], "grid_bins": 16}),
        2,
    ),
    "cov": (Query("cov", "d", ["x", "y", "big"], params={"ddof": 0}), 0),
    "corr": (Query("corr", "d", ["y", "x", "rare"]), 5),
    "quantile_list": (
        Query("quantile", "d", "x", params={"q": [0.1, 0.5, 0.9], "grid_bins": 16}),
        3,
    ),
    "quantile_precision": (
        Query("quantile", "d", ["y", "age"], params={"q": 0.5, "precision": 0.01}),
        0,
    ),
    "histogram": (Query("histogram", "d", "age", params={"bins": [0, 20, 40, 60, 100]}), 4),
    "group_by_sex": (
        Query(
            "group_by",
            "d",
            ["x", "y", "age"],
            params={
                "by": "sex",
                "agg": {
                    "x": ["size", "count", "mean", "std"],
                    "y": ["sum", "var"],
                    "age": ["mean"],
                },
            },
        ),
        3,
    ),
    "group_by_flag": (
        Query("group_by", "d", ["x"], params={"by": "flag", "agg": {"x": ["mean", "count"]}}),
        0,
    ),
}


def _drive(query: Query, k: int) -> tuple[list[dict[str, Any]], Result]:
    """Every round of ``query`` over the fake node, fed as the services would (record counts
    in (0, k) reported as suppressed, as the aggregator withholds them), and the result."""
    comp = start(query, SCHEMA, k)
    out = []
    while (rnd := comp.next_round()) is not None:
        out.append(rnd.to_dict())
        total = local(rnd)
        small = rnd.count_mask & (total > 0) & (total < k)
        comp.feed(np.where(small, 0.0, total), suppressed=np.flatnonzero(small).tolist())
    return out, comp.result()


def rounds_of(query: Query, k: int) -> list[dict[str, Any]]:
    return _drive(query, k)[0]


def _canonical(d: dict[str, Any]) -> str:
    # repr-exact floats; keeps -0.0 apart from 0.0 and 1 apart from 1.0, which == would not
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def pinned() -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = json.loads(PINNED.read_text())
    return data


def test_pinned_file_covers_every_query(pinned):
    assert set(pinned) == set(QUERIES)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_rounds_are_byte_identical_to_the_pinned_ones(pinned, name):
    query, k = QUERIES[name]
    got = rounds_of(query, k)
    want = pinned[name]
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert _canonical(g) == _canonical(w), f"{name}: round {i} differs"
    assert len(got) == len(want), f"{name}: {len(got)} rounds, pinned {len(want)}"


def test_pins_detect_a_changed_round(pinned):
    """The comparison is sharp: one centre one ulp off, or two terms swapped, is caught."""
    want = pinned["var_xy_filtered"]
    moved = json.loads(json.dumps(want))
    terms = moved[2]["terms"]
    terms[0]["centers"][0] = math.nextafter(terms[0]["centers"][0], math.inf)
    assert _canonical(moved[2]) != _canonical(want[2])
    swapped = json.loads(json.dumps(want))
    swapped[0]["terms"][1], swapped[0]["terms"][2] = swapped[0]["terms"][2], swapped[0]["terms"][1]
    assert _canonical(swapped[0]) != _canonical(want[0])


# ---------------------------------------------------------------------------------------------
# Reading by term: the machine finds every figure by its Term, wherever the round put it


def _reverse_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the state machine list every round's terms in reverse order."""
    ask = Computation._ask

    def reversed_ask(self: Computation, terms: Sequence[Term], *args: Any) -> Any:
        return ask(self, list(terms)[::-1], *args)

    monkeypatch.setattr(Computation, "_ask", reversed_ask)


def _same(a: Any, b: Any) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (a, b)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_results_do_not_depend_on_term_order(pinned, monkeypatch, name):
    """Reversing every round's terms moves every figure in the vectors; reading by term, the
    machine still finds each one: the same rounds (up to order) and the same results."""
    query, k = QUERIES[name]
    _, plain = _drive(query, k)
    _reverse_terms(monkeypatch)
    rounds, got = _drive(query, k)
    assert [r["terms"] for r in rounds] == [r["terms"][::-1] for r in pinned[name]]
    _same(got.value, plain.value)
    _same(got.suppressed, plain.suppressed)
    assert got.precision == plain.precision and got.rounds == plain.rounds


def test_results_read_by_term_equal_pandas(monkeypatch):
    """With the terms reversed, every statistic still equals pandas on the fake node's rows."""
    _reverse_terms(monkeypatch)
    df = pd.DataFrame(ROWS).astype({"x": float, "y": float, "rare": float})

    def run(query: Query) -> Result:
        return _drive(query, 0)[1]

    def close(got: Any, want: Any, tol: float = 1e-9) -> None:
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=tol, atol=tol)
        elif isinstance(want, pd.Series):
            pd.testing.assert_series_equal(
                got, want, check_dtype=False, check_names=False, rtol=tol, atol=tol
            )
        else:
            assert got == pytest.approx(want, rel=tol, abs=tol)

    assert run(Query("count", "d")).value == len(df)
    close(run(Query("mean", "d", "x")).value, df["x"].mean())
    close(run(Query("sum", "d", ["x", "rare"])).value, df[["x", "rare"]].sum())
    filtered = df[df["age"] > 30]
    close(run(Query("var", "d", ["x", "y"], where="age > 30")).value, filtered[["x", "y"]].var())
    close(run(Query("skew", "d", ["x", "y", "age"])).value, df[["x", "y", "age"]].skew())
    close(run(Query("kurt", "d", ["y", "x"])).value, df[["y", "x"]].kurt())
    cols = ["x", "y", "big"]
    # default ddof: pandas ignores DataFrame.cov(ddof=...) when the columns hold NaNs
    close(run(Query("cov", "d", cols)).value, df[cols].cov())
    close(run(Query("corr", "d", cols)).value, df[cols].corr())
    res = run(Query("quantile", "d", ["x", "y"], params={"q": [0.1, 0.5, 0.9]}))
    close(res.value, df[["x", "y"]].quantile([0.1, 0.5, 0.9]), max(res.precision.values()))
    res = run(Query("describe", "d", ["x", "y", "age"]))
    close(res.value, df[["x", "y", "age"]].describe(), max(res.precision.values()))
    agg = {"x": ["size", "count", "mean", "std"], "y": ["sum", "var"], "age": ["mean"]}
    res = run(Query("group_by", "d", list(agg), params={"by": "sex", "agg": agg}))
    want = df[df["sex"].isin(["M", "F"])].groupby("sex").agg(agg)
    close(res.value, want.astype(float))
    edges = [0, 20, 40, 60, 100]
    res = run(Query("histogram", "d", "age", params={"bins": edges}))
    assert res.value.tolist() == np.histogram(df["age"], edges)[0].tolist()


if __name__ == "__main__":  # regenerate the pinned rounds (only for an intended change)
    PINNED.parent.mkdir(exist_ok=True)
    data = {name: rounds_of(q, k) for name, (q, k) in QUERIES.items()}
    PINNED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED} ({sum(len(v) for v in data.values())} rounds)", file=sys.stderr)
