"""The audit log's tail: signed checkpoints, the aggregator as witness, and every attack on it.

Each attack (lines cut from the end, the file emptied or deleted, a line dropped and the whole
chain recomputed) leaves a valid hash chain, so ``verify`` alone accepts it. Each must be caught
by ``trustspace audit verify`` with the node's checkpoint file and with the aggregator's witness
log, and must stop the node from starting on the log.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pandas as pd
import pytest
from conftest import write_node_config

from trustspace.aggregator.witness import Witness, read_witness
from trustspace.api import Federation
from trustspace.cli.main import main
from trustspace.errors import AuthenticationError, ConfigError
from trustspace.node.audit import (
    GENESIS,
    AuditLog,
    Checkpoint,
    SignedCheckpoint,
    checkpoint_path,
    read_checkpoint,
    record_hash,
    verify,
)
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.proto.v1 import node_pb2, node_pb2_grpc
from trustspace.transport.ca import Credentials, sign_blob
from trustspace.transport.checkpoint import (
    CHECKPOINT_KEY,
    DOMAIN,
    sign_checkpoint,
    verify_checkpoint,
)
from trustspace.transport.tls import secure_channel


def _creds(pki: Path, name: str, ca: str = "ca") -> Credentials:
    return Credentials.from_dir(pki / ca / name)


def _signed_log(path: Path, creds: Credentials, n: int = 6) -> None:
    log = AuditLog(path, credentials=creds)
    for i in range(n):
        log.append({"operation": "count", "requester": f"a{i}", "decision": "allow"})
    log.close()


# ------------------------------------------------------------------ the attacks
def _cut_last(p: Path) -> None:
    p.write_bytes(b"".join(p.read_bytes().splitlines(keepends=True)[:-2]))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _delete(p: Path) -> None:
    p.unlink()


def _rechain(lines: list[bytes]) -> bytes:
    """The lines with seq, prev_hash and hash recomputed: a valid chain (it is unkeyed)."""
    out, prev = [], GENESIS
    for i, raw in enumerate(lines):
        rec = json.loads(raw)
        rec.update(seq=i, prev_hash=prev)
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        out.append(json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


def _drop_middle_and_rechain(p: Path) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    del lines[len(lines) // 2]
    p.write_bytes(_rechain(lines))


def _drop_middle_rechain_same_length(p: Path) -> None:
    """Drop a line, add a made-up one at the end, recompute: same count, another head."""
    lines = p.read_bytes().splitlines(keepends=True)
    fake = json.loads(lines[-1])
    fake["requester"] = "nobody"
    del lines[len(lines) // 2]
    lines.append(json.dumps(fake).encode() + b"\n")
    p.write_bytes(_rechain(lines))


ATTACKS: dict[str, Callable[[Path], None]] = {
    "cut_last_lines": _cut_last,
    "emptied": _empty,
    "deleted": _delete,
    "middle_line_dropped_chain_recomputed": _drop_middle_and_rechain,
    "rewritten_same_length": _drop_middle_rechain_same_length,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_detected_by_verify_with_the_checkpoint_file(
    tmp_path: Path, pki: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "audit.jsonl"
    _signed_log(p, _creds(pki, "n1"))
    assert main(["audit", "verify", str(p)]) == 0
    capsys.readouterr()
    ATTACKS[attack](p)
    if attack != "deleted":
        assert verify(p).ok  # the chain alone accepts it: that is the attack
    assert main(["audit", "verify", str(p), "--ca", str(pki / "ca" / "n1" / "ca.pem")]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "checkpoint" in err
    if attack.startswith("rewritten"):
        assert "line 6 has hash" in err and "rewritten" in err
    else:
        assert "says it had 6" in err and "missing" in err  # signed at close: 6 lines


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_stops_the_node_from_starting(tmp_path: Path, pki: Path, attack: str) -> None:
    p = tmp_path / "audit.jsonl"
    creds = _creds(pki, "n1")
    _signed_log(p, creds)
    ATTACKS[attack](p)
    with pytest.raises(ConfigError) as info:
        AuditLog(p, credentials=creds)
    msg = str(info.value)
    assert str(p) in msg and "behind its last checkpoint" in msg
    assert str(checkpoint_path(p)) in msg and "restore it from a backup" in msg
    with pytest.raises(ConfigError, match="behind its last checkpoint"):
        AuditLog(p)  # without credentials the counts are still checked


def test_node_server_refuses_a_log_behind_its_checkpoint(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    audit = tmp_path / "n1.jsonl"
    cfg = load_node_config(
        write_node_config(
            tmp_path / "n1.toml",
            name="n1",
            identity=pki / "ca" / "n1",
            data=partitions["n1"],
            audit=audit,
        )
    )
    _signed_log(audit, _creds(pki, "n1"))
    _cut_last(audit)
    with pytest.raises(ConfigError, match=r"n1\.jsonl is behind its last checkpoint"):
        Node(cfg)


def test_checkpoint_file_is_signed_by_the_node(tmp_path: Path, pki: Path) -> None:
    p = tmp_path / "audit.jsonl"
    creds = _creds(pki, "n1")
    _signed_log(p, creds, 3)
    signed = read_checkpoint(checkpoint_path(p))
    report = verify(p)
    assert (signed.checkpoint.lines, signed.checkpoint.head) == (report.lines, report.head)
    assert verify_checkpoint(creds.ca_pem, signed, node="n1", where="t").node == "n1"
    assert checkpoint_path(p).stat().st_mode & 0o777 == 0o640
    # a checkpoint file with another count is not the node's: refused at start
    data = json.loads(checkpoint_path(p).read_text())
    data["lines"] = 2
    checkpoint_path(p).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="does not verify"):
        AuditLog(p, credentials=creds)


def test_checkpoint_at_least_every_n_lines(tmp_path: Path, pki: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p, credentials=_creds(pki, "n1"), checkpoint_every=4)
    for _ in range(9):
        log.append({"operation": "count", "decision": "allow"})
    latest = log.latest_checkpoint
    assert latest is not None and latest.checkpoint.lines == 8  # signed at 4 and 8, no answer
    log.close()
    assert read_checkpoint(checkpoint_path(p)).checkpoint.lines == 9  # and at close


def test_torn_last_line_is_recovered_and_recorded(tmp_path: Path, pki: Path) -> None:
    p = tmp_path / "audit.jsonl"
    creds = _creds(pki, "n1")
    _signed_log(p, creds, 3)
    torn = b'{"operation":"count","requester":"x","seq":3,"ti'
    with p.open("ab") as fh:
        fh.write(torn)
    log = AuditLog(p, credentials=creds)
    log.close()
    assert p.with_name(p.name + ".partial").read_bytes() == torn + b"\n"
    report = verify(p)
    assert report.ok and report.lines == 4
    last = json.loads(p.read_bytes().splitlines()[-1])
    assert last["event"] == "torn_line_recovered" and last["bytes"] == len(torn)
    assert last["evidence"] == "audit.jsonl.partial" and last["seq"] == 3


def test_verify_without_a_checkpoint_says_the_tail_is_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    log.append({"operation": "count", "decision": "allow"})
    log.close()
    assert main(["audit", "verify", str(p)]) == 0
    assert "the tail cannot be checked" in capsys.readouterr().out


# ------------------------------------------------------------------ the witness
def _raw(signed: SignedCheckpoint) -> bytes:
    return signed.to_proto().SerializeToString()


def _cp(node: str, lines: int, head: str = "a" * 64) -> Checkpoint:
    return Checkpoint(node, lines, head, "2025-01-01T00:00:00.000+00:00")


def test_witness_records_and_warns_on_rollback(
    tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = _creds(pki, "n1")
    w = Witness(creds.ca_pem, tmp_path / "w.jsonl")
    w.observe("n1", _raw(sign_checkpoint(creds, _cp("n1", 5))))
    w.observe("n1", _raw(sign_checkpoint(creds, _cp("n1", 5))))  # the same again: one line
    w.flush()
    with caplog.at_level(logging.WARNING, logger="trustspace.aggregator"):
        w.observe("n1", _raw(sign_checkpoint(creds, _cp("n1", 3, "b" * 64))))
    assert "possible rollback" in caplog.text and "fewer than the 5" in caplog.text
    w.close()
    assert [c.lines for c in read_witness(tmp_path / "w.jsonl")] == [5, 3]
    again = Witness(creds.ca_pem, tmp_path / "w.jsonl")  # the latest survives a restart
    assert (latest := again.latest("n1")) is not None and latest.lines == 3
    again.close()


def test_witness_refuses_checkpoints_not_signed_by_that_node(tmp_path: Path, pki: Path) -> None:
    ca_pem = _creds(pki, "n1").ca_pem
    w = Witness(ca_pem, tmp_path / "w.jsonl")
    n2 = _creds(pki, "n2")
    # node n2's own checkpoint, passed off as n1's answer
    with pytest.raises(AuthenticationError, match="node n1 sent a checkpoint of node 'n2'"):
        w.observe("n1", _raw(sign_checkpoint(n2, _cp("n2", 4))))
    # a checkpoint naming n1, signed with n2's key
    forged = _cp("n1", 9)
    raw = _raw(
        SignedCheckpoint(forged, sign_blob(n2, forged.canonical(), domain=DOMAIN), n2.cert_pem)
    )
    with pytest.raises(AuthenticationError, match="not by that node"):
        w.observe("n1", raw)
    # a certificate that is not a node's (the aggregator's), and one of another CA
    agg = _creds(pki, "agg")
    with pytest.raises(AuthenticationError, match="is not a node"):
        w.observe(
            "agg",
            _raw(SignedCheckpoint(_cp("agg", 1), sign_blob(agg, b"", domain=DOMAIN), agg.cert_pem)),
        )
    eve = _creds(pki, "eve", "other")
    with pytest.raises(AuthenticationError):
        w.observe(
            "eve",
            _raw(SignedCheckpoint(_cp("eve", 1), sign_blob(eve, b"", domain=DOMAIN), eve.cert_pem)),
        )
    # a signature of another kind (a secagg key advert) is not a checkpoint signature
    cp = _cp("n1", 2)
    n1 = _creds(pki, "n1")
    with pytest.raises(AuthenticationError, match="does not verify"):
        w.observe("n1", _raw(SignedCheckpoint(cp, sign_blob(n1, cp.canonical()), n1.cert_pem)))
    with pytest.raises(AuthenticationError, match="not an AuditCheckpoint"):
        w.observe("n1", b"\xff\xff junk")
    w.close()
    assert list(read_witness(tmp_path / "w.jsonl")) == []  # nothing recorded
    assert w.latest("n1") is None


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local federation that answered some queries and was stopped: its work folder."""
    root = tmp_path_factory.mktemp("fed")
    parts = {f"n{i}": pd.DataFrame({"age": list(range(20 + i, 60))}) for i in range(3)}
    with Federation.local(parts, dataset="t", workdir=root / "space") as fed:
        for _ in range(3):
            fed.count("t")
    return root / "space"


