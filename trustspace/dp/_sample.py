"""Exact samplers of the discrete Laplace and discrete Gaussian over the integers (CKS20).

Hazmat tier. Everything here follows Canonne, Kamath and Steinke, "The Discrete Gaussian for
Differential Privacy" (NeurIPS 2020, arXiv:2004.00010), Algorithms 1-3: a Bernoulli(exp(-gamma))
by rational arithmetic, a discrete Laplace by geometric sampling and rejection, and the discrete
Gaussian by rejection from the discrete Laplace. No floating-point number is ever computed on the
way to a sample, and every random bit comes from the operating system's CSPRNG
(:mod:`secrets`). Floating-point samplers are unsafe: Mironov, "On significance of the least
significant bits for differential privacy" (CCS 2012) recovers the un-noised value from the
low-order bits of a textbook floating-point Laplace sample, because the set of floats that
``x + noise`` can produce depends on ``x``.

Two tiers of the same algorithms:

- ``discrete_gaussian(sigma2)``, ``discrete_laplace(scale)``, ``bernoulli_exp(gamma)``: scalar,
  a direct transcription of CKS20 with :class:`fractions.Fraction`; the readable reference.
- ``discrete_gaussian_array(sigma2, size)``, ``discrete_laplace_array(scale, size)``: the same
  algorithms run on numpy lanes (every lane runs its own rejection loop until it accepts), with
  the random words drawn in bulk from the CSPRNG. A Bernoulli with a huge denominator (the
  Gaussian acceptance step, whose denominator is ``2 p q t^2`` for ``sigma2 = p/q``) compares a
  uniform 64-bit word with the first 64 bits of the probability's binary expansion and, only on
  a tie (probability 2^-64), falls back to exact big-integer arithmetic; so it is exact too.

Skellam noise (the difference of two Poissons, Agarwal, Kairouz and Liu, NeurIPS 2021) is not
provided: it is closed under summation, which spares the distributed accounting its small
``tau`` term, but in trustspace every node's share has a standard deviation of several encoded
units or more, where that term is below 1e-15 (see :mod:`trustspace.dp._accounting`); and an
exact Poisson sampler for a rational rate needs its own rejection scheme whose running time
grows with the rate, while the discrete Gaussian's is constant and cross-checked against
OpenDP's. Choosing one well-tested exact sampler is the safer design.

>>> from fractions import Fraction
>>> x = discrete_gaussian(Fraction(9, 4))
>>> isinstance(x, int)
True
>>> discrete_gaussian_array(Fraction(100), 5).shape
(5,)
"""

from __future__ import annotations

import secrets
from fractions import Fraction
from math import isqrt
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from trustspace.errors import ConfigError, EncodingOverflow

__all__ = [
    "MAX_SIGMA2",
    "RandomSource",
    "SystemRandomSource",
    "bernoulli_exp",
    "discrete_gaussian",
    "discrete_gaussian_array",
    "discrete_laplace",
    "discrete_laplace_array",
]

# The batch samplers compute in int64. With sigma <= 2^55 the Laplace proposal scale
# t = floor(sigma) + 1 <= 2^55 + 1, so ``U + t * V`` overflows only if the geometric V reaches
# 2^8, an event of probability exp(-256); the refusal in that event is an EncodingOverflow.
# 2^110 (sigma = 2^55 ~ 3.6e16) is far beyond any noise that fits a 2^64 secure-aggregation sum.
MAX_SIGMA2 = Fraction(1 << 110)

_INT64_MAX = (1 << 63) - 1


