"""Signed audit checkpoints: a node's statement "my audit log had N lines ending in HEAD at T".

A node signs a ``Checkpoint`` (node name, line count, chain head hash, UTC time) with its
certificate key at every answer it gives (the trailing gRPC metadata ``CHECKPOINT_KEY``
carries an ``AuditCheckpoint`` message) and keeps the latest one beside its log. The
aggregator witnesses every checkpoint it receives. A log shorter than a checkpoint, or with
another hash at the checkpointed line, has had its tail cut or been rewritten: the hash chain
alone cannot show that, since it is unkeyed and a shorter or recomputed chain is still valid.

The signed bytes are ``DOMAIN`` followed by the canonical JSON (sorted keys, compact, ASCII)
of the four fields, so a checkpoint signature can never be taken for a key advert or a query.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trustspace.errors import AuthenticationError, ConfigError
from trustspace.proto.v1 import common_pb2
from trustspace.transport.ca import (
    Credentials,
    Identity,
    check_validity,
    identity_of,
    sign_blob,
    verify_blob,
)
from trustspace.transport.signing import canonical_json

__all__ = [
    "CHECKPOINT_KEY",
    "DOMAIN",
    "Checkpoint",
    "CheckpointVerifier",
    "SignedCheckpoint",
    "sign_checkpoint",
    "verify_checkpoint",
]

CHECKPOINT_KEY = "trustspace-checkpoint-bin"  # trailing metadata of every node answer
DOMAIN = b"trustspace/audit/checkpoint/v1\x00"  # separates checkpoints from other signatures
_HEAD = re.compile(r"^[0-9a-f]{64}$")
_MAX_NAME = 256
_MAX_SIGNATURE = 256  # a DER ECDSA P-256 signature is at most 72 bytes
_MAX_CERT = 16 * 1024
_VERIFIER_CACHE = 64  # certificates remembered by one verifier (one per node, plus renewals)


@dataclass(frozen=True)
class Checkpoint:
    """What a node signs: its ``lines`` count and chain ``head`` at ``time`` (UTC, ISO 8601).

    Raises:
        ConfigError: a field is out of range (empty node, negative count, head not 64 hex).
    """

    node: str
    lines: int
    head: str
    time: str

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not 0 < len(self.node) <= _MAX_NAME:
            raise ConfigError(f"checkpoint node name {self.node!r}: must be 1-256 characters")
        if isinstance(self.lines, bool) or not isinstance(self.lines, int) or self.lines < 0:
            raise ConfigError(f"checkpoint of {self.node}: lines {self.lines!r} must be >= 0")
        if not isinstance(self.head, str) or not _HEAD.match(self.head):
            raise ConfigError(f"checkpoint of {self.node}: head must be 64 hex digits")
        if not isinstance(self.time, str) or not self.time:
            raise ConfigError(f"checkpoint of {self.node}: time is missing")
        try:
            dt.datetime.fromisoformat(self.time)
        except ValueError:
            raise ConfigError(
                f"checkpoint of {self.node}: time {self.time!r} is not ISO 8601"
            ) from None

    def canonical(self) -> bytes:
        """The signed encoding (without ``DOMAIN``)."""
        return canonical_json(
            {"head": self.head, "lines": self.lines, "node": self.node, "time": self.time}
        )

    def describe(self) -> str:
        """``node n1's checkpoint of 2024-...: 12 lines, head ab12...`` for messages."""
        return (
            f"the checkpoint signed by node {self.node} at {self.time} "
            f"({self.lines} lines, head {self.head[:16]}...)"
        )


