"""A whole data space on this machine, for tests, benchmarks and the demo: CA, nodes, aggregator.

``LocalSpace`` writes real TOML configs (the same files an operator writes; see
``docs/operations.md``), issues identities from a throw-away CA, and starts each node and the
aggregator as a real ``trustspace node`` / ``trustspace aggregator`` process with mutual TLS on
127.0.0.1. Nothing here is a shortcut around the production code path: it only writes files
and starts and stops processes, so what runs is exactly what an operator runs. (For servers
inside the current process instead, use ``trustspace.Federation.local``.)

Users: ``trustspace demo``, the fault tests (``tests/test_faults.py``) and the benchmarks that
need separate processes (``benchmarks/stats.py``, ``anon.py``, ``load.py``).

Example (starts four processes; every one is stopped when the ``with`` block ends)::

    from trustspace import Federation
    from trustspace.testing import LocalSpace, NodeSpec
    from trustspace.transport.ca import Credentials

    with LocalSpace(root) as space:
        space.init_ca(["org-a", "org-b", "org-c"], analysts=["alice"])
        specs = [
            NodeSpec(name, {"default": {"path": csv, "columns": {"age": "int"}}},
                     rules=[{"analysts": ["alice"], "operations": ["*"]}])
            for name, csv in partitions.items()
        ]
        target = space.start_all(specs)
        alice = Credentials.from_dir(space.identity("alice"))
        with Federation.connect(target, credentials=alice) as fed:
            fed.count("default")
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w

__all__ = ["READY", "START_TIMEOUT_S", "STOP_TIMEOUT_S", "LocalSpace", "NodeSpec"]

START_TIMEOUT_S = 60.0  # a node checks its whole data file before it reports ready
STOP_TIMEOUT_S = 15.0  # above the configs' drain_grace_s (5 s), so a drain can finish
#: the ready line a server prints on stdout once it listens ("... on HOST:PORT ...")
READY = re.compile(r" on (\S+:\d+)")
_HEADER = "# written by trustspace.testing; see docs/operations.md for every key\n"


def _toml_ready(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, the types ``tomli_w`` writes."""
    if isinstance(value, Mapping):
        return {str(k): _toml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_toml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(_HEADER + tomli_w.dumps(_toml_ready(doc)), encoding="utf-8")
    return path


@dataclass
class NodeSpec:
    """One organisation's node: its datasets and policy, as in its TOML config.

    Args:
        name: the node's name (its certificate name; ``LocalSpace.init_ca`` issues it).
        datasets: dataset name -> its ``[datasets.NAME]`` table: ``path`` and ``columns``,
            optionally ``format``, ``delimiter``, ``header``, ``null_values``, ``domains``,
            ``bounds`` (see ``docs/operations.md``).
        policy: the ``[policy]`` keys (``min_group_size``, ``release_rows``, ``rate_limit``,
            ...) other than the rules.
        rules: the ``[[policy.rules]]`` tables (``analysts``, ``operations``, ``datasets``,
            ``columns``).
    """

    name: str
    datasets: Mapping[str, Mapping[str, Any]]
    policy: Mapping[str, Any] = field(default_factory=dict)
    rules: Sequence[Mapping[str, Any]] = ()
    #: the ``[admin]`` table (``listen``, ``tls``, ...); None: no admin port
    admin: Mapping[str, Any] | None = None
    #: the ``[engine]`` table (``memory_limit``, ``threads``, ``temp_directory``, ``database``:
    #: the embedded DuckDB's limits); None: DuckDB's defaults
    engine: Mapping[str, Any] | None = None


class LocalSpace:
    """CA, identities, configs and processes of a data space under ``root``.

    Configs are ``root/NAME.toml`` and ``root/aggregator.toml``, audit logs
    ``root/audit/NAME.jsonl``, each process's stderr ``root/NAME.log``. Use as a context
    manager; every process is stopped (SIGTERM, then SIGKILL) on exit.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "ca"
        self.procs: dict[str, subprocess.Popen[str]] = {}
        #: node name -> the address it listens on, filled in as each node starts
        self.addresses: dict[str, str] = {}
        #: process name -> its ready line (e.g. a node's "...; admin console URL")
        self.ready: dict[str, str] = {}
        self._logs: list[IO[str]] = []

    def __enter__(self) -> LocalSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- identities
    def init_ca(
        self, nodes: Sequence[str], analysts: Sequence[str], *, data_space: str = "local-space"
    ) -> None:
        """Create the CA of data space ``data_space`` under ``root/ca`` and issue the nodes,
        ``operator`` and the analysts."""
        from trustspace.transport.ca import init_ca, issue

        init_ca(self.ca, name=data_space)
        for name in nodes:
            issue(self.ca, name, "node")
        issue(self.ca, "operator", "aggregator")
        for name in analysts:
            issue(self.ca, name, "analyst")

    def identity(self, name: str) -> Path:
        """The identity directory (``ca.pem``, ``cert.pem``, ``key.pem``) issued to ``name``."""
        return self.ca / name

    # -------------------------------------------------------------- configs
    def write_node_config(self, spec: NodeSpec) -> Path:
        """Write ``root/NAME.toml`` for ``spec`` (listening on a free port); returns its path."""
        policy: dict[str, Any] = dict(spec.policy)
        # a test space has few nodes and stops some on purpose; a real node's default is 3
        policy.setdefault("min_nodes", 2)
        if spec.rules:
            policy["rules"] = list(spec.rules)
        doc = {
            "node": {"name": spec.name, "listen": "127.0.0.1:0", "drain_grace_s": 5},
            "tls": {"dir": self.identity(spec.name)},
            "audit": {"path": self.root / "audit" / f"{spec.name}.jsonl"},
            "datasets": spec.datasets,
            "policy": policy,
        }
        if spec.admin is not None:
            doc["admin"] = spec.admin
        if spec.engine is not None:
            doc["engine"] = spec.engine
        (self.root / "audit").mkdir(parents=True, exist_ok=True)
        return _write_toml(self.root / f"{spec.name}.toml", doc)

    def write_aggregator_config(self, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``root/aggregator.toml`` over the nodes started so far; returns its path.

        Args:
            extra: more ``[aggregator]`` keys (``threshold``, ``call_timeout_s``, ...).
        """
        doc: dict[str, Any] = {
            "aggregator": {
                "name": "operator",
                "listen": "127.0.0.1:0",
                "drain_grace_s": 5,
                **(extra or {}),
            },
            "tls": {"dir": self.identity("operator")},
        }
        if self.addresses:
            doc["nodes"] = [{"name": n, "address": a} for n, a in self.addresses.items()]
        return _write_toml(self.root / "aggregator.toml", doc)

    # -------------------------------------------------------------- processes
    def start(self, name: str, command: str, config: Path) -> str:
        """Start ``trustspace COMMAND CONFIG`` and wait for its ready line; returns its address.

        Raises:
            RuntimeError: the process exited or printed no ready line within
                ``START_TIMEOUT_S`` (the message quotes the end of its log).
        """
        log = (self.root / f"{name}.log").open("w")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustspace.cli.main", command, str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # a Ctrl-C reaches only the parent, which stops them
        )
        self.procs[name] = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line or proc.poll() is not None:
                break
        m = READY.search(line)
        if m is None:
            proc.kill()
            proc.wait()
            log.flush()
            raise RuntimeError(
                f"{name} did not start (exit {proc.returncode}); its log "
                f"{self.root / (name + '.log')} says:\n"
                + (self.root / f"{name}.log").read_text()[-2000:]
            )
        self.ready[name] = line.strip()
        if command == "node":
            self.addresses[name] = m.group(1)
        return m.group(1)

    def start_all(
        self, specs: Sequence[NodeSpec], aggregator: Mapping[str, Any] | None = None
    ) -> str:
        """Start every node, then the aggregator; returns the aggregator's address."""
        for spec in specs:
            self.start(spec.name, "node", self.write_node_config(spec))
        return self.start("aggregator", "aggregator", self.write_aggregator_config(aggregator))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``name`` (default SIGKILL) and wait for it to exit."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (drain), SIGKILL what does not stop; returns exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()
        self._logs.clear()
        self.procs.clear()
        return codes
