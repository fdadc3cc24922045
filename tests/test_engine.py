"""The node's local engine: start-up data checks (errors naming file, line and column), every
term kind computed against numpy/pandas, grouped rounds, Parquet, thread safety and the
anonymization access paths."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import ConfigError, DataError
from trustspace.stats import OCTAVE_HALF, Round, Term, octave_key

COLS = {"id": "int", "x": "float", "name": "str", "flag": "bool", "day": "date"}
GOOD = "id,x,name,flag,day\n1,2.5,ann,true,2024-01-01\n2,,bob,false,2024-02-29\n3,-1e3,,true,\n"


def engine_for(tmp_path: Path, text: str, columns=None, **kw) -> Engine:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return Engine({"d": DatasetSpec("d", path, columns=columns or COLS, **kw)})


def test_good_file_validates_and_schema(tmp_path):
    eng = engine_for(tmp_path, GOOD)
    eng.validate()
    assert eng.schema("d").columns["x"].value == "float"
    assert eng.datasets == ("d",)
    assert eng.compute(
        Round("d", None, (Term.rows(), Term.count("x"), Term.count("name")))
    ).tolist() == [3.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD + "4,abc,dan,true,2024-01-01\n",
            r"line 5, column 2 \('x'\): cannot read 'abc' as float",
        ),
        (
            GOOD + "4.5,1,dan,true,2024-01-01\n",
            r"line 5, column 1 \('id'\): cannot read '4.5' as int",
        ),
        (GOOD + "4,1,dan,maybe,2024-01-01\n", r"line 5, column 4 \('flag'\): cannot read 'maybe'"),
        (GOOD + "4,1,dan,true,2024-13-01\n", r"line 5, column 5 \('day'\).*date"),
        (GOOD + "4,1,dan,true\n", r"line 5: 4 fields, expected 5"),
        (GOOD + "4,1,dan,true,2024-01-01,extra\n", r"line 5: 6 fields, expected 5"),
        (GOOD + "4,inf,dan,true,2024-01-01\n", r"line 5, column 2 \('x'\): cannot read 'inf'"),
        ("id,x,name,flag\n1,2,a,true\n", r"line 1 \(header\): missing column\(s\) 'day'"),
        (
            "id,x,name,flag,day,zzz\n",
            r"line 1 \(header\): unexpected column\(s\) 'zzz' \(first at field 6\)",
        ),
        ("x,id,name,flag,day\n", r"line 1 \(header\): columns are in the order x, id"),
        ("id;x;name;flag;day\n", r"delimiter ','"),
        ("", r"line 1: the file is empty"),
    ],
)
def test_bad_data_names_file_line_and_column(tmp_path, text, expected):
    eng = engine_for(tmp_path, text)
    with pytest.raises(DataError, match=expected) as exc:
        eng.validate()
    assert str(tmp_path / "data.csv") in str(exc.value)


def test_bad_row_deep_in_a_large_file_is_located(tmp_path):
    lines = ["id,x"] + [f"{i},{i * 0.5}" for i in range(200_000)]
    lines[150_001] = "150000,1.5.2"
    eng = engine_for(tmp_path, "\n".join(lines) + "\n", columns={"id": "int", "x": "float"})
    with pytest.raises(DataError, match=r"line 150002, column 2 \('x'\): cannot read '1.5.2'"):
        eng.validate()


def test_missing_file_and_unknown_dataset(tmp_path):
    eng = Engine({"d": DatasetSpec("d", tmp_path / "nope.csv", columns=COLS)})
    with pytest.raises(DataError, match=r"nope.csv.*file not found"):
        eng.validate()
    with pytest.raises(ConfigError, match=r"unknown dataset 'e'; this node serves: d"):
        eng.schema("e")


def test_spec_validation():
    with pytest.raises(ConfigError, match=r"format: 'xlsx'"):
        DatasetSpec("d", "a.csv", format="xlsx", columns=COLS)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"delimiter"):
        DatasetSpec("d", "a.csv", columns=COLS, delimiter=";;")
    with pytest.raises(ConfigError, match=r"columns: expected a non-empty"):
        DatasetSpec("d", "a.csv", columns={})
    with pytest.raises(ConfigError, match=r"domains.nope'?: no such column"):
        DatasetSpec("d", "a.csv", columns=COLS, domains={"nope": ["a"]})
    with pytest.raises(ConfigError, match=r"dataset key 'e' names a spec called 'd'"):
        Engine({"e": DatasetSpec("d", "a.csv", columns=COLS)})


def test_custom_nulls_and_no_header(tmp_path):
    eng = engine_for(
        tmp_path,
        "1;NA\n2;3.5\n",
        columns={"id": "int", "x": "float"},
        delimiter=";",
        header=False,
        null_values=("NA",),
    )
    eng.validate()
    assert eng.compute(Round("d", "x is null", (Term.rows(),))).tolist() == [1.0]


# ---------------------------------------------------------------------------------------------
# compute(): every term kind against numpy


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 5000
    df = pd.DataFrame(
        {
            "a": rng.normal(10, 3, n),
            "b": rng.integers(-100, 100, n).astype("float64"),
            "g": rng.choice(["u", "v", "w", "zz"], n),
        }
    )
    df.loc[rng.random(n) < 0.2, "a"] = np.nan
    df.loc[rng.random(n) < 0.1, "b"] = np.nan
    df.loc[rng.random(n) < 0.05, "g"] = None
    df["b"] = df["b"].astype("Int64")
    return df


@pytest.fixture(scope="module", params=["csv", "csv-unloaded", "parquet"])
def engine(frame, tmp_path_factory, request) -> Engine:
    root = tmp_path_factory.mktemp("eng")
    cols = {"a": "float", "b": "int", "g": "str"}
    if request.param == "parquet":
        path = root / "f.parquet"
        frame.to_parquet(path)
        eng = Engine({"f": DatasetSpec("f", path, format="parquet", columns=cols)})
    else:
        path = root / "f.csv"
        frame.to_csv(path, index=False)
        eng = Engine({"f": DatasetSpec("f", path, columns=cols)}, load=request.param == "csv")
    eng.validate()
    return eng


def test_moment_terms(engine, frame):
    a, b = frame["a"], frame["b"].astype("float64")
    both = a.notna() & b.notna()
    terms = (
        Term.rows(),
        Term.count("a"),
        Term.count("a", "b"),
        Term.moment(["a"], [1], [0.0], 30),
        Term.moment(["a"], [3], [10.0], 30),
        Term.moment(["a", "b"], [1, 1], [10.0, -1.0], 30),
        Term.moment(["a", "b"], [2, 0], [1.0, 0.0], 30),
        Term.moment(["b"], [4], [0.5], 0),
    )
    got = engine.compute(Round("f", "g != 'w'", terms))
    m = (frame.g != "w") & frame.g.notna()
    a, b, both = a[m], b[m], both[m]
    want = [
        m.sum(),
        a.notna().sum(),
        both.sum(),
        a.sum(),
        ((a - 10) ** 3).sum(),
        ((a[both] - 10) * (b[both] + 1)).sum(),
        ((a[both] - 1) ** 2).sum(),
        ((b - 0.5) ** 4).sum(),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_histogram_terms(engine, frame):
    a = frame["a"].dropna().to_numpy()
    b = frame["b"].dropna().to_numpy(dtype=np.float64)
    edges = [-100, -50, 0, 0.5, 50, 99]
    terms = (
        Term.octaves("a"),
        Term.grid("a", 4.0, 0.25, 40),
        Term.bins("b", edges),
        Term.grid("b", -64.0, 2.0, 64),
    )
    rnd = Round("f", None, terms)
    got = engine.compute(rnd)
    # octaves
    octs = got[rnd.term_slice(0)]
    want = np.zeros(len(octs))
    for v in a:
        key = octave_key(v)
        want[OCTAVE_HALF + key] += 1
    np.testing.assert_array_equal(octs, want)
    # equal-width grid with under- and overflow
    grid = got[rnd.term_slice(1)]
    inside, _ = np.histogram(a, bins=np.arange(41) * 0.25 + 4.0)
    inside[-1] -= np.sum(a == 14.0)  # numpy closes the last bin; the grid does not
    assert grid[0] == np.sum(a < 4.0) and grid[-1] == np.sum(a >= 14.0)
    np.testing.assert_array_equal(grid[1:-1], inside)
    # explicit edges: numpy.histogram semantics
    bins = got[rnd.term_slice(2)]
    counts, _ = np.histogram(b, bins=edges)
    np.testing.assert_array_equal(bins[1:-1], counts)
    assert bins[0] == np.sum(b < -100) and bins[-1] == np.sum(b > 99)
    grid_b = got[rnd.term_slice(3)]
    assert grid_b.sum() == len(b)
    np.testing.assert_array_equal(
        grid_b[1:-1],
        np.histogram(b, bins=np.arange(65) * 2.0 - 64)[0] - np.eye(64)[-1] * np.sum(b == 64.0),
    )


def test_grouped_round(engine, frame):
    terms = (
        Term.rows(),
        Term.count("a"),
        Term.moment(["a"], [1], [0.0], 30),
        Term.moment(["b"], [2], [3.0], 20),
    )
    rnd = Round("f", "b > -50", terms, group_column="g", group_values=("w", "u", "nope"))
    got = engine.compute(rnd).reshape(4, 4)
    f = frame[(frame.b > -50).fillna(False)]
    for i, gv in enumerate(["w", "u", "nope"]):
        part = f[f.g == gv]
        bb = part.b.dropna().astype("float64")
        np.testing.assert_allclose(
            got[i], [len(part), part.a.count(), part.a.sum(), ((bb - 3) ** 2).sum()], rtol=1e-12
        )
    other = f[f.g.isin(["v", "zz"])]  # not listed (nulls are skipped, as pandas does)
    assert got[3, 0] == len(other)


def test_compute_rejects_bad_rounds(engine):
    with pytest.raises(ConfigError, match=r"unknown column 'zzz'.*known columns: a, b, g"):
        engine.compute(Round("f", None, (Term.count("zzz"),)))
    with pytest.raises(ConfigError, match=r"'g' is str, not numeric"):
        engine.compute(Round("f", None, (Term.moment(["g"], [1], [0.0], 0),)))
    with pytest.raises(ConfigError, match=r"unknown dataset 'x'"):
        engine.compute(Round("x", None, (Term.rows(),)))
    with pytest.raises(ConfigError, match=r"column 1: unexpected character ';'"):
        engine.compute(Round("f", "; drop table f", (Term.rows(),)))


def test_thread_safety(engine, frame):
    rnd = Round(
        "f",
        "a > 9",
        (Term.rows(), Term.moment(["a"], [2], [0.0], 20), Term.grid("a", 0.0, 1.0, 32)),
    )
    expected = engine.compute(rnd)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(engine.compute(rnd))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 30
    for r in results:
        np.testing.assert_allclose(r, expected, rtol=1e-12)


def test_tuple_histogram_and_rows(engine, frame):
    tuples, counts = engine.tuple_histogram("f", ["g", "b"], where="b > 90")
    f = frame[(frame.b > 90).fillna(False)]
    want = f.groupby(["g", "b"], dropna=False).size()
    got = {(g if g is not None else None, b): c for (g, b), c in zip(tuples, counts, strict=True)}
    assert sum(got.values()) == len(f)
    for (g, b), c in want.items():
        key = (None if pd.isna(g) else g, int(b))
        assert got[key] == c
    rows = engine.rows("f", ["a", "g"], where="g = 'zz' and a is not null")
    assert list(rows.columns) == ["a", "g"]
    assert len(rows) == int(((frame.g == "zz") & frame.a.notna()).sum())
    with pytest.raises(ConfigError, match="unknown column 'q'"):
        engine.rows("f", ["q"])


def test_date_and_bool_filters(tmp_path):
    eng = engine_for(tmp_path, GOOD)
    eng.validate()
    count = Round("d", "day >= '2024-02-01' or flag = false", (Term.rows(),))
    assert eng.compute(count).tolist() == [1.0]
    assert eng.compute(Round("d", "day is null and flag = true", (Term.rows(),))).tolist() == [1.0]


def test_declared_bounds_are_checked(tmp_path):
    cols = {"id": "int", "x": "float"}
    eng = engine_for(tmp_path, "id,x\n1,0.5\n2,\n3,7.5\n", columns=cols, bounds={"x": (0, 5)})
    with pytest.raises(DataError, match=r"line 4, column 2 \('x'\): '7.5' is outside the declared"):
        eng.validate()
    eng = engine_for(tmp_path, "id,x\n1,0.5\n2,\n3,5\n", columns=cols, bounds={"x": (0, 5)})
    eng.validate()
    assert eng.schema("d").bounds == {"x": (0.0, 5.0)}
    with pytest.raises(ConfigError, match=r"bounds.id'?: low must be below high"):
        DatasetSpec("d", "a.csv", columns=cols, bounds={"id": (3, 3)})
    with pytest.raises(ConfigError, match=r"int and float columns only"):
        DatasetSpec("d", "a.csv", columns={"s": "str"}, bounds={"s": (0, 1)})


def test_one_statement_per_round(engine, monkeypatch):
    """describe over several columns: every round is ONE DuckDB statement on each node."""
    from contextlib import contextmanager

    from trustspace.stats import Query, start

    calls: list[str] = []
    real = Engine._cursor

    @contextmanager
    def counting(self):
        with real(self) as cur:

            class Proxy:
                def execute(self, sql, params=()):
                    calls.append(sql)
                    return cur.execute(sql, params)

                def interrupt(self):
                    cur.interrupt()

            yield Proxy()

    monkeypatch.setattr(Engine, "_cursor", counting)
    comp = start(Query("describe", "f", ["a", "b"], where="g != 'u'"), engine.schema("f"), 0)
    rounds = 0
    while (rnd := comp.next_round()) is not None:
        before = len(calls)
        comp.feed(engine.compute(rnd))
        assert len(calls) == before + 1
        rounds += 1
    assert rounds == 4 and len(calls) == 4
    assert all(sql.lstrip().upper().startswith("SELECT") for sql in calls)


def test_parquet_checks(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"a": [1.5, np.inf], "s": ["x", "y"]}).to_parquet(path)
    eng = Engine(
        {"p": DatasetSpec("p", path, format="parquet", columns={"a": "float", "s": "str"})}
    )
    with pytest.raises(DataError, match=r"p.parquet: column 'a': 1 value\(s\) are infinite"):
        eng.validate()
    eng = Engine({"p": DatasetSpec("p", path, format="parquet", columns={"a": "int"})})
    with pytest.raises(
        DataError, match=r"column 'a' is stored as DOUBLE but the spec declares int"
    ):
        eng.validate()
    eng = Engine({"p": DatasetSpec("p", path, format="parquet", columns={"b": "int"})})
    with pytest.raises(DataError, match=r"missing column 'b'; the file has: a, s"):
        eng.validate()
    (tmp_path / "bad.parquet").write_text("not parquet")
    eng = Engine(
        {"p": DatasetSpec("p", tmp_path / "bad.parquet", format="parquet", columns={"a": "int"})}
    )
    with pytest.raises(DataError, match=r"bad.parquet: dataset 'p': the file looks like text"):
        eng.validate()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1\xff\x00 truncated")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        eng.validate()
