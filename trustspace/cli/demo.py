"""``trustspace demo``: a whole data space on this machine, as separate processes, in one command.

It creates a throw-away CA, splits the Adult data set into one partition per organisation,
starts one ``trustspace node`` process per organisation and one ``trustspace aggregator``
process (real mutual TLS on 127.0.0.1), then, as the analyst ``alice``:

1. ``describe`` of age by secure aggregation and by Paillier, beside plaintext pandas on the union;
2. a histogram and a group-by mean;
3. the differencing attack: two allowed exact sums give one person's age; with ``epsilon=`` the
   nodes add noise inside secure aggregation and charge each analyst's budget;
4. a query by ``bob`` that a node's policy refuses, and the audit line it left;
5. the aggregator's own certificate asking a node for a round nobody signed (one age group's
   sum of ages under alice's genuine signed count): the node refuses it;
6. a federated 5-anonymization with its metrics;
7. vertical partitions: two organisations holding different columns of the same customers
   intersect their customer ids (ECDH PSI) and compute a crosstab and WOE/IV across them.

Everything runs through the same code as production (``trustspace node``, ``aggregator``,
``Federation.connect``). Processes are stopped on exit and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from trustspace import _adult
from trustspace.testing import LocalSpace, NodeSpec

ADULT = _adult.DIR
ADULT_COLUMNS = _adult.COLUMNS
QUASI_IDENTIFIERS = _adult.QUASI_IDENTIFIERS
MIN_GROUP_SIZE = 10
DP_BUDGET = 3.0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the multi-node demo on the Adult data set",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--nodes", type=int, default=3, help="number of organisations (>= 3)")
    p.add_argument(
        "--key-bits",
        type=int,
        default=3072,
        choices=(2048, 3072, 4096),
        help="Paillier key size of the analyst (default 3072, 128-bit security)",
    )
    p.add_argument("--workdir", help="keep everything here instead of a temporary folder")
    p.add_argument("--data", default=str(ADULT / "adult.csv"), help="the Adult CSV (';')")


def _say(msg: str, out: TextIO = sys.stdout) -> None:
    print(msg, file=out, flush=True)


def _step(n: int, title: str) -> None:
    _say(f"\n[{n}] {title}")


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="trustspace-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(data: Path, out: Path, names: list[str]) -> list[Path]:
    """Deal the rows into partitions of unequal size (the organisations differ)."""
    lines = data.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    weights = [i + 2 for i in range(len(names))]  # 2 : 3 : 4 : ...
    cycle = [i for i, w in enumerate(weights) for _ in range(w)]
    parts: list[list[str]] = [[] for _ in names]
    for j, row in enumerate(rows):
        parts[cycle[j % len(cycle)]].append(row)
    paths = []
    for name, part in zip(names, parts, strict=True):
        path = out / f"{name}.csv"
        path.write_text("\n".join([header, *part]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _side_by_side(frames: dict[str, Any]) -> str:
    import pandas as pd

    table = pd.concat(frames, axis=1)
    with pd.option_context("display.float_format", "{:,.4f}".format, "display.width", 120):
        return str(table)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def run(args: argparse.Namespace) -> int:
    if args.nodes < 3:
        _say(
            "trustspace demo: --nodes must be at least 3 (with two, each party would learn the "
            "other's figures from the totals)",
            sys.stderr,
        )
        return 2
    data = Path(args.data)
    if not data.is_file():
        _say(f"trustspace demo: data file {data} not found (--data)", sys.stderr)
        return 2
    started = time.perf_counter()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _workdir(args.workdir) as root, LocalSpace(root) as space:
            return _run(args, data, space, started)
    except KeyboardInterrupt:
        _say("\ninterrupted: stopped the nodes and the aggregator", sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _crafted_round(space: LocalSpace, node: str, alice: Any) -> str:
    """What a malicious aggregator gets for a round nobody asked for: the node's refusal."""
    import os

    from trustspace.errors import TrustspaceError
    from trustspace.secagg import Stage
    from trustspace.stats import Round, Term
    from trustspace.transport import types
    from trustspace.transport.ca import Credentials
    from trustspace.transport.clients import NodeClient
    from trustspace.transport.signing import new_query

    signed = new_query(alice, "count", "adult")  # a genuine query of alice's
    spy = Round("adult", "age = 33", (Term.rows(), Term.moment(["age"], [1], [0.0], 40)))
    client = NodeClient(node, space.addresses[node], Credentials.from_dir(space.ca / "operator"))
    step = types.SecAggStep(
        signed,
        types.SecAggSetup(os.urandom(32), (1, 2, 3), spy.size),
        Stage.ADVERTISE,
        (),
        types.RoundRef(0, MIN_GROUP_SIZE, None, spy),
        1,
    )
    try:
        client.secagg_step(step, 30)
    except TrustspaceError as exc:
        return f"refused: {exc}"
    finally:
        client.close()
    return "NOT REFUSED (this is a bug)"


