"""Conversion between protobuf messages and trustspace's domain objects, in one place.

The domain side is ``trustspace.transport.types`` (plain frozen dataclasses), ``trustspace.stats``
and ``trustspace.anon``: node, aggregator and analyst code never touch protobuf classes. Every
``*_from_proto`` parses strictly; a malformed message raises ``ProtocolError`` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from trustspace.anon.federated import VectorRequest
from trustspace.errors import ConfigError, ProtocolError
from trustspace.proto.v1 import aggregator_pb2, common_pb2, node_pb2
from trustspace.secagg import Stage
from trustspace.stats import MAX_PAILLIER_HEADROOM, MAX_PAILLIER_KEY_BITS, Round, Term
from trustspace.transport import types
from trustspace.transport.signing import MAX_BODY_BYTES, SignedQuery
from trustspace.transport.types import (
    DP_BUDGET_FIELDS,
    PARTS,
    AnonVector,
    DatasetDescription,
    NodeDescription,
    NodeStatus,
    PaillierRequest,
    RoundRef,
    RoundRequest,
    RoundResult,
    RoundTotal,
    SecAggSetup,
    SecAggStep,
)

MAX_JSON_CHARS = 8 * 1024 * 1024
#: Largest round total a request may carry (the stats rounds are far smaller; see
#: ``trustspace.node`` for the caps on what a node computes).
MAX_ROUND_ENTRIES = 1_000_000


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, compact) for every JSON field on the wire."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str, what: str) -> Any:
    """Parse a JSON field; ``ProtocolError`` naming ``what`` if it is malformed."""
    if len(text) > MAX_JSON_CHARS:
        raise ProtocolError(f"{what}: {len(text)} characters exceed the limit")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not valid JSON ({exc})") from None


def loads_dict(text: str, what: str) -> dict[str, Any]:
    value = loads(text, what) if text else {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    return value


def int_to_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def bytes_to_int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def paillier_modulus(data: bytes, what: str) -> int:
    """A Paillier modulus off the wire, refused above ``MAX_PAILLIER_KEY_BITS``."""
    n = bytes_to_int(data)
    if n.bit_length() > MAX_PAILLIER_KEY_BITS:
        raise ProtocolError(
            f"{what}: a {n.bit_length()}-bit Paillier modulus exceeds the "
            f"{MAX_PAILLIER_KEY_BITS}-bit limit; use a 2048- or 3072-bit key"
        )
    return n


def signed_to_proto(q: SignedQuery) -> common_pb2.SignedQuery:
    return common_pb2.SignedQuery(body=q.body, signature=q.signature, certificate=q.certificate)


def signed_from_proto(msg: common_pb2.SignedQuery, what: str) -> SignedQuery:
    """The analyst's signed query off the wire (verified by the node, not here)."""
    if not msg.body or not msg.signature or not msg.certificate:
        raise ProtocolError(f"{what}: the request carries no signed query")
    if len(msg.body) > MAX_BODY_BYTES:
        raise ProtocolError(f"{what}: a {len(msg.body)}-byte signed query exceeds the limit")
    return SignedQuery(bytes(msg.body), bytes(msg.signature), bytes(msg.certificate))


def value_to_proto(v: Any) -> common_pb2.Value:
    if isinstance(v, bool):
        return common_pb2.Value(boolean=v)
    if isinstance(v, int):
        return common_pb2.Value(integer=v)
    if isinstance(v, float):
        return common_pb2.Value(real=v)
    if isinstance(v, str):
        return common_pb2.Value(text=v)
    raise ProtocolError(f"value of type {type(v).__name__} cannot travel (str, int, float, bool)")


def value_from_proto(msg: common_pb2.Value, what: str) -> Any:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ProtocolError(f"{what}: empty value")
    return getattr(msg, kind)


def schema_to_proto(schema: Mapping[str, Any]) -> common_pb2.TableSchema:
    """A ``TableSchema.to_dict()`` as its typed message."""
    return common_pb2.TableSchema(
        columns=[common_pb2.ColumnInfo(name=k, type=str(v)) for k, v in schema["columns"].items()],
        domains=[
            common_pb2.ColumnDomain(column=k, values=[value_to_proto(x) for x in vs])
            for k, vs in schema.get("domains", {}).items()
        ],
        bounds=[
            common_pb2.ColumnBounds(column=k, low=float(lo), high=float(hi))
            for k, (lo, hi) in schema.get("bounds", {}).items()
        ],
    )


