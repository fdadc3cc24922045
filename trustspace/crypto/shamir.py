"""Shamir secret sharing over the Mersenne prime field GF(2^521 - 1), with cached Lagrange weights.

Hazmat tier. A secret of up to :data:`MAX_SECRET_BYTES` bytes is one field element; a share is
the pair ``(x, f(x))`` with ``x`` a non-zero integer (in trustspace: the holder's client id) and
``f`` a uniformly random polynomial of degree ``threshold - 1`` with ``f(0) = secret``.

Why this field: 2^521 - 1 is a Mersenne prime (a fact, not a probabilistic test), large enough
that a 32-byte key or seed is a single element, so one polynomial per secret suffices (Flower
splits secrets into 16-byte blocks over GF(2^128) and pays for one polynomial per block).
Evaluation at the small integer x-coordinates used here costs one small-by-large
multiplication per coefficient, and reconstruction is a dot product with Lagrange weights at
zero that are cached per set of x-coordinates (the aggregator reuses the same sets many times).

Any ``threshold`` shares determine the secret; fewer reveal nothing about it (information-
theoretic). There is no verifiability: a holder who lies about its share makes reconstruction
return garbage, which :func:`combine` detects only as an out-of-range secret.

>>> shares = split(b"k" * 32, threshold=3, xs=[1, 2, 3, 4, 5])
>>> combine({x: shares[x] for x in (2, 4, 5)}, threshold=3, secret_len=32)
b'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk'
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

import gmpy2

from trustspace.errors import ConfigError, CryptoError, DataError

__all__ = [
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_BYTES",
    "combine",
    "decode_share",
    "lagrange_at",
    "lagrange_at_zero",
    "raw_combine",
    "raw_split",
    "split",
]

PRIME = (1 << 521) - 1  # Mersenne prime M521: the field of all shares
SHARE_BYTES = 66  # ceil(521 / 8): the fixed width of an encoded field element
MAX_SECRET_BYTES = 65  # 520 bits < 521 bits: any secret of this size is a field element
_MASK = PRIME  # 2^521 - 1 is also the bit mask of the low 521 bits
_PRIME_MPZ = gmpy2.mpz(PRIME)


def _random_element(rng: Callable[[int], bytes]) -> int:
    """Return a uniform element of [0, PRIME) by rejection sampling (reject only PRIME itself)."""
    while True:
        value = int.from_bytes(rng(SHARE_BYTES), "little") & _MASK
        if value != PRIME:
            return value


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ConfigError(f"Shamir x-coordinates must be distinct, got {list(xs)}")
    for x in xs:
        if not 0 < x < PRIME:
            raise ConfigError(f"Shamir x-coordinate {x} is out of range (1 .. 2^521 - 2)")


def raw_split(
    secret: int,
    threshold: int,
    xs: Sequence[int],
    rng: Callable[[int], bytes] = os.urandom,
) -> list[int]:
    """Share the field element ``secret``; return ``f(x)`` for each ``x`` in ``xs`` (same order).

    Args:
        secret: the element to share, ``0 <= secret < PRIME``.
        threshold: number of shares needed to reconstruct (the polynomial degree plus one).
        xs: distinct non-zero x-coordinates, one per share holder.
        rng: source of random bytes for the coefficients (``os.urandom`` unless testing).

    Raises:
        DataError: on an out-of-range secret.
        ConfigError: on a threshold outside ``1 .. len(xs)`` or bad xs.
    """
    if not 0 <= secret < PRIME:
        raise DataError("Shamir secret must be a field element (0 <= secret < 2^521 - 1)")
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"Shamir threshold {threshold} must be between 1 and {len(xs)} shares")
    _check_xs(xs)
    # coefficients from the highest degree down to the constant term, for Horner's rule
    # gmpy2 (GMP) integers: about 1.5x faster than Python's for these 521-bit operands
    coeffs = [gmpy2.mpz(_random_element(rng)) for _ in range(threshold - 1)]
    coeffs.append(gmpy2.mpz(secret))
    # Horner's rule, reducing once per block of 8 coefficients: with x < 2^63 the value grows
    # by at most 8 * 63 bits between reductions, cheaper than a reduction per step
    blocks = [coeffs[i : i + 8] for i in range(0, len(coeffs), 8)]
    out = []
    for x in xs:
        acc = 0
        for block in blocks:
            for c in block:
                acc = acc * x + c
            acc %= _PRIME_MPZ
        out.append(int(acc))
    return out


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Return the Lagrange weights ``l_i(0)`` for the x-coordinates ``xs`` (cached).

    Cached through :func:`lagrange_at`; clear with ``lagrange_at.cache_clear()``.

    ``secret = sum(l_i(0) * y_i) mod PRIME``. The cache is keyed by the exact tuple, so callers
    should pass x-coordinates in a canonical (sorted) order to share cache entries.
    """
    return lagrange_at(xs, 0)


