"""X25519 key agreement on raw 32-byte keys, HKDF-SHA256 with domain separation, AES-GCM.

Hazmat tier. Keys cross process boundaries as raw 32-byte strings (RFC 7748), never PEM.
:func:`derive_key` binds every derived key to a purpose label, the session id and the ordered
pair of parties, so a key computed for one session, stage or pair is useless in another.

>>> sk_a, pk_a = generate_keypair()
>>> sk_b, pk_b = generate_keypair()
>>> exchange(sk_a, pk_b) == exchange(sk_b, pk_a)
True
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trustspace.errors import CryptoError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "aead_decrypt",
    "aead_encrypt",
    "derive_key",
    "exchange",
    "exchange_many",
    "generate_keypair",
    "public_key",
    "sign",
    "signing_keypair",
    "verify",
]

KEY_BYTES = 32  # X25519 private and public keys, RFC 7748
NONCE_BYTES = 12  # AES-GCM nonce (96 bits, NIST SP 800-38D recommendation)
_DOMAIN = b"trustspace/v1/"


def generate_keypair(rng: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """Return a fresh ``(private, public)`` X25519 key pair as raw 32-byte strings.

    ``rng`` supplies the 32 private-key bytes (clamped by X25519 itself); keep the default
    except in tests that need reproducible keys.
    """
    sk = X25519PrivateKey.from_private_bytes(rng(KEY_BYTES))
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_key(private: bytes) -> bytes:
    """Return the raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def exchange(private: bytes, peer_public: bytes) -> bytes:
    """Return the raw X25519 shared secret; raise CryptoError for a low-order peer key."""
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
        return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # all-zero shared secret (small-order point) or malformed key: refuse, opaquely
        raise CryptoError("X25519 key agreement failed") from None


def exchange_many(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """:func:`exchange` with one private key against many peers (parses the key once)."""
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
        return [sk.exchange(X25519PublicKey.from_public_bytes(pk)) for pk in peer_publics]
    except ValueError:
        raise CryptoError("X25519 key agreement failed") from None


def signing_keypair(rng: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """Return a fresh Ed25519 ``(private, public)`` key pair (RFC 8032) as raw 32-byte strings."""
    sk = Ed25519PrivateKey.from_private_bytes(rng(KEY_BYTES))
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def sign(private: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message`` under a raw private key."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` under ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def derive_key(
    secret: bytes, purpose: bytes, session_id: bytes, first: int, second: int, length: int
) -> bytes:
    """HKDF-SHA256 of ``secret`` with info = domain | purpose | session id | first | second.

    The parties are encoded as 8-byte big-endian integers and the purpose and session id are
    length-prefixed, so the info string is injective. Pass ``first < second`` for a key shared
    by a pair (masks) and ``(sender, receiver)`` for a directional key (encryption).
    """
    info = b"".join(
        (
            _DOMAIN,
            struct.pack(">B", len(purpose)),
            purpose,
            struct.pack(">B", len(session_id)),
            session_id,
            struct.pack(">QQ", first, second),
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def aead_encrypt(
    key: bytes, plaintext: bytes, associated_data: bytes, rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """AES-GCM encrypt; return ``nonce | ciphertext | tag``. The key must be 16, 24 or 32 bytes."""
    nonce = rng(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """AES-GCM decrypt ``nonce | ciphertext | tag``; raise CryptoError (opaque) on any failure."""
    if len(sealed) < NONCE_BYTES + 16:
        raise CryptoError("decryption failed")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise CryptoError("decryption failed") from None
