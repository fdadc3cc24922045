"""``trustspace query``: run a statistics query, a federated anonymization, or ask for status.

``trustspace query ... anonymize DATASET --qi COL=HIERARCHY ...`` takes the options of the
local ``trustspace anonymize`` that apply to the federated search (``--k``, ``--suppression``,
``--sensitive``/``--l``/``--c``/``--t``/``--diversity``, ``--metric``, ``--keep-suppressed``);
a builder hierarchy (``interval:``, ``mask``, ``dates``) is built over the domain the nodes
declare for the column (``datasets.NAME.domains``), since the analyst sees no values. With
``-o OUT.csv`` the released rows are asked for (a node whose policy keeps them refuses) and
written there; without it they stay at the nodes (the report says where).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trustspace.errors import ConfigError

OPS = (
    "count", "sum", "mean", "var", "std", "skew", "kurt", "histogram", "quantile", "cov",
    "corr", "describe", "group_by", "crosstab", "ttest", "glm", "ols", "woe_iv", "marginals",
)  # fmt: skip
#: Vertical partitions: a private set intersection (then statistics with --view).
VERTICAL = ("intersect",)
#: Hypothesis tests on released figures: ``fed.chi2_test`` (over a crosstab) and ``fed.ttest``.
TESTS = ("chi2", "ttest")


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
        choices=(*dict.fromkeys((*OPS, *TESTS)), *VERTICAL, "anonymize", "status", "budget"),
        help="the statistic, 'intersect' (a private set intersection of --nodes on --on), "
        "'anonymize' (federated k-anonymization), 'status', or "
        "'budget' (this analyst's DP budget on DATASET)",
    )
    p.add_argument("dataset", nargs="?", default="default")
    p.add_argument("columns", nargs="*", default=[])
    p.add_argument("-w", "--where", help="filter, e.g. \"age >= 40 and sex = 'Female'\"")
    p.add_argument("-m", "--method", choices=("secagg", "paillier"), default="secagg")
    p.add_argument("--key-bits", type=int, default=None, help="Paillier key size (3072)")
    p.add_argument("--ddof", type=int, default=None)
    p.add_argument("--bins", type=int, default=None, help="histogram bins (default 10)")
    p.add_argument(
        "--range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="histogram: the public range of --bins equal-width bins",
    )
    p.add_argument(
        "--edges",
        type=float,
        nargs="+",
        default=None,
        metavar="E",
        help="histogram: the bin edges, instead of --bins and --range",
    )
    p.add_argument("-q", type=float, action="append", help="quantile(s), repeatable")
    p.add_argument("--percentiles", type=float, nargs="+", default=None)
    p.add_argument("--by", help="group_by: the group column")
    p.add_argument(
        "--agg", action="append", default=[], metavar="COL=F1,F2", help="group_by aggregations"
    )
    p.add_argument(
        "--values", nargs="+", default=None, help="group_by, ttest: the public group values"
    )
    t = p.add_argument_group("crosstab ROWS COLS, chi2 ROWS COLS, ttest COLUMN --by GROUP")
    t.add_argument("--margins", action="store_true", help="crosstab: add the 'All' margins")
    t.add_argument(
        "--levels",
        action="append",
        default=[],
        metavar="COL=V1,V2",
        help="crosstab/chi2: the public levels of a column (default: its declared domain)",
    )
    t.add_argument(
        "--no-correction", action="store_true", help="chi2: without Yates' continuity correction"
    )
    t.add_argument(
        "--equal-var", action="store_true", help="ttest: Student's pooled test (default Welch's)"
    )
    p.add_argument("--formula", help='glm/ols: the model, e.g. "high ~ age + C(sex)"')
    p.add_argument(
        "--family", choices=("gaussian", "binomial", "poisson"), default="gaussian", help="glm"
    )
    p.add_argument("--weights", help="glm/ols: a column of prior weights")
    p.add_argument("--offset", help="glm: a column added to the linear predictor")
    p.add_argument("--max-iter", type=int, default=100, help="glm: IRLS iterations (100)")
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
    v = p.add_argument_group(
        "vertical partitions: intersect --on ID --nodes A,B [--save-view FILE]; then any "
        "statistic with --view FILE over columns named node.column"
    )
    v.add_argument("--on", help="intersect: the identifier column (each node's id_column)")
    v.add_argument("--nodes", help="intersect: the nodes, comma-separated (default: all)")
    v.add_argument(
        "--mode", choices=("align", "cardinality"), default="align", help="intersect mode"
    )
    v.add_argument(
        "--save-view", metavar="FILE", help="intersect: write the view (its id and schemas) here"
    )
    v.add_argument(
        "--view", metavar="FILE", help="run the statistic over the view saved by intersect"
    )
    v.add_argument("--label", help="woe_iv: the binary label column (node.column)")
    m = p.add_argument_group(
        "marginals: --marginal sex,age --marginal race [--cuts age=17,30,45,60,91] [--levels ...]"
    )
    m.add_argument(
        "--marginal",
        action="append",
        default=[],
        metavar="COL[,COL[,COL]]",
        help="marginals: one table of 1 to 3 columns (repeat; all in one round)",
    )
    m.add_argument(
        "--cuts",
        action="append",
        default=[],
        metavar="COL=E1,E2,...",
        help="marginals: the public bin edges of a numeric column (repeat)",
    )
    _add_anonymize_options(p.add_argument_group("anonymize (federated k-anonymization)"))


def _add_anonymize_options(g: Any) -> None:
    from trustspace.cli.anonymize import add_release_options

    g.add_argument(
        "--qi",
        action="append",
        default=[],
        metavar="COLUMN=HIERARCHY",
        help="a quasi-identifier and its hierarchy: an ARX hierarchy CSV, or a builder "
        "('interval:5,10,20', 'mask', 'dates') over the column's declared domain (repeat)",
    )
    add_release_options(g)
    g.add_argument("-o", "--output", help="ask for the released rows and write them here (CSV)")
    g.add_argument(
        "--disclosure",
        choices=("visited", "base"),
        default="visited",
        help="what the aggregator may learn: the visited lattice nodes' histograms (default) "
        "or the base histogram once (faster; every node must allow it)",
    )


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.ddof is not None:
        params["ddof"] = args.ddof
    if args.op == "histogram":
        if args.edges:
            if args.bins or args.range:
                raise ConfigError("histogram: give --edges, or --bins with --range, not both")
            params["bins"] = list(args.edges)
        elif not args.range:
            raise ConfigError(
                "histogram needs --range LO HI (a public range: the exact minimum and maximum "
                "of the data are never released) with --bins N, or the bin edges (--edges)"
            )
        else:
            params["bins"] = args.bins or 10
            params["range"] = list(args.range)
    if args.op == "quantile":
        params["q"] = args.q or [0.5]
    if args.op == "describe" and args.percentiles:
        params["percentiles"] = args.percentiles
    if args.op == "crosstab":
        params["margins"] = bool(args.margins)
        if args.levels:
            params["values"] = _levels(args.levels)
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


def _levels(specs: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for spec in specs:
        col, sep, vals = spec.partition("=")
        if not sep or not col or not vals:
            raise ConfigError(f"--levels {spec!r}: expected COLUMN=V1,V2 (e.g. sex=Female,Male)")
        out[col] = [_literal(v) for v in vals.split(",")]
    return out


def _two(args: argparse.Namespace, what: str) -> tuple[str, str]:
    if len(args.columns) != 2:
        raise ConfigError(f"{what} needs two columns: {what} DATASET ROWS COLS")
    return args.columns[0], args.columns[1]


def _hypothesis_test(fed: Any, args: argparse.Namespace) -> int:
    """``chi2`` and ``ttest``: the statistic, p-value, degrees of freedom and the figures."""
    from trustspace.cli._format import format_result, number

    if args.op == "chi2":
        rows, cols = _two(args, "chi2")
        values = _levels(args.levels) if args.levels else None
        chi = fed.chi2_test(
            args.dataset,
            rows,
            cols,
            args.where,
            correction=not args.no_correction,
            values=values,
            method=args.method,
        )
        out: dict[str, Any] = {"statistic": chi.statistic, "pvalue": chi.pvalue, "dof": chi.dof}
        table = chi.expected_freq
    else:
        if len(args.columns) != 1 or not args.by:
            raise ConfigError("ttest needs one column and its groups: ttest DATASET COLUMN --by G")
        tt = fed.ttest(
            args.dataset,
            args.columns[0],
            args.by,
            [_literal(v) for v in args.values] if args.values else None,
            equal_var=args.equal_var,
            where=args.where,
            method=args.method,
        )
        out = {"statistic": tt.statistic, "pvalue": tt.pvalue, "df": tt.df}
        import pandas as pd

        table = pd.DataFrame({"count": tt.count, "mean": tt.mean, "var": tt.var})
    if args.json:
        out["table"] = json.loads(table.to_json(orient="split"))
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    for key, value in out.items():
        print(f"{key:10} {number(value)}")
    print(format_result(table))
    return 0


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
        if args.op == "intersect":
            return _intersect(fed, args)
        if args.view is not None:
            return _over_view(fed, args)
        if args.op == "woe_iv":
            if not args.label or not args.columns:
                raise ConfigError("woe_iv: give --label COLUMN and the feature columns")
            table = fed.woe_iv(
                args.dataset, args.label, args.columns, bins=args.bins or 10, where=args.where
            )
            print(table.to_json(orient="table") if args.json else table.to_string())
            return 0
        if args.op == "anonymize":
            return _anonymize(fed, args)
        if args.op == "marginals":
            return _marginals(fed, args)
        if args.op in TESTS:
            return _hypothesis_test(fed, args)
        if args.op in ("glm", "ols"):
            return _model(fed, args)
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
        from trustspace.cli._format import format_result

        print(format_result(result.value))
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


def _marginals(fed: Any, args: argparse.Namespace) -> int:
    if not args.marginal:
        raise ConfigError("marginals: give at least one --marginal COL[,COL[,COL]]")
    tables = [[c for c in spec.split(",") if c] for spec in args.marginal]
    cuts: dict[str, list[float]] = {}
    for spec in args.cuts:
        col, sep, edges = spec.partition("=")
        try:
            cuts[col] = [float(e) for e in edges.split(",")]
        except ValueError:
            raise ConfigError(f"--cuts {spec!r}: expected COLUMN=E1,E2,... (numbers)") from None
        if not sep or not col:
            raise ConfigError(f"--cuts {spec!r}: expected COLUMN=E1,E2,...")
    values = _levels(args.levels) if args.levels else None
    out = fed.marginals(
        args.dataset,
        tables,
        args.where,
        cuts=cuts or None,
        values=values,
        method=args.method,
        epsilon=args.epsilon,
        delta=args.delta,
    )
    if args.json:
        doc = [
            {
                "columns": list(cols),
                "cells": [[str(k) for k in (i if isinstance(i, tuple) else (i,))] for i in t.index],
                "counts": [None if v != v else float(v) for v in t.tolist()],
                **({"std": t.attrs["std"]} if "std" in t.attrs else {}),
            }
            for cols, t in out.items()
        ]
        print(json.dumps(doc, indent=2))
        return 0
    for cols, t in out.items():
        print(f"== {' x '.join(cols)}")
        print(t.to_string())
        if "std" in t.attrs:
            print(f"(noise std of each cell: {t.attrs['std']:.3g} records)")
    return 0


def _intersect(fed: Any, args: argparse.Namespace) -> int:
    if not args.on:
        raise ConfigError("intersect: give --on, the identifier column")
    nodes = [n for n in args.nodes.split(",") if n] if args.nodes else None
    out = fed.intersect(args.dataset, on=args.on, nodes=nodes, mode=args.mode)
    if args.mode == "cardinality":
        print(json.dumps({"size": out}) if args.json else out)
        return 0
    if args.save_view:
        from trustspace._files import write_atomic

        text = json.dumps(out.ref.to_dict(), indent=2) + "\n"
        write_atomic(args.save_view, text.encode(), mode=0o600)
    if args.json:
        print(json.dumps({"size": out.size, "view": out.id, "nodes": list(out.nodes)}))
    else:
        print(f"{out.size} people in the intersection of {', '.join(out.nodes)} (view {out.id})")
        if args.save_view:
            print(f"view saved to {args.save_view}; use --view {args.save_view}", file=sys.stderr)
    return 0


def _load_view(fed: Any, path: str) -> Any:
    from trustspace.errors import TrustspaceError
    from trustspace.vertical.view import ViewRef
    from trustspace.view import VerticalView

    try:
        data = json.loads(Path(path).read_text())
        ref = ViewRef.from_dict(data)
    except OSError as exc:
        raise ConfigError(f"--view {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, TrustspaceError) as exc:
        raise ConfigError(
            f"--view {path}: not a view saved by `query intersect --save-view` ({exc})"
        ) from None
    return VerticalView(fed, ref)


def _over_view(fed: Any, args: argparse.Namespace) -> int:
    from trustspace.cli._format import format_result
    from trustspace.stats import Query

    view = _load_view(fed, args.view)
    if args.op == "woe_iv":
        if not args.label or not args.columns:
            raise ConfigError("woe_iv: give --label node.column and the feature columns")
        table = view.woe_iv(args.label, args.columns, bins=args.bins or 10, where=args.where)
        print(table.to_json(orient="table") if args.json else table.to_string())
        return 0
    if args.op == "ols":
        if len(args.columns) < 2:
            raise ConfigError("ols over a view: give the response then the regressors")
        fit = view.ols(args.columns[0], args.columns[1:], where=args.where)
        print(fit.table.to_json(orient="table") if args.json else fit.table.to_string())
        if not args.json:
            print(f"n = {fit.n}, R^2 = {fit.r_squared:.6g}, adjusted R^2 = {fit.adj_r_squared:.6g}")
        return 0
    if args.op in TESTS or args.op in ("glm", "anonymize", "status", "budget"):
        raise ConfigError(f"{args.op} does not run over a vertical view")
    try:
        query = Query(args.op, view.dataset, tuple(args.columns), args.where, _params(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    result = view.run(query, epsilon=args.epsilon, delta=args.delta)
    print(format_result(result.value))
    if result.any_suppressed:
        print("(NaN: suppressed, fewer records than min_group_size)", file=sys.stderr)
    return 0


def _model(fed: Any, args: argparse.Namespace) -> int:
    """``glm`` / ``ols``: the fitted model's summary (or, with --json, its figures)."""
    if not args.formula:
        raise ConfigError(f'{args.op} needs --formula, e.g. --formula "high ~ age + C(sex)"')
    if args.op == "glm":
        res = fed.glm(
            args.dataset, args.formula, args.family, args.where, args.weights, args.offset,
            method=args.method, max_iter=args.max_iter, epsilon=args.epsilon,
        )  # fmt: skip
    else:
        res = fed.ols(
            args.dataset, args.formula, args.where, args.weights, method=args.method,
            epsilon=args.epsilon, delta=args.delta,
        )  # fmt: skip
    if args.json:
        ci = res.conf_int()
        out = {
            "params": res.params.to_dict(),
            "bse": res.bse.to_dict(),
            "pvalues": res.pvalues.to_dict(),
            "conf_int": {k: [ci.loc[k, 0], ci.loc[k, 1]] for k in ci.index},
            "nobs": res.nobs,
            "llf": res.llf,
            "aic": res.aic,
        }
        if res.dp is not None:  # DP OLS: the privacy and each coefficient's noise std
            out["dp"] = {k: res.dp[k] for k in ("epsilon", "delta", "nodes")}
            out["dp"]["std"] = res.dp["std"].to_dict()
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(res.summary())
        if res.dp is not None:
            print(
                f"(differentially private: epsilon {res.dp['epsilon']:g}, delta "
                f"{res.dp['delta']:g}; std err includes the noise)",
                file=sys.stderr,
            )
    return 0