def schema_from_proto(msg: common_pb2.TableSchema, what: str) -> dict[str, Any]:
    """The ``TableSchema.to_dict()`` form of a typed schema (checked by ``TableSchema``)."""
    return {
        "columns": {c.name: c.type for c in msg.columns},
        "domains": {
            d.column: [value_from_proto(v, f"{what} domain {d.column!r}") for v in d.values]
            for d in msg.domains
        },
        "bounds": {b.column: [b.low, b.high] for b in msg.bounds},
    }


def dataset_to_proto(d: DatasetDescription) -> common_pb2.DatasetInfo:
    msg = common_pb2.DatasetInfo(name=d.name, schema=schema_to_proto(d.schema))
    if d.dp_budget is not None:
        msg.dp_budget.CopyFrom(common_pb2.DPBudget(**{k: d.dp_budget[k] for k in DP_BUDGET_FIELDS}))
    if d.id is not None:
        msg.id_json = dumps(dict(d.id))
    return msg


def dataset_from_proto(msg: common_pb2.DatasetInfo) -> DatasetDescription:
    budget = (
        {k: getattr(msg.dp_budget, k) for k in DP_BUDGET_FIELDS}
        if msg.HasField("dp_budget")
        else None
    )
    ident = None
    if msg.id_json:
        try:
            ident = json.loads(msg.id_json)
        except ValueError:
            raise ProtocolError(f"dataset {msg.name!r}: malformed id column description") from None
        if not isinstance(ident, dict):
            raise ProtocolError(f"dataset {msg.name!r}: malformed id column description")
    return DatasetDescription(
        msg.name, schema_from_proto(msg.schema, f"dataset {msg.name!r}"), budget, ident
    )


def description_to_proto(d: NodeDescription) -> node_pb2.DescribeDatasetsResponse:
    return node_pb2.DescribeDatasetsResponse(
        node=d.node,
        datasets=[dataset_to_proto(x) for x in d.datasets],
        min_group_size=d.min_group_size,
        release_rows=d.release_rows,
        min_nodes=d.min_nodes,
    )


def description_from_proto(msg: node_pb2.DescribeDatasetsResponse) -> NodeDescription:
    return NodeDescription(
        node=msg.node,
        datasets=tuple(dataset_from_proto(x) for x in msg.datasets),
        min_group_size=int(msg.min_group_size),
        release_rows=bool(msg.release_rows),
        min_nodes=int(msg.min_nodes),
    )


# ---------------------------------------------------------------------- rounds
_GLM_KEYS = ("family", "design", "beta", "weights", "offset", "mode", "bits")


def term_to_proto(t: Term) -> common_pb2.Term:
    d = t.to_dict()
    if t.kind == "glm":
        glm = {k: d.pop(k) for k in _GLM_KEYS}
        d["glm"] = json.dumps(glm, sort_keys=True, allow_nan=False)
    levels = d.pop("levels", None)
    cuts = d.pop("cuts", None)
    msg = common_pb2.Term(**d)
    if cuts is not None:  # a marginal: one axis per column
        assert levels is not None
        for lv, cu in zip(levels, cuts, strict=True):
            axis = msg.axes.add()
            axis.levels.extend(value_to_proto(v) for v in lv)
            axis.cuts.extend(cu)
    elif levels is not None:
        msg.row_levels.extend(value_to_proto(v) for v in levels[0])
        msg.col_levels.extend(value_to_proto(v) for v in levels[1])
    return msg


def term_from_proto(msg: common_pb2.Term) -> Term:
    d: dict[str, Any] = {"kind": msg.kind, "columns": list(msg.columns)}
    if msg.kind == "moment":
        d.update(powers=list(msg.powers), centers=list(msg.centers), frac_bits=msg.frac_bits)
    elif msg.kind == "grid":
        d.update(start=msg.start, width=msg.width, nbins=msg.nbins)
    elif msg.kind == "bins":
        d.update(edges=list(msg.edges))
    elif msg.kind == "cells":
        d["levels"] = [
            [value_from_proto(v, "term level") for v in msg.row_levels],
            [value_from_proto(v, "term level") for v in msg.col_levels],
        ]
    elif msg.kind == "marginal":
        d["levels"] = [[value_from_proto(v, "term level") for v in a.levels] for a in msg.axes]
        d["cuts"] = [list(a.cuts) for a in msg.axes]
    elif msg.kind == "glm":
        try:
            glm = json.loads(msg.glm)
        except ValueError:
            raise ProtocolError("malformed round: a glm term's model is not JSON") from None
        if not isinstance(glm, dict) or set(glm) != set(_GLM_KEYS):
            raise ProtocolError(f"malformed round: a glm term's model needs {list(_GLM_KEYS)}")
        d.update(glm, start=msg.start)
    if msg.kind not in ("moment", "glm") and msg.frac_bits:
        d["frac_bits"] = msg.frac_bits
    if msg.clamp:
        d["clamp"] = list(msg.clamp)
    if msg.kind == "moment" and msg.scale:
        d["scale"] = msg.scale
    return Term.from_dict(d)


