"""``trustspace aggregator CONFIG --check`` and the start-up probe of the configured nodes.

The check connects to every node of the config over mutual TLS (the pre-flight handshake of
``transport.tls``: the node's certificate must be from our CA, carry the configured name and
the role ``node``), asks it for its datasets and schemas (``DescribeDatasets``: unsigned, the
schemas of the datasets a rule for every analyst (``"*"``) covers; signed by an analyst
(``--analyst DIR``), those this analyst may use), and compares each dataset's schema across
the nodes. It creates and modifies no local file (no witness log).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trustspace._files import unwritable_ancestor
from trustspace.aggregator.config import AggregatorConfig, NodeAddress
from trustspace.errors import ConfigError, NodeError, TrustspaceError
from trustspace.transport.ca import Credentials
from trustspace.transport.clients import DESCRIBE_TIMEOUT_S, NodeClient
from trustspace.transport.revocation import Revocations
from trustspace.transport.server import bind_error
from trustspace.transport.signing import SignedQuery, new_query
from trustspace.transport.tls import preflight
from trustspace.transport.types import NodeDescription

__all__ = ["NodeCheck", "check_aggregator", "load_aggregator_credentials", "probe_nodes"]

#: how long the start-up probe waits for each node (in parallel): a handshake takes ms
STARTUP_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class NodeCheck:
    """What the probe found at one configured node: ``problem`` is "" when it is fine."""

    name: str
    address: str
    problem: str = ""
    description: NodeDescription | None = None
    #: nothing answered at the address (``NodeError``), rather than a wrong or refused peer
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return not self.problem


def load_aggregator_credentials(config: AggregatorConfig) -> Credentials:
    """The aggregator's identity (CA, certificate with role aggregator, key), checked."""
    return Credentials.from_files(
        config.tls.ca, config.tls.cert, config.tls.key, expected_role="aggregator"
    )


def _probe(
    node: NodeAddress,
    creds: Credentials,
    timeout: float,
    describe: bool,
    query: SignedQuery | None = None,
) -> NodeCheck:
    try:
        preflight(node.address, creds, expected_role="node", server_name=node.name, timeout=timeout)
    except TrustspaceError as exc:
        return NodeCheck(node.name, node.address, str(exc), unreachable=isinstance(exc, NodeError))
    if not describe:
        return NodeCheck(node.name, node.address)
    client = NodeClient(node.name, node.address, creds)
    try:
        desc = client.describe(query, timeout=max(timeout, DESCRIBE_TIMEOUT_S))
    except TrustspaceError as exc:
        return NodeCheck(node.name, node.address, f"DescribeDatasets failed: {exc}")
    finally:
        client.close()
    if desc.node != node.name:  # the certificate said node.name: a node must not disagree
        return NodeCheck(
            node.name,
            node.address,
            f"the node calls itself {desc.node!r}, not {node.name!r}; its node.name and "
            "certificate disagree",
            desc,
        )
    return NodeCheck(node.name, node.address, "", desc)


def probe_nodes(
    config: AggregatorConfig,
    creds: Credentials,
    *,
    timeout: float = STARTUP_PROBE_TIMEOUT_S,
    describe: bool = False,
    query: SignedQuery | None = None,
) -> list[NodeCheck]:
    """Handshake with every configured node in parallel (and with ``describe``, ask for its
    datasets, with the analyst's signed ``query`` if given); one ``NodeCheck`` per node, in
    config order. Never raises for a bad node."""
    with ThreadPoolExecutor(max_workers=min(16, len(config.nodes)) or 1) as pool:
        return list(pool.map(lambda n: _probe(n, creds, timeout, describe, query), config.nodes))


