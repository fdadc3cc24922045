"""``trustspace query``: run a statistics query (or ask for status) as an analyst."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trustspace.errors import ConfigError

OPS = (
    "count", "sum", "mean", "var", "std", "skew", "kurt", "histogram", "quantile", "cov",
    "corr", "describe", "group_by",
)  # fmt: skip


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "query",
        help="run a statistics query as an analyst",
        description="Connect to the aggregator with an analyst certificate and run one query. "
        "Example: trustspace query -a localhost:50050 -c certs/alice mean adult age "
        "--where \"sex = 'Female'\"",
    )
    p.add_argument("-a", "--aggregator", required=True, metavar="HOST:PORT")
    p.add_argument(
        "-c", "--credentials", required=True, metavar="DIR", help="analyst identity directory"
    )
    p.add_argument("--server-name", help="name on the aggregator's certificate (default: host)")
    p.add_argument(
        "op",
        choices=(*OPS, "status", "budget"),
        help="the statistic, 'status', or 'budget' (this analyst's DP budget on DATASET)",
    )
    p.add_argument("dataset", nargs="?", default="default")
    p.add_argument("columns", nargs="*", default=[])
    p.add_argument("-w", "--where", help="filter, e.g. \"age >= 40 and sex = 'Female'\"")
    p.add_argument("-m", "--method", choices=("secagg", "paillier"), default="secagg")
    p.add_argument("--key-bits", type=int, default=None, help="Paillier key size (3072)")
    p.add_argument("--ddof", type=int, default=None)
    p.add_argument("--bins", type=int, default=None, help="histogram bins (default 10)")
    p.add_argument("--range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    p.add_argument("-q", type=float, action="append", help="quantile(s), repeatable")
    p.add_argument("--percentiles", type=float, nargs="+", default=None)
    p.add_argument("--by", help="group_by: the group column")
    p.add_argument(
        "--agg", action="append", default=[], metavar="COL=F1,F2", help="group_by aggregations"
    )
    p.add_argument("--values", nargs="+", default=None, help="group_by: the public group values")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="a differentially private answer at this epsilon (charged to your budget at "
        "every node; see `query budget`)",
    )
    p.add_argument(
        "--delta", type=float, default=None, help="DP delta with --epsilon (default 1e-6)"
    )
    p.add_argument(
        "--purpose",
        default=None,
        help="what the query is for; signed with it and recorded in every node's audit log",
    )


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.ddof is not None:
        params["ddof"] = args.ddof
    if args.op == "histogram":
        params["bins"] = args.bins or 10
        if args.range:
            params["range"] = list(args.range)
    if args.op == "quantile":
        params["q"] = args.q or [0.5]
    if args.op == "describe" and args.percentiles:
        params["percentiles"] = args.percentiles
    if args.op == "group_by":
        if not args.by or not args.agg:
            raise ConfigError("group_by needs --by COLUMN and at least one --agg COL=F1,F2")
        aggs: dict[str, list[str]] = {}
        for spec in args.agg:
            col, sep, fns = spec.partition("=")
            if not sep or not col or not fns:
                raise ConfigError(f"--agg {spec!r}: expected COLUMN=F1,F2 (e.g. age=mean,count)")
            aggs[col] = fns.split(",")
        params.update(by=args.by, agg=aggs)
        if args.values:
            params["values"] = [_literal(v) for v in args.values]
        args.columns = list(aggs)
    return params


def _literal(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def run(args: argparse.Namespace) -> int:
    from trustspace.api import Federation
    from trustspace.stats import Query
    from trustspace.transport import serde

    fed = Federation.connect(
        args.aggregator,
        args.credentials,
        server_name=args.server_name,
        key_bits=args.key_bits,
        purpose=args.purpose,
    )
    with fed:
        if args.op == "status":
            for n in fed.status():
                state = "up" if n.reachable else f"DOWN ({n.detail})"
                sets = ", ".join(d.name for d in n.datasets)
                print(
                    f"{n.name:20} {n.address:22} {state}  datasets: {sets or '-'}  "
                    f"min_group_size: {n.min_group_size or '-'}"
                )
            return 0
        if args.op == "budget":
            table = fed.budget(args.dataset)
            if args.json:
                print(table.reset_index().to_json(orient="records", indent=2))
            else:
                print(table.to_string())
            return 0
        params = _params(args)
        try:
            query = Query(args.op, args.dataset, tuple(args.columns), args.where, params)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        result = fed.run(query, args.method, epsilon=args.epsilon, delta=args.delta)
    if args.json:
        out = serde.result_to_dict(result)
        out.update(fed.last_info)
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(result.value)
        if result.dp is not None:
            ci = result.dp["ci95"]
            print(
                f"(differentially private: epsilon {result.dp['epsilon']:g}, delta "
                f"{result.dp['delta']:g}, noise of a count {result.dp['noise_std']:.3g} records; "
                f"95% interval +/-: {ci if isinstance(ci, float) else chr(10) + str(ci)})",
                file=sys.stderr,
            )
        if result.any_suppressed:
            print("(NaN: suppressed, fewer records than min_group_size)", file=sys.stderr)
    return 0
