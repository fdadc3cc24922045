"""Signed queries: the analyst signs what it asks, and every node checks that signature itself.

A node trusts no other party's description of a computation. The analyst's client signs a
canonical encoding of the query (``QueryBody``: dataset, operation, columns, filter,
parameters, method, the Paillier key's fingerprint where one is used, purpose, request id,
issue time, expiry and audience, the data space's name) with its certificate's private key.
The aggregator forwards the ``SignedQuery`` unchanged; each node verifies it with
``verify_query``: the certificate is from the data space CA, has role ``analyst``, is valid
now and is not on the node's own revocation list; the signature covers the body; the body is
canonical, names that certificate's analyst, is addressed to this data space and has not
expired. Replays (a request id seen before with another body) are the node's to refuse.

Security notes: ECDSA P-256 with SHA-256 (128-bit security, NIST SP 800-57), domain-separated
from the other signatures of the data space (``DOMAIN``); the body is canonical JSON so it has
exactly one valid encoding (a re-encoded body is refused, not normalised); verification
failures name what failed (expired, wrong audience, not signed by the certificate) but carry
no data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustspace.errors import AuthenticationError, ConfigError, ProtocolError
from trustspace.transport.ca import (
    Credentials,
    Identity,
    check_issued_by,
    check_validity,
    identity_of,
    revocation_check,
)

__all__ = [
    "CLOCK_SKEW_S",
    "DEFAULT_LIFETIME_S",
    "DOMAIN",
    "MAX_BODY_BYTES",
    "MAX_LIFETIME_S",
    "METHODS",
    "QueryBody",
    "SignedQuery",
    "VerifiedQuery",
    "canonical_json",
    "data_space_name",
    "new_query",
    "sign_query",
    "verify_query",
]

DOMAIN = b"trustspace/query/v1\x00"  # separates query signatures from every other signature
VERSION = 1
#: How long a signed query may be used at most (its expiry minus its issue time). A Paillier
#: query over a large dataset may run for hours; a longer window only widens replay windows.
MAX_LIFETIME_S = 24 * 3600.0
DEFAULT_LIFETIME_S = 3600.0  # the client's default: one hour from signing
CLOCK_SKEW_S = 300.0  # tolerated difference between the analyst's and a node's clock
#: Largest body a node parses (an anonymization spec carries its hierarchies; those are capped
#: by ``trustspace.anon`` long before this).
MAX_BODY_BYTES = 8 * 1024 * 1024
METHODS = ("secagg", "paillier")
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")  # 128 random bits, hex
_FINGERPRINT = re.compile(r"^[0-9a-f]{16,64}$")


def canonical_json(obj: Any) -> bytes:
    """The one encoding of a JSON value: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def data_space_name(ca_pem: bytes) -> str:
    """The data space's name: its CA's common name and the start of the CA's fingerprint.

    Every party derives it from the CA certificate it already trusts, so no configuration can
    disagree, and two data spaces whose CAs share a name still have different names.
    """
    ca = x509.load_pem_x509_certificate(ca_pem)
    cns = ca.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else "ca"
    fp = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    return f"{cn}/{fp}"


def _text(value: Any, key: str, *, optional: bool = False, limit: int = 256) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"signed query '{key}': expected a string of 1 to {limit} characters")
    return value


def _time(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"signed query '{key}': expected a time in seconds since 1970")
    return float(value)


