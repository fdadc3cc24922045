"""The analyst's API: ``Federation`` (connect to a data space, or run one locally) and queries.

Example::

    from trustspace.api import Credentials, Federation
    with Federation.local({"org_a": "a.csv", "org_b": "b.csv", "org_c": "c.csv"}) as fed:
        fed.mean("default", "age", where="sex = 'Female'")
    fed = Federation.connect("agg.example.org:50050",
                             credentials=Credentials.from_dir("certs/alice"))

Every statistics method is a thin builder of a ``trustspace.stats.Query`` run by ``run``:

- ``method="secagg"`` (default): the aggregator runs the whole query by secure aggregation and
  returns only the final, policy-checked result.
- ``method="paillier"``: this process generates a Paillier key pair once per Federation (the
  private key never leaves it), runs the stats state machine, and has the aggregator add the
  nodes' encrypted local sums round by round; it decrypts only totals. Record counts come as
  totals the aggregator sums by secure aggregation anyway (to enforce ``min_group_size``).

``Federation.local`` starts one node per partition and an aggregator in this process, on
127.0.0.1 ephemeral ports, with a throw-away CA and mutual TLS: the same servers, TLS and code
path as ``trustspace node`` / ``trustspace aggregator``, not a shortcut.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from trustspace.errors import ConfigError, DataError, TrustspaceError
from trustspace.stats import (
    ColumnType,
    DPComputation,
    DPSpec,
    GLMResults,
    Query,
    Result,
    Round,
    TableSchema,
    paillier_noise_plan,
    paillier_round_total,
    parse_design,
    share_variance,
    start,
)
from trustspace.transport import serde, types
from trustspace.transport.ca import Credentials, init_ca, issue
from trustspace.transport.clients import AggregatorClient
from trustspace.transport.signing import SignedQuery, new_query
from trustspace.vertical.view import ViewRef

__all__ = ["Credentials", "Federation", "GroupBy"]

if TYPE_CHECKING:
    import pandas as pd

    from trustspace.anon.federated import FederatedRelease
    from trustspace.anon.spec import AnonSpec
    from trustspace.paillier import PrivateKey
    from trustspace.stats import Chi2Result, TTestResult

log = logging.getLogger("trustspace.api")
DEFAULT_DATASET = "default"
LOCAL_ANALYST = "analyst"
LOCAL_AGGREGATOR = "aggregator"
DEFAULT_LOCAL_POLICY: dict[str, Any] = {
    "min_group_size": 10,
    "rules": [{"analysts": ["*"], "operations": ["*"], "datasets": ["*"], "columns": ["*"]}],
    "dp": {"epsilon": 10.0, "delta": 1e-5},
}
#: delta of a differentially private query when only epsilon is given
DEFAULT_DELTA = 1e-6
_DUCKDB_TYPES = {
    "BIGINT": "int",
    "INTEGER": "int",
    "SMALLINT": "int",
    "TINYINT": "int",
    "HUGEINT": "int",
    "UBIGINT": "int",
    "UINTEGER": "int",
    "USMALLINT": "int",
    "UTINYINT": "int",
    "DOUBLE": "float",
    "FLOAT": "float",
    "REAL": "float",
    "BOOLEAN": "bool",
    "DATE": "date",
}


def infer_columns(path: str | os.PathLike[str], delimiter: str = ",") -> dict[str, str]:
    """Column name -> trustspace type of a CSV or Parquet file, as DuckDB's sniffer sees it.

    Raises:
        DataError: the file is missing or unreadable.
    """
    import duckdb

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found")
    con = duckdb.connect()
    try:
        if p.suffix.lower() == ".parquet":
            rel = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(p)])
        else:
            rel = con.execute(
                "DESCRIBE SELECT * FROM read_csv(?, header = true, delim = ?)", [str(p), delimiter]
            )
        rows = rel.fetchall()
    except duckdb.Error as exc:
        raise DataError(f"{p}: cannot infer column types: {exc}") from None
    finally:
        con.close()
    out = {}
    for name, typ, *_ in rows:
        base = str(typ).split("(")[0]
        out[str(name)] = "float" if base == "DECIMAL" else _DUCKDB_TYPES.get(base, "str")
    return out


def _local_ids(
    per_cols: Mapping[str, Mapping[str, str]], id_column: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    """Each local partition's identifier column (``IdSpec``), see ``Federation.local``."""
    if id_column is None:
        sets = [set(c) for c in per_cols.values()]
        if all(s == sets[0] for s in sets):
            return {}  # horizontal: the same columns everywhere
        common = set.intersection(*sets)
        if len(common) != 1:
            return {}  # ambiguous: the analyst names it (id_column=)
        id_column = common.pop()
    from trustspace.vertical.ids import IdSpec

    per_node = (
        isinstance(id_column, Mapping)
        and bool(id_column)
        and all(k in per_cols and isinstance(v, str | Mapping) for k, v in id_column.items())
    )
    out = {}
    for name, cols in per_cols.items():
        raw = id_column.get(name) if per_node and isinstance(id_column, Mapping) else id_column
        if raw is None:
            continue
        table = {"column": raw} if isinstance(raw, str) else dict(raw)
        col = table.get("column")
        if not isinstance(col, str) or col not in cols:
            raise ConfigError(
                f"Federation.local: partition {name!r} has no id column {col!r} (its columns: "
                f"{', '.join(cols)})"
            )
        t = dict(table)
        t.setdefault("type", cols[col] if cols[col] in ("int", "str") else "str")
        out[name] = IdSpec.from_table(t, f"Federation.local id_column of {name!r}")
    return out


def histogram_params(
    bins: int | Sequence[float], range: tuple[float, float] | None
) -> dict[str, Any]:
    """``params`` of a histogram query: a number of bins over a public range, or edges."""
    params: dict[str, Any] = {"bins": bins if isinstance(bins, int) else list(bins)}
    if range is not None:
        params["range"] = list(range)
    return params


def _bounds(bounds: Mapping[str, tuple[float, float]] | None) -> dict[str, Any]:
    """``params.bounds`` of a DP query: public ``(low, high)`` per column, which the nodes clamp
    the values to (instead of the dataset's declared bounds)."""
    if bounds is None:
        return {}
    return {"bounds": {c: list(pair) for c, pair in bounds.items()}}