def _federated_hierarchy(spec: str, domain: list[Any] | None, sep: str, dataset: str) -> Any:
    """A ``--qi`` hierarchy: a file as it is, a builder over the nodes' declared domain."""
    from trustspace.anon.hierarchy import Hierarchy
    from trustspace.cli.anonymize import build_hierarchy, is_builder

    name, eq, what = spec.partition("=")
    if not eq or not name or not what:
        raise ConfigError(f"--qi {spec!r}: expected COLUMN=HIERARCHY (a file or a builder)")
    if is_builder(what):
        if not domain:
            raise ConfigError(
                f"--qi {spec!r}: the nodes declare no domain for column {name!r} of dataset "
                f"{dataset!r}, and the analyst sees no values: give an ARX hierarchy CSV "
                f"(--qi {name}=FILE), or have every node declare datasets.{dataset}.domains."
                f"{name}"
            )
        return build_hierarchy(spec, [str(v) for v in domain])
    return Hierarchy.from_csv(Path(what), name, sep=sep)


def _anonymize(fed: Any, args: argparse.Namespace) -> int:
    """``query anonymize``: the federated search; rows to ``-o`` when asked for."""
    from trustspace._files import write_atomic
    from trustspace.cli.anonymize import is_builder

    if not args.qi:
        raise ConfigError("anonymize needs at least one --qi COLUMN=HIERARCHY")
    for target, what in ((args.output, "-o"), (args.report, "--report")):
        if target and not Path(target).absolute().parent.is_dir():
            raise ConfigError(
                f"{what} {target!r}: directory {str(Path(target).parent)!r} does not exist"
            )
    domains: dict[str, list[Any]] = {}
    if any(is_builder(q.partition("=")[2]) for q in args.qi):
        for n in fed.status():
            for d in n.datasets:
                if d.name == args.dataset:
                    for col, vals in dict(d.schema.get("domains", {})).items():
                        domains.setdefault(col, list(vals))
    hs: dict[str, Any] = {}
    for qi in args.qi:
        name = qi.partition("=")[0]
        if name in hs:
            raise ConfigError(f"--qi {name!r} is given twice")
        hs[name] = _federated_hierarchy(qi, domains.get(name), args.hierarchy_sep, args.dataset)
    options = {
        n: getattr(args, n) for n in ("k", "l", "t", "sensitive", "diversity", "c", "metric")
    }
    release = fed.anonymize(
        args.dataset,
        hs,
        suppression_limit=args.suppression,
        suppressed="mask" if args.keep_suppressed else "drop",
        disclosure=args.disclosure,
        release=bool(args.output),
        **options,
    )
    report = release.report()
    report.update(dataset=args.dataset, output=args.output)
    if args.output:
        data = release.data
        assert data is not None  # release=True: every node sent its rows, or it raised
        write_atomic(args.output, lambda fh: data.to_csv(fh, index=False), text=True)
    if args.report:
        write_atomic(args.report, (json.dumps(report, indent=2, default=str) + "\n").encode())
    where = args.output or "kept at the nodes: " + ", ".join(
        f"{o.node} {o.path}" for o in release.outputs
    )
    lv = " ".join(f"{q}={v}" for q, v in release.levels.items())
    print(
        f"federated k-anonymization of {args.dataset!r} over {len(release.outputs)} node(s): "
        f"levels {lv}; {release.suppressed} record(s) suppressed; {release.classes} classes; "
        f"loss {release.metrics['loss']:.4f}; {release.rounds} rounds -> {where}",
        file=sys.stderr,
    )
    return 0