def round_to_proto(r: Round) -> common_pb2.Round:
    msg = common_pb2.Round(
        dataset=r.dataset,
        terms=[term_to_proto(t) for t in r.terms],
        group_values=[value_to_proto(v) for v in r.group_values],
        index=r.index,
    )
    if r.where is not None:
        msg.where = r.where
    if r.group_column is not None:
        msg.group_column = r.group_column
    return msg


def round_from_proto(msg: common_pb2.Round) -> Round:
    """A stats ``Round`` off the wire; ``ProtocolError`` naming the bad field."""
    try:
        return Round(
            msg.dataset,
            msg.where if msg.HasField("where") else None,
            tuple(term_from_proto(t) for t in msg.terms),
            msg.group_column if msg.HasField("group_column") else None,
            tuple(value_from_proto(v, "round group value") for v in msg.group_values),
            int(msg.index),
        )
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed round: {exc}") from None


def round_from_dict(data: Any) -> Round:
    """A stats ``Round`` from its dict form; ``ProtocolError`` naming the bad key."""
    try:
        return Round.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed round: {exc}") from None


def total_to_proto(t: RoundTotal) -> common_pb2.RoundTotal:
    return common_pb2.RoundTotal(index=t.index, total=list(t.total), suppressed=list(t.suppressed))


def total_from_proto(msg: common_pb2.RoundTotal) -> RoundTotal:
    if len(msg.total) > MAX_ROUND_ENTRIES:
        raise ProtocolError(f"round total: {len(msg.total)} entries exceed {MAX_ROUND_ENTRIES}")
    return RoundTotal(
        int(msg.index), tuple(int(x) for x in msg.total), tuple(int(i) for i in msg.suppressed)
    )


def ref_to_proto(ref: RoundRef) -> node_pb2.RoundRef:
    msg = node_pb2.RoundRef(index=ref.index, min_group_size=ref.min_group_size, part=ref.part)
    if ref.previous is not None:
        msg.previous.CopyFrom(total_to_proto(ref.previous))
    if isinstance(ref.vector, AnonVector):
        r = ref.vector.request
        msg.anon.CopyFrom(
            common_pb2.AnonVector(kind=r.kind, levels=list(r.levels), cells=r.cells, seed=r.seed)
        )
        msg.anon_digest = ref.vector.digest
    else:
        msg.round.CopyFrom(round_to_proto(ref.vector))
    return msg


def ref_from_proto(msg: node_pb2.RoundRef) -> RoundRef:
    part = msg.part or PARTS[0]
    if part not in PARTS:
        raise ProtocolError(f"round: unknown part {part!r}; expected one of {PARTS}")
    which = msg.WhichOneof("vector")
    vector: Round | AnonVector
    if which == "anon" and part == "anon.histogram":
        a = msg.anon
        try:
            req = VectorRequest(a.kind, tuple(int(x) for x in a.levels), int(a.cells), int(a.seed))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed anonymization vector: {exc}") from None
        vector = AnonVector(req, msg.anon_digest)
    elif which == "round" and part != "anon.histogram":
        vector = round_from_proto(msg.round)
    else:
        raise ProtocolError(f"round: part {part!r} does not fit a {which or 'missing'} vector")
    return RoundRef(
        index=int(msg.index),
        min_group_size=int(msg.min_group_size),
        previous=total_from_proto(msg.previous) if msg.HasField("previous") else None,
        vector=vector,
        part=part,
    )


# ---------------------------------------------------------------------- secure aggregation
def step_to_proto(step: SecAggStep) -> node_pb2.SecAggStepRequest:
    s = step.setup
    msg = node_pb2.SecAggStepRequest(
        query=signed_to_proto(step.query),
        setup=node_pb2.SecAggSetup(
            session_id=s.session_id,
            client_ids=[str(c) for c in s.client_ids],
            vector_length=s.vector_length,
            threshold=s.threshold or 0,
            neighbors=s.neighbors or 0,
            modulus_bits=s.modulus_bits,
        ),
        stage=step.stage,
        payloads=list(step.payloads),
        client_id=str(step.client_id),
    )
    if step.round is not None:
        msg.round.CopyFrom(ref_to_proto(step.round))
    return msg


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:  # not "²" or "٣"
        raise ProtocolError(f"{what}: {text!r} is not a client id")
    return int(text)


