"""Nodes over PostgreSQL and Spark give the answers nodes over CSV and Parquet give (issue 18).

The same three Adult partitions are served as CSV, as Parquet, as PostgreSQL tables (a real
server: ``pg_admin``) and through a real Spark session (``local[2]``), and as a mixed
federation (one node of each kind). Counts, histograms, cross tabulations, quantiles and the
k-anonymous release are identical; float sums agree to the last bits (every engine adds the
rows in its own order). Then what operators get wrong: unreachable servers, wrong passwords,
missing tables and columns, types that differ from the declaration, statement timeouts and
failing Spark jobs, each named, while the node keeps serving its other datasets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace import Federation
from trustspace._cancel import CancelScope, cancel_scope
from trustspace.anon import Hierarchy
from trustspace.engine import DatasetSpec, Engine
from trustspace.engine._sources import PostgresSource, SparkSource
from trustspace.errors import ConfigError, DataError
from trustspace.stats import Round, Term

ADULT = Path(__file__).resolve().parents[1] / "demos" / "data" / "adult" / "adult.csv"
COLS = {
    "sex": "str",
    "age": "int",
    "race": "str",
    "marital-status": "str",
    "hours": "float",
    "salary-class": "str",
    "high": "int",
}
NODES = ("a", "b", "c")
POLICY = {
    "min_group_size": 10,
    "release_rows": True,
    "rules": [{"analysts": ["*"], "operations": ["*"]}],
}
MASTER = "local[2]"
pytestmark = pytest.mark.slow


def _partitions() -> dict[str, pd.DataFrame]:
    adult = pd.read_csv(ADULT, sep=";").head(4500).reset_index(drop=True)
    rng = np.random.default_rng(18)  # test data only
    adult["hours"] = np.round(rng.normal(40, 11, len(adult)), 2)
    adult.loc[rng.random(len(adult)) < 0.05, "hours"] = np.nan
    adult["high"] = (adult["salary-class"] == ">50K").astype(int)
    adult = adult[list(COLS)]
    return {n: adult.iloc[i::3].reset_index(drop=True) for i, n in enumerate(NODES)}


DOMAINS = {"sex": ("Female", "Male"), "salary-class": ("<=50K", ">50K")}


@pytest.fixture(scope="module")
def parts() -> dict[str, pd.DataFrame]:
    return _partitions()


@pytest.fixture(scope="module")
def files(parts: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    for n, df in parts.items():
        df.to_csv(root / f"{n}.csv", index=False)
        df.to_parquet(root / f"{n}.parquet", index=False)
    return root


def _pg_exec(dsn: str, *sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in sql:
            conn.execute(s)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pg(pg_admin: str, parts: dict[str, pd.DataFrame], files: Path) -> dict[str, Any]:
    """Tables ts.part_a..c (loaded with COPY), a view, and a reader role with SELECT only and a
    password in a 0600 file; ``source(table)`` makes a PostgresSource as a node declares it."""
    import psycopg

    info = dict(kv.split("=", 1) for kv in pg_admin.split())
    password = "reader-" + os.urandom(6).hex()
    create = ", ".join(
        f'"{c}" {dict(int="bigint", float="double precision").get(t, "text")}'
        for c, t in COLS.items()
    )
    stmts = [
        "DROP SCHEMA IF EXISTS ts CASCADE",
        "DROP ROLE IF EXISTS ts_reader",
        "CREATE SCHEMA ts",
        f"CREATE ROLE ts_reader LOGIN PASSWORD '{password}'",
        "GRANT USAGE ON SCHEMA ts TO ts_reader",
    ]
    for n in NODES:
        stmts += [
            f"CREATE TABLE ts.part_{n} ({create})",
            f"GRANT SELECT ON ts.part_{n} TO ts_reader",
        ]
    # an age stored as text (a type mismatch) and a slow view (a statement timeout)
    stmts += [
        'CREATE TABLE ts.wrong_type (sex text, age text, race text, "marital-status" text, '
        'hours double precision, "salary-class" text, high bigint)',
        "GRANT SELECT ON ts.wrong_type TO ts_reader",
        "CREATE FUNCTION ts.slowly(x bigint) RETURNS boolean VOLATILE LANGUAGE plpgsql "
        "AS 'BEGIN PERFORM pg_sleep(0.01); RETURN true; END'",
        "CREATE VIEW ts.slow AS SELECT * FROM ts.part_a AS p WHERE ts.slowly(p.age)",
        "GRANT SELECT ON ts.slow TO ts_reader",
        # a view whose age fails to convert for some rows: PostgreSQL's message quotes them
        "CREATE VIEW ts.badcast AS SELECT sex, (CASE WHEN age > 80 THEN 'secret-' || age "
        'ELSE age::text END)::bigint AS age, race, "marital-status", hours, "salary-class", '
        "high FROM ts.part_a",
        "GRANT SELECT ON ts.badcast TO ts_reader",
        "CREATE TABLE ts.secret (x int)",  # no grant: the reader may not see it
        # the reader may write here: a write must still be impossible through the node
        "CREATE TABLE ts.scratch (x int)",
        "GRANT SELECT, INSERT ON ts.scratch TO ts_reader",
    ]
    _pg_exec(pg_admin, *stmts)
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        for n, df in parts.items():
            with conn.cursor().copy(f"COPY ts.part_{n} FROM STDIN") as cp:
                for row in df.itertuples(index=False):
                    cp.write_row([None if isinstance(v, float) and np.isnan(v) else v for v in row])
    pw = files / "reader.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    conn_kw = {
        "host": info["host"],
        "port": info["port"],
        "dbname": info["dbname"],
        "user": "ts_reader",
    }

    def source(table: str, **kw: Any) -> PostgresSource:
        return PostgresSource(
            table=table, connection={**conn_kw, **kw.pop("connection", {})}, password_file=pw, **kw
        )

    return {"source": source, "password_file": pw, "conn": conn_kw, "admin": pg_admin}


def _spec(kind: str, node: str, files: Path, pg: dict[str, Any] | None) -> Any:
    if kind == "csv":
        return files / f"{node}.csv"
    if kind == "parquet":
        return files / f"{node}.parquet"
    if kind == "postgresql":
        assert pg is not None
        src: Any = pg["source"](f"ts.part_{node}")
    else:
        src = SparkSource(path=files / f"{node}.parquet", master=MASTER)
    return DatasetSpec("default", columns=COLS, source=src, domains=DOMAINS)


QIS = {
    "age": Hierarchy.intervals("age", range(0, 100), widths=(10, 20, 100)),
    "sex": Hierarchy("sex", [("Female", "*"), ("Male", "*")]),
}


def _answers(fed: Federation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "count": fed.count("default", where="age >= 40 and \"marital-status\" != 'Divorced'"),
        "mean": fed.mean("default", "hours", where="sex = 'Female'"),
        "var": fed.var("default", "age"),
        "describe": fed.describe("default", ["age", "hours"], where="race in ('White', 'Black')"),
        "group_by": fed.group_by("default", "sex").agg({"hours": "mean", "age": ["count", "sum"]}),
        "histogram": fed.histogram("default", "age", bins=[17, 30, 45, 60, 91]),
        "histogram_auto": fed.histogram("default", "hours", bins=8, range=(0, 100)),
        "quantile": fed.quantile("default", "hours", [0.1, 0.5, 0.9]),
        "crosstab": fed.crosstab("default", "sex", "salary-class"),
        "corr": fed.corr("default", ["age", "hours"]),
    }
    races = ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"]
    marg = fed.marginals(
        "default",
        [["sex", "age"], ["race", "salary-class", "hours"]],
        cuts={"age": [17, 30, 45, 60, 91], "hours": [0, 30, 40, 50, 100]},
        values={"race": races},
    )
    out["marginal_2"], out["marginal_3"] = (
        marg[("sex", "age")],
        marg[("race", "salary-class", "hours")],
    )
    glm = fed.glm("default", "high ~ age + hours + C(sex)", family="binomial", where="hours > 0")
    out["glm"] = glm.params
    out["ols"] = fed.ols("default", "hours ~ age + C(sex)").params
    res = fed.anonymize("default", QIS, k=5, release=True)
    assert res.data is not None
    cols = list(res.data.columns)
    out["anon"] = (res.data.sort_values(cols).reset_index(drop=True), res.suppressed)
    return out


def _same(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Exact for counts and releases; float sums to 1e-12 relative."""
    for key in a:
        x, y = a[key], b[key]
        if key == "anon":
            pd.testing.assert_frame_equal(x[0], y[0], check_dtype=False, obj=f"{what} anon")
            assert x[1] == y[1], f"{what}: suppressed {x[1]} != {y[1]}"
        elif key in ("count", "histogram", "crosstab", "marginal_2", "marginal_3"):
            if isinstance(x, pd.Series | pd.DataFrame):
                assert x.equals(y), f"{what} {key}:\n{x}\n!=\n{y}"
            else:
                assert x == y, f"{what} {key}: {x} != {y}"
        elif key == "glm":  # an iterative fit: equal to its convergence tolerance
            pd.testing.assert_series_equal(x, y, rtol=1e-6, obj=f"{what} glm")
        elif isinstance(x, pd.DataFrame | pd.Series):
            pd.testing.assert_frame_equal(
                pd.DataFrame(x), pd.DataFrame(y), rtol=1e-12, atol=0, obj=f"{what} {key}"
            )
        else:
            assert x == pytest.approx(y, rel=1e-12, abs=0), f"{what} {key}: {x} != {y}"


