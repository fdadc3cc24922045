"""zCDP accounting of the distributed discrete Gaussian: rho, composition, (epsilon, delta), shares.

The mechanism: for a query whose integer-encoded answer has L2 sensitivity ``Delta`` (L1
``Delta_1``), each of up to ``n`` nodes adds independent noise ``N_Z(s2)^d`` (CKS20 discrete
Gaussian, :mod:`trustspace.dp._sample`) to its encoded vector before secure-aggregation masking.
The total that the aggregator unmasks carries the noise of every surviving node. With ``t`` the
least number of noise shares that are in any total and unknown to the adversary, the share is

    s2 = node_variance(sigma2, t) = sigma2 / t,

so ``m >= t`` shares sum to a variance parameter ``m * s2 >= sigma2``. A sum of discrete
Gaussians is not a discrete Gaussian; Kairouz, Liu and Steinke, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation" (ICML 2021,
arXiv:2102.06387), Proposition 14, bound its Rényi divergence for ``s2 >= 1/4``:

    rho(m) = 1/2 * ( Delta^2 / (m s2) + 2 Delta_1 tau_m / sqrt(m s2) + tau_m^2 d ),
    tau_m  = 10 * sum_{k=1}^{m-1} exp(-2 pi^2 s2 k / (k+1)).

(The bound is linear in the Rényi order, i.e. zCDP; its ``Delta_1 = sqrt(d) Delta`` form is
``(Delta/sqrt(m s2) + tau_m sqrt(d))^2 / 2``.) A plan takes the largest ``rho(m)`` over every
survivor count ``t <= m <= n``, and raises ``s2`` above ``sigma2 / t`` until that maximum meets
the target, so the extra ``tau`` terms are paid for, never ignored.

zCDP (Bun and Steinke, "Concentrated Differential Privacy: Simplifications, Extensions, and
Lower Bounds", TCC 2016): the discrete Gaussian with parameter ``sigma2`` on a query of L2
sensitivity ``Delta`` is ``Delta^2 / (2 sigma2)``-zCDP (CKS20 Theorem 4, applied per coordinate:
Rényi divergences of product distributions add; for the continuous Gaussian, BS16 Prop. 1.6);
rho adds up under composition (BS16 Lemma 1.7); and rho-zCDP implies ``(epsilon, delta)``-DP by
the conversion of CKS20 Corollary 13,

    epsilon(rho, delta) = inf_{alpha > 1} alpha rho + (log(1/delta) + (alpha-1) log(1-1/alpha)
                          - log(alpha)) / (alpha - 1),

which is never worse than BS16 Prop. 1.3, ``rho + 2 sqrt(rho log(1/delta))``. Any alpha gives a
valid bound, so a numerical search for alpha can only lose tightness, never validity; every
function here rounds towards more privacy loss (epsilon, rho of a mechanism up; rho allowed by a
budget down; variances up).

>>> from fractions import Fraction
>>> rho_of(1, Fraction(50))
0.01
>>> round(epsilon_of(0.01, 1e-6), 4)
0.6217
>>> p = plan(1.0, 1e-6, 1, t=3, n=3)
>>> p.rho <= rho_for(1.0, 1e-6) and p.epsilon <= 1.0
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

from trustspace.errors import ConfigError

__all__ = [
    "NoisePlan",
    "compose",
    "delta_of",
    "discrete_gaussian_variance",
    "distributed_rho",
    "epsilon_of",
    "interval_halfwidth",
    "node_variance",
    "plan",
    "rho_for",
    "rho_of",
    "rho_of_sum",
    "sigma2_for",
    "sigma_for",
    "tau",
]

# A float result is pushed up by this relative margin: far above float rounding error (1e-16
# per operation, a few hundred operations), far below anything that matters for a budget.
_UP = 1.0 + 1e-12
# Variances are rounded up to a rational with a power-of-two denominator, at most this far
# above the exact value (relative); the samplers then run on small exact integers.
_VARIANCE_BITS = 20
# The node share must be a discrete Gaussian with s2 >= 1/4 for KLS21 Prop. 14 (sigma >= 1/2).
MIN_NODE_SIGMA2 = Fraction(1, 4)
# No survivor count above this is searched (a data space of more nodes should say so).
MAX_NODES = 100_000


def _number(name: str, value: object, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    x = float(value)
    if not (math.isfinite(x) and low < x < high):
        bounds = f"in ({low}, {high})" if math.isfinite(high) else f"> {low}"
        raise ConfigError(f"{name} must be a finite number {bounds}, got {value!r}")
    return x


def _count(name: str, value: object, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _exact(name: str, value: object) -> Fraction:
    _number(name, value)
    assert isinstance(value, int | float | Fraction)
    return Fraction(value)


def _up(x: Fraction) -> float:
    """The least float >= x."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def _floor_log2(x: Fraction) -> int:
    """floor(log2 x) for x > 0, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()  # floor(log2 x) is e or e - 1
    return e - 1 if Fraction(2) ** e > x else e


def _round_up_variance(x: Fraction) -> Fraction:
    """x rounded up to ``ceil(x 2^k) / 2^k`` with ``k = max(0, 20 - floor(log2 x))``.

    At most 2^-20 relative above x; an integer once x >= 2^20.
    """
    k = max(0, _VARIANCE_BITS - _floor_log2(x))
    scaled = x * (1 << k)
    return Fraction(-(-scaled.numerator // scaled.denominator), 1 << k)


# --- one discrete Gaussian ---------------------------------------------------------------------


def rho_of(sensitivity: float | Fraction, sigma2: float | Fraction) -> float:
    """The zCDP of the discrete Gaussian: ``rho = Delta^2 / (2 sigma2)``.

    A query of L2 sensitivity ``Delta`` (on integer-encoded values) released with noise
    ``N_Z(sigma2)`` per coordinate is rho-zCDP (CKS20 Theorem 4, coordinate-wise; BS16
    Prop. 1.6 for the continuous Gaussian).

    Args:
        sensitivity: the L2 sensitivity ``Delta > 0`` in encoded units.
        sigma2: the noise's variance parameter ``> 0``.

    Returns:
        rho, rounded up.

    Raises:
        ConfigError: if an argument is not a finite positive number.
    """
    d = _exact("sensitivity", sensitivity)
    s2 = _exact("sigma2", sigma2)
    return _up(d * d / (2 * s2))


def compose(rhos: Iterable[float]) -> float:
    """Sequential composition in zCDP: ``rho = rho_1 + ... + rho_k`` (BS16 Lemma 1.7), rounded up.

    Raises:
        ConfigError: if a rho is negative or not finite.
    """
    total = Fraction(0)
    for i, r in enumerate(rhos):
        if isinstance(r, bool) or not isinstance(r, int | float | Fraction):
            raise ConfigError(f"rho[{i}] must be a number, got {r!r}")
        if not (math.isfinite(float(r)) and r >= 0):
            raise ConfigError(f"rho[{i}] must be a finite number >= 0, got {r!r}")
        total += Fraction(r)
    return _up(total)


def _eps_at(rho: float, log_inv_delta: float, alpha: float) -> float:
    # CKS20 Corollary 13 at one order alpha > 1 (valid for every alpha).
    am1 = alpha - 1.0
    return alpha * rho + (log_inv_delta + am1 * math.log1p(-1.0 / alpha) - math.log(alpha)) / am1


def _argmin_alpha(f: Callable[[float], float], rho: float, spread: float) -> float:
    """A good order alpha for f (any alpha > 1 is valid; this only buys tightness)."""
    # The optimum is near 1 + sqrt(log(1/delta) / rho); scan a log grid of alpha - 1, refine.
    centre = math.log(max(spread / rho, 1e-300)) / 2
    grid = [math.exp(centre + i / 4) for i in range(-120, 121)]
    best = min(range(len(grid)), key=lambda i: f(1.0 + grid[i]))
    lo = math.log(grid[max(best - 1, 0)])
    hi = math.log(grid[min(best + 1, len(grid) - 1)])
    for _ in range(80):  # golden-section search on log(alpha - 1)
        a = hi - (hi - lo) * 0.6180339887498949
        b = lo + (hi - lo) * 0.6180339887498949
        if f(1.0 + math.exp(a)) <= f(1.0 + math.exp(b)):
            hi = b
        else:
            lo = a
    return 1.0 + math.exp((lo + hi) / 2)


def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon of rho-zCDP at a given delta (CKS20 Corollary 13).

    ``epsilon = inf_{alpha>1} alpha rho + (log(1/delta) + (alpha-1) log(1-1/alpha) - log alpha)
    / (alpha-1)``, never more than BS16 Prop. 1.3's ``rho + 2 sqrt(rho log(1/delta))``.

    Args:
        rho: the zCDP parameter ``>= 0``.
        delta: in ``(0, 1)``.

    Returns:
        epsilon ``>= 0``, rounded up (0 for rho = 0).

    Raises:
        ConfigError: if rho is negative or not finite, or delta is outside ``(0, 1)``.
    """
    if isinstance(rho, bool) or not isinstance(rho, int | float | Fraction):
        raise ConfigError(f"rho must be a number, got {rho!r}")
    r = float(rho)
    if not (math.isfinite(r) and r >= 0):
        raise ConfigError(f"rho must be a finite number >= 0, got {rho!r}")
    d = _number("delta", delta, high=1.0)
    if r == 0:
        return 0.0
    li = math.log(1.0 / d)
    simple = r + 2.0 * math.sqrt(r * li)
    alpha = _argmin_alpha(lambda a: _eps_at(r, li, a), r, li)
    return max(0.0, min(simple, _eps_at(r, li, alpha))) * _UP


