"""``trustspace synthesize``: a DP synthetic table of a dataset, written as CSV with a report.

    trustspace synthesize -a HOST:PORT -c certs/alice adult age,sex,race,salary-class \\
        --epsilon 1 --bins age=17,25,35,45,55,65,91 -o adult-synthetic.csv

writes ``adult-synthetic.csv`` (atomically) and ``adult-synthetic.csv.report.json``: the
provenance (dataset, columns, epsilon, delta, method, date, each measurement step's privacy
cost, the tree) and the utility report (per column and pair, the distance to the DP estimate
of the real marginal, with its noise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from trustspace.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="a differentially private synthetic table of a dataset (CSV and a report)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("-a", "--aggregator", required=True, metavar="HOST:PORT")
    p.add_argument(
        "-c", "--credentials", required=True, metavar="DIR", help="analyst identity directory"
    )
    p.add_argument("--server-name", help="name on the aggregator's certificate (default: host)")
    p.add_argument("dataset")
    p.add_argument("columns", help="the columns, comma-separated")
    p.add_argument("--epsilon", type=float, required=True, help="the whole synthesis's epsilon")
    p.add_argument("--delta", type=float, default=1e-9, help="its delta (default 1e-9)")
    p.add_argument("--rows", type=int, default=None, help="rows to draw (default: the noisy count)")
    p.add_argument(
        "--bins",
        action="append",
        default=[],
        metavar="COL=N|COL=E1,E2,...",
        help="bins of a numeric column over its bounds, or its edges (repeat; default 8)",
    )
    p.add_argument("--method", default="mst", help="the mechanism (mst)")
    p.add_argument("-w", "--where", help="synthesize the rows passing this filter only")
    p.add_argument("-o", "--output", required=True, help="the CSV to write")
    p.add_argument("--purpose", default=None, help="what the synthesis is for (audited)")


def _bins(specs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        col, sep, rest = spec.partition("=")
        if not sep or not col or not rest:
            raise ConfigError(f"--bins {spec!r}: expected COLUMN=N or COLUMN=E1,E2,...")
        try:
            parts = [float(x) for x in rest.split(",")]
        except ValueError:
            raise ConfigError(f"--bins {spec!r}: expected numbers") from None
        out[col] = int(parts[0]) if len(parts) == 1 else parts
    return out


def run(args: argparse.Namespace) -> int:
    from trustspace._files import write_atomic
    from trustspace.api import Federation

    columns = [c for c in args.columns.split(",") if c]
    out = Path(args.output)
    # before anything is spent: a synthesis costs budget, and its rows must not be lost
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(
            f"-o {out}: the folder {folder} does not exist or is not writable; nothing was "
            "synthesized (no budget spent)"
        )
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a folder; give the CSV file to write")
    with Federation.connect(
        args.aggregator, args.credentials, server_name=args.server_name, purpose=args.purpose
    ) as fed:
        frame = fed.synthesize(
            args.dataset,
            columns,
            epsilon=args.epsilon,
            delta=args.delta,
            rows=args.rows,
            method=args.method,
            bins=_bins(args.bins) or 8,
            where=args.where,
        )
    write_atomic(out, frame.to_csv(index=False).encode())
    report = frame.attrs["report"].reset_index().to_dict(orient="records")
    doc = {"provenance": frame.attrs["provenance"], "report": report}
    report_path = out.with_name(out.name + ".report.json")
    write_atomic(report_path, (json.dumps(doc, indent=2) + "\n").encode())
    prov = frame.attrs["provenance"]
    print(
        f"{len(frame)} synthetic rows of {', '.join(columns)} written to {out} (epsilon "
        f"{prov['epsilon']:g}, delta {prov['delta']:g}, {prov['method']}); report: {report_path}",
        file=sys.stderr,
    )
    return 0