@dataclass(frozen=True)
class QueryBody:
    """What an analyst asks, as it signs it (see the module docstring).

    ``operation`` is a statistic (``trustspace.stats.OPS``), ``"anonymize"`` (``params`` then
    holds ``{"spec": AnonSpec.to_dict(), "release": ...}``) or ``"status"``; ``columns``,
    ``where`` and ``params`` are the statistic's (``trustspace.stats.Query``). ``paillier_key``
    is the fingerprint of the public key the nodes may encrypt under (``method="paillier"``).
    """

    analyst: str
    audience: str
    request_id: str
    issued_at: float
    expires_at: float
    operation: str
    dataset: str = ""
    columns: tuple[str, ...] = ()
    where: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    method: str = "secagg"
    paillier_key: str | None = None
    purpose: str | None = None
    #: differential privacy asked for: ``{"epsilon": e, "delta": d}``, or None for exact
    dp: Mapping[str, float] | None = None
    #: a statistic over a vertical view (``trustspace.vertical.view.ViewRef.to_dict()``): the
    #: view's id, nodes and each node's schema; None for a horizontal query (and then absent
    #: from the canonical body, so earlier bodies and signatures are unchanged)
    view: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not _REQUEST_ID.match(self.request_id):
            raise ProtocolError("signed query 'request_id': expected 32 hex digits (128 bits)")
        if self.method not in METHODS:
            raise ProtocolError(f"signed query 'method': {self.method!r} is not one of {METHODS}")
        if (self.method == "paillier") != (self.paillier_key is not None):
            raise ProtocolError(
                "signed query 'paillier_key': a Paillier query signs its key's fingerprint, "
                "other queries none"
            )
        if self.paillier_key is not None and not _FINGERPRINT.match(self.paillier_key):
            raise ProtocolError("signed query 'paillier_key': expected a hex fingerprint")
        if not self.expires_at > self.issued_at:
            raise ProtocolError("signed query: it expires before it was issued")
        if self.expires_at - self.issued_at > MAX_LIFETIME_S:
            raise ProtocolError(
                f"signed query: valid for {self.expires_at - self.issued_at:.0f} s, more than "
                f"the {MAX_LIFETIME_S:.0f} s allowed; sign a new query per task"
            )
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if self.dp is not None:
            if not isinstance(self.dp, Mapping) or set(self.dp) != {"epsilon", "delta"}:
                raise ProtocolError("signed query 'dp': expected {epsilon, delta}")
            for k, v in self.dp.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ProtocolError(f"signed query 'dp.{k}': expected a finite number")
            object.__setattr__(self, "dp", MappingProxyType(dict(self.dp)))
        if self.view is not None:
            if not isinstance(self.view, Mapping):
                raise ProtocolError("signed query 'view': expected an object")
            object.__setattr__(self, "view", MappingProxyType(dict(self.view)))

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.expires_at, dt.UTC)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "v": VERSION,
            "analyst": self.analyst,
            "audience": self.audience,
            "request_id": self.request_id,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "operation": self.operation,
            "dataset": self.dataset,
            "columns": list(self.columns),
            "where": self.where,
            "params": json.loads(json.dumps(dict(self.params))),
            "method": self.method,
            "paillier_key": self.paillier_key,
            "purpose": self.purpose,
            "dp": None if self.dp is None else dict(self.dp),
        }
        if self.view is not None:
            out["view"] = json.loads(json.dumps(dict(self.view)))
        return out

    @classmethod
    def from_dict(cls, data: Any) -> QueryBody:
        """Parse a body strictly: ``ProtocolError`` naming an unknown, missing or bad key."""
        if not isinstance(data, dict):
            raise ProtocolError("signed query: the body is not a JSON object")
        if set(data) - {"view"} != _KEYS:
            extra, missing = sorted(set(data) - _KEYS - {"view"}), sorted(_KEYS - set(data))
            raise ProtocolError(f"signed query: unknown key(s) {extra} / missing key(s) {missing}")
        if data["v"] != VERSION:
            raise ProtocolError(f"signed query: version {data['v']!r} is not {VERSION}")
        cols = data["columns"]
        if not isinstance(cols, list) or not all(isinstance(c, str) and c for c in cols):
            raise ProtocolError("signed query 'columns': expected a list of column names")
        if not isinstance(data["params"], dict):
            raise ProtocolError("signed query 'params': expected an object")
        if not isinstance(data["dataset"], str):
            raise ProtocolError("signed query 'dataset': expected a string")
        where = data["where"]
        if where is not None and not isinstance(where, str):
            raise ProtocolError("signed query 'where': expected a filter string or null")
        return cls(
            analyst=str(_text(data["analyst"], "analyst")),
            audience=str(_text(data["audience"], "audience")),
            request_id=str(_text(data["request_id"], "request_id")),
            issued_at=_time(data["issued_at"], "issued_at"),
            expires_at=_time(data["expires_at"], "expires_at"),
            operation=str(_text(data["operation"], "operation", limit=64)),
            dataset=data["dataset"],
            columns=tuple(cols),
            where=where,
            params=data["params"],
            method=str(_text(data["method"], "method", limit=16)),
            paillier_key=_text(data["paillier_key"], "paillier_key", optional=True),
            purpose=_text(data["purpose"], "purpose", optional=True, limit=200),
            dp=data["dp"],
            view=_view(data["view"]) if "view" in data else None,
        )


