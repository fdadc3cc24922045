"""Choice of the neighbour count k and threshold t, and the SecAgg+ neighbour graph.

The conditions follow Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (SecAgg+), Section 3: a client's
secrets are shared among its k graph neighbours plus itself (m = k + 1 holders, threshold t);
every client drops out independently with probability delta and is corrupt (colluding with
the aggregator) with probability gamma. With a union bound over the n clients we require

1. correctness  n * P[Bin(k, 1 - delta) < t] <= 2^-eta  (every client keeps t live holders);
2. privacy      n * P[Bin(k, gamma) >= 2t - m] <= 2^-sigma.  A malicious aggregator may tell
   some honest holders that a client survived and others that it dropped; an honest holder
   reveals one of the two secrets only, so obtaining both needs 2t <= m + C with C corrupt
   holders. Requiring C < 2t - m is the malicious-server condition of Bonawitz et al. CCS'17
   (t > (n + C) / 2, i.e. t > 2n/3 for C = n/3) applied to each neighbourhood;
3. connectivity n * (gamma + delta)^(k/2) <= 2^-sigma: on the randomly placed Harary graph
   H(k, n) the honest survivors stay connected unless k/2 consecutive positions are all
   corrupt or dropped (otherwise the aggregator would learn the sums of the pieces).

The smallest even k < n - 1 meeting all three is used with the smallest t meeting (2); if no
such k exists (small n) the graph is complete (k = n - 1) and t = floor((n + C) / 2) + 1 with
C = floor(gamma * n), the deterministic form of (2). The binomial is an approximation of the
hypergeometric (sampling without replacement), accurate for k << n.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

SIGMA = 40  # statistical security parameter (Bell et al. use 40)
ETA = 30  # correctness: a round fails with probability at most 2^-30 under the model
MAX_SPARSE_K = 1024  # beyond this many neighbours a sparse graph saves little; use complete


def _pmf(k: int, p: float) -> list[float]:
    """P[Bin(k, p) = i] for i = 0..k, each term computed in log space (relative error ~1e-13)."""
    if p <= 0.0 or p >= 1.0:
        return [float(i == (0 if p <= 0.0 else k)) for i in range(k + 1)]
    lp, lq, lk = math.log(p), math.log1p(-p), math.lgamma(k + 1)
    return [
        math.exp(lk - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * lp + (k - i) * lq)
        for i in range(k + 1)
    ]


def _tails(k: int, p: float) -> tuple[list[float], list[float]]:
    """``(lower, upper)`` with lower[a] = P[Bin < a] and upper[a] = P[Bin >= a], a = 0..k+1.

    Each side is summed directly (never as 1 - the other side), so the tiny probabilities the
    bounds compare against 2^-40 keep their relative accuracy.
    """
    pmf = _pmf(k, p)
    lower = [0.0] * (k + 2)
    for i in range(k + 1):
        lower[i + 1] = lower[i] + pmf[i]
    upper = [0.0] * (k + 2)
    for i in range(k, -1, -1):
        upper[i] = upper[i + 1] + pmf[i]
    return lower, upper


def binomial_tail_ge(k: int, p: float, a: int) -> float:
    """Return P[Bin(k, p) >= a]."""
    return _tails(k, p)[1][min(max(a, 0), k + 1)]


def binomial_tail_lt(k: int, p: float, a: int) -> float:
    """Return P[Bin(k, p) < a]."""
    return _tails(k, p)[0][min(max(a, 0), k + 1)]


def _secure_t(n: int, k: int, upper_corrupt: list[float]) -> int | None:
    for t in range((k + 1) // 2 + 1, k + 2):
        a = min(max(2 * t - (k + 1), 0), k + 1)
        if n * upper_corrupt[a] <= 2.0**-SIGMA:
            return t
    return None


def secure_threshold(n: int, k: int, corrupt_fraction: float) -> int | None:
    """Smallest t with n * P[Bin(k, gamma) >= 2t - (k + 1)] <= 2^-sigma (None if none)."""
    return _secure_t(n, k, _tails(k, corrupt_fraction)[1])


def complete_graph_threshold(n: int, corrupt_fraction: float) -> int:
    """t = floor((n + C) / 2) + 1 with C = floor(gamma * n): a majority beyond the corrupt."""
    corrupt = math.floor(corrupt_fraction * n)
    return min(n, (n + corrupt) // 2 + 1)


def choose_parameters(n: int, dropout_fraction: float, corrupt_fraction: float) -> tuple[int, int]:
    """Return ``(k, t)`` for ``n`` clients (see the module docstring for the conditions).

    >>> choose_parameters(10, 0.1, 0.1)
    (9, 6)
    >>> choose_parameters(1000, 0.1, 0.05)
    (106, 69)
    """
    for k in range(2, min(n - 1, MAX_SPARSE_K + 1), 2):
        if n * (corrupt_fraction + dropout_fraction) ** (k // 2) > 2.0**-SIGMA:
            continue
        t = _secure_t(n, k, _tails(k, corrupt_fraction)[1])
        if t is None:
            continue
        if n * _tails(k, 1.0 - dropout_fraction)[0][t] <= 2.0**-ETA:
            return k, t
    return n - 1, complete_graph_threshold(n, corrupt_fraction)


def threshold_for(n: int, k: int, corrupt_fraction: float) -> int:
    """The threshold for an explicitly chosen k (complete graph if ``k == n - 1``)."""
    if k >= n - 1:
        return complete_graph_threshold(n, corrupt_fraction)
    t = secure_threshold(n, k, corrupt_fraction)
    # no t meets the bound: fall back to every holder, the most conservative choice
    return k + 1 if t is None else t


def neighbor_graph(
    session_id: bytes, client_ids: Sequence[int], k: int
) -> dict[int, frozenset[int]] | None:
    """The Harary graph H(k, n) over a session-dependent random placement of the clients.

    Positions are the clients sorted by SHA-256(domain | session id | id), so every party
    computes the same graph from the configuration alone. Client at position p is linked to
    positions p +- 1 .. p +- k/2 (mod n). Returns None for the complete graph (k >= n - 1),
    which is not materialised (it would take n^2 memory).
    """
    n = len(client_ids)
    if k >= n - 1:
        return None
    order = sorted(
        client_ids,
        key=lambda c: hashlib.sha256(
            b"trustspace/v1/secagg-graph" + session_id + c.to_bytes(8, "big")
        ).digest(),
    )
    half = k // 2
    graph: dict[int, frozenset[int]] = {}
    for pos, c in enumerate(order):
        graph[c] = frozenset(
            order[(pos + d) % n] for off in range(1, half + 1) for d in (off, -off)
        )
    return graph
