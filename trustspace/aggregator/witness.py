"""The aggregator as a witness of the nodes' audit logs: verified checkpoints, appended, fsync'd.

Every node answer carries the node's signed checkpoint of its audit log (count of lines and
chain head, ``trustspace.transport.checkpoint``). The witness checks the signature (a node
certificate of the data space's CA, issued to the node that answered) and appends it to its
own JSON-lines file, so a node's log cut short or rewritten later is caught by
``trustspace audit verify LOG --witness FILE`` even if the node's own checkpoint file was
rolled back with it. Memory holds only the latest checkpoint per node.

Verification and the rollback check happen on the answer's path (one ECDSA verification,
~0.1 ms); the file is written and fsync'd by a background thread (``Flusher``) at most every
``WRITE_INTERVAL_S``, one line per node with its newest checkpoint since the last write, so
an answer never waits for the disk and the file grows by at most one line per node per
interval. A crash of the aggregator loses at most the last interval's checkpoints.

One line per new checkpoint: ``received`` (UTC), ``node``, ``lines``, ``head``, ``time`` (the
node's signing time), ``signature`` (base64) and ``cert_sha256`` (the signer's certificate).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from trustspace._files import Flusher
from trustspace.errors import AuthenticationError, ConfigError
from trustspace.transport.checkpoint import Checkpoint, CheckpointVerifier, SignedCheckpoint

__all__ = ["Witness", "read_witness"]

log = logging.getLogger("trustspace.aggregator")
#: Least time between two writes of the witness log: bounds its growth (at most one line per
#: node per interval) and the checkpoints a crash of the aggregator can lose.
WRITE_INTERVAL_S = 0.5


def read_witness(path: str | os.PathLike[str], node: str | None = None) -> Iterator[Checkpoint]:
    """The checkpoints in a witness file (of ``node`` only, if given), in file order.

    An incomplete or unreadable line (a crash while writing it) is skipped.

    Raises:
        ConfigError: the file cannot be read.
    """
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the witness log: {exc.strerror or exc}") from None
    with fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
                cp = Checkpoint(rec["node"], rec["lines"], rec["head"], rec["time"])
            except (ValueError, KeyError, TypeError):
                continue
            if node is None or cp.node == node:
                yield cp


class Witness:
    """Verifies and records the checkpoints the aggregator's node clients receive.

    ``path=None`` keeps the latest checkpoints in memory only (for in-process tests). Opening
    an existing file restores the latest checkpoint of each node from it.
    """

    def __init__(
        self,
        ca_pem: bytes,
        path: str | os.PathLike[str] | None,
        *,
        interval_s: float = WRITE_INTERVAL_S,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._verifier = CheckpointVerifier(ca_pem)
        self._lock = threading.Lock()
        self._latest: dict[str, Checkpoint] = {}
        self._unwritten: dict[str, SignedCheckpoint] = {}  # newest per node, not yet on disk
        self._fh: IO[bytes] | None = None
        self._flusher: Flusher | None = None
        if self.path is not None:
            if self.path.exists():
                for cp in read_witness(self.path):
                    self._latest[cp.node] = cp
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as exc:
                raise ConfigError(
                    f"{self.path}: cannot open the witness log: {exc.strerror or exc}; set "
                    "[aggregator] witness_log to a writable file"
                ) from None
            self._fh = os.fdopen(fd, "ab")
            self._flusher = Flusher(self._write, name="witness-log", interval_s=interval_s)

    def latest(self, node: str) -> Checkpoint | None:
        """The newest checkpoint witnessed for ``node``."""
        return self._latest.get(node)

    def observe(self, node: str, raw: bytes) -> Checkpoint:
        """Verify the serialized ``AuditCheckpoint`` ``raw`` that ``node`` sent, record it if
        it is new, and return it. A line count lower than the last one witnessed for the node
        (or another head at the same count) is logged as a warning: a possible rollback.

        Raises:
            AuthenticationError: the checkpoint is malformed, not signed by a node certificate
                of the data space, or signed by another node than ``node`` (nothing recorded).
        """
        where = f"audit checkpoint from node {node}"
        try:
            signed = SignedCheckpoint.from_bytes(raw)
        except ValueError as exc:
            raise AuthenticationError(f"{where}: {exc}") from None
        cp = self._verifier.verify(signed, node=node, where=where)
        with self._lock:
            last = self._latest.get(node)
            if last is not None and (last.lines, last.head) == (cp.lines, cp.head):
                return cp  # already witnessed (the node answered without a new line)
            if last is not None and cp.lines < last.lines:
                log.warning(
                    "node %s: audit checkpoint of %s has %d lines, fewer than the %d of its "
                    "checkpoint of %s: possible rollback of its audit log",
                    node,
                    cp.time,
                    cp.lines,
                    last.lines,
                    last.time,
                )
            elif last is not None and cp.lines == last.lines:
                log.warning(
                    "node %s: two audit checkpoints of %d lines with different heads (%s, %s): "
                    "its audit log was rewritten",
                    node,
                    cp.lines,
                    last.time,
                    cp.time,
                )
            self._latest[node] = cp
            if self._flusher is not None:
                self._unwritten[node] = signed
        if self._flusher is not None:
            self._flusher.kick()
        return cp

    def flush(self) -> None:
        """Wait until every checkpoint witnessed so far is in the file."""
        if self._flusher is not None:
            self._flusher.flush()

    def _write(self) -> None:
        """Append the newest unwritten checkpoint of each node and fsync (background thread)."""
        with self._lock:
            batch, self._unwritten = self._unwritten, {}
        if not batch or self._fh is None:
            return
        self._fh.write(b"".join(self._line(s) for s in batch.values()))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    @staticmethod
    def _line(signed: SignedCheckpoint) -> bytes:
        cp = signed.checkpoint
        rec = {
            "received": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "node": cp.node,
            "lines": cp.lines,
            "head": cp.head,
            "time": cp.time,
            "signature": base64.b64encode(signed.signature).decode("ascii"),
            "cert_sha256": hashlib.sha256(signed.cert_pem).hexdigest(),
        }
        return json.dumps(rec, sort_keys=True).encode("ascii") + b"\n"

    def close(self) -> None:
        """Write what is pending, then close the file."""
        if self._flusher is not None:
            self._flusher.close()
        with self._lock:
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
