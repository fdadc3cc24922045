"""Mask PRG (AES-CTR), X25519, HKDF and AES-GCM: known answers and independent cross-checks."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.crypto import keyagreement as ka
from trustspace.crypto import prg
from trustspace.errors import CryptoError

CHUNK32 = prg.CHUNK_BYTES // 4


def _pycryptodome_keystream(key: bytes, nbytes: int) -> bytes:
    # independent AES-CTR implementation: pycryptodome, 128-bit big-endian counter from zero
    aes = pytest.importorskip("Crypto.Cipher.AES")
    return aes.new(key, aes.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(nbytes))


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("length", [1, 7, CHUNK32 - 1, CHUNK32, CHUNK32 + 1, 3 * CHUNK32 + 5])
def test_chunked_masks_equal_whole_keystreams(bits: int, length: int) -> None:
    keys = [bytes([i]) * 16 for i in range(2 * prg.GROUP + 3)]  # several groups and a rest
    n_add = prg.GROUP + 2
    dtype = prg.dtype_for(bits)
    start = np.arange(length, dtype=dtype)
    acc = start.copy()
    prg.apply_masks(acc, add=keys[:n_add], subtract=keys[n_add:])
    expected = start.copy()
    for i, key in enumerate(keys):
        ks = np.frombuffer(_pycryptodome_keystream(key, length * bits // 8), dtype=dtype)
        expected = expected + ks if i < n_add else expected - ks  # numpy wraps modulo 2^bits
    assert np.array_equal(acc, expected)


def test_keystream_matches_pycryptodome_and_masks_cancel() -> None:
    key = bytes(range(16))
    assert prg.keystream(key, 1000) == _pycryptodome_keystream(key, 1000)
    acc = np.full(100_001, 7, dtype=np.uint64)
    prg.apply_masks(acc, add=[key], subtract=[key])
    assert (acc == 7).all()


def test_prg_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        prg.apply_masks(np.zeros(3, dtype=np.uint32), add=[b"short"])
    with pytest.raises(ValueError, match="uint32 or uint64"):
        prg.apply_masks(np.zeros(3, dtype=np.int64), add=[bytes(16)])
    with pytest.raises(ValueError, match="32 or 64"):
        prg.dtype_for(16)


def test_x25519_rfc7748_vector() -> None:
    # RFC 7748, section 6.1
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    pub_a = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    pub_b = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert ka.public_key(a) == pub_a and ka.public_key(b) == pub_b
    assert ka.exchange(a, pub_b) == shared == ka.exchange(b, pub_a)
    assert ka.exchange_many(a, [pub_b, pub_b]) == [shared, shared]


def test_x25519_refuses_low_order_points() -> None:
    sk, _ = ka.generate_keypair()
    with pytest.raises(CryptoError):
        ka.exchange(sk, bytes(32))  # the identity: all-zero shared secret


def _hkdf_rfc5869(ikm: bytes, info: bytes, length: int) -> bytes:
    # independent HKDF-SHA256 (RFC 5869) with the standard library's hmac
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


def test_derive_key_is_hkdf_with_an_injective_info_string() -> None:
    secret, session = bytes(range(32)), b"S" * 16
    info = b"trustspace/v1/" + b"\x04mask" + b"\x10" + session + (3).to_bytes(8, "big")
    info += (9).to_bytes(8, "big")
    assert ka.derive_key(secret, b"mask", session, 3, 9, 16) == _hkdf_rfc5869(secret, info, 16)
    variants = {
        ka.derive_key(secret, b"mask", session, 3, 9, 16),
        ka.derive_key(secret, b"mask", session, 9, 3, 16),
        ka.derive_key(secret, b"mask", b"T" * 16, 3, 9, 16),
        ka.derive_key(secret, b"masl", session, 3, 9, 16),
        ka.derive_key(secret[::-1], b"mask", session, 3, 9, 16),
    }
    assert len(variants) == 5


@settings(max_examples=30, deadline=None)
@given(plain=st.binary(max_size=300), ad=st.binary(max_size=64))
def test_aead_round_trip_and_binding(plain: bytes, ad: bytes) -> None:
    key = bytes(32)
    sealed = ka.aead_encrypt(key, plain, ad)
    assert ka.aead_decrypt(key, sealed, ad) == plain
    with pytest.raises(CryptoError):
        ka.aead_decrypt(key, sealed, ad + b"x")
    with pytest.raises(CryptoError):
        ka.aead_decrypt(key, sealed[:-1], ad)
    with pytest.raises(CryptoError):
        ka.aead_decrypt(bytes([1]) * 32, sealed, ad)