def step_from_proto(msg: node_pb2.SecAggStepRequest) -> SecAggStep:
    try:
        stage = Stage.parse(msg.stage)
    except ConfigError as exc:
        raise ProtocolError(f"SecAggStep: {exc}") from None
    s = msg.setup
    setup = SecAggSetup(
        session_id=bytes(s.session_id),
        client_ids=tuple(_int(c, "setup.client_ids") for c in s.client_ids),
        vector_length=int(s.vector_length),
        threshold=int(s.threshold) or None,
        neighbors=int(s.neighbors) or None,
        modulus_bits=int(s.modulus_bits) or 64,
    )
    ref = ref_from_proto(msg.round) if msg.HasField("round") else None
    if stage is Stage.ADVERTISE and ref is None:
        raise ProtocolError("SecAggStep: the advertise stage names no round")
    return SecAggStep(
        query=signed_from_proto(msg.query, "SecAggStep"),
        setup=setup,
        stage=stage,
        payloads=tuple(bytes(p) for p in msg.payloads),
        round=ref,
        client_id=_int(msg.client_id, "client_id"),
    )


# ---------------------------------------------------------------------- vertical jobs
#: Most envelopes one VerticalStep call may carry (each at most a few MiB; see the channel).
MAX_ENVELOPES = 4096
VERTICAL_PARTS = ("intersect", "vertical.product")
VERTICAL_ACTIONS = ("deliver", "run", "pull")


def _envelopes(items: Any, what: str) -> tuple[types.Envelope, ...]:
    if len(items) > MAX_ENVELOPES:
        raise ProtocolError(f"{what}: more than {MAX_ENVELOPES} envelopes in one call")
    return tuple(types.Envelope(str(e.sender), str(e.recipient), bytes(e.body)) for e in items)


def vertical_to_proto(step: types.VerticalStep) -> node_pb2.VerticalStepRequest:
    msg = node_pb2.VerticalStepRequest(
        query=signed_to_proto(step.query),
        session=step.session,
        part=step.part,
        step=step.step,
        action=step.action,
        inbox=[
            node_pb2.Envelope(sender=e.sender, recipient=e.recipient, body=e.body)
            for e in step.inbox
        ],
        nodes=list(step.nodes),
        hellos=list(step.hellos),
    )
    if step.round is not None:
        msg.round.CopyFrom(ref_to_proto(step.round))
    return msg


def vertical_from_proto(msg: node_pb2.VerticalStepRequest) -> types.VerticalStep:
    if msg.part not in VERTICAL_PARTS:
        raise ProtocolError(f"VerticalStep: part {msg.part!r} is not one of {VERTICAL_PARTS}")
    if msg.action not in VERTICAL_ACTIONS:
        raise ProtocolError(f"VerticalStep: action {msg.action!r} is not one of {VERTICAL_ACTIONS}")
    if len(msg.session) != 32:
        raise ProtocolError("VerticalStep: the session id must be 32 bytes")
    if len(msg.nodes) > 64 or len(msg.hellos) > 64:
        raise ProtocolError("VerticalStep: too many nodes")
    return types.VerticalStep(
        query=signed_from_proto(msg.query, "VerticalStep"),
        session=bytes(msg.session),
        part=msg.part,
        step=int(msg.step),
        action=msg.action,
        inbox=_envelopes(msg.inbox, "VerticalStep"),
        nodes=tuple(str(n) for n in msg.nodes),
        hellos=tuple(bytes(h) for h in msg.hellos),
        round=ref_from_proto(msg.round) if msg.HasField("round") else None,
    )


def vertical_reply_to_proto(reply: types.VerticalReply) -> node_pb2.VerticalStepResponse:
    return node_pb2.VerticalStepResponse(
        outbox=[
            node_pb2.Envelope(sender=e.sender, recipient=e.recipient, body=e.body)
            for e in reply.outbox
        ],
        more=reply.more,
        done=reply.done,
        result_json="" if reply.result is None else dumps(dict(reply.result)),
        hello=reply.hello,
    )


