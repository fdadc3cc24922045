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

from trustspace.anon.federated import AggregatedOracle, VectorRequest, complete_spec
from trustspace.anon.search import search
from trustspace.errors import ConfigError, NodeError, ProtocolError
from trustspace.transport import types

if TYPE_CHECKING:
    from trustspace.aggregator._host import Host
    from trustspace.transport.signing import QueryBody, SignedQuery

log = logging.getLogger("trustspace.aggregator")


def run_anonymization(svc: Host, signed: SignedQuery, body: QueryBody) -> dict[str, Any]:
    """The whole federated anonymization of the signed query ``body`` (see the module
    docstring).

    ``body.params``: ``{"spec": AnonSpec.to_dict() (sensitive_values/ordered may be null),
    "release": true | false | null}`` (null: release iff every node allows it).
    """
    t0 = time.perf_counter()
    raw = body.params.get("spec")
    if not isinstance(raw, Mapping):
        raise ConfigError("RunAnonymization: 'spec' must be a JSON object")
    release = body.params.get("release")
    if release is not None and not isinstance(release, bool):
        raise ConfigError("RunAnonymization: 'release' must be true, false or null")
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not dataset or dataset != body.dataset:
        raise ConfigError("RunAnonymization: name the dataset (in the spec and the query)")
    with svc.planned(signed, body) as plan:
        try:
            spec = complete_spec(raw, plan.schema.columns, plan.schema.domains)
        except ConfigError as exc:
            raise ConfigError(f"RunAnonymization: {exc}") from None
        nodes = plan.nodes
        names = [n.name for n in nodes]
        timeout = svc.call_timeout_s
        answers, failed = svc.fan_out(nodes, lambda n: n.anon_histogram(signed, names, timeout))
        _all_answered(failed, "prepare")
        digest = spec.digest()
        for name, (_, node_digest) in answers.items():
            if node_digest != digest:
                raise ProtocolError(f"node {name} prepared a different anonymization spec")

        seed = secrets.randbits(62)
        sizes: list[int] = []

        def fetch(req: VectorRequest) -> np.ndarray[Any, Any]:
            size, index = req.length(spec.domain), len(sizes)
            ref = types.RoundRef(index, 0, None, types.AnonVector(req, digest), "anon.histogram")
            total, contributors = svc.secure_sum(signed, ref, size, nodes)
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
        text = result.to_json()
        applied, failed = svc.fan_out(
            nodes, lambda n: n.anon_apply(signed, text, digest, will_release, timeout)
        )
        _all_answered(failed, "apply")
        rows: dict[str, str] | None = None
        if will_release:
            got, failed = svc.fan_out(nodes, lambda n: n.anon_release(signed, timeout))
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
        body.analyst,
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
