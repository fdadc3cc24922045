"""The Paillier path's arithmetic on round vectors: 31-bit words, totals, and its limits.

Pure protocol code shared by the node (which encrypts a round's non-count entries as words),
the aggregator (which checks sizes) and the analyst (which decrypts and recombines them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from trustspace.errors import ProtocolError

__all__ = [
    "MAX_PAILLIER_HEADROOM",
    "MAX_PAILLIER_KEY_BITS",
    "PAILLIER_WORD_VALUE_BITS",
    "WORD_BITS",
    "join_words",
    "paillier_round_total",
    "split_words",
]

#: Largest Paillier modulus a node encrypts under. 7680 bits is NIST SP 800-57's 192-bit level;
#: the cap bounds an analyst's key (forwarded by the aggregator) to ~20x the work of the 3072-bit
#: default. Without it a 40,000-bit modulus cost a node 65 s of CPU per request (a cheap DoS).
MAX_PAILLIER_KEY_BITS = 8192
#: Most vectors a Paillier total may add up (one per node): far more nodes than a data space
#: has, and 31-bit words plus 16 bits of headroom still fit the 63-bit packing slots.
MAX_PAILLIER_HEADROOM = 1 << 16

#: Paillier packs slots of at most 63 bits, but a fixed-point entry (``Round.encode``) needs
#: up to 62 bits plus room for the sum over the nodes. Each entry v is therefore sent as two
#: words: hi = v >> 31 (arithmetic) and lo = v & (2^31 - 1), with v = hi * 2^31 + lo exactly;
#: both fit signed 32 bits. Sums of words recombine modulo 2^64 into the sum of the entries.
WORD_BITS = 31
PAILLIER_WORD_VALUE_BITS = 32


def split_words(encoded: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """int64 entries -> int64 vector ``[hi..., lo...]`` of twice the length."""
    v = np.asarray(encoded, dtype=np.int64)
    hi = v >> WORD_BITS
    lo = v & ((1 << WORD_BITS) - 1)
    out: npt.NDArray[np.int64] = np.concatenate([hi, lo])
    return out


def join_words(words: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """The inverse of ``split_words`` on (sums of) word vectors: uint64 totals modulo 2^64.

    >>> v = np.array([5, -7, 2**61, -(2**61)], dtype=np.int64)
    >>> join_words(split_words(v) + split_words(v)).view(np.int64).tolist() == (2 * v).tolist()
    True
    """
    w = np.asarray(words, dtype=np.int64)
    if w.ndim != 1 or w.shape[0] % 2:
        raise ProtocolError(f"encrypted total has {w.shape} words; expected an even length")
    half = w.shape[0] // 2
    hi = w[:half].view(np.uint64)
    lo = w[half:].view(np.uint64)
    with np.errstate(over="ignore"):
        total: npt.NDArray[np.uint64] = (hi << np.uint64(WORD_BITS)) + lo
    return total


def paillier_round_total(
    count_mask: npt.ArrayLike, count_totals: Sequence[int], words: npt.ArrayLike | None
) -> npt.NDArray[np.uint64]:
    """A Paillier round's total modulo 2^64 (what ``Round.decode`` takes) from its parts.

    Args:
        count_mask: the round's ``Round.count_mask``.
        count_totals: the totals of the count entries, in order (``RoundResult.count_totals``).
        words: the decrypted sum of ``split_words`` vectors of the non-count entries
            (``Round.moment_round``), or None if the round has none.

    Raises:
        ProtocolError: the parts do not fit the round's layout.

    >>> mask = np.array([True, False, True])
    >>> paillier_round_total(mask, [4, 0], split_words(np.array([-3]))).view(np.int64).tolist()
    [4, -3, 0]
    """
    mask = np.asarray(count_mask, dtype=bool)
    total = np.zeros(mask.shape[0], dtype=np.uint64)
    counts = np.asarray(count_totals, dtype=np.int64)
    if counts.shape != (int(mask.sum()),):
        raise ProtocolError(
            f"round answer has {counts.shape[0]} count totals; the round has {int(mask.sum())}"
        )
    total[mask] = counts.view(np.uint64)
    rest = int((~mask).sum())
    if rest:
        if words is None:
            raise ProtocolError(f"round answer has no encrypted vector for its {rest} sums")
        joined = join_words(words)
        if joined.shape != (rest,):
            raise ProtocolError(
                f"round answer has {joined.shape[0]} encrypted sums; the round has {rest}"
            )
        total[~mask] = joined
    elif words is not None and np.asarray(words).size:
        raise ProtocolError("round answer has encrypted entries but the round has no sums")
    return total
