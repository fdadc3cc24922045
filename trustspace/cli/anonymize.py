"""``trustspace anonymize``: k-anonymize a CSV file with ARX-style hierarchies (local, one table).

Reads the CSV with the standard library (no pandas: the whole process stays fast), writes the
output through a temporary file renamed into place, so a failed run leaves no partial output.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustspace._files import write_atomic
from trustspace.anon.search import METRICS
from trustspace.anon.spec import (
    DEFAULT_K,
    DEFAULT_SUPPRESSION,
    DIVERSITIES,
    METHODS,
    default_of,
)
from trustspace.errors import ConfigError, DataError

if TYPE_CHECKING:
    from trustspace.anon.hierarchy import Hierarchy

EXAMPLE = (
    "example: trustspace anonymize adult.csv --qi age=hier_age.csv --qi sex=hier_sex.csv "
    "--k 5 --suppression 0.05 -o out.csv --report report.json"
)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "anonymize",
        help="k-anonymize a CSV file (ARX-style hierarchies)",
        description=(
            "Release a k-anonymous (optionally l-diverse / t-close) version of a CSV file with "
            "the least information loss: globally optimal full-domain generalization, or "
            "Mondrian local recoding."
        ),
        epilog=EXAMPLE,
    )
    p.add_argument("input", metavar="INPUT.csv", help="the table (first row: column names)")
    p.add_argument(
        "--qi",
        action="append",
        required=True,
        metavar="COLUMN=HIERARCHY",
        help=(
            "a quasi-identifier and its hierarchy: an ARX hierarchy CSV file, or a builder: "
            "'interval:5,10,20', 'mask', 'dates' (repeat for each quasi-identifier)"
        ),
    )
    add_release_options(
        p, (("method", METHODS, "globally optimal generalization or Mondrian local recoding"),)
    )
    p.add_argument("-o", "--output", required=True, help="where to write the anonymized CSV")
    p.add_argument("--sep", default=None, help="field separator (default: ';' or ',' sniffed)")


def add_release_options(g: Any, extra: tuple[tuple[str, tuple[str, ...], str], ...] = ()) -> None:
    """The options of a k-anonymous release that ``trustspace anonymize`` and ``trustspace
    query ... anonymize`` share (k, suppression, l-diversity, t-closeness, metric, report);
    ``extra``: further (name, choices, what) choices with AnonSpec defaults."""
    g.add_argument("--k", type=int, default=DEFAULT_K, help=f"minimum class size ({DEFAULT_K})")
    g.add_argument(
        "--suppression",
        type=float,
        default=DEFAULT_SUPPRESSION,
        help=f"fraction of records that may be suppressed, 0..1 ({DEFAULT_SUPPRESSION})",
    )
    g.add_argument("--report", help="write a JSON report here")
    g.add_argument("--hierarchy-sep", default=";", help="hierarchy files' separator (';')")
    g.add_argument("--sensitive", help="the sensitive attribute (for --l and --t)")
    g.add_argument("--l", type=float, default=None, help="l-diversity of --sensitive")
    g.add_argument("--c", type=float, default=None, help="c of recursive (c,l)-diversity")
    g.add_argument("--t", type=float, default=None, help="t-closeness of --sensitive")
    for name, choices, what in (
        ("diversity", DIVERSITIES, "l-diversity variant"),
        ("metric", METRICS, "information loss to minimize"),
        *extra,
    ):
        default = default_of(name)
        g.add_argument(f"--{name}", choices=choices, default=default, help=f"{what} ({default})")
    g.add_argument(
        "--keep-suppressed",
        action="store_true",
        help="keep suppressed records with '*' quasi-identifiers (default: drop them)",
    )


def _read_csv(path: str, sep: str | None) -> tuple[str, dict[str, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read input file {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"input file {path!r} is not UTF-8 text: {exc}") from exc
    first = text.split("\n", 1)[0]
    if sep is None:
        sep = ";" if first.count(";") >= first.count(",") and ";" in first else ","
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    rows = [r for r in rows if r]
    if not rows:
        raise DataError(f"input file {path!r} is empty; it needs a header row")
    header = rows[0]
    if len(set(header)) != len(header):
        raise DataError(f"input file {path!r}: duplicate column names in the header: {header}")
    cols: dict[str, list[str]] = {h: [] for h in header}
    for lineno, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(
                f"{path}: line {lineno} has {len(r)} fields, the header has {len(header)} "
                f"(separator {sep!r}; use --sep if it is another)"
            )
        for h, v in zip(header, r, strict=True):
            cols[h].append(v)
    return sep, cols


def is_builder(what: str) -> bool:
    """Whether a ``--qi COLUMN=WHAT`` names a builder (from the values) rather than a file."""
    return what.startswith("interval:") or what in ("mask", "dates")


def build_hierarchy(spec: str, values: list[str]) -> Hierarchy:
    """The builder hierarchy of ``--qi COLUMN=BUILDER`` over ``values`` (the column's values,
    or, federated, its declared domain)."""
    from trustspace.anon.hierarchy import Hierarchy

    name, _, what = spec.partition("=")
    if what.startswith("interval:"):
        try:
            widths = [int(w) for w in what[len("interval:") :].split(",")]
        except ValueError as exc:
            raise ConfigError(
                f"--qi {spec!r}: widths must be integers, e.g. interval:5,10"
            ) from exc
        return Hierarchy.intervals(name, values, widths)
    if what == "mask":
        return Hierarchy.masking(name, values)
    if what == "dates":
        return Hierarchy.dates(name, values)
    raise ConfigError(f"--qi {spec!r}: unknown builder; use interval:W1,W2,..., mask or dates")


def _hierarchy(spec: str, column: list[str], sep: str) -> Hierarchy:
    from trustspace.anon.hierarchy import Hierarchy

    name, eq, what = spec.partition("=")
    if not eq or not name or not what:
        raise ConfigError(f"--qi {spec!r}: expected COLUMN=HIERARCHY (a file or a builder)")
    if is_builder(what):
        return build_hierarchy(spec, column)
    path = Path(what)
    return Hierarchy.from_csv(path, name, sep=sep)


def run(args: argparse.Namespace) -> int:
    from trustspace.anon.api import anonymize_columns
    from trustspace.anon.spec import AnonSpec

    out_dir = Path(args.output).parent
    if not out_dir.is_dir():
        raise ConfigError(f"-o {args.output!r}: directory {str(out_dir)!r} does not exist")
    sep, cols = _read_csv(args.input, args.sep)
    hs: dict[str, Hierarchy] = {}
    for qi in args.qi:
        name = qi.partition("=")[0]
        if name in hs:
            raise ConfigError(f"--qi {name!r} is given twice")
        if name not in cols:
            raise DataError(
                f"--qi {name!r}: no such column in {args.input!r}; columns are: {', '.join(cols)}"
            )
        hs[name] = _hierarchy(qi, cols[name], args.hierarchy_sep)
    same_names = ("k", "l", "t", "sensitive", "diversity", "c", "metric", "method")
    spec = AnonSpec(
        tuple(hs.values()),
        suppression_limit=args.suppression,
        suppressed="mask" if args.keep_suppressed else "drop",
        **{name: getattr(args, name) for name in same_names},
    )
    out, result = anonymize_columns(cols, spec)
    header = list(cols)

    def write_csv(fh: Any) -> None:
        w = csv.writer(fh, delimiter=sep, lineterminator="\n")
        w.writerow(header)
        w.writerows(zip(*(out[h] for h in header), strict=True))

    report = result.report()
    report["input"] = args.input
    report["output"] = args.output
    write_atomic(args.output, write_csv, text=True)
    if args.report:
        write_atomic(args.report, (json.dumps(report, indent=2) + "\n").encode())
    m = result.metrics
    levels = "(local recoding)"
    if result.levels:
        pairs = zip(result.quasi_identifiers, result.levels, strict=True)
        levels = " ".join(f"{q}={lv}" for q, lv in pairs)
    print(
        f"{result.method}: {', '.join(result.models)}; levels {levels}; "
        f"{result.suppressed_records} of {result.n_records} records suppressed; "
        f"{result.n_classes} classes; loss {m['loss']:.4f}; "
        f"{result.seconds:.3f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0