def vertical_reply_from_proto(msg: node_pb2.VerticalStepResponse) -> types.VerticalReply:
    result = None
    if msg.result_json:
        try:
            result = json.loads(msg.result_json)
        except ValueError:
            raise ProtocolError("VerticalStep: the node's result is not JSON") from None
        if not isinstance(result, dict):
            raise ProtocolError("VerticalStep: the node's result is not an object")
    return types.VerticalReply(
        outbox=_envelopes(msg.outbox, "VerticalStep reply"),
        more=bool(msg.more),
        done=bool(msg.done),
        result=result,
        hello=bytes(msg.hello),
    )


# ---------------------------------------------------------------------- Paillier
def paillier_request_to_proto(req: PaillierRequest) -> node_pb2.PaillierStatsRequest:
    return node_pb2.PaillierStatsRequest(
        query=signed_to_proto(req.query),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(req.n)),
        round=ref_to_proto(req.round),
        headroom=req.headroom,
        suppressed=list(req.suppressed),
    )


def paillier_request_from_proto(msg: node_pb2.PaillierStatsRequest) -> PaillierRequest:
    if not 1 <= msg.headroom <= MAX_PAILLIER_HEADROOM:
        raise ProtocolError(
            f"PaillierStats: headroom {msg.headroom} must be 1 to {MAX_PAILLIER_HEADROOM}"
        )
    if not msg.HasField("round"):
        raise ProtocolError("PaillierStats: the request names no round")
    return PaillierRequest(
        query=signed_from_proto(msg.query, "PaillierStats"),
        n=paillier_modulus(msg.public_key.n, "PaillierStats"),
        round=ref_from_proto(msg.round),
        headroom=int(msg.headroom),
        suppressed=tuple(int(i) for i in msg.suppressed),
    )


def round_result_to_proto(r: RoundResult) -> aggregator_pb2.RunRoundResponse:
    return aggregator_pb2.RunRoundResponse(
        encrypted_vector=r.encrypted_vector,
        suppressed=list(r.suppressed),
        nodes=r.nodes,
        count_totals=list(r.count_totals),
    )


def round_result_from_proto(msg: aggregator_pb2.RunRoundResponse) -> RoundResult:
    return RoundResult(
        bytes(msg.encrypted_vector),
        tuple(int(i) for i in msg.suppressed),
        int(msg.nodes),
        tuple(int(c) for c in msg.count_totals),
    )


def round_request_to_proto(r: RoundRequest) -> aggregator_pb2.RunRoundRequest:
    msg = aggregator_pb2.RunRoundRequest(
        query=signed_to_proto(r.query),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(r.n)),
        round_index=r.round.index,
        min_group_size=r.min_group_size,
        round=round_to_proto(r.round),
    )
    if r.previous is not None:
        msg.previous.CopyFrom(total_to_proto(r.previous))
    return msg


def round_request_from_proto(msg: aggregator_pb2.RunRoundRequest) -> RoundRequest:
    rnd = round_from_proto(msg.round)
    if rnd.index != msg.round_index:
        raise ProtocolError(f"RunRound: round_index {msg.round_index} but round {rnd.index}")
    return RoundRequest(
        query=signed_from_proto(msg.query, "RunRound"),
        n=paillier_modulus(msg.public_key.n, "RunRound"),
        round=rnd,
        min_group_size=int(msg.min_group_size),
        previous=total_from_proto(msg.previous) if msg.HasField("previous") else None,
    )


def status_to_proto(aggregator: str, nodes: Sequence[NodeStatus]) -> aggregator_pb2.StatusResponse:
    return aggregator_pb2.StatusResponse(
        aggregator=aggregator,
        nodes=[
            aggregator_pb2.NodeStatus(
                name=n.name,
                address=n.address,
                reachable=n.reachable,
                detail=n.detail,
                datasets=[dataset_to_proto(d) for d in n.datasets],
                min_group_size=n.min_group_size,
                min_nodes=n.min_nodes,
            )
            for n in nodes
        ],
    )


def status_from_proto(msg: aggregator_pb2.StatusResponse) -> tuple[str, list[NodeStatus]]:
    return msg.aggregator, [
        NodeStatus(
            name=n.name,
            address=n.address,
            reachable=n.reachable,
            detail=n.detail,
            datasets=tuple(dataset_from_proto(d) for d in n.datasets),
            min_group_size=int(n.min_group_size),
            min_nodes=int(n.min_nodes),
        )
        for n in msg.nodes
    ]


