"""The plain values that travel between analyst, aggregator and nodes (no protobuf here).

Node, aggregator and analyst code use these frozen dataclasses; ``trustspace.transport.serde``
converts them to and from the protobuf messages of ``trustspace.proto.v1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trustspace.anon.federated import VectorRequest
from trustspace.secagg import Stage
from trustspace.stats import Round

__all__ = [
    "PARTS",
    "AnonVector",
    "DatasetDescription",
    "NodeDescription",
    "NodeStatus",
    "PaillierRequest",
    "RequestContext",
    "RoundRequest",
    "RoundResult",
    "SecAggSetup",
    "SecAggStep",
]

#: What a secure-aggregation session sums at a node: a statistics round's vector ("all"), or
#: ("anon.histogram") an anonymization vector request of the job prepared by AnonHistogram.
PARTS = ("all", "anon.histogram")


@dataclass(frozen=True)
class RequestContext:
    """Who asks for what (forwarded by the aggregator to every node)."""

    analyst: str
    request_id: str
    operation: str
    dataset: str = ""
    columns: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetDescription:
    """A dataset's public schema as a node publishes it (``schema`` is TableSchema.to_dict())."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class NodeDescription:
    """What a node says about itself: its datasets (those the analyst may see), settings."""

    node: str
    datasets: tuple[DatasetDescription, ...]
    min_group_size: int
    release_rows: bool


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
class AnonVector:
    """One anonymization round: the vector ``request`` of the job whose spec has ``digest``."""

    request: VectorRequest
    digest: str


@dataclass(frozen=True)
class SecAggStep:
    """One stage of one session at one node."""

    context: RequestContext
    setup: SecAggSetup
    stage: Stage
    payloads: tuple[bytes, ...]
    #: what the session sums (advertise stage only; None at the later stages)
    vector: Round | AnonVector | None
    client_id: int

    @property
    def part(self) -> str:
        """``"anon.histogram"`` for an anonymization vector, else ``"all"``."""
        return PARTS[1] if isinstance(self.vector, AnonVector) else PARTS[0]


@dataclass(frozen=True)
class PaillierRequest:
    """Encrypt the local vector of ``round`` under the public key with modulus ``n``."""

    context: RequestContext
    n: int
    round: Round
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
    """An analyst's request for one Paillier round (``RunRound``)."""

    query: Mapping[str, Any]
    round: Round
    n: int
    request_id: str


@dataclass(frozen=True)
class NodeStatus:
    """One node as the aggregator sees it (``Federation.status()``)."""

    name: str
    address: str
    reachable: bool
    detail: str = ""
    datasets: tuple[DatasetDescription, ...] = ()
    min_group_size: int = 0
