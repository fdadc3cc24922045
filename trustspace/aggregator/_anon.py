"""The aggregator's federated anonymization driver (``RunAnonymization``).

1. Plan: describe the nodes (same schema everywhere), complete the spec (the sensitive
   attribute's public domain from the schema), and have every node prepare the job
   (``AnonHistogram``: policy, at least 3 participants unless every node's policy allows two,
   hierarchy coverage of its local values, the spec's digest).
2. Search: ``trustspace.anon.search`` over an ``AggregatedOracle`` whose every miss is ONE
   secure-aggregation round (``AggregatorService.secure_sum``, part ``anon.histogram``) of the
   nodes' vectors; everything derivable is rolled up (see ``trustspace.anon.federated``).
3. Apply: every node applies the chosen levels and the suppressed classes (decided on the
   global counts) to its own rows and writes them under its ``output_dir``.
4. Release: the rows come back to the analyst only from nodes whose ``release_rows`` allows it.

What the aggregator learns: the marginals, and the global histograms listed in the result's
``histograms_learned`` (docs/security.md (k-anonymization), "Federated anonymization").
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from trustspace.anon.federated import AggregatedOracle, VectorRequest
from trustspace.anon.search import search
from trustspace.anon.spec import AnonSpec
from trustspace.errors import ConfigError, NodeError, ProtocolError
from trustspace.transport import types

if TYPE_CHECKING:
    from trustspace.aggregator._host import Host
    from trustspace.transport.ca import Identity

log = logging.getLogger("trustspace.aggregator")


def _complete(
    spec: AnonSpec, schema_columns: Mapping[str, Any], domains: Mapping[str, Any]
) -> AnonSpec:
    """The spec, with the sensitive domain taken from the schema when the analyst gave none."""
    for col in spec.columns:
        if col not in schema_columns:
            raise ConfigError(
                f"column {col!r} is not in dataset {spec.dataset!r} (its columns are "
                f"{', '.join(schema_columns)})"
            )
    declared: list[Any] = []
    if spec.sensitive and spec.sensitive_values is None:
        declared = list(domains.get(spec.sensitive) or [])
        if not declared:
            raise ConfigError(
                f"the sensitive attribute {spec.sensitive!r} needs a public value domain: pass "
                f"sensitive_values=[...] or declare datasets.{spec.dataset}.domains."
                f"{spec.sensitive} in every node's config"
            )
    return spec.complete(declared)


def run_anonymization(svc: Host, caller: Identity, data: Mapping[str, Any]) -> dict[str, Any]:
    """The whole federated anonymization for analyst ``caller`` (see the module docstring).

    ``data``: ``{"spec": AnonSpec.to_dict() (sensitive_values/ordered may be null),
    "release": true | false | null}`` (null: release iff every node allows it).
    """
    t0 = time.perf_counter()
    raw = data.get("spec")
    if not isinstance(raw, Mapping):
        raise ConfigError("RunAnonymization: 'spec' must be a JSON object")
    release = data.get("release")
    if release is not None and not isinstance(release, bool):
        raise ConfigError("RunAnonymization: 'release' must be true, false or null")
    asked = AnonSpec.from_dict(raw)
    try:
        asked.check_federated()
    except ConfigError as exc:
        raise ConfigError(f"RunAnonymization: {exc}") from None
    request_id = secrets.token_hex(8)
    with svc.planned(asked.dataset, caller.name, request_id) as plan:
        spec = _complete(asked, plan.schema.columns, plan.schema.domains)
        nodes = plan.nodes
        names = [n.name for n in nodes]
        params = {
            "quasi_identifiers": list(spec.quasi_identifiers),
            "k": spec.k,
            "l": spec.l,
            "t": spec.t,
            "suppression_limit": spec.suppression_limit,
            "metric": spec.metric,
            "disclosure": spec.disclosure,
        }

        def ctx(op: str) -> types.RequestContext:
            return types.RequestContext(
                analyst=caller.name,
                request_id=request_id,
                operation=op,
                dataset=spec.dataset,
                columns=spec.columns,
                params=params,
            )

        timeout = svc.call_timeout_s
        prep = ctx("anonymize.histogram")
        payload = {"spec": spec.to_dict(), "nodes": names}
        answers, failed = svc.fan_out(nodes, lambda n: n.anon_histogram(prep, payload, timeout))
        _all_answered(failed, "prepare")
        digest = spec.digest()
        for name, summary in answers.items():
            if summary.get("digest") != digest:
                raise ProtocolError(f"node {name} prepared a different anonymization spec")

        seed = secrets.randbits(62)
        sizes: list[int] = []

        def fetch(req: VectorRequest) -> np.ndarray[Any, Any]:
            size, index = req.length(spec.domain), len(sizes)
            vector = types.AnonVector(req, digest)
            total, contributors = svc.secure_sum(prep, vector, size, index, nodes)
            missing = sorted(set(names) - set(contributors))
            if missing:
                raise NodeError(
                    f"node(s) {', '.join(missing)} dropped out during anonymization round "
                    f"{index}; the global counts would be wrong. Re-run it (check those "
                    "nodes' health)"
                )
            sizes.append(size)
            out: np.ndarray[Any, Any] = total
            return out

        oracle = AggregatedOracle(spec, fetch, seed=seed)
        result = search(
            oracle,
            spec.domain,
            spec.models(),
            suppression_limit=spec.suppression_limit,
            metric=spec.metric,
        )
        allowed = all(n in plan.release for n in names)
        will_release = bool(release or (release is None and allowed))
        apply_ctx = ctx("anonymize.apply")
        transformation = {"result": result.to_json(), "digest": digest, "release": will_release}
        applied, failed = svc.fan_out(
            nodes, lambda n: n.anon_apply(apply_ctx, transformation, timeout)
        )
        _all_answered(failed, "apply")
        rows: dict[str, str] | None = None
        if will_release:
            rel_ctx = ctx("anonymize.release")
            got, failed = svc.fan_out(nodes, lambda n: n.anon_release(rel_ctx, timeout))
            _all_answered(failed, "release")
            rows = {name: got[name].decode("utf-8") for name in names}
    outputs = [
        {
            "node": name,
            "path": applied[name]["output_path"],
            "rows_written": applied[name]["rows_written"],
            "rows_suppressed": applied[name]["rows_suppressed"],
            "released": rows is not None,
        }
        for name in names
    ]
    seconds = time.perf_counter() - t0
    log.info(
        "%s: %s anonymized %s over %d nodes: %d rounds (%d entries), levels %s, %.2f s",
        svc.name,
        caller.name,
        spec.dataset,
        len(nodes),
        oracle.rounds,
        sum(sizes),
        result.levels,
        seconds,
    )
    return {
        "result": result.to_json(),
        "outputs": outputs,
        "rows": rows,
        "release_allowed": allowed,
        "rounds": oracle.rounds,
        "vector_entries": sum(sizes),
        "learned": [list(lv) for lv in oracle.learned],
        "disclosure": spec.disclosure,
        "nodes": names,
        "excluded": list(plan.excluded),
        "seconds": seconds,
    }


def _all_answered(failed: Mapping[str, Exception], step: str) -> None:
    if failed:
        detail = "; ".join(f"{n}: {e}" for n, e in failed.items())
        raise NodeError(f"anonymization aborted at step {step}: {detail}")