def _view(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("signed query 'view': expected an object")
    return value


_KEYS = frozenset(
    {
        "v",
        "analyst",
        "audience",
        "request_id",
        "issued_at",
        "expires_at",
        "operation",
        "dataset",
        "columns",
        "where",
        "params",
        "method",
        "paillier_key",
        "purpose",
        "dp",
    }
)


@dataclass(frozen=True)
class SignedQuery:
    """A ``QueryBody`` as the analyst signed it: the bytes that travel, unchanged, to every node.

    ``digest`` (SHA-256 of the body) names the query in audit lines and session bindings.
    """

    body: bytes
    signature: bytes
    certificate: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def signature_digest(self) -> str:
        return hashlib.sha256(self.signature).hexdigest()

    def unverified_body(self) -> QueryBody:
        """The body, parsed but NOT verified (for planning at the aggregator, never for trust)."""
        return _parse_body(self.body)


@dataclass(frozen=True)
class VerifiedQuery:
    """A signed query a node has verified: who signed it (``analyst``) and what it says."""

    signed: SignedQuery
    body: QueryBody
    analyst: Identity

    @property
    def digest(self) -> str:
        return self.signed.digest


def sign_query(creds: Credentials, body: QueryBody) -> SignedQuery:
    """Sign ``body`` with the analyst identity ``creds`` (its name must be ``body.analyst``).

    Raises:
        ConfigError: the credentials are not an analyst's, or name someone else.
    """
    if creds.role != "analyst":
        raise ConfigError(f"{creds.identity} cannot sign queries: only analyst certificates can")
    if creds.name != body.analyst:
        raise ConfigError(f"a query of {body.analyst!r} cannot be signed by {creds.name!r}")
    raw = canonical_json(body.to_dict())
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{creds.identity}: only EC keys can sign queries")
    signature = key.sign(DOMAIN + raw, ec.ECDSA(hashes.SHA256()))
    return SignedQuery(raw, signature, creds.cert_pem)


def new_query(
    creds: Credentials,
    operation: str,
    dataset: str = "",
    columns: Sequence[str] = (),
    where: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    method: str = "secagg",
    paillier_key: str | None = None,
    purpose: str | None = None,
    dp: Mapping[str, float] | None = None,
    view: Mapping[str, Any] | None = None,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    request_id: str | None = None,
    now: float | None = None,
) -> SignedQuery:
    """Sign a new query of the analyst ``creds``: a fresh 128-bit request id, issued now,
    expiring ``lifetime_s`` later, addressed to the data space of ``creds``'s CA."""
    t = time.time() if now is None else now
    body = QueryBody(
        analyst=creds.name,
        audience=data_space_name(creds.ca_pem),
        request_id=request_id or secrets.token_hex(16),
        issued_at=t,
        expires_at=t + lifetime_s,
        operation=operation,
        dataset=dataset,
        columns=tuple(columns),
        where=where,
        params=dict(params or {}),
        method=method,
        paillier_key=paillier_key,
        purpose=purpose,
        dp=dp,
        view=view,
    )
    return sign_query(creds, body)


def _parse_body(raw: bytes) -> QueryBody:
    if len(raw) > MAX_BODY_BYTES:
        raise ProtocolError(f"signed query: a {len(raw)}-byte body exceeds the limit")
    try:
        data = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProtocolError("signed query: the body is not canonical JSON") from None
    try:
        canonical = canonical_json(data)
    except ValueError:
        raise ProtocolError("signed query: the body is not canonical JSON") from None
    if canonical != raw:
        raise ProtocolError("signed query: the body is not in its canonical encoding")
    return QueryBody.from_dict(data)


def verify_query(
    signed: SignedQuery,
    *,
    ca_pem: bytes,
    audience: str,
    revoked: Sequence[str] | Callable[[bytes], str] = (),
    now: float | None = None,
    where: str,
) -> VerifiedQuery:
    """Verify ``signed`` as a node must before acting on it (see the module docstring).

    Args:
        ca_pem: the data space CA's certificate.
        audience: this data space's name (``data_space_name(ca_pem)``).
        revoked: this node's own deny list (names, ``serial:HEX``), or its checker
            (``revocation.Revocations.check``: why a certificate is revoked, "" if not).
        now: the current time (seconds since 1970; tests only).
        where: who verifies, for error messages (``"node org-a"``).

    Raises:
        AuthenticationError: the certificate or signature is refused (says which and why).
        ProtocolError: the body is malformed, for another data space, not yet valid or expired.
    """
    t = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(signed.certificate)
    except ValueError:
        raise AuthenticationError(f"{where}: the query's certificate is not PEM") from None
    check_issued_by(cert, ca, f"{where}: the query's certificate")
    check_validity(cert, f"{where}: the query's certificate", dt.datetime.fromtimestamp(t, dt.UTC))
    ident = identity_of(cert)
    if ident.role != "analyst":
        raise AuthenticationError(
            f"{where}: the query is signed by {ident}, not by an analyst certificate"
        )
    check = revoked if callable(revoked) else revocation_check(tuple(revoked))
    why = check(signed.certificate)
    if why:
        raise AuthenticationError(
            f"{where}: the query's signer {ident.name!r} is revoked here ({why})"
        )
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise AuthenticationError(f"{where}: {ident} has no EC key")
    try:
        pub.verify(signed.signature, DOMAIN + signed.body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AuthenticationError(
            f"{where}: the query's signature does not verify under {ident.name!r}'s certificate "
            "(altered in transit?)"
        ) from None
    body = _parse_body(signed.body)
    if body.analyst != ident.name:
        raise AuthenticationError(
            f"{where}: the query names analyst {body.analyst!r} but is signed by {ident.name!r}"
        )
    if body.audience != audience:
        raise ProtocolError(
            f"{where}: the query is addressed to data space {body.audience!r}, this is {audience!r}"
        )
    if body.issued_at > t + CLOCK_SKEW_S:
        raise ProtocolError(
            f"{where}: the query was issued in the future ({body.issued_at - t:.0f} s ahead); "
            "check the analyst's clock"
        )
    if body.expires_at <= t:
        raise ProtocolError(
            f"{where}: the query expired at {body.expires:%Y-%m-%d %H:%M:%S} UTC; run it again"
        )
    return VerifiedQuery(signed, body, ident)
