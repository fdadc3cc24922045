"""The audit log: hash chain, fsync'd lines, and detection of every kind of tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustspace.cli.main import main
from trustspace.errors import ConfigError
from trustspace.node.audit import GENESIS, AuditLog, record_hash, verify


def _log(path: Path, n: int = 5) -> list[bytes]:
    log = AuditLog(path)
    for i in range(n):
        log.append({"operation": "count", "requester": f"a{i}", "decision": "allow"})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def test_chain_is_valid_and_continues_after_reopen(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _log(p, 3)
    log = AuditLog(p)
    rec = log.append({"operation": "sum", "decision": "deny", "reason": "x"})
    log.close()
    assert rec["seq"] == 3
    report = verify(p)
    assert report.ok and report.lines == 4 and report.head == rec["hash"]
    first = json.loads(p.read_bytes().splitlines()[0])
    assert first["prev_hash"] == GENESIS and first["hash"] == record_hash(first)


def test_one_byte_edit_detected_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    lines[2] = lines[2].replace(b'"a2"', b'"b2"')
    p.write_bytes(b"".join(lines))
    report = verify(p)
    assert not report.ok and report.bad_line == 3 and "edited" in report.problem
    assert main(["audit", "verify", str(p)]) == 1
    assert "audit.jsonl:3" in capsys.readouterr().err


def test_deleted_line_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    del lines[1]
    p.write_bytes(b"".join(lines))
    report = verify(p)
    assert report.bad_line == 2 and "deleted" in report.problem


def test_reordered_lines_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    lines[1], lines[2] = lines[2], lines[1]
    p.write_bytes(b"".join(lines))
    report = verify(p)
    assert report.bad_line == 2 and "reordered" in report.problem


def test_inserted_line_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    lines.insert(3, lines[1])
    p.write_bytes(b"".join(lines))
    report = verify(p)
    assert report.bad_line == 4 and "inserted" in report.problem


def test_rehashed_edit_still_breaks_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    rec = json.loads(lines[1])
    rec["decision"] = "deny"
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec).encode() + b"\n"
    p.write_bytes(b"".join(lines))
    report = verify(p)
    assert report.bad_line == 3 and "prev_hash" in report.problem


def test_cut_off_last_line_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _log(p)
    p.write_bytes(p.read_bytes()[:-10])
    assert "incomplete" in verify(p).problem


def test_node_refuses_to_continue_a_broken_log(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    lines = _log(p)
    p.write_bytes(b"".join(lines[:2]) + b"garbage\n")
    with pytest.raises(ConfigError, match=r"audit\.jsonl:3"):
        AuditLog(p)


def test_cli_verify_clean_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "audit.jsonl"
    _log(p)
    assert main(["audit", "verify", str(p)]) == 0
    assert "5 lines" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "none.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "no such audit log" in err and "TAMPERED" not in err
