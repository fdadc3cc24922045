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
from trustspace.stats import MAX_PAILLIER_HEADROOM, MAX_PAILLIER_KEY_BITS, Round
from trustspace.transport.types import (
    PARTS,
    AnonVector,
    DatasetDescription,
    NodeDescription,
    NodeStatus,
    PaillierRequest,
    RequestContext,
    RoundRequest,
    RoundResult,
    SecAggSetup,
    SecAggStep,
)

MAX_JSON_CHARS = 8 * 1024 * 1024


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


def context_to_proto(ctx: RequestContext) -> common_pb2.RequestContext:
    return common_pb2.RequestContext(
        analyst=ctx.analyst,
        request_id=ctx.request_id,
        operation=ctx.operation,
        dataset=ctx.dataset,
        columns=list(ctx.columns),
        params_json=dumps(dict(ctx.params)),
    )


def context_from_proto(msg: common_pb2.RequestContext) -> RequestContext:
    return RequestContext(
        analyst=msg.analyst,
        request_id=msg.request_id,
        operation=msg.operation,
        dataset=msg.dataset,
        columns=tuple(msg.columns),
        params=loads_dict(msg.params_json, "context.params_json"),
    )


def dataset_to_proto(d: DatasetDescription) -> common_pb2.DatasetInfo:
    cols = d.schema.get("columns", {})
    return common_pb2.DatasetInfo(
        name=d.name,
        columns=[common_pb2.ColumnInfo(name=k, type=str(v)) for k, v in cols.items()],
        schema_json=dumps(dict(d.schema)),
    )


def dataset_from_proto(msg: common_pb2.DatasetInfo) -> DatasetDescription:
    schema = loads_dict(msg.schema_json, f"dataset {msg.name!r} schema_json")
    if not schema:
        schema = {"columns": {c.name: c.type for c in msg.columns}, "domains": {}}
    return DatasetDescription(msg.name, schema)


def description_to_proto(d: NodeDescription) -> node_pb2.DescribeDatasetsResponse:
    return node_pb2.DescribeDatasetsResponse(
        node=d.node,
        datasets=[dataset_to_proto(x) for x in d.datasets],
        min_group_size=d.min_group_size,
        release_rows=d.release_rows,
    )


def description_from_proto(msg: node_pb2.DescribeDatasetsResponse) -> NodeDescription:
    return NodeDescription(
        node=msg.node,
        datasets=tuple(dataset_from_proto(x) for x in msg.datasets),
        min_group_size=int(msg.min_group_size),
        release_rows=bool(msg.release_rows),
    )


def step_to_proto(step: SecAggStep) -> node_pb2.SecAggStepRequest:
    s = step.setup
    vector: dict[str, Any] = {}
    if isinstance(step.vector, AnonVector):
        vector = {"vector": step.vector.request.to_dict(), "digest": step.vector.digest}
    elif step.vector is not None:
        vector = step.vector.to_dict()
    return node_pb2.SecAggStepRequest(
        context=context_to_proto(step.context),
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
        round_json=dumps(vector) if vector else "",
        client_id=str(step.client_id),
        part=step.part,
    )


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:  # not "²" or "٣"
        raise ProtocolError(f"{what}: {text!r} is not a client id")
    return int(text)


def step_from_proto(msg: node_pb2.SecAggStepRequest) -> SecAggStep:
    try:
        stage = Stage.parse(msg.stage)
    except ConfigError as exc:
        raise ProtocolError(f"SecAggStep: {exc}") from None
    part = msg.part or PARTS[0]
    if part not in PARTS:
        raise ProtocolError(f"SecAggStep: unknown part {part!r}; expected {PARTS}")
    s = msg.setup
    setup = SecAggSetup(
        session_id=bytes(s.session_id),
        client_ids=tuple(_int(c, "setup.client_ids") for c in s.client_ids),
        vector_length=int(s.vector_length),
        threshold=int(s.threshold) or None,
        neighbors=int(s.neighbors) or None,
        modulus_bits=int(s.modulus_bits) or 64,
    )
    data = loads_dict(msg.round_json, "round_json")
    vector: Round | AnonVector | None = None
    if data and part == PARTS[1]:
        digest = data.get("digest")
        if not isinstance(digest, str):
            raise ProtocolError("SecAggStep: the anonymization round names no spec digest")
        vector = AnonVector(VectorRequest.from_dict(data.get("vector")), digest)
    elif data:
        vector = round_from_dict(data)
    elif stage is Stage.ADVERTISE:
        raise ProtocolError("SecAggStep: the advertise stage carries no round")
    return SecAggStep(
        context=context_from_proto(msg.context),
        setup=setup,
        stage=stage,
        payloads=tuple(bytes(p) for p in msg.payloads),
        vector=vector,
        client_id=_int(msg.client_id, "client_id"),
    )


def round_from_dict(data: Any) -> Round:
    """A stats ``Round`` off the wire; ``ProtocolError`` naming the bad key."""
    try:
        return Round.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed round: {exc}") from None


def paillier_request_to_proto(req: PaillierRequest) -> node_pb2.PaillierStatsRequest:
    return node_pb2.PaillierStatsRequest(
        context=context_to_proto(req.context),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(req.n)),
        round_json=dumps(req.round.to_dict()),
        headroom=req.headroom,
        suppressed=list(req.suppressed),
    )


def paillier_request_from_proto(msg: node_pb2.PaillierStatsRequest) -> PaillierRequest:
    if not 1 <= msg.headroom <= MAX_PAILLIER_HEADROOM:
        raise ProtocolError(
            f"PaillierStats: headroom {msg.headroom} must be 1 to {MAX_PAILLIER_HEADROOM}"
        )
    return PaillierRequest(
        context=context_from_proto(msg.context),
        n=paillier_modulus(msg.public_key.n, "PaillierStats"),
        round=round_from_dict(loads_dict(msg.round_json, "round_json")),
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
    return aggregator_pb2.RunRoundRequest(
        query_json=dumps(dict(r.query)),
        round_json=dumps(r.round.to_dict()),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(r.n)),
        request_id=r.request_id,
    )


def round_request_from_proto(msg: aggregator_pb2.RunRoundRequest) -> RoundRequest:
    return RoundRequest(
        query=loads_dict(msg.query_json, "query_json"),
        round=round_from_dict(loads_dict(msg.round_json, "round_json")),
        n=paillier_modulus(msg.public_key.n, "RunRound"),
        request_id=msg.request_id,
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
    }


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
