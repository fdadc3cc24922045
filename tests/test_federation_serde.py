"""Results survive the wire: every stats op's Result round-trips through serde's JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import ProtocolError
from trustspace.stats import Query, join_words, split_words, start
from trustspace.transport import serde

COLUMNS = {"age": "int", "income": "float", "sex": "str"}
QUERIES = [
    Query("count", "d", ()),
    Query("mean", "d", ("age", "income")),
    Query("histogram", "d", "age", None, {"bins": 5, "range": [15, 90]}),
    Query("quantile", "d", "age", None, {"q": [0.1, 0.5]}),
    Query("cov", "d", ("age", "income")),
    Query("describe", "d", ("age",)),
    Query(
        "group_by",
        "d",
        ("age", "income"),
        None,
        {"by": "sex", "agg": {"age": ["mean", "count"], "income": ["sum"]}, "values": ["F", "M"]},
    ),
]


def _run(query: Query, partitions: dict[str, Path]) -> Any:
    engines = [Engine({"d": DatasetSpec("d", p, columns=COLUMNS)}) for p in partitions.values()]
    comp = start(query, engines[0].schema("d"), 5)
    while (rnd := comp.next_round()) is not None:
        total = sum(rnd.encode(e.compute(rnd)) for e in engines)
        comp.feed(rnd.decode(total))
    for e in engines:
        e.close()
    return comp.result()


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.op)
def test_result_round_trip(query: Query, partitions: dict[str, Path]) -> None:
    res = _run(query, partitions)
    back = serde.result_from_dict(json.loads(serde.dumps(serde.result_to_dict(res))))
    assert back.op == res.op and back.rounds == res.rounds
    if isinstance(res.value, pd.Series | pd.DataFrame):
        assert back.value.index.equals(res.value.index)
        assert np.allclose(
            back.value.to_numpy(dtype=float), res.value.to_numpy(dtype=float), equal_nan=True
        )
        assert (back.suppressed.to_numpy() == res.suppressed.to_numpy()).all()
    else:
        assert back.value == pytest.approx(res.value)


def test_words_split_and_join_are_exact() -> None:
    v = np.array([0, 1, -1, 2**61, -(2**61), 123456789012345], dtype=np.int64)
    total = join_words(sum(split_words(v) for _ in range(7)))
    assert total.view(np.int64).tolist() == (7 * v).tolist()
    with pytest.raises(ProtocolError, match="even length"):
        join_words(np.zeros(3, dtype=np.int64))


def test_malformed_json_fields() -> None:
    with pytest.raises(ProtocolError, match="round_json: not valid JSON"):
        serde.loads_dict("{", "round_json")
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        serde.loads_dict("[1]", "query_json")
    with pytest.raises(ProtocolError, match="malformed result"):
        serde.result_from_dict({"op": "mean"})