def delta_of(rho: float, epsilon: float) -> float:
    """The delta of rho-zCDP at a given epsilon (CKS20 Corollary 13, the other way round).

    ``delta = inf_{alpha>1} exp((alpha-1)(alpha rho - epsilon)) (1-1/alpha)^alpha / (alpha-1)``.

    Raises:
        ConfigError: if rho is not a finite number > 0 or epsilon is not finite and > 0.
    """
    r = _number("rho", rho)
    e = _number("epsilon", epsilon)

    def log_delta(a: float) -> float:
        return (a - 1.0) * (a * r - e) + a * math.log1p(-1.0 / a) - math.log(a - 1.0)

    alpha = _argmin_alpha(log_delta, r, e + 1.0)
    return min(1.0, math.exp(log_delta(alpha)) * _UP)


def rho_for(epsilon: float, delta: float) -> float:
    """The largest rho whose :func:`epsilon_of` at ``delta`` is at most ``epsilon``.

    The inverse of CKS20 Corollary 13 by bisection (epsilon_of increases with rho); the result
    is the lower end of the bracket, so ``epsilon_of(rho_for(e, d), d) <= e`` always holds.

    Raises:
        ConfigError: if epsilon is not finite and > 0, or delta is outside ``(0, 1)``.
    """
    return _rho_for(_number("epsilon", epsilon), _number("delta", delta, high=1.0))


