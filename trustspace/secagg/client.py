"""SecAggClient: one node's side of one SecAgg+ round, a pure state machine (no I/O).

Stages, each callable once and in order: :meth:`~SecAggClient.advertise` ->
:meth:`~SecAggClient.share_keys` -> :meth:`~SecAggClient.masked_input` -> (only with
``consistency_check``: :meth:`~SecAggClient.consistency`) -> :meth:`~SecAggClient.unmask`.
Any inconsistency raises :class:`~trustspace.errors.ProtocolError` (or
:class:`~trustspace.errors.ThresholdError`) naming the stage; after an error the client
refuses to continue.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from trustspace.crypto import keyagreement as ka
from trustspace.crypto import prg, shamir
from trustspace.errors import CryptoError, DataError, ProtocolError, ThresholdError
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
    shares_associated_data,
)
from trustspace.secagg.stage import Stage

__all__ = ["SecAggClient", "mask_key", "seed_mask_key", "share_keys_for_pair"]

SEED_BYTES = 32  # the self-mask seed b_u: a 256-bit secret, Shamir-shared like the mask key


def seed_mask_key(seed: bytes, session_id: bytes, owner: int) -> bytes:
    """The AES-128 key of the self mask of ``owner`` from its 32-byte seed."""
    return ka.derive_key(seed, b"self-mask", session_id, owner, owner, prg.KEY_BYTES)


def mask_key(shared: bytes, session_id: bytes, a: int, b: int) -> bytes:
    """The AES-128 key of the pairwise mask of clients ``a`` and ``b`` (order-independent)."""
    lo, hi = min(a, b), max(a, b)
    return ka.derive_key(shared, b"pair-mask", session_id, lo, hi, prg.KEY_BYTES)


def share_keys_for_pair(
    shared: bytes, session_id: bytes, me: int, peer: int
) -> tuple[bytes, bytes]:
    """The AES-256-GCM keys ``(me -> peer, peer -> me)`` for the encrypted shares.

    One HKDF output of 64 bytes per pair: the first half encrypts from the smaller id to the
    larger, the second half the other way, so the two directions never share a key.
    """
    lo, hi = min(me, peer), max(me, peer)
    both = ka.derive_key(shared, b"share-encryption", session_id, lo, hi, 64)
    return (both[:32], both[32:]) if me < peer else (both[32:], both[:32])


class SecAggClient:
    """One participant of one round. Create a fresh instance per round; never reuse one.

    Args:
        config: the round's public parameters (identical at every party).
        client_id: this node's id, one of ``config.client_ids``.
        rng: random bytes for keys, seeds and Shamir coefficients (``os.urandom``; a seeded
            generator only in tests).
        identity_signer: signs this client's :class:`AdvertiseKeys` with its long-term
            identity (e.g. the node's certificate key), binding the session keys to it.
        identity_verifier: ``(client_id, payload, signature) -> bool``; when given, every
            roster entry must carry a valid identity signature, so a malicious aggregator
            cannot substitute keys (the PKI assumption of Bonawitz et al.).

    Security: the client never reveals both the self-mask seed share and the mask-key share
    of the same peer, checks that the unmask request is consistent with the shares it
    received, and binds every message to the session id.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        identity_signer: Callable[[bytes], bytes] | None = None,
        identity_verifier: Callable[[int, bytes, bytes], bool] | None = None,
    ) -> None:
        if client_id not in config.members:
            raise ProtocolError(
                f"client {client_id} is not a participant of this round "
                f"({config.n} clients configured)"
            )
        self.config = config
        self.client_id = client_id
        self._rng = rng
        self._stage = Stage.ADVERTISE
        self._cipher_sk = b""
        self._mask_sk = b""
        self._own: AdvertiseKeys | None = None
        self._roster: dict[int, AdvertiseKeys] = {}
        self._seed = b""
        self._own_seed_share = b""
        self._own_key_share = b""
        self._peers: dict[int, tuple[bytes, bytes]] = {}  # peer -> (seed share, key share)
        self._cipher_secrets: dict[int, bytes] = {}  # neighbour -> key of its shares to us
        self._identity_signer = identity_signer
        self._identity_verifier = identity_verifier
        self._sign_sk = b""
        self._sign_keys: dict[int, bytes] = {}  # roster member -> Ed25519 key (consistency)
        self._signed: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def stage(self) -> Stage:
        """The next stage this client expects (``Stage.DONE`` after the last one)."""
        return self._stage

    def _enter(self, stage: Stage) -> None:
        if self._stage != stage:
            raise ProtocolError(
                f"client {self.client_id}: stage '{stage}' called while expecting "
                f"'{self._stage}'; each stage runs once, in order"
            )
        self._stage = Stage.FAILED  # restored on success; an exception leaves the client unusable

    def _check_session(self, stage: str, what: str, session_id: bytes) -> None:
        if session_id != self.config.session_id:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: {what} belongs to another session "
                "(replayed or misrouted message); aborting"
            )

    def advertise(self) -> AdvertiseKeys:
        """Stage 1: generate this round's two X25519 key pairs and publish the public keys."""
        self._enter(Stage.ADVERTISE)
        self._cipher_sk, cipher_pk = ka.generate_keypair(self._rng)
        self._mask_sk, mask_pk = ka.generate_keypair(self._rng)
        sign_pk = b""
        if self.config.consistency_check:
            self._sign_sk, sign_pk = ka.signing_keypair(self._rng)
        own = AdvertiseKeys(self.config.session_id, self.client_id, cipher_pk, mask_pk, sign_pk)
        if self._identity_signer is not None:
            own = replace(own, identity_sig=self._identity_signer(own.signed_payload()))
        self._own = own
        self._stage = Stage.SHARE_KEYS
        return self._own

    def share_keys(self, roster: Mapping[int, AdvertiseKeys]) -> dict[int, EncryptedShares]:
        """Stage 2: Shamir-share the self-mask seed and mask key among the live neighbours.

        Args:
            roster: every client's :class:`AdvertiseKeys` as forwarded by the aggregator.

        Returns:
            ``{recipient: EncryptedShares}`` for each neighbour present in the roster.

        Raises:
            ProtocolError: on a foreign session, a mislabelled or duplicated key, or a roster
                that alters this client's own keys.
            ThresholdError: if fewer than t share holders (neighbours + self) are present.
        """
        stage = Stage.SHARE_KEYS
        self._enter(stage)
        cfg = self.config
        seen_keys: set[bytes] = set()
        for cid, msg in roster.items():
            if not isinstance(msg, AdvertiseKeys):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: roster entry {cid} is not "
                    "AdvertiseKeys"
                )
            self._check_session(stage, f"roster entry of client {cid}", msg.session_id)
            if msg.sender != cid or cid not in cfg.members:
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: roster entry {cid} is labelled "
                    f"as client {msg.sender} or is not a participant"
                )
            for key in (msg.cipher_pk, msg.mask_pk):
                if key in seen_keys:
                    raise ProtocolError(
                        f"client {self.client_id}, stage {stage}: public key of client {cid} "
                        "appears twice in the roster (reflected or copied key); aborting"
                    )
                seen_keys.add(key)
        for cid, msg in roster.items():
            if self._identity_verifier is not None and not self._identity_verifier(
                cid, msg.signed_payload(), msg.identity_sig
            ):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: the keys of client {cid} are not "
                    "signed by its identity (substituted by the aggregator?); aborting"
                )
            if self.config.consistency_check and len(msg.sign_pk) != 32:
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: client {cid} advertised no "
                    "signing key but the round has a consistency check; aborting"
                )
        self._sign_keys = {cid: msg.sign_pk for cid, msg in roster.items()}
        if roster.get(self.client_id) != self._own:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: the roster omits or alters this "
                "client's own keys; aborting"
            )
        neighbours = sorted(cfg.neighbors_of(self.client_id) & roster.keys())
        holders = len(neighbours) + 1
        if holders < cfg.t:
            raise ThresholdError(
                f"stage {stage}: client {self.client_id} has {holders} share holders "
                f"(itself and {len(neighbours)} live neighbours), threshold t={cfg.t}; aborting"
            )
        self._roster = {c: roster[c] for c in neighbours}
        self._seed = self._rng(SEED_BYTES)
        xs = [*neighbours, self.client_id]
        seed_shares = shamir.split(self._seed, cfg.t, xs, self._rng)
        key_shares = shamir.split(self._mask_sk, cfg.t, xs, self._rng)
        self._own_seed_share = seed_shares[self.client_id]
        self._own_key_share = key_shares[self.client_id]
        secrets = ka.exchange_many(self._cipher_sk, [roster[c].cipher_pk for c in neighbours])
        out: dict[int, EncryptedShares] = {}
        for peer, shared in zip(neighbours, secrets, strict=True):
            key, incoming = share_keys_for_pair(shared, cfg.session_id, self.client_id, peer)
            self._cipher_secrets[peer] = incoming  # decrypts this peer's shares next stage
            ad = shares_associated_data(cfg.session_id, self.client_id, peer)
            sealed = ka.aead_encrypt(key, seed_shares[peer] + key_shares[peer], ad, self._rng)
            out[peer] = EncryptedShares(cfg.session_id, self.client_id, peer, sealed)
        self._stage = Stage.MASKED_INPUT
        return out

    def masked_input(
        self, vector: np.ndarray[Any, Any], received: Mapping[int, EncryptedShares]
    ) -> MaskedInput:
        """Stage 3: decrypt the peers' shares and send ``vector`` under all masks.

        Args:
            vector: 1-D integer array of ``config.vector_length`` elements; it is reduced
                modulo ``2**config.modulus_bits`` (floats: use :class:`FixedPointEncoder`).
            received: ``{sender: EncryptedShares}`` addressed to this client.

        Raises:
            DataError: for a vector of the wrong shape or a non-integer dtype.
            ProtocolError: for shares from non-neighbours, another session or that fail to
                decrypt.
            ThresholdError: if fewer than t share holders remain.
        """
        stage = Stage.MASKED_INPUT
        cfg = self.config
        arr = np.asarray(vector)
        if arr.ndim != 1 or arr.shape[0] != cfg.vector_length:
            raise DataError(
                f"client {self.client_id}, stage {stage}: input must be a 1-D vector of "
                f"{cfg.vector_length} integers, got shape {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise DataError(
                f"client {self.client_id}, stage {stage}: input dtype {arr.dtype} is not an "
                "integer type; encode floats with FixedPointEncoder first"
            )
        self._enter(stage)  # after the input checks, so a node can fix its input and retry
        for sender, msg in received.items():
            if not isinstance(msg, EncryptedShares):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: entry {sender} is not EncryptedShares"
                )
            self._check_session(stage, f"shares from client {sender}", msg.session_id)
            if (
                sender not in self._roster
                or msg.sender != sender
                or msg.recipient != self.client_id
            ):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: unexpected shares labelled "
                    f"{msg.sender}->{msg.recipient} (routed as from {sender}); only live "
                    "neighbours may send shares to this client"
                )
        peers: dict[int, tuple[bytes, bytes]] = {}
        for sender, msg in received.items():
            key = self._cipher_secrets[sender]
            try:
                plain = ka.aead_decrypt(key, msg.sealed, msg.associated_data())
            except CryptoError:
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: shares from client {sender} "
                    "failed authentication (tampered, misaddressed or from another session)"
                ) from None
            peers[sender] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        holders = len(peers) + 1
        if holders < cfg.t:
            raise ThresholdError(
                f"stage {stage}: client {self.client_id} received shares from {len(peers)} "
                f"neighbours ({holders} holders with itself), threshold t={cfg.t}; aborting"
            )
        self._peers = peers
        dtype = prg.dtype_for(cfg.modulus_bits)
        acc = np.ascontiguousarray(arr.astype(dtype, copy=True))
        add = [seed_mask_key(self._seed, cfg.session_id, self.client_id)]
        sub: list[bytes] = []
        pair_secrets = ka.exchange_many(self._mask_sk, [self._roster[p].mask_pk for p in peers])
        for peer, shared in zip(peers, pair_secrets, strict=True):
            k = mask_key(shared, cfg.session_id, self.client_id, peer)
            (add if self.client_id < peer else sub).append(k)
        prg.apply_masks(acc, add, sub)
        # secrets no longer needed: drop them (only the shares held for others remain)
        self._cipher_secrets, self._seed, self._mask_sk, self._cipher_sk = {}, b"", b"", b""
        self._stage = Stage.CONSISTENCY if cfg.consistency_check else Stage.UNMASK
        return MaskedInput(
            cfg.session_id,
            self.client_id,
            cfg.modulus_bits,
            acc.astype(f"<u{cfg.modulus_bits // 8}", copy=False).tobytes(),
        )

    def _check_request(self, stage: str, request: UnmaskRequest) -> tuple[set[int], set[int]]:
        """The checks an unmask request must pass before this client acts on it."""
        cfg = self.config
        if not isinstance(request, UnmaskRequest):
            raise ProtocolError(f"client {self.client_id}, stage {stage}: expected UnmaskRequest")
        self._check_session(stage, "unmask request", request.session_id)
        survivors = set(request.survivors)
        dropped = set(request.dropped)
        if survivors & dropped:  # also refused by UnmaskRequest itself; never rely on one check
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: survivor and dropped sets overlap"
            )
        unknown = (survivors | dropped) - cfg.members
        if unknown:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: request names non-participants "
                f"{sorted(unknown)[:5]}"
            )
        if self.client_id not in survivors:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: the request does not list this client "
                "as a survivor although it sent its masked input; refusing to reveal key shares"
            )
        if len(survivors) < cfg.t:
            raise ThresholdError(
                f"stage {stage}: {len(survivors)} survivors listed, threshold t={cfg.t}; aborting"
            )
        for peer in self._peers:
            if (peer in survivors) == (peer in dropped):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: peer {peer} sent shares to this "
                    "client but is listed as neither or both survivor and dropped; aborting"
                )
        strangers = (survivors | dropped) & (set(self._roster) - set(self._peers))
        if strangers:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: neighbours {sorted(strangers)[:5]} are "
                "listed but never sent shares to this client; aborting"
            )
        return survivors, dropped

    def consistency(self, request: UnmaskRequest) -> SurvivorSignature:
        """Optional consistency round: check the survivor list and sign it (Ed25519).

        Only when ``config.consistency_check``. The client signs one list per round; at the
        unmask stage it acts only on that same list, signed by at least t survivors.

        Raises:
            ProtocolError, ThresholdError: as :meth:`unmask` for an inconsistent request.
        """
        stage = Stage.CONSISTENCY
        self._enter(stage)
        self._check_request(stage, request)
        self._signed = (request.survivors, request.dropped)
        signature = ka.sign(self._sign_sk, request.signed_payload())
        self._sign_sk = b""
        self._stage = Stage.UNMASK
        return SurvivorSignature(self.config.session_id, self.client_id, signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 4: reveal seed shares of survivors and key shares of dropped clients.

        Raises:
            ProtocolError: if the request is for another session, lists a client as both
                survivor and dropped, omits or misclassifies a peer that sent this client
                shares, lists this client as dropped, or is called a second time; with the
                consistency round, if the lists differ from the signed ones or carry an
                invalid signature.
            ThresholdError: if fewer than t survivors are listed (or, with the consistency
                round, fewer than t valid survivor signatures).
        """
        stage = Stage.UNMASK
        self._enter(stage)
        cfg = self.config
        survivors, dropped = self._check_request(stage, request)
        if cfg.consistency_check:
            self._check_signatures(stage, request, survivors)
        seed = [(self.client_id, self._own_seed_share)]
        seed += [(p, self._peers[p][0]) for p in self._peers if p in survivors]
        keys = [(p, self._peers[p][1]) for p in self._peers if p in dropped]
        self._stage = Stage.DONE
        return UnmaskShares(
            cfg.session_id, self.client_id, tuple(sorted(seed)), tuple(sorted(keys))
        )

    def _check_signatures(self, stage: str, request: UnmaskRequest, survivors: set[int]) -> None:
        if (request.survivors, request.dropped) != self._signed:
            raise ProtocolError(
                f"client {self.client_id}, stage {stage}: the unmask lists differ from the "
                "survivor list this client signed; refusing (split view)"
            )
        payload = request.signed_payload()
        valid = 0
        for signer, sig in request.signatures:
            key = self._sign_keys.get(signer)
            if signer not in survivors or key is None or not ka.verify(key, sig, payload):
                raise ProtocolError(
                    f"client {self.client_id}, stage {stage}: invalid survivor-list signature "
                    f"attributed to client {signer}; aborting"
                )
            valid += 1
            if valid >= self.config.t:
                return
        raise ThresholdError(
            f"stage {stage}: {valid} valid survivor-list signatures, threshold "
            f"t={self.config.t}; aborting"
        )
