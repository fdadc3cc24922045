"""Pure statistics logic: query/round/schema serialisation (strict), the exact fixed-point
encoding, the state machine's protocol and the rank search under upstream suppression."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.errors import ConfigError, EncodingOverflow, ProtocolError
from trustspace.stats import (
    OCTAVE_HALF,
    OCTAVE_OFFSET,
    Query,
    Round,
    TableSchema,
    Term,
    octave_key,
    start,
)
from trustspace.stats._machine import _frac_bits, _octave_range
from trustspace.stats._quantile import UNKNOWN_SMALL
from trustspace.stats._quantile import locate as _locate  # was _machine._locate

SCHEMA = TableSchema(
    {"age": "int", "x": "float", "sex": "str", "flag": "bool", "day": "date"},
    domains={"sex": ["M", "F"]},
)


# ---------------------------------------------------------------------------------------------
# Query


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "median", "dataset": "d", "columns": "x"}, "unknown statistic 'median'"),
        ({"op": "mean", "dataset": "", "columns": "x"}, "'dataset'"),
        ({"op": "mean", "dataset": "d"}, "needs at least one column"),
        ({"op": "mean", "dataset": "d", "columns": ["x", "x"]}, "duplicate column"),
        ({"op": "mean", "dataset": "d", "columns": "x", "params": {"ddof": 1}}, "unknown key"),
        ({"op": "var", "dataset": "d", "columns": "x", "params": {"ddof": -1}}, "ddof"),
        (
            {"op": "histogram", "dataset": "d", "columns": "x", "params": {"bins": 5}},
            "range=\\[low, high\\]",
        ),
        (
            {"op": "histogram", "dataset": "d", "columns": "x", "params": {"bins": [3, 1]}},
            "strictly increasing",
        ),
        (
            {
                "op": "histogram",
                "dataset": "d",
                "columns": ["x", "age"],
                "params": {"bins": [1, 2]},
            },
            "exactly one column",
        ),
        ({"op": "quantile", "dataset": "d", "columns": "x", "params": {"q": 1.5}}, "\\[0, 1\\]"),
        ({"op": "quantile", "dataset": "d", "columns": "x"}, "needs q"),
        (
            {
                "op": "quantile",
                "dataset": "d",
                "columns": "x",
                "params": {"q": 0.5, "precision": 0},
            },
            "precision",
        ),
        (
            {
                "op": "group_by",
                "dataset": "d",
                "columns": "x",
                "params": {"by": "sex", "agg": {"x": ["median"]}},
            },
            "unknown aggregation 'median'",
        ),
        (
            {
                "op": "group_by",
                "dataset": "d",
                "columns": "age",
                "params": {"by": "sex", "agg": {"x": ["mean"]}},
            },
            "keys of 'agg'",
        ),
        ({"op": "count", "dataset": "d", "where": "age = "}, "filter error at column 7"),
        (
            {"op": "describe", "dataset": "d", "columns": "x", "params": {"grid_bins": 1000}},
            "power of two in 16..4096",
        ),
        (
            {"op": "mean", "dataset": "d", "columns": "x", "params": {"grid_bins": 64}},
            "unknown key",
        ),
        (
            {"op": "mean", "dataset": "d", "columns": "x", "params": {"ddof": math.nan}},
            "unknown key",
        ),
    ],
)
def test_query_rejects_bad_specs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Query(**kwargs)


def test_query_check_against_schema():
    with pytest.raises(ConfigError, match="unknown column 'zz'; known columns: age, x, sex"):
        Query("mean", "d", "zz").check(SCHEMA)
    with pytest.raises(ValueError, match="'sex' is str"):
        Query("mean", "d", "sex").check(SCHEMA)
    with pytest.raises(ValueError, match="cannot group by 'x' of type float"):
        Query("group_by", "d", "age", params={"by": "x", "agg": {"age": ["mean"]}}).check(SCHEMA)
    with pytest.raises(ValueError, match="needs the public list of group values"):
        Query("group_by", "d", "x", params={"by": "age", "agg": {"x": ["mean"]}}).check(SCHEMA)
    Query("group_by", "d", "x", params={"by": "sex", "agg": {"x": ["mean"]}}).check(SCHEMA)
    with pytest.raises(ValueError, match=r"values\[1\]'?: 2 cannot be a value of 'sex'"):
        Query(
            "group_by", "d", "x", params={"by": "sex", "agg": {"x": ["mean"]}, "values": ["M", 2]}
        ).check(SCHEMA)
    with pytest.raises(ValueError, match=r"True cannot be a value of 'age', which is int"):
        Query(
            "group_by", "d", "x", params={"by": "age", "agg": {"x": ["mean"]}, "values": [True]}
        ).check(SCHEMA)
    Query("group_by", "d", "sex", params={"by": "flag", "agg": {"sex": ["count"]}}).check(SCHEMA)
    Query("count", "d", ["sex", "day"], where="day > '2024-01-01'").check(SCHEMA)


_queries = st.one_of(
    st.builds(
        lambda op, cols, w: Query(op, "d", cols, where=w),
        st.sampled_from(["count", "sum", "mean", "skew", "kurt", "cov", "corr"]),
        st.lists(st.sampled_from(["age", "x"]), min_size=1, max_size=2, unique=True),
        st.sampled_from([None, "age > 3", "sex in ('M') and not x is null"]),
    ),
    st.builds(
        lambda q, p: Query("quantile", "d", "x", params={"q": q, "precision": p}),
        st.one_of(st.floats(0, 1), st.lists(st.floats(0, 1), min_size=1, max_size=4)),
        st.floats(1e-9, 10),
    ),
    st.builds(
        lambda e: Query("histogram", "d", "x", params={"bins": sorted(set(e))}),
        st.lists(st.integers(-100, 100), min_size=2, max_size=6).filter(lambda e: len(set(e)) >= 2),
    ),
)


@settings(max_examples=50, deadline=None)
@given(q=_queries)
def test_query_dict_round_trip(q):
    d = json.loads(json.dumps(q.to_dict()))  # JSON-able
    assert Query.from_dict(d) == q
    assert hash(Query.from_dict(d)) == hash(q)


def test_query_from_dict_is_strict():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colums'\]"):
        Query.from_dict({"op": "count", "dataset": "d", "colums": []})
    with pytest.raises(ValueError, match="missing key 'op'"):
        Query.from_dict({"dataset": "d"})
    with pytest.raises(ValueError, match="'columns': expected a list"):
        Query.from_dict({"op": "count", "dataset": "d", "columns": 3})


def test_schema_round_trip_and_errors():
    assert TableSchema.from_dict(SCHEMA.to_dict()) == SCHEMA
    with pytest.raises(ValueError, match="unknown column type 'integer'"):
        TableSchema({"a": "integer"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['extra'\]"):
        TableSchema.from_dict({"columns": {"a": "int"}, "extra": 1})
    with pytest.raises(ValueError, match="must be distinct"):
        TableSchema({"a": "str"}, domains={"a": ["x", "x"]})


# ---------------------------------------------------------------------------------------------
# Round / Term


def _round() -> Round:
    return Round(
        "d",
        "age > 1",
        (
            Term.rows(),
            Term.count("x", "age"),
            Term.moment(["x"], [2], [1.5], 40),
            Term.octaves("x"),
            Term.grid("x", -8.0, 0.5, 32),
            Term.bins("age", [0, 10, 20.5]),
        ),
        index=3,
    )


def test_round_layout_and_round_trip():
    r = _round()
    assert r.size == 1 + 1 + 1 + (2 * OCTAVE_HALF + 1) + 34 + 4
    mask = r.count_mask
    assert mask[:2].all() and not mask[2] and mask[3:].all()
    assert r.term_slice(4) == slice(3 + 2 * OCTAVE_HALF + 1, 3 + 2 * OCTAVE_HALF + 1 + 34)
    assert Round.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    g = Round("d", None, (Term.rows(), Term.moment(["x"], [1], [0.0], 9)), "sex", ("M", "F"))
    assert g.size == 6 and g.count_mask.tolist() == [True, False] * 3
    assert Round.from_dict(g.to_dict()) == g


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda d: d.pop("index"), r"missing key\(s\) \['index'\]"),
        (lambda d: d["terms"][0].update(kind="cube"), r"terms\[0\]'.*'cube'"),
        (lambda d: d["terms"][2].update(powers=[7]), r"terms\[2\]'.*0..4"),
        (lambda d: d["terms"][2].update(centers=["1"]), r"terms\[2\]'.*finite number"),
        (lambda d: d["terms"][2].update(centers=[math.inf]), r"terms\[2\]'.*finite number"),
        (lambda d: d["terms"][4].update(width=-1.0), r"terms\[4\]'.*'width'"),
        (lambda d: d["terms"][4].update(nbins=10**9), r"terms\[4\]'.*'nbins'"),
        (lambda d: d["terms"][4].update(edges=[1, 2]), r"terms\[4\]'.*unknown key"),
        (lambda d: d["terms"][5].update(edges=[2, 1]), r"terms\[5\]'.*increasing"),
        (lambda d: d["terms"][3].pop("columns"), r"terms\[3\]'.*missing key"),
        (lambda d: d.update(terms=[]), "non-empty"),
        (lambda d: d.update(group_values=["a"]), "without 'group_column'"),
        (lambda d: d.update(index=-1), "'index'"),
        (lambda d: d.update(dataset=5), "'dataset'"),
    ],
)
def test_round_from_dict_is_strict(mutate, message):
    d = _round().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        Round.from_dict(d)


def test_grouped_round_holds_moments_only():
    with pytest.raises(ValueError, match="grouped round holds moment terms only"):
        Round("d", None, (Term.octaves("x"),), "sex", ("M",))


def test_round_refuses_a_repeated_term():
    # the plans never repeat a term (the machine's _ask drops repeats), so a repeated term on
    # the wire is refused rather than left ambiguous for reading by term
    with pytest.raises(ValueError, match=r"'terms\[2\]': repeats terms\[0\] \(moment of \['x'\]\)"):
        Round("d", None, (Term.count("x"), Term.rows(), Term.count("x")))
    d = _round().to_dict()
    d["terms"].append(d["terms"][3])
    with pytest.raises(ValueError, match=r"'terms\[6\]': repeats terms\[3\]"):
        Round.from_dict(d)


def test_totals_are_read_by_term():
    r = _round()
    vec = np.arange(r.size, dtype=float)
    view = r.view(vec)
    for i, t in enumerate(r.terms):
        assert r.index_of(t) == i and r.term_slice(t) == r.term_slice(i)
        assert view[t].tolist() == vec[r.term_slice(i)].tolist()
    assert view.scalar(Term.count("x", "age")) == 1.0
    assert view.scalar(Term.moment(["x"], [2], [1.5], 40)) == 2.0
    # the same terms in another order: every term still reads its own entries
    shuffled = Round("d", "age > 1", tuple(reversed(r.terms)), index=3)
    local = np.concatenate([view[t] for t in shuffled.terms])
    for t in r.terms:
        assert shuffled.view(local)[t].tolist() == view[t].tolist()
    with pytest.raises(ValueError, match=r"round 3: it holds no term .*'columns': \['y'\]"):
        view.scalar(Term.count("y"))
    with pytest.raises(ValueError, match="frac_bits"):  # frac_bits is part of the term
        view.scalar(Term.moment(["x"], [2], [1.5], 41))
    with pytest.raises(
        ValueError, match=r"octaves of \['x'\] has 515 entries; read it with view\[term\]"
    ):
        view.scalar(Term.octaves("x"))
    with pytest.raises(ValueError, match="not grouped"):
        view.per_group(Term.rows())
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        r.view(np.zeros(3))
    s = Term.moment(["x"], [1], [0.0], 9)
    g = Round("d", None, (Term.rows(), s), "sex", ("M", "F"))
    gview = g.view([3.0, 1.5, 4.0, 2.5, 1.0, -7.0])
    assert gview.per_group(Term.rows()).tolist() == [3.0, 4.0, 1.0]
    assert gview.per_group(s).tolist() == [1.5, 2.5, -7.0]
    with pytest.raises(
        ValueError, match="grouped by 'sex'; read moment of \\['x'\\] with per_group"
    ):
        gview.scalar(s)


@settings(max_examples=100, deadline=None)
@given(
    bound_exp=st.integers(-30, 300),
    fractions=st.lists(st.lists(st.floats(-1, 1), min_size=3, max_size=3), min_size=1, max_size=40),
    counts=st.lists(st.integers(0, 2**40), min_size=1, max_size=40),
)
def test_encoding_sums_exactly_modulo_2_64(bound_exp, fractions, counts):
    """decode(sum encode(v_i) mod 2^64) == sum v_i within N * 2^-(f+1) per entry, where every
    |v_i| and |sum v_i| stay below the declared bound."""
    n = min(len(fractions), len(counts))
    bound = math.ldexp(1.0, bound_exp)
    f = _frac_bits(bound, "x")
    r = Round(
        "d",
        None,
        (
            Term.rows(),
            Term.moment(["x"], [1], [0.0], f),
            Term.moment(["x"], [3], [0.0], f),
            Term.moment(["x"], [2], [1.0], f),
        ),
    )
    local = [np.array([counts[i], *(np.array(fractions[i]) * bound / n)]) for i in range(n)]
    total = np.zeros(r.size, dtype=np.uint64)
    for v in local:
        total += r.encode(v)
    got = r.decode(total)
    want = np.sum(local, axis=0)
    assert got[0] == want[0]  # counts are exact
    tol = n * math.ldexp(1.0, -f - 1) + 1e-15 * np.abs(want[1:]).max(initial=0)
    assert np.all(np.abs(got[1:] - want[1:]) <= tol)


def test_encoding_overflow_and_bad_vectors():
    r = Round("d", None, (Term.rows(), Term.moment(["x"], [1], [0.0], 50)))
    with pytest.raises(
        EncodingOverflow, match=r"entry 1 .* exceeds the declared fixed-point range"
    ):
        r.encode(np.array([1.0, 2.0**12]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        r.encode(np.zeros(3))
    with pytest.raises(ValueError, match="entry 0 is not finite"):
        r.encode(np.array([math.nan, 0.0]))
    with pytest.raises(ValueError, match="integer array"):
        r.decode(np.zeros(2))
    assert r.decode(np.array([5, 0], dtype=np.int64)).tolist() == [5.0, 0.0]


# ---------------------------------------------------------------------------------------------
# State machine protocol


def _drive(comp, local):
    while (rnd := comp.next_round()) is not None:
        comp.feed(local(rnd))
    return comp.result()


def test_protocol_errors():
    comp = start(Query("mean", "d", "x"), SCHEMA, 3)
    with pytest.raises(ProtocolError, match="no round is pending"):
        comp.feed(np.zeros(1))
    with pytest.raises(ProtocolError, match="needs more rounds"):
        comp.result()
    rnd = comp.next_round()
    assert comp.next_round() is rnd  # idempotent until fed
    with pytest.raises(ProtocolError, match="shape"):
        comp.feed(np.zeros(rnd.size + 1))
    bad = np.zeros(rnd.size)
    bad[0] = -1
    with pytest.raises(ProtocolError, match="negative or fractional record counts"):
        comp.feed(bad)
    bad[0] = 2.5
    with pytest.raises(ProtocolError, match="negative or fractional"):
        comp.feed(bad)
    with pytest.raises(ProtocolError, match="suppressed index out of range"):
        comp.feed(np.zeros(rnd.size), suppressed=[rnd.size])
    near = np.zeros(rnd.size)
    near[0] = 3.0000000001  # float decoding residue is snapped, not refused
    comp.feed(near)
    assert comp.next_round() is not rnd
    with pytest.raises(ValueError, match="min_group_size"):
        start(Query("mean", "d", "x"), SCHEMA, -1)
    with pytest.raises(ConfigError, match="unknown column"):
        start(Query("mean", "d", "nope"), SCHEMA, 0)


def test_empty_data_finishes_with_nan_and_suppression():
    res = _drive(start(Query("describe", "d", ["x", "age"]), SCHEMA, 5), lambda r: np.zeros(r.size))
    assert res.value.isna().all().all() and res.suppressed.all().all()
    assert res.rounds == 1  # nothing is computed for suppressed columns
    res = _drive(start(Query("mean", "d", "x"), SCHEMA, 0), lambda r: np.zeros(r.size))
    assert math.isnan(res.value) and res.suppressed is False
    res = _drive(start(Query("sum", "d", "x"), SCHEMA, 0), lambda r: np.zeros(r.size))
    assert res.value == 0.0  # pandas: the sum of nothing is 0


def test_octave_range_bounds_every_value():
    counts = np.zeros(2 * OCTAVE_HALF + 1)
    for v in (-3.5, 0.0, 1e-3, 1000.0):
        key = octave_key(v)
        counts[OCTAVE_HALF + key] += 1
    rng = _octave_range(counts, "x")
    assert rng.lo <= -3.5 and rng.hi > 1000.0 and rng.lo >= -16 and rng.hi <= 4096
    counts[OCTAVE_HALF - (100 + OCTAVE_OFFSET)] = UNKNOWN_SMALL  # withheld, still non-zero
    assert _octave_range(counts, "x").lo < -1e30


def test_locate_with_withheld_counts():
    # [below, bins..., above]; n = 30
    counts = np.array([0, 10, 5, 10, 5, 0], dtype=float)
    assert _locate(counts, 0, 30, 1) == 0
    assert _locate(counts, 12, 30, 1) == 1
    assert _locate(counts, 12, 30, 6) is None  # bin 1 holds 5 < k records
    assert _locate(counts, 29, 30, 1) == 3
    # bin 1 withheld (1..k-1 records, here k = 6): ranks after it are uncertain from below
    # but fixed from above: n - above - bin 3 - bin 2 = records before bin 2
    withheld = np.array([0, 10, UNKNOWN_SMALL, 10, 5, 0], dtype=float)
    assert _locate(withheld, 5, 30, 6) == 0
    assert _locate(withheld, 20, 30, 6) == 2  # 15..24 from above
    assert _locate(withheld, 12, 30, 6) is None
    assert _locate(np.array([3, 10, 0, 0, 0, 0.0]), 1, 13, 1) is None  # in 'below'


def test_replay_reproduces_the_honest_rounds():
    from trustspace.stats import replay

    q = Query("describe", "d", ["x", "age"], where="age > 3")
    rng = np.random.default_rng(5)
    xs, ages = rng.normal(3, 2, 200), rng.integers(0, 90, 200).astype(float)

    def local(rnd: Round) -> np.ndarray:
        out = []
        for t in rnd.terms:
            data = {"x": xs, "age": ages}
            if t.kind == "moment":
                if not t.columns:
                    out.append([len(xs)])
                else:
                    v = np.ones(len(xs))
                    for c, p, ctr in zip(t.columns, t.powers, t.centers, strict=True):
                        v = v * (data[c] - ctr) ** p
                    out.append([v.sum()])
            elif t.kind == "octaves":
                o = np.zeros(t.size)
                for v in data[t.columns[0]]:
                    o[OCTAVE_HALF + octave_key(v)] += 1
                out.append(o)
            else:
                v = data[t.columns[0]]
                b = t.start + t.nbins * t.width
                inside = v[(v >= t.start) & (v < b)]
                idx = np.clip(np.floor((inside - t.start) / t.width), 0, t.nbins - 1)
                g = np.bincount(idx.astype(int), minlength=t.nbins)
                out.append([np.sum(v < t.start), *g, np.sum(v >= b)])
        return np.concatenate([np.asarray(o, dtype=float) for o in out])

    comp = start(q, SCHEMA, 2)
    totals = []
    while (rnd := comp.next_round()) is not None:
        assert replay(q, SCHEMA, 2, totals) == rnd
        totals.append(local(rnd))
        comp.feed(totals[-1])
    assert replay(q, SCHEMA, 2, totals) is None
    with pytest.raises(ProtocolError, match="finished after"):
        replay(q, SCHEMA, 2, [*totals, totals[-1]])
    assert abs(comp.result().value.loc["mean", "x"] - xs.mean()) < 1e-9
