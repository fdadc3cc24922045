"""The one driver of a SecAgg+ round: stage order, dropouts and abort rules (pure, no I/O).

``drive(config, exchange)`` runs the aggregator's ``SecAggServer`` through every stage and
hands each stage's messages to ``exchange(stage, {client: payload}) -> {client: reply}``,
which delivers them to the clients however it likes: in-process (``simulate``) or over gRPC
(the aggregator). A client missing from a reply mapping has dropped out at that stage; the
server decides whether the round can go on. Payloads and replies per stage:

- ``ADVERTISE``: payload ``None``; reply ``AdvertiseKeys``.
- ``SHARE_KEYS``: the roster ``{client: AdvertiseKeys}``; reply ``{recipient: EncryptedShares}``.
- ``MASKED_INPUT``: ``{sender: EncryptedShares}`` addressed to the client; reply ``MaskedInput``.
- ``CONSISTENCY``: the ``UnmaskRequest`` (survivor lists); reply ``SurvivorSignature``.
- ``UNMASK``: the ``UnmaskRequest``; reply ``UnmaskShares``.

``CONSISTENCY`` runs only with ``SecAggConfig.consistency_check``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustspace.errors import ThresholdError
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.server import SecAggServer
from trustspace.secagg.stage import Stage

__all__ = ["Exchange", "Outcome", "drive"]

#: ``exchange(stage, {client: payload}) -> {client: reply}`` (see the module docstring).
Exchange = Callable[[Stage, Mapping[int, Any]], Mapping[int, Any]]


class StageAborted(ThresholdError):
    """Too few clients remained at ``stage``: the round was aborted, no partial sum exists."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Outcome:
    """What a completed round gives the aggregator.

    Attributes:
        total: the sum modulo ``2**modulus_bits`` of the survivors' inputs.
        survivors: the clients whose input is in ``total`` (they sent a masked input).
        dropped: the clients that shared their keys but sent no masked input.
    """

    total: np.ndarray[Any, Any]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


def drive(config: SecAggConfig, exchange: Exchange) -> Outcome:
    """Run one round of ``config`` through ``exchange``; return the sum and who is in it.

    Raises:
        StageAborted (a ``ThresholdError``): fewer than ``config.t`` clients remain at some
            stage; the message starts with "secure aggregation aborted at stage <stage>".
        ProtocolError: a malformed or inconsistent message (as ``SecAggServer`` raises it).
    """
    server = SecAggServer(config)
    stage = Stage.ADVERTISE
    try:
        roster = server.collect_advertise(exchange(stage, dict.fromkeys(config.client_ids)))
        stage = Stage.SHARE_KEYS
        routing = server.collect_shares(exchange(stage, dict.fromkeys(roster, roster)))
        stage = Stage.MASKED_INPUT
        request = server.collect_masked(exchange(stage, routing))
        responders: tuple[int, ...] = request.survivors
        if config.consistency_check:
            stage = Stage.CONSISTENCY
            request = server.collect_consistency(
                exchange(stage, dict.fromkeys(request.survivors, request))
            )
            responders = tuple(c for c, _ in request.signatures)
        stage = Stage.UNMASK
        total = server.collect_unmask(exchange(stage, dict.fromkeys(responders, request)))
    except StageAborted:
        raise
    except ThresholdError as exc:
        raise StageAborted(stage, f"secure aggregation aborted at stage {stage}: {exc}") from None
    return Outcome(total, request.survivors, request.dropped)
