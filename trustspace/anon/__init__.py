"""k-anonymization: ARX-style optimal full-domain generalization and Mondrian local recoding.

Map of the package (pure logic, no I/O beyond reading hierarchy files):

- ``hierarchy``: ``Hierarchy`` (ARX CSV loader; builders for intervals, masking, dates,
  groupings; coverage validation).
- ``domain``: ``Domain``, the public mixed-radix layout of generalized tuples and its roll-up
  (``Domain.rollup``, ``Domain.undersized``); ``HistogramOracle`` (what the search asks) and
  ``LocalOracle`` (one table's rows).
- ``models``: k-anonymity, ℓ-diversity (distinct, entropy, recursive), t-closeness.
- ``spec``: ``AnonSpec``, every option of one anonymization (local, CLI or federated) with
  the one set of defaults (k=5, 5 % suppression), validated at construction; its JSON form.
- ``search``: ``search(oracle, domain, models, ...) -> Result``, the exact lattice search.
- ``mondrian``: local recoding within the hierarchies.
- ``api``: ``anonymize(df, ...)``, ``apply(df, result, hierarchies)`` and their plain-column
  versions used by the CLI.
- ``federated``: the nodes' vectors and the aggregator's oracle; ``_sketch``: the invertible
  histogram sketch (IBLT) and the hashing the oracles share.

>>> from trustspace.anon import Hierarchy, Domain, LocalOracle, KAnonymity, search
>>> age = Hierarchy.intervals("age", range(20, 40), widths=(10,))
>>> dom = Domain([age])
>>> r = search(LocalOracle(dom, [[str(a) for a in range(20, 40)]]), dom, [KAnonymity(5)])
>>> r.levels, r.n_classes
((1,), 2)
"""

from __future__ import annotations

from trustspace.anon.api import Release, anonymize, anonymize_columns, apply, apply_columns
from trustspace.anon.domain import Domain, HistogramOracle, LocalOracle
from trustspace.anon.hierarchy import Hierarchy
from trustspace.anon.models import (
    DistinctLDiversity,
    EntropyLDiversity,
    KAnonymity,
    PrivacyModel,
    RecursiveCLDiversity,
    TCloseness,
    make_models,
)
from trustspace.anon.search import METRICS, Result, search
from trustspace.anon.spec import DEFAULT_K, DEFAULT_SUPPRESSION, AnonSpec, named_hierarchies

__all__ = [
    "DEFAULT_K",
    "DEFAULT_SUPPRESSION",
    "METRICS",
    "AnonSpec",
    "DistinctLDiversity",
    "Domain",
    "EntropyLDiversity",
    "Hierarchy",
    "HistogramOracle",
    "KAnonymity",
    "LocalOracle",
    "PrivacyModel",
    "RecursiveCLDiversity",
    "Release",
    "Result",
    "TCloseness",
    "anonymize",
    "anonymize_columns",
    "apply",
    "apply_columns",
    "make_models",
    "named_hierarchies",
    "search",
]
