"""Locate the exact line and column of a bad CSV field with one streaming pass (used only after
DuckDB's typed read failed, so the common case stays a single fast scan)."""

from __future__ import annotations

import csv
import datetime as _dt
import math
import re
from collections.abc import Callable

from trustspace.engine._spec import DatasetSpec
from trustspace.errors import DataError
from trustspace.stats import ColumnType

__all__ = ["PARQUET_MAGIC", "check_format", "check_header", "locate_bad_field"]

#: The first (and last) four bytes of every Parquet file (Apache Parquet format spec).
PARQUET_MAGIC = b"PAR1"

_INT = re.compile(r"^\s*[-+]?\d+\s*$")
_BOOLS = {"true", "false", "t", "f", "1", "0", "yes", "no", "y", "n"}
_EXPECT = {
    ColumnType.INT: "an integer",
    ColumnType.FLOAT: "a finite number",
    ColumnType.STR: "text",
    ColumnType.BOOL: "true or false",
    ColumnType.DATE: "a date YYYY-MM-DD",
}


def _ok_int(s: str) -> bool:
    return bool(_INT.match(s)) and -(2**63) <= int(s) < 2**63


def _ok_float(s: str) -> bool:
    try:
        return math.isfinite(float(s.strip()))
    except ValueError:
        return False


def _ok_date(s: str) -> bool:
    try:
        _dt.date.fromisoformat(s.strip())
    except ValueError:
        return False
    return True


_CHECKS: dict[ColumnType, Callable[[str], bool]] = {
    ColumnType.INT: _ok_int,
    ColumnType.FLOAT: _ok_float,
    ColumnType.STR: lambda s: True,
    ColumnType.BOOL: lambda s: s.strip().lower() in _BOOLS,
    ColumnType.DATE: _ok_date,
}


def check_format(spec: DatasetSpec) -> None:
    """Refuse a Parquet file declared as CSV, and a text file declared as Parquet.

    Raises:
        DataError: naming the file and the ``format`` key to set.
    """
    with open(spec.file, "rb") as fh:
        head = fh.read(4096)
    key = f"datasets.{spec.name}.format"
    if spec.format == "csv" and head.startswith(PARQUET_MAGIC):
        raise DataError(
            f"{spec.path}: dataset {spec.name!r}: the file looks like Parquet (it starts with "
            f'{PARQUET_MAGIC.decode()}) but is declared as CSV; set {key} = "parquet"'
        )
    if spec.format == "parquet" and head and not head.startswith(PARQUET_MAGIC):
        try:
            head.decode("utf-8")
            text = True
        except UnicodeDecodeError as e:  # a multi-byte character cut at the 4096th byte
            text = e.start >= len(head) - 3
        if text:
            raise DataError(
                f"{spec.path}: dataset {spec.name!r}: the file looks like text (CSV?), not "
                f'Parquet (no {PARQUET_MAGIC.decode()} magic); set {key} = "csv" (with the '
                "delimiter) or convert the file to Parquet"
            )


def check_header(spec: DatasetSpec) -> None:
    """Check the CSV header (or the first row's width) against the spec's columns.

    Raises:
        DataError: naming the file, line 1 and the missing, extra or misplaced column.
    """
    path, names = spec.file, list(spec.columns)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = next(csv.reader(fh, delimiter=spec.delimiter), None)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: dataset {spec.name!r}: line 1 is not UTF-8 text (byte {e.start}); is the "
            f"file binary (then set datasets.{spec.name}.format to its format, e.g. "
            '"parquet") or in another encoding (then re-encode it as UTF-8)?'
        ) from None
    if first is None:
        if spec.header:
            raise DataError(
                f"{path}: line 1: the file is empty; expected a header naming {', '.join(names)}"
            )
        return
    if not spec.header:
        if len(first) != len(names):
            raise DataError(
                f"{path}: line 1: {len(first)} fields, expected {len(names)} "
                f"({', '.join(names)}); check the delimiter {spec.delimiter!r}"
            )
        return
    got = [h.strip() for h in first]
    missing = [n for n in names if n not in got]
    extra = [h for h in got if h not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if extra:
            pos = got.index(extra[0]) + 1
            parts.append(
                f"unexpected column(s) {', '.join(map(repr, extra))} (first at field {pos})"
            )
        hint = (
            f"; is the delimiter {spec.delimiter!r} right?"
            if len(got) == 1
            else "; declare every column of the file in the dataset's columns"
        )
        raise DataError(f"{path}: line 1 (header): {' and '.join(parts)}{hint}")
    if got != names:
        raise DataError(
            f"{path}: line 1 (header): columns are in the order {', '.join(got)}; the dataset "
            f"spec lists {', '.join(names)}; list them in file order"
        )


def locate_bad_field(spec: DatasetSpec) -> DataError | None:
    """Stream the CSV and return a DataError for the first bad row or field (None if none)."""
    types = [ColumnType(t) for t in spec.columns.values()]
    names = list(spec.columns)
    nulls = set(spec.null_values)
    with open(spec.file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=spec.delimiter, strict=True)
        try:
            if spec.header:
                next(reader, None)
            for row in reader:
                line = reader.line_num
                if len(row) != len(names):
                    return DataError(
                        f"{spec.path}: line {line}: {len(row)} fields, expected {len(names)} "
                        f"({', '.join(names)}); fix the row or quote fields containing "
                        f"{spec.delimiter!r}"
                    )
                for i, (value, typ) in enumerate(zip(row, types, strict=True)):
                    if value in nulls:
                        continue
                    if _CHECKS[typ](value):
                        bounds = spec.bounds.get(names[i])
                        if bounds is None or bounds[0] <= float(value) <= bounds[1]:
                            continue
                        return DataError(
                            f"{spec.path}: line {line}, column {i + 1} ({names[i]!r}): "
                            f"{value[:80]!r} is outside the declared bounds {list(bounds)}; "
                            "fix the value or widen the bounds"
                        )
                    return DataError(
                        f"{spec.path}: line {line}, column {i + 1} ({names[i]!r}): cannot read "
                        f"{value[:80]!r} as {typ.value}: expected {_EXPECT[typ]} or an empty "
                        "field for a missing value; fix the value or the column's declared type"
                    )
        except csv.Error as e:
            return DataError(f"{spec.path}: line {reader.line_num}: malformed CSV ({e})")
        except UnicodeDecodeError as e:
            return DataError(f"{spec.path}: not valid UTF-8 near byte {e.start}; re-encode it")
    return None
