"""gRPC servicers: they only translate (proto -> domain, call the handler, domain -> proto).

The handlers are the node's and the aggregator's composition objects; they receive the
caller's verified certificate ``Identity`` and domain values from ``serde``. Every method is
wrapped by ``status.guard`` (role check, exception -> status code with ``ErrorInfo``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from trustspace.errors import TrustspaceError
from trustspace.proto.v1 import aggregator_pb2, aggregator_pb2_grpc, node_pb2, node_pb2_grpc
from trustspace.transport import serde, types
from trustspace.transport.ca import Identity
from trustspace.transport.signing import SignedQuery
from trustspace.transport.status import guard

NODE_SERVICE = "trustspace.proto.v1.NodeService"
Msg = TypeVar("Msg")
Out = TypeVar("Out")


def _parser(server: str) -> Callable[[Callable[[Msg], Out], Msg], Out]:
    """``parse(convert, msg)``: ``convert(msg)``, its errors naming this server (serde's
    messages name the field, not where it was refused)."""

    def parse(convert: Callable[[Msg], Out], msg: Msg) -> Out:
        try:
            return convert(msg)
        except TrustspaceError as exc:
            raise type(exc)(f"{server}: {exc}") from None

    return parse


AGGREGATOR_SERVICE = "trustspace.proto.v1.AggregatorService"


class NodeHandler(Protocol):
    name: str

    def describe(self, caller: Identity, query: SignedQuery | None) -> types.NodeDescription: ...

    def secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]: ...

    def paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes: ...

    def anon_histogram(
        self, caller: Identity, query: SignedQuery, nodes: tuple[str, ...]
    ) -> tuple[str, str]: ...

    def anon_apply(
        self, caller: Identity, query: SignedQuery, result_json: str, digest: str, release: bool
    ) -> dict[str, Any]: ...

    def anon_release(self, caller: Identity, query: SignedQuery) -> bytes: ...

    def vertical_step(self, caller: Identity, step: types.VerticalStep) -> types.VerticalReply: ...


class AggregatorHandler(Protocol):
    name: str

    def run_query(self, caller: Identity, query: SignedQuery) -> Any: ...

    def run_round(self, caller: Identity, req: types.RoundRequest) -> types.RoundResult: ...

    def run_anonymization(self, caller: Identity, query: SignedQuery) -> Any: ...

    def status(self, caller: Identity, query: SignedQuery | None) -> list[types.NodeStatus]: ...


def _optional_signed(msg: Any, what: str) -> SignedQuery | None:
    return serde.signed_from_proto(msg.query, what) if msg.HasField("query") else None


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    """Translates NodeService calls for a ``NodeHandler``; only aggregators may call."""

    def __init__(self, handler: NodeHandler) -> None:
        h = handler

        def g(fn: Any, method: str) -> Any:
            return guard(fn, server_name=h.name, method=method, allowed_roles=("aggregator",))

        parse = _parser(f"node {h.name}")

        def signed(what: str) -> Callable[[Any], SignedQuery]:
            return lambda msg: serde.signed_from_proto(msg.query, what)

        self._describe = g(
            lambda req, who: serde.description_to_proto(
                h.describe(who, parse(lambda m: _optional_signed(m, "DescribeDatasets"), req))
            ),
            "DescribeDatasets",
        )
        self._secagg = g(
            lambda req, who: node_pb2.SecAggStepResponse(
                payloads=h.secagg_step(who, parse(serde.step_from_proto, req))
            ),
            "SecAggStep",
        )
        self._paillier = g(
            lambda req, who: node_pb2.PaillierStatsResponse(
                encrypted_vector=h.paillier_stats(
                    who, parse(serde.paillier_request_from_proto, req)
                )
            ),
            "PaillierStats",
        )

        def histogram(req: Any, who: Identity) -> Any:
            node, digest = h.anon_histogram(
                who, parse(signed("AnonHistogram"), req), tuple(req.nodes)
            )
            return node_pb2.AnonHistogramResponse(node=node, digest=digest)

        self._anon = {
            "histogram": g(histogram, "AnonHistogram"),
            "apply": g(
                lambda req, who: serde.anon_applied_to_proto(
                    h.anon_apply(
                        who,
                        parse(signed("AnonApply"), req),
                        req.result_json,
                        req.digest,
                        bool(req.release),
                    )
                ),
                "AnonApply",
            ),
            "release": g(
                lambda req, who: node_pb2.AnonReleaseResponse(
                    rows_csv=h.anon_release(who, parse(signed("AnonRelease"), req))
                ),
                "AnonRelease",
            ),
        }

        self._vertical = g(
            lambda req, who: serde.vertical_reply_to_proto(
                h.vertical_step(who, parse(serde.vertical_from_proto, req))
            ),
            "VerticalStep",
        )

    def DescribeDatasets(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._describe(request, context)

    def VerticalStep(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._vertical(request, context)

    def SecAggStep(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._secagg(request, context)

    def PaillierStats(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._paillier(request, context)

    def AnonHistogram(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._anon["histogram"](request, context)

    def AnonApply(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._anon["apply"](request, context)

    def AnonRelease(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._anon["release"](request, context)


def add_node_servicer(server: grpc.Server, handler: NodeHandler) -> None:
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(handler), server)


class AggregatorServicer(aggregator_pb2_grpc.AggregatorServiceServicer):
    """Translates AggregatorService calls for an ``AggregatorHandler``; only analysts may call."""

    def __init__(self, handler: AggregatorHandler) -> None:
        h = handler

        def g(fn: Any, method: str) -> Any:
            return guard(fn, server_name=h.name, method=method, allowed_roles=("analyst",))

        def query(req: Any, who: Identity) -> Any:
            out = dict(h.run_query(who, serde.signed_from_proto(req.query, "RunQuery")))
            nodes, excluded = out.pop("nodes"), out.pop("excluded")
            k = out.pop("min_group_size")
            return aggregator_pb2.RunQueryResponse(
                result_json=serde.dumps(out), nodes=nodes, excluded=excluded, min_group_size=k
            )

        self._query = g(query, "RunQuery")
        self._round = g(
            lambda req, who: serde.round_result_to_proto(
                h.run_round(who, serde.round_request_from_proto(req))
            ),
            "RunRound",
        )
        self._anon = g(
            lambda req, who: aggregator_pb2.RunAnonymizationResponse(
                result_json=serde.dumps(
                    h.run_anonymization(who, serde.signed_from_proto(req.query, "RunAnonymization"))
                )
            ),
            "RunAnonymization",
        )
        self._status = g(
            lambda req, who: serde.status_to_proto(
                h.name, h.status(who, _optional_signed(req, "Status"))
            ),
            "Status",
        )

    def RunQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._query(request, context)

    def RunRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._round(request, context)

    def RunAnonymization(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._anon(request, context)

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._status(request, context)


def add_aggregator_servicer(server: grpc.Server, handler: AggregatorHandler) -> None:
    aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(AggregatorServicer(handler), server)
