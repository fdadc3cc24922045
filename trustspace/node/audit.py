"""A node's tamper-evident audit log: one hash-chained JSON line per request, fsync'd.

Each line is a JSON object with ``seq`` (0, 1, 2, ...), ``time`` (UTC, ISO 8601), the
request's ``requester``, ``operation``, ``dataset``, ``columns``, ``params``, the policy
``decision`` (``allow``/``deny``) and ``reason``, the ``outcome``, then ``prev_hash`` (the
previous line's ``hash``; 64 zeros for the first line) and ``hash`` = SHA-256 over the canonical
JSON (sorted keys, no spaces, UTF-8) of the line without ``hash``. A line is fsync'd before the
node's answer leaves, so an answered request is always on disk.

``verify`` recomputes the chain and names the first bad line: edited (its hash does not
match), deleted, inserted or reordered (``seq`` or ``prev_hash`` breaks the chain). The chain
is unkeyed, so cutting lines from the end, emptying the file or recomputing the whole chain
after dropping a line leaves a valid chain. Signed checkpoints catch those: the node signs
its (line count, head) with its certificate key at every answer and every
``CHECKPOINT_EVERY`` lines, keeps the latest in ``LOG.checkpoint``, and the aggregator
witnesses each one (``trustspace.transport.checkpoint``). ``check_tail`` compares a log with
a checkpoint: the log must have at least the checkpointed lines and the checkpointed hash at
that line. A node refuses to open a log that is behind its checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustspace._files import Flusher, write_atomic
from trustspace.errors import AuthenticationError, ConfigError, NodeError
from trustspace.node import _fault
from trustspace.transport.ca import Credentials
from trustspace.transport.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    sign_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "CHECKPOINT_EVERY",
    "GENESIS",
    "AuditLog",
    "Checkpoint",
    "SignedCheckpoint",
    "VerifyReport",
    "check_tail",
    "checkpoint_path",
    "read_checkpoint",
    "record_hash",
    "verify",
]

log = logging.getLogger("trustspace.node")
GENESIS = "0" * 64
_FIELDS = ("seq", "time", "prev_hash", "hash")
#: A signed checkpoint at least every this many lines (besides the one at every answer): one
#: ECDSA signature (~0.1 ms), cheap next to 100 fsync'd lines.
CHECKPOINT_EVERY = 100
#: Least time between two rewrites of ``LOG.checkpoint``: an fsync'd rename per answer would
#: contend with the log's own fsyncs and double a small query's latency; the answer's
#: checkpoint reaches the witness at once, so the local file may lag by this much.
CHECKPOINT_WRITE_INTERVAL_S = 0.5
_MAX_CHECKPOINT_FILE = 64 * 1024  # a checkpoint with its certificate is about 1.5 kB


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
    heads: Mapping[int, str] = field(default_factory=dict)  # line count -> hash (``at``)


def verify(path: str | os.PathLike[str], *, at: Collection[int] = ()) -> VerifyReport:
    """Check the whole chain of the log at ``path``; never raises for a bad log.

    ``at``: line counts whose chain head to report in ``heads`` (``heads[n]`` is the hash of
    line ``n``, ``GENESIS`` for 0), for comparing with checkpoints; counts beyond the intact
    lines are absent.

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
    want = set(at)
    heads: dict[int, str] = {0: GENESIS} if 0 in want else {}

    def bad(problem: str, lineno: int) -> VerifyReport:  # the intact prefix, and what broke
        return VerifyReport(False, count, prev, problem, lineno, heads)

    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{p}:{lineno}"
            if not raw.endswith(b"\n"):
                return bad(f"{where}: last line is incomplete (cut off)", lineno)
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return bad(f"{where}: line is not valid JSON (edited)", lineno)
            if not isinstance(rec, dict) or any(f not in rec for f in _FIELDS):
                return bad(f"{where}: line lacks the audit fields (edited)", lineno)
            if rec["hash"] != record_hash(rec):
                return bad(f"{where}: content does not match its hash (edited)", lineno)
            seq = rec["seq"]
            if seq != count:
                if not isinstance(seq, int) or seq < count:
                    what = f"inserted or reordered (seq {seq}, expected {count})"
                elif _seq_appears_later(fh, count):
                    what = f"reordered (seq {seq}, expected {count})"
                else:
                    what = f"{seq - count} line(s) deleted before it (seq {seq}, expected {count})"
                return bad(f"{where}: {what}", lineno)
            if rec["prev_hash"] != prev:
                return bad(
                    f"{where}: prev_hash does not match line {lineno - 1} "
                    "(a line was replaced, inserted or reordered)",
                    lineno,
                )
            prev = rec["hash"]
            count += 1
            if count in want:
                heads[count] = prev
    return VerifyReport(True, count, prev, heads=heads)


def _seq_appears_later(fh: Any, seq: int) -> bool:
    for raw in fh:
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("seq") == seq:
            return True
    return False


def checkpoint_path(log_path: str | os.PathLike[str]) -> Path:
    """Where a node keeps the latest signed checkpoint of the log at ``log_path``."""
    p = Path(log_path)
    return p.with_name(p.name + ".checkpoint")


