"""SecAggServer: the aggregator's side of one SecAgg+ round, a pure state machine (no I/O).

A client absent from the mapping passed to a ``collect_*`` method has dropped at that stage.
The server aborts with :class:`~trustspace.errors.ThresholdError` as soon as some client's
secrets could no longer be reconstructed (fewer than t live holders), and with
:class:`~trustspace.errors.ProtocolError` on any malformed or inconsistent message; in both
cases no partial sum is produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trustspace.crypto import keyagreement as ka
from trustspace.crypto import prg, shamir
from trustspace.errors import CryptoError, ProtocolError, ThresholdError
from trustspace.secagg.client import SEED_BYTES, mask_key, seed_mask_key
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
)
from trustspace.secagg.stage import Stage

__all__ = ["SecAggServer"]


class SecAggServer:
    """The aggregator of one round: routes messages and computes the sum of the survivors.

    Call, in order: :meth:`collect_advertise`, :meth:`collect_shares`, :meth:`collect_masked`,
    (with ``consistency_check``: :meth:`collect_consistency`), :meth:`collect_unmask`. The
    server learns the sum of the inputs of the clients listed as survivors in the returned
    :class:`UnmaskRequest` and nothing else about any input.
    """

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._stage = Stage.ADVERTISE
        self._roster: dict[int, AdvertiseKeys] = {}
        self._u2: set[int] = set()
        self._survivors: tuple[int, ...] = ()
        self._dropped: tuple[int, ...] = ()
        self._sum: np.ndarray[Any, Any] | None = None
        self._responders: set[int] = set()  # who may answer the unmask request

    @property
    def stage(self) -> Stage:
        """The next stage the server expects (``Stage.DONE`` after the last one)."""
        return self._stage

    def _enter(self, stage: Stage) -> None:
        if self._stage != stage:
            raise ProtocolError(
                f"aggregator: stage '{stage}' called while expecting '{self._stage}'"
            )
        self._stage = Stage.FAILED  # restored on success; after an error the round is over

    def _check(self, stage: str, cid: int, msg: Any, kind: type, sender: int | None) -> None:
        if not isinstance(msg, kind):
            raise ProtocolError(
                f"aggregator, stage {stage}: message of client {cid} is not {kind.__name__}"
            )
        if getattr(msg, "session_id", None) != self.config.session_id:
            raise ProtocolError(
                f"aggregator, stage {stage}: message of client {cid} belongs to another session "
                "(replayed or misrouted); aborting"
            )
        if sender is not None and sender != cid:
            raise ProtocolError(
                f"aggregator, stage {stage}: message received from client {cid} is signed as "
                f"sender {sender}; aborting"
            )

    def _need(self, stage: str, who: str, have: int) -> None:
        if have < self.config.t:
            raise ThresholdError(
                f"stage {stage}: {who} has {have} live share holders, threshold "
                f"t={self.config.t} ({self.config.n} clients, k={self.config.k}); "
                "aborting the round, no partial sum"
            )

    def _holders(self, cid: int, live: set[int]) -> set[int]:
        """The live share holders of ``cid``: itself (if live) and its live neighbours."""
        return set(self.config.neighbors_of(cid) | {cid}) & live

    def collect_advertise(self, msgs: Mapping[int, AdvertiseKeys]) -> dict[int, AdvertiseKeys]:
        """Stage 1: check the advertised keys; return the roster to broadcast to every sender."""
        stage = Stage.ADVERTISE
        self._enter(stage)
        ids = self.config.members
        for cid, msg in msgs.items():
            if cid not in ids:
                raise ProtocolError(f"aggregator, stage {stage}: client {cid} is not a participant")
            self._check(
                stage,
                cid,
                msg,
                AdvertiseKeys,
                msg.sender if isinstance(msg, AdvertiseKeys) else None,
            )
        if len(msgs) < self.config.t:
            raise ThresholdError(
                f"stage {stage}: {len(msgs)} of {self.config.n} clients advertised keys, "
                f"threshold t={self.config.t}; aborting the round, no partial sum"
            )
        self._roster = dict(sorted(msgs.items()))
        self._stage = Stage.SHARE_KEYS
        return dict(self._roster)

    def collect_shares(
        self, msgs: Mapping[int, Mapping[int, EncryptedShares]]
    ) -> dict[int, dict[int, EncryptedShares]]:
        """Stage 2: route encrypted shares; return ``{recipient: {sender: EncryptedShares}}``.

        Only clients that sent their shares (U2) receive anything; a recipient gets the shares
        of its neighbours in U2.
        """
        stage = Stage.SHARE_KEYS
        self._enter(stage)
        for cid, out in msgs.items():
            if cid not in self._roster:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} sent shares without advertising keys"
                )
            expected = self.config.neighbors_of(cid) & self._roster.keys()
            if set(out) != expected:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} sent shares to {len(out)} clients, "
                    f"expected its {len(expected)} live neighbours"
                )
            for rcpt, msg in out.items():
                self._check(stage, cid, msg, EncryptedShares, getattr(msg, "sender", None))
                if msg.recipient != rcpt:
                    raise ProtocolError(
                        f"aggregator, stage {stage}: client {cid}'s shares for {rcpt} are "
                        f"addressed to {msg.recipient}"
                    )
        u2 = set(msgs)
        for cid in sorted(u2):
            self._need(stage, f"client {cid}", len(self._holders(cid, u2)))
        self._u2 = u2
        routing: dict[int, dict[int, EncryptedShares]] = {r: {} for r in sorted(u2)}
        for sender in sorted(u2):
            for rcpt, msg in msgs[sender].items():
                if rcpt in u2:
                    routing[rcpt][sender] = msg
        self._stage = Stage.MASKED_INPUT
        return routing

    def collect_masked(self, msgs: Mapping[int, MaskedInput]) -> UnmaskRequest:
        """Stage 3: add the masked inputs; return the unmask request (survivors, dropped)."""
        stage = Stage.MASKED_INPUT
        self._enter(stage)
        cfg = self.config
        dtype = prg.dtype_for(cfg.modulus_bits)
        total = np.zeros(cfg.vector_length, dtype=dtype)
        for cid, msg in msgs.items():
            if cid not in self._u2:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} sent a masked input without having "
                    "shared its keys"
                )
            self._check(stage, cid, msg, MaskedInput, getattr(msg, "sender", None))
            if msg.modulus_bits != cfg.modulus_bits or msg.length != cfg.vector_length:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} sent {msg.length} values modulo "
                    f"2^{msg.modulus_bits}, expected {cfg.vector_length} modulo "
                    f"2^{cfg.modulus_bits}"
                )
            np.add(total, msg.vector, out=total)
        survivors = set(msgs)
        if len(survivors) < cfg.t:
            raise ThresholdError(
                f"stage {stage}: {len(survivors)} of {len(self._u2)} clients sent masked inputs, "
                f"threshold t={cfg.t}; aborting the round, no partial sum"
            )
        for cid in sorted(self._u2):
            self._need(stage, f"client {cid}", len(self._holders(cid, survivors)))
        self._sum = total
        self._survivors = tuple(sorted(survivors))
        self._dropped = tuple(sorted(self._u2 - survivors))
        self._responders = set(survivors)
        self._stage = Stage.CONSISTENCY if cfg.consistency_check else Stage.UNMASK
        return UnmaskRequest(cfg.session_id, self._survivors, self._dropped)

    def collect_consistency(self, msgs: Mapping[int, SurvivorSignature]) -> UnmaskRequest:
        """Optional consistency round: check the survivors' signatures on the lists.

        Returns:
            The unmask request carrying the signatures, to send to the signers (only they may
            answer at the unmask stage).

        Raises:
            ProtocolError: for a signature from a non-survivor or that does not verify.
            ThresholdError: if fewer than t survivors signed.
        """
        stage = Stage.CONSISTENCY
        self._enter(stage)
        cfg = self.config
        unsigned = UnmaskRequest(cfg.session_id, self._survivors, self._dropped)
        payload = unsigned.signed_payload()
        sigs = []
        for cid, msg in sorted(msgs.items()):
            if cid not in self._responders:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} signed but is not a survivor"
                )
            self._check(stage, cid, msg, SurvivorSignature, getattr(msg, "sender", None))
            if not ka.verify(self._roster[cid].sign_pk, msg.signature, payload):
                raise ProtocolError(
                    f"aggregator, stage {stage}: the survivor-list signature of client {cid} "
                    "does not verify; aborting"
                )
            sigs.append((cid, msg.signature))
        if len(sigs) < cfg.t:
            raise ThresholdError(
                f"stage {stage}: {len(sigs)} of {len(self._survivors)} survivors signed the "
                f"survivor list, threshold t={cfg.t}; aborting the round, no partial sum"
            )
        self._responders = set(msgs)
        self._stage = Stage.UNMASK
        return UnmaskRequest(cfg.session_id, self._survivors, self._dropped, tuple(sigs))

    def collect_unmask(self, msgs: Mapping[int, UnmaskShares]) -> np.ndarray[Any, Any]:
        """Stage 4: reconstruct the seeds and dropped keys, remove all masks, return the sum.

        Returns:
            The exact sum modulo ``2**modulus_bits`` of the survivors' inputs (uint32/uint64).
        """
        stage = Stage.UNMASK
        self._enter(stage)
        cfg = self.config
        survivors = set(self._survivors)
        dropped = set(self._dropped)
        seed_pts: dict[int, dict[int, bytes]] = {c: {} for c in survivors}
        key_pts: dict[int, dict[int, bytes]] = {c: {} for c in dropped}
        for cid, msg in msgs.items():
            if cid not in self._responders:
                raise ProtocolError(
                    f"aggregator, stage {stage}: client {cid} answered but is not a survivor"
                    + (" that signed the survivor list" if cfg.consistency_check else "")
                )
            self._check(stage, cid, msg, UnmaskShares, getattr(msg, "sender", None))
            holds = cfg.neighbors_of(cid) | {cid}
            for owners, items, pts in (
                (survivors, msg.seed_shares, seed_pts),
                (dropped, msg.key_shares, key_pts),
            ):
                for owner, share in items:
                    if owner not in owners or owner not in holds:
                        raise ProtocolError(
                            f"aggregator, stage {stage}: client {cid} sent a share of client "
                            f"{owner} that it cannot hold or that was not requested"
                        )
                    pts[owner][cid] = share
        for owner, held in (*seed_pts.items(), *key_pts.items()):
            self._need(stage, f"client {owner}", len(held))
        add: list[bytes] = []
        sub: list[bytes] = []
        try:
            for owner in sorted(survivors):
                seed = shamir.combine(seed_pts[owner], cfg.t, SEED_BYTES)
                sub.append(seed_mask_key(seed, cfg.session_id, owner))
            for owner in sorted(dropped):
                sk = shamir.combine(key_pts[owner], cfg.t, ka.KEY_BYTES)
                if ka.public_key(sk) != self._roster[owner].mask_pk:
                    raise CryptoError("reconstructed key does not match")
                partners = sorted(cfg.neighbors_of(owner) & survivors)
                secrets = ka.exchange_many(sk, [self._roster[p].mask_pk for p in partners])
                for partner, shared in zip(partners, secrets, strict=True):
                    # the partner added +mask if partner < owner, else -mask: undo it
                    key = mask_key(shared, cfg.session_id, partner, owner)
                    (sub if partner < owner else add).append(key)
        except CryptoError:
            raise ProtocolError(
                f"aggregator, stage {stage}: a reconstructed secret is invalid (a client sent "
                "a wrong share); aborting the round, no partial sum"
            ) from None
        assert self._sum is not None  # set by collect_masked
        total = self._sum
        prg.apply_masks(total, add, sub)
        self._sum = None
        self._stage = Stage.DONE
        return total
