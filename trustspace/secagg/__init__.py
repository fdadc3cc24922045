"""Secure aggregation: dropout-robust SecAgg+ safe against a malicious aggregator (pure, no I/O).

Double masking of Bonawitz et al. (CCS'17) over the sparse neighbour graph of Bell et al.
(CCS'20). The aggregator learns only the sum of the surviving clients' vectors (integers
modulo 2^32 or 2^64), even when clients drop out at any stage, as long as t remain.

Public API (everything a transport needs; the gRPC layer drives these objects unchanged):

``SecAggConfig(session_id, client_ids, vector_length, threshold=None, neighbors=None,
modulus_bits=64, dropout_fraction=0.1, corrupt_fraction=0.05, consistency_check=False)``
    Frozen, validated public parameters; ``.t``, ``.k``, ``.neighbors_of(cid)`` after creation.
    (k, t) come from the SecAgg+ conditions of Bell et al. CCS'20 (see ``_params``).

``SecAggClient(config, client_id, *, rng=os.urandom, identity_signer=None,
identity_verifier=None)``, one per node per round:
    - ``advertise() -> AdvertiseKeys``
    - ``share_keys(roster: Mapping[int, AdvertiseKeys]) -> dict[int, EncryptedShares]``
      (keyed by recipient)
    - ``masked_input(vector, received: Mapping[int, EncryptedShares]) -> MaskedInput``
      (``received`` keyed by sender)
    - only if ``config.consistency_check``: ``consistency(request: UnmaskRequest)
      -> SurvivorSignature``
    - ``unmask(request: UnmaskRequest) -> UnmaskShares``

``SecAggServer(config)``, the aggregator; a client missing from a mapping has dropped:
    - ``collect_advertise(Mapping[int, AdvertiseKeys]) -> dict[int, AdvertiseKeys]``
      (the roster, sent to every client that advertised)
    - ``collect_shares(Mapping[int, Mapping[int, EncryptedShares]])
      -> dict[int, dict[int, EncryptedShares]]`` (``{recipient: {sender: msg}}``)
    - ``collect_masked(Mapping[int, MaskedInput]) -> UnmaskRequest`` (sent to the survivors)
    - only if ``config.consistency_check``: ``collect_consistency(Mapping[int,
      SurvivorSignature]) -> UnmaskRequest`` (with signatures; sent to the signers)
    - ``collect_unmask(Mapping[int, UnmaskShares]) -> np.ndarray`` (the exact sum)

Messages ``AdvertiseKeys``, ``EncryptedShares``, ``MaskedInput``, ``UnmaskRequest``,
``UnmaskShares``, ``SurvivorSignature`` are frozen dataclasses with ``to_bytes()`` /
``from_bytes(data)`` (strict canonical encoding; malformed bytes raise ``ProtocolError``
naming the message). Each carries the session id (and its sender); a message of another
session is refused with ``ProtocolError``. Too few clients at any stage raise
``ThresholdError`` naming the stage and the counts; no partial sum is ever returned.

``FixedPointEncoder(scale_bits, clip, modulus_bits=64, max_clients=1000)`` encodes floats
(``encode(array) -> uint array``, ``decode(sum, n_clients) -> float array``) and refuses a
configuration whose sum could wrap the modulus.

``Stage`` (a ``StrEnum``) names the stages; ``drive(config, exchange) -> Outcome`` is the one
driver of a round (stage order, dropouts, abort rules): ``exchange(stage, {client: payload})
-> {client: reply}`` delivers each stage's messages in-process or over a network, and a client
missing from a reply has dropped. ``simulate`` and the aggregator's gRPC path both wrap it.

``simulate(inputs, threshold=None, neighbors=None, dropouts=None, seed=None)`` runs a whole
round in-process with ``dropouts={stage: [indices]}`` for the stages ``advertise``,
``share_keys`` (also spelled ``share``), ``masked_input`` and ``unmask`` (keyword extras:
``modulus_bits``, ``consistency_check``, ``wire``, ``session_id``, ...).

>>> import numpy as np
>>> from trustspace import secagg
>>> secagg.simulate([np.array([1, 2], dtype=np.uint32)] * 3).tolist()
[3, 6]

Modules: ``stage`` (the stage names), ``config`` (parameters), ``messages`` (wire format),
``client`` / ``server`` (state machines), ``driver`` (the round driver), ``simulate``
(in-process exchange), ``encoding`` (fixed point), ``_params`` ((k, t) and the graph).
Primitives live in ``trustspace.crypto.{keyagreement, prg, shamir}``.
"""

from __future__ import annotations

from trustspace.secagg.client import SecAggClient
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.driver import Exchange, Outcome, StageAborted, drive
from trustspace.secagg.encoding import FixedPointEncoder
from trustspace.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
)
from trustspace.secagg.server import SecAggServer
from trustspace.secagg.simulate import STAGES, simulate
from trustspace.secagg.stage import Stage

__all__ = [
    "STAGES",
    "AdvertiseKeys",
    "EncryptedShares",
    "Exchange",
    "FixedPointEncoder",
    "MaskedInput",
    "Outcome",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "Stage",
    "StageAborted",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskShares",
    "drive",
    "simulate",
]