@dataclass(frozen=True)
class SignedCheckpoint:
    """A ``Checkpoint`` with the node's ``signature`` and certificate (``cert_pem``)."""

    checkpoint: Checkpoint
    signature: bytes
    cert_pem: bytes

    def to_proto(self) -> common_pb2.AuditCheckpoint:
        c = self.checkpoint
        return common_pb2.AuditCheckpoint(
            node=c.node,
            lines=c.lines,
            head=c.head,
            time=c.time,
            signature=self.signature,
            cert=self.cert_pem,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.AuditCheckpoint) -> SignedCheckpoint:
        """Raises ``ConfigError`` if a field is out of range or too large."""
        if len(msg.signature) > _MAX_SIGNATURE or len(msg.cert) > _MAX_CERT:
            raise ConfigError("checkpoint signature or certificate too large")
        cp = Checkpoint(msg.node, int(msg.lines), msg.head, msg.time)
        return cls(cp, bytes(msg.signature), bytes(msg.cert))

    @classmethod
    def from_bytes(cls, raw: bytes) -> SignedCheckpoint:
        """Parse a serialized ``AuditCheckpoint``; raises ``ConfigError`` if it is not one."""
        msg = common_pb2.AuditCheckpoint()
        try:
            msg.ParseFromString(raw)
        except Exception:
            raise ConfigError(f"not an AuditCheckpoint message ({len(raw)} bytes)") from None
        return cls.from_proto(msg)

    def to_json(self) -> dict[str, Any]:
        """The form kept in ``LOG.checkpoint`` (signature base64, certificate PEM text)."""
        c = self.checkpoint
        return {
            "node": c.node,
            "lines": c.lines,
            "head": c.head,
            "time": c.time,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "cert": self.cert_pem.decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any) -> SignedCheckpoint:
        """Raises ``ConfigError`` naming the bad or missing field."""
        if not isinstance(data, dict):
            raise ConfigError("a checkpoint must be a JSON object")
        for key in ("node", "lines", "head", "time", "signature", "cert"):
            if key not in data:
                raise ConfigError(f"checkpoint lacks the field {key!r}")
        if not isinstance(data["signature"], str) or not isinstance(data["cert"], str):
            raise ConfigError("checkpoint signature and cert must be strings")
        try:
            sig = base64.b64decode(data["signature"], validate=True)
        except ValueError:
            raise ConfigError("checkpoint signature is not base64") from None
        cp = Checkpoint(data["node"], data["lines"], data["head"], data["time"])
        return cls(cp, sig, data["cert"].encode("ascii"))


def sign_checkpoint(creds: Credentials, checkpoint: Checkpoint) -> SignedCheckpoint:
    """Sign ``checkpoint`` with the node's certificate key (one ECDSA signature, ~0.1 ms).

    Raises:
        ConfigError: ``checkpoint.node`` is not the name in ``creds``' certificate.
    """
    if checkpoint.node != creds.name:
        raise ConfigError(f"{creds.identity} cannot sign a checkpoint for node {checkpoint.node}")
    sig = sign_blob(creds, checkpoint.canonical(), domain=DOMAIN)
    return SignedCheckpoint(checkpoint, sig, creds.cert_pem)


def verify_checkpoint(
    ca_pem: bytes, signed: SignedCheckpoint, *, node: str | None = None, where: str
) -> Checkpoint:
    """Check that a node certificate of the CA ``ca_pem`` named ``checkpoint.node`` (and
    ``node``, if given) signed ``signed``; returns the checkpoint.

    Raises:
        AuthenticationError: naming ``where``: another CA, not a node, another node's name,
            or a signature that does not verify.
    """
    cp = signed.checkpoint
    ident = verify_blob(
        ca_pem,
        signed.cert_pem,
        cp.canonical(),
        signed.signature,
        role="node",
        where=where,
        domain=DOMAIN,
    )
    _check_names(ident, cp, node, where)
    return cp


def _check_names(ident: Identity, cp: Checkpoint, node: str | None, where: str) -> None:
    if ident.name != cp.node:
        raise AuthenticationError(
            f"{where}: checkpoint for node {cp.node!r} is signed by {ident}, not by that node"
        )
    if node is not None and cp.node != node:
        raise AuthenticationError(
            f"{where}: node {node} sent a checkpoint of node {cp.node!r} (signed by {ident})"
        )


class CheckpointVerifier:
    """``verify_checkpoint`` for a stream of checkpoints: each certificate is checked against
    the CA once (then only its validity period and the signature), so a witness spends about
    one ECDSA verification per answer. Thread-safe (the cache is replaced, never mutated in
    place while read); it holds at most ``_VERIFIER_CACHE`` certificates."""

    def __init__(self, ca_pem: bytes) -> None:
        self._ca_pem = ca_pem
        self._known: dict[bytes, tuple[x509.Certificate, Identity, ec.EllipticCurvePublicKey]] = {}

    def verify(self, signed: SignedCheckpoint, *, node: str | None, where: str) -> Checkpoint:
        """As ``verify_checkpoint``; raises ``AuthenticationError`` naming ``where``."""
        key = hashlib.sha256(signed.cert_pem).digest()
        known = self._known.get(key)
        if known is None:
            cp = verify_checkpoint(self._ca_pem, signed, node=node, where=where)
            cert = x509.load_pem_x509_certificate(signed.cert_pem)
            pub = cert.public_key()
            if not isinstance(pub, ec.EllipticCurvePublicKey):  # verify_blob checked it
                raise AuthenticationError(f"{where}: the signer has no EC key")
            cache = {} if len(self._known) >= _VERIFIER_CACHE else dict(self._known)
            cache[key] = (cert, identity_of(cert), pub)
            self._known = cache
            return cp
        cert, ident, pub = known
        cp = signed.checkpoint
        check_validity(cert, where)
        try:
            pub.verify(signed.signature, DOMAIN + cp.canonical(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise AuthenticationError(f"{where}: signature of {ident} does not verify") from None
        _check_names(ident, cp, node, where)
        return cp
