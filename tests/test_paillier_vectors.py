"""Tests of packed encrypted vectors: layout, slot-wise sums, headroom refusal, float vectors,
serialisation and validation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trustspace.crypto import paillier as hz
from trustspace.crypto.packing import PackingLayout
from trustspace.errors import EncodingOverflow, InvalidCiphertext
from trustspace.paillier import EncryptedVector, PrivateKey, PublicKey

P512 = 0xD9F5CED4C7E17FBD7AA4A57A5A2671261709FA11C4328FFF22C81854D0010C1F
Q512 = 0xE4CC10B715A2210E3F7E26349C9322ED1FFE0F38389C94DE47976F09EC92A867

with hz._allow_insecure_test_keys():
    PK = PublicKey(P512 * Q512)
    SK = PrivateKey(PK, P512, Q512)


@pytest.fixture(autouse=True)
def _insecure() -> Iterator[None]:
    with hz._allow_insecure_test_keys():
        yield


def int32_arrays(max_len: int = 60) -> st.SearchStrategy[Any]:
    return hnp.arrays(np.int64, st.integers(0, max_len), elements=st.integers(-(2**31), 2**31 - 1))


def test_layout_arithmetic() -> None:
    lay = PackingLayout.for_key(2048, value_bits=32, headroom=1024)
    assert lay.slot_bytes == 6  # 32 + 10 bits -> 48-bit slots
    assert lay.slots == 2047 // 48 == 42
    assert lay.ciphertexts_for(100_000) == 2381
    assert PackingLayout.for_key(2048, 32, 1).slot_bytes == 4
    assert PackingLayout.for_key(2048, 32, 2**16).slot_bytes == 6
    with pytest.raises(ValueError, match="slots"):
        PackingLayout.for_key(2048, 62, 4)
    with pytest.raises(ValueError, match="headroom"):
        PackingLayout.for_key(2048, 32, 0)
    with pytest.raises(ValueError, match="value_bits"):
        PackingLayout.for_key(2048, 0, 4)


@given(xs=int32_arrays())
@settings(max_examples=30, deadline=None)
def test_pack_unpack_plain_round_trip(xs: Any) -> None:
    lay = PackingLayout.for_key(512, 32, 8)
    assert np.array_equal(lay.unpack(lay.pack(xs), xs.size, 1), xs)


@given(xs=int32_arrays(), ys=int32_arrays())
@settings(max_examples=20, deadline=None)
def test_encrypted_vector_round_trip_and_sum(xs: Any, ys: Any) -> None:
    ev = PK.encrypt_vector(xs, headroom=4, processes=1)
    assert len(ev) == xs.size
    out = SK.decrypt_vector(ev)
    assert out.dtype == np.int64 and np.array_equal(out, xs)
    m = min(xs.size, ys.size)
    a = PK.encrypt_vector(xs[:m], headroom=4, processes=1)
    b = PK.encrypt_vector(ys[:m], headroom=4, processes=1)
    assert np.array_equal(SK.decrypt_vector(a + b + a), 2 * xs[:m] + ys[:m])


def test_edge_values_and_many_parties() -> None:
    lo, hi = -(2**31), 2**31 - 1
    v = np.array([lo, hi, 0, -1, 1, lo, hi], dtype=np.int64)
    parties = [PK.encrypt_vector(v, headroom=16, processes=1) for _ in range(16)]
    total = sum(parties)
    assert isinstance(total, EncryptedVector) and total.count == 16
    assert np.array_equal(SK.decrypt_vector(total), 16 * v)
    # spans several ciphertexts (7 slots per 512-bit plaintext at 40-bit slots... any split)
    long = np.arange(-500, 500, dtype=np.int32)
    ev = PK.encrypt_vector(long, headroom=3, processes=1)
    assert len(ev.ciphertexts()) == PackingLayout.for_key(512, 32, 3).ciphertexts_for(1000)
    assert np.array_equal(SK.decrypt_vector(ev + ev + ev), 3 * long)


def test_headroom_overflow_refused_not_wrapped() -> None:
    v = np.array([2**31 - 1, -(2**31)])
    a = PK.encrypt_vector(v, headroom=3, processes=1)
    s = a + a + a
    with pytest.raises(EncodingOverflow, match="headroom of 3"):
        s + a
    with pytest.raises(EncodingOverflow, match="index 1"):
        PK.encrypt_vector(np.array([0, 2**31]), processes=1)
    with pytest.raises(EncodingOverflow, match="value_bits=8"):
        PK.encrypt_vector(np.array([-129]), value_bits=8, processes=1)


def test_mismatched_vectors_refused() -> None:
    a = PK.encrypt_vector(np.arange(5), processes=1)
    with pytest.raises(ValueError, match="length 5 vs 4"):
        a + PK.encrypt_vector(np.arange(4), processes=1)
    with pytest.raises(ValueError, match="headroom"):
        a + PK.encrypt_vector(np.arange(5), headroom=7, processes=1)
    pk3, sk3 = hz.generate_keypair(512)
    with pytest.raises(InvalidCiphertext, match="different keys"):
        a + pk3.encrypt_vector(np.arange(5), processes=1)
    with pytest.raises(InvalidCiphertext, match="matching key"):
        sk3.decrypt_vector(a)
    with pytest.raises(ValueError, match="1-d"):
        PK.encrypt_vector(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype"):
        PK.encrypt_vector(np.array(["a"]))


def test_float_vectors_need_and_use_a_scale() -> None:
    x = np.array([1.5, -2.25, 1000.125, 0.0])
    with pytest.raises(ValueError, match="frac_bits"):
        PK.encrypt_vector(x)
    ev = PK.encrypt_vector(x, frac_bits=16, processes=1)
    got = SK.decrypt_vector(ev + ev)
    assert got.dtype == np.float64 and np.array_equal(got, 2 * x)
    with pytest.raises(EncodingOverflow):
        PK.encrypt_vector(np.array([40_000.0]), frac_bits=16, processes=1)
    with pytest.raises(ValueError, match="non-finite"):
        PK.encrypt_vector(np.array([np.nan]), frac_bits=4)
    # pandas-style cross-check of a float sum to the fixed-point precision
    rng = np.random.default_rng(7)
    rows = rng.normal(50.0, 10.0, size=(5, 30))
    enc = [PK.encrypt_vector(r, frac_bits=12, value_bits=40, headroom=8, processes=1) for r in rows]
    np.testing.assert_allclose(SK.decrypt_vector(sum(enc)), rows.sum(axis=0), atol=5 * 2.0**-12)


def test_vector_bytes_round_trip_rerandomises_and_validates() -> None:
    v = np.array([3, -4, 5, 2**20], dtype=np.int64)
    a = PK.encrypt_vector(v, headroom=5, processes=1)
    s = a + a
    raw = [int(c) for c in s._cts]
    data = s.to_bytes()
    assert s.ciphertexts(be_secure=False) != raw  # re-randomised before leaving
    back = EncryptedVector.from_bytes(PK, data)
    assert back.count == 2 and back.headroom == 5
    assert np.array_equal(SK.decrypt_vector(back + a), 3 * v)
    pk3, _ = hz.generate_keypair(512)
    with pytest.raises(InvalidCiphertext, match="fingerprint"):
        EncryptedVector.from_bytes(pk3, data)
    with pytest.raises(InvalidCiphertext):
        EncryptedVector.from_bytes(PK, data[:-1])
    zeroed = data[: -PK.ciphertext_length] + b"\x00" * PK.ciphertext_length
    with pytest.raises(InvalidCiphertext, match="outside"):
        EncryptedVector.from_bytes(PK, zeroed)


def test_tampered_slots_detected_on_decrypt() -> None:
    a = PK.encrypt_vector(np.array([1, 2, 3]), headroom=2, processes=1)
    # a ciphertext of a plaintext with bits beyond the slots
    lay = a.layout
    forged = EncryptedVector._make(PK, [hz._MPZ(PK.raw_encrypt(int(PK.n) - 1))], lay, 0, 3, 1, True)
    with pytest.raises(InvalidCiphertext, match="beyond its slots"):
        SK.decrypt_vector(forged)
    full = (1 << (8 * lay.slot_bytes)) - 1  # a slot value no single vector can produce
    forged2 = EncryptedVector._make(PK, [hz._MPZ(PK.raw_encrypt(full))], lay, 0, 3, 1, True)
    with pytest.raises(InvalidCiphertext, match="tampered"):
        SK.decrypt_vector(forged2)
