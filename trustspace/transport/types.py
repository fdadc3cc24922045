"""The plain values that travel between analyst, aggregator and nodes (no protobuf here).

Node, aggregator and analyst code use these frozen dataclasses; ``trustspace.transport.serde``
converts them to and from the protobuf messages of ``trustspace.proto.v1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trustspace.anon.federated import VectorRequest
from trustspace.secagg import SecAggConfig, Stage
from trustspace.stats import Round
from trustspace.transport.signing import SignedQuery

__all__ = [
    "DP_BUDGET_FIELDS",
    "PARTS",
    "AnonVector",
    "DatasetDescription",
    "Envelope",
    "NodeDescription",
    "NodeStatus",
    "PaillierRequest",
    "RoundRef",
    "RoundRequest",
    "RoundResult",
    "RoundTotal",
    "SecAggSetup",
    "SecAggStep",
    "VerticalReply",
    "VerticalStep",
]

#: What a secure-aggregation session sums at a node: a statistics round's vector ("all"), the
#: record counts that govern a Paillier round's entries ("paillier.counts"), or
#: ("anon.histogram") an anonymization vector request of the job prepared by AnonHistogram.
PARTS = ("all", "paillier.counts", "anon.histogram", "vertical.product")


#: The figures of an analyst's DP budget at a node (``DatasetDescription.dp_budget``).
DP_BUDGET_FIELDS = (
    "epsilon",
    "delta",
    "epsilon_spent",
    "epsilon_remaining",
    "rho_spent",
    "rho_remaining",
    "required",
)


@dataclass(frozen=True)
class DatasetDescription:
    """A dataset's public schema as a node publishes it (``schema`` is TableSchema.to_dict())."""

    name: str
    schema: Mapping[str, Any]
    #: the asking analyst's DP budget on the dataset at this node (``epsilon``, ``delta``,
    #: ``epsilon_spent``, ``epsilon_remaining``, ``rho_spent``, ``rho_remaining``,
    #: ``required``); None: the node has no ``[policy.dp]``, or the request was not signed
    dp_budget: Mapping[str, Any] | None = None
    #: the identifier column for vertical jobs (``IdSpec.to_dict()``), or None
    id: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class NodeDescription:
    """What a node says about itself: its datasets (those the analyst may see), settings."""

    node: str
    datasets: tuple[DatasetDescription, ...]
    min_group_size: int
    release_rows: bool
    min_nodes: int = 3


@dataclass(frozen=True)
class SecAggSetup:
    """The public parameters of one secure-aggregation session (see ``SecAggConfig``)."""

    session_id: bytes
    client_ids: tuple[int, ...]
    vector_length: int
    threshold: int | None = None
    neighbors: int | None = None
    modulus_bits: int = 64

    def config(self) -> SecAggConfig:
        """The session's ``SecAggConfig`` (validated there: ``ConfigError`` naming the field)."""
        return SecAggConfig(
            session_id=self.session_id,
            client_ids=self.client_ids,
            vector_length=self.vector_length,
            threshold=self.threshold,
            neighbors=self.neighbors,
            modulus_bits=self.modulus_bits,
        )


@dataclass(frozen=True)
class AnonVector:
    """One anonymization round: the vector ``request`` of the job whose spec has ``digest``."""

    request: VectorRequest
    digest: str


@dataclass(frozen=True)
class RoundTotal:
    """The total of one earlier round as its driver fed it to the stats state machine: the
    encoded uint64 entries (the sum mod 2^64 of the nodes' vectors) and the suppressed ones."""

    index: int
    total: tuple[int, ...]
    suppressed: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoundRef:
    """What a driver expects one node computation to be; the node derives it and compares.

    ``index`` is the round of the query's computation, ``min_group_size`` the strictest
    participant's (the state machine's ``k``), ``previous`` the total of round ``index - 1``,
    ``vector`` the round (or anonymization vector) the driver expects, ``part`` one of PARTS.
    """

    index: int
    min_group_size: int
    previous: RoundTotal | None
    vector: Round | AnonVector
    part: str = PARTS[0]


@dataclass(frozen=True)
class SecAggStep:
    """One stage of one session at one node, for the analyst's signed ``query``."""

    query: SignedQuery
    setup: SecAggSetup
    stage: Stage
    payloads: tuple[bytes, ...]
    #: what the session sums (advertise stage only; None at the later stages)
    round: RoundRef | None
    client_id: int


@dataclass(frozen=True)
class Envelope:
    """A sealed node-to-node message chunk, as the aggregator relays it (it cannot read it)."""

    sender: str
    recipient: str
    body: bytes


@dataclass(frozen=True)
class VerticalStep:
    """One step of a vertical protocol at one node (``VerticalStepRequest``)."""

    query: SignedQuery
    session: bytes
    part: str
    step: int
    action: str
    inbox: tuple[Envelope, ...] = ()
    nodes: tuple[str, ...] = ()
    hellos: tuple[bytes, ...] = ()
    round: RoundRef | None = None


@dataclass(frozen=True)
class VerticalReply:
    """A node's answer to a ``VerticalStep``."""

    outbox: tuple[Envelope, ...] = ()
    more: bool = False
    done: bool = False
    result: Mapping[str, Any] | None = None
    hello: bytes = b""


@dataclass(frozen=True)
class PaillierRequest:
    """Encrypt the local vector of ``round`` under the public key with modulus ``n``."""

    query: SignedQuery
    n: int
    round: RoundRef
    headroom: int
    suppressed: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoundResult:
    """The Paillier path's answer for one round: the encrypted total of the non-count entries
    (empty bytes if the round has none), suppressed entries, and the count entries' totals
    (securely aggregated, suppressed ones zeroed; see ``paillier_round_total``)."""

    encrypted_vector: bytes
    suppressed: tuple[int, ...]
    nodes: int
    count_totals: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoundRequest:
    """An analyst's request for one Paillier round (``RunRound``): round ``round.index`` of
    its signed ``query``, under the key with modulus ``n`` whose fingerprint the query signs."""

    query: SignedQuery
    n: int
    round: Round
    min_group_size: int
    previous: RoundTotal | None = None


@dataclass(frozen=True)
class NodeStatus:
    """One node as the aggregator sees it (``Federation.status()``)."""

    name: str
    address: str
    reachable: bool
    detail: str = ""
    datasets: tuple[DatasetDescription, ...] = ()
    min_group_size: int = 0
    min_nodes: int = 0
