"""Identifier columns of vertical datasets: declaration, normalisation and PSI elements (pure).

A node declares which column identifies a person and how to normalise it (``IdSpec``); every
row becomes one 32-byte element, the SHA-256 of the normalised identifier, that the PSI
(``trustspace.vertical.psi``) hashes onto the curve. A column may instead hold the hex SHA-256
of the normalised identifier (``hashed = "sha256"``, e.g. a pseudonymised national ID): its
elements are the decoded digests, so a hashed column meets a raw column with the same
normalisation.

Normalisation of ``type = "str"``: Unicode NFC, then (``trim``) surrounding whitespace removed,
then ``case`` applied (``str.lower`` / ``str.upper``), then UTF-8. ``type = "int"``: the
canonical decimal form of the integer (``-12``, no leading zeros or ``+``); strings of digits
(after trimming) and integral floats (pandas' int columns with nulls) are accepted. Nulls
(None, NaN, NA, NaT, and strings empty after normalisation) give ``b""`` placeholders that
the PSI skips. Errors and reports carry counts only, never identifier values.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from trustspace.errors import ConfigError, DataError

__all__ = ["ELEMENT_BYTES", "IdReport", "IdSpec", "id_elements"]

ELEMENT_BYTES: Final = 32
"""One element per row: a SHA-256 digest."""

_TYPES: Final = ("str", "int")
_CASES: Final = ("keep", "lower", "upper")
_HASHES: Final = ("", "sha256")
_KEYS: Final = ("column", "type", "trim", "case", "hashed")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+\Z")
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]{64}\Z")
_FLOAT_INT_MAX: Final = 2**53  # floats above this are not exact integers any more


@dataclass(frozen=True)
class IdSpec:
    """How a dataset's identifier column is read (validated at construction).

    Attributes:
        column: the column holding the identifier.
        type: ``"str"`` or ``"int"``.
        trim: remove surrounding whitespace (``str`` only).
        case: ``"keep"``, ``"lower"`` or ``"upper"`` (``str`` only).
        hashed: ``""`` (the column holds the identifier) or ``"sha256"`` (it holds the hex
            SHA-256 of the normalised identifier).
    """

    column: str
    type: Literal["str", "int"] = "str"
    trim: bool = True
    case: Literal["keep", "lower", "upper"] = "keep"
    hashed: Literal["", "sha256"] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column.strip():
            raise ConfigError("id column: the column name must be a non-empty string")
        if self.type not in _TYPES:
            raise ConfigError(f"id column {self.column!r}: type must be one of {_TYPES}")
        if not isinstance(self.trim, bool):
            raise ConfigError(f"id column {self.column!r}: trim must be true or false")
        if self.case not in _CASES:
            raise ConfigError(f"id column {self.column!r}: case must be one of {_CASES}")
        if self.hashed not in _HASHES:
            raise ConfigError(
                f'id column {self.column!r}: hashed must be "" or "sha256" (hex SHA-256 of '
                "the normalised identifier)"
            )

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> IdSpec:
        """Parse a config table (e.g. ``[datasets.x.id]``); errors name ``where`` and the key.

        Raises:
            ConfigError: on an unknown key, a missing ``column`` or a bad value.
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table with keys {', '.join(_KEYS)}")
        unknown = sorted(str(k) for k in table if k not in _KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_KEYS)}"
            )
        if "column" not in table:
            raise ConfigError(f"{where}.column: missing (the name of the identifier column)")
        choices: dict[str, tuple[Any, ...]] = {
            "column": (),
            "type": _TYPES,
            "trim": (True, False),
            "case": _CASES,
            "hashed": _HASHES,
        }
        for key, allowed in choices.items():
            if key not in table:
                continue
            value = table[key]
            if key == "column":
                if not isinstance(value, str) or not value.strip():
                    raise ConfigError(f"{where}.column: must be a non-empty string")
            elif key == "trim":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.trim: must be true or false")
            elif not isinstance(value, str) or value not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise ConfigError(f"{where}.{key}: must be one of {shown}")
        return cls(**{k: table[k] for k in _KEYS if k in table})

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (``from_dict`` inverts it)."""
        return {
            "column": self.column,
            "type": self.type,
            "trim": self.trim,
            "case": self.case,
            "hashed": self.hashed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdSpec:
        """Inverse of ``to_dict`` (validated like ``from_table``)."""
        return cls.from_table(data, "id spec")

    @property
    def digest(self) -> str:
        """Hex SHA-256 of what peers must agree on: the normalisation, not the column name.

        ``hashed`` is left out (a hashed column meets a raw one with the same normalisation);
        for ``int`` ids trim and case cannot change the canonical form and are left out too.
        """
        what: dict[str, Any] = {"v": 1, "type": self.type}
        if self.type == "str":
            what.update(nfc=True, trim=self.trim, case=self.case)
        blob = json.dumps(what, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class IdReport:
    """What ``id_elements`` found: counts only, never values."""

    rows: int
    nulls: int
    duplicates: int  # rows whose element equals an earlier row's


def _is_null(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float | np.floating):
        return math.isnan(v)
    if isinstance(v, np.datetime64 | np.timedelta64):
        return bool(np.isnat(v))
    return False


def _as_list(values: Sequence[Any] | np.ndarray | pd.Series) -> list[Any]:
    if isinstance(values, pd.Series | pd.Index):
        return list(values.astype(object).tolist())
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise DataError(f"identifier values must be one-dimensional, got shape {values.shape}")
        return list(values.tolist())
    return list(values)


def _str_key(v: Any, spec: IdSpec) -> bytes | None:
    """The normalised UTF-8 identifier, ``b""`` for null, ``None`` for a non-string."""
    if isinstance(v, bytes | bytearray):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(v, str):
        return None
    s = unicodedata.normalize("NFC", v)
    if spec.trim:
        s = s.strip()
    if spec.case == "lower":
        s = s.lower()
    elif spec.case == "upper":
        s = s.upper()
    return s.encode("utf-8")


def _int_key(v: Any) -> bytes | None:
    """The canonical decimal form, or ``None`` when ``v`` is not an integer."""
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return str(int(v)).encode()
    if isinstance(v, float | np.floating):
        f = float(v)
        if math.isfinite(f) and f.is_integer() and abs(f) <= _FLOAT_INT_MAX:
            return str(int(f)).encode()
        return None
    if isinstance(v, str):
        s = v.strip()
        if _INT_RE.match(s):
            return str(int(s)).encode()
    return None


def id_elements(
    values: Sequence[Any] | np.ndarray | pd.Series, spec: IdSpec, where: str
) -> tuple[list[bytes], IdReport]:
    """One 32-byte element per row (``b""`` for a null row) and a report of counts.

    Args:
        values: the identifier column, one value per row.
        spec: how to read it.
        where: names the dataset (e.g. ``"node bank, dataset default"``) in errors.

    Raises:
        DataError: a hashed column with values that are not 64 hex digits, or values of the
            wrong type, naming ``where``, the column and how many rows; never a value.
    """
    rows = _as_list(values)
    out: list[bytes] = []
    append = out.append
    sha256 = hashlib.sha256
    bad = 0
    nulls = 0
    for v in rows:
        if _is_null(v):
            append(b"")
            nulls += 1
            continue
        if spec.hashed:
            s = v.decode("ascii", "replace") if isinstance(v, bytes) else v
            if isinstance(s, str) and _HEX_RE.match(s.strip()):
                append(bytes.fromhex(s.strip()))
            elif isinstance(s, str) and not s.strip():
                append(b"")
                nulls += 1
            else:
                bad += 1
                append(b"")
            continue
        key = _str_key(v, spec) if spec.type == "str" else _int_key(v)
        if key is None:
            bad += 1
            append(b"")
        elif not key:
            append(b"")
            nulls += 1
        else:
            append(sha256(key).digest())
    if bad:
        if spec.hashed:
            what = "are not a hex SHA-256 digest (64 hexadecimal digits)"
            fix = 'store the hex SHA-256 of the normalised id, or declare hashed = ""'
        elif spec.type == "int":
            what = "are not integers"
            fix = 'clean the column, or declare type = "str"'
        else:
            what = "are not strings"
            fix = 'read the column as text, or declare type = "int"'
        raise DataError(
            f"{where}: {bad} of {len(rows)} row(s) of id column {spec.column!r} {what}; {fix}"
        )
    present = len(rows) - nulls
    duplicates = present - len(set(out)) + (1 if nulls else 0)
    return out, IdReport(rows=len(rows), nulls=nulls, duplicates=duplicates)
