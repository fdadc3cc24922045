"""Privacy models: k-anonymity, ℓ-diversity (distinct, entropy, recursive-(c,ℓ)), t-closeness.

Each model, given the equivalence classes of a transformation (their sizes and, for models on
a sensitive attribute, their sensitive-value counts), says which classes violate it. Records of
violating classes are suppressed up to the suppression limit.

Monotonicity (what lets the search prune): if a class of a coarser transformation violates a
model, do all the finer classes it is the union of violate it too? Yes for k-anonymity and
distinct ℓ-diversity, so the number of records to suppress can only fall as generalization
rises, and pruning stays exact with any suppression limit. Entropy and recursive ℓ-diversity and
t-closeness are monotone only without suppression (a union of a violating and a satisfying class
can violate); with a suppression limit the search then evaluates every candidate instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from trustspace.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_EPS = 1e-9  # tolerance for float comparisons of entropies and distances


@dataclass(frozen=True)
class PrivacyModel:
    """Base class: ``violating(sizes, sensitive, overall)`` -> mask of violating classes."""

    needs_sensitive: ClassVar[bool] = False
    monotone_with_suppression: ClassVar[bool] = False

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class KAnonymity(PrivacyModel):
    """Every released class has at least ``k`` records.

    >>> KAnonymity(3).violating(np.array([1, 3, 5]), None, None).tolist()
    [True, False, False]
    """

    k: int
    monotone_with_suppression: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        return sizes < self.k

    def describe(self) -> str:
        return f"{self.k}-anonymity"


def _check_l(l: float, integer: bool) -> None:  # noqa: E741 - ℓ is the literature's name
    if (integer and (not isinstance(l, int) or l < 1)) or l < 1:
        raise ConfigError(f"l must be {'an integer ' if integer else ''}>= 1, got {l!r}")


@dataclass(frozen=True)
class DistinctLDiversity(PrivacyModel):
    """Every class has at least ``l`` distinct sensitive values.

    >>> DistinctLDiversity(2).violating(np.array([3, 3]), np.array([[3, 0], [1, 2]]), None).tolist()
    [True, False]
    """

    l: int  # noqa: E741
    needs_sensitive: ClassVar[bool] = True
    monotone_with_suppression: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_l(self.l, True)

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        assert sensitive is not None
        return np.asarray((sensitive > 0).sum(axis=1) < self.l)

    def describe(self) -> str:
        return f"distinct {self.l}-diversity"


@dataclass(frozen=True)
class EntropyLDiversity(PrivacyModel):
    """Every class's sensitive-value entropy is at least ``log(l)``."""

    l: float  # noqa: E741
    needs_sensitive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_l(self.l, False)

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        assert sensitive is not None
        p = sensitive / np.maximum(sizes, 1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return np.asarray(h < math.log(self.l) - _EPS)

    def describe(self) -> str:
        return f"entropy {self.l}-diversity"


@dataclass(frozen=True)
class RecursiveCLDiversity(PrivacyModel):
    """Recursive (c,ℓ)-diversity: ``r_1 < c * (r_l + ... + r_m)`` with ``r`` the class's
    sensitive counts in decreasing order."""

    c: float
    l: int  # noqa: E741
    needs_sensitive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_l(self.l, True)
        if not self.c > 0:
            raise ConfigError(f"c must be > 0 for recursive (c,l)-diversity, got {self.c!r}")

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        assert sensitive is not None
        r = -np.sort(-sensitive, axis=1)
        tail = r[:, self.l - 1 :].sum(axis=1) if r.shape[1] >= self.l else np.zeros(len(r))
        return np.asarray(~(r[:, 0] < self.c * tail))

    def describe(self) -> str:
        return f"recursive ({self.c},{self.l})-diversity"


@dataclass(frozen=True)
class TCloseness(PrivacyModel):
    """The Earth Mover's Distance between each class's sensitive distribution and the whole
    table's is at most ``t``: equal distance (categorical) or ordered distance (numeric, in the
    order of the domain's sensitive values).
    """

    t: float
    ordered: bool = False
    needs_sensitive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 <= self.t <= 1:
            raise ConfigError(f"t must be in [0, 1], got {self.t!r}")

    def distances(self, sizes: IntArray, sensitive: IntArray, overall: FloatArray) -> FloatArray:
        """EMD of each class to ``overall``."""
        d = sensitive / np.maximum(sizes, 1)[:, None] - overall[None, :]
        m = d.shape[1]
        if self.ordered:
            if m < 2:
                return np.zeros(len(sizes))
            return np.asarray(np.abs(np.cumsum(d, axis=1)).sum(axis=1) / (m - 1))
        return np.asarray(0.5 * np.abs(d).sum(axis=1))

    def violating(
        self, sizes: IntArray, sensitive: IntArray | None, overall: FloatArray | None
    ) -> BoolArray:
        assert sensitive is not None and overall is not None
        return np.asarray(self.distances(sizes, sensitive, overall) > self.t + _EPS)

    def describe(self) -> str:
        return f"{self.t}-closeness ({'ordered' if self.ordered else 'equal'} distance)"


def make_models(
    k: int,
    l: float | None = None,  # noqa: E741
    *,
    diversity: str = "distinct",
    c: float | None = None,
    t: float | None = None,
    ordered: bool = False,
) -> list[PrivacyModel]:
    """The list of models for the usual keyword arguments (``anonymize``, the CLI).

    >>> [m.describe() for m in make_models(5, 2)]
    ['5-anonymity', 'distinct 2-diversity']
    """
    models: list[PrivacyModel] = [KAnonymity(k)]
    if l is not None:
        if diversity == "distinct":
            models.append(DistinctLDiversity(int(l)))
        elif diversity == "entropy":
            models.append(EntropyLDiversity(float(l)))
        elif diversity == "recursive":
            if c is None:
                raise ConfigError("recursive (c,l)-diversity needs c (e.g. c=3)")
            models.append(RecursiveCLDiversity(float(c), int(l)))
        else:
            raise ConfigError(
                f"unknown l-diversity variant {diversity!r}; use distinct, entropy or recursive"
            )
    if t is not None:
        models.append(TCloseness(float(t), ordered=ordered))
    return models
