"""zCDP accounting of trustspace.dp, cross-checked against OpenDP where it has the same map.

OpenDP (opendp 0.16) is an independent implementation: its discrete Gaussian measurement
(``make_gaussian`` on integers) maps a sensitivity to rho, and ``make_zCDP_to_approxDP`` converts
rho to an (epsilon, delta) profile by CKS20's conversion. The distributed bound (KLS21 Prop. 14)
has no OpenDP counterpart; it is checked against its own definition and its limits.
"""

from __future__ import annotations

import math
from fractions import Fraction

import opendp.prelude as dp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.dp import (
    MIN_NODE_SIGMA2,
    compose,
    delta_of,
    discrete_gaussian_variance,
    distributed_rho,
    epsilon_of,
    interval_halfwidth,
    node_variance,
    plan,
    rho_for,
    rho_of,
    rho_of_sum,
    sigma2_for,
    sigma_for,
    tau,
)
from trustspace.errors import ConfigError

dp.enable_features("contrib")


def opendp_gaussian(scale: float):
    return dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=scale)


@pytest.mark.parametrize("scale", [0.7, 1.0, 3.0, 7.5, 100.0])
@pytest.mark.parametrize("sensitivity", [1, 3])
def test_rho_of_matches_opendp_discrete_gaussian(scale: float, sensitivity: int) -> None:
    ours = rho_of(sensitivity, Fraction(scale) ** 2)
    theirs = opendp_gaussian(scale).map(sensitivity)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours >= sensitivity**2 / (2 * scale**2)  # rounded up, never down


@pytest.mark.parametrize("scale", [0.7, 1.0, 3.0, 7.5, 30.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-10])
def test_epsilon_of_matches_opendp_conversion(scale: float, delta: float) -> None:
    meas = dp.c.make_zCDP_to_approxDP(opendp_gaussian(scale))
    rho = opendp_gaussian(scale).map(1)
    theirs = meas.map(1).epsilon(delta)
    ours = epsilon_of(rho, delta)
    assert theirs * (1 - 1e-9) <= ours <= theirs * (1 + 1e-6)
    # Tighter than the simple Bun-Steinke bound rho + 2 sqrt(rho log(1/delta)).
    assert ours <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_sigma_for_gives_the_target_under_opendp() -> None:
    # The whole chain: sigma2_for -> OpenDP's own discrete Gaussian at that scale -> epsilon.
    for eps, delta, sens in [(1.0, 1e-6, 1), (0.1, 1e-9, 5), (4.0, 1e-5, 1)]:
        scale = math.sqrt(sigma2_for(eps, delta, sens))
        assert sigma_for(eps, delta, sens) == pytest.approx(scale)
        meas = dp.c.make_zCDP_to_approxDP(opendp_gaussian(scale))
        assert meas.map(sens).epsilon(delta) <= eps * (1 + 1e-9)
        # ... and not wastefully: 1% less noise would exceed the target.
        tighter = dp.c.make_zCDP_to_approxDP(opendp_gaussian(scale * 0.99))
        assert tighter.map(sens).epsilon(delta) > eps


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(min_value=0.01, max_value=10.0),
    log_delta=st.floats(min_value=-14, max_value=-2),
)
def test_rho_for_inverts_epsilon_of(eps: float, log_delta: float) -> None:
    delta = 10.0**log_delta
    rho = rho_for(eps, delta)
    assert epsilon_of(rho, delta) <= eps
    assert epsilon_of(rho * (1 + 1e-6), delta) > eps  # the largest such rho, to 1e-6
    # delta_of is the same curve read the other way.
    assert delta_of(rho, eps) <= delta * (1 + 1e-6)


def test_epsilon_of_edges() -> None:
    assert epsilon_of(0, 1e-6) == 0.0
    assert epsilon_of(0.01, 1e-6) < epsilon_of(0.02, 1e-6)  # increasing in rho
    assert epsilon_of(0.01, 1e-9) > epsilon_of(0.01, 1e-6)  # decreasing in delta


def test_composition_adds_rho() -> None:
    rhos = [0.01, 0.02, 0.005]
    total = compose(rhos)
    assert total >= sum(rhos) and total == pytest.approx(0.035, rel=1e-15)
    # Ten queries at rho each cost epsilon_of(10 rho), far less than 10 epsilon_of(rho).
    assert epsilon_of(compose([0.001] * 10), 1e-6) < 10 * epsilon_of(0.001, 1e-6) / 2
    with pytest.raises(ConfigError, match=r"rho\[1\]"):
        compose([0.1, -0.1])


def test_node_variance_covers_every_t_subset() -> None:
    for sigma2 in (Fraction(1, 3), Fraction(25), Fraction(10**9 + 7, 11)):
        for t in (1, 2, 7, 51):
            share = node_variance(sigma2, t)
            assert t * share >= sigma2  # any t survivors reach the target
            assert t * share <= sigma2 * (1 + Fraction(1, 2**19))  # and barely more
            assert (share.denominator & (share.denominator - 1)) == 0  # a power of two


