"""Identifier columns: normalisation, hashed columns, nulls/duplicates by count, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from trustspace.errors import ConfigError, DataError
from trustspace.vertical.ids import IdReport, IdSpec, id_elements


def sha(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


def test_str_normalisation_trim_case_nfc() -> None:
    spec = IdSpec("cid", case="lower")
    els, rep = id_elements(["  Ab ", "ab", "Caf\u00e9", "Cafe\u0301"], spec, "node bank")
    assert els[0] == els[1] == sha("ab")
    assert els[2] == els[3] == sha("caf\u00e9")  # NFC: composed and decomposed agree
    assert rep == IdReport(rows=4, nulls=0, duplicates=2)
    keep = IdSpec("cid", trim=False)
    els2, _ = id_elements([" ab", "ab"], keep, "x")
    assert els2[0] != els2[1]


def test_int_canonical_forms_and_pandas_nullable_floats() -> None:
    spec = IdSpec("cid", type="int")
    els, rep = id_elements(
        pd.Series([7, np.int64(7), 7.0, " +007 ", None, float("nan")]), spec, "x"
    )
    assert els[:4] == [sha("7")] * 4
    assert els[4:] == [b"", b""]
    assert rep == IdReport(rows=6, nulls=2, duplicates=3)


def test_hashed_column_meets_raw_column() -> None:
    raw = IdSpec("cid", case="upper")
    hashed = IdSpec("cid_h", case="upper", hashed="sha256")
    assert raw.digest == hashed.digest
    els_raw, _ = id_elements(["ab12"], raw, "bank")
    els_h, _ = id_elements([hashlib.sha256(b"AB12").hexdigest().upper()], hashed, "telco")
    assert els_raw == els_h


def test_digest_separates_normalisations() -> None:
    digests = {
        IdSpec("c").digest,
        IdSpec("c", case="lower").digest,
        IdSpec("c", trim=False).digest,
        IdSpec("c", type="int").digest,
    }
    assert len(digests) == 4
    assert IdSpec("a").digest == IdSpec("b").digest  # the column name is not agreed on
    assert IdSpec("c", type="int", case="lower").digest == IdSpec("c", type="int").digest


def test_nulls_and_empty_strings_are_placeholders() -> None:
    els, rep = id_elements(["a", None, "   ", pd.NA, "a"], IdSpec("cid"), "x")
    assert els[1] == els[2] == els[3] == b""
    assert rep == IdReport(rows=5, nulls=3, duplicates=1)


@pytest.mark.parametrize(
    ("spec", "values", "what"),
    [
        (IdSpec("cid", hashed="sha256"), ["zz" * 32, "secret-value-1"], "hex SHA-256"),
        (IdSpec("cid", type="int"), [1, 2.5, "secret-value-1", True], "not integers"),
        (IdSpec("cid"), ["a", 12345, "secret-value-1"], "not strings"),
    ],
)
def test_bad_values_error_counts_without_values(
    spec: IdSpec, values: list[object], what: str
) -> None:
    with pytest.raises(DataError) as exc:
        id_elements(values, spec, "node bank, dataset default")
    text = str(exc.value)
    assert "node bank, dataset default" in text and "'cid'" in text and what in text
    assert "secret-value-1" not in text and "12345" not in text and "2.5" not in text


def test_from_table_errors_name_where_and_key() -> None:
    where = "node.toml [datasets.default.id]"
    assert IdSpec.from_table({"column": "cid", "case": "lower"}, where) == IdSpec(
        "cid", case="lower"
    )
    for table, key in [
        ({"column": "cid", "colour": "x"}, "colour"),
        ({}, "column"),
        ({"column": "cid", "type": "float"}, "type"),
        ({"column": "cid", "trim": "yes"}, "trim"),
        ({"column": "cid", "hashed": "md5"}, "hashed"),
        ({"column": ""}, "column"),
    ]:
        with pytest.raises(ConfigError) as exc:
            IdSpec.from_table(table, where)
        assert where in str(exc.value) and key in str(exc.value)


def test_dict_round_trip() -> None:
    spec = IdSpec("cid", type="str", trim=False, case="upper", hashed="sha256")
    assert IdSpec.from_dict(spec.to_dict()) == spec