@pytest.fixture(scope="module")
def reference(files: Path, parts: dict[str, pd.DataFrame]) -> dict[str, Any]:
    parts_csv = {n: _spec("csv", n, files, None) for n in NODES}
    with Federation.local(parts_csv, POLICY, columns=COLS, domains=DOMAINS) as fed:
        ref = _answers(fed)
    union = pd.concat(parts.values(), ignore_index=True)  # and against pandas itself
    assert ref["count"] == int(((union.age >= 40) & (union["marital-status"] != "Divorced")).sum())
    assert ref["mean"] == pytest.approx(union.loc[union.sex == "Female", "hours"].mean(), rel=1e-12)
    want = pd.crosstab(union["sex"], union["salary-class"])
    assert np.array_equal(ref["crosstab"].to_numpy(), want.to_numpy())
    return ref


def _federation(kinds: dict[str, str], files: Path, pg: dict[str, Any] | None) -> Federation:
    specs = {n: _spec(kinds[n], n, files, pg) for n in NODES}
    return Federation.local(specs, POLICY, columns=COLS, domains=DOMAINS)


def test_parquet_nodes_answer_as_csv_nodes(files: Path, reference: dict[str, Any]) -> None:
    with _federation(dict.fromkeys(NODES, "parquet"), files, None) as fed:
        _same(reference, _answers(fed), "parquet")


