"""Differential privacy added by the nodes: exact integer noise, its accounting, budget ledgers.

Map of the package:

- ``_sample``: exact samplers of the discrete Gaussian and discrete Laplace (Canonne, Kamath
  and Steinke, NeurIPS 2020), scalar and vectorised, from the OS CSPRNG only.
- ``_accounting``: zCDP of the (distributed) discrete Gaussian, composition, conversion to
  ``(epsilon, delta)`` and back, each node's share (Kairouz, Liu and Steinke, ICML 2021).
- ``_ledger``: a node's durable budget ledger per (analyst, dataset), in SQLite (WAL, fsync).

``docs/dp.md`` states the mechanism, the formulas and their sources.
"""

from __future__ import annotations

from trustspace.dp._accounting import (
    MIN_NODE_SIGMA2,
    NoisePlan,
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
from trustspace.dp._ledger import Budget, Entry, Ledger, Reservation
from trustspace.dp._sample import (
    MAX_SIGMA2,
    RandomSource,
    SystemRandomSource,
    bernoulli_exp,
    discrete_gaussian,
    discrete_gaussian_array,
    discrete_laplace,
    discrete_laplace_array,
)

__all__ = [
    "MAX_SIGMA2",
    "MIN_NODE_SIGMA2",
    "Budget",
    "Entry",
    "Ledger",
    "NoisePlan",
    "RandomSource",
    "Reservation",
    "SystemRandomSource",
    "bernoulli_exp",
    "compose",
    "delta_of",
    "discrete_gaussian",
    "discrete_gaussian_array",
    "discrete_gaussian_variance",
    "discrete_laplace",
    "discrete_laplace_array",
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
