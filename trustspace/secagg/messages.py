"""The messages of the SecAgg+ protocol: frozen dataclasses with a strict canonical encoding.

Every message starts with a one-byte type tag, a one-byte format version and the session id
(one length byte, then the bytes); integers are big-endian, client ids are 8 bytes. Decoding
checks every length and the total size exactly, so each message has one encoding and any
malformed input raises :class:`~trustspace.errors.ProtocolError` naming the message type.

>>> msg = AdvertiseKeys(bytes(16), 7, bytes(32), bytes(range(32)))
>>> AdvertiseKeys.from_bytes(msg.to_bytes()) == msg
True
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from trustspace.crypto.shamir import SHARE_BYTES
from trustspace.errors import ProtocolError

__all__ = [
    "SEALED_SHARES_BYTES",
    "AdvertiseKeys",
    "EncryptedShares",
    "MaskedInput",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskShares",
]

VERSION = 1
MAX_CLIENT_ID = (1 << 63) - 1  # ids travel as 8 bytes and are Shamir x-coordinates
# nonce (12) + the two Shamir shares of the sender's seed and mask key (2 x 66) + GCM tag (16)
SEALED_SHARES_BYTES = 12 + 2 * SHARE_BYTES + 16
ED25519_SIGNATURE = 64  # RFC 8032
MAX_SIGNATURE = 1024  # identity signatures (ECDSA, Ed25519, RSA-4096 = 512 bytes) fit


class _Reader:
    """Strict cursor over a message's bytes; every failure names the message type."""

    def __init__(self, data: bytes, name: str, tag: int) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ProtocolError(f"{name}: expected bytes, got {type(data).__name__}")
        self.data = bytes(data)
        self.name = name
        self.pos = 0
        head = self.take(2, "header")
        if head[0] != tag:
            raise ProtocolError(f"{name}: wrong message type tag {head[0]} (expected {tag})")
        if head[1] != VERSION:
            raise ProtocolError(f"{name}: unsupported format version {head[1]}")

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ProtocolError(
                f"{self.name}: truncated at {what} (need {n} bytes at offset {self.pos}, "
                f"have {len(self.data) - self.pos})"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(">Q", self.take(8, what))[0]
        return value

    def session(self) -> bytes:
        return self.take(self.u8("session id length"), "session id")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(
                f"{self.name}: {len(self.data) - self.pos} trailing bytes after the message"
            )


def _header(tag: int, session_id: bytes) -> bytes:
    return bytes((tag, VERSION, len(session_id))) + session_id


def _check_session(name: str, session_id: bytes) -> None:
    if not isinstance(session_id, bytes) or not 16 <= len(session_id) <= 255:
        raise ProtocolError(f"{name}: session id must be 16 to 255 bytes")


def _check_id(name: str, what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CLIENT_ID:
        raise ProtocolError(f"{name}: {what} {value!r} is not a client id (1 .. 2^63 - 1)")


def _check_ids(name: str, what: str, values: tuple[int, ...]) -> None:
    for v in values:
        _check_id(name, what, v)
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise ProtocolError(f"{name}: {what} list must be strictly increasing (canonical)")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, client -> all: the sender's public keys for this session.

    ``cipher_pk`` encrypts the shares sent to the sender; ``mask_pk`` derives pairwise masks
    (both raw X25519). ``sign_pk`` (raw Ed25519, or empty) verifies the sender's signature in
    the optional consistency round. ``identity_sig`` (empty, or up to 1 KiB) is a signature by
    the sender's long-term identity over :meth:`signed_payload`, checked by peers that were
    given an identity verifier, so that the aggregator cannot substitute keys.
    """

    TAG: ClassVar[int] = 1
    session_id: bytes
    sender: int
    cipher_pk: bytes
    mask_pk: bytes
    sign_pk: bytes = b""
    identity_sig: bytes = b""

    def __post_init__(self) -> None:
        _check_session("AdvertiseKeys", self.session_id)
        _check_id("AdvertiseKeys", "sender", self.sender)
        for what, key in (("cipher_pk", self.cipher_pk), ("mask_pk", self.mask_pk)):
            if not isinstance(key, bytes) or len(key) != 32:
                raise ProtocolError(f"AdvertiseKeys: {what} must be a raw 32-byte X25519 key")
        if not isinstance(self.sign_pk, bytes) or len(self.sign_pk) not in (0, 32):
            raise ProtocolError("AdvertiseKeys: sign_pk must be empty or a raw 32-byte key")
        if not isinstance(self.identity_sig, bytes) or len(self.identity_sig) > MAX_SIGNATURE:
            raise ProtocolError(
                f"AdvertiseKeys: identity_sig must be at most {MAX_SIGNATURE} bytes"
            )

    def signed_payload(self) -> bytes:
        """The bytes an identity signature covers: the encoding without the signature."""
        return self._encode(b"")

    def _encode(self, identity_sig: bytes) -> bytes:
        return (
            _header(self.TAG, self.session_id)
            + struct.pack(">Q", self.sender)
            + self.cipher_pk
            + self.mask_pk
            + struct.pack(">B", len(self.sign_pk))
            + self.sign_pk
            + struct.pack(">H", len(identity_sig))
            + identity_sig
        )

    def to_bytes(self) -> bytes:
        return self._encode(self.identity_sig)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        sender = r.u64("sender")
        cipher_pk = r.take(32, "cipher_pk")
        mask_pk = r.take(32, "mask_pk")
        sign_len = r.u8("sign_pk length")
        if sign_len not in (0, 32):
            raise ProtocolError(f"AdvertiseKeys: sign_pk length {sign_len} is not 0 or 32")
        sign_pk = r.take(sign_len, "sign_pk")
        sig_len = struct.unpack(">H", r.take(2, "identity_sig length"))[0]
        if sig_len > MAX_SIGNATURE:
            raise ProtocolError(f"AdvertiseKeys: identity_sig length {sig_len} is too large")
        identity_sig = r.take(sig_len, "identity_sig")
        r.done()
        return cls(session, sender, cipher_pk, mask_pk, sign_pk, identity_sig)


@dataclass(frozen=True)
class EncryptedShares:
    """Stage 2, client -> one peer via the aggregator: the sender's shares for the recipient.

    ``sealed`` is AES-GCM ``nonce | ciphertext | tag`` of the two Shamir shares (self-mask
    seed, mask private key) under a key only sender and recipient can derive; the associated
    data binds the session, sender and recipient, so a re-addressed or replayed message fails.
    """

    TAG: ClassVar[int] = 2
    session_id: bytes
    sender: int
    recipient: int
    sealed: bytes

    def __post_init__(self) -> None:
        _check_session("EncryptedShares", self.session_id)
        _check_id("EncryptedShares", "sender", self.sender)
        _check_id("EncryptedShares", "recipient", self.recipient)
        if self.sender == self.recipient:
            raise ProtocolError("EncryptedShares: sender and recipient are the same client")
        if not isinstance(self.sealed, bytes) or len(self.sealed) != SEALED_SHARES_BYTES:
            raise ProtocolError(
                f"EncryptedShares: sealed shares must be {SEALED_SHARES_BYTES} bytes"
            )

    def associated_data(self) -> bytes:
        """The AEAD associated data: tag, version, session id, sender, recipient."""
        return shares_associated_data(self.session_id, self.sender, self.recipient)

    def to_bytes(self) -> bytes:
        return self.associated_data() + self.sealed

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        sender = r.u64("sender")
        recipient = r.u64("recipient")
        sealed = r.take(SEALED_SHARES_BYTES, "sealed shares")
        r.done()
        return cls(session, sender, recipient, sealed)


def shares_associated_data(session_id: bytes, sender: int, recipient: int) -> bytes:
    """The AEAD associated data of :class:`EncryptedShares` (also its encoded header)."""
    return _header(EncryptedShares.TAG, session_id) + struct.pack(">QQ", sender, recipient)


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3, client -> aggregator: the masked vector, ``modulus_bits``-bit little-endian."""

    TAG: ClassVar[int] = 3
    session_id: bytes
    sender: int
    modulus_bits: int
    data: bytes

    def __post_init__(self) -> None:
        _check_session("MaskedInput", self.session_id)
        _check_id("MaskedInput", "sender", self.sender)
        if self.modulus_bits not in (32, 64):
            raise ProtocolError(
                f"MaskedInput: modulus_bits must be 32 or 64, not {self.modulus_bits}"
            )
        if not isinstance(self.data, bytes) or len(self.data) % (self.modulus_bits // 8):
            raise ProtocolError("MaskedInput: data is not a whole number of vector elements")

    @property
    def vector(self) -> np.ndarray[Any, Any]:
        """The masked vector as a read-only numpy array (uint32 or uint64)."""
        dtype = np.dtype("<u4") if self.modulus_bits == 32 else np.dtype("<u8")
        return np.frombuffer(self.data, dtype=dtype)

    @property
    def length(self) -> int:
        return len(self.data) // (self.modulus_bits // 8)

    def to_bytes(self) -> bytes:
        return (
            _header(self.TAG, self.session_id)
            + struct.pack(">QBQ", self.sender, self.modulus_bits, self.length)
            + self.data
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        sender = r.u64("sender")
        bits = r.u8("modulus_bits")
        if bits not in (32, 64):
            raise ProtocolError(f"MaskedInput: modulus_bits must be 32 or 64, not {bits}")
        length = r.u64("vector length")
        if length > len(r.data):
            raise ProtocolError(f"MaskedInput: vector length {length} exceeds the message size")
        payload = r.take(length * (bits // 8), "vector data")
        r.done()
        return cls(session, sender, bits, payload)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, aggregator -> survivors: who sent a masked input and who dropped after sharing.

    Both lists are sorted and disjoint; a client refuses a request that is inconsistent with
    what it saw, and reveals a seed share for survivors and a key share for dropped clients,
    never both for the same client. With the optional consistency round, the same lists are
    first sent without signatures; the clients sign :meth:`signed_payload` and the final
    request carries at least t of those signatures (``(signer, 64-byte Ed25519)``, sorted).
    """

    TAG: ClassVar[int] = 4
    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _check_session("UnmaskRequest", self.session_id)
        _check_ids("UnmaskRequest", "survivors", self.survivors)
        _check_ids("UnmaskRequest", "dropped", self.dropped)
        both = set(self.survivors) & set(self.dropped)
        if both:
            raise ProtocolError(
                f"UnmaskRequest: clients {sorted(both)[:5]} are listed as both survivor and "
                "dropped; refusing (a malicious aggregator could unmask them)"
            )
        _check_ids("UnmaskRequest", "signer", tuple(c for c, _ in self.signatures))
        for _, sig in self.signatures:
            if not isinstance(sig, bytes) or len(sig) != ED25519_SIGNATURE:
                raise ProtocolError("UnmaskRequest: each signature must be 64 bytes (Ed25519)")

    def signed_payload(self) -> bytes:
        """What a client signs in the consistency round: domain, session and both lists."""
        return (
            b"trustspace/v1/secagg-survivors"
            + UnmaskRequest(self.session_id, self.survivors, self.dropped).to_bytes()
        )

    def to_bytes(self) -> bytes:
        parts = [_header(self.TAG, self.session_id)]
        for ids in (self.survivors, self.dropped):
            parts.append(struct.pack(f">I{len(ids)}Q", len(ids), *ids))
        parts.append(struct.pack(">I", len(self.signatures)))
        parts += [struct.pack(">Q", c) + sig for c, sig in self.signatures]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        lists = []
        for what in ("survivors", "dropped"):
            count = r.u32(f"{what} count")
            if count > len(r.data):
                raise ProtocolError(f"UnmaskRequest: {what} count {count} exceeds the message")
            lists.append(struct.unpack(f">{count}Q", r.take(8 * count, what)))
        count = r.u32("signature count")
        step = 8 + ED25519_SIGNATURE
        if count * step > len(r.data):
            raise ProtocolError(f"UnmaskRequest: signature count {count} exceeds the message")
        block = r.take(count * step, "signatures")
        sigs = tuple(
            (int.from_bytes(block[i : i + 8], "big"), block[i + 8 : i + step])
            for i in range(0, len(block), step)
        )
        r.done()
        return cls(session, tuple(lists[0]), tuple(lists[1]), sigs)


@dataclass(frozen=True)
class SurvivorSignature:
    """Consistency round, client -> aggregator: the sender's Ed25519 signature over the
    survivor and dropped lists (:meth:`UnmaskRequest.signed_payload`)."""

    TAG: ClassVar[int] = 6
    session_id: bytes
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_session("SurvivorSignature", self.session_id)
        _check_id("SurvivorSignature", "sender", self.sender)
        if not isinstance(self.signature, bytes) or len(self.signature) != ED25519_SIGNATURE:
            raise ProtocolError("SurvivorSignature: signature must be 64 bytes (Ed25519)")

    def to_bytes(self) -> bytes:
        return _header(self.TAG, self.session_id) + struct.pack(">Q", self.sender) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        sender = r.u64("sender")
        signature = r.take(ED25519_SIGNATURE, "signature")
        r.done()
        return cls(session, sender, signature)


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4, client -> aggregator: Shamir shares it holds, keyed by the secret's owner.

    ``seed_shares`` are shares of survivors' self-mask seeds; ``key_shares`` are shares of
    dropped clients' mask private keys. The two owner sets are disjoint and sorted.
    """

    TAG: ClassVar[int] = 5
    session_id: bytes
    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_session("UnmaskShares", self.session_id)
        _check_id("UnmaskShares", "sender", self.sender)
        for what, items in (("seed_shares", self.seed_shares), ("key_shares", self.key_shares)):
            _check_ids("UnmaskShares", f"{what} owner", tuple(o for o, _ in items))
            for _, share in items:
                if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
                    raise ProtocolError(f"UnmaskShares: each share must be {SHARE_BYTES} bytes")
        both = {o for o, _ in self.seed_shares} & {o for o, _ in self.key_shares}
        if both:
            raise ProtocolError(
                f"UnmaskShares: both shares revealed for clients {sorted(both)[:5]}"
            )

    def to_bytes(self) -> bytes:
        parts = [_header(self.TAG, self.session_id), struct.pack(">Q", self.sender)]
        for items in (self.seed_shares, self.key_shares):
            parts.append(struct.pack(">I", len(items)))
            for owner, share in items:
                parts.append(struct.pack(">Q", owner) + share)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, cls.__name__, cls.TAG)
        session = r.session()
        sender = r.u64("sender")
        lists = []
        for what in ("seed_shares", "key_shares"):
            count = r.u32(f"{what} count")
            if count * (8 + SHARE_BYTES) > len(r.data):
                raise ProtocolError(f"UnmaskShares: {what} count {count} exceeds the message")
            block = r.take(count * (8 + SHARE_BYTES), what)
            step = 8 + SHARE_BYTES
            lists.append(
                tuple(
                    (int.from_bytes(block[i : i + 8], "big"), block[i + 8 : i + step])
                    for i in range(0, len(block), step)
                )
            )
        r.done()
        return cls(session, sender, lists[0], lists[1])