# ---------------------------------------------------------------------- statistics results
def _plain(value: Any) -> Any:
    """A JSON-able version of a scalar (NaN -> None, numpy -> Python)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _index_to(index: Any) -> dict[str, Any]:
    import pandas as pd

    if isinstance(index, pd.IntervalIndex):
        return {
            "interval": True,
            "left": [_plain(v) for v in index.left.tolist()],
            "right": [_plain(v) for v in index.right.tolist()],
            "closed": index.closed,
            "names": index.name,
        }
    multi = isinstance(index, pd.MultiIndex)
    return {
        "values": [_plain(v) for v in index.tolist()],
        "names": [n for n in index.names] if multi else index.name,
        "multi": multi,
    }


def _index_from(data: Mapping[str, Any]) -> Any:
    import pandas as pd

    if data.get("interval"):
        return pd.IntervalIndex.from_arrays(
            data["left"], data["right"], closed=data["closed"], name=data.get("names")
        )
    if data.get("multi"):
        return pd.MultiIndex.from_tuples([tuple(v) for v in data["values"]], names=data["names"])
    return pd.Index(data["values"], name=data.get("names"))


def _table_to(value: Any) -> dict[str, Any]:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return {
            "kind": "frame",
            "index": _index_to(value.index),
            "columns": _index_to(value.columns),
            "data": [[_plain(v) for v in row] for row in value.itertuples(index=False)],
        }
    if isinstance(value, pd.Series):
        return {
            "kind": "series",
            "index": _index_to(value.index),
            "name": _plain(value.name),
            "data": [_plain(v) for v in value.tolist()],
        }
    return {"kind": "scalar", "data": _plain(value)}


def _table_from(data: Mapping[str, Any], dtype: Any = float) -> Any:
    import pandas as pd

    kind = data.get("kind")
    if kind == "frame":
        rows = [[dtype(x) if x is not None else _missing(dtype) for x in r] for r in data["data"]]
        return pd.DataFrame(
            rows, index=_index_from(data["index"]), columns=_index_from(data["columns"])
        )
    if kind == "series":
        vals = [dtype(x) if x is not None else _missing(dtype) for x in data["data"]]
        return pd.Series(vals, index=_index_from(data["index"]), name=data.get("name"))
    if kind == "scalar":
        x = data.get("data")
        return dtype(x) if x is not None else _missing(dtype)
    raise ProtocolError(f"result: unknown kind {kind!r}")


def _missing(dtype: Any) -> Any:
    return float("nan") if dtype is float else False


def result_to_dict(result: Any) -> dict[str, Any]:
    """A ``trustspace.stats.Result`` as a JSON-able dict (pandas layouts preserved)."""
    return {
        "op": result.op,
        "value": _table_to(result.value),
        "suppressed": _table_to(result.suppressed),
        "precision": {k: _plain(v) for k, v in dict(result.precision).items()},
        "rounds": result.rounds,
        "dp": _dp_to(result.dp),
    }


_DP_TABLES = ("std", "ci95", "statistics_std")  # statistics_std: DP OLS


def _dp_to(dp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if dp is None:
        return None
    return {k: _table_to(v) if k in _DP_TABLES else _plain(v) for k, v in dp.items()}


def _dp_from(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError("result 'dp': expected a mapping")
    return {k: _table_from(v, float) if k in _DP_TABLES else v for k, v in data.items()}


def result_from_dict(data: Mapping[str, Any]) -> Any:
    """Rebuild a ``trustspace.stats.Result`` from ``result_to_dict`` output."""
    from trustspace.stats import Result

    try:
        return Result(
            op=str(data["op"]),
            value=_table_from(data["value"], float),
            suppressed=_table_from(data["suppressed"], bool),
            precision={
                k: float(v) if v is not None else float("nan")
                for k, v in dict(data.get("precision", {})).items()
            },
            rounds=int(data.get("rounds", 0)),
            dp=_dp_from(data.get("dp")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed result: {exc}") from None


def anon_applied_to_proto(out: Mapping[str, Any]) -> node_pb2.AnonApplyResponse:
    """A node's ``anon_apply`` answer (rows written, rows suppressed, where) as proto."""
    return node_pb2.AnonApplyResponse(
        rows_written=int(out["rows_written"]),
        rows_suppressed=int(out["rows_suppressed"]),
        output_path=str(out["output_path"]),
    )


def anon_applied_from_proto(msg: node_pb2.AnonApplyResponse) -> dict[str, Any]:
    return {
        "rows_written": int(msg.rows_written),
        "rows_suppressed": int(msg.rows_suppressed),
        "output_path": msg.output_path,
    }
