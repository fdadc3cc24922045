"""SecAggConfig: the public parameters of one secure-aggregation round, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trustspace.errors import ConfigError
from trustspace.secagg._params import choose_parameters, neighbor_graph, threshold_for
from trustspace.secagg.messages import MAX_CLIENT_ID

__all__ = ["SecAggConfig"]

MAX_VECTOR_LENGTH = 1 << 32  # 4 Gi elements; a guard against a mistyped size, not a limit of AES


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters every party of one round agrees on (the aggregator sends them to the nodes).

    Args:
        session_id: at least 16 fresh random bytes (at most 255), never reused; bound into
            every key derivation, AEAD associated data and message, so nothing carries over
            between rounds.
        client_ids: the participants, distinct integers ``1 .. 2^63 - 1`` (Shamir x-coordinates).
        vector_length: number of elements of every input vector.
        threshold: t, the number of live share holders needed to unmask; computed if None.
        neighbors: k, each client's number of graph neighbours; computed if None. ``k >= n - 1``
            means the complete graph (plain SecAgg); an odd ``k < n - 1`` is rounded up to even
            (Harary graph).
        modulus_bits: 32 or 64: inputs and the sum are integers modulo ``2**modulus_bits``.
        dropout_fraction: the dropout rate the parameters are chosen to tolerate.
        corrupt_fraction: the fraction of clients assumed to collude with the aggregator.
        consistency_check: run the optional consistency round of Bonawitz et al.: clients
            sign the survivor list and unmask only for a list signed by t survivors.

    After construction ``t`` and ``k`` hold the values in force, and :meth:`neighbors_of` the
    graph. Raises :class:`~trustspace.errors.ConfigError` naming the bad field and value.
    """

    session_id: bytes
    client_ids: tuple[int, ...]
    vector_length: int
    threshold: int | None = None
    neighbors: int | None = None
    modulus_bits: int = 64
    dropout_fraction: float = 0.1
    corrupt_fraction: float = 0.05
    consistency_check: bool = False
    t: int = field(init=False)
    k: int = field(init=False)
    _graph: dict[int, frozenset[int]] | None = field(init=False, repr=False, compare=False)
    _members: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or not 16 <= len(self.session_id) <= 255:
            raise ConfigError(
                "SecAggConfig.session_id must be 16 to 255 fresh random bytes "
                "(use secrets.token_bytes(32))"
            )
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        for c in ids:
            if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= MAX_CLIENT_ID:
                raise ConfigError(
                    f"SecAggConfig.client_ids: {c!r} is not an integer in 1 .. 2^63 - 1"
                )
        if len(set(ids)) != len(ids):
            raise ConfigError("SecAggConfig.client_ids must be distinct")
        n = len(ids)
        if n < 2:
            raise ConfigError(
                f"SecAggConfig.client_ids: secure aggregation needs >= 2 clients, got {n}"
            )
        if (
            not isinstance(self.vector_length, int)
            or not 1 <= self.vector_length <= MAX_VECTOR_LENGTH
        ):
            raise ConfigError(
                "SecAggConfig.vector_length must be an integer in 1 .. 2^32, "
                f"got {self.vector_length!r}"
            )
        if self.modulus_bits not in (32, 64):
            raise ConfigError(
                f"SecAggConfig.modulus_bits must be 32 or 64, got {self.modulus_bits!r}"
            )
        for name in ("dropout_fraction", "corrupt_fraction"):
            value = getattr(self, name)
            if not isinstance(value, float | int) or not 0.0 <= value < 0.5 or math.isnan(value):
                raise ConfigError(f"SecAggConfig.{name} must be in [0, 0.5), got {value!r}")
        if self.neighbors is None:
            k, t = choose_parameters(n, self.dropout_fraction, self.corrupt_fraction)
        else:
            if not isinstance(self.neighbors, int) or self.neighbors < 1:
                raise ConfigError(
                    f"SecAggConfig.neighbors must be a positive integer, got {self.neighbors!r}"
                )
            k = min(self.neighbors + self.neighbors % 2, n - 1)
            t = threshold_for(n, k, self.corrupt_fraction)
        if self.threshold is not None:
            # 2t > k + 1: a majority of each neighbourhood, else a malicious aggregator could
            # collect both the seed shares and the key shares of one client from honest holders
            low = (k + 1) // 2 + 1
            if not isinstance(self.threshold, int) or not low <= self.threshold <= k + 1:
                raise ConfigError(
                    f"SecAggConfig.threshold must be in {low} .. {k + 1} for {n} clients with "
                    f"{k} neighbours each (a strict majority of the k + 1 share holders), "
                    f"got {self.threshold!r}"
                )
            t = self.threshold
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "_graph", neighbor_graph(self.session_id, ids, k))
        object.__setattr__(self, "_members", frozenset(ids))

    @property
    def n(self) -> int:
        """The number of participants."""
        return len(self.client_ids)

    @property
    def members(self) -> frozenset[int]:
        """The participants as a set (constant-time membership tests)."""
        return self._members

    def neighbors_of(self, client_id: int) -> frozenset[int]:
        """The graph neighbours of ``client_id`` (its share holders besides itself)."""
        if client_id not in self._members:
            raise ConfigError(f"client {client_id} is not a participant of this round")
        if self._graph is None:  # complete graph
            return self._members - {client_id}
        return self._graph[client_id]
