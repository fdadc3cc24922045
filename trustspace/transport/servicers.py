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

    def describe(self, caller: Identity, ctx: types.RequestContext) -> types.NodeDescription: ...

    def secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]: ...

    def paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes: ...

    def anon_histogram(
        self, caller: Identity, ctx: types.RequestContext, payload: dict[str, Any]
    ) -> dict[str, Any]: ...

    def anon_apply(
        self, caller: Identity, ctx: types.RequestContext, payload: dict[str, Any]
    ) -> dict[str, Any]: ...

    def anon_release(self, caller: Identity, ctx: types.RequestContext) -> bytes: ...


class AggregatorHandler(Protocol):
    name: str

    def run_query(self, caller: Identity, query: dict[str, Any], method: str) -> Any: ...

    def run_round(self, caller: Identity, req: types.RoundRequest) -> types.RoundResult: ...

    def run_anonymization(self, caller: Identity, spec: dict[str, Any]) -> Any: ...

    def status(self, caller: Identity) -> list[types.NodeStatus]: ...


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    """Translates NodeService calls for a ``NodeHandler``; only aggregators may call."""

    def __init__(self, handler: NodeHandler) -> None:
        h = handler

        def g(fn: Any, method: str) -> Any:
            return guard(fn, server_name=h.name, method=method, allowed_roles=("aggregator",))

        parse = _parser(f"node {h.name}")

        self._describe = g(
            lambda req, who: serde.description_to_proto(
                h.describe(who, serde.context_from_proto(req.context))
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
        self._anon = {
            "histogram": g(
                lambda req, who: node_pb2.AnonHistogramResponse(
                    summary_json=serde.dumps(
                        h.anon_histogram(
                            who,
                            serde.context_from_proto(req.context),
                            serde.loads_dict(req.spec_json, "spec_json"),
                        )
                    )
                ),
                "AnonHistogram",
            ),
            "apply": g(
                lambda req, who: serde.anon_applied_to_proto(
                    h.anon_apply(
                        who,
                        serde.context_from_proto(req.context),
                        serde.loads_dict(req.transformation_json, "transformation_json"),
                    )
                ),
                "AnonApply",
            ),
            "release": g(
                lambda req, who: node_pb2.AnonReleaseResponse(
                    rows_csv=h.anon_release(who, serde.context_from_proto(req.context))
                ),
                "AnonRelease",
            ),
        }

    def DescribeDatasets(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._describe(request, context)

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

        self._query = g(
            lambda req, who: aggregator_pb2.RunQueryResponse(
                result_json=serde.dumps(
                    h.run_query(who, serde.loads_dict(req.query_json, "query_json"), req.method)
                )
            ),
            "RunQuery",
        )
        self._round = g(
            lambda req, who: serde.round_result_to_proto(
                h.run_round(who, serde.round_request_from_proto(req))
            ),
            "RunRound",
        )
        self._anon = g(
            lambda req, who: aggregator_pb2.RunAnonymizationResponse(
                result_json=serde.dumps(
                    h.run_anonymization(who, serde.loads_dict(req.spec_json, "spec_json"))
                )
            ),
            "RunAnonymization",
        )
        self._status = g(lambda req, who: serde.status_to_proto(h.name, h.status(who)), "Status")

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
