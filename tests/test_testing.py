"""trustspace.testing: the configs LocalSpace writes (with tomli-w) are read back by the loaders."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from trustspace.aggregator.config import load_aggregator_config
from trustspace.engine import ColumnType
from trustspace.errors import ConfigError
from trustspace.node.config import load_node_config
from trustspace.testing import LocalSpace, NodeSpec


def test_node_config_round_trips_through_the_loader(tmp_path: Path) -> None:
    space = LocalSpace(tmp_path)
    data = tmp_path / 'data "quoted" dir' / "a.csv"  # a path and a column TOML must escape
    spec = NodeSpec(
        name="org-a",
        datasets={
            "adult": {
                "path": data,
                "delimiter": ";",
                "null_values": ("", "NA"),
                "columns": {"age": "int", 'odd "name"': "str", "sex": "str"},
                "domains": {"sex": ("Female", "Male")},
                "bounds": {"age": (0, 120)},
            }
        },
        policy={"min_group_size": 5, "release_rows": True, "rate_limit": {"per_minute": 30}},
        rules=[
            {"analysts": ["alice"], "operations": ["*"]},
            {"analysts": ("bob",), "operations": ("count",), "columns": ("sex", "age")},
        ],
    )
    path = space.write_node_config(spec)
    assert path == tmp_path / "org-a.toml"
    assert path.read_text().startswith("# written by trustspace.testing")
    cfg = load_node_config(path)
    assert cfg.name == "org-a" and cfg.listen == "127.0.0.1:0" and cfg.drain_grace_s == 5.0
    assert cfg.tls.cert == space.identity("org-a") / "cert.pem"
    assert cfg.audit_path == tmp_path / "audit" / "org-a.jsonl" and cfg.audit_path.parent.is_dir()
    (ds,) = cfg.datasets
    assert ds.name == "adult" and ds.path == data and ds.delimiter == ";"
    assert ds.null_values == ("", "NA")
    assert list(ds.columns) == ["age", 'odd "name"', "sex"]  # file order is kept
    assert ds.columns["age"] is ColumnType.INT
    assert dict(ds.domains) == {"sex": ("Female", "Male")}
    assert dict(ds.bounds) == {"age": (0.0, 120.0)}
    assert cfg.policy.min_group_size == 5 and cfg.policy.release_rows
    assert cfg.policy.rate_limit is not None and cfg.policy.rate_limit.per_minute == 30.0
    assert [r.analysts for r in cfg.policy.rules] == [("alice",), ("bob",)]
    assert cfg.policy.rules[1].columns == ("sex", "age")


def test_node_config_without_rules_or_policy(tmp_path: Path) -> None:
    spec = NodeSpec("n1", {"t": {"path": tmp_path / "t.csv", "columns": {"x": "float"}}})
    cfg = load_node_config(LocalSpace(tmp_path).write_node_config(spec))
    assert cfg.policy.rules == () and cfg.policy.min_group_size == 10


def test_aggregator_config_round_trips_through_the_loader(tmp_path: Path) -> None:
    space = LocalSpace(tmp_path)
    space.addresses.update({"n1": "127.0.0.1:4001", "n2": "127.0.0.1:4002"})
    path = space.write_aggregator_config({"threshold": 2, "call_timeout_s": 3.5})
    cfg = load_aggregator_config(path)
    assert cfg.name == "operator" and cfg.listen == "127.0.0.1:0"
    assert cfg.threshold == 2 and cfg.call_timeout_s == 3.5 and cfg.drain_grace_s == 5.0
    assert [(n.name, n.address) for n in cfg.nodes] == [
        ("n1", "127.0.0.1:4001"),
        ("n2", "127.0.0.1:4002"),
    ]
    assert cfg.tls.key == space.identity("operator") / "key.pem"
    # no node started yet: no [[nodes]] at all, which the loader refuses by name
    empty = LocalSpace(tmp_path / "empty")
    empty.root.mkdir()
    lonely = empty.write_aggregator_config()
    assert "nodes" not in tomllib.loads(lonely.read_text())
    with pytest.raises(ConfigError, match="key nodes is missing"):
        load_aggregator_config(lonely)