@functools.lru_cache(maxsize=4096)  # pure, and ~10 ms of bisection: nodes ask per query
def _rho_for(e: float, d: float) -> float:
    lo, hi = 0.0, e
    while epsilon_of(hi, d) <= e:  # only for delta close to 1
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if epsilon_of(mid, d) <= e:
            lo = mid
        else:
            hi = mid
    return lo


def sigma2_for(epsilon: float, delta: float, sensitivity: float | Fraction) -> Fraction:
    """The variance parameter that makes a query of L2 sensitivity ``Delta`` (epsilon, delta)-DP.

    ``sigma2 = Delta^2 / (2 rho_for(epsilon, delta))`` (inverting :func:`rho_of`), rounded up to
    a rational with a power-of-two denominator (at most 2^-20 relative above the exact value).

    Raises:
        ConfigError: if an argument is invalid (see :func:`rho_for`; sensitivity must be > 0).
    """
    d = _exact("sensitivity", sensitivity)
    rho = Fraction(rho_for(epsilon, delta))
    return _round_up_variance(d * d / (2 * rho))


def sigma_for(epsilon: float, delta: float, sensitivity: float | Fraction) -> float:
    """The standard-deviation parameter ``sqrt(sigma2_for(epsilon, delta, sensitivity))``."""
    return math.sqrt(sigma2_for(epsilon, delta, sensitivity))


# --- the distributed discrete Gaussian ---------------------------------------------------------


def node_variance(sigma2: float | Fraction, t: int) -> Fraction:
    """Each node's share of the noise: ``sigma2 / t``, rounded up to a short rational.

    Any ``m >= t`` shares sum to a variance parameter ``m * share >= sigma2``. ``t`` is the
    least number of shares that can be in a total and unknown to the adversary: the secure
    aggregation threshold, minus the number of nodes that may collude with the analyst (a node
    knows its own noise and can subtract it). The privacy of the sum is then bounded by
    :func:`distributed_rho`, which accounts for a sum of discrete Gaussians not being one.

    Raises:
        ConfigError: if sigma2 is not a finite positive number or t is not an int >= 1.
    """
    s2 = _exact("sigma2", sigma2)
    k = _count("t", t)
    return _round_up_variance(s2 / k)