def test_postgresql_nodes_answer_as_csv_nodes(
    files: Path, pg: dict[str, Any], reference: dict[str, Any]
) -> None:
    with _federation(dict.fromkeys(NODES, "postgresql"), files, pg) as fed:
        _same(reference, _answers(fed), "postgresql")


def test_spark_nodes_answer_as_csv_nodes(
    spark_ok: None, files: Path, reference: dict[str, Any]
) -> None:
    with _federation(dict.fromkeys(NODES, "spark"), files, None) as fed:
        _same(reference, _answers(fed), "spark")


def test_a_mixed_federation_answers_as_csv_nodes(
    spark_ok: None, files: Path, pg: dict[str, Any], reference: dict[str, Any]
) -> None:
    kinds = {"a": "csv", "b": "postgresql", "c": "spark"}
    with _federation(kinds, files, pg) as fed:
        _same(reference, _answers(fed), "mixed")


# ------------------------------------------------------------------ the statements sent
def test_postgresql_gets_one_parameterised_statement_per_round(pg: dict[str, Any]) -> None:
    """Every round is one SELECT at the server; the filter's values travel as parameters,
    never in the statement's text (pg_stat_activity would show them otherwise)."""
    eng = Engine({"t": DatasetSpec("t", columns=COLS, source=pg["source"]("ts.part_a"))})
    eng.validate()
    sent: list[tuple[str, list[Any]]] = []
    backend = eng._backends["t"]
    real = backend.query

    def spy(sql: str, params: Any, tag: Any = None) -> Any:
        sent.append((sql, list(params)))
        return real(sql, params, tag)

    backend.query = spy  # type: ignore[method-assign]
    marker = "Never-married-" + os.urandom(4).hex()
    rnd = Round(
        "t",
        f"\"marital-status\" != '{marker}' and age >= 33",
        (Term.rows(), Term.bins("age", [17, 40, 91]), Term.moment(("hours",), (1,), (0.0,), 20)),
    )
    eng.compute(rnd, tag="req-1")
    assert len(sent) == 1
    sql, params = sent[0]
    assert sql.startswith("SELECT") and marker not in sql and "33" not in sql
    assert marker in params and 33 in params
    assert '"ts"."part_a"' in sql and "%s" in sql
    eng.close()


