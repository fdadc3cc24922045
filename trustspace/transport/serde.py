"""Conversion between protobuf messages and trustspace's domain objects, in one place.

The transport-level value types (``RequestContext``, ``SecAggSetup``, ``SecAggStep``,
``NodeDescription``, ...) are plain frozen dataclasses so that node, aggregator and analyst code
never touch protobuf classes. JSON fields are parsed strictly; a malformed request raises
``ProtocolError`` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustspace.errors import ProtocolError
from trustspace.proto.v1 import aggregator_pb2, common_pb2, node_pb2

SECAGG_STAGES = ("advertise", "share_keys", "masked_input", "unmask")
PARTS = ("all", "counts", "anon.histogram")  # "anon.histogram": round is an anon vector request
MAX_JSON_CHARS = 8 * 1024 * 1024
#: Largest Paillier modulus a node encrypts under. 7680 bits is NIST SP 800-57's 192-bit level;
#: the cap bounds an analyst's key (forwarded by the aggregator) to ~20x the work of the 3072-bit
#: default. Without it a 40,000-bit modulus cost a node 65 s of CPU per request (a cheap DoS).
MAX_PAILLIER_KEY_BITS = 8192
#: Most vectors a Paillier total may add up (one per node): far more nodes than a data space
#: has, and 31-bit words plus 16 bits of headroom still fit the 63-bit packing slots.
MAX_PAILLIER_HEADROOM = 1 << 16


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


@dataclass(frozen=True)
class RequestContext:
    """Who asks for what (forwarded by the aggregator to every node)."""

    analyst: str
    request_id: str
    operation: str
    dataset: str = ""
    columns: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


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


@dataclass(frozen=True)
class DatasetDescription:
    """A dataset's public schema as a node publishes it (``schema`` is TableSchema.to_dict())."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class NodeDescription:
    node: str
    datasets: tuple[DatasetDescription, ...]
    min_group_size: int
    release_rows: bool


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


@dataclass(frozen=True)
class SecAggSetup:
    """The public parameters of one secure-aggregation session (see ``SecAggConfig``)."""

    session_id: bytes
    client_ids: tuple[int, ...]
    vector_length: int
    threshold: int | None = None
    neighbors: int | None = None
    modulus_bits: int = 64


@dataclass(frozen=True)
class SecAggStep:
    """One stage of one session at one node."""

    context: RequestContext
    setup: SecAggSetup
    stage: str
    payloads: tuple[bytes, ...]
    round: Mapping[str, Any]
    client_id: int
    part: str = "all"


def step_to_proto(step: SecAggStep) -> node_pb2.SecAggStepRequest:
    s = step.setup
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
        round_json=dumps(dict(step.round)) if step.round else "",
        client_id=str(step.client_id),
        part=step.part,
    )


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:  # not "²" or "٣"
        raise ProtocolError(f"{what}: {text!r} is not a client id")
    return int(text)


def step_from_proto(msg: node_pb2.SecAggStepRequest) -> SecAggStep:
    if msg.stage not in SECAGG_STAGES:
        raise ProtocolError(f"SecAggStep: unknown stage {msg.stage!r}; expected {SECAGG_STAGES}")
    part = msg.part or "all"
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
    return SecAggStep(
        context=context_from_proto(msg.context),
        setup=setup,
        stage=msg.stage,
        payloads=tuple(bytes(p) for p in msg.payloads),
        round=loads_dict(msg.round_json, "round_json"),
        client_id=_int(msg.client_id, "client_id"),
        part=part,
    )


@dataclass(frozen=True)
class PaillierRequest:
    """Encrypt the local vector of ``round`` under the public key with modulus ``n``."""

    context: RequestContext
    n: int
    round: Mapping[str, Any]
    headroom: int
    suppressed: tuple[int, ...] = ()


def paillier_request_to_proto(req: PaillierRequest) -> node_pb2.PaillierStatsRequest:
    return node_pb2.PaillierStatsRequest(
        context=context_to_proto(req.context),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(req.n)),
        round_json=dumps(dict(req.round)),
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
        round=loads_dict(msg.round_json, "round_json"),
        headroom=int(msg.headroom),
        suppressed=tuple(int(i) for i in msg.suppressed),
    )


@dataclass(frozen=True)
class RoundResult:
    """The Paillier path's answer for one round: the encrypted total of the non-count entries
    (empty bytes if the round has none), suppressed entries, and the count entries' totals
    (securely aggregated, suppressed ones zeroed; see ``paillier_round_total``)."""

    encrypted_vector: bytes
    suppressed: tuple[int, ...]
    nodes: int
    count_totals: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class RoundRequest:
    query: Mapping[str, Any]
    round: Mapping[str, Any]
    n: int
    request_id: str