def tau(node_sigma2: float | Fraction, m: int) -> float:
    """KLS21 Prop. 14's ``tau = 10 * sum_{k=1}^{m-1} exp(-2 pi^2 s2 k / (k+1))``, rounded up."""
    s2 = _number("node_sigma2", node_sigma2)
    count = _count("m", m)
    total = math.fsum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, count))
    return 10.0 * total * _UP


def rho_of_sum(
    sensitivity: float | Fraction,
    node_sigma2: float | Fraction,
    m: int,
    *,
    dim: int = 1,
    sensitivity_l1: float | Fraction | None = None,
) -> float:
    """The zCDP of a sum of ``m`` independent ``N_Z(node_sigma2)^dim`` (KLS21 Prop. 14).

    ``rho = 1/2 (Delta^2/(m s2) + 2 Delta_1 tau/sqrt(m s2) + tau^2 dim)`` with ``tau`` from
    :func:`tau`; ``Delta_1`` defaults to ``sqrt(dim) Delta`` (always a valid L1 bound).

    Raises:
        ConfigError: if an argument is invalid, or ``node_sigma2 < 1/4`` (outside Prop. 14).
    """
    d2 = _exact("sensitivity", sensitivity)
    s2 = _exact("node_sigma2", node_sigma2)
    count = _count("m", m)
    dims = _count("dim", dim)
    if s2 < MIN_NODE_SIGMA2:
        raise ConfigError(
            f"node_sigma2 must be >= 1/4 for the distributed discrete Gaussian bound (KLS21 "
            f"Prop. 14), got {float(s2):.6g}; encode the values on a finer fixed-point scale "
            "(multiplying the sensitivity and the noise's standard deviation alike)"
        )
    d1 = (
        math.sqrt(dims) * float(d2)
        if sensitivity_l1 is None
        else _number("sensitivity_l1", sensitivity_l1)
    )
    tau_m = tau(s2, count)
    main = d2 * d2 / (count * s2)
    extra = 2.0 * d1 * tau_m / math.sqrt(count * float(s2)) + tau_m * tau_m * dims
    return _up(main / 2) + extra / 2 * _UP


def distributed_rho(
    sensitivity: float | Fraction,
    node_sigma2: float | Fraction,
    *,
    t: int,
    n: int,
    dim: int = 1,
    sensitivity_l1: float | Fraction | None = None,
) -> float:
    """The worst :func:`rho_of_sum` over every count of surviving shares ``m`` in ``[t, n]``.

    Fewer shares mean less noise; more shares a larger ``tau``; the maximum covers every
    dropout pattern the protocol tolerates.

    Raises:
        ConfigError: if an argument is invalid or ``t > n``.
    """
    lo = _count("t", t)
    hi = _count("n", n)
    if lo > hi:
        raise ConfigError(f"t must be <= n, got t={t}, n={n}")
    if hi > MAX_NODES:
        raise ConfigError(f"n must be <= {MAX_NODES}, got {n}")
    return max(
        rho_of_sum(sensitivity, node_sigma2, m, dim=dim, sensitivity_l1=sensitivity_l1)
        for m in range(lo, hi + 1)
    )


@dataclass(frozen=True)
class NoisePlan:
    """What every node adds for one query, and the privacy that the total then has.

    Attributes:
        epsilon, delta: the target; the plan's own ``(epsilon_of(rho, delta), delta)`` is at
            most it.
        sensitivity, sensitivity_l1, dim: the query's L2 and L1 sensitivity and dimension, in
            encoded units.
        t, n: the least and the most noise shares in a total (see :func:`node_variance`).
        node_sigma2: each node's discrete Gaussian parameter (exact rational).
        rho: the guaranteed zCDP of the total, over every ``m`` in ``[t, n]``.
    """

    epsilon: float
    delta: float
    sensitivity: float
    sensitivity_l1: float
    dim: int
    t: int
    n: int
    node_sigma2: Fraction
    rho: float

    @property
    def total_sigma2(self) -> Fraction:
        """The least variance parameter of a total: ``t * node_sigma2``."""
        return self.t * self.node_sigma2

    @property
    def achieved_epsilon(self) -> float:
        """The epsilon that the total has at ``delta`` (at most ``epsilon``)."""
        return epsilon_of(self.rho, self.delta)


