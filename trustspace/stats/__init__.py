"""Federated statistics as pure logic: query specs, rounds, finalisation, disclosure control.

No I/O and no duckdb/grpc here: a node's ``trustspace.engine.Engine`` computes each round's
local vector, the services sum the vectors over the nodes (secure aggregation of
``Round.encode`` outputs, or Paillier on the float vector), and this package turns the totals
into results equal to pandas' on the concatenated data.

Map:

- ``Query(op, dataset, columns, where, params)``: the spec; ``to_dict()/from_dict()``.
- ``start(query, schema, min_group_size) -> Computation``: the state machine
  (``next_round() -> Round | None``, ``feed(total)``, ``result() -> Result``).
- ``Round`` / ``Term``: one round's local aggregates, vector layout, ``count_mask`` (the record
  counts that govern disclosure), ``encode(local) -> uint64`` / ``decode(total)`` (exact
  fixed point mod 2^64, see ``trustspace.stats._round``), ``to_dict()/from_dict()``.
- ``Result``: ``value`` (float / Series / DataFrame as pandas lays it out), ``suppressed``
  (same shape, True where a figure was withheld), ``precision`` (for bin-refined figures).
- ``TableSchema`` / ``ColumnType``: the public schema a plan is made from.
- ``parse_filter`` / ``check_filter``: the ``where=`` language (AST only; SQL is the engine's).

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
from trustspace.stats._machine import GRID_BINS, Computation, Result, start
from trustspace.stats._query import GROUP_AGGS, OPS, Query
from trustspace.stats._round import (
    MAX_NODES,
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    Round,
    Term,
    octave_key,
)
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

__all__ = [
    "GRID_BINS",
    "GROUP_AGGS",
    "MAX_NODES",
    "OCTAVE_HALF",
    "OCTAVE_MAX_EXP",
    "OCTAVE_MIN_EXP",
    "OCTAVE_OFFSET",
    "OPS",
    "And",
    "ColumnType",
    "Compare",
    "Computation",
    "Expr",
    "GroupValue",
    "InList",
    "IsNull",
    "Not",
    "Or",
    "Query",
    "Result",
    "Round",
    "TableSchema",
    "Term",
    "check_filter",
    "filter_columns",
    "octave_key",
    "parse_filter",
    "start",
]