def round_request_to_proto(r: RoundRequest) -> aggregator_pb2.RunRoundRequest:
    return aggregator_pb2.RunRoundRequest(
        query_json=dumps(dict(r.query)),
        round_json=dumps(dict(r.round)),
        public_key=common_pb2.PaillierPublicKey(n=int_to_bytes(r.n)),
        request_id=r.request_id,
    )


def round_request_from_proto(msg: aggregator_pb2.RunRoundRequest) -> RoundRequest:
    return RoundRequest(
        query=loads_dict(msg.query_json, "query_json"),
        round=loads_dict(msg.round_json, "round_json"),
        n=paillier_modulus(msg.public_key.n, "RunRound"),
        request_id=msg.request_id,
    )


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    reachable: bool
    detail: str = ""
    datasets: tuple[DatasetDescription, ...] = ()
    min_group_size: int = 0


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


# ---------------------------------------------------------------------- Paillier vector words
#: Paillier packs slots of at most 63 bits, but a fixed-point entry (``Round.encode``) needs
#: up to 62 bits plus room for the sum over the nodes. Each entry v is therefore sent as two
#: words: hi = v >> 31 (arithmetic) and lo = v & (2^31 - 1), with v = hi * 2^31 + lo exactly;
#: both fit signed 32 bits. Sums of words recombine modulo 2^64 into the sum of the entries.
WORD_BITS = 31
PAILLIER_WORD_VALUE_BITS = 32


def split_words(encoded: Any) -> Any:
    """int64 entries -> int64 vector ``[hi..., lo...]`` of twice the length."""
    import numpy as np

    v = np.asarray(encoded, dtype=np.int64)
    hi = v >> WORD_BITS
    lo = v & ((1 << WORD_BITS) - 1)
    return np.concatenate([hi, lo])


def join_words(words: Any) -> Any:
    """The inverse of ``split_words`` on (sums of) word vectors: uint64 totals modulo 2^64.

    >>> import numpy as np
    >>> v = np.array([5, -7, 2**61, -(2**61)], dtype=np.int64)
    >>> join_words(split_words(v) + split_words(v)).view(np.int64).tolist() == (2 * v).tolist()
    True
    """
    import numpy as np

    w = np.asarray(words, dtype=np.int64)
    if w.ndim != 1 or w.shape[0] % 2:
        raise ProtocolError(f"encrypted total has {w.shape} words; expected an even length")
    half = w.shape[0] // 2
    hi = w[:half].view(np.uint64)
    lo = w[half:].view(np.uint64)
    with np.errstate(over="ignore"):
        return (hi << np.uint64(WORD_BITS)) + lo


def paillier_round_total(count_mask: Any, count_totals: Sequence[int], words: Any) -> Any:
    """A Paillier round's total modulo 2^64 (what ``Round.decode`` takes) from its parts.

    Args:
        count_mask: the round's ``Round.count_mask``.
        count_totals: the totals of the count entries, in order (``RoundResult.count_totals``).
        words: the decrypted sum of ``split_words`` vectors of the non-count entries
            (``Round.moment_round``), or None if the round has none.

    Raises:
        ProtocolError: the parts do not fit the round's layout.

    >>> import numpy as np
    >>> mask = np.array([True, False, True])
    >>> paillier_round_total(mask, [4, 0], split_words(np.array([-3]))).view(np.int64).tolist()
    [4, -3, 0]
    """
    import numpy as np

    mask = np.asarray(count_mask, dtype=bool)
    total = np.zeros(mask.shape[0], dtype=np.uint64)
    counts = np.asarray(count_totals, dtype=np.int64)
    if counts.shape != (int(mask.sum()),):
        raise ProtocolError(
            f"round answer has {counts.shape[0]} count totals; the round has {int(mask.sum())}"
        )
    total[mask] = counts.view(np.uint64)
    rest = int((~mask).sum())
    if rest:
        if words is None:
            raise ProtocolError(f"round answer has no encrypted vector for its {rest} sums")
        joined = join_words(words)
        if joined.shape != (rest,):
            raise ProtocolError(
                f"round answer has {joined.shape[0]} encrypted sums; the round has {rest}"
            )
        total[~mask] = joined
    elif words is not None and np.asarray(words).size:
        raise ProtocolError("round answer has encrypted entries but the round has no sums")
    return total


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