def plan(
    epsilon: float,
    delta: float,
    sensitivity: float | Fraction,
    *,
    t: int,
    n: int,
    dim: int = 1,
    sensitivity_l1: float | Fraction | None = None,
) -> NoisePlan:
    """Size each node's discrete Gaussian so that every total over ``t..n`` shares is (e, d)-DP.

    Starts from ``node_variance(sigma2_for(epsilon, delta, sensitivity), t)`` and raises the
    share (by 2^-20 steps of relative size, then by bisection) until ``distributed_rho`` is at
    most ``rho_for(epsilon, delta)``.

    Raises:
        ConfigError: if an argument is invalid, or the share would fall below 1/4 (then the
            message says by how much to refine the fixed-point scale).
    """
    rho_for(epsilon, delta)  # checks both (a bool is not a number)
    _exact("sensitivity", sensitivity)
    for name, v in (("t", t), ("n", n), ("dim", dim)):
        _count(name, v)
    if sensitivity_l1 is not None:
        _number("sensitivity_l1", sensitivity_l1)
    return _plan(float(epsilon), float(delta), sensitivity, t, n, dim, sensitivity_l1)


@functools.lru_cache(maxsize=4096)  # pure (a frozen result), and ~20 ms: asked per round
def _plan(
    epsilon: float,
    delta: float,
    sensitivity: float | Fraction,
    t: int,
    n: int,
    dim: int,
    sensitivity_l1: float | Fraction | None,
) -> NoisePlan:
    target = rho_for(epsilon, delta)
    share = node_variance(sigma2_for(epsilon, delta, sensitivity), t)
    if share < MIN_NODE_SIGMA2:
        factor = math.ceil(math.sqrt(MIN_NODE_SIGMA2 / share))
        raise ConfigError(
            f"each of t={t} nodes would add noise of variance {float(share):.4g} < 1/4, too "
            "little for the distributed discrete Gaussian bound (KLS21 Prop. 14); encode the "
            f"values on a fixed-point scale at least {factor}x finer (the sensitivity grows "
            "with it) so that every share is large enough"
        )

    def rho_at(s2: Fraction) -> float:
        return distributed_rho(sensitivity, s2, t=t, n=n, dim=dim, sensitivity_l1=sensitivity_l1)

    if rho_at(share) > target:
        lo, hi = share, share * 2
        while rho_at(hi) > target:
            lo, hi = hi, hi * 2
        for _ in range(60):
            mid = _round_up_variance((lo + hi) / 2)
            if mid >= hi:
                break
            if rho_at(mid) > target:
                lo = mid
            else:
                hi = mid
        share = hi
    dims = _count("dim", dim)
    d2 = float(sensitivity)
    return NoisePlan(
        epsilon=float(epsilon),
        delta=float(delta),
        sensitivity=d2,
        sensitivity_l1=math.sqrt(dims) * d2 if sensitivity_l1 is None else float(sensitivity_l1),
        dim=dims,
        t=t,
        n=n,
        node_sigma2=share,
        rho=rho_at(share),
    )


# --- accuracy ----------------------------------------------------------------------------------


def discrete_gaussian_variance(sigma2: float | Fraction) -> float:
    """The true variance of ``N_Z(sigma2)``: slightly below sigma2 (CKS20 Corollary 9).

    Summed exactly over ``|x| <= 40 sigma + 2`` for ``sigma2 < 100`` (the rest is below 1e-300);
    for ``sigma2 >= 100`` the difference from sigma2 is below ``sigma2 * 1e-800`` (Poisson
    summation) and sigma2 is returned.
    """
    s2 = _number("sigma2", sigma2)
    if s2 >= 100:
        return s2
    half = int(40 * math.sqrt(s2)) + 2
    weights = [math.exp(-(x * x) / (2 * s2)) for x in range(half + 1)]
    z = weights[0] + 2 * math.fsum(weights[1:])
    return 2 * math.fsum(x * x * w for x, w in enumerate(weights)) / z


def interval_halfwidth(variance: float, level: float = 0.95) -> float:
    """Half the width of the central ``level`` interval of noise with this variance.

    The normal quantile ``z_{(1+level)/2} * sqrt(variance)``: a sum of several discrete
    Gaussians of standard deviation >= 1/2 is close to normal (KLS21 §3); reported with a
    result, this is an accuracy statement, not a privacy one.
    """
    v = _number("variance", variance)
    lv = _number("level", level, high=1.0)
    return NormalDist().inv_cdf((1 + lv) / 2) * math.sqrt(v)
