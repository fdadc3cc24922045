"""What the aggregator's drivers (Paillier rounds, anonymization) need from the service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from trustspace.errors import TrustspaceError
from trustspace.stats import TableSchema
from trustspace.transport import types
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import QueryBody, SignedQuery

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What one analyst request runs over: nodes, schema and the strictest min_group_size."""

    key: tuple[str, str]  # (analyst, request id)
    nodes: tuple[NodeClient, ...]
    schema: TableSchema
    min_group_size: int
    excluded: tuple[str, ...]
    created: float
    release: frozenset[str] = frozenset()  # nodes whose policy lets anonymized rows leave
    min_nodes: int = 3  # the strictest node's policy.min_nodes


class Host(Protocol):
    """The aggregator service as its drivers see it (``AggregatorService`` implements it)."""

    name: str
    call_timeout_s: float
    paillier_timeout_s: float

    def fan_out(
        self, nodes: Sequence[NodeClient], call: Callable[[NodeClient], T]
    ) -> tuple[dict[str, T], dict[str, TrustspaceError]]: ...

    def planned(
        self, query: SignedQuery, body: QueryBody, *, keep: bool = False
    ) -> AbstractContextManager[Plan]: ...

    def update_plan(self, plan: Plan) -> None: ...

    def sum_round(
        self, query: SignedQuery, ref: types.RoundRef, plan: Plan, *, first: bool = False
    ) -> tuple[np.ndarray[Any, Any], Plan]: ...

    def secure_sum(
        self,
        query: SignedQuery,
        ref: types.RoundRef,
        size: int,
        nodes: Sequence[NodeClient],
    ) -> tuple[np.ndarray[Any, Any], tuple[str, ...]]: ...
