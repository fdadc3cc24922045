"""Validation a user (or a remote party's malformed message) can trigger raises a TrustspaceError.

A representative walk over the packages: stats (Query, Term, Round, TableSchema, the filter
language, the state machine), secure aggregation (config, fixed-point encoder, Shamir, PRG),
Paillier (encoding, packing, keys, vectors, table settings), anonymization (hierarchies,
privacy models), the engine's DatasetSpec, the node's policy and the transport's addresses.
Each error must be the named TrustspaceError subclass (so a regression back to a bare
ValueError fails), must still be a ValueError (EncodingOverflow: an OverflowError) so that
callers catching the built-in classes keep working, and must name what was wrong.

A source scan then refuses any new bare ``raise ValueError(`` in the package.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trustspace
from trustspace.anon import KAnonymity
from trustspace.anon.hierarchy import Hierarchy
from trustspace.crypto import encoding, prg, shamir
from trustspace.crypto import paillier as hz
from trustspace.crypto.packing import PackingLayout
from trustspace.engine import DatasetSpec
from trustspace.errors import (
    ConfigError,
    DataError,
    EncodingOverflow,
    ProtocolError,
    TrustspaceError,
)
from trustspace.node import _fault
from trustspace.node.config import policy_from_dict
from trustspace.paillier import PrivateKey, PublicKey, configure_tables
from trustspace.secagg import FixedPointEncoder, SecAggConfig
from trustspace.stats import (
    Query,
    Round,
    TableSchema,
    Term,
    check_filter,
    parse_filter,
    start,
)
from trustspace.transport.serde import round_from_dict
from trustspace.transport.servicers import _parser
from trustspace.transport.tls import split_target

SCHEMA = TableSchema(
    {"age": "int", "sex": "str", "income": "float", "flag": "bool"},
    domains={"sex": ["Male", "Female"]},
)
ROUND = Round("adult", None, (Term.rows(), Term.count("age")))
# 512-bit test primes (as in test_paillier.py): only the validation is exercised here
P512 = 0xD9F5CED4C7E17FBD7AA4A57A5A2671261709FA11C4328FFF22C81854D0010C1F
Q512 = 0xE4CC10B715A2210E3F7E26349C9322ED1FFE0F38389C94DE47976F09EC92A867
with hz._allow_insecure_test_keys():
    PK = PublicKey(P512 * Q512)

Case = tuple[str, Callable[[], object], type[TrustspaceError], str]

CASES: list[Case] = [
    # --- stats: the query spec
    ("query-op", lambda: Query("meen", "adult", "age"), ConfigError, "unknown statistic 'meen'"),
    ("query-no-column", lambda: Query("mean", "adult"), ConfigError, "needs at least one column"),
    (
        "query-bins-without-range",
        lambda: Query("histogram", "adult", "age", params={"bins": 10}),
        ConfigError,
        r"needs range=\[low, high\]",
    ),
    (
        "query-q-out-of-range",
        lambda: Query("quantile", "adult", "age", params={"q": 1.5}),
        ConfigError,
        r"params.q'?: values must lie in \[0, 1\]",
    ),
    (
        "query-unknown-param",
        lambda: Query("mean", "adult", "age", params={"ddof": 1}),
        ConfigError,
        r"unknown key\(s\) \['ddof'\] for 'mean'",
    ),
    (
        "query-from-dict",
        lambda: Query.from_dict({"op": "mean"}),
        ConfigError,
        "missing key 'dataset'",
    ),
    (
        "query-where-syntax",
        lambda: Query("mean", "adult", "age", where="age >"),
        ConfigError,
        "filter error at column",
    ),
    (
        "query-check-type",
        lambda: Query("mean", "adult", "sex").check(SCHEMA),
        ConfigError,
        "needs numeric columns; 'sex' is str",
    ),
    (
        "query-check-column",
        lambda: Query("mean", "adult", "agee").check(SCHEMA),
        ConfigError,
        "unknown column 'agee'; known columns: age, sex",
    ),
    (
        "machine-min-group-size",
        lambda: start(Query("count", "adult"), SCHEMA, -1),
        ConfigError,
        "min_group_size: must be >= 0",
    ),
    # --- stats: rounds and terms (what the aggregator sends a node)
    (
        "term-powers",
        lambda: Term("moment", ("age",), powers=(5,), centers=(0.0,)),
        ConfigError,
        "term 'powers': 5 is not an integer 0..4",
    ),
    (
        "term-from-dict",
        lambda: Term.from_dict({"kind": "grid", "columns": ["age"]}),
        ConfigError,
        r"term: missing key\(s\)",
    ),
    ("round-terms", lambda: Round("adult", None, ()), ConfigError, "round 'terms'"),
    (
        "round-from-dict-term",
        lambda: Round.from_dict({**ROUND.to_dict(), "terms": [{"kind": "rows"}]}),
        ConfigError,
        r"round 'terms\[0\]': term 'kind'",
    ),
    (
        "round-vector-shape",
        lambda: ROUND.check_vector(np.zeros(3)),
        DataError,
        r"has shape \(3,\), expected \(2,\)",
    ),
    (
        "round-total-dtype",
        lambda: ROUND.decode(np.zeros(2)),
        DataError,
        "total must be an integer array",
    ),
    # --- stats: the schema and the filter language
    ("schema-empty", lambda: TableSchema({}), ConfigError, "schema 'columns'"),
    (
        "schema-type",
        lambda: TableSchema({"age": "integer"}),
        ConfigError,
        "unknown column type 'integer'",
    ),
    (
        "schema-bounds",
        lambda: TableSchema({"age": "int"}, bounds={"age": [5, 1]}),
        ConfigError,
        r"schema 'bounds.age': low must be below high",
    ),
    (
        "schema-from-dict",
        lambda: TableSchema.from_dict({"columns": {"age": "int"}, "extra": 1}),
        ConfigError,
        r"unknown key\(s\) \['extra'\]",
    ),
    (
        "filter-syntax",
        lambda: parse_filter("age = 1; drop table x"),
        ConfigError,
        "unexpected character ';'",
    ),
    (
        "filter-type",
        lambda: check_filter(parse_filter("sex > 1"), SCHEMA, "sex > 1"),
        ConfigError,
        "column 'sex' is str but is compared with 1",
    ),
    # --- secure aggregation
    (
        "secagg-session-id",
        lambda: SecAggConfig(b"short", (1, 2), 4),
        ConfigError,
        "session_id must be 16 to 255",
    ),
    (
        "secagg-modulus",
        lambda: SecAggConfig(os.urandom(16), (1, 2), 4, modulus_bits=48),
        ConfigError,
        "modulus_bits must be 32 or 64, got 48",
    ),
    (
        "secagg-encoder-scale",
        lambda: FixedPointEncoder(scale_bits=60, clip=1.0),
        ConfigError,
        "scale_bits must be in 0 .. 52, got 60",
    ),
    (
        "secagg-encoder-nan",
        lambda: FixedPointEncoder(8, 1.0).encode(np.array([np.nan])),
        DataError,
        "contains NaN",
    ),
    (
        "shamir-threshold",
        lambda: shamir.split(b"x", 4, [1, 2, 3]),
        ConfigError,
        "threshold 4 must be between 1 and 3",
    ),
    (
        "shamir-too-few-shares",
        lambda: shamir.combine(shamir.split(b"x", 2, [1, 2, 3]), 4, 1),
        DataError,
        "needs 4 shares to reconstruct, got 3",
    ),
    ("prg-key", lambda: prg.keystream(bytes(15), 16), ConfigError, "PRG key must be 16 bytes"),
    # --- Paillier: encoding, packing, keys, vectors, table settings
    (
        "paillier-frac-bits",
        lambda: encoding.check_frac_bits(5000),
        ConfigError,
        "frac_bits must be in",
    ),
    (
        "paillier-non-finite",
        lambda: PK.encrypt(float("nan")),
        DataError,
        "non-finite",
    ),
    (
        "paillier-overflow",
        lambda: PK.encrypt(2**600),
        EncodingOverflow,
        "encodable range of this key",
    ),
    (
        "paillier-packing",
        lambda: PackingLayout.for_key(2048, 62, 4),
        ConfigError,
        "needs 64-bit slots, more than 63",
    ),
    ("paillier-key-n", lambda: PublicKey(10), ConfigError, "n must be an odd integer"),
    (
        "paillier-key-bytes",
        lambda: PublicKey.from_bytes(b"XXXX"),
        DataError,
        "not a trustspace Paillier public key",
    ),
    (
        "paillier-private-key",
        lambda: PrivateKey(PK, P512, P512),
        ConfigError,
        "does not equal the public key's n",
    ),
    (
        "paillier-vector-frac-bits",
        lambda: PK.encrypt_vector(np.array([1.5])),
        ConfigError,
        "needs an explicit frac_bits",
    ),
    (
        "paillier-vector-shape",
        lambda: PK.encrypt_vector(np.zeros((2, 2), dtype=np.int64)),
        DataError,
        "expects a 1-d array",
    ),
    (
        "paillier-processes",
        lambda: PK.encrypt_many([1], processes=0),
        ConfigError,
        "processes must be a positive int",
    ),
    ("paillier-tables", lambda: configure_tables(window=0), ConfigError, "window must be in"),
    # --- anonymization
    ("anon-hierarchy-empty", lambda: Hierarchy("sex", []), ConfigError, "is empty"),
    (
        "anon-hierarchy-nesting",
        lambda: Hierarchy.intervals("age", [1, 2], widths=(5, 7)),
        ConfigError,
        "7 is not a multiple of 5",
    ),
    (
        "anon-hierarchy-values",
        lambda: Hierarchy.intervals("age", ["x"], widths=(5,)),
        DataError,
        "interval hierarchies need integer values",
    ),
    (
        "anon-hierarchy-cover",
        lambda: Hierarchy("sex", [("Male", "*")]).encode(["Female"]),
        DataError,
        "Female",
    ),
    ("anon-k", lambda: KAnonymity(0), ConfigError, "k must be an integer >= 1"),
    # --- engine, node and transport configuration
    (
        "engine-column-type",
        lambda: DatasetSpec("x", "x.csv", columns={"age": "integer"}),
        ConfigError,
        "dataset 'x': columns.age: unknown column type 'integer'",
    ),
    (
        "engine-format",
        lambda: DatasetSpec("x", "x.xlsx", format="xlsx", columns={"a": "int"}),  # type: ignore[arg-type]
        ConfigError,
        "'xlsx' is not 'csv' or 'parquet'",
    ),
    (
        "node-policy",
        lambda: policy_from_dict({"min_group_size": 0}),
        ConfigError,
        "min_group_size = 0: must be at least 1",
    ),
    (
        "node-fault-variable",
        lambda: _fault.parse("nowhere"),
        ConfigError,
        "is not POINT:exit or POINT:sleep=SECONDS",
    ),
    ("transport-address", lambda: split_target("localhost"), ConfigError, "is not HOST:PORT"),
    # --- a remote party's malformed message becomes ProtocolError at the node
    (
        "node-malformed-round",
        lambda: _parser("node n1")(round_from_dict, {"dataset": "adult"}),
        ProtocolError,
        r"node n1: malformed round: round: missing key\(s\)",
    ),
]


@pytest.mark.parametrize(
    ("call", "expected", "match"),
    [pytest.param(call, cls, match, id=name) for name, call, cls, match in CASES],
)
def test_user_triggerable_errors_are_trustspace_errors(
    call: Callable[[], object], expected: type[TrustspaceError], match: str
) -> None:
    with pytest.raises(TrustspaceError, match=match) as info:
        call()
    assert isinstance(info.value, expected), f"{type(info.value).__name__}: {info.value}"
    if issubclass(expected, ConfigError | DataError):
        assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    if issubclass(expected, EncodingOverflow):
        assert isinstance(info.value, OverflowError)


def test_the_cases_cover_every_package() -> None:
    """The walk stays representative: each package that validates input has a case."""
    prefixes = {name.split("-")[0] for name, *_ in CASES}
    wanted = {"query", "term", "round", "schema", "filter", "machine", "secagg", "shamir"}
    wanted |= {"prg", "paillier", "anon", "engine", "node", "transport"}
    assert wanted <= prefixes


# A bare ValueError stays only where it guards the package against its own bugs; each entry
# says why. Anything else a user can reach raises ConfigError or DataError instead.
BARE_VALUE_ERRORS_ALLOWED = {
    # FixedBaseTable is built only from a validated TableConfig (ConfigError) and its
    # exponents are the package's own draws below 2**exponent_bits.
    "crypto/_paillier_fixedbase.py": 3,
    # _group_by's bool check is unreachable: Query.check raises ConfigError first.
    "stats/_machine.py": 1,
}


def _bare_value_errors(path: Path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func: Any = node.exc.func
            if isinstance(func, ast.Name) and func.id == "ValueError":
                count += 1
    return count


def test_no_new_bare_value_errors() -> None:
    root = Path(trustspace.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("proto/"):
            continue  # generated code
        n = _bare_value_errors(path)
        if n:
            found[rel] = n
    extra = {k: v for k, v in found.items() if v > BARE_VALUE_ERRORS_ALLOWED.get(k, 0)}
    assert not extra, (
        f"bare `raise ValueError(` in {extra}: raise trustspace.errors.ConfigError (parameters, "
        "specs, queries) or DataError (data) instead, or, for a guard against the package's own "
        "bugs, list it in BARE_VALUE_ERRORS_ALLOWED with the reason"
    )