def marginal_tables(
    result: Result, query: Query, schema: TableSchema
) -> dict[tuple[str, ...], pd.Series]:
    """A ``marginals`` Result as {columns: Series indexed by the cells' labels} (``attrs``:
    ``std`` of each cell's noise under DP, ``suppressed`` cells exactly)."""
    import pandas as pd

    from trustspace.stats import marginal_terms

    out: dict[tuple[str, ...], pd.Series] = {}
    value, suppressed = result.value, result.suppressed
    std = (result.dp or {}).get("std")
    for t in marginal_terms(query, schema):
        key = "|".join(t.columns)
        axes: list[list[Any]] = []
        for lv, cu in zip(t.levels, t.cuts, strict=True):
            if lv:
                axes.append(list(lv))
            else:
                axes.append(
                    [
                        pd.Interval(a, b, closed="both" if i == len(cu) - 2 else "left")
                        for i, (a, b) in enumerate(itertools.pairwise(cu))
                    ]
                )
        index: pd.Index[Any] = pd.MultiIndex.from_product(axes, names=list(t.columns))
        if len(t.columns) == 1:
            index = pd.Index(axes[0], name=t.columns[0])
        series = pd.Series(value.loc[key].to_numpy(dtype=float), index=index, name="count")
        series.attrs["suppressed"] = suppressed.loc[key].to_numpy(dtype=bool)
        if std is not None:
            series.attrs["std"] = float(np.max(std.loc[key].to_numpy(dtype=float)))
        out[tuple(t.columns)] = series
    return out


def _crosstab_params(margins: bool, values: Mapping[str, Sequence[Any]] | None) -> dict[str, Any]:
    """``params`` of a ``crosstab`` query: ``margins`` and the public levels given per column."""
    params: dict[str, Any] = {"margins": bool(margins)}
    if values is not None:
        params["values"] = {c: list(v) for c, v in values.items()}
    return params


def _dp_spec(epsilon: float | None, delta: float | None) -> dict[str, float] | None:
    """The signed ``dp`` of a query (None: exact), checked here before anything is sent."""
    if epsilon is None:
        if delta is not None:
            raise ConfigError("delta= without epsilon=: give epsilon for a DP answer")
        return None
    return DPSpec(epsilon, DEFAULT_DELTA if delta is None else delta).to_dict()