class RandomSource(Protocol):
    """Where the samplers take their randomness: uniform integers and uniform bytes.

    Library code always uses :class:`SystemRandomSource` (the OS CSPRNG). Tests may pass a
    seeded source to make a statistical test reproducible; never do that for real noise.
    """

    def randbelow(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` for ``n >= 1``."""
        ...

    def token_bytes(self, n: int) -> bytes:
        """``n`` independent uniform bytes."""
        ...


class SystemRandomSource:
    """The operating system's CSPRNG: :func:`secrets.randbelow` and :func:`secrets.token_bytes`.

    Nothing is buffered, so a forked process can never repeat its parent's noise.
    """

    def randbelow(self, n: int) -> int:
        return secrets.randbelow(n)

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


_SYSTEM = SystemRandomSource()


def _check_rational(name: str, value: object, *, positive: bool) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | Fraction):
        raise ConfigError(
            f"{name} must be an int or a fractions.Fraction (exact rational), got "
            f"{value!r} ({type(value).__name__}); write Fraction('{value}') for a decimal"
        )
    value = Fraction(value)
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"size must be a non-negative int, got {size!r}")
    return size


# --- scalar reference: CKS20 Algorithms 1-3 with Fractions -------------------------------------


def _bernoulli(p: Fraction, source: RandomSource) -> bool:
    """Bernoulli(p) for a rational p in [0, 1]: uniform in [0, den) below num."""
    return source.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_le1(gamma: Fraction, source: RandomSource) -> bool:
    # CKS20 Algorithm 1, gamma in [0, 1]: K <- 1; while Bernoulli(gamma / K): K <- K + 1;
    # return K odd. P(K odd) = sum_k (-gamma)^k / k! = exp(-gamma).
    k = 1
    while _bernoulli(gamma / k, source):
        k += 1
    return k % 2 == 1


def bernoulli_exp(gamma: Fraction | int, *, source: RandomSource | None = None) -> bool:
    """Return True with probability exactly ``exp(-gamma)`` (CKS20 Algorithm 1).

    Args:
        gamma: a rational ``>= 0``.
        source: randomness (default: the OS CSPRNG).

    Raises:
        ConfigError: if ``gamma`` is not an int/Fraction or is negative.
    """
    g = _check_rational("gamma", gamma, positive=False)
    src = _SYSTEM if source is None else source
    # gamma > 1: exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma))).
    for _ in range(g.numerator // g.denominator):
        if not _bernoulli_exp_le1(Fraction(1), src):
            return False
    return _bernoulli_exp_le1(g - g.numerator // g.denominator, src)


def discrete_laplace(scale: Fraction | int, *, source: RandomSource | None = None) -> int:
    """One sample of the discrete Laplace ``Lap_Z(scale)``: ``P[x] ∝ exp(-|x| / scale)``.

    CKS20 Algorithm 2 with ``scale = t / s``: U uniform in ``[0, t)`` accepted with probability
    ``exp(-U/t)``, plus ``t`` times a geometric count of Bernoulli(exp(-1)) successes, divided
    by ``s`` (floor), a random sign, and the negative zero rejected.

    Raises:
        ConfigError: if ``scale`` is not a positive int/Fraction.
    """
    sc = _check_rational("scale", scale, positive=True)
    src = _SYSTEM if source is None else source
    t, s = sc.numerator, sc.denominator
    while True:
        u = src.randbelow(t)
        if not _bernoulli_exp_le1(Fraction(u, t), src):
            continue
        v = 0
        while _bernoulli_exp_le1(Fraction(1), src):
            v += 1
        y = (u + t * v) // s
        negative = src.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_gaussian(sigma2: Fraction | int, *, source: RandomSource | None = None) -> int:
    """One sample of the discrete Gaussian ``N_Z(sigma2)``: ``P[x] ∝ exp(-x^2 / (2 sigma2))``.

    CKS20 Algorithm 3: ``t = floor(sigma) + 1``; propose ``Y ~ Lap_Z(t)``, accept with
    probability ``exp(-(|Y| - sigma2/t)^2 / (2 sigma2))``. Exact for any rational ``sigma2 > 0``.

    Args:
        sigma2: the variance parameter (a rational; the true variance is slightly below it,
            CKS20 Corollary 9).
        source: randomness (default: the OS CSPRNG).

    Raises:
        ConfigError: if ``sigma2`` is not a positive int/Fraction.
    """
    s2 = _check_rational("sigma2", sigma2, positive=True)
    src = _SYSTEM if source is None else source
    t = isqrt(s2.numerator // s2.denominator) + 1  # floor(sqrt(p/q)) = isqrt(floor(p/q))
    while True:
        y = discrete_laplace(t, source=src)
        gamma = (abs(y) - s2 / t) ** 2 / (2 * s2)
        if bernoulli_exp(gamma, source=src):
            return y


# --- batch: the same algorithms on numpy lanes -------------------------------------------------


_WORDS: tuple[tuple[int, type[np.unsignedinteger[Any]]], ...] = (
    (16, np.uint16),
    (32, np.uint32),
    (64, np.uint64),
)


def _words(src: RandomSource, size: int, dtype: type[np.unsignedinteger[Any]]) -> NDArray[Any]:
    """``size`` uniform words of ``dtype`` (little-endian) from the source's bytes."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(src.token_bytes(width * size), dtype=np.dtype(dtype).newbyteorder("<"))


def _uniform_below(bound: NDArray[np.uint64], src: RandomSource) -> NDArray[np.uint64]:
    """Per lane a uniform integer in ``[0, bound_i)`` (``1 <= bound_i < 2^63``), by rejection.

    Words of w bits (the narrowest of 16, 32, 64 with every bound below 2^(w-4), so a word is
    rejected with probability below 1/16): a word r is accepted when
    ``r < 2^w - (2^w mod b)``, so ``r mod b`` is unbiased. Narrow words save CSPRNG bytes,
    which dominate the sampler's cost.
    """
    out = np.empty(bound.shape, dtype=np.uint64)
    if bound.size == 0:
        return out
    top = int(bound.max())
    dtype = next(d for w, d in _WORDS if top <= 1 << (w - 4) or w == 64)
    b = bound.astype(dtype)
    rem = (dtype(0) - b) % b  # (2^w - b) mod b == 2^w mod b (wrapping unsigned arithmetic)
    limit = np.iinfo(dtype).max - rem
    todo = np.arange(bound.size)
    while todo.size:
        r = _words(src, todo.size, dtype)
        ok = r <= limit[todo]
        idx = todo[ok]
        out[idx] = r[ok] % b[idx]
        todo = todo[~ok]
    return out


def _bernoulli_inverse(k: NDArray[np.uint64], src: RandomSource) -> NDArray[np.bool_]:
    """Per lane Bernoulli(1 / k_i)."""
    hit: NDArray[np.bool_] = _uniform_below(k, src) == 0
    return hit


def _random_bits(src: RandomSource, size: int) -> NDArray[np.bool_]:
    """``size`` fair coins, eight per CSPRNG byte."""
    raw = np.frombuffer(src.token_bytes((size + 7) // 8), dtype=np.uint8)
    bits: NDArray[np.bool_] = np.unpackbits(raw)[:size].astype(np.bool_)
    return bits


class _Gamma(Protocol):
    """Per-lane Bernoulli(gamma_i) for gamma_i in [0, 1], for the lanes ``idx``."""

    def __call__(self, idx: NDArray[np.intp]) -> NDArray[np.bool_]: ...


def _bernoulli_exp_lanes(m: int, gamma: _Gamma | None, src: RandomSource) -> NDArray[np.bool_]:
    """Per lane Bernoulli(exp(-gamma_i)), gamma_i in [0, 1] (``None``: gamma = 1).

    CKS20 Algorithm 1 on every lane at once: Bernoulli(gamma/K) is drawn as
    Bernoulli(gamma) AND Bernoulli(1/K), independent, so no lane needs the product ``t * K``.
    """
    result = np.empty(m, dtype=np.bool_)
    k = np.ones(m, dtype=np.uint64)
    active = np.arange(m)
    first = True
    while active.size:
        # Bernoulli(1/1) is certain: the first round needs no draw for it.
        a = np.ones(active.size, dtype=np.bool_) if first else _bernoulli_inverse(k[active], src)
        first = False
        if gamma is not None:
            a &= gamma(active)
        done = active[~a]
        result[done] = k[done] % np.uint64(2) == np.uint64(1)
        active = active[a]
        k[active] += np.uint64(1)
    return result


def _geometric_exp1(m: int, src: RandomSource) -> NDArray[np.int64]:
    """Per lane the number of Bernoulli(exp(-1)) successes before the first failure."""
    v = np.zeros(m, dtype=np.int64)
    active = np.arange(m)
    while active.size:
        ok = _bernoulli_exp_lanes(active.size, None, src)
        active = active[ok]
        v[active] += 1
    return v


def _below_fraction(num: NDArray[np.uint64], den: np.uint64, src: RandomSource) -> _Gamma:
    """Per lane Bernoulli(num_i / den) for ``den < 2^63``: a uniform integer below den < num_i."""

    def draw(idx: NDArray[np.intp]) -> NDArray[np.bool_]:
        hit: NDArray[np.bool_] = _uniform_below(np.full(idx.size, den), src) < num[idx]
        return hit

    return draw


def _laplace_lanes(t: int, m: int, src: RandomSource) -> NDArray[np.int64]:
    """``m`` samples of ``Lap_Z(t)`` for an integer ``1 <= t <= 2^55 + 1`` (CKS20 Alg. 2, s=1)."""
    out = np.empty(m, dtype=np.int64)
    bound_t = np.uint64(t)
    todo = np.arange(m)
    while todo.size:
        n = todo.size
        u = _uniform_below(np.full(n, bound_t), src)
        # D ~ Bernoulli(exp(-U/t)); Bernoulli(U/t) is "uniform below t < U".
        d = _bernoulli_exp_lanes(n, _below_fraction(u, bound_t, src), src)
        pos = np.nonzero(d)[0]
        u, lanes = u[pos], todo[pos]
        v = _geometric_exp1(lanes.size, src)
        if np.any(v > (_INT64_MAX - (t - 1)) // t):
            raise EncodingOverflow(
                "discrete Laplace sample does not fit int64 (an event of probability below "
                "exp(-256)); draw again"
            )
        x = u.astype(np.int64) + np.int64(t) * v
        negative = _random_bits(src, lanes.size)
        keep = ~(negative & (x == 0))
        out[lanes[keep]] = np.where(negative, -x, x)[keep]
        retry = np.ones(n, dtype=np.bool_)
        retry[pos[keep]] = False
        todo = todo[retry]
    return out


def _bernoulli_fraction_lanes(
    num: list[int], den: int, idx: NDArray[np.intp], chunk: NDArray[np.uint64], src: RandomSource
) -> NDArray[np.bool_]:
    """Per lane Bernoulli(num_i / den) for ``0 <= num_i < den`` (any size) at lanes ``idx``.

    ``chunk_i = floor(num_i * 2^64 / den)``. A uniform word w < chunk_i means a uniform real in
    [0,1) is below num_i/den; w > chunk_i means it is above; on a tie (probability 2^-64) the
    remaining fraction ``(num_i * 2^64 - chunk_i * den) / den`` decides, exactly.
    """
    w = _words(src, idx.size, np.uint64)
    c = chunk[idx]
    res: NDArray[np.bool_] = w < c
    for j in np.nonzero(w == c)[0].tolist():
        i = int(idx[j])
        res[j] = src.randbelow(den) < (num[i] << 64) - int(c[j]) * den
    return res


def _gaussian_accept(
    y: NDArray[np.int64], s2: Fraction, t: int, src: RandomSource
) -> NDArray[np.bool_]:
    """Per lane Bernoulli(exp(-(|y| - s2/t)^2 / (2 s2))) exactly (CKS20 Algorithm 3's test).

    With ``s2 = p/q``: ``gamma = (|y| t q - p)^2 / (2 p q t^2) = k + r/den``, ``0 <= r < den``.
    Bernoulli(exp(-gamma)) = k Bernoulli(exp(-1)) successes, then Bernoulli(exp(-r/den)).
    """
    p, q = s2.numerator, s2.denominator
    den = 2 * p * q * t * t
    tq = t * q
    top = int(np.abs(y).max(initial=0)) * tq + p
    if top * top <= _INT64_MAX and den <= _INT64_MAX:
        # Everything fits int64: plain numpy, and Bernoulli(r/den) is "uniform below den < r".
        a = np.abs(y) * np.int64(tq) - np.int64(p)
        nums = a * a
        whole = nums // np.int64(den)
        rest = (nums - whole * np.int64(den)).astype(np.uint64)
        bound = np.uint64(den)

        def fraction_at(sub: NDArray[np.intp]) -> _Gamma:
            return _below_fraction(rest[sub], bound, src)

    else:
        big = [(a * tq - p) ** 2 for a in np.abs(y).tolist()]
        # k_i >= 2^63 would need 2^63 Bernoulli(exp(-1)) successes in a row (probability
        # exp(-2^63)): capping it at 2^63 - 1 cannot be observed.
        whole = np.array([min(n // den, _INT64_MAX) for n in big], dtype=np.int64)

        def fraction_at(sub: NDArray[np.intp]) -> _Gamma:
            r = [big[i] % den for i in sub.tolist()]
            chunk = np.array([(x << 64) // den for x in r], dtype=np.uint64)
            return lambda idx: _bernoulli_fraction_lanes(r, den, idx, chunk, src)

    ok = np.ones(y.size, dtype=np.bool_)
    # The integer part: k_i independent Bernoulli(exp(-1)) must all succeed.
    remaining = whole.copy()
    active = np.nonzero(remaining > 0)[0]
    while active.size:
        b = _bernoulli_exp_lanes(active.size, None, src)
        ok[active[~b]] = False
        remaining[active[b]] -= 1
        active = active[b]
        active = active[remaining[active] > 0]
    # The fractional part, for the lanes still accepted.
    lanes = np.nonzero(ok)[0]
    if lanes.size:
        ok[lanes] = _bernoulli_exp_lanes(lanes.size, fraction_at(lanes), src)
    return ok


def discrete_laplace_array(
    scale: int, size: int, *, source: RandomSource | None = None
) -> NDArray[np.int64]:
    """``size`` independent samples of ``Lap_Z(scale)`` for an integer scale (CKS20 Alg. 2).

    Raises:
        ConfigError: if ``scale`` is not an int in ``[1, 2^55]`` or ``size`` is negative.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 1 << 55:
        raise ConfigError(f"scale must be an int in 1 .. 2^55, got {scale!r}")
    n = _check_size(size)
    return _laplace_lanes(scale, n, _SYSTEM if source is None else source)


def discrete_gaussian_array(
    sigma2: Fraction | int, size: int, *, source: RandomSource | None = None
) -> NDArray[np.int64]:
    """``size`` independent samples of ``N_Z(sigma2)``, exactly, vectorised (CKS20 Alg. 3).

    The distribution is the same as :func:`discrete_gaussian`'s; only the bookkeeping differs
    (all lanes propose and test at once; rejected lanes propose again).

    Args:
        sigma2: the variance parameter, a rational in ``(0, 2^110]``.
        size: how many samples.
        source: randomness (default: the OS CSPRNG).

    Returns:
        An int64 array of shape ``(size,)``.

    Raises:
        ConfigError: if ``sigma2`` is not a positive int/Fraction up to ``MAX_SIGMA2``, or
            ``size`` is negative.
    """
    s2 = _check_rational("sigma2", sigma2, positive=True)
    if s2 > MAX_SIGMA2:
        raise ConfigError(f"sigma2 must be at most 2^110 for the batch sampler, got {s2}")
    n = _check_size(size)
    src = _SYSTEM if source is None else source
    t = isqrt(s2.numerator // s2.denominator) + 1
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        # propose half as much again as is missing: each pass costs more in fixed
        # overhead than in lanes for short vectors; accepted proposals are i.i.d. N_Z(sigma2)
        # and are taken in lane order, which does not depend on their values
        want = n - filled
        y = _laplace_lanes(t, want + want // 2 + 1, src)
        accepted = y[_gaussian_accept(y, s2, t, src)][:want]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out
