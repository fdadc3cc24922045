"""Shared fixtures: a throw-away CA with node, aggregator and analyst identities in tmp_path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from trustspace.transport.ca import init_ca, issue

if TYPE_CHECKING:
    from trustspace.api import Federation


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA directory with identities n1, n2, n3 (node), agg (aggregator), alice, bob (analyst)
    and a second, foreign CA ``other`` with its own ``mallory`` (aggregator) and ``eve``
    (analyst). Session-scoped: certificates are cheap but need not be remade per test."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", name="test-space")
    for name, role in (
        ("n1", "node"),
        ("n2", "node"),
        ("n3", "node"),
        ("agg", "aggregator"),
        ("alice", "analyst"),
        ("bob", "analyst"),
    ):
        issue(root / "ca", name, role)
    init_ca(root / "other", name="foreign-ca")
    issue(root / "other", "mallory", "aggregator")
    issue(root / "other", "eve", "analyst")
    return root


@pytest.fixture(scope="session")
def partitions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small CSV partitions (age int, income float, sex str, with a few nulls)."""
    import numpy as np
    import pandas as pd

    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(7)  # test data only; never for cryptography
    out = {}
    for name in ("n1", "n2", "n3"):
        n = 120
        df = pd.DataFrame(
            {
                "age": rng.integers(18, 90, n),
                "income": rng.normal(50_000, 12_000, n).round(2),
                "sex": rng.choice(["F", "M"], n),
            }
        )
        df.loc[rng.choice(n, 5, replace=False), "income"] = None
        p = root / f"{name}.csv"
        df.to_csv(p, index=False)
        out[name] = p
    return out


@pytest.fixture(scope="session")
def union(partitions: dict[str, Path]) -> Any:
    import pandas as pd

    return pd.concat([pd.read_csv(p) for p in partitions.values()], ignore_index=True)


def write_node_config(
    path: Path,
    *,
    name: str,
    identity: Path,
    data: Path,
    audit: Path,
    listen: str = "127.0.0.1:0",
    policy: str = (
        "min_group_size = 5\nmin_nodes = 2\n"
        '[[policy.rules]]\nanalysts = ["*"]\noperations = ["*"]\n'
    ),
) -> Path:
    """A node TOML config (the format docs/operations.md documents)."""
    path.write_text(
        f"""[node]
name = "{name}"
listen = "{listen}"
drain_grace_s = 5

[tls]
dir = "{identity}"

[audit]
path = "{audit}"

[datasets.default]
path = "{data}"
format = "csv"
[datasets.default.columns]
age = "int"
income = "float"
sex = "str"

[policy]
{policy}"""
    )
    return path


#: the ready line ``trustspace node`` / ``aggregator`` prints once it listens
READY = re.compile(r"on (127\.0\.0\.1:\d+)")


def start_cli(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``trustspace ARGS`` (a node or aggregator) as a process; it and its address once
    it printed its ready line (AssertionError with its stderr if it did not)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustspace.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = READY.search(line)
    if m is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"{args} did not start: {line!r} {err}")
    return proc, m.group(1)


def query_cli_args(fed: Federation) -> list[str]:
    """``trustspace query`` arguments reaching ``fed``'s aggregator as its analyst."""
    assert fed.workdir is not None
    return [
        "query",
        "-a",
        fed.aggregator.address,
        "-c",
        str(fed.workdir / "ca" / "analyst"),
        "--server-name",
        "aggregator",
    ]


# ---------------------------------------------------------------- real engines (issue 18)
def _need(what: str) -> None:
    """Skip for want of ``what``, unless the run requires the real engines (.ci/run sets
    TRUSTSPACE_REQUIRE_ENGINES=1): there a missing engine fails the test."""
    import os

    if os.environ.get("TRUSTSPACE_REQUIRE_ENGINES"):
        pytest.fail(f"{what} is required (TRUSTSPACE_REQUIRE_ENGINES is set) but missing")
    pytest.skip(f"{what} is not available here")


@pytest.fixture(scope="session")
def pg_admin() -> Any:
    """A superuser DSN of a real PostgreSQL server: ``TRUSTSPACE_TEST_PG_DSN`` (``.ci/run``
    starts a throw-away one), else one started here (``tests/_pg.py``) and stopped at the end."""
    import os
    import tempfile

    dsn = os.environ.get("TRUSTSPACE_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    import _pg

    if not _pg.available():
        _need("a PostgreSQL server (initdb and pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="ts-pg-"))
    try:
        dsn = _pg.start(root)
    except Exception as exc:
        _pg.stop(root)
        _need(f"a PostgreSQL server ({type(exc).__name__}: {exc})")
    try:
        yield dsn
    finally:
        _pg.stop(root)


@pytest.fixture(scope="session")
def spark_ok() -> None:
    """pyspark and a Java runtime (the tests' Spark session is ``local[2]``)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        _need("pyspark (pip install 'trustspace[spark]')")
    if shutil.which("java") is None:
        _need("a Java 17+ runtime (for Spark)")
