"""The aggregator's requests as operators see them: metrics, one log line each, refusals logged.

``Observed`` wraps ``AggregatorService`` for the servicer: every analyst request is counted
(``trustspace_aggregator_requests_total{method,operation,outcome}``) and timed, a completed
one is logged at INFO; ``refused`` (the gate's ``CallHooks.refused``) logs every call the
aggregator refused or failed at WARNING -- a revoked or wrong-role caller, a malformed
message, a bad or foreign signature, a node's policy refusal, too few nodes -- with the caller,
method, status code, reason class and the request's names (never data values or results).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from trustspace.aggregator.service import AggregatorService
from trustspace.obs import AggregatorMetrics
from trustspace.obs.logs import cut
from trustspace.obs.metrics import code_reason, outcome_of, reason_of
from trustspace.transport import types
from trustspace.transport.ca import Identity
from trustspace.transport.signing import SignedQuery

log = logging.getLogger("trustspace.aggregator")
T = TypeVar("T")


def _fields(caller: Identity, query: SignedQuery | None, method: str) -> dict[str, Any]:
    """The request's names for the log line (the signed body, unverified: only for logging)."""
    out: dict[str, Any] = {"analyst": caller.name, "method": method}
    if query is None:
        return out
    try:
        body = query.unverified_body()
    except Exception:  # refused later, with its own error
        return out
    out.update(  # analyst-chosen strings: cut (the signed body may be megabytes)
        request_id=cut(body.request_id),
        operation=cut(body.operation),
        dataset=cut(body.dataset),
        purpose=None if body.purpose is None else cut(body.purpose),
        query_method=cut(body.method),
    )
    return out


class Observed:
    """``AggregatorService`` for the servicer, with metrics and logs (see module docstring)."""

    def __init__(self, service: AggregatorService, metrics: AggregatorMetrics) -> None:
        self.name = service.name
        self._service = service
        self._metrics = metrics
        self._last = threading.local()  # the failed request's names, for ``refused``

    def _run(
        self,
        method: str,
        caller: Identity,
        query: SignedQuery | None,
        call: Callable[[], T],
        nodes: Callable[[T], dict[str, Any]] | None = None,
    ) -> T:
        fields = _fields(caller, query, method)
        started = time.monotonic()
        self._last.fields = None
        try:
            result = call()
        except BaseException as exc:
            seconds = time.monotonic() - started
            outcome = outcome_of(exc)
            self._metrics.request(method, fields.get("operation", ""), outcome, seconds)
            # the gate calls ``refused`` next, in this thread: it logs the line
            self._last.fields = {
                **fields,
                "outcome": outcome,
                "reason": reason_of(exc),
                "duration_ms": round(1000.0 * seconds, 3),
            }
            raise
        seconds = time.monotonic() - started
        self._metrics.request(method, fields.get("operation", ""), "ok", seconds)
        fields.update(outcome="ok", duration_ms=round(1000.0 * seconds, 3))
        if nodes is not None:
            fields.update(nodes(result))
        log.info(
            "%s: %s %s %s%s: ok in %.1f ms",
            self.name,
            caller.name,
            method,
            fields.get("operation", ""),
            f" on {fields['dataset']}" if fields.get("dataset") else "",
            1000.0 * seconds,
            extra=fields,
        )
        return result

    def refused(self, method: str, caller: str, code: str, details: str) -> None:
        """``CallHooks.refused``: log and count a call that ended with an error status."""
        fields = getattr(self._last, "fields", None) or {"analyst": caller, "method": method}
        self._last.fields = None
        reason = str(fields.get("reason") or code_reason(code, details))
        self._metrics.refused(method, code, reason)
        fields = {**fields, "analyst": caller, "code": code, "reason": reason}
        fields["decision"] = "deny"
        log.warning(
            "%s: refused %s from %s: %s (%s): %s",
            self.name,
            method,
            caller,
            code,
            reason,
            details[:500],
            extra=fields,
        )

    def clear(self) -> None:
        """``CallHooks.before``: forget the names of an earlier failed request."""
        self._last.fields = None

    # ------------------------------------------------------------------ the handlers
    def run_query(self, caller: Identity, query: SignedQuery) -> Any:
        def nodes(out: Any) -> dict[str, Any]:
            return {"nodes": len(out.get("nodes", ())), "excluded": list(out.get("excluded", ()))}

        return self._run(
            "RunQuery", caller, query, lambda: self._service.run_query(caller, query), nodes
        )

    def run_round(self, caller: Identity, req: types.RoundRequest) -> types.RoundResult:
        return self._run(
            "RunRound", caller, req.query, lambda: self._service.run_round(caller, req)
        )

    def run_anonymization(self, caller: Identity, query: SignedQuery) -> Any:
        return self._run(
            "RunAnonymization",
            caller,
            query,
            lambda: self._service.run_anonymization(caller, query),
        )

    def status(self, caller: Identity, query: SignedQuery | None) -> list[types.NodeStatus]:
        return self._run("Status", caller, query, lambda: self._service.status(caller, query))
