"""Federated statistics as pure logic: query specs, rounds, finalisation, disclosure control.

No I/O and no duckdb/grpc here: a node's ``trustspace.engine.Engine`` computes each round's
local vector, the services sum the vectors over the nodes (secure aggregation of
``Round.encode`` outputs; the Paillier path encrypts only the non-count entries,
``Round.moment_round``, and takes the record counts from that secure sum), and this package
turns the totals into results equal to pandas' on the concatenated data.

Map:

- ``Query(op, dataset, columns=(), where=None, params={})``: the spec, validated at
  construction; ``check(schema)``; ``to_dict()/from_dict()`` (JSON-able, strict). ops and
  params: ``count`` (no columns: rows), ``sum``, ``mean``, ``var``/``std`` (``ddof``, default
  1), ``skew``, ``kurt`` (pandas' bias-corrected G1/G2), ``histogram`` (``bins``: edges, or a
  number with ``range=[lo, hi]``; numpy.histogram semantics), ``quantile`` (``q``: float or
  list, ``precision``: absolute, default 2^-30 of the octave range; ``grid_bins``: bins per
  refinement round, default 1024), ``cov`` (``ddof``) and ``corr`` (pairwise-complete rows,
  as pandas), ``describe`` (``percentiles``, ``precision``, ``grid_bins``), ``group_by``
  (``by``, ``agg={column: [size|count|sum|mean|var|std]}``, ``values``: the public group
  values, else the schema's declared domain), ``crosstab`` (two columns; ``values``:
  ``{column: [levels]}``, else the declared domains; ``margins``; one round of a ``cells``
  term), ``ttest`` (one column, ``by``, ``values``: two levels; group_by's count/mean/var;
  ``_tests`` computes chi-square and t from the released figures with scipy), ``glm``
  (``formula``, ``family``, ``weights``, ``offset``, ``max_iter``, ``tol``; IRLS rounds, see
  ``_glm``) and ``ols`` (``formula``, ``weights``); their columns are exactly the ones the
  formula reads.
- ``start(query, schema, min_group_size) -> Computation``: the state machine.
  ``next_round() -> Round | None`` (the same round until fed), ``feed(total,
  suppressed=())`` (the decoded element-wise sum over the nodes; ``suppressed``: indices
  withheld upstream because their governing count was in (0, k)), ``result() -> Result``.
- ``replay(query, schema, min_group_size, totals, suppressed=()) -> Round | None``: the
  round an honest driver asks for next, for a node that wants to check a requested round.
- ``Round`` / ``Term``: one round's local aggregates (each term at most once) and vector
  layout (``size``, ``term_slice(term)``), ``view(total) -> Totals`` to read a vector by term
  (``view[term]``, ``view.scalar(term)``, ``view.per_group(term)``), ``count_mask`` (entries
  that are record counts: they govern disclosure),
  ``encode(local) -> uint64`` / ``decode(total) -> float64`` (exact fixed point mod 2^64,
  precision in ``trustspace.stats._round``; our own encoder, since the Paillier path uses its
  own encoding of the float vector), ``to_dict()/from_dict()`` (strict: ConfigError naming the
  bad key).
- ``Result``: ``value`` (float for one column, else Series/DataFrame laid out as pandas' own
  method returns it), ``suppressed`` (same shape, True where a figure was withheld as it would
  describe fewer than ``min_group_size`` records; NaN in ``value``), ``precision`` (absolute
  error bound of bin-refined figures: quantiles, describe's min/percentiles/max),
  ``rounds``, ``any_suppressed``.
- ``TableSchema(columns, domains={}, bounds={})`` / ``ColumnType``: the public schema a plan
  is made from (``Engine.schema(name)`` on a node); ``to_dict()/from_dict()``.
- ``start(query, schema, k, dp={epsilon, delta})`` -> ``DPComputation``: a differentially
  private query as one public round; ``noise_plan`` / ``add_noise`` (what every node adds),
  ``noise_variance`` (the total's, from the nodes' signed shares), ``round_sensitivity``
  (``_dp``; docs/dp.md).
- ``parse_filter`` / ``check_filter`` / ``filter_columns``: the ``where=`` language (AST
  only; SQL is the engine's).
- ``split_words`` / ``join_words`` / ``paillier_round_total`` and the Paillier path's limits
  (``MAX_PAILLIER_KEY_BITS``, ``MAX_PAILLIER_HEADROOM``): a round's entries as the 31-bit words
  the nodes encrypt, and the analyst's total from them (``_paillier``).

Modules: ``_query`` (the spec), ``_schema`` (the public schema), ``_filter`` (the filter
language), ``_round`` (rounds, terms, their encoding and ``Totals``), ``_machine`` (the state
machine and the finishing formulas), ``_quantile`` (quantiles by bin refinement).

Security notes (what each role learns, how ``min_group_size`` is enforced on totals only, the
min/max policy and the differencing risk of filters) are in ``docs/security.md`` (federated
statistics).

Example, one node simulated in-process::

    >>> import numpy as np
    >>> schema = TableSchema({"age": "int"})
    >>> comp = start(Query("mean", "people", "age"), schema, min_group_size=2)
    >>> ages = np.array([30.0, 40.0, 50.0])
    >>> def local(rnd):  # what Engine.compute does, here for the two term kinds used
    ...     out = []
    ...     for t in rnd.terms:
    ...         if t.kind == "octaves":
    ...             v = np.zeros(t.size)
    ...             for x in ages:
    ...                 v[OCTAVE_HALF + octave_key(x)] += 1
    ...             out.append(v)
    ...         else:
    ...             out.append([len(ages) if not t.powers else np.sum(ages ** t.powers[0])])
    ...     return np.concatenate(out)
    >>> while (rnd := comp.next_round()) is not None:
    ...     comp.feed(rnd.decode(rnd.encode(local(rnd))))
    >>> comp.result().value
    40.0
"""