def read_checkpoint(path: str | os.PathLike[str]) -> SignedCheckpoint:
    """Read a ``LOG.checkpoint`` file (its signature is not checked here).

    Raises:
        ConfigError: the file is unreadable, too large, not JSON or not a checkpoint (the
            message names the file).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(_MAX_CHECKPOINT_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the checkpoint: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CHECKPOINT_FILE:
        raise ConfigError(f"{p}: larger than {_MAX_CHECKPOINT_FILE} bytes; not a checkpoint")
    try:
        return SignedCheckpoint.from_json(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{p}: not valid JSON; not a checkpoint") from None
    except ValueError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def check_tail(report: VerifyReport, cp: Checkpoint, source: str) -> str:
    """Why the log of ``report`` is behind checkpoint ``cp`` (from ``source``); "" if it is not.

    ``report`` must come from ``verify(..., at=[cp.lines])``. A log is behind when it has
    fewer intact lines than ``cp.lines`` (lines cut from the end, the file emptied, or a line
    dropped and the chain recomputed) or another hash at line ``cp.lines`` (rewritten).
    """
    if report.lines < cp.lines:
        return (
            f"the log has {report.lines} intact line(s) but {cp.describe()} ({source}) says "
            f"it had {cp.lines}: {cp.lines - report.lines} line(s) are missing (cut from the "
            "end, the file emptied or replaced, or lines removed and the chain recomputed)"
        )
    head = report.heads.get(cp.lines)
    if head != cp.head:
        return (
            f"line {cp.lines} has hash {str(head)[:16]}... but {cp.describe()} ({source}) "
            f"says {cp.head[:16]}...: the log was rewritten up to that line (lines removed, "
            "added or changed and the chain recomputed)"
        )
    return ""


def _cut_off_by_crash(path: Path, report: VerifyReport) -> bool:
    """Whether the only problem is an unterminated last line (a crash while writing it)."""
    return report.bad_line == report.lines + 1 and report.problem.endswith("(cut off)")


def _set_aside_partial_line(path: Path) -> tuple[int, str, Path]:
    """Move the unterminated last line to ``PATH.partial`` (evidence) and cut it from the log;
    returns its length, its SHA-256 (hex) and the evidence file.

    Safe: a line is complete and fsync'd before the node answers, so the request of a
    partial line was never answered (the aggregator saw the node fail) and nothing is lost.
    """
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    torn = data[keep:]
    evidence = path.with_name(path.name + ".partial")
    with evidence.open("ab") as fh:
        fh.write(data[keep:] + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    with path.open("r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return len(torn), hashlib.sha256(torn).hexdigest(), evidence


class AuditLog:
    """Append-only, hash-chained, fsync'd audit log with signed checkpoints (thread-safe).

    Opening an existing log verifies it first, checks it against ``LOG.checkpoint`` and
    continues its chain. An unterminated last line (the node died while writing it; its
    request was never answered) is moved to ``PATH.partial`` and recorded by a line of its
    own (``event: torn_line_recovered``, its length and SHA-256), and the chain continues.

    With ``credentials`` (the node's), ``checkpoint()`` signs the current head and keeps it in
    ``LOG.checkpoint`` (written atomically, in the background); it is called at every answer,
    at least every ``checkpoint_every`` lines, at start-up and at ``close()`` (which waits for
    the file). Without them nothing is signed
    and a stored checkpoint's counts are checked but not its signature.

    Raises:
        ConfigError: the existing log is broken (the message names the line), or it is behind
            its last checkpoint (fewer lines, another hash at the checkpointed line, or the
            log is missing), or the checkpoint file is unreadable or not signed by this node.
            Keep the files as evidence; the message says what to do.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        credentials: Credentials | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        if isinstance(checkpoint_every, bool) or checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every = {checkpoint_every!r}: must be at least 1")
        self.path = Path(path)
        self.checkpoint_path = checkpoint_path(self.path)
        self._creds = credentials
        self._every = checkpoint_every
        self._lock = threading.Lock()
        self._cp_lock = threading.Lock()  # taken before ``_lock``, never after it
        self._latest: SignedCheckpoint | None = None
        self._local = threading.local()  # per-thread "a line was written" mark (see ``mark``)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stored = self._stored_checkpoint()
        torn: tuple[int, str, Path] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            report = verify(self.path, at=(stored.checkpoint.lines,) if stored else ())
            cut = not report.ok and _cut_off_by_crash(self.path, report)
            if not report.ok and not cut:
                raise ConfigError(
                    f"audit log {self.path} is broken: {report.problem}; move it aside (keep "
                    "it as evidence) and start the node again"
                )
            if stored is not None:
                self._check_behind(report, stored)
            if cut:
                torn = _set_aside_partial_line(self.path)
            self._seq, self._head = report.lines, report.head
        else:
            if stored is not None:
                self._check_behind(VerifyReport(True, 0, GENESIS, heads={0: GENESIS}), stored)
            self._seq, self._head = 0, GENESIS
        if stored is None and self._seq > 0:
            log.warning(
                "audit log %s has %d lines but no checkpoint %s: its tail cannot be checked "
                "this time (a new checkpoint is written now)",
                self.path,
                self._seq,
                self.checkpoint_path,
            )
        self._cp_lines = stored.checkpoint.lines if stored is not None else -1
        self._written = self._cp_lines  # the line count in LOG.checkpoint
        self._flusher = (
            Flusher(
                self._write_checkpoint,
                name=f"checkpoint-{self.path.name}",
                interval_s=CHECKPOINT_WRITE_INTERVAL_S,
            )
            if self._creds is not None
            else None
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fh = os.fdopen(fd, "ab")
        if torn is not None:
            size, digest, evidence = torn
            log.warning(
                "audit log %s: a torn last line (%d bytes, a crash while writing it) was moved "
                "to %s and recorded",
                self.path,
                size,
                evidence,
            )
            self.append(
                {
                    "event": "torn_line_recovered",
                    "operation": "audit.recover",
                    "bytes": size,
                    "sha256": digest,
                    "evidence": evidence.name,
                    "decision": "",
                    "reason": "an incomplete last line (the node stopped while writing it; "
                    "its request was never answered) was moved to the evidence file",
                    "outcome": "recovered",
                }
            )
        if self._creds is not None:
            self.checkpoint()

    def _stored_checkpoint(self) -> SignedCheckpoint | None:
        """The checkpoint in ``LOG.checkpoint`` (signature checked with credentials), if any."""
        where = self.checkpoint_path
        if not where.exists():
            return None
        try:
            stored = read_checkpoint(where)
            if self._creds is not None:
                verify_checkpoint(
                    self._creds.ca_pem, stored, node=self._creds.name, where=str(where)
                )
        except (ValueError, AuthenticationError) as exc:
            raise ConfigError(
                f"audit checkpoint {where} cannot be used: {exc}; the node will not start "
                f"without checking {self.path} against it. Keep both files as evidence; if "
                "the node's certificate was replaced or the file is damaged, compare the log "
                "with the aggregator's witness log (`trustspace audit verify LOG --witness "
                "FILE`), then move the checkpoint file aside and start the node again"
            ) from None
        return stored

    def _check_behind(self, report: VerifyReport, stored: SignedCheckpoint) -> None:
        problem = check_tail(report, stored.checkpoint, str(self.checkpoint_path))
        if problem:
            raise ConfigError(
                f"audit log {self.path} is behind its last checkpoint: {problem}. The node "
                "will not start on this log. Keep the log and its checkpoint as evidence, find "
                "out who changed the log and restore it from a backup (`trustspace audit "
                "verify LOG` checks a copy); to start a new log on purpose, move both files "
                "aside"
            )

    def checkpoint(self) -> SignedCheckpoint | None:
        """Sign the current head (unless the latest checkpoint already covers it) and return
        it; ``None`` without credentials. ``LOG.checkpoint`` is rewritten with the newest
        checkpoint in the background (an atomic write with an fsync costs more than the
        signature; the answer need not wait for it, since the witness gets the checkpoint)."""
        if self._creds is None:
            return None
        with self._cp_lock:
            with self._lock:
                lines, head = self._seq, self._head
            latest = self._latest
            if latest is not None and latest.checkpoint.lines >= lines:
                return latest  # lines only grow while the log is open: same head
            now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            signed = sign_checkpoint(self._creds, Checkpoint(self._creds.name, lines, head, now))
            self._latest = signed
            self._cp_lines = lines
        if self._flusher is not None:
            self._flusher.kick()
        return signed

    def _write_checkpoint(self) -> None:
        """Write the newest checkpoint to ``LOG.checkpoint`` (the flusher's thread)."""
        signed = self._latest
        if signed is None or signed.checkpoint.lines <= self._written:
            return
        body = json.dumps(signed.to_json(), sort_keys=True).encode("ascii") + b"\n"
        try:
            write_atomic(self.checkpoint_path, body, mode=0o640)
        except OSError as exc:
            raise NodeError(
                f"cannot write audit checkpoint {self.checkpoint_path}: {exc}"
            ) from None
        self._written = signed.checkpoint.lines

    def flush_checkpoint(self) -> None:
        """Wait until ``LOG.checkpoint`` holds the newest checkpoint."""
        if self._flusher is not None:
            self._flusher.flush()

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The last checkpoint signed since the log was opened."""
        return self._latest

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
            due = self._creds is not None and self._seq - self._cp_lines >= self._every
        if due:
            self.checkpoint()
        return record

    def mark(self) -> None:
        """Start watching whether this thread writes a line (before a request is handled)."""
        self._local.wrote = False

    def written_since_mark(self) -> bool:
        """Whether this thread appended a line since its last ``mark()``."""
        return bool(getattr(self._local, "wrote", False))

    def close(self) -> None:
        """Sign a last checkpoint (with credentials), write it, and close the file."""
        if self._flusher is not None and not self._fh.closed:
            self.checkpoint()
            self._flusher.close()
        with self._lock:
            if not self._fh.closed:
                self._fh.close()