def test_postgresql_sessions_are_read_only(pg: dict[str, Any]) -> None:
    """The reader may INSERT into ts.scratch, but not through a node's connection."""
    import psycopg

    eng = Engine({"t": DatasetSpec("t", columns=COLS, source=pg["source"]("ts.part_a"))})
    eng.validate()
    backend = eng._backends["t"]
    assert backend.query("SELECT current_setting('default_transaction_read_only')", []) == [("on",)]
    with pytest.raises(DataError, match="read-only transaction") as err:
        backend.query("INSERT INTO ts.scratch VALUES (%s)", [1])
    assert "1" not in str(err.value).split("ts.part_a")[-1]
    with psycopg.connect(pg["admin"]) as conn:
        assert conn.execute("SELECT count(*) FROM ts.scratch").fetchone() == (0,)
    eng.close()


def test_a_statement_is_cancelled_with_its_call(pg: dict[str, Any]) -> None:
    """A call that ends early (client gone, deadline) cancels its running statement at the
    server instead of leaving it to its statement timeout."""
    src = pg["source"]("ts.part_a", statement_timeout_s=120)
    eng = Engine({"t": DatasetSpec("t", columns=COLS, source=src)})
    eng.validate()
    scope = CancelScope()
    threading.Timer(0.5, scope.cancel).start()
    t0 = time.monotonic()
    with cancel_scope(scope), pytest.raises(DataError, match="cancelled"):
        eng._backends["t"].query("SELECT pg_sleep(60)", [])
    assert time.monotonic() - t0 < 10
    eng.close()


def test_the_password_never_appears_in_errors_or_labels(pg: dict[str, Any]) -> None:
    secret = pg["password_file"].read_text().strip()
    src = pg["source"]("ts.no_such_table")
    eng = Engine({"t": DatasetSpec("t", columns=COLS, source=src)})
    eng.validate()
    msg = eng.unavailable["t"]
    assert secret not in msg and secret not in src.label() and secret not in repr(src)


# ------------------------------------------------------------------ bad input
def _unavailable(src: Any, columns: dict[str, str] = COLS) -> str:
    eng = Engine({"t": DatasetSpec("t", columns=columns, source=src)})
    eng.validate()  # does not raise: the node serves its other datasets
    try:
        assert "t" in eng.unavailable
        with pytest.raises(DataError) as err:
            eng.compute(Round("t", None, (Term.rows(),)))
        return str(err.value)
    finally:
        eng.close()


def test_bad_postgresql_sources_are_named(pg: dict[str, Any]) -> None:
    src = pg["source"]
    msg = _unavailable(src("ts.part_a", connection={"port": "1"}, connect_timeout_s=1))
    assert "dataset 't'" in msg and "cannot connect" in msg and "postgresql" in msg
    assert "port" in msg  # check host, port ...
    bad_pw = pg["password_file"].with_name("wrong.pw")
    bad_pw.write_text("not-the-password\n")
    bad_pw.chmod(0o600)
    wrong = PostgresSource(table="ts.part_a", connection=pg["conn"], password_file=bad_pw)
    msg = _unavailable(wrong)
    assert "password authentication failed" in msg and "password_file" in msg
    assert "not-the-password" not in msg
    msg = _unavailable(src("ts.no_such_table"))
    assert "no such table or view" in msg and "ts.no_such_table" in msg
    msg = _unavailable(src("ts.secret"))  # exists, but the reader may not see it
    assert "no such table or view" in msg or "permission denied" in msg
    msg = _unavailable(src("ts.part_a"), {**COLS, "income": "float"})
    assert "no column 'income'" in msg and "ts.part_a" in msg
    msg = _unavailable(src("ts.wrong_type"))
    assert "column 'age' is text at the source but declared int" in msg


def test_a_value_in_a_source_error_never_leaves_the_node(pg: dict[str, Any]) -> None:
    """PostgreSQL's own message would quote the failing value ("secret-85"): the node names
    the dataset and the SQLSTATE only."""
    spec = DatasetSpec("t", columns=COLS, source=pg["source"]("ts.badcast"))
    eng = Engine({"t": spec})
    eng.validate()  # the columns fit; the values fail only when read
    with pytest.raises(DataError) as err:
        eng.compute(Round("t", None, (Term.moment(("age",), (1,), (0.0,), 0),)))
    msg = str(err.value)
    assert "dataset 't'" in msg and "SQLSTATE 22P02" in msg and "secret" not in msg
    eng.close()