from __future__ import annotations

from trustspace.stats._dp import (
    DP_BITS,
    DP_OPS,
    DPComputation,
    DPSpec,
    add_noise,
    glm_dp_bounds,
    noise_plan,
    noise_variance,
    paillier_noise_plan,
    round_sensitivity,
    share_variance,
)
from trustspace.stats._filter import (
    And,
    Compare,
    Expr,
    InList,
    IsNull,
    Not,
    Or,
    check_filter,
    filter_columns,
    parse_filter,
)
from trustspace.stats._glm import Design, GLMResults, parse_design
from trustspace.stats._machine import Computation, Result, replay, start
from trustspace.stats._paillier import (
    MAX_PAILLIER_HEADROOM,
    MAX_PAILLIER_KEY_BITS,
    PAILLIER_WORD_VALUE_BITS,
    WORD_BITS,
    join_words,
    paillier_round_total,
    split_words,
)
from trustspace.stats._quantile import GRID_BINS
from trustspace.stats._query import GROUP_AGGS, OPS, Query, marginal_terms
from trustspace.stats._round import (
    MAX_CELLS,
    MAX_NODES,
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    Round,
    Term,
    Totals,
    octave_key,
)
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema, python_value_for
from trustspace.stats._tests import Chi2Result, TTestResult, chi2_from_table, ttest_from_groups

__all__ = [
    "DP_BITS",
    "DP_OPS",
    "GRID_BINS",
    "GROUP_AGGS",
    "MAX_CELLS",
    "MAX_NODES",
    "MAX_PAILLIER_HEADROOM",
    "MAX_PAILLIER_KEY_BITS",
    "OCTAVE_HALF",
    "OCTAVE_MAX_EXP",
    "OCTAVE_MIN_EXP",
    "OCTAVE_OFFSET",
    "OPS",
    "PAILLIER_WORD_VALUE_BITS",
    "WORD_BITS",
    "And",
    "Chi2Result",
    "ColumnType",
    "Compare",
    "Computation",
    "DPComputation",
    "DPSpec",
    "Design",
    "Expr",
    "GLMResults",
    "GroupValue",
    "InList",
    "IsNull",
    "Not",
    "Or",
    "Query",
    "Result",
    "Round",
    "TTestResult",
    "TableSchema",
    "Term",
    "Totals",
    "add_noise",
    "check_filter",
    "chi2_from_table",
    "filter_columns",
    "glm_dp_bounds",
    "join_words",
    "marginal_terms",
    "noise_plan",
    "noise_variance",
    "octave_key",
    "paillier_noise_plan",
    "paillier_round_total",
    "parse_design",
    "parse_filter",
    "python_value_for",
    "replay",
    "round_sensitivity",
    "share_variance",
    "split_words",
    "start",
    "ttest_from_groups",
]