class Federation:
    """An analyst's session with a data space (see the module docstring).

    Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        client: AggregatorClient,
        *,
        key_bits: int | None = None,
        purpose: str | None = None,
        _owned: Sequence[Any] = (),
        _tmpdir: str | None = None,
    ) -> None:
        self._client = client
        #: the declared purpose, signed with every query and recorded in every node's audit log
        self.purpose = purpose
        self._owned = list(_owned)
        self._tmpdir = _tmpdir
        self._key_bits = key_bits
        self._keypair: tuple[Any, Any] | None = None
        self.last_result: Result | None = None
        self.last_info: dict[str, Any] = {}
        self.nodes: dict[str, Any] = {}
        self.aggregator: Any = None
        self.workdir: Path | None = None
        #: every node the aggregator listed when this session last planned a query
        self._space_nodes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def connect(
        cls,
        target: str,
        credentials: Credentials | str | os.PathLike[str],
        *,
        server_name: str | None = None,
        key_bits: int | None = None,
        purpose: str | None = None,
    ) -> Federation:
        """Connect to the aggregator at ``target`` (``host:port``) with an analyst identity.

        Args:
            target: the aggregator's address.
            credentials: ``Credentials`` or an identity directory (``trustspace ca issue``).
            server_name: the name the aggregator's certificate must carry (default: the host).
            key_bits: Paillier key size for ``method="paillier"`` (default 3072).
            purpose: what the queries are for (e.g. ``"fraud-study-2026"``): signed with every
                query, recorded in every node's audit log, and checked against the purposes a
                node's policy rules allow (``trustspace usage --by purpose`` meters it).

        Raises:
            AuthenticationError: a certificate was refused (says which and why).
            NodeError: nothing answers at ``target``.
        """
        creds = (
            credentials
            if isinstance(credentials, Credentials)
            else Credentials.from_dir(credentials, expected_role="analyst")
        )
        if creds.role != "analyst":
            raise ConfigError(
                f"credentials of {creds.name!r} have role {creds.role!r}; an analyst certificate "
                "is needed (`trustspace ca issue DIR NAME --role analyst`)"
            )
        client = AggregatorClient(target, creds, server_name=server_name)
        return cls(client, key_bits=key_bits, purpose=purpose)

    @classmethod
    def local(
        cls,
        partitions: Mapping[str, Any],
        policy: Mapping[str, Any] | None = None,
        *,
        dataset: str = DEFAULT_DATASET,
        columns: Mapping[str, str] | None = None,
        domains: Mapping[str, Sequence[Any]] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        delimiter: str = ",",
        key_bits: int | None = None,
        threshold: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        analyst: str = LOCAL_ANALYST,
        purpose: str | None = None,
        id_column: str | Mapping[str, Any] | None = None,
    ) -> Federation:
        """Start an aggregator and one node per partition here, over mutual TLS on 127.0.0.1.

        Args:
            partitions: node name -> CSV/Parquet path (or pandas DataFrame) of its partition,
                or a ``DatasetSpec`` declaring it in full (e.g. a PostgreSQL or Spark
                ``source``; it is served as ``dataset``, its own domains and bounds kept).
            policy: a dict shaped like a node's ``[policy]`` table for every node, or node name
                -> such a dict. Default: every operation allowed, ``min_group_size`` 10.
            dataset: the dataset name the partitions are served as.
            columns: column name -> type; inferred when omitted, from each partition on its
                own (partitions holding different columns make a vertical federation: each
                node serves its own columns, for ``intersect`` and its views).
            domains: column -> its public group values (so ``group_by`` needs no ``values``).
            bounds: numeric column -> public ``(low, high)`` holding every value (checked at
                start-up; saves the range-finding round and its disclosure).
            key_bits: Paillier key size for ``method="paillier"`` (default 3072).
            threshold: secure-aggregation threshold (default: the protocol's choice).
            workdir: where the CA, certificates and audit logs go (default: a temporary
                directory removed on ``close()``); audit logs are ``audit/<node>.jsonl``.
            analyst: the analyst identity (certificate name) this session uses.
            purpose: the declared purpose signed with every query (see ``connect``).
            id_column: the identifier column of every partition, for ``intersect``: a name,
                or a table like a node's ``id_column`` (``{"column": "cid", "case":
                "lower", "trim": True, "hashed": "sha256"}``), or partition name -> either.
                Default: when the partitions' columns differ and exactly one column is
                common to all, that column.

        Raises:
            ConfigError, DataError: a bad partition, policy or data file (names it).
        """
        from trustspace.aggregator.config import AggregatorConfig, NodeAddress
        from trustspace.aggregator.server import Aggregator
        from trustspace.engine import DatasetSpec
        from trustspace.node.config import NodeConfig, TlsConfig, policy_from_dict
        from trustspace.node.server import Node

        if not partitions:
            raise ConfigError("Federation.local: give at least one partition")
        tmp = None
        if workdir is None:
            tmp = tempfile.mkdtemp(prefix="trustspace-local-")
            root = Path(tmp)
        else:
            root = Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
        started: list[Any] = []
        try:
            ca_dir = root / "ca"
            init_ca(ca_dir, name="trustspace-local-ca")
            paths: dict[str, Path] = {}
            given: dict[str, DatasetSpec] = {}  # partitions declared in full (any source)
            for name, part in partitions.items():
                if isinstance(part, DatasetSpec):
                    given[name] = part
                elif hasattr(part, "to_csv"):
                    p = root / "data" / f"{name}.csv"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    part.to_csv(p, index=False)
                    paths[name] = p
                else:
                    paths[name] = Path(part)
            per_cols = {
                n: dict(columns) if columns else infer_columns(p, delimiter)
                for n, p in paths.items()
            }
            for n, spec in given.items():
                per_cols[n] = {c: ColumnType(t).value for c, t in spec.columns.items()}
            ids = _local_ids(per_cols, id_column)
            per_node = (
                policy is not None
                and bool(policy)
                and all(k in partitions and isinstance(v, Mapping) for k, v in policy.items())
            )
            nodes: list[Node] = []
            for name in partitions:
                cols = per_cols[name]
                ident = issue(ca_dir, name, "node")
                pol_raw = (
                    policy.get(name) if per_node and policy else policy
                ) or DEFAULT_LOCAL_POLICY
                # every node runs here, over this analyst's own partitions: two may be summed
                # together (a real node's default min_nodes is 3)
                pol_dict = {"min_nodes": 2, **dict(pol_raw)}
                pol = policy_from_dict(pol_dict, f"Federation.local policy for {name}")
                cfg = NodeConfig(
                    name=name,
                    listen="127.0.0.1:0",
                    tls=TlsConfig(ident / "ca.pem", ident / "cert.pem", ident / "key.pem"),
                    datasets=(
                        dataclasses.replace(given[name], name=dataset)
                        if name in given
                        else DatasetSpec(
                            dataset,
                            paths[name],
                            "parquet" if paths[name].suffix.lower() == ".parquet" else "csv",
                            cols,
                            delimiter,
                            domains={c: tuple(v) for c, v in (domains or {}).items() if c in cols},
                            bounds={
                                c: (float(lo), float(hi))
                                for c, (lo, hi) in (bounds or {}).items()
                                if c in cols
                            },
                            id=ids.get(name),
                        ),
                    ),
                    policy=pol,
                    audit_path=root / "audit" / f"{name}.jsonl",
                    output_dir=root / "output" / name,
                    source=Path(f"<Federation.local node {name}>"),
                    drain_grace_s=5.0,
                )
                node = Node(cfg).start()
                started.append(node)
                nodes.append(node)
            agg_ident = issue(ca_dir, LOCAL_AGGREGATOR, "aggregator")
            agg_cfg = AggregatorConfig(
                name=LOCAL_AGGREGATOR,
                listen="127.0.0.1:0",
                tls=TlsConfig(agg_ident / "ca.pem", agg_ident / "cert.pem", agg_ident / "key.pem"),
                nodes=tuple(NodeAddress(n.config.name, n.address) for n in nodes),
                threshold=threshold,
                source=Path("<Federation.local aggregator>"),
                drain_grace_s=5.0,
                witness_log=root / f"{LOCAL_AGGREGATOR}-witness.jsonl",
            )
            agg = Aggregator(agg_cfg).start()
            started.append(agg)
            analyst_dir = issue(ca_dir, analyst, "analyst")
            client = AggregatorClient(
                agg.address, Credentials.from_dir(analyst_dir), server_name=LOCAL_AGGREGATOR
            )
        except BaseException:
            for s in reversed(started):
                s.stop(0)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        fed = cls(client, key_bits=key_bits, purpose=purpose, _owned=started, _tmpdir=tmp)
        fed.nodes = {n.config.name: n for n in nodes}
        fed.aggregator = agg
        fed.workdir = root
        return fed

    def close(self) -> None:
        """Disconnect; for ``local()``, stop the servers (draining) and remove the temp dir."""
        self._client.close()
        for s in reversed(self._owned):
            s.stop()
        self._owned.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ status
    def status(self) -> list[types.NodeStatus]:
        """Every node the aggregator knows: reachable or not (with why), datasets, settings
        (the datasets this analyst may use: the request is a signed ``status`` query)."""
        return self._client.status(self._sign("status"))[1]

    def _sign(self, operation: str, *args: Any, **kwargs: Any) -> SignedQuery:
        """Sign what this analyst asks: ``transport.signing.new_query`` with this session's
        credentials (every node verifies the signature; docs/security.md)."""
        kwargs.setdefault("purpose", self.purpose)
        return new_query(self._client.credentials, operation, *args, **kwargs)

    def _sign_query(
        self,
        query: Query,
        method: str,
        paillier_key: str | None = None,
        *,
        dp: Mapping[str, float] | None = None,
        view: Mapping[str, Any] | None = None,
    ) -> SignedQuery:
        return self._sign(
            query.op,
            query.dataset,
            query.columns,
            query.where,
            query.params,
            method=method,
            paillier_key=paillier_key,
            dp=dp,
            view=view,
        )

    def budget(self, dataset: str = DEFAULT_DATASET) -> pd.DataFrame:
        """This analyst's differential-privacy budget on ``dataset`` at every reachable node.

        One row per node: ``epsilon`` and ``delta`` (the limit), ``epsilon_spent``,
        ``epsilon_remaining`` (what one more query may still have, at that delta),
        ``rho_spent``, ``rho_remaining`` (zCDP, which adds up exactly) and ``required`` (the node
        answers only DP queries). A node without ``[policy.dp]`` has NaN figures.
        """
        import pandas as pd

        rows: dict[str, dict[str, Any]] = {}
        for n in self.status():
            for d in n.datasets:
                if d.name == dataset:
                    b = d.dp_budget or {}
                    rows[n.name] = {k: b.get(k, float("nan")) for k in types.DP_BUDGET_FIELDS}
                    rows[n.name]["required"] = bool(b.get("required", False))
        if not rows:
            raise ConfigError(f"no reachable node serves dataset {dataset!r} to this analyst")
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "node"
        return frame

    def _schema(self, dataset: str) -> tuple[TableSchema, int]:
        nodes = self.status()
        self._space_nodes = tuple(n.name for n in nodes)
        up = [n for n in nodes if n.reachable]
        if not up:
            detail = "; ".join(f"{n.name}: {n.detail}" for n in nodes)
            raise TrustspaceError(f"no node is reachable: {detail}")
        for n in up:
            for d in n.datasets:
                if d.name == dataset:
                    return TableSchema.from_dict(d.schema), max(m.min_group_size for m in up)
        raise ConfigError(f"no node serves dataset {dataset!r}")

    # ------------------------------------------------------------------ the generic driver
    def run(
        self,
        query: Query,
        method: str = "secagg",
        *,
        epsilon: float | None = None,
        delta: float | None = None,
        view: ViewRef | None = None,
    ) -> Result:
        """Run any ``stats.Query``; returns the full ``Result`` (value, suppressed, ...).

        With ``epsilon`` (and optionally ``delta``, default ``DEFAULT_DELTA``), the answer is
        differentially private: every node adds its share of the noise inside secure
        aggregation and charges the query to this analyst's budget (``budget()``);
        ``Result.dp`` reports the privacy, the noise and each figure's 95% interval.
        """
        dp = _dp_spec(epsilon, delta)
        if view is not None and method != "secagg":
            raise ConfigError(
                f"method {method!r}: statistics over a vertical view run by secure aggregation "
                "(their cross-node products use the nodes' own Paillier keys); leave method out"
            )
        if method == "secagg":
            signed = self._sign_query(
                query, "secagg", dp=dp, view=None if view is None else view.to_dict()
            )
            data = self._client.run_query(signed)
            result: Result = serde.result_from_dict(data)
            self.last_info = {k: data.get(k) for k in ("nodes", "excluded", "min_group_size")}
            self.last_info.update(
                request_id=signed.unverified_body().request_id, rounds=result.rounds
            )
            if self.last_info.get("excluded"):
                warnings.warn(
                    f"node(s) {', '.join(self.last_info['excluded'])} did not answer and are not "
                    "in this result; see fed.status() for why",
                    stacklevel=3,
                )
        elif method == "paillier":
            result = self._run_paillier(query, dp)
        else:
            raise ConfigError(f"method {method!r}: use 'secagg' or 'paillier'")
        self.last_result = result
        if result.any_suppressed:
            warnings.warn(
                f"{query.op}: some figures were suppressed (NaN) because they describe fewer "
                "records than the strictest node's min_group_size; see fed.last_result",
                stacklevel=3,
            )
        return result

    def woe_iv(
        self,
        dataset: str,
        label: str,
        features: Sequence[str],
        bins: int = 10,
        where: str | None = None,
        *,
        edges: Mapping[str, Sequence[float]] | None = None,
        labels: Sequence[Any] | None = None,
        values: Mapping[str, Sequence[Any]] | None = None,
    ) -> pd.DataFrame:
        """Weight of evidence and information value of ``features`` against the binary
        ``label`` over every node's rows (FATE's feature binning; see
        ``VerticalView.woe_iv``, which does the same across nodes holding different columns)."""
        from trustspace.view import woe_iv

        schema, _ = self._schema(dataset)

        def quantile(col: str, qs: list[float], where: str | None) -> Any:
            return self.quantile(dataset, col, qs, where)

        def run(params: dict[str, Any]) -> Result:
            cols = (features,) if isinstance(features, str) else tuple(features)
            return self.run(Query("woe_iv", dataset, cols, where, params))

        return woe_iv(quantile, run, schema, label, features, bins, where, edges, labels, values)

    # ------------------------------------------------------------------ vertical partitions
    def intersect(
        self,
        dataset: str = DEFAULT_DATASET,
        *,
        on: str,
        nodes: Sequence[str] | None = None,
        mode: str = "align",
    ) -> Any:
        """A private set intersection of the nodes' identifier columns (``id_column``).

        ``mode="cardinality"`` returns the size of the intersection (an int) and nothing
        else; ``mode="align"`` (the default) leaves at every node its own rows of the
        intersection, in one order common to all of them, and returns a ``VerticalView`` for
        joint statistics over it (columns named ``node.column``). The analyst and the
        aggregator learn only the size (docs/security.md, "Private set intersection").

        Args:
            dataset: the dataset every named node serves (each with its own columns).
            on: the identifier column's name (each node's ``id_column``).
            nodes: the nodes to intersect, in order (the first leads); default every node.
            mode: ``"align"`` or ``"cardinality"``.

        Raises:
            ConfigError: a node has no id column, names it otherwise, or normalises it
                differently from the others.
            PolicyError: the intersection is smaller than the strictest node's
                ``min_group_size`` (nothing is released, no view is kept), or a node's
                policy does not allow ``intersect``.
        """
        from trustspace.view import VerticalView

        if mode not in ("align", "cardinality"):
            raise ConfigError(f"intersect: mode {mode!r} is not 'align' or 'cardinality'")
        if not isinstance(on, str) or not on:
            raise ConfigError("intersect: on= names the identifier column")
        names = list(nodes) if nodes is not None else [n.name for n in self.status()]
        params = {"on": on, "nodes": names, "mode": mode}
        signed = self._sign("intersect", dataset, (on,), None, params)
        data = self._client.run_query(signed)
        info = data["intersect"]
        self.last_info = {
            "nodes": data.get("nodes"),
            "min_group_size": data.get("min_group_size"),
            "request_id": signed.unverified_body().request_id,
        }
        if mode == "cardinality":
            return int(info["size"])
        return VerticalView(self, ViewRef.from_dict(info["view"]))

    def _keys(self) -> tuple[Any, Any]:
        if self._keypair is None:
            from trustspace.paillier import DEFAULT_KEY_BITS, generate_keypair

            self._keypair = generate_keypair(self._key_bits or DEFAULT_KEY_BITS)
        return self._keypair

    def _run_paillier(self, query: Query, dp: Mapping[str, float] | None = None) -> Result:
        pk, sk = self._keys()
        schema, k = self._schema(query.dataset)
        if dp is not None:
            return self._run_paillier_dp(query, DPSpec(**dp), schema, k, pk, sk)
        comp = start(query, schema, k)
        signed = self._sign_query(query, "paillier", pk.fingerprint)
        nodes = 0
        previous: types.RoundTotal | None = None
        fed_rounds: list[int] = []
        while (rnd := comp.next_round()) is not None:
            fed_rounds.append(rnd.index)
            rr = self._client.run_round(types.RoundRequest(signed, int(pk.n), rnd, k, previous))
            total = round_total(rnd, rr, sk)
            comp.feed(rnd.decode(total), suppressed=rr.suppressed)
            # the nodes replay the state machine with exactly what was fed here
            previous = types.RoundTotal(rnd.index, tuple(int(x) for x in total), rr.suppressed)
            nodes = rr.nodes
        self.last_info = {
            "nodes": nodes,
            "min_group_size": k,
            "request_id": signed.unverified_body().request_id,
            "rounds": len(fed_rounds),
        }
        self._warn_if_partial(nodes)
        return comp.result()

    def _warn_if_partial(self, answered: int) -> None:
        """The Paillier path learns how many nodes are in a result, not which: warn (and set
        ``last_info["excluded_count"]``) when fewer than the data space's nodes are."""
        known = self._space_nodes
        if known and answered < len(known):
            self.last_info["excluded_count"] = len(known) - answered
            warnings.warn(
                f"only {answered} of the {len(known)} nodes ({', '.join(known)}) are in this "
                "result; the others did not answer (see fed.status() for why)",
                stacklevel=5,
            )

    def _run_paillier_dp(
        self, query: Query, dp: DPSpec, schema: TableSchema, k: int, pk: Any, sk: Any
    ) -> Result:
        """A DP query on the Paillier path: one round; every node adds the whole noise
        (``stats.paillier_noise_plan``) to what it sends, whoever sums it."""
        comp = DPComputation(query, schema, dp)
        rnd = comp.round
        signed = self._sign_query(query, "paillier", pk.fingerprint, dp=dp.to_dict())
        rr = self._client.run_round(types.RoundRequest(signed, int(pk.n), rnd, k, None))
        total = round_total(rnd, rr, sk)
        share = paillier_noise_plan(rnd, comp.schema, dp).node_sigma2
        comp.feed(
            rnd.decode(total), noise_variance=rr.nodes * share_variance(share), nodes=rr.nodes
        )
        self.last_info = {
            "nodes": rr.nodes,
            "min_group_size": k,
            "request_id": signed.unverified_body().request_id,
            "rounds": 1,
        }
        self._warn_if_partial(rr.nodes)
        result: Result = comp.result()
        return result

    def _run_strict(self, query: Query, method: str) -> Result:
        """``run`` without its warnings: for a test, whose caller raises DisclosureError on a
        suppressed figure instead of warning about it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.run(query, method)

    def _value(
        self, query: Query, method: str, epsilon: float | None = None, delta: float | None = None
    ) -> Any:
        return self.run(query, method, epsilon=epsilon, delta=delta).value

    # ------------------------------------------------------------------ statistics
    def count(
        self,
        dataset: str = DEFAULT_DATASET,
        columns: str | Sequence[str] = (),
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> float | pd.Series[float]:
        """Rows passing ``where`` (no columns) or non-null counts of ``columns``."""
        return cast(
            "float | pd.Series[float]",
            self._value(Query("count", dataset, _cols(columns), where), method, epsilon, delta),
        )

    def sum(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(
                Query("sum", dataset, _cols(columns), where, _bounds(bounds)),
                method,
                epsilon,
                delta,
            ),
        )

    def mean(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(
                Query("mean", dataset, _cols(columns), where, _bounds(bounds)),
                method,
                epsilon,
                delta,
            ),
        )

    def var(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        ddof: int = 1,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(
                Query("var", dataset, _cols(columns), where, {"ddof": ddof, **_bounds(bounds)}),
                method,
                epsilon,
                delta,
            ),
        )

    def std(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        ddof: int = 1,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(
                Query("std", dataset, _cols(columns), where, {"ddof": ddof, **_bounds(bounds)}),
                method,
                epsilon,
                delta,
            ),
        )

    def skew(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(Query("skew", dataset, _cols(columns), where), method, epsilon, delta),
        )

    def kurt(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> float | pd.Series[float]:
        return cast(
            "float | pd.Series[float]",
            self._value(Query("kurt", dataset, _cols(columns), where), method, epsilon, delta),
        )

    def histogram(
        self,
        dataset: str,
        column: str,
        bins: int | Sequence[float] = 10,
        range: tuple[float, float] | None = None,
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.Series[float]:
        params = histogram_params(bins, range)
        return cast(
            "pd.Series[float]",
            self._value(Query("histogram", dataset, column, where, params), method, epsilon, delta),
        )

    def quantile(
        self,
        dataset: str,
        column: str,
        q: float | Sequence[float] = 0.5,
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> float | pd.Series[float] | pd.DataFrame:
        qv: Any = q if isinstance(q, int | float) else list(q)
        return cast(
            "float | pd.Series[float] | pd.DataFrame",
            self._value(
                Query("quantile", dataset, column, where, {"q": qv, **_bounds(bounds)}),
                method,
                epsilon,
                delta,
            ),
        )

    def cov(
        self,
        dataset: str,
        columns: Sequence[str],
        where: str | None = None,
        *,
        ddof: int = 1,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        return cast(
            "pd.DataFrame",
            self._value(
                Query("cov", dataset, tuple(columns), where, {"ddof": ddof}), method, epsilon, delta
            ),
        )

    def corr(
        self,
        dataset: str,
        columns: Sequence[str],
        where: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        return cast(
            "pd.DataFrame",
            self._value(Query("corr", dataset, tuple(columns), where), method, epsilon, delta),
        )

    def describe(
        self,
        dataset: str,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        percentiles: Sequence[float] | None = None,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> pd.DataFrame:
        params: dict[str, Any] = _bounds(bounds)
        if percentiles is not None:
            params["percentiles"] = list(percentiles)
        return cast(
            "pd.DataFrame",
            self._value(
                Query("describe", dataset, _cols(columns), where, params), method, epsilon, delta
            ),
        )

    def group_by(
        self,
        dataset: str,
        by: str,
        agg: Mapping[str, str | Sequence[str]] | None = None,
        where: str | None = None,
        *,
        values: Sequence[Any] | None = None,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> pd.DataFrame | GroupBy:
        """Per-group aggregates, like ``df.groupby(by).agg(agg)`` over the union of the data.

        Without ``agg`` returns a builder: ``fed.group_by("adult", "sex").agg({"age": "mean"})``.
        The group values must be public: pass ``values`` or declare a domain for ``by``.
        """
        if agg is None:
            return GroupBy(self, dataset, by, where, values, method, epsilon, delta, bounds)
        aggs = {c: [a] if isinstance(a, str) else list(a) for c, a in agg.items()}
        params: dict[str, Any] = {"by": by, "agg": aggs, **_bounds(bounds)}
        if values is not None:
            params["values"] = list(values)
        return cast(
            "pd.DataFrame",
            self._value(
                Query("group_by", dataset, tuple(aggs), where, params), method, epsilon, delta
            ),
        )

    # ------------------------------------------------------------------ tables and tests
    def crosstab(
        self,
        dataset: str,
        rows: str,
        cols: str,
        where: str | None = None,
        *,
        margins: bool = False,
        values: Mapping[str, Sequence[Any]] | None = None,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        """The two-way table of counts, like ``pd.crosstab(df[rows], df[cols], margins=...)``
        on the union of the data, in one round (operation ``crosstab``).

        The levels must be public: ``values={column: [levels]}`` or the dataset's declared
        domains (a bool column needs neither); rows with another level are not counted, so the
        margins (``"All"``) add up the listed levels. A cell under ``min_group_size`` is NaN
        (``fed.last_result.suppressed``), and so is every margin that adds up a suppressed
        cell (docs/security.md). Integers when exact and nothing is suppressed; with
        ``epsilon=`` noisy cells (floats) and margins summed from them.
        """
        params = _crosstab_params(margins, values)
        table = cast(
            "pd.DataFrame",
            self._value(
                Query("crosstab", dataset, (rows, cols), where, params), method, epsilon, delta
            ),
        )
        if epsilon is None and not table.isna().to_numpy().any():
            table = table.astype("int64")
        return table

    def marginals(
        self,
        dataset: str,
        marginals: Sequence[Sequence[str]],
        where: str | None = None,
        *,
        cuts: Mapping[str, Sequence[float]] | None = None,
        values: Mapping[str, Sequence[Any]] | None = None,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> dict[tuple[str, ...], pd.Series]:
        """Several 1- to 3-way contingency tables of counts in one round (operation
        ``marginals``), the measurements a synthesizer fits a model to: ``{("age", "sex"):
        Series of counts indexed by the columns' labels, ...}``.

        A categorical column is tabled by its public levels (``values=`` or its domain), a
        numeric one by public bin edges ``cuts={column: [edges]}`` (numpy.histogram's bins, the
        last closed; its labels are ``pd.Interval``). A row with a null, an unlisted level or a
        value outside the edges is in no cell. Exact cells under ``min_group_size`` are NaN;
        with ``epsilon=`` every cell is noisy (the m tables of the round are one Gaussian
        measurement of L2 sensitivity sqrt(m); ``series.attrs["std"]`` is each cell's noise
        std), and the query is charged once to each node's budget.
        """
        params: dict[str, Any] = {"marginals": [list(m) for m in marginals]}
        if cuts:
            params["cuts"] = {c: [float(e) for e in edges] for c, edges in cuts.items()}
        if values:
            params["values"] = {c: list(v) for c, v in values.items()}
        columns = tuple(dict.fromkeys(c for m in marginals for c in m))
        query = Query("marginals", dataset, columns, where, params)
        return self._marginals(query, method, epsilon, delta)

    def _marginals(
        self,
        query: Query,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        schema: TableSchema | None = None,
    ) -> dict[tuple[str, ...], pd.Series]:
        """Run a ``marginals`` query; its tables labelled from ``schema`` (fetched when not
        given: a caller measuring several times, as ``synthesize``, passes the one it has)."""
        result = self.run(query, method, epsilon=epsilon, delta=delta)
        if schema is None:
            schema, _ = self._schema(query.dataset)
        return marginal_tables(result, query, schema)

    def synthesize(
        self,
        dataset: str,
        columns: Sequence[str],
        *,
        epsilon: float,
        delta: float = 1e-9,
        rows: int | None = None,
        method: str = "mst",
        bins: int | Mapping[str, int | Sequence[float]] = 8,
        where: str | None = None,
    ) -> pd.DataFrame:
        """A differentially private synthetic table of ``columns`` (federated MST,
        ``trustspace.synth``): ``rows`` rows (default: the noisy record count) with the
        declared columns and types, a numeric column binned on its public bounds (``bins``
        per column, or edges) and drawn uniformly within its bins.

        Every measurement is a ``marginals`` query with noise added by the nodes, charged to
        each node's budget: three steps of a third of ``rho_for(epsilon, delta)`` each
        (``frame.attrs["provenance"]["steps"]``). ``frame.attrs["report"]`` compares the table's
        marginals with the DP estimates (the real ones are never released), with their noise.

        Raises:
            ConfigError: a column without public levels or bounds, a domain whose pair tables
                exceed the node's cell limit (naming the size), ``rows <= 0``, a method other
                than ``"mst"``.
            PolicyError: ``epsilon`` beyond the remaining budget at a node (nothing is spent).
        """
        from trustspace.synth import synthesize

        return synthesize(
            self,
            dataset,
            columns,
            epsilon=epsilon,
            delta=delta,
            rows=rows,
            method=method,
            bins=bins,
            where=where,
        )

    def chi2_test(
        self,
        dataset: str,
        rows: str,
        cols: str,
        where: str | None = None,
        correction: bool = True,
        *,
        values: Mapping[str, Sequence[Any]] | None = None,
        method: str = "secagg",
    ) -> Chi2Result:
        """Pearson's chi-square test of independence of ``rows`` and ``cols``, as
        ``scipy.stats.chi2_contingency(pd.crosstab(...), correction=correction)`` on the union
        (``statistic``, ``pvalue``, ``dof``, ``expected_freq``, ``observed``).

        Raises:
            DisclosureError: a cell is suppressed (under ``min_group_size``): coarsen the
                levels or restrict the rows with ``where=``.
        """
        from trustspace.stats import chi2_from_table

        query = Query("crosstab", dataset, (rows, cols), where, _crosstab_params(False, values))
        result = self._run_strict(query, method)
        return chi2_from_table(result, int(self.last_info.get("min_group_size") or 0), correction)

    def ttest(
        self,
        dataset: str,
        column: str,
        by: str,
        values: Sequence[Any] | None = None,
        *,
        equal_var: bool = False,
        where: str | None = None,
        method: str = "secagg",
    ) -> TTestResult:
        """Two-sample t-test of ``column`` between the groups ``values = (a, b)`` of ``by``
        (default: the two levels of its declared domain, sorted, as ``groupby`` orders them), as
        ``scipy.stats.ttest_ind(a, b, equal_var=equal_var)`` on the union: Welch's test by
        default, Student's pooled test with ``equal_var=True``. Computed from the groups'
        secure counts, sums and centred sums of squares (operation ``ttest``).

        Raises:
            DisclosureError: a group holds fewer than ``min_group_size`` values.
            ConfigError: ``by`` has other than two levels and no ``values`` are given.
        """
        from trustspace.stats import ttest_from_groups

        params: dict[str, Any] = {"by": by}
        if values is not None:
            params["values"] = list(values)
        query = Query("ttest", dataset, column, where, params)
        result = self._run_strict(query, method)
        levels = list(values) if values is not None else list(result.value.index)
        return ttest_from_groups(
            result,
            column,
            levels,
            int(self.last_info.get("min_group_size") or 0),
            equal_var,
        )

    # ------------------------------------------------------------------ regression
    def glm(
        self,
        dataset: str,
        formula: str,
        family: str = "gaussian",
        where: str | None = None,
        weights: str | None = None,
        offset: str | None = None,
        *,
        method: str = "secagg",
        max_iter: int = 100,
        tol: float = 1e-8,
        epsilon: float | None = None,
    ) -> GLMResults:
        """A generalised linear model fitted by IRLS over every node, as statsmodels'
        ``smf.glm(formula, union, family=...).fit()`` gives on the union of the partitions.

        Args:
            formula: R/patsy style, ``"y ~ age + C(sex) + age:C(race)"`` (parsed by formulaic;
                categorical levels from the dataset's declared ``domains``).
            family: ``"gaussian"`` (identity link), ``"binomial"`` (logit; a 0/1 response) or
                ``"poisson"`` (log; counts >= 0).
            where: a filter; rows with a null in any column the model reads are dropped.
            weights: a numeric column of positive prior weights (statsmodels' var_weights).
            offset: a numeric column added to the linear predictor.
            max_iter, tol: statsmodels' IRLS stopping rule (deviance change <= tol).

        Returns:
            GLMResults: ``params``, ``bse``, ``pvalues``, ``conf_int()``, ``summary()``, ...

        Raises:
            ConfigError: a formula that does not parse, an unknown column or a categorical
                column without declared levels; DataError: a level or interaction cell
                with fewer than ``min_group_size`` records, a bad response, a singular
                design, separation, or no convergence (each names the term and what to do).
        """
        if epsilon is not None:
            raise ConfigError(
                "glm: epsilon= is not supported for a GLM: IRLS needs one noisy round per "
                "iteration (each spending budget, its noise steering the next), so it is not "
                "offered; use fed.ols(..., epsilon=) for a DP linear model, or fit the exact "
                "model (the nodes' min_group_size and glm_min_records_per_parameter apply)"
            )
        if family not in ("gaussian", "binomial", "poisson"):
            raise ConfigError(f"glm: family {family!r}; use 'gaussian', 'binomial' or 'poisson'")
        schema, _ = self._schema(dataset)
        design = parse_design(formula, schema, weights or "", offset or "")
        params: dict[str, Any] = {"formula": formula, "family": family, "max_iter": max_iter}
        params["tol"] = tol
        if weights:
            params["weights"] = weights
        if offset:
            params["offset"] = offset
        result = self.run(Query("glm", dataset, design.used, where, params), method)
        return GLMResults(result, design, family)

    def ols(
        self,
        dataset: str,
        formula: str,
        where: str | None = None,
        weights: str | None = None,
        *,
        method: str = "secagg",
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> GLMResults:
        """Least squares (WLS with ``weights``) in one round of X'X, X'y and y'y over every
        node, as statsmodels' ``smf.ols(formula, union).fit()``: with ``rsquared``,
        ``rsquared_adj``, ``fvalue``, ``f_pvalue`` and Student's t (see ``glm``).

        With ``epsilon`` (and ``delta``): differentially private OLS from noisy sufficient
        statistics in one DP round (docs/dp.md): every numeric column of the model clamped to
        its public bounds (the dataset's, or ``bounds``), no weights. ``bse`` then includes
        the noise's contribution; ``result.dp`` holds the noise std of the coefficients
        (``std``) and of each released statistic (``statistics_std``)."""
        dp = _dp_spec(epsilon, delta)
        schema, _ = self._schema(dataset)
        design = parse_design(formula, schema, weights or "")
        params: dict[str, Any] = {"formula": formula}
        if weights:
            params["weights"] = weights
        if bounds is not None:
            if dp is None:
                raise ConfigError("ols: bounds= clamps a DP fit's values; give epsilon= too")
            params.update(_bounds(bounds))
        query = Query("ols", dataset, design.used, where, params)
        result = self.run(query, method, epsilon=epsilon, delta=delta)
        return GLMResults(result, design, "gaussian", ols=True)

    def anonymize(
        self,
        dataset: str,
        quasi_identifiers: AnonSpec | Mapping[str, Any] | None = None,
        *,
        spec: AnonSpec | None = None,
        release: bool | None = None,
        **options: Any,
    ) -> FederatedRelease:
        """Federated k-anonymization (optimal full-domain generalization) over every node.

        The search runs at the aggregator on global histograms of generalized tuples summed
        by secure aggregation; each node applies the chosen levels and suppressed classes to
        its own rows and writes them under its ``output_dir``. The union of the outputs is what
        ``trustspace.anon.anonymize`` gives on the union of the data.

        Args:
            dataset: the dataset every node serves.
            quasi_identifiers: ``{column: hierarchy}``, a ``Hierarchy`` or the path of an ARX
                hierarchy CSV (read here; the hierarchies travel with the request); or a
                whole ``trustspace.anon.AnonSpec`` (then no options).
            spec: the ``AnonSpec`` (instead of ``quasi_identifiers`` and the options); its
                ``dataset`` is set to ``dataset``.
            options: any ``AnonSpec`` field, as ``anon.anonymize`` (same defaults: k=5,
                ``suppression_limit`` 0.05), and:
                ``sensitive_values``: the sensitive attribute's public domain (default: the
                domain declared for the column in the node configs);
                ``disclosure``: ``"visited"`` (default: the aggregator learns only the
                histograms of the lattice nodes the search visits, one round each) or
                ``"base"`` (it learns the global histogram of the original quasi-identifier
                tuples once, two rounds in all, several times faster; every node must set
                ``policy.allow_base_histogram = true``). See docs/security.md.
            release: ask for the rows (``True``: a node whose policy keeps them raises
                ``PolicyError``), never (``False``), or when every node allows it (``None``).

        Returns:
            A ``trustspace.anon.federated.FederatedRelease`` (``str()`` is a short report):
            ``levels``, ``suppressed``, ``classes``, ``metrics``, ``outputs`` (where each node
            wrote its rows) and ``data`` (a DataFrame of the released rows, or ``None``).

        Raises:
            ConfigError: a bad option (named; checked here, before any round).
            PolicyError: a node's policy refused a step (names node and rule), e.g. fewer
                than 3 nodes without ``allow_two_party_anonymization``.
            DataError: a node holds values its hierarchy does not cover (names node, column
                and values), or no transformation satisfies the models.
        """
        import io
        from dataclasses import replace

        import pandas as pd

        from trustspace.anon.federated import FederatedRelease, NodeOutput
        from trustspace.anon.search import Result as AnonResult
        from trustspace.anon.spec import AnonSpec

        spec = AnonSpec.of(quasi_identifiers, spec=spec, **options)
        if spec.dataset != dataset:
            if spec.dataset:
                raise ConfigError(
                    f"the spec names dataset {spec.dataset!r} but the call {dataset!r}"
                )
            spec = replace(spec, dataset=dataset)
        spec.check_federated()
        signed = self._sign(
            "anonymize", dataset, spec.columns, params={"spec": spec.to_dict(), "release": release}
        )
        out = self._client.run_anonymization(signed)
        result = AnonResult.from_json(out["result"])
        data = None
        if out.get("rows") is not None:
            qi = {q: str for q in result.quasi_identifiers}
            frames = [
                pd.read_csv(io.StringIO(text), dtype=qi, keep_default_na=False, na_values=[""])
                for text in out["rows"].values()
            ]
            data = pd.concat(frames, ignore_index=True) if frames else None
        self.last_info = {k_: out.get(k_) for k_ in ("nodes", "excluded", "rounds", "learned")}
        return FederatedRelease(
            result=result,
            outputs=tuple(NodeOutput(**o) for o in out["outputs"]),
            data=data,
            rounds=int(out["rounds"]),
            disclosure=str(out["disclosure"]),
            learned=tuple(tuple(lv) for lv in out["learned"]),
            seconds=float(out["seconds"]),
            extra={k_: out.get(k_) for k_ in ("nodes", "excluded", "vector_entries")},
        )


class GroupBy:
    """``fed.group_by(dataset, by)`` without ``agg``: call ``.agg({column: aggregations})``."""

    def __init__(
        self,
        fed: Federation,
        dataset: str,
        by: str,
        where: str | None,
        values: Sequence[Any] | None,
        method: str,
        epsilon: float | None = None,
        delta: float | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self._fed, self._dataset, self._by = fed, dataset, by
        self._where, self._values, self._method = where, values, method
        self._epsilon, self._delta, self._bounds = epsilon, delta, bounds

    def agg(self, agg: Mapping[str, str | Sequence[str]]) -> pd.DataFrame:
        """Run the aggregations (``size``, ``count``, ``sum``, ``mean``, ``var``, ``std``)."""
        return cast(
            "pd.DataFrame",
            self._fed.group_by(
                self._dataset,
                self._by,
                agg,
                self._where,
                values=self._values,
                method=self._method,
                epsilon=self._epsilon,
                delta=self._delta,
                bounds=self._bounds,
            ),
        )


def round_total(rnd: Round, rr: types.RoundResult, sk: PrivateKey) -> np.ndarray[Any, Any]:
    """The uint64 total of a Paillier round (what ``Round.decode`` takes): its count totals as
    sent, its sums decrypted.

    Raises:
        ProtocolError: the answer does not fit the round's layout.
        InvalidCiphertext: the encrypted vector is not under ``sk``'s key or was tampered with.
    """
    from trustspace.paillier import EncryptedVector

    words = None
    if rr.encrypted_vector:
        ev = EncryptedVector.from_bytes(sk.public_key, rr.encrypted_vector)
        words = np.asarray(sk.decrypt_vector(ev), dtype=np.int64)
    return paillier_round_total(rnd.count_mask, rr.count_totals, words)


def decrypt_round(rnd: Round, rr: types.RoundResult, sk: PrivateKey) -> np.ndarray[Any, Any]:
    """The float64 total of a Paillier round (``round_total`` decoded)."""
    decoded: np.ndarray[Any, Any] = rnd.decode(round_total(rnd, rr, sk))
    return decoded


def _cols(columns: str | Sequence[str]) -> tuple[str, ...]:
    return (columns,) if isinstance(columns, str) else tuple(columns)
