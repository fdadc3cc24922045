"""The exact samplers of trustspace.dp against the exact pmfs (chi-square, KS, moments).

Most tests draw from a seeded source (reproducible: a statistical test that can fail only if
the code changes); one per sampler also draws from the OS CSPRNG, at a threshold (p > 1e-6) that
a correct sampler fails once in a million runs. The pmf is computed here independently,
``exp(-x^2 / (2 sigma2))`` normalised over a support wide enough that the rest is below 1e-30.
"""

from __future__ import annotations

import ast
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from trustspace.dp import (
    MAX_SIGMA2,
    _sample,
    bernoulli_exp,
    discrete_gaussian,
    discrete_gaussian_array,
    discrete_laplace,
    discrete_laplace_array,
)
from trustspace.errors import ConfigError


class SeededSource:
    """A reproducible source for tests only (Mersenne Twister: never for real noise)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.randbelow_calls = 0

    def randbelow(self, n: int) -> int:
        self.randbelow_calls += 1
        return self._rng.randrange(n)

    def token_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)


def gaussian_pmf(sigma2: float, xs: np.ndarray) -> np.ndarray:
    half = int(12 * np.sqrt(sigma2)) + 12
    support = np.arange(-half, half + 1, dtype=np.float64)
    z = np.exp(-(support**2) / (2 * sigma2)).sum()
    return np.exp(-(xs.astype(np.float64) ** 2) / (2 * sigma2)) / z


def laplace_pmf(scale: float, xs: np.ndarray) -> np.ndarray:
    q = np.exp(-1 / scale)
    return (1 - q) / (1 + q) * q ** np.abs(xs)


def chi_square_p(samples: np.ndarray, pmf) -> float:
    """Chi-square goodness of fit on integer bins, tails pooled so every bin expects >= 5."""
    n = samples.size
    lo, hi = int(samples.min()), int(samples.max())
    half = max(abs(lo), abs(hi)) + 1
    xs = np.arange(-half, half + 1)
    expected = pmf(xs) * n
    keep = expected >= 5
    inner = xs[keep]
    a, b = int(inner.min()), int(inner.max())
    observed = np.array(
        [np.sum(samples < a)]
        + [np.sum(samples == x) for x in range(a, b + 1)]
        + [np.sum(samples > b)]
    )
    exp_inner = pmf(np.arange(a, b + 1)) * n
    tail = (n - exp_inner.sum()) / 2  # the pmf is symmetric
    expected = np.concatenate([[tail], exp_inner, [tail]])
    if tail < 5:  # fold the tails into the outermost bins
        observed = np.concatenate(
            [[observed[0] + observed[1]], observed[2:-2], [observed[-2] + observed[-1]]]
        )
        expected = np.concatenate(
            [[expected[0] + expected[1]], expected[2:-2], [expected[-2] + expected[-1]]]
        )
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


SIGMA2S = [Fraction(1, 4), Fraction(1), Fraction(9, 4), Fraction(10), Fraction(1000, 3)]


@pytest.mark.parametrize("sigma2", SIGMA2S, ids=str)
def test_batch_gaussian_fits_the_exact_pmf(sigma2: Fraction) -> None:
    x = discrete_gaussian_array(sigma2, 20_000, source=SeededSource(int(sigma2 * 12)))
    assert x.dtype == np.int64
    assert chi_square_p(x, lambda xs: gaussian_pmf(float(sigma2), xs)) > 1e-4


def test_batch_gaussian_from_the_os_csprng_fits_the_pmf() -> None:
    x = discrete_gaussian_array(Fraction(7, 2), 20_000)
    assert chi_square_p(x, lambda xs: gaussian_pmf(3.5, xs)) > 1e-6


@pytest.mark.parametrize("sigma2", [Fraction(9, 4), Fraction(30)], ids=str)
def test_scalar_reference_gaussian_fits_the_exact_pmf(sigma2: Fraction) -> None:
    src = SeededSource(99)
    x = np.array([discrete_gaussian(sigma2, source=src) for _ in range(2000)])
    assert chi_square_p(x, lambda xs: gaussian_pmf(float(sigma2), xs)) > 1e-4


def test_scalar_gaussian_from_the_os_csprng_fits_the_pmf() -> None:
    x = np.array([discrete_gaussian(Fraction(2)) for _ in range(2000)])
    assert chi_square_p(x, lambda xs: gaussian_pmf(2.0, xs)) > 1e-6


@pytest.mark.parametrize(
    "sigma2", [Fraction(10**12 + 1, 3), Fraction(2**80) + Fraction(1, 3)], ids=str
)
def test_large_sigma_is_gaussian_by_ks(sigma2: Fraction) -> None:
    # Beyond int64 intermediates (big-integer acceptance path): KS against N(0, sigma2).
    x = discrete_gaussian_array(sigma2, 5000, source=SeededSource(5))
    z = x.astype(np.float64) / np.sqrt(float(sigma2))
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_mean_and_variance() -> None:
    sigma2, n = 100.0, 50_000
    x = discrete_gaussian_array(Fraction(100), n, source=SeededSource(11)).astype(np.float64)
    # For sigma2 >= 1 the variance of N_Z(sigma2) equals sigma2 to within 1e-8 (CKS20).
    assert abs(x.mean()) < 5 * np.sqrt(sigma2 / n)
    assert abs(x.var() - sigma2) < 5 * sigma2 * np.sqrt(2 / n)
    assert abs(stats.skew(x)) < 5 * np.sqrt(6 / n)


def test_a_wrong_sigma_is_detected() -> None:
    # The test can fail: samples with sigma2 10% too large are rejected by the same check.
    x = discrete_gaussian_array(Fraction(11), 20_000, source=SeededSource(3))
    assert chi_square_p(x, lambda xs: gaussian_pmf(10.0, xs)) < 1e-6
    # ... and so is the discrete Laplace of the same variance passed off as a Gaussian.
    lap = discrete_laplace_array(2, 20_000, source=SeededSource(4))  # variance 2q/(1-q)^2 ~ 7.6
    assert chi_square_p(lap, lambda xs: gaussian_pmf(float(lap.var()), xs)) < 1e-6


@pytest.mark.parametrize("scale", [1, 3, 40])
def test_batch_laplace_fits_the_exact_pmf(scale: int) -> None:
    x = discrete_laplace_array(scale, 20_000, source=SeededSource(scale))
    assert chi_square_p(x, lambda xs: laplace_pmf(scale, xs)) > 1e-4


def test_scalar_laplace_with_a_rational_scale_fits_the_pmf() -> None:
    src = SeededSource(8)
    x = np.array([discrete_laplace(Fraction(5, 2), source=src) for _ in range(4000)])
    assert chi_square_p(x, lambda xs: laplace_pmf(2.5, xs)) > 1e-4


@pytest.mark.parametrize(
    "gamma", [Fraction(0), Fraction(1, 2), Fraction(1), Fraction(7, 3)], ids=str
)
def test_bernoulli_exp_has_probability_exp_minus_gamma(gamma: Fraction) -> None:
    src = SeededSource(21)
    n = 6000
    hits = sum(bernoulli_exp(gamma, source=src) for _ in range(n))
    assert stats.binomtest(hits, n, float(np.exp(-float(gamma)))).pvalue > 1e-4 or gamma == 0
    if gamma == 0:
        assert hits == n


def test_sum_of_shares_is_close_to_the_total_discrete_gaussian() -> None:
    # Five nodes add N_Z(4) each; the total is within KLS21's bound of N_Z(20), and a
    # chi-square test on 20,000 totals cannot tell them apart.
    src = SeededSource(17)
    shares = np.stack([discrete_gaussian_array(Fraction(4), 20_000, source=src) for _ in range(5)])
    total = shares.sum(axis=0)
    assert chi_square_p(total, lambda xs: gaussian_pmf(20.0, xs)) > 1e-4


def test_the_tie_of_the_64_bit_comparison_is_resolved_exactly() -> None:
    # Bernoulli(1/3) with a source whose 64-bit word equals floor(2^64/3): the comparison ties
    # and the exact remainder decides with randbelow(3) < 2^64 - 3 floor(2^64/3) = 1.
    chunk = (1 << 64) // 3

    class Tie(SeededSource):
        def token_bytes(self, n: int) -> bytes:
            return chunk.to_bytes(8, "little") * (n // 8)

    src = Tie(0)
    idx = np.arange(4)
    got = _sample._bernoulli_fraction_lanes([1] * 4, 3, idx, np.full(4, chunk, np.uint64), src)
    assert src.randbelow_calls == 4
    again = random.Random(0)
    assert got.tolist() == [again.randrange(3) < 1 for _ in range(4)]


def test_uniform_below_is_uniform_for_awkward_bounds() -> None:
    src = SeededSource(2)
    for bound in (3, 2**15 + 1, 2**31 - 1, 2**62 + 7):
        u = _sample._uniform_below(np.full(30_000, bound, np.uint64), src)
        assert int(u.max()) < bound
        # Top and bottom thirds equally often (modulo bias would skew them).
        low = np.sum(u < np.uint64(bound // 3))
        high = np.sum(u >= np.uint64(bound - bound // 3))
        assert stats.binomtest(int(low), int(low + high), 0.5).pvalue > 1e-4


@pytest.mark.parametrize(
    ("sigma2", "message"),
    [
        (2.5, "Fraction"),
        (True, "Fraction"),
        (Fraction(0), "> 0"),
        (-1, "> 0"),
        (MAX_SIGMA2 + 1, "at most 2"),
    ],
)
def test_bad_sigma2_is_refused(sigma2: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        discrete_gaussian_array(sigma2, 3)  # type: ignore[arg-type]


def test_bad_sizes_and_scales_are_refused() -> None:
    with pytest.raises(ConfigError, match="size"):
        discrete_gaussian_array(Fraction(1), -1)
    with pytest.raises(ConfigError, match="scale"):
        discrete_laplace_array(0, 3)
    with pytest.raises(ConfigError, match="gamma"):
        bernoulli_exp(Fraction(-1))
    assert discrete_gaussian_array(Fraction(1), 0).shape == (0,)


def test_library_randomness_comes_only_from_secrets() -> None:
    # No float sampler and no seeded generator in the package: the modules import neither
    # random nor numpy.random, and call no np.random.* function.
    for path in Path(_sample.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name not in ("random", "numpy.random") for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("random", "numpy.random"), path
            if isinstance(node, ast.Attribute) and node.attr == "random":
                assert not (
                    isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
                ), path
