"""Node and aggregator TOML configs: every error names the file, the key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustspace.aggregator.config import load_aggregator_config
from trustspace.engine import ColumnType, DatasetSpec
from trustspace.errors import ConfigError
from trustspace.node.config import load_node_config

GOOD_NODE = """
[node]
name = "org-a"
listen = "127.0.0.1:0"

[tls]
dir = "certs/org-a"

[audit]
path = "audit/org-a.jsonl"

[datasets.adult]
path = "data/a.csv"
[datasets.adult.columns]
age = "int"
sex = "str"
[datasets.adult.domains]
sex = ["Female", "Male"]
[datasets.adult.bounds]
age = [0, 120]

[policy]
min_group_size = 5
rate_limit = { per_minute = 30, burst = 5 }
[[policy.rules]]
analysts = ["alice"]
operations = ["count", "mean"]
datasets = ["adult"]
columns = ["age"]
"""

GOOD_AGG = """
[aggregator]
name = "operator"
listen = "0.0.0.0:50050"
threshold = 2

[tls]
ca = "certs/ca.pem"
cert = "certs/agg/cert.pem"
key = "certs/agg/key.pem"

[[nodes]]
name = "org-a"
address = "a.example:50051"

[[nodes]]
name = "org-b"
address = "b.example:50051"
"""


def _write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_node_config_resolves_paths(tmp_path: Path) -> None:
    cfg = load_node_config(_write(tmp_path, GOOD_NODE))
    assert cfg.name == "org-a" and cfg.tls.key == tmp_path / "certs/org-a/key.pem"
    assert cfg.datasets[0].path == tmp_path / "data/a.csv"
    assert dict(cfg.datasets[0].domains) == {"sex": ("Female", "Male")}
    assert dict(cfg.datasets[0].bounds) == {"age": (0.0, 120.0)}
    assert cfg.policy.min_group_size == 5 and cfg.policy.rate_limit is not None
    assert cfg.policy.rules[0].columns == ("age",)


def test_good_aggregator_config(tmp_path: Path) -> None:
    cfg = load_aggregator_config(_write(tmp_path, GOOD_AGG))
    assert [n.name for n in cfg.nodes] == ["org-a", "org-b"] and cfg.threshold == 2


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('listen = "127.0.0.1:0"', 'listen = "localhost"', r"key node\.listen = 'localhost'"),
        ('age = "int"', 'age = "integer"', r"key datasets\.adult\.columns\.age = 'integer'"),
        ("min_group_size = 5", "min_group_size = 0", r"key policy\.min_group_size = 0"),
        ('[audit]\npath = "audit/org-a.jsonl"', "[audit]", r"key audit\.path is missing"),
        ('name = "org-a"', 'name = "org-a"\nport = 1', r"key node\.port: unknown key"),
        ("[datasets.adult]\npath", '[datasets.adult]\nformat = "xlsx"\npath', "'xlsx'"),
        ('sex = ["Female", "Male"]', 'gender = ["F"]', r"domains\.gender: no such column"),
        ('operations = ["count", "mean"]', 'operations = "count"', r"rules\[0\]\.operations"),
        ("per_minute = 30", "per_minute = 0", "per_minute = 0"),
        ("age = [0, 120]", "age = [120, 0]", r"bounds\.age = \[120, 0\]: expected \[low, high\]"),
    ],
)
def test_node_config_errors_name_file_key_value(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    assert old in GOOD_NODE
    p = _write(tmp_path, GOOD_NODE.replace(old, new))
    with pytest.raises(ConfigError, match=match) as info:
        load_node_config(p)
    assert str(p) in str(info.value)


def test_datasets_are_the_engines_specs(tmp_path: Path) -> None:
    ds = load_node_config(_write(tmp_path, GOOD_NODE)).datasets[0]
    assert isinstance(ds, DatasetSpec)
    assert ds.name == "adult" and ds.format == "csv" and ds.delimiter == ","
    assert dict(ds.columns) == {"age": ColumnType.INT, "sex": ColumnType.STR}


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        # checked by DatasetSpec (TableSchema) only: the message still names the file and key
        ('sex = ["Female", "Male"]', 'sex = ["Male", "Male"]', r"domains\.sex'?: values must"),
        ("age = [0, 120]", "sex = [0, 1]", r"bounds\.sex'?: bounds apply to int and float"),
        ("age = [0, 120]", "age = [0, inf]", r"bounds\.age'?: inf is not a finite number"),
        ('sex = ["Female", "Male"]', "sex = [{ a = 1 }]", r"domains\.sex\[0\]'?: group value"),
        # was accepted here and refused only when the node built its engine, without the file
        ("age = [0, 120]", "age = [5, 5]", r"bounds\.age = \[5, 5\]: expected \[low, high\]"),
    ],
)
def test_dataset_spec_errors_name_file_and_key(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    assert old in GOOD_NODE
    p = _write(tmp_path, GOOD_NODE.replace(old, new))
    with pytest.raises(ConfigError, match=match) as info:
        load_node_config(p)
    assert str(info.value).startswith(f"{p}: key datasets.adult")


def test_node_config_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_node_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(_write(tmp_path, "[node\nname="))
    with pytest.raises(ConfigError, match=r"key node is missing"):
        load_node_config(_write(tmp_path, "[tls]\ndir='x'\n"))


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("threshold = 2", "threshold = 3", r"aggregator\.threshold = 3: must be between 1 and 2"),
        ('name = "org-b"', 'name = "org-a"', r"nodes\[1\]\.name = 'org-a': duplicate"),
        ('address = "b.example:50051"', 'address = "b.example"', r"nodes\[1\]\.address"),
        ('key = "certs/agg/key.pem"', "", r"key tls\.key is missing"),
    ],
)
def test_aggregator_config_errors(tmp_path: Path, old: str, new: str, match: str) -> None:
    p = _write(tmp_path, GOOD_AGG.replace(old, new))
    with pytest.raises(ConfigError, match=match) as info:
        load_aggregator_config(p)
    assert str(p) in str(info.value)


def test_aggregator_needs_nodes(tmp_path: Path) -> None:
    text = GOOD_AGG.split("[[nodes]]")[0].replace("threshold = 2", "")
    with pytest.raises(ConfigError, match="key nodes is missing"):
        load_aggregator_config(_write(tmp_path, text))


PG_NODE = GOOD_NODE.replace(
    '[datasets.adult]\npath = "data/a.csv"',
    '[datasets.adult]\nsource = "postgresql"\ntable = "analytics.adult"\n'
    'connection = { host = "db.internal", port = 5432, dbname = "dw", user = "ro" }\n'
    'password_file = "secrets/pg.pw"\nstatement_timeout_s = 30',
)


def test_a_postgresql_dataset_from_its_keys(tmp_path: Path) -> None:
    from trustspace.engine._sources import PostgresSource

    cfg = load_node_config(_write(tmp_path, PG_NODE + '\n[engine]\nmemory_limit = "1GB"\n'))
    ds = cfg.datasets[0]
    assert ds.kind == "postgresql" and ds.path is None and isinstance(ds.source, PostgresSource)
    assert ds.source.password_file == tmp_path / "secrets/pg.pw"  # relative to the config
    assert ds.source.connection["port"] == "5432" and ds.source.statement_timeout_s == 30
    assert ds.location == "postgresql db.internal:5432/dw table analytics.adult"
    assert cfg.engine.memory_limit == "1GB"


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('source = "postgresql"', 'source = "mysql"', r"key datasets\.adult\.source = 'mysql'"),
        ('table = "analytics.adult"', 'table = "adult; drop table x"', "not SQL"),
        ('table = "analytics.adult"\n', "", r"key datasets\.adult\.table is missing"),
        ('password_file = "secrets/pg.pw"', 'password_file = "p"\ndelimiter = ";"',
         r"datasets\.adult\.delimiter: is for a file dataset"),
        ('password_file = "secrets/pg.pw"', 'password_file = "p"\npath = "x.csv"',
         r"datasets\.adult\.path: a postgresql source reads table"),
        ('user = "ro" }', 'user = "ro", password = "hunter2" }', "does not belong in a config"),
        ("statement_timeout_s = 30", "statement_timeout_s = -1", "statement_timeout_s = -1"),
        ("statement_timeout_s = 30", "pool_size = 0", "pool_size = 0"),
        ("statement_timeout_s = 30", "snapshot = false", r"snapshot: is for a file"),
    ],
)  # fmt: skip
def test_postgresql_dataset_mistakes_name_file_and_key(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    assert old in PG_NODE
    p = _write(tmp_path, PG_NODE.replace(old, new))
    with pytest.raises(ConfigError, match=match) as info:
        load_node_config(p)
    assert str(p) in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ('[engine]\nmemory_limit = "lots"', r"engine\.memory_limit = 'lots'"),
        ("[engine]\nthreads = 0", r"engine\.threads = 0"),
        ("[engine]\ncores = 2", r"engine\.cores: unknown key"),
    ],
)
def test_engine_table_mistakes(tmp_path: Path, extra: str, match: str) -> None:
    p = _write(tmp_path, GOOD_NODE + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=match):
        load_node_config(p)


def test_a_spark_dataset_from_its_keys(tmp_path: Path) -> None:
    text = GOOD_NODE.replace(
        '[datasets.adult]\npath = "data/a.csv"',
        '[datasets.adult]\nsource = "spark"\npath = "lake/adult"\nformat = "delta"\n'
        'master = "spark://m:7077"\nspark_conf = { "spark.executor.memory" = "2g" }',
    )
    ds = load_node_config(_write(tmp_path, text)).datasets[0]
    assert ds.kind == "spark" and ds.source is not None
    assert ds.source.path == tmp_path / "lake/adult" and ds.source.format == "delta"  # type: ignore[union-attr]
    assert dict(ds.source.conf) == {"spark.executor.memory": "2g"}  # type: ignore[union-attr]
    bad = text.replace('format = "delta"', 'format = "orc"')
    with pytest.raises(ConfigError, match="format = 'orc'"):
        load_node_config(_write(tmp_path, bad, "bad.toml"))
