"""``AnonSpec``: one set of defaults, validation at construction naming the field, strict JSON.

The spec is what the local API, the CLI, ``Federation.anonymize``, the aggregator and the
nodes share, so a bad option must fail here, before any data is read or any round is run.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustspace import _adult
from trustspace.anon import (
    DEFAULT_K,
    DEFAULT_SUPPRESSION,
    AnonSpec,
    Hierarchy,
    anonymize,
    named_hierarchies,
)
from trustspace.errors import ConfigError

SEX = Hierarchy("sex", [("M", "*"), ("F", "*")])
AGE = Hierarchy.intervals("age", range(20, 40), widths=(5, 10))


def test_defaults_are_the_federated_ones() -> None:
    spec = AnonSpec((SEX,))
    assert (spec.k, spec.suppression_limit) == (DEFAULT_K, DEFAULT_SUPPRESSION) == (5, 0.05)
    assert (spec.method, spec.metric, spec.suppressed, spec.disclosure) == (
        "optimal",
        "loss",
        "drop",
        "visited",
    )


@pytest.mark.parametrize("k", [0, -3, 2.5, "5", True, None])
def test_bad_k_is_refused_naming_k(k: Any) -> None:
    with pytest.raises(ConfigError, match=r"^k must be an integer >= 1, got "):
        AnonSpec((SEX,), k=k)


@pytest.mark.parametrize("limit", [-0.01, 1.5, math.nan, "0.1", None, True])
def test_bad_suppression_is_refused_naming_the_field(limit: Any) -> None:
    with pytest.raises(ConfigError, match=r"^suppression_limit must be"):
        AnonSpec((SEX,), suppression_limit=limit)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("l", "two", r"^l must be a number"),
        ("t", 1.5, r"^t must be in \[0, 1\]"),
        ("metric", "precision", r"^unknown metric 'precision'"),
        ("method", "greedy", r"^unknown method 'greedy'"),
        ("suppressed", "hide", r"^unknown suppressed 'hide': suppressed must be one of"),
        ("disclosure", "everything", r"^unknown disclosure 'everything'"),
        ("diversity", "fuzzy", r"^unknown diversity 'fuzzy'"),
        ("ordered", "yes", r"^ordered must be"),
        ("dataset", 3, r"^dataset must be"),
        ("sensitive_values", ["a"], r"^sensitive_values given without sensitive"),
    ],
)
def test_other_bad_fields_are_named(field: str, value: Any, message: str) -> None:
    extra = {"sensitive": "dx"} if field == "t" else {}
    with pytest.raises(ConfigError, match=message):
        AnonSpec((SEX,), **{field: value}, **extra)


def test_the_hierarchies_are_checked_together() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        AnonSpec((SEX, SEX))
    with pytest.raises(ConfigError, match="both a quasi-identifier and the sensitive"):
        AnonSpec((SEX,), sensitive="sex")
    with pytest.raises(ConfigError, match="need sensitive="):
        AnonSpec((SEX,), l=2)
    with pytest.raises(ConfigError, match="Hierarchy objects"):
        AnonSpec(("sex",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs its public value domain"):
        AnonSpec((SEX,), sensitive="dx").domain  # noqa: B018


def test_from_dict_refuses_an_unknown_key_naming_it() -> None:
    data = AnonSpec((SEX,), dataset="d").to_dict()
    with pytest.raises(ConfigError, match=r"anonymization spec: unknown field\(s\) kk;"):
        AnonSpec.from_dict({**data, "kk": 3})
    with pytest.raises(ConfigError, match="anonymization spec: k must be an integer"):
        AnonSpec.from_dict({**data, "k": 0})
    with pytest.raises(ConfigError, match="anonymization spec: 'hierarchies'"):
        AnonSpec.from_dict({"dataset": "d"})
    with pytest.raises(ConfigError, match="sensitive_values' must be a list of strings"):
        AnonSpec.from_dict({**data, "sensitive": "dx", "sensitive_values": [1, 2]})


def test_round_trip_through_json() -> None:
    spec = AnonSpec(
        (AGE, SEX),
        dataset="adult",
        k=3,
        l=2,
        t=0.2,
        sensitive="dx",
        sensitive_values=("b", "a"),
        suppression_limit=0.1,
        metric="entropy",
        suppressed="mask",
        disclosure="base",
    )
    again = AnonSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.digest() == spec.digest()
    assert again.sensitive_values == ("b", "a")  # the given order is the ordered distance's
    assert replace(spec, k=4).digest() != spec.digest()


@given(
    k=st.integers(1, 1000),
    limit=st.floats(0.0, 1.0),
    metric=st.sampled_from(["loss", "entropy", "discernibility", "aecs"]),
    ordered=st.sampled_from([None, True, False]),
)
def test_round_trip_property(k: int, limit: float, metric: str, ordered: bool | None) -> None:
    spec = AnonSpec((SEX,), k=k, suppression_limit=limit, metric=metric, ordered=ordered)
    assert AnonSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_complete_fixes_the_sensitive_domain_and_ordered() -> None:
    spec = AnonSpec((SEX,), sensitive="age", t=0.2)
    done = spec.complete(["10", "9", "10"])
    assert done.sensitive_values == ("9", "10") and done.ordered is True
    assert spec.complete(["x"]).ordered is False
    given = replace(spec, sensitive_values=("30", "20"))
    assert given.complete(["1"]).sensitive_values == ("30", "20")  # its own domain wins


def test_of_builds_from_keyword_arguments_or_takes_a_spec() -> None:
    spec = AnonSpec.of({"age": AGE, "sex": SEX}, k=3)
    assert spec.quasi_identifiers == ("age", "sex") and spec.k == 3
    assert AnonSpec.of(spec) is spec and AnonSpec.of(None, spec=spec) is spec
    with pytest.raises(ConfigError, match="either a spec or the options"):
        AnonSpec.of(spec, k=4)
    with pytest.raises(ConfigError, match=r"unknown anonymization option.*kk"):
        AnonSpec.of({"sex": SEX}, kk=3)
    with pytest.raises(ConfigError, match="local only"):
        AnonSpec((SEX,), dataset="d", method="mondrian").check_federated()
    with pytest.raises(ConfigError, match="name the dataset"):
        AnonSpec((SEX,)).check_federated()


def test_named_hierarchies_renames_and_reads_files() -> None:
    (h,) = named_hierarchies(["gender"], {"gender": SEX})
    assert h.name == "gender" and h.rows == SEX.rows
    path = _adult.DIR / "adult_hierarchy_sex.csv"
    (f,) = named_hierarchies({"sex": str(path)})
    assert f.name == "sex" and f.source == str(path)
    with pytest.raises(ConfigError, match="'age' has no hierarchy"):
        named_hierarchies(["age"], {})


def test_anonymize_uses_the_spec_defaults_and_accepts_a_spec() -> None:
    df = pd.read_csv(_adult.DIR / "adult.csv", sep=";").iloc[:3000]
    qi = {q: str(_adult.DIR / f"adult_hierarchy_{q}.csv") for q in ("age", "sex", "race")}
    by_default = anonymize(df, qi)
    assert by_default.result.models == ("5-anonymity",)
    assert by_default.result.suppression_limit == 0.05
    spec = AnonSpec.of(qi, k=5, suppression_limit=0.05)
    same = anonymize(df, spec=spec)
    assert same.result.levels == by_default.result.levels
    assert same.data.equals(by_default.data)
