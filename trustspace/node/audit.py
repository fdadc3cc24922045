"""A node's tamper-evident audit log: one hash-chained JSON line per request, fsync'd.

Each line is a JSON object with ``seq`` (0, 1, 2, ...), ``time`` (UTC, ISO 8601), the
request's ``requester``, ``operation``, ``dataset``, ``columns``, ``params``, the policy
``decision`` (``allow``/``deny``) and ``reason``, the ``outcome``, then ``prev_hash`` (the
previous line's ``hash``; 64 zeros for the first line) and ``hash`` = SHA-256 over the canonical
JSON (sorted keys, no spaces, UTF-8) of the line without ``hash``. A line is fsync'd before the
node's answer leaves, so an answered request is always on disk.

``verify`` recomputes the chain and names the first bad line: edited (its hash does not
match), deleted, inserted or reordered (``seq`` or ``prev_hash`` breaks the chain). Removing
lines from the *end* leaves a valid shorter chain; compare the head hash and count that
``verify`` prints with an anchor kept elsewhere (the node logs its head at start-up).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustspace.errors import ConfigError, NodeError
from trustspace.node import _fault

GENESIS = "0" * 64
_FIELDS = ("seq", "time", "prev_hash", "hash")


def canonical(record: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (the hashed form)."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify``: ``ok``, the number of good lines, the head hash, the problem."""

    ok: bool
    lines: int
    head: str
    problem: str = ""
    bad_line: int = 0  # 1-based; 0 when ok


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check the whole chain of the log at ``path``; never raises for a bad log.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
    >>> log = AuditLog(p)
    >>> _ = log.append({"operation": "count", "decision": "allow"})
    >>> log.close()
    >>> verify(p).ok
    True
    """
    p = Path(path)
    if not p.is_file():
        return VerifyReport(False, 0, GENESIS, f"{p}: no such audit log", 0)
    prev = GENESIS
    count = 0
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{p}:{lineno}"
            if not raw.endswith(b"\n"):
                return VerifyReport(
                    False, count, prev, f"{where}: last line is incomplete (cut off)", lineno
                )
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return VerifyReport(
                    False, count, prev, f"{where}: line is not valid JSON (edited)", lineno
                )
            if not isinstance(rec, dict) or any(f not in rec for f in _FIELDS):
                return VerifyReport(
                    False, count, prev, f"{where}: line lacks the audit fields (edited)", lineno
                )
            if rec["hash"] != record_hash(rec):
                return VerifyReport(
                    False, count, prev, f"{where}: content does not match its hash (edited)", lineno
                )
            seq = rec["seq"]
            if seq != count:
                if not isinstance(seq, int) or seq < count:
                    what = f"inserted or reordered (seq {seq}, expected {count})"
                elif _seq_appears_later(fh, count):
                    what = f"reordered (seq {seq}, expected {count})"
                else:
                    what = f"{seq - count} line(s) deleted before it (seq {seq}, expected {count})"
                return VerifyReport(False, count, prev, f"{where}: {what}", lineno)
            if rec["prev_hash"] != prev:
                return VerifyReport(
                    False,
                    count,
                    prev,
                    f"{where}: prev_hash does not match line {lineno - 1} "
                    "(a line was replaced, inserted or reordered)",
                    lineno,
                )
            prev = rec["hash"]
            count += 1
    return VerifyReport(True, count, prev)


def _seq_appears_later(fh: Any, seq: int) -> bool:
    for raw in fh:
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("seq") == seq:
            return True
    return False


def _cut_off_by_crash(path: Path, report: VerifyReport) -> bool:
    """Whether the only problem is an unterminated last line (a crash while writing it)."""
    return report.bad_line == report.lines + 1 and report.problem.endswith("(cut off)")


def _set_aside_partial_line(path: Path) -> None:
    """Move the unterminated last line to ``PATH.partial`` (evidence) and cut it from the log.

    Safe: a line is complete and fsync'd before the node answers, so the request of a
    partial line was never answered (the aggregator saw the node fail) and nothing is lost.
    """
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    evidence = path.with_name(path.name + ".partial")
    with evidence.open("ab") as fh:
        fh.write(data[keep:] + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    with path.open("r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


class AuditLog:
    """Append-only, hash-chained, fsync'd audit log (thread-safe).

    Opening an existing log verifies it first and continues its chain. An unterminated last
    line (the node died while writing it; its request was never answered) is moved to
    ``PATH.partial`` and the chain continues from the last complete line.

    Raises:
        ConfigError: the existing log is broken (the message names the line); move it aside
            and keep it as evidence.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread "a line was written" mark (see ``mark``)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            report = verify(self.path)
            if not report.ok and _cut_off_by_crash(self.path, report):
                _set_aside_partial_line(self.path)
                report = verify(self.path)
            if not report.ok:
                raise ConfigError(
                    f"audit log {self.path} is broken: {report.problem}; move it aside (keep "
                    "it as evidence) and start the node again"
                )
            self._seq, self._head = report.lines, report.head
        else:
            self._seq, self._head = 0, GENESIS
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fh = os.fdopen(fd, "ab")

    @property
    def head(self) -> str:
        """The hash of the last line (64 zeros for an empty log)."""
        return self._head

    @property
    def lines(self) -> int:
        return self._seq

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append ``entry`` as one chained line, fsync it, and return the full record.

        Raises:
            NodeError: the line could not be written or synced (the request must fail).
        """
        with self._lock:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            record = {k: v for k, v in entry.items() if k not in _FIELDS}
            record.update(seq=self._seq, time=now, prev_hash=self._head)
            record["hash"] = record_hash(record)
            try:
                if _fault.active("audit:append"):  # test-only: die half-way through the line
                    line = canonical(record)
                    self._fh.write(line[: len(line) // 2])
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                    _fault.trip("audit:append")
                self._fh.write(canonical(record) + b"\n")
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except (OSError, ValueError) as exc:
                raise NodeError(f"cannot write audit log {self.path}: {exc}") from None
            self._seq += 1
            self._head = record["hash"]
            self._local.wrote = True
            return record

    def mark(self) -> None:
        """Start watching whether this thread writes a line (before a request is handled)."""
        self._local.wrote = False

    def written_since_mark(self) -> bool:
        """Whether this thread appended a line since its last ``mark()``."""
        return bool(getattr(self._local, "wrote", False))

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()