def test_a_statement_timeout_is_named_and_the_node_goes_on(pg: dict[str, Any]) -> None:
    eng = Engine(
        {
            "slow": DatasetSpec(
                "slow", columns=COLS, source=pg["source"]("ts.slow", statement_timeout_s=0.3)
            ),
            "fast": DatasetSpec("fast", columns=COLS, source=pg["source"]("ts.part_b")),
        }
    )
    eng.validate()  # the slow view's start-up check times out: unavailable, not fatal
    assert "slow" in eng.unavailable and "fast" not in eng.unavailable
    assert "statement_timeout_s of 0.3 s" in eng.unavailable["slow"]
    assert eng.compute(Round("fast", None, (Term.rows(),)))[0] == 1500
    eng.close()


def test_postgresql_config_mistakes_are_refused() -> None:
    with pytest.raises(ConfigError, match="a password does not belong"):
        PostgresSource(table="t", dsn="host=x user=u password=hunter2")
    with pytest.raises(ConfigError, match="a password does not belong"):
        PostgresSource(table="t", connection={"host": "x", "password": "hunter2"})
    with pytest.raises(ConfigError, match="not SQL"):
        PostgresSource(table="t; DROP TABLE x", connection={"host": "x"})
    with pytest.raises(ConfigError, match="exactly one of dsn or connection"):
        PostgresSource(table="t")


def test_a_password_file_others_may_read_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    src = PostgresSource(table="t", connection={"host": "127.0.0.1"}, password_file=pw)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        src.password()
    assert "s3cret" not in str(err.value)
    env = PostgresSource(table="t", connection={"host": "x"}, password_env="TS_NO_SUCH_VAR_18")
    with pytest.raises(ConfigError, match=r"TS_NO_SUCH_VAR_18.*not set"):
        env.password()


def test_bad_spark_sources_are_named(spark_ok: None, files: Path) -> None:
    msg = _unavailable(SparkSource(path=files / "missing.parquet", master=MASTER))
    assert "dataset 't'" in msg and "spark" in msg and "missing.parquet" in msg
    msg = _unavailable(
        SparkSource(path=files / "a.parquet", master=MASTER), {**COLS, "income": "int"}
    )
    assert "no column 'income'" in msg
    msg = _unavailable(SparkSource(path=files / "a.parquet", master=MASTER), {**COLS, "age": "str"})
    assert "column 'age' is long at the source but declared str" in msg
    msg = _unavailable(SparkSource(table="no_such_table_18", master=MASTER))
    assert "TABLE_OR_VIEW_NOT_FOUND" in msg or "no such table" in msg


def test_a_failing_spark_job_is_named_and_tagged(
    spark_ok: None, files: Path, tmp_path: Path
) -> None:
    """The Parquet file goes away after the start-up check: the round's job fails, the error
    names the dataset and the job tag, the other dataset is still served."""
    import shutil

    gone = tmp_path / "gone.parquet"
    shutil.copy(files / "a.parquet", gone)
    eng = Engine(
        {
            "gone": DatasetSpec("gone", columns=COLS, source=SparkSource(path=gone, master=MASTER)),
            "ok": DatasetSpec(
                "ok", columns=COLS, source=SparkSource(path=files / "b.parquet", master=MASTER)
            ),
        }
    )
    eng.validate()
    assert eng.unavailable == {}
    gone.unlink()
    with pytest.raises(DataError, match=r"dataset 'gone'.*Spark job failed.*trustspace-req-18"):
        eng.compute(Round("gone", None, (Term.rows(),)), tag="req-18")
    from trustspace._cancel import request_tag

    with request_tag("anon-18"), pytest.raises(DataError, match="trustspace-anon-18"):
        eng.rows("gone")  # an anonymization's read: tagged with its request too
    assert eng.compute(Round("ok", None, (Term.rows(),)))[0] == 1500
    eng.close()