def test_every_answer_is_witnessed(federation_run: Path) -> None:
    witness = federation_run / "aggregator-witness.jsonl"
    for node in ("n0", "n1", "n2"):
        log = federation_run / "audit" / f"{node}.jsonl"
        cps = list(read_witness(witness, node))
        assert cps, node
        # the newest witnessed checkpoint is the log's head after the node's last answer
        report = verify(log, at=[cps[-1].lines])
        assert report.ok and report.heads[cps[-1].lines] == cps[-1].head
        assert read_checkpoint(checkpoint_path(log)).checkpoint.lines == report.lines


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_detected_by_verify_with_the_witness_log(
    federation_run: Path, tmp_path: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "n1.jsonl"
    shutil.copy(federation_run / "audit" / "n1.jsonl", log)
    witness = str(federation_run / "aggregator-witness.jsonl")
    assert main(["audit", "verify", str(log), "--witness", witness, "--node", "n1"]) == 0
    assert "tail checked against" in capsys.readouterr().out
    ATTACKS[attack](log)  # and no checkpoint file beside it: the attacker removed it too
    assert main(["audit", "verify", str(log), "--witness", witness, "--node", "n1"]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "behind its checkpoints" in err and "witness log" in err


def test_rolled_back_checkpoint_file_is_caught_by_the_witness(
    federation_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attacker who kept an old (genuine) LOG.checkpoint and cuts the log back to it fools
    the node's own check, not the witness."""
    log = tmp_path / "n2.jsonl"
    shutil.copy(federation_run / "audit" / "n2.jsonl", log)
    n2 = Credentials.from_dir(federation_run / "ca" / "n2")
    keep = verify(log).lines - 3
    old = verify(log, at=[keep]).heads[keep]
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:keep]))
    stale = sign_checkpoint(n2, Checkpoint("n2", keep, old, "2025-01-01T00:00:00.000+00:00"))
    checkpoint_path(log).write_text(json.dumps(stale.to_json()))
    AuditLog(log, credentials=n2).close()  # the node itself is fooled: it starts
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:keep]))
    witness = str(federation_run / "aggregator-witness.jsonl")
    assert main(["audit", "verify", str(log), "--checkpoint", str(tmp_path / "none")]) == 1
    capsys.readouterr()  # (a missing --checkpoint file is an error, not a pass)
    checkpoint_path(log).write_text(json.dumps(stale.to_json()))
    assert main(["audit", "verify", str(log), "--witness", witness]) == 1
    err = capsys.readouterr().err
    assert "witness log" in err and "missing" in err


