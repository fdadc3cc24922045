"""Client stubs with a deadline on every call and our exceptions instead of ``grpc.RpcError``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from trustspace.errors import AuthenticationError, NodeError, TrustspaceError
from trustspace.proto.v1 import aggregator_pb2, aggregator_pb2_grpc, node_pb2, node_pb2_grpc
from trustspace.transport import serde, types
from trustspace.transport.ca import Credentials
from trustspace.transport.checkpoint import CHECKPOINT_KEY
from trustspace.transport.signing import SignedQuery
from trustspace.transport.status import error_info, to_exception
from trustspace.transport.tls import preflight, secure_channel

log = logging.getLogger("trustspace.transport")
T = TypeVar("T")
#: ``witness(node, raw_checkpoint)``: verifies and records a node's signed audit checkpoint,
#: raising ``AuthenticationError`` when it does not verify (``trustspace.aggregator.witness``).
Witness = Callable[[str, bytes], object]
DESCRIBE_TIMEOUT_S = 10.0  # schema lookups are instant; a slow answer means a sick node
STEP_TIMEOUT_S = 60.0  # one secure-aggregation stage, including the node's local query
PAILLIER_TIMEOUT_S = 600.0  # encrypting a large vector under a 3072-bit key takes minutes
QUERY_TIMEOUT_S = 3600.0  # a whole analyst query (many rounds over all nodes)
DIAGNOSE_TIMEOUT_S = 3.0  # a TLS handshake on a reachable host takes milliseconds


class _Client:
    def __init__(
        self,
        peer: str,
        address: str,
        creds: Credentials,
        *,
        server_name: str | None,
        expected_role: str,
        check: bool,
        witness: Witness | None = None,
    ) -> None:
        self.peer = peer
        self.address = address
        self._creds = creds
        self.credentials = creds  # the identity this client calls with (analysts sign with it)
        self._server_name = server_name
        self._role = expected_role
        self._witness = witness
        self._warned_no_checkpoint = False
        if check:
            preflight(address, creds, expected_role=expected_role, server_name=server_name)
        self._channel = secure_channel(address, creds, server_name)

    def _call(self, what: str, fn: Callable[..., T], request: Any, timeout: float) -> T:
        """Call ``fn``; with a witness, hand it the checkpoint in the trailing metadata of the
        answer (a refusal's too). A checkpoint that does not verify fails a good answer."""
        with_call = getattr(fn, "with_call", None) if self._witness is not None else None
        try:
            if with_call is None:
                return fn(request, timeout=timeout)
            resp, call = with_call(request, timeout=timeout)
        except grpc.RpcError as err:
            exc = to_exception(err, peer=self.peer, what=what)
            if self._witness is not None:
                try:
                    self._witnessed(err, refused=True)
                except TrustspaceError as bad:  # keep the refusal; the warning says the rest
                    log.warning("%s: %s", self.peer, bad)
            if err.code() == grpc.StatusCode.UNAVAILABLE and error_info(err) is None:
                self._diagnose(what)
            raise exc from None
        self._witnessed(call, refused=False)
        return resp  # type: ignore[no-any-return]

    def _witnessed(self, call: Any, *, refused: bool) -> None:
        """Pass the call's checkpoint (trailing metadata) to the witness."""
        assert self._witness is not None
        trailing: Any = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == CHECKPOINT_KEY and isinstance(value, bytes):
                self._witness(self._server_name or self.peer, value)
                return
        if not refused and not self._warned_no_checkpoint:
            self._warned_no_checkpoint = True
            log.warning(
                "%s answered without an audit checkpoint; it probably runs an older trustspace "
                "(upgrade it so the aggregator can witness its audit log)",
                self.peer,
            )

    def _diagnose(self, what: str) -> None:
        """gRPC says only "unavailable": find out whether TLS refused, or nothing listens."""
        try:
            preflight(
                self.address,
                self._creds,
                expected_role=self._role,
                server_name=self._server_name,
                timeout=DIAGNOSE_TIMEOUT_S,
            )
        except (AuthenticationError, NodeError) as diag:
            raise type(diag)(f"{self.peer} is unavailable for {what}: {diag}") from None

    def close(self) -> None:
        self._channel.close()


class NodeClient(_Client):
    """The aggregator's connection to one node (identified by its certificate name)."""

    def __init__(
        self,
        name: str,
        address: str,
        creds: Credentials,
        *,
        check: bool = False,
        witness: Witness | None = None,
    ):
        super().__init__(
            f"node {name}",
            address,
            creds,
            server_name=name,
            expected_role="node",
            check=check,
            witness=witness,
        )
        self.name = name
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)

    def describe(
        self, query: SignedQuery | None = None, timeout: float = DESCRIBE_TIMEOUT_S
    ) -> types.NodeDescription:
        """The node's datasets and settings; with a signed query, those its analyst may see."""
        req = node_pb2.DescribeDatasetsRequest()
        if query is not None:
            req.query.CopyFrom(serde.signed_to_proto(query))
        resp = self._call("DescribeDatasets", self._stub.DescribeDatasets, req, timeout)
        return serde.description_from_proto(resp)

    def secagg_step(self, step: types.SecAggStep, timeout: float = STEP_TIMEOUT_S) -> list[bytes]:
        resp = self._call(
            f"secure aggregation stage {step.stage}",
            self._stub.SecAggStep,
            serde.step_to_proto(step),
            timeout,
        )
        return [bytes(p) for p in resp.payloads]

    def vertical_step(
        self, step: types.VerticalStep, timeout: float = PAILLIER_TIMEOUT_S
    ) -> types.VerticalReply:
        """One step of a vertical protocol (PSI, secure product) at this node."""
        resp = self._call(
            f"vertical {step.part} step {step.step} ({step.action})",
            self._stub.VerticalStep,
            serde.vertical_to_proto(step),
            timeout,
        )
        return serde.vertical_reply_from_proto(resp)

    def paillier_stats(
        self, req: types.PaillierRequest, timeout: float = PAILLIER_TIMEOUT_S
    ) -> bytes:
        resp = self._call(
            "PaillierStats",
            self._stub.PaillierStats,
            serde.paillier_request_to_proto(req),
            timeout,
        )
        return bytes(resp.encrypted_vector)

    def anon_histogram(
        self, query: SignedQuery, nodes: Sequence[str], timeout: float = STEP_TIMEOUT_S
    ) -> tuple[str, str]:
        """Prepare the anonymization job of ``query`` at the node; returns (node, digest)."""
        req = node_pb2.AnonHistogramRequest(query=serde.signed_to_proto(query), nodes=list(nodes))
        resp = self._call("AnonHistogram", self._stub.AnonHistogram, req, timeout)
        return resp.node, resp.digest

    def anon_apply(
        self,
        query: SignedQuery,
        result_json: str,
        digest: str,
        release: bool,
        timeout: float = STEP_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Have the node apply the transformation to its rows and write them locally."""
        req = node_pb2.AnonApplyRequest(
            query=serde.signed_to_proto(query),
            result_json=result_json,
            digest=digest,
            release=release,
        )
        return serde.anon_applied_from_proto(
            self._call("AnonApply", self._stub.AnonApply, req, timeout)
        )

    def anon_release(self, query: SignedQuery, timeout: float = STEP_TIMEOUT_S) -> bytes:
        """The node's anonymized rows (CSV), if its policy lets them leave."""
        req = node_pb2.AnonReleaseRequest(query=serde.signed_to_proto(query))
        resp = self._call("AnonRelease", self._stub.AnonRelease, req, timeout)
        return bytes(resp.rows_csv)


class AggregatorClient(_Client):
    """An analyst's connection to the aggregator."""

    def __init__(
        self,
        address: str,
        creds: Credentials,
        *,
        server_name: str | None = None,
        check: bool = True,
    ) -> None:
        super().__init__(
            f"aggregator at {address}",
            address,
            creds,
            server_name=server_name,
            expected_role="aggregator",
            check=check,
        )
        self._stub = aggregator_pb2_grpc.AggregatorServiceStub(self._channel)

    def run_query(self, query: SignedQuery, timeout: float = QUERY_TIMEOUT_S) -> dict[str, Any]:
        """A whole secure-aggregation query: ``serde.result_to_dict`` plus ``nodes``,
        ``excluded`` and ``min_group_size``."""
        req = aggregator_pb2.RunQueryRequest(query=serde.signed_to_proto(query))
        resp = self._call("RunQuery", self._stub.RunQuery, req, timeout)
        out = serde.loads_dict(resp.result_json, "result_json")
        out.update(
            nodes=list(resp.nodes),
            excluded=list(resp.excluded),
            min_group_size=int(resp.min_group_size),
        )
        return out

    def run_round(
        self, req: types.RoundRequest, timeout: float = QUERY_TIMEOUT_S
    ) -> types.RoundResult:
        resp = self._call(
            "RunRound", self._stub.RunRound, serde.round_request_to_proto(req), timeout
        )
        return serde.round_result_from_proto(resp)

    def run_anonymization(self, query: SignedQuery, timeout: float = QUERY_TIMEOUT_S) -> Any:
        req = aggregator_pb2.RunAnonymizationRequest(query=serde.signed_to_proto(query))
        resp = self._call("RunAnonymization", self._stub.RunAnonymization, req, timeout)
        return serde.loads(resp.result_json, "result_json")

    def status(
        self, query: SignedQuery | None = None, timeout: float = DESCRIBE_TIMEOUT_S
    ) -> tuple[str, list[types.NodeStatus]]:
        req = aggregator_pb2.StatusRequest()
        if query is not None:
            req.query.CopyFrom(serde.signed_to_proto(query))
        resp = self._call("Status", self._stub.Status, req, timeout)
        return serde.status_from_proto(resp)
