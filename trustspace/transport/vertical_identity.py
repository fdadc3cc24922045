"""A node's certificate identity for the vertical channels (``trustspace.vertical.channel``).

The channel is a protocol layer and does not read certificates itself (as ``secagg`` does
not); ``hello_identity(creds)`` gives it what it needs from this node's ``Credentials``:
its name and certificate, signing with its key under the channel's domain, and checking a
peer's certificate against our CA (valid now, the role asked for, the signature verifies)
with ``ca.verify_blob``. Revocation is checked by the channel with the node's own
``revocation.Revocations.check``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustspace.errors import ConfigError
from trustspace.transport.ca import Credentials, sign_blob, verify_blob

__all__ = ["CertHelloIdentity", "hello_identity"]


@dataclass(frozen=True, repr=False)
class CertHelloIdentity:
    """``HelloIdentity`` over a node's ``Credentials`` (``repr`` never shows the key)."""

    creds: Credentials

    @property
    def name(self) -> str:
        return self.creds.name

    @property
    def cert_pem(self) -> bytes:
        return self.creds.cert_pem

    def sign(self, blob: bytes, *, domain: bytes) -> bytes:
        return sign_blob(self.creds, blob, domain=domain)

    def verify(
        self,
        cert_pem: bytes,
        blob: bytes,
        signature: bytes,
        *,
        domain: bytes,
        role: str,
        where: str,
    ) -> str:
        ident = verify_blob(
            self.creds.ca_pem, cert_pem, blob, signature, role=role, where=where, domain=domain
        )
        return ident.name

    def __repr__(self) -> str:
        return f"CertHelloIdentity({self.creds.identity})"


def hello_identity(creds: Credentials) -> CertHelloIdentity:
    """The channel identity of a node; refuses credentials of another role."""
    if creds.role != "node":
        raise ConfigError(
            f"{creds.identity}: only a node takes part in vertical sessions (role {creds.role!r})"
        )
    return CertHelloIdentity(creds)