def test_refusal_carries_a_checkpoint_covering_its_audit_line(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    audit = tmp_path / "n1.jsonl"
    cfg = load_node_config(
        write_node_config(
            tmp_path / "n1.toml",
            name="n1",
            identity=pki / "ca" / "n1",
            data=partitions["n1"],
            audit=audit,
        )
    )
    node = Node(cfg).start()
    try:
        # an analyst may not call a node: refused by the role check, audited, checkpointed
        ch = secure_channel(node.address, _creds(pki, "alice"), "n1")
        stub = node_pb2_grpc.NodeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.DescribeDatasets(node_pb2.DescribeDatasetsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        trailing = dict(info.value.trailing_metadata() or ())
        assert "trustspace-error-bin" in trailing  # the ErrorInfo is still there
        signed = SignedCheckpoint.from_bytes(trailing[CHECKPOINT_KEY])
        cp = verify_checkpoint(_creds(pki, "n1").ca_pem, signed, node="n1", where="test")
        # and a malformed request, refused by the gate before any handler
        with pytest.raises(grpc.RpcError) as info2:
            ch.unary_unary("/trustspace.proto.v1.NodeService/SecAggStep")(b"\xff\xff", timeout=5)
        assert info2.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        cp2 = SignedCheckpoint.from_bytes(dict(info2.value.trailing_metadata())[CHECKPOINT_KEY])
        ch.close()
        # a good answer carries one too
        agg = secure_channel(node.address, _creds(pki, "agg"), "n1")
        _, call = node_pb2_grpc.NodeServiceStub(agg).DescribeDatasets.with_call(
            node_pb2.DescribeDatasetsRequest(), timeout=5
        )
        cp3 = SignedCheckpoint.from_bytes(dict(call.trailing_metadata())[CHECKPOINT_KEY])
        agg.close()
    finally:
        node.stop(1)
    lines = audit.read_bytes().splitlines()
    report = verify(audit, at=[cp.lines, cp2.checkpoint.lines])
    # each checkpoint covers the line its own call wrote
    refused = json.loads(lines[cp.lines - 1])
    assert refused["operation"] == "rpc.DescribeDatasets" and refused["via"] == "alice"
    assert report.heads[cp.lines] == cp.head
    assert json.loads(lines[cp2.checkpoint.lines - 1])["operation"] == "rpc.SecAggStep"
    assert report.heads[cp2.checkpoint.lines] == cp2.checkpoint.head
    assert cp3.checkpoint.lines > cp2.checkpoint.lines
