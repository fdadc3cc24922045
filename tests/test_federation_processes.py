"""The operations walk-through, automated: CA, three nodes and an aggregator as separate
processes, queries from the CLI and from Python, a refusal in the audit log, audit verify."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_cli, write_node_config

from trustspace.api import Credentials, Federation
from trustspace.cli.main import main
from trustspace.errors import PolicyError

POLICY = """min_group_size = 5
[[policy.rules]]
analysts = ["alice"]
operations = ["*"]
[[policy.rules]]
analysts = ["bob"]
operations = ["count"]
columns = ["sex", "age"]
"""


@pytest.fixture(scope="module")
def space(
    tmp_path_factory: pytest.TempPathFactory, partitions: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("space")
    ca = root / "ca"
    assert main(["ca", "init", str(ca), "--data-space", "walk-through"]) == 0
    for name, role in (
        ("n1", "node"),
        ("n2", "node"),
        ("n3", "node"),
        ("op", "aggregator"),
        ("alice", "analyst"),
        ("bob", "analyst"),
    ):
        assert main(["ca", "issue", str(ca), name, "--role", role]) == 0
    procs: list[subprocess.Popen[str]] = []
    try:
        nodes = {}
        for name, data in partitions.items():
            cfg = write_node_config(
                root / f"{name}.toml",
                name=name,
                identity=ca / name,
                data=data,
                audit=root / "audit" / f"{name}.jsonl",
                policy=POLICY,
            )
            proc, addr = start_cli(["node", str(cfg)])
            procs.append(proc)
            nodes[name] = addr
        agg_cfg = root / "aggregator.toml"
        agg_cfg.write_text(
            '[aggregator]\nlisten = "127.0.0.1:0"\ndrain_grace_s = 5\n'
            f'[tls]\ndir = "{ca / "op"}"\n'
            + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{a}"\n' for n, a in nodes.items())
        )
        proc, agg = start_cli(["aggregator", str(agg_cfg)])
        procs.append(proc)
        yield {"root": root, "ca": ca, "aggregator": agg, "procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)


@pytest.mark.slow
def test_walk_through(
    space: dict[str, Any], union: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, agg, root = space["ca"], space["aggregator"], space["root"]
    cli = ["query", "-a", agg, "-c", str(ca / "alice")]
    assert main([*cli, "mean", "default", "age", "--where", "sex = 'F'", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["value"]["data"] == pytest.approx(union[union.sex == "F"].age.mean(), rel=1e-12)

    with Federation.connect(agg, credentials=Credentials.from_dir(ca / "alice")) as fed:
        assert fed.count("default", where="age >= 40") == int((union.age >= 40).sum())
    bob = Federation.connect(agg, credentials=Credentials.from_dir(ca / "bob"))
    with bob, pytest.raises(PolicyError, match=r"rule 'operations'.*'bob' may not run 'mean'"):
        bob.mean("default", "age")
    assert main(["query", "-a", agg, "-c", str(ca / "bob"), "sum", "default", "age"]) == 1
    assert "refused the request" in capsys.readouterr().err

    for p in space["procs"]:  # SIGTERM: drain, exit 0
        p.send_signal(signal.SIGTERM)
    for p in space["procs"]:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "draining" in err

    log = root / "audit" / "n1.jsonl"
    lines = log.read_text().splitlines()
    denied = [json.loads(x) for x in lines if '"deny"' in x]
    assert {d["requester"] for d in denied} == {"bob"}
    assert main(["audit", "verify", str(log)]) == 0
    data = bytearray(log.read_bytes())
    at = data.index(b'"allow"') + 3
    data[at] = ord("a") if data[at] != ord("a") else ord("b")  # one byte
    log.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["audit", "verify", str(log)]) == 1
    assert "n1.jsonl:1: content does not match its hash (edited)" in capsys.readouterr().err
