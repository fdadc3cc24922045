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


def binomial_tail_ge(k: int, p: float, a: int) -> float:
    """Return P[Bin(k, p) >= a]."""
    if a <= 0:
        return 1.0
    if a > k:
        return 0.0
    return math.fsum(math.comb(k, i) * p**i * (1.0 - p) ** (k - i) for i in range(a, k + 1))


def secure_threshold(n: int, k: int, corrupt_fraction: float) -> int | None:
    """Smallest t with n * P[Bin(k, gamma) >= 2t - (k + 1)] <= 2^-sigma (None if none)."""
    for t in range((k + 1) // 2 + 1, k + 2):
        if n * binomial_tail_ge(k, corrupt_fraction, 2 * t - (k + 1)) <= 2.0**-SIGMA:
            return t
    return None


def complete_graph_threshold(n: int, corrupt_fraction: float) -> int:
    """t = floor((n + C) / 2) + 1 with C = floor(gamma * n): a majority beyond the corrupt."""
    corrupt = math.floor(corrupt_fraction * n)
    return min(n, (n + corrupt) // 2 + 1)


def choose_parameters(n: int, dropout_fraction: float, corrupt_fraction: float) -> tuple[int, int]:
    """Return ``(k, t)`` for ``n`` clients (see the module docstring for the conditions).

    >>> choose_parameters(10, 0.1, 0.1)
    (9, 6)
    """
    for k in range(2, n - 1, 2):
        if n * (corrupt_fraction + dropout_fraction) ** (k // 2) > 2.0**-SIGMA:
            continue
        t = secure_threshold(n, k, corrupt_fraction)
        if t is None:
            continue
        if n * (1.0 - binomial_tail_ge(k, 1.0 - dropout_fraction, t)) <= 2.0**-ETA:
            return k, t
    return n - 1, complete_graph_threshold(n, corrupt_fraction)


def threshold_for(n: int, k: int, corrupt_fraction: float) -> int:
    """The threshold for an explicitly chosen k (complete graph if ``k == n - 1``)."""
    if k >= n - 1:
        return complete_graph_threshold(n, corrupt_fraction)
    t = secure_threshold(n, k, corrupt_fraction)
    # no t meets the bound: fall back to every holder, the most conservative choice
    return k + 1 if t is None else t


def neighbour_graph(
    session_id: bytes, client_ids: Sequence[int], k: int
) -> dict[int, frozenset[int]]:
    """The Harary graph H(k, n) over a session-dependent random placement of the clients.

    Positions are the clients sorted by SHA-256(domain | session id | id), so every party
    computes the same graph from the configuration alone. Client at position p is linked to
    positions p +- 1 .. p +- k/2 (mod n); k = n - 1 gives the complete graph.
    """
    n = len(client_ids)
    if k >= n - 1:
        everyone = frozenset(client_ids)
        return {c: everyone - {c} for c in client_ids}
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
