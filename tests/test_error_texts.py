"""Error texts that used to mislead an operator (issue 15): each says what is wrong and what to
do, and none gives advice that would defeat a check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_node_config

from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import AuthenticationError, ConfigError, DataError
from trustspace.node.config import load_node_config, policy_from_dict
from trustspace.node.server import Node
from trustspace.transport.ca import Credentials
from trustspace.transport.tls import preflight


def _config(root: Path, pki: Path, data: Path | str, name: str = "n1", **kw: str) -> Path:
    return write_node_config(
        root / f"{name}.toml",
        name=name,
        identity=pki / "ca" / name,
        data=data,  # type: ignore[arg-type]
        audit=root / f"{name}.jsonl",
        **kw,
    )


# ------------------------------------------------------------- a wrong address / name mismatch
@pytest.fixture()
def n1(tmp_path: Path, pki: Path, partitions: dict[str, Path]):  # type: ignore[no-untyped-def]
    node = Node(load_node_config(_config(tmp_path, pki, partitions["n1"]))).start()
    yield node
    node.stop(0)


def test_wrong_node_address_names_both_names_and_never_advises_reissuing(
    n1: Node, pki: Path
) -> None:
    """The old text: "... is not valid for 'n2'; issue it with `--host n2`", which would make
    n1's certificate valid for n2 and defeat the name check."""
    agg = Credentials.from_dir(pki / "ca" / "agg")
    with pytest.raises(AuthenticationError) as info:
        preflight(n1.address, agg, expected_role="node", server_name="n2")
    msg = str(info.value)
    assert "presented the certificate of 'n1' (role node" in msg
    assert "but 'n2' was expected" in msg
    assert "points to the wrong server" in msg
    assert "in the configuration" not in msg  # it may come from `trustspace health ADDR`
    assert "--host" not in msg and "issue it" not in msg
    assert "Do not re-issue" in msg