#: Vertical partitions: the columns the first two organisations hold of their customers.
VERTICAL = {
    "org-a": {"cid": "str", "age": "int", "sex": "str", "salary-class": "str"},
    "org-b": {"cid": "str", "race": "str", "workclass": "str", "education": "str"},
}
VERTICAL_ROWS = 3000


def _vertical_split(data: Path, out: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Customers of two organisations: different columns of overlapping people (a random
    customer id; 2,000 of org-a's and 2,000 of org-b's 3,000 people, so 1,000 in common)."""
    import numpy as np
    import pandas as pd

    people = pd.read_csv(data, sep=";").head(VERTICAL_ROWS)
    rng = np.random.default_rng(2026)  # demo data only
    people["cid"] = [f"C{i:08d}" for i in rng.permutation(10**7)[:VERTICAL_ROWS]]
    order = rng.permutation(VERTICAL_ROWS)
    rows = {"org-a": order[:2000], "org-b": order[1000:]}
    out_paths = {}
    for name, cols in VERTICAL.items():
        part = people.loc[rows[name], list(cols)]
        path = out / f"{name}-customers.csv"
        part.to_csv(path, sep=";", index=False)
        domains = {c: sorted(set(part[c])) for c in cols if cols[c] == "str" and c != "cid"}
        out_paths[name] = (path, domains)
    return out_paths


def _node_spec(name: str, data: Path, customers: tuple[Path, dict[str, Any]] | None) -> NodeSpec:
    datasets: dict[str, Any] = {
        "adult": {
            "path": data,
            "delimiter": ";",
            "columns": ADULT_COLUMNS,
            "domains": {"sex": ["Female", "Male"], "salary-class": ["<=50K", ">50K"]},
            "bounds": {"age": [17, 90]},  # public: differential privacy needs them
        }
    }
    if customers is not None:  # this organisation's own columns of its customers
        path, domains = customers
        datasets["customers"] = {
            "path": path,
            "delimiter": ";",
            "columns": VERTICAL[name],
            "domains": domains,
            "id_column": "cid",
        }
    return NodeSpec(
        name=name,
        datasets=datasets,
        # min_nodes = 3 is a real node's default; written out so the config shows it
        policy={
            "min_group_size": MIN_GROUP_SIZE,
            "release_rows": True,
            "min_nodes": 3,
            "dp": {"epsilon": DP_BUDGET, "delta": 1e-5},  # each analyst's budget per dataset
        },
        rules=[
            {"analysts": ["alice"], "operations": ["*"]},
            {"analysts": ["bob"], "operations": ["count"], "columns": ["sex", "age"]},
        ],
    )


def _run(args: argparse.Namespace, data: Path, space: LocalSpace, started: float) -> int:
    import numpy as np
    import pandas as pd

    from trustspace.api import Credentials, Federation
    from trustspace.errors import TrustspaceError

    root = space.root
    names = [f"org-{chr(ord('a') + i)}" for i in range(args.nodes)]
    _say(f"trustspace demo: {args.nodes} organisations, Adult data, working in {root}")

    _step(1, "a throw-away certificate authority and one identity per party")
    space.init_ca(names, analysts=["alice", "bob"], data_space="trustspace-demo")
    ca = space.ca
    _say(
        f"    CA of data space 'trustspace-demo' {ca}/ca.pem; nodes {', '.join(names)}; "
        "aggregator operator; analysts alice, bob"
    )

    _step(2, "each organisation gets its own partition of Adult")
    (root / "data").mkdir(exist_ok=True)
    (root / "audit").mkdir(exist_ok=True)
    paths = _split(data, root / "data", names)
    for name, path in zip(names, paths, strict=True):
        rows = sum(1 for _ in path.open()) - 1
        _say(f"    {name}: {path.relative_to(root)} ({rows:,} rows)")
    union = pd.concat([pd.read_csv(p, sep=";") for p in paths], ignore_index=True)
    customers = _vertical_split(data, root / "data")

    _step(3, "starting the nodes and the aggregator (separate processes, mutual TLS)")
    for name, path in zip(names, paths, strict=True):
        spec = _node_spec(name, path, customers.get(name))
        space.start(name, "node", space.write_node_config(spec))
        _say(f"    node {name} serving on {space.addresses[name]}")
    target = space.start("aggregator", "aggregator", space.write_aggregator_config())
    _say(f"    aggregator serving on {target}")

    alice = Credentials.from_dir(ca / "alice")
    with (
        warnings.catch_warnings(),
        Federation.connect(target, credentials=alice, key_bits=args.key_bits) as fed,
    ):
        warnings.simplefilter("ignore")
        reachable = [s.name for s in fed.status() if s.reachable]
        _say(f"    the aggregator reaches {len(reachable)} of {len(names)} nodes")

        _step(4, "describe(age): secure aggregation and Paillier beside pandas on the union")
        t0 = time.perf_counter()
        by_secagg = fed.describe("adult", ["age"])
        t1 = time.perf_counter()
        _say(f"    secure aggregation: {t1 - t0:.2f} s; Paillier ({args.key_bits}-bit key) ...")
        by_paillier = fed.describe("adult", ["age"], method="paillier")
        t2 = time.perf_counter()
        _say(f"    Paillier: {t2 - t1:.2f} s (includes making the analyst's key pair)")
        by_pandas = union[["age"]].describe()
        _say(
            _side_by_side(
                {
                    "secagg": by_secagg["age"],
                    "paillier": by_paillier["age"],
                    "pandas (plaintext union)": by_pandas["age"],
                }
            )
        )
        exact = ["count", "mean", "std"]
        want = by_pandas.loc[exact, "age"].to_numpy(dtype=float)
        agree = all(
            bool(np.allclose(got.loc[exact, "age"].to_numpy(dtype=float), want, rtol=0, atol=1e-6))
            for got in (by_secagg, by_paillier)
        )
        _say(
            f"    count, mean and std agree with pandas to 1e-6: {'yes' if agree else 'NO'}; "
            "min/max/quantiles are released at the precision stated in docs/security.md"
        )

        _step(5, "a histogram of age and the mean age by sex")
        hist = fed.histogram("adult", "age", bins=[17, 25, 35, 45, 55, 65, 91])
        _say(_indent(str(hist)))
        by_sex = fed.group_by("adult", "sex", {"age": "mean"})
        truth = union.groupby("sex")["age"].mean()
        _say(_indent(str(by_sex)))
        _say(_indent("pandas: " + ", ".join(f"{k} {v:.4f}" for k, v in truth.items())))

        _step(6, "differencing: two allowed exact sums give one person's age; under DP they do not")
        _say(_differencing(fed, union))

    _step(7, "bob asks for the mean age, which no node's policy allows him")
    bob = Credentials.from_dir(ca / "bob")
    with Federation.connect(target, credentials=bob) as fed_bob:
        try:
            fed_bob.mean("adult", "age")
            _say("    NOT REFUSED (this is a bug)")
            return 1
        except TrustspaceError as exc:
            _say(f"    refused: {exc}")
    line = _last_deny(root / "audit" / f"{names[0]}.jsonl")
    _say(f"    {names[0]}'s audit log: {line}")

    _step(8, "the aggregator asks a node for a round nobody signed (it holds alice's count)")
    _say("    " + _crafted_round(space, names[0], alice))

    _step(9, "a federated 5-anonymization (5% suppression) over all organisations")
    with Federation.connect(target, credentials=alice, key_bits=args.key_bits) as fed:
        try:
            t0 = time.perf_counter()
            res = fed.anonymize(
                "adult",
                quasi_identifiers={
                    q: str(ADULT / f"adult_hierarchy_{q}.csv") for q in QUASI_IDENTIFIERS
                },
                k=5,
                suppression_limit=0.05,
            )
            _say(f"    done in {time.perf_counter() - t0:.2f} s")
            _say(_indent(_anon_summary(res)))
        except TrustspaceError as exc:
            _say(f"    not available: {exc}")

    _step(10, "vertical partitions: org-a and org-b hold different columns of their customers")
    with Federation.connect(target, credentials=alice) as fed:
        _say(_vertical(fed, customers))

    _say(f"\ndemo finished in {time.perf_counter() - started:.1f} s; stopping the processes")
    if not args.workdir:
        _say(f"(the working folder {root} is removed now; --workdir DIR keeps it)")
    return 0


def _vertical(fed: Any, customers: dict[str, tuple[Path, dict[str, Any]]]) -> str:
    """Intersect the two organisations' customer ids, then a crosstab and WOE/IV across them,
    beside pandas on the join (which no party could compute)."""
    import pandas as pd

    a, b = (pd.read_csv(customers[n][0], sep=";") for n in ("org-a", "org-b"))
    joined = a.merge(b, on="cid")
    t0 = time.perf_counter()
    view = fed.intersect("customers", on="cid", nodes=["org-a", "org-b"])
    lines = [
        f"    ECDH PSI over X25519: {view.size} customers in common (pandas merge: "
        f"{len(joined)}) in {time.perf_counter() - t0:.2f} s; the aggregator relayed sealed "
        "messages and learned only their sizes"
    ]
    t0 = time.perf_counter()
    table = view.crosstab(
        "org-a.salary-class", "org-b.race", values={"org-b.race": ["Black", "White"]}
    )
    lines.append(
        f"    crosstab of org-a's salary class by org-b's race ({time.perf_counter() - t0:.2f} s, "
        "each cell a secure product):"
    )
    lines.append(_indent(str(table)))
    truth = pd.crosstab(joined["salary-class"], joined["race"])[["Black", "White"]]
    same = bool((table.to_numpy() == truth.to_numpy()).all())
    lines.append(f"    equal to pandas on the join: {'yes' if same else 'NO'}")
    t0 = time.perf_counter()
    woe = view.woe_iv("org-a.salary-class", ["org-b.workclass", "org-b.education"])
    iv = ", ".join(f"{f} {v:.3f}" for f, v in woe.attrs["iv"].items())
    took = time.perf_counter() - t0
    lines.append(
        f"    information value of org-b's features for org-a's label ({took:.2f} s, FATE's "
        f"hetero binning): {iv}"
    )
    return "\n".join(lines)


def _differencing(fed: Any, union: Any) -> str:
    """The attack of issue 14 on the demo's data, exact and then with epsilon = 0.5."""
    cells = union.groupby(["age", "sex", "race"]).size()
    age, sex, race = cells[cells == 1].index[-1]  # someone alone in their cell
    other = f"not (age = {age} and sex = '{sex}' and race = '{race}')"
    lines = [
        f"    the only {race} {sex.lower()} of {age} in the union; everybody else: where {other}"
    ]
    exact = fed.sum("adult", "age") - fed.sum("adult", "age", where=other)
    lines.append(f"    exact:  sum(age) - sum(age where ...) = {exact:.2f} (the person's age)")
    noisy = [fed.sum("adult", "age", epsilon=0.5) for _ in range(2)]
    noisy.append(fed.sum("adult", "age", where=other, epsilon=0.5))
    ci = fed.last_result.dp["ci95"] if fed.last_result and fed.last_result.dp else float("nan")
    lines.append(
        f"    DP (epsilon 0.5 each): {noisy[0] - noisy[2]:.2f}, again {noisy[1] - noisy[2]:.2f} "
        f"(each sum +/- {ci:.0f} at 95%); the nodes added the noise inside secure aggregation"
    )
    budget = fed.budget("adult")
    lines.append(
        "    budget left (epsilon at delta 1e-5, of "
        f"{DP_BUDGET:g}): "
        + ", ".join(f"{n} {r:.2f}" for n, r in budget["epsilon_remaining"].items())
    )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _last_deny(path: Path) -> str:
    deny = [ln for ln in path.read_text().splitlines() if '"deny"' in ln]
    if not deny:
        return "(no refusal recorded: this is a bug)"
    entry = json.loads(deny[-1])
    keep = ("time", "requester", "operation", "dataset", "columns", "decision", "reason", "hash")
    return json.dumps({k: entry[k] for k in keep if k in entry})


def _anon_summary(res: Any) -> str:
    if isinstance(res, dict):
        return json.dumps(res, indent=2, default=str)
    return str(res)
