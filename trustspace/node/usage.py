"""Metered use: what each analyst (purpose, dataset) asked of a node, from its audit log.

``usage(logs, by="analyst", since=None)`` reads one or more nodes' audit logs (the JSON lines
``trustspace.node.audit`` writes) and returns one row per requester (or purpose, dataset,
operation -- the signed query's, so a query's schema lookups count with it -- or decision):

- ``queries``: distinct request ids with at least one allowed computing step (a query is one
  request id however many protocol stages and rounds it took; the log has one line per stage;
  schema lookups while planning do not count);
- ``refused``: distinct request ids with a refused step (and refused calls that never got as far
  as naming a request: one each);
- ``operations``: the operations asked for, comma-separated;
- ``epsilon``: the differential-privacy epsilon signed with the queries, added up (0 for exact
  queries; an upper bound: the nodes compose in zCDP, see ``rho``);
- ``rho``: the zCDP budget the nodes charged and spent (their ledgers' entries, mirrored in the
  masked-input audit lines), summed over the logs given: per node, read one log at a time;
- ``steps``: audit lines; ``ms`` and ``cpu_ms``: wall time and handling-thread CPU time of the
  allowed steps at the node (engine and Paillier worker threads are not in ``cpu_ms``);
- ``nodes``: how many of the given logs the requester appears in.

Lines of other kinds (a node's own events) are skipped. The result is a pandas DataFrame
(``to_csv``/``to_json``), sorted by the grouping key.

``queries(logs, since=None)`` returns one row per query instead (a request id, however many
protocol stages, rounds and nodes it took): its time, analyst, purpose, operation, dataset,
method, ``decision`` (``allow``; ``deny`` if any node refused a step; ``error`` if a step
failed), nodes, steps, epsilon, rho and milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from trustspace.errors import ConfigError, DataError

__all__ = ["BY", "queries", "usage"]

BY = ("analyst", "purpose", "dataset", "operation", "decision")
PLANNING = "describe_datasets"  # schema lookups while a query is planned: not a query
COLUMNS = [
    "queries",
    "refused",
    "operations",
    "epsilon",
    "rho",
    "steps",
    "ms",
    "cpu_ms",
    "nodes",
]


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the audit log: {exc.strerror}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(
                    f"{path}: line {n} is not JSON; check the log with `trustspace audit verify`"
                ) from None
            if isinstance(rec, dict) and "decision" in rec and "event" not in rec:
                rec["_log"] = str(path)
                rec["_line"] = n
                yield rec


def _since(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r}: expected a date (YYYY-MM-DD) or ISO time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _time(rec: dict[str, Any]) -> dt.datetime | None:
    t = rec.get("time")
    if not isinstance(t, str):
        return None
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _key(rec: dict[str, Any], by: str) -> str:
    """The value of grouping ``by`` of one audit line ("-" when it has none)."""
    if by == "operation":  # the signed query's: a query's planning lines count with it
        query = rec.get("query")
        op = query.get("operation") if isinstance(query, dict) else None
        return str(op or rec.get("operation") or "-")
    field = {"analyst": "requester"}.get(by, by)
    return str(rec.get(field) or "-")


def _rho_spent(rec: dict[str, Any]) -> float:
    """The zCDP rho one audit line records as spent (its ``params``; 0 if none)."""
    params = rec.get("params") or {}
    if isinstance(params, dict) and params.get("dp_charge") == "spent":
        return float(params.get("dp_rho") or 0.0)
    return 0.0


def _decision(seen: set[Any]) -> str:
    """A query's decision from its lines': any refusal is a refusal, then any error."""
    return next((d for d in ("deny", "error", "allow") if d in seen), "-")


def queries(
    logs: Iterable[str | os.PathLike[str]], *, since: str | dt.datetime | None = None
) -> pd.DataFrame:
    """One row per query (request id) in ``logs``, oldest first (see the module docstring).

    Lines without a request id (calls refused before naming one) are not queries: ``usage``
    counts them as refusals.

    Raises:
        ConfigError: ``since`` is not valid.
        DataError: a log cannot be read or holds a line that is not JSON (names file and line).
    """
    start = _since(since)
    rows: dict[str, dict[str, Any]] = {}
    for log in logs:
        for rec in _records(Path(log)):
            when = _time(rec)
            rid = rec.get("request_id") or ""
            if not rid or (start is not None and when is not None and when < start):
                continue
            raw = rec.get("query")
            query: dict[str, Any] = raw if isinstance(raw, dict) else {}
            row = rows.setdefault(
                rid,
                {
                    "time": rec.get("time") or "",
                    "request_id": rid,
                    "analyst": rec.get("requester") or "-",
                    "purpose": rec.get("purpose") or query.get("purpose") or "-",
                    "operation": query.get("operation") or rec.get("operation") or "-",
                    "dataset": rec.get("dataset") or query.get("dataset") or "-",
                    "method": query.get("method") or "-",
                    "decisions": set(),
                    "nodes": set(),
                    "steps": 0,
                    "epsilon": 0.0,
                    "rho": 0.0,
                    "ms": 0.0,
                },
            )
            row["steps"] += 1
            row["nodes"].add(rec["_log"])
            outcome = str(rec.get("outcome") or "")
            decision = rec.get("decision")
            row["decisions"].add("error" if outcome.startswith("error") else decision)
            dp = query.get("dp")
            if isinstance(dp, dict) and "epsilon" in dp:
                row["epsilon"] = float(dp["epsilon"])
            row["rho"] += _rho_spent(rec)
            if decision == "allow" and rec.get("operation") != PLANNING:  # as in ``usage``
                row["ms"] += float(rec.get("ms") or 0.0)
    out = [
        {
            **{k: v for k, v in r.items() if k not in ("decisions", "nodes")},
            "decision": _decision(r["decisions"]),
            "nodes": len(r["nodes"]),
            "ms": round(r["ms"], 3),
        }
        for r in rows.values()
    ]
    columns = [
        "time",
        "request_id",
        "analyst",
        "purpose",
        "operation",
        "dataset",
        "method",
        "decision",
        "nodes",
        "steps",
        "epsilon",
        "rho",
        "ms",
    ]
    return pd.DataFrame(out, columns=columns).sort_values("time").reset_index(drop=True)


def usage(
    logs: Iterable[str | os.PathLike[str]],
    *,
    by: str = "analyst",
    since: str | dt.datetime | None = None,
) -> pd.DataFrame:
    """One row per ``by`` value (see the module docstring).

    Raises:
        ConfigError: ``by`` or ``since`` is not valid.
        DataError: a log cannot be read or holds a line that is not JSON (names file and line).
    """
    if by not in BY:
        raise ConfigError(f"--by {by!r}: choose one of {', '.join(BY)}")
    start = _since(since)
    rows: dict[str, dict[str, Any]] = {}
    for log in logs:
        for rec in _records(Path(log)):
            when = _time(rec)
            if start is not None and when is not None and when < start:
                continue
            key = _key(rec, by)
            row = rows.setdefault(
                key,
                {
                    "allowed": set(),
                    "refused": set(),
                    "anonymous_refusals": 0,
                    "operations": set(),
                    "epsilon": {},
                    "rho": 0.0,
                    "steps": 0,
                    "ms": 0.0,
                    "cpu_ms": 0.0,
                    "nodes": set(),
                },
            )
            rid = rec.get("request_id") or ""
            row["steps"] += 1
            row["nodes"].add(rec["_log"])
            if rec.get("operation"):
                row["operations"].add(str(rec["operation"]))
            if rec.get("decision") == "allow" and rid and rec.get("operation") != PLANNING:
                row["allowed"].add(rid)
                row["ms"] += float(rec.get("ms") or 0.0)
                row["cpu_ms"] += float(rec.get("cpu_ms") or 0.0)
                dp = (rec.get("query") or {}).get("dp") or {}
                if isinstance(dp, dict) and "epsilon" in dp:
                    row["epsilon"][rid] = float(dp["epsilon"])
                row["rho"] += _rho_spent(rec)
            elif rec.get("decision") == "deny":
                if rid:
                    row["refused"].add(rid)
                else:
                    row["anonymous_refusals"] += 1
    out = pd.DataFrame(
        [
            {
                by: key,
                "queries": len(r["allowed"]),
                "refused": len(r["refused"]) + r["anonymous_refusals"],
                "operations": ", ".join(sorted(r["operations"])),
                "epsilon": float(sum(r["epsilon"].values())),
                "rho": r["rho"],
                "steps": r["steps"],
                "ms": round(r["ms"], 3),
                "cpu_ms": round(r["cpu_ms"], 3),
                "nodes": len(r["nodes"]),
            }
            for key, r in rows.items()
        ],
        columns=[by, *COLUMNS],
    )
    return out.sort_values(by).reset_index(drop=True)