def test_tau_is_the_kls21_sum() -> None:
    assert tau(4, 1) == 0.0
    s2, m = 0.5, 6
    expected = 10 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, m))
    assert tau(s2, m) == pytest.approx(expected, rel=1e-11)
    assert tau(s2, m) < tau(s2, m + 1)  # more shares, more tau
    assert tau(4, 1000) < 1e-13  # negligible once a share's sigma is 2


def test_rho_of_sum_reduces_to_one_gaussian_for_large_shares() -> None:
    # tau ~ 0: the sum of m shares is accounted as one discrete Gaussian of m times the share.
    assert rho_of_sum(3, Fraction(10**6), 5, dim=4) == pytest.approx(
        rho_of(3, Fraction(5 * 10**6)), rel=1e-12
    )
    # A small share pays a visible tau term.
    small = rho_of_sum(1, Fraction(1, 2), 10)
    assert small > rho_of(1, Fraction(5)) * 1.01
    # The explicit L1 bound can only help (Delta_1 <= sqrt(d) Delta_2).
    assert rho_of_sum(1, Fraction(1, 2), 10, dim=9, sensitivity_l1=1) < rho_of_sum(
        1, Fraction(1, 2), 10, dim=9
    )
    with pytest.raises(ConfigError, match="finer fixed-point scale"):
        rho_of_sum(1, MIN_NODE_SIGMA2 / 2, 3)


def test_distributed_rho_is_the_worst_dropout_pattern() -> None:
    worst = distributed_rho(1, Fraction(1, 2), t=3, n=12)
    for m in range(3, 13):
        assert rho_of_sum(1, Fraction(1, 2), m) <= worst
    assert worst == max(rho_of_sum(1, Fraction(1, 2), m) for m in range(3, 13))
    with pytest.raises(ConfigError, match="t must be <= n"):
        distributed_rho(1, 1, t=4, n=3)


@pytest.mark.parametrize(
    ("sens", "t", "n", "dim"),
    [(1, 3, 3, 1), (1, 2, 3, 1), (2**16, 7, 10, 20), (1, 27, 30, 1), (1000, 90, 100, 2)],
)
def test_plan_meets_the_target_at_every_survivor_count(sens: int, t: int, n: int, dim: int) -> None:
    eps, delta = 1.0, 1e-6
    p = plan(eps, delta, sens, t=t, n=n, dim=dim)
    target = rho_for(eps, delta)
    assert p.rho <= target and p.achieved_epsilon <= eps
    for m in range(t, n + 1):
        assert rho_of_sum(sens, p.node_sigma2, m, dim=dim) <= target
    # Without tau the share would be sigma2 / t; tau never makes it smaller, and for a large
    # share it adds nothing measurable.
    central = sigma2_for(eps, delta, sens)
    assert p.total_sigma2 >= central
    if p.node_sigma2 > 4:
        assert p.total_sigma2 <= central * (1 + Fraction(1, 2**18))


def test_plan_inflates_small_shares_and_refuses_tiny_ones() -> None:
    # A count (sensitivity 1) over 30 survivors: each share is ~0.68, where tau matters.
    p = plan(1.0, 1e-6, 1, t=30, n=100)
    assert p.total_sigma2 > sigma2_for(1.0, 1e-6, 1) * Fraction(101, 100)
    with pytest.raises(ConfigError, match=r"at least \d+x finer"):
        plan(1.0, 1e-6, 1, t=200, n=200)


def test_variance_and_interval() -> None:
    # Exact variance of N_Z(1/4): 2 sum k^2 e^{-2k^2} / (1 + 2 sum e^{-2k^2}).
    num = 2 * sum(k * k * math.exp(-2 * k * k) for k in range(1, 20))
    z = 1 + 2 * sum(math.exp(-2 * k * k) for k in range(1, 20))
    assert discrete_gaussian_variance(0.25) == pytest.approx(num / z, rel=1e-12)
    assert discrete_gaussian_variance(1) == pytest.approx(1, abs=1e-6)
    assert discrete_gaussian_variance(1e6) == 1e6
    assert interval_halfwidth(4.0) == pytest.approx(1.959964 * 2, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rho_for(0, 1e-6), "epsilon"),
        (lambda: rho_for(float("nan"), 1e-6), "epsilon"),
        (lambda: rho_for(-1, 1e-6), "epsilon"),
        (lambda: rho_for(float("inf"), 1e-6), "epsilon"),
        (lambda: rho_for(True, 1e-6), "epsilon"),
        (lambda: rho_for(1, 0), "delta"),
        (lambda: rho_for(1, 1), "delta"),
        (lambda: epsilon_of(-0.1, 1e-6), "rho"),
        (lambda: sigma2_for(1, 1e-6, 0), "sensitivity"),
        (lambda: node_variance(10, 0), "t must be"),
        (lambda: plan(1, 1e-6, 1, t=2, n=10**6), "n must be"),
    ],
)
def test_bad_parameters_are_refused(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
