"""Tests of the caps on an anonymization request and of the lazily enumerated lattice.

Issue 13, attack class 6 ("one request exhausts a server"): three hierarchies of ~284 levels
each (a 22.8-million-node lattice) took ~10 GB because the search built every level vector as
a list. These tests check that such requests are refused from their sizes alone, with little
memory, and that a lattice near the cap is searched without ever being materialised.
Memory is measured with ``tracemalloc`` (numpy reports its buffers to it); no timed assertions.
"""

from __future__ import annotations

import importlib
import itertools
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.anon import Domain, Hierarchy, KAnonymity, LocalOracle, search
from trustspace.anon.api import anonymize_columns
from trustspace.anon.federated import AnonSpec
from trustspace.anon.hierarchy import (
    MAX_HIERARCHY_CELLS,
    MAX_HIERARCHY_HEIGHT,
    MAX_HIERARCHY_ROWS,
)
from trustspace.errors import ConfigError

# ``trustspace.anon.search`` the attribute is the function; the module holds the caps
S = importlib.import_module("trustspace.anon.search")

REFUSAL_PEAK_BYTES = 2 * 2**20  # a refusal may allocate a little, never the request's size
SEARCH_PEAK_BYTES = 8 * 2**20  # the 2^20-node search: 1 MiB of tags plus the visited nodes


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` (or the exception it raised) and the peak traced allocation while it ran."""
    tracemalloc.start()
    try:
        out: Any = fn()
    except Exception as exc:  # returned so the caller checks it outside the trace
        out = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return out, peak


def _levels(name: str, height: int, rows: int = 2) -> dict[str, Any]:
    """A hierarchy as it travels in a spec: ``rows`` values, ``height`` levels, ``*`` on top."""
    return {
        "name": name,
        "rows": [[f"{name}{r}"] * (height - 1) + ["*"] for r in range(rows)],
    }


def _spec(hierarchies: list[dict[str, Any]]) -> dict[str, Any]:
    return {"dataset": "d", "hierarchies": hierarchies, "k": 2}


# ---------------------------------------------------------------- refusals
def test_the_reported_request_is_refused_from_its_sizes_with_bounded_memory() -> None:
    # the review's request: three hierarchies of 284 levels, 284^3 = 22.9 million nodes
    data = _spec([_levels(f"c{j}", 284) for j in range(3)])
    err, peak = _peak(lambda: AnonSpec.from_dict(data))
    assert isinstance(err, ConfigError)
    assert "'c0'" in str(err) and "MAX_HIERARCHY_HEIGHT" in str(err)
    assert peak < REFUSAL_PEAK_BYTES


def test_a_lattice_over_the_cap_is_refused_before_any_hierarchy_is_built() -> None:
    # every hierarchy is allowed on its own; their product (32^5 = 2^25 nodes) is not
    data = _spec([_levels(f"c{j}", MAX_HIERARCHY_HEIGHT) for j in range(5)])
    err, peak = _peak(lambda: AnonSpec.from_dict(data))
    assert isinstance(err, ConfigError)
    assert "MAX_LATTICE_NODES" in str(err) and "'c4'" in str(err)  # 32^4 = 2^20 still fits
    assert peak < REFUSAL_PEAK_BYTES


def test_too_many_quasi_identifiers_are_refused() -> None:
    data = _spec([_levels(f"c{j}", 1) for j in range(S.MAX_QUASI_IDENTIFIERS + 1)])
    with pytest.raises(ConfigError, match="MAX_QUASI_IDENTIFIERS"):
        AnonSpec.from_dict(data)


def test_a_hierarchy_over_the_row_cap_is_refused_naming_it() -> None:
    rows = [(str(i), "*") for i in range(MAX_HIERARCHY_ROWS + 1)]
    with pytest.raises(ConfigError, match=r"'zip'.*MAX_HIERARCHY_ROWS"):
        Hierarchy("zip", rows)
    data = _spec([{"name": "zip", "rows": [list(r) for r in rows]}])
    err, peak = _peak(lambda: AnonSpec.from_dict(data))
    assert isinstance(err, ConfigError) and "'zip'" in str(err)
    assert peak < REFUSAL_PEAK_BYTES


def test_the_cell_caps_are_refused() -> None:
    rows = MAX_HIERARCHY_CELLS // MAX_HIERARCHY_HEIGHT + 1
    with pytest.raises(ConfigError, match=r"'id'.*MAX_HIERARCHY_CELLS"):
        S.check_shape([("id", rows, MAX_HIERARCHY_HEIGHT)])
    each = S.MAX_REQUEST_CELLS // (3 * 20) + 1  # three allowed hierarchies, too many together
    with pytest.raises(ConfigError, match="MAX_REQUEST_CELLS"):
        S.check_shape([(f"c{j}", each, 20) for j in range(3)])


def test_the_local_paths_refuse_before_touching_the_data() -> None:
    hs = [Hierarchy(f"c{j}", [(f"v{j}", *[f"g{i}" for i in range(30)], "*")]) for j in range(5)]

    class Untouchable:
        def marginals(self) -> list[Any]:
            raise AssertionError("the oracle was asked before the caps were checked")

        sensitive_counts = histogram = marginals

    with pytest.raises(ConfigError, match="MAX_LATTICE_NODES"):
        search(Untouchable(), Domain(hs), [KAnonymity(2)])  # type: ignore[arg-type]
    cols = {h.name: ["v"] for h in hs}  # not even covered: the caps come first
    with pytest.raises(ConfigError, match="MAX_LATTICE_NODES"):
        anonymize_columns(cols, {h.name: h for h in hs}, k=2)


def test_the_adult_lattice_and_smaller_requests_pass() -> None:
    # ARX's Adult: 9 quasi-identifiers, heights 5 4 3 3 3 2 2 2 3
    heights = (5, 4, 3, 3, 3, 2, 2, 2, 3)
    assert S.check_shape([(f"c{j}", 100, h) for j, h in enumerate(heights)]) == 12_960
    assert S.check_shape([(f"c{j}", 2, 4) for j in range(10)]) == S.MAX_LATTICE_NODES


# ---------------------------------------------------------------- the lazy lattice
def _wide_domain() -> tuple[Domain, list[list[str]]]:
    """Ten quasi-identifiers of four levels: a 4^10 = 2^20-node lattice (the cap)."""
    rng = np.random.default_rng(5)  # test data only, never for cryptography
    hs, cols = [], []
    for j in range(10):
        values = [f"{a}{b}{c}" for a in "ab" for b in "xy" for c in "01"]
        hs.append(Hierarchy.masking(f"q{j}", values, levels=3))
        cols.append([values[i] for i in rng.integers(0, len(values), 400)])
    dom = Domain(hs)
    assert dom.heights == (4,) * 10
    return dom, cols


def test_a_lattice_at_the_cap_is_searched_without_materialising_it() -> None:
    # Before: itertools.product built all 2^20 ten-tuples as a list and then an int64 matrix
    # (~300 MB traced); now one byte of tags per node and the nodes visited.
    dom, cols = _wide_domain()
    oracle = LocalOracle(dom, cols)
    result, peak = _peak(lambda: search(oracle, dom, [KAnonymity(1)], metric="loss"))
    assert not isinstance(result, Exception), result
    assert result.nodes_total == 2**20
    assert result.levels == (0,) * 10  # 1-anonymity: the original data is optimal
    assert peak < SEARCH_PEAK_BYTES


def test_lattice_enumerates_lexicographically() -> None:
    hs = [Hierarchy("a", [("x", "y", "*")]), Hierarchy("b", [("1", "*")])]
    got = list(S.lattice(Domain(hs)))
    assert got == list(itertools.product(range(3), range(2)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 4), min_size=1, max_size=5),  # integer tables: many ties
        min_size=1,
        max_size=4,
    )
)
def test_bound_order_is_a_stable_sort_of_all_bounds(tables_: list[list[int]]) -> None:
    tables = [np.array(t, dtype=np.float64) / 3 for t in tables_]
    heights = [len(t) for t in tables]
    mult = [int(np.prod(heights[j + 1 :])) for j in range(len(heights))]
    nodes = np.array(list(itertools.product(*(range(h) for h in heights))), dtype=np.int64)
    bounds = np.zeros(nodes.shape[0])
    for j, t in enumerate(tables):  # as _Tables.lower_bounds
        bounds += t[nodes[:, j]]
    want = np.argsort(bounds, kind="stable").tolist()
    got = list(S._by_bound(tables, mult))
    assert [i for _, i in got] == want
    assert [b for b, _ in got] == bounds[want].tolist()
