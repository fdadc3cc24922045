"""Shamir sharing over GF(2^521 - 1): reconstruction from every t-subset, secrecy, bad inputs."""

from __future__ import annotations

import hashlib
import itertools

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.crypto import shamir
from trustspace.errors import CryptoError


def _rng(seed: bytes):  # deterministic byte source for reproducible tests
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def test_field_is_the_mersenne_prime_m521() -> None:
    assert shamir.PRIME == 2**521 - 1
    assert gmpy2.is_prime(shamir.PRIME, 50)  # independent primality check (GMP)


def test_every_t_subset_reconstructs_and_no_smaller_one_does() -> None:
    secret = bytes(range(1, 33))
    xs = [3, 5, 8, 13, 21, 34]
    t = 3
    shares = shamir.split(secret, t, xs)
    for subset in itertools.combinations(xs, t):
        assert shamir.combine({x: shares[x] for x in subset}, t, 32) == secret
    target = int.from_bytes(secret, "little")
    for subset in itertools.combinations(xs, t - 1):
        pts = [(x, shamir.decode_share(shares[x])) for x in subset]
        # interpolating t - 1 points gives a degree t - 2 polynomial: not the secret
        assert shamir.raw_combine(pts) != target
        with pytest.raises(ValueError, match="needs 3 shares"):
            shamir.combine({x: shares[x] for x in subset}, t, 32)


def test_shares_match_naive_polynomial_evaluation() -> None:
    # cross-check Horner evaluation with a naive sum of powers using the same coefficients
    t, xs, secret = 5, [1, 7, 1000, 2**40, 2**63 - 1], 987654321
    rng_a, rng_b = _rng(b"k"), _rng(b"k")
    ys = shamir.raw_split(secret, t, xs, rng_a)
    coeffs = []
    for _ in range(t - 1):
        while True:
            c = int.from_bytes(rng_b(shamir.SHARE_BYTES), "little") & shamir.PRIME
            if c != shamir.PRIME:
                break
        coeffs.append(c)
    coeffs = coeffs[::-1]  # raw_split draws from the highest degree down
    for x, y in zip(xs, ys, strict=True):
        naive = secret + sum(c * pow(x, i + 1, shamir.PRIME) for i, c in enumerate(coeffs))
        assert y == naive % shamir.PRIME


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=shamir.MAX_SECRET_BYTES),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_random_subsets_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**63 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs)
    chosen = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert shamir.combine({x: shares[x] for x in chosen}, t, len(secret)) == secret


def test_lagrange_weights_are_cached_and_sum_to_one() -> None:
    xs = tuple(range(1, 52))
    w = shamir.lagrange_at_zero(xs)
    assert shamir.lagrange_at_zero(xs) is w
    assert sum(w) % shamir.PRIME == 1  # interpolating the constant 1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"x", 2, [1, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        shamir.split(b"x", 2, [0, 1, 2])
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"x", 4, [1, 2, 3])
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"x", 0, [1, 2, 3])
    with pytest.raises(ValueError, match="at most 65"):
        shamir.split(bytes(66), 2, [1, 2, 3])


def test_malformed_or_forged_shares_fail_opaquely() -> None:
    shares = shamir.split(bytes(32), 2, [1, 2, 3])
    with pytest.raises(CryptoError):
        shamir.combine({1: shares[1], 2: shares[2][:-1]}, 2, 32)
    with pytest.raises(CryptoError):
        shamir.combine({1: shares[1], 2: b"\xff" * shamir.SHARE_BYTES}, 2, 32)
    forged = shares[2][:40] + bytes([shares[2][40] ^ 1]) + shares[2][41:]  # +- 2^320
    with pytest.raises(CryptoError):  # the result is no longer a 32-byte value
        shamir.combine({1: shares[1], 2: forged}, 2, 32)


def test_a_spare_share_exposes_a_crafted_offset() -> None:
    # Shamir is linear: adding d / l_1(0) to share 1 shifts the secret by exactly d, to another
    # valid 32-byte value. Without a spare share this cannot be noticed; with one it must be.
    secret = bytes(32)
    xs = [1, 2, 3, 4]
    shares = shamir.split(secret, 3, xs)
    w1 = shamir.lagrange_at_zero((1, 2, 3))[0]
    y1 = shamir.decode_share(shares[1])
    shifted = (y1 + 5 * pow(w1, -1, shamir.PRIME)) % shamir.PRIME
    crafted = {**shares, 1: shifted.to_bytes(shamir.SHARE_BYTES, "little")}
    three = {x: crafted[x] for x in (1, 2, 3)}
    assert shamir.combine(three, 3, 32) == (5).to_bytes(32, "little")  # undetectable alone
    with pytest.raises(CryptoError):
        shamir.combine(crafted, 3, 32)  # the spare share 4 disagrees
    assert shamir.combine(shares, 3, 32) == secret
    assert shamir.combine(crafted, 3, 32, verify=False) == (5).to_bytes(32, "little")


def test_lagrange_at_any_point_interpolates() -> None:
    xs = [2, 5, 7, 11]
    ys = shamir.raw_split(77, 4, xs)
    w = shamir.lagrange_at(tuple(xs), 5)
    assert sum(a * b for a, b in zip(w, ys, strict=True)) % shamir.PRIME == ys[1]
    more = shamir.raw_split(77, 4, [*xs, 13])  # fresh polynomial: check f(13) from 4 points
    w13 = shamir.lagrange_at(tuple(xs), 13)
    assert sum(a * b for a, b in zip(w13, more[:4], strict=True)) % shamir.PRIME == more[4]
