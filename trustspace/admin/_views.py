"""What the console pages show, read from a running node or aggregator at request time.

Every function returns plain JSON-ready data (the HTML pages and their ``/api/...`` twins
render the same dicts). Nothing here reads a data value of a dataset: datasets are shown by
their declared schema and public domains and bounds, the row count of the node's own snapshot
at most. Audit lines are shown as written (they hold analyst-supplied strings: the templates
escape them, and the app sends a Content-Security-Policy without scripts).

The policy, config, audit log and ledger are read from the service at each request, never
copied at start, so a live reload shows up at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trustspace
from trustspace.errors import AuthenticationError, ConfigError, TrustspaceError
from trustspace.node.audit import (
    check_tail,
    checkpoint_path,
    read_checkpoint,
    verify,
)
from trustspace.node.usage import usage
from trustspace.transport.checkpoint import verify_checkpoint

if TYPE_CHECKING:
    from trustspace.node.service import NodeService

__all__ = ["AuditQuery", "HostView", "NodeView"]

#: Lines per audit page by default, and at most (a page is rendered in one response).
AUDIT_PAGE = 50
AUDIT_PAGE_MAX = 500
#: Longest text shown in one table cell, and of one line's details (the rest is cut, marked).
CELL_CHARS = 300
DETAIL_CHARS = 20_000
#: Logs up to this size are verified whenever the page is shown and the log changed; larger
#: ones when the operator asks (``?verify=1``), as a full check reads the whole file.
AUTO_VERIFY_BYTES = 8 * 1024 * 1024
_BLOCK = 64 * 1024


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _cut(value: Any, limit: int = CELL_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


def _plain(value: Any) -> Any:
    """A config value as JSON-ready data (tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class HostView:
    """What every admin port shows: the server's name and kind, health, address, uptime."""

    name: str
    kind: str  # "node" or "aggregator"
    serving: Callable[[], bool]  # False once a drain began
    address: Callable[[], str]  # the gRPC address
    started: float = field(default_factory=time.time)
    #: more overview rows, e.g. the aggregator's nodes
    extra: Callable[[], dict[str, Any]] = dict

    def health(self) -> str:
        return "serving" if self.serving() else "draining"

    def overview(self) -> dict[str, Any]:
        now = time.time()
        return {
            "name": self.name,
            "kind": self.kind,
            "version": trustspace.__version__,
            "health": self.health(),
            "address": self.address(),
            "started": _iso(self.started),
            "uptime_s": round(now - self.started, 1),
            "uptime": _duration(now - self.started),
            **self.extra(),
        }


@dataclass(frozen=True)
class AuditQuery:
    """The audit page's filters: text search, analyst, operation, decision, and the page
    (``before``: lines with a smaller ``seq``, newest first; ``limit`` lines)."""

    q: str = ""
    analyst: str = ""
    operation: str = ""
    decision: str = ""
    before: int | None = None
    limit: int = AUDIT_PAGE

    @classmethod
    def parse(cls, params: dict[str, str]) -> AuditQuery:
        """From the query string; ConfigError naming the bad parameter."""
        decision = params.get("decision", "").strip()
        if decision not in ("", "allow", "deny"):
            raise ConfigError(f"decision={decision!r}: choose allow, deny or nothing (any)")
        before: int | None = None
        if params.get("before", "").strip():
            try:
                before = int(params["before"])
            except ValueError:
                raise ConfigError(f"before={params['before']!r}: expected a line number") from None
        try:
            limit = int(params.get("limit") or AUDIT_PAGE)
        except ValueError:
            raise ConfigError(f"limit={params['limit']!r}: expected a number of lines") from None
        if not 1 <= limit <= AUDIT_PAGE_MAX:
            raise ConfigError(f"limit={limit}: expected 1 to {AUDIT_PAGE_MAX} lines per page")
        return cls(
            q=params.get("q", "").strip()[:200],
            analyst=params.get("analyst", "").strip()[:200],
            operation=params.get("operation", "").strip()[:200],
            decision=decision,
            before=before,
            limit=limit,
        )

    def matches(self, rec: dict[str, Any], raw: str) -> bool:
        if self.before is not None and not (
            isinstance(rec.get("seq"), int) and rec["seq"] < self.before
        ):
            return False
        if self.analyst and rec.get("requester") != self.analyst:
            return False
        op = str(rec.get("operation") or "")
        if self.operation and op != self.operation and not op.startswith(self.operation + "."):
            return False
        if self.decision and rec.get("decision") != self.decision:
            return False
        return not self.q or self.q.casefold() in raw.casefold()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reverse_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path``, last first, reading blocks from the end (no whole-file read)."""
    with path.open("rb") as fh:
        pos = fh.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if tail.strip():
            yield tail


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    """One audit line as a table row (long texts cut) with its full JSON as ``detail``."""
    cells = {
        k: _cut(rec.get(k, ""))
        for k in ("time", "requester", "via", "operation", "dataset", "purpose", "decision")
    }
    cells["purpose"] = "" if rec.get("purpose") is None else cells["purpose"]
    # 2026-12-04T02:10:14.282+00:00 -> 2026-12-04 02:10:14.282 (the header says UTC)
    cells["time"] = cells["time"].replace("T", " ", 1).removesuffix("+00:00")
    cols = rec.get("columns")
    return {
        "seq": rec.get("seq"),
        **cells,
        "columns": _cut(", ".join(map(str, cols)) if isinstance(cols, list) else cols or ""),
        "outcome": _cut(rec.get("outcome", rec.get("event", ""))),
        "reason": _cut(rec.get("reason", "")),
        "request_id": _cut(rec.get("request_id", ""), 40),
        "ms": rec.get("ms"),
        "detail": _cut(json.dumps(rec, indent=2, ensure_ascii=False, sort_keys=True), DETAIL_CHARS),
    }


class NodeView(HostView):
    """The node's pages, read from its ``NodeService`` at every request."""

    def __init__(
        self,
        service: NodeService,
        *,
        serving: Callable[[], bool],
        address: Callable[[], str],
        ca_pem: bytes,
        started: float | None = None,
    ) -> None:
        super().__init__(service.name, "node", serving, address, started or time.time())
        self.service = service
        self._ca_pem = ca_pem
        self._lock = threading.Lock()
        self._policy_seen: tuple[int, float] = (id(service.policy.config), self.started)
        self._chain: tuple[tuple[int, ...], dict[str, Any]] | None = None
        self._usage: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {}

    # -- overview ----------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        audit = self.service.audit
        config = self.service.config
        return {
            **super().overview(),
            "config": str(config.source),
            "audit": {"path": str(audit.path), "lines": audit.lines, "head": audit.head},
            "datasets": [d.name for d in config.datasets],
            "rules": len(self.service.policy.config.rules),
            "dp": self.service.policy.config.dp is not None,
            "policy_loaded": self._policy_loaded(),
        }

    # -- datasets ----------------------------------------------------------------------
    def datasets(self) -> dict[str, Any]:
        """Each dataset's source and declared schema (types, domains, bounds); no values."""
        out = []
        engine = self.service.engine
        for spec in self.service.config.datasets:
            size: int | None = None
            modified = ""
            if spec.source is None:
                try:
                    st = spec.file.stat()
                    size, modified = st.st_size, _iso(st.st_mtime)
                except OSError:
                    pass
            try:
                rows = engine.row_count(spec.name) if hasattr(engine, "row_count") else None
            except Exception:  # a count is a nicety; the page must show all the same
                rows = None
            schema = spec.schema
            out.append(
                {
                    "name": spec.name,
                    "path": spec.location,
                    "format": spec.format if spec.source is None else spec.kind,
                    "unavailable": getattr(engine, "unavailable", {}).get(spec.name, ""),
                    "size": size,
                    "modified": modified,
                    "rows": rows,
                    "columns": [
                        {
                            "name": col,
                            "type": typ.value,
                            "domain": [str(v) for v in schema.domains.get(col, ())],
                            "bounds": list(schema.bounds[col]) if col in schema.bounds else None,
                        }
                        for col, typ in schema.columns.items()
                    ],
                }
            )
        return {"datasets": out}

    # -- policy ------------------------------------------------------------------------
    def _policy_since(self) -> float:
        """When the policy in effect was loaded: the node's start, or the time of the live
        reload that swapped it in (``NodeService.reloaded_at``; a policy replaced otherwise is
        dated when the console first saw it)."""
        current = id(self.service.policy.config)
        with self._lock:
            if self._policy_seen[0] != current:
                at = self.service.reloaded_at
                self._policy_seen = (current, at if at is not None else time.time())
            return self._policy_seen[1]

    def _policy_loaded(self) -> str:
        seen = self._policy_since()
        how = "at start" if seen == self.started else "reloaded"
        return f"{_iso(seen)} {how}"

    def policy(self) -> dict[str, Any]:
        cfg = self.service.policy.config
        plain = _plain(cfg)
        rules = plain.pop("rules")
        dp = plain.pop("dp")
        rate = plain.pop("rate_limit")
        source = self.service.config.source
        try:
            changed = source.stat().st_mtime
        except OSError:
            changed = None
        return {
            "source": str(source),
            "loaded": self._policy_loaded(),
            "file_modified": _iso(changed) if changed is not None else "",
            # edited after the policy in effect was loaded: not applied until a reload
            "file_newer": changed is not None and changed > self._policy_since() + 1.0,
            "rules": rules,
            "settings": plain,
            "rate_limit": rate,
            "dp": dp,
        }

    # -- audit -------------------------------------------------------------------------
    def audit(self, query: AuditQuery) -> dict[str, Any]:
        """A page of audit lines matching ``query``, newest first (see ``AuditQuery``)."""
        path = self.service.audit.path
        rows: list[dict[str, Any]] = []
        unreadable = 0
        more = False
        if path.is_file():
            for raw in _reverse_lines(path):
                try:
                    text = raw.decode("utf-8")
                    rec = json.loads(text)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    unreadable += 1
                    continue
                if not isinstance(rec, dict) or not query.matches(rec, text):
                    continue
                if len(rows) == query.limit:
                    more = True
                    break
                rows.append(_row(rec))
        last = rows[-1]["seq"] if rows else None
        return {
            "path": str(path),
            "lines": self.service.audit.lines,
            "filters": query.to_dict(),
            "rows": rows,
            "older": last if more and isinstance(last, int) else None,
            "unreadable": unreadable,
            "analysts": self._analysts(),
        }

    def _stat_key(self, path: Path) -> tuple[int, ...]:
        try:
            st = path.stat()
        except OSError:
            return (-1,)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def chain(self, *, force: bool = False) -> dict[str, Any]:
        """The audit chain's verification status; recomputed when the log (or its checkpoint)
        changed and is small, or on ``force``; otherwise the last result, marked stale."""
        path = self.service.audit.path
        cp_file = checkpoint_path(path)
        key = self._stat_key(path) + self._stat_key(cp_file)
        with self._lock:
            cached = self._chain
        if cached is not None and cached[0] == key:
            return cached[1]
        size = key[1] if len(key) > 1 else 0
        if not force and size > AUTO_VERIFY_BYTES:
            status = {
                "state": "unverified",
                "ok": None,
                "text": f"not verified since the log changed ({size} bytes); verify now",
                "checked": "",
            }
            if cached is not None:
                status["previous"] = cached[1]["text"]
            return status
        status = self._verify(path, cp_file)
        with self._lock:
            self._chain = (key, status)
        return status

    def _verify(self, path: Path, cp_file: Path) -> dict[str, Any]:
        checked = _iso(time.time())

        def result(state: str, text: str, **more: Any) -> dict[str, Any]:
            return {
                "state": state,
                "ok": state == "intact",
                "text": text,
                "checked": checked,
                **more,
            }

        # the checkpoint first: the log only grows after it, so it has at least its lines
        signed = None
        if cp_file.is_file():
            try:
                signed = read_checkpoint(cp_file)
                verify_checkpoint(self._ca_pem, signed, node=self.name, where=str(cp_file))
            except (ConfigError, AuthenticationError) as exc:
                return result("tampered", f"checkpoint {cp_file} cannot be trusted: {exc}")
        if not path.is_file():
            if signed is None:
                return result("intact", "the audit log is empty (no request yet)", lines=0)
            return result("tampered", f"{path} is missing but {cp_file} says it had lines")
        at = (signed.checkpoint.lines,) if signed is not None else ()
        report = verify(path, at=at)
        if not report.ok and report.bad_line == report.lines + 1 and "cut off" in report.problem:
            time.sleep(0.05)  # a line being written right now: look again
            report = verify(path, at=at)
        if not report.ok:
            return result(
                "tampered",
                f"TAMPERED: {report.problem}; the first {report.lines} lines are intact",
                lines=report.lines,
                head=report.head,
            )
        if signed is None:
            return result(
                "intact",
                f"chain intact: {report.lines} lines, head {report.head[:16]}…; no checkpoint "
                "file yet, so the tail is not checked",
                lines=report.lines,
                head=report.head,
            )
        why = check_tail(report, signed.checkpoint, f"checkpoint file {cp_file}")
        if why:
            return result("tampered", f"TAMPERED: behind its checkpoint: {why}", lines=report.lines)
        cp = signed.checkpoint
        return result(
            "intact",
            f"chain intact: {report.lines} lines, head {report.head[:16]}…; tail matches the "
            f"checkpoint signed by {cp.node} at {cp.time} ({cp.lines} lines)",
            lines=report.lines,
            head=report.head,
        )

    # -- usage and budgets -------------------------------------------------------------
    def usage(self, by: str) -> dict[str, Any]:
        """Usage per ``by`` (analyst or purpose) from this node's audit log, cached by size."""
        path = self.service.audit.path
        key = self._stat_key(path)
        with self._lock:
            cached = self._usage.get(by)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            frame = usage([path], by=by) if path.is_file() else None
            rows = [] if frame is None else frame.to_dict(orient="records")
            out: dict[str, Any] = {"by": by, "rows": rows, "error": ""}
        except TrustspaceError as exc:
            out = {"by": by, "rows": [], "error": str(exc)}
        with self._lock:
            self._usage[by] = (key, out)
        return out

    def _analysts(self) -> list[str]:
        """Analyst names for the filter's suggestions: the policy's, and those of the last
        usage computed (not recomputed here: that would read the whole log at every page)."""
        named = {a for r in self.service.policy.config.rules for a in r.analysts if a != "*"}
        with self._lock:
            cached = self._usage.get("analyst")
        if cached is not None:
            named |= {str(r["analyst"]) for r in cached[1]["rows"] if r["analyst"] != "-"}
        return sorted(named)

    def budgets(self) -> dict[str, Any]:
        """Each analyst's DP budget per dataset from the node's ledger: spent and remaining."""
        dp = self.service.policy.config.dp
        ledger = getattr(self.service, "ledger", None)
        out: dict[str, Any] = {"dp": _plain(dp), "rows": [], "error": ""}
        if ledger is None:
            return out
        try:
            budgets = ledger.budgets()
        except TrustspaceError as exc:
            out["error"] = str(exc)
            return out
        out["rows"] = [
            {
                "analyst": b.analyst,
                "dataset": b.dataset,
                "epsilon": b.epsilon,
                "delta": b.delta,
                "epsilon_spent": round(b.epsilon_spent, 6),
                "epsilon_remaining": round(b.epsilon_remaining, 6),
                "rho_limit": b.rho_limit,
                "rho_spent": b.rho_spent,
                "rho_reserved": b.rho_reserved,
                "rho_remaining": b.rho_remaining,
                "used_percent": round(100.0 * (b.spent_units + b.reserved_units) / b.limit_units, 1)
                if b.limit_units
                else 100.0,
            }
            for b in budgets
        ]
        return out