def test_a_spark_table_of_the_catalog(
    spark_ok: None, files: Path, parts: dict[str, pd.DataFrame]
) -> None:
    from pyspark.sql import SparkSession

    first = Engine(
        {
            "p": DatasetSpec(
                "p", columns=COLS, source=SparkSource(path=files / "a.parquet", master=MASTER)
            )
        }
    )
    first.validate()
    spark = SparkSession.getActiveSession()
    assert spark is not None
    spark.read.parquet(str(files / "c.parquet")).createOrReplaceTempView("adult_c_18")
    eng = Engine(
        {"t": DatasetSpec("t", columns=COLS, source=SparkSource(table="adult_c_18", master=MASTER))}
    )
    eng.validate()
    got = eng.compute(Round("t", "sex = 'Male'", (Term.rows(), Term.count("hours"))))
    c = parts["c"]
    assert got.tolist() == [
        float((c.sex == "Male").sum()),
        float(((c.sex == "Male") & c.hours.notna()).sum()),
    ]
    from trustspace.engine._sources import open_backend

    with pytest.raises(ConfigError, match="shares one session"):
        open_backend(SparkSource(table="adult_c_18", master="local[1]"), "dataset 'x'")
    eng.close()
    first.close()


# ------------------------------------------------------------------ real node processes
def test_node_processes_over_a_database_from_their_config(
    pg: dict[str, Any], files: Path, parts: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    """Node b reads its partition from PostgreSQL as its TOML config declares it (the password
    from a file next to the config), beside nodes over CSV and Parquet; its second dataset's
    table does not exist (the others serve theirs): a query on it names node, dataset, source
    and what to do, and the node goes on serving the first. `trustspace node --check` refuses
    the same config."""
    import shutil
    import subprocess
    import sys

    from trustspace.api import Credentials
    from trustspace.errors import TrustspaceError
    from trustspace.testing import LocalSpace, NodeSpec

    space_root = tmp_path / "space"
    space_root.mkdir()
    shutil.copy(pg["password_file"], space_root / "b.pw")
    (space_root / "b.pw").chmod(0o600)
    conn = dict(pg["conn"])
    common = {"columns": COLS, "domains": {k: list(v) for k, v in DOMAINS.items()}}
    pgkeys = {"source": "postgresql", "connection": conn, "password_file": "b.pw"}
    specs = [
        NodeSpec(
            "a",
            {n: {"path": files / "a.csv", **common} for n in ("adult", "broken")},
            POLICY,
            POLICY["rules"],
        ),
        NodeSpec(
            "b",
            {
                "adult": {**pgkeys, "table": "ts.part_b", **common},
                "broken": {**pgkeys, "table": "ts.gone_missing", **common},
            },
            POLICY,
            POLICY["rules"],
        ),
        NodeSpec(
            "c",
            {
                n: {"path": files / "c.parquet", "format": "parquet", **common}
                for n in ("adult", "broken")
            },
            POLICY,
            POLICY["rules"],
        ),
    ]
    union = pd.concat(parts.values(), ignore_index=True)
    with LocalSpace(space_root) as space:
        space.init_ca(["a", "b", "c"], analysts=["alice"])
        target = space.start_all(specs)
        with Federation.connect(
            target, credentials=Credentials.from_dir(space.identity("alice"))
        ) as fed:
            assert fed.count("adult") == len(union)
            assert fed.mean("adult", "hours") == pytest.approx(union.hours.mean(), rel=1e-12)
            with pytest.raises(TrustspaceError) as err:
                fed.count("broken")
            msg = str(err.value)
            assert "node b" in msg and "dataset 'broken'" in msg and "ts.gone_missing" in msg
            assert "check table" in msg
            assert fed.count("adult", where="sex = 'Male'") == int((union.sex == "Male").sum())
        log = (space_root / "b.log").read_text()
        assert pg["password_file"].read_text().strip() not in log
        cfg = str(space_root / "b.toml")
        check = subprocess.run(
            [sys.executable, "-m", "trustspace.cli.main", "node", "--check", cfg],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert check.returncode != 0 and "ts.gone_missing" in check.stderr


def test_a_reload_checks_the_source_again(pg: dict[str, Any]) -> None:
    """The table changes under a running node: the reload's check names the column and both
    types, and the dataset is unavailable until the table fits its declaration again."""
    _pg_exec(
        pg["admin"],
        "DROP TABLE IF EXISTS ts.altered",
        "CREATE TABLE ts.altered AS SELECT * FROM ts.part_a",
        "GRANT SELECT ON ts.altered TO ts_reader",
    )
    eng = Engine({"t": DatasetSpec("t", columns=COLS, source=pg["source"]("ts.altered"))})
    eng.validate()
    assert eng.recheck_sources() == {}
    _pg_exec(pg["admin"], "ALTER TABLE ts.altered ALTER COLUMN age TYPE text")
    why = eng.recheck_sources()
    assert "column 'age' is text at the source but declared int" in why["t"]
    with pytest.raises(DataError, match="column 'age' is text"):
        eng.compute(Round("t", None, (Term.rows(),)))
    _pg_exec(pg["admin"], "ALTER TABLE ts.altered ALTER COLUMN age TYPE bigint USING age::bigint")
    assert eng.recheck_sources() == {}
    assert eng.compute(Round("t", None, (Term.rows(),)))[0] == 1500
    eng.close()


def _guarded(work: Callable[[], Any]) -> tuple[Callable[[], Any], list[Callable[[], None]]]:
    """``work`` as a node's gRPC method runs it (``transport.status.guard``), with a context
    that keeps the termination callbacks gRPC would call when the client goes away."""
    from trustspace.transport.status import guard

    callbacks: list[Callable[[], None]] = []

    class Context:
        def add_callback(self, fn: Callable[[], None]) -> bool:
            callbacks.append(fn)
            return True

        def abort(self, code: Any, details: str) -> None:
            raise RuntimeError(f"{code}: {details}")

        def set_trailing_metadata(self, md: Any) -> None:
            pass

    method = guard(
        lambda req, who: work(),
        server_name="node a",
        method="SecAggStep",
        allowed_roles=("aggregator",),
    )
    import trustspace.transport.status as status

    def call() -> Any:
        real = status.peer_identity
        status.peer_identity = lambda ctx: type("Who", (), {"role": "aggregator", "name": "agg"})()  # type: ignore[assignment]
        try:
            return method(None, Context())
        finally:
            status.peer_identity = real

    return call, callbacks


def test_an_abandoned_call_cancels_its_postgresql_statement(pg: dict[str, Any]) -> None:
    eng = Engine(
        {
            "t": DatasetSpec(
                "t", columns=COLS, source=pg["source"]("ts.part_a", statement_timeout_s=120)
            )
        }
    )
    eng.validate()
    call, callbacks = _guarded(lambda: eng._backends["t"].query("SELECT pg_sleep(60)", []))
    threading.Timer(0.8, lambda: [cb() for cb in callbacks]).start()  # the client went away
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="cancelled"):
        call()
    assert time.monotonic() - t0 < 10
    eng.close()


def test_an_abandoned_call_cancels_its_spark_jobs(spark_ok: None, files: Path) -> None:
    eng = Engine(
        {
            "t": DatasetSpec(
                "t", columns=COLS, source=SparkSource(path=files / "a.parquet", master=MASTER)
            )
        }
    )
    eng.validate()
    backend = eng._backends["t"]
    long_job = "SELECT count(*) FROM range(100000000000) AS r WHERE r.id % 7 = ?"
    call, callbacks = _guarded(lambda: backend.query(long_job, [3], tag="req-cancel"))
    threading.Timer(3.0, lambda: [cb() for cb in callbacks]).start()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"Spark job failed.*trustspace-req-cancel"):
        call()
    assert time.monotonic() - t0 < 30
    eng.close()


def test_the_console_shows_an_unavailable_source(pg: dict[str, Any], files: Path) -> None:
    """The operator sees which source is unavailable and why, on the datasets page; never the
    password."""
    from starlette.testclient import TestClient

    from trustspace.admin._views import NodeView
    from trustspace.admin.app import create_app

    specs = {
        "a": files / "a.csv",
        "b": DatasetSpec("default", columns=COLS, source=pg["source"]("ts.vanished")),
    }
    with Federation.local(specs, POLICY, columns=COLS, domains=DOMAINS) as fed:
        node = fed.nodes["b"]
        ca_pem = (fed.workdir / "ca" / "ca.pem").read_bytes()
        view = NodeView(
            node.service, serving=lambda: True, address=lambda: node.address, ca_pem=ca_pem
        )
        with TestClient(create_app(view), base_url="http://127.0.0.1") as client:
            page = client.get("/datasets").text
            d = client.get("/api/datasets").json()["datasets"][0]
    assert "unavailable: node b: dataset &#39;default&#39;" in page or "unavailable: node b" in page
    assert "ts.vanished" in page and d["format"] == "postgresql"
    assert "no such table or view" in d["unavailable"]
    assert pg["password_file"].read_text().strip() not in page