@lru_cache(maxsize=4096)
def lagrange_at(xs: tuple[int, ...], target: int) -> tuple[int, ...]:
    """Return the Lagrange weights ``l_i(target)`` for the x-coordinates ``xs`` (cached).

    ``f(target) = sum(l_i(target) * y_i) mod PRIME`` for any polynomial of degree below
    ``len(xs)`` through the points.
    """
    _check_xs(xs)
    # exact integer products (the x's are small, so this beats reducing at every step)
    if target == 0:
        total = math.prod(xs)
        nums = [total // xi % PRIME for xi in xs]
        dens = [math.prod(xj - xi for xj in xs if xj != xi) % PRIME for xi in xs]
    else:
        nums = [math.prod(target - xj for xj in xs if xj != xi) % PRIME for xi in xs]
        dens = [math.prod(xi - xj for xj in xs if xj != xi) % PRIME for xi in xs]
    # Montgomery's batch inversion: one modular inverse instead of len(xs)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        weights[i] = nums[i] * (inv * prefix[i] % PRIME) % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(weights)


def raw_combine(points: Iterable[tuple[int, int]]) -> int:
    """Interpolate ``f(0)`` from ``(x, y)`` points (all of them; pass exactly ``threshold``)."""
    pts = sorted(points)
    weights = lagrange_at_zero(tuple(x for x, _ in pts))
    acc = 0
    for (_, y), w in zip(pts, weights, strict=True):
        acc += y * w
    return acc % PRIME


def split(
    secret: bytes,
    threshold: int,
    xs: Sequence[int],
    rng: Callable[[int], bytes] = os.urandom,
) -> dict[int, bytes]:
    """Share a byte string of at most 65 bytes; return ``{x: 66-byte share}``.

    Raises:
        DataError: if the secret is longer than :data:`MAX_SECRET_BYTES`.
        ConfigError: if the parameters are invalid (see :func:`raw_split`).
    """
    if len(secret) > MAX_SECRET_BYTES:
        raise DataError(
            f"Shamir secret is {len(secret)} bytes; at most {MAX_SECRET_BYTES} fit one element"
        )
    ys = raw_split(int.from_bytes(secret, "little"), threshold, xs, rng)
    return {x: y.to_bytes(SHARE_BYTES, "little") for x, y in zip(xs, ys, strict=True)}


def decode_share(share: bytes) -> int:
    """Return the field element in a 66-byte share; raise CryptoError if it is not one."""
    if len(share) != SHARE_BYTES:
        raise CryptoError("invalid Shamir share")
    y = int.from_bytes(share, "little")
    if y >= PRIME:
        raise CryptoError("invalid Shamir share")
    return y


def combine(
    shares: Mapping[int, bytes], threshold: int, secret_len: int, *, verify: bool = True
) -> bytes:
    """Reconstruct a ``secret_len``-byte secret from at least ``threshold`` shares.

    Uses the ``threshold`` smallest x-coordinates (a canonical choice, so the Lagrange cache
    is shared between secrets held by the same parties). With ``verify`` and a spare share,
    the polynomial through those shares must also pass through the next share: one wrong
    share among the ``threshold + 1`` used is then always detected (a wrong share could
    otherwise shift the secret to another valid-looking value).

    Raises:
        DataError: if fewer than ``threshold`` shares are given.
        ConfigError: if ``secret_len`` is not in ``1 .. MAX_SECRET_BYTES``.
        CryptoError: if a share is malformed, the shares are inconsistent or the result is
            not a ``secret_len``-byte value (a wrong or forged share); opaque on purpose.
    """
    if len(shares) < threshold:
        raise DataError(f"Shamir needs {threshold} shares to reconstruct, got {len(shares)}")
    if not 0 < secret_len <= MAX_SECRET_BYTES:
        raise ConfigError(f"secret_len must be 1 .. {MAX_SECRET_BYTES}, got {secret_len}")
    ordered = sorted(shares)
    xs = ordered[:threshold]
    ys = [decode_share(shares[x]) for x in xs]
    value = raw_combine(zip(xs, ys, strict=True))
    if verify and len(ordered) > threshold:
        spare = ordered[threshold]
        weights = lagrange_at(tuple(xs), spare)
        predicted = sum(w * y for w, y in zip(weights, ys, strict=True)) % PRIME
        if predicted != decode_share(shares[spare]):
            raise CryptoError("Shamir reconstruction failed")
    if value >> (8 * secret_len):
        raise CryptoError("Shamir reconstruction failed")
    return value.to_bytes(secret_len, "little")