def _schema_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How schema ``b`` differs from ``a``, in words (column types, domains, bounds)."""
    parts = []
    ca, cb = a.get("columns", {}), b.get("columns", {})
    if set(ca) - set(cb):
        parts.append(f"lacks {', '.join(sorted(set(ca) - set(cb)))}")
    if set(cb) - set(ca):
        parts.append(f"has {', '.join(sorted(set(cb) - set(ca)))} in addition")
    parts += [f"{c} is {cb[c]}, not {ca[c]}" for c in ca if c in cb and ca[c] != cb[c]]
    for key in ("domains", "bounds"):
        da, db = a.get(key, {}), b.get(key, {})
        parts += [
            f"{key} of {c} differ"
            for c in sorted(set(da) | set(db))
            if da.get(c) != db.get(c) and c in ca and c in cb
        ]
    return "; ".join(parts) or "differs"


def _vertical_lines(
    ds: str,
    by_node: dict[str, dict[str, Any]],
    ids: dict[str, Any],
    lines: list[str],
    problems: list[str],
) -> None:
    """A dataset every node declares an id column for: the nodes hold different columns of
    the same people (vertical), so their id columns must agree, not their schemas."""
    from trustspace.vertical.ids import IdSpec

    specs = {n: IdSpec.from_dict(ids[n]) for n in by_node}
    columns = {n: s.column for n, s in specs.items()}
    digests = {n: s.digest for n, s in specs.items()}
    held = "; ".join(f"{n}: {', '.join(by_node[n].get('columns', {}))}" for n in by_node)
    if len(set(columns.values())) > 1 or len(set(digests.values())) > 1:
        described = "; ".join(f"{n}: {ids[n]}" for n in by_node)
        problem = (
            f"dataset {ds!r}: vertical, but the nodes' id columns disagree ({described}); "
            "the same person would not match"
        )
        problems.append(problem + "; declare the same id column name, type and normalisation")
        lines.append(f"FAIL {problem}")
    else:
        col = next(iter(columns.values()))
        lines.append(
            f"dataset {ds!r}: vertical on id column {col!r}, same normalisation at "
            f"{', '.join(by_node)} (columns {held})"
        )


def _schemas(checks: Sequence[NodeCheck]) -> tuple[list[str], list[str]]:
    """Lines about each dataset across nodes, and the problems (disagreeing schemas)."""
    served: dict[str, dict[str, dict[str, Any]]] = {}
    ids: dict[str, dict[str, Any]] = {}
    for c in checks:
        for d in c.description.datasets if c.description else ():
            served.setdefault(d.name, {})[c.name] = dict(d.schema)
            ids.setdefault(d.name, {})[c.name] = d.id
    up = [c.name for c in checks if c.description is not None]
    lines: list[str] = []
    problems: list[str] = []
    for ds, by_node in served.items():
        if all(ids[ds].get(n) is not None for n in by_node):
            _vertical_lines(ds, by_node, ids[ds], lines, problems)
            continue
        first, ref = next(iter(by_node.items()))
        key = json.dumps(ref, sort_keys=True)
        differ = {n: s for n, s in by_node.items() if json.dumps(s, sort_keys=True) != key}
        missing = [n for n in up if n not in by_node]
        where = ", ".join(by_node)
        if differ:
            problem = f"dataset {ds!r}: the schema differs between nodes: " + "; ".join(
                f"at {n} {_schema_diff(ref, s)} (compared with {first})" for n, s in differ.items()
            )
            problems.append(problem + "; declare the same columns and types at every node")
            lines.append(f"FAIL {problem}")
        else:
            cols = ", ".join(f"{k} {v}" for k, v in ref.get("columns", {}).items())
            lines.append(f"dataset {ds!r}: same schema at {where} ({cols})")
        if missing:
            lines.append(
                f"note: dataset {ds!r} is not served (or not visible) at {', '.join(missing)}; "
                "queries on it run without those nodes"
            )
    return lines, problems


def _port_state(listen: str) -> str:
    if int(listen.rpartition(":")[2]) == 0:
        return "an ephemeral port"
    err = bind_error(listen)
    if err is None:
        return "free"
    if err.errno == errno.EADDRINUSE:
        return "in use now (fine if this aggregator is running; a second start fails)"
    return f"cannot be bound: {err.strerror}"


def check_aggregator(
    config: AggregatorConfig,
    *,
    timeout: float = DESCRIBE_TIMEOUT_S,
    analyst: Credentials | None = None,
) -> tuple[list[str], bool]:
    """Check the config, our credentials and every node; (report lines, all OK).

    ``analyst``: sign the nodes' ``DescribeDatasets`` as this analyst (a ``status`` query), so
    the datasets only named analysts may use are compared too.

    Raises:
        ConfigError, AuthenticationError: our own config or credentials are unusable.
    """
    creds = load_aggregator_credentials(config)
    lines = [
        f"certificate {config.tls.cert}: {creds.name!r} (role {creds.role}), valid until "
        f"{creds.identity.not_after:%Y-%m-%d}",
    ]
    crl = Revocations.load(config.tls, creds.ca_pem).check_line()  # a start refuses it too
    if crl:
        lines.append(crl)
    lines.append(f"listen {config.listen}: {_port_state(config.listen)}")
    if config.witness_log is not None:
        w = config.witness_log
        here = unwritable_ancestor(w.parent)
        if here is not None:
            raise ConfigError(
                f"{config.source}: the witness log {w} cannot be written: {here} is not "
                "writable by this user"
            )
        lines.append(f"witness log {w}: {'present' if w.exists() else 'absent (created at start)'}")
    query = new_query(analyst, "status") if analyst is not None else None
    checks = probe_nodes(config, creds, timeout=timeout, describe=True, query=query)
    width = max(len(c.name) for c in checks)
    for c in checks:
        if c.ok and c.description is not None:
            d = c.description
            sets = ", ".join(x.name for x in d.datasets) or (
                "none visible (the node shows a schema only to analysts its rules name; give "
                "--analyst DIR to check as one)"
                if analyst is None
                else f"none visible to {analyst.name}"
            )
            lines.append(
                f"OK   node {c.name:{width}} {c.address}: datasets {sets}; min_group_size "
                f"{d.min_group_size}, min_nodes {d.min_nodes}"
            )
            if d.min_nodes > len(config.nodes):
                lines.append(
                    f"FAIL node {c.name}: its policy.min_nodes = {d.min_nodes} is more than the "
                    f"{len(config.nodes)} node(s) of this config: it refuses every secure sum"
                )
                bad_min = NodeCheck(c.name, c.address, "min_nodes", d)
                checks = [bad_min if x.name == c.name else x for x in checks]
        else:
            kind = "UNREACHABLE" if c.unreachable else "FAIL"
            lines.append(f"{kind} node {c.name:{width}} {c.address}: {c.problem}")
    schema_lines, schema_problems = _schemas(checks)
    lines += schema_lines
    bad = [c for c in checks if not c.ok]
    n_ok = len(checks) - len(bad)
    problems = len(bad) + len(schema_problems)
    seen = any(c.ok and c.description is not None and c.description.datasets for c in checks)
    agree = (
        "every schema agrees"
        if seen
        else "no schema compared (no node showed a dataset; give --analyst DIR to compare them)"
        if analyst is None
        else f"no schema compared (no node showed {analyst.name} a dataset)"
    )
    lines.append(
        f"summary: {n_ok} of {len(checks)} node(s) OK"
        + (f"; {problems} problem(s)" if problems else f"; {agree}")
    )
    return lines, problems == 0