def test_host_mismatch_for_an_analyst_names_the_presented_certificate(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    """An analyst reaching a server by an address its certificate lacks (127.0.0.2): told
    which certificate answered and to connect by its name if it is the one meant."""
    cfg = _config(tmp_path, pki, partitions["n1"], listen="127.0.0.2:0")
    node = Node(load_node_config(cfg)).start()
    alice = Credentials.from_dir(pki / "ca" / "alice")
    try:
        with pytest.raises(AuthenticationError) as info:
            preflight(node.address, alice, expected_role=None, timeout=5)
        assert preflight(node.address, alice, expected_role="node", server_name="n1") == "n1"
    finally:
        node.stop(0)
    msg = str(info.value)
    assert (
        "presented the certificate of 'n1'" in msg and "valid for n1, localhost, 127.0.0.1" in msg
    )
    assert "--server-name" in msg and "--host" not in msg


# ------------------------------------------------------------- a missing data file
def test_missing_data_file_says_relative_to_the_config_directory(
    tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old text said relative paths are resolved against the working directory."""
    from trustspace.cli.main import main

    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = _config(conf, pki, "data/gone.csv")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    old = Path.cwd()
    os.chdir(elsewhere)
    try:
        assert main(["node", str(cfg), "--check"]) == 2
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert f"file not found at {conf / 'data' / 'gone.csv'}" in err
    assert "key datasets.default.path" in err and str(cfg) in err
    assert "relative to the config file's directory" in err and str(conf) in err
    assert "working directory" not in err


def test_engine_names_the_absolute_path_of_a_missing_file(tmp_path: Path) -> None:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DataError) as info:
            Engine({"d": DatasetSpec("d", "nope.csv", columns={"a": "int"})}).validate()
    finally:
        os.chdir(old)
    assert f"looked for {tmp_path / 'nope.csv'}" in str(info.value)
    assert "working directory" not in str(info.value)


# ------------------------------------------------------------- policy operation typos
@pytest.mark.parametrize(
    ("typo", "hint"),
    [("cuont", "count"), ("anonymize", "anonymize.*"), ("histogramm", "histogram")],
)
def test_unknown_policy_operation_is_refused_with_a_suggestion(typo: str, hint: str) -> None:
    """`operations = ["cuont"]` was accepted and silently matched nothing."""
    with pytest.raises(ConfigError) as info:
        policy_from_dict({"rules": [{"analysts": ["*"], "operations": ["count", typo]}]})
    msg = str(info.value)
    assert f"key policy.rules[0].operations: {typo!r} is not an operation" in msg
    assert f"did you mean {hint!r}?" in msg and "valid operations: count, sum" in msg


def test_every_valid_operation_is_accepted() -> None:
    from trustspace.cli.query import OPS as CLI_OPS
    from trustspace.node.config import OPERATIONS
    from trustspace.stats import OPS

    assert policy_from_dict({"rules": [{"analysts": ["*"], "operations": list(OPERATIONS)}]})
    assert set(OPS) <= set(OPERATIONS) and tuple(CLI_OPS) == tuple(OPS)


def test_operation_typo_in_a_node_config_names_the_file(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    policy = 'min_nodes = 2\n[[policy.rules]]\nanalysts = ["*"]\noperations = ["cuont"]\n'
    cfg = _config(tmp_path, pki, partitions["n1"], policy=policy)
    with pytest.raises(ConfigError, match=rf"{cfg}: key policy.rules\[0\].operations: 'cuont'"):
        load_node_config(cfg)


# ------------------------------------------------------------- CSV / Parquet mix-ups
@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame({"age": [30, 41, 52], "hours": [40, 20, 35], "sex": ["F", "M", "F"]})


def test_parquet_declared_as_csv_is_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    """It used to crash with UnicodeDecodeError."""
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    spec = DatasetSpec("adult", path, columns={"age": "int", "hours": "int", "sex": "str"})
    with pytest.raises(DataError) as info:
        Engine({"adult": spec}).validate()
    msg = str(info.value)
    assert "looks like Parquet" in msg and 'set datasets.adult.format = "parquet"' in msg


def test_csv_declared_as_parquet_is_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    spec = DatasetSpec(
        "adult", path, format="parquet", columns={"age": "int", "hours": "int", "sex": "str"}
    )
    with pytest.raises(
        DataError, match=r'looks like text \(CSV\?\).*set datasets.adult.format = "csv"'
    ):
        Engine({"adult": spec}).validate()


def test_binary_file_declared_as_csv_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        Engine({"d": DatasetSpec("d", path, columns={"a": "int"})}).validate()


def test_parquet_columns_are_matched_by_name(tmp_path: Path, frame: pd.DataFrame) -> None:
    """Parquet columns in another order than declared: each column is read by its name (the
    declared schema is the contract, the file's order does not matter), so two int columns
    in swapped order are not swapped. CSV, read by position, refuses another order."""
    path = tmp_path / "data.parquet"
    frame[["sex", "hours", "age"]].assign(extra=1).to_parquet(path)
    cols = {"age": "int", "hours": "int", "sex": "str"}
    with Engine({"d": DatasetSpec("d", path, format="parquet", columns=cols)}) as engine:
        engine.validate()
        rows = engine.rows("d")
    assert list(rows.columns) == ["age", "hours", "sex"]
    assert rows["age"].tolist() == frame["age"].tolist()
    assert rows["hours"].tolist() == frame["hours"].tolist()
    csv = tmp_path / "data.csv"
    frame[["hours", "age", "sex"]].to_csv(csv, index=False)
    with pytest.raises(DataError, match="columns are in the order hours, age, sex"):
        Engine({"d": DatasetSpec("d", csv, columns=cols)}).validate()


# ------------------------------------------------------------- a reader that goes away
def test_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`trustspace audit verify LOG | head -1` died with a BrokenPipeError traceback."""
    from trustspace.node.audit import AuditLog

    log = tmp_path / "a.jsonl"
    audit = AuditLog(log)
    audit.append({"operation": "count", "decision": "allow"})
    audit.close()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    proc = subprocess.run(
        [sys.executable, "-m", "trustspace.cli.main", "audit", "verify", str(log)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141


# ------------------------------------------------------------- integers print as integers
def test_integer_figures_print_as_integers() -> None:
    import numpy as np

    from trustspace.cli._format import format_result, number

    assert number(3865.0) == "3865" and number(np.float64(12.0)) == "12"
    assert number(36.8834594152525) == "36.8834594152525"
    assert number(float("nan")) == "NaN" and number(2.0**60) == repr(2.0**60)
    frame = pd.DataFrame({"age": [150.0, 53.5]}, index=["count", "mean"])
    assert format_result(frame).split() == ["age", "count", "150", "mean", "53.5"]
    assert format_result(pd.Series([14.0, 53.0])).split() == ["0", "14", "1", "53"]
