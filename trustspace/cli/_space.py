"""A whole data space on this machine as separate processes: CA, nodes, aggregator.

Used by ``trustspace demo``, the benchmarks and the fault tests: each node and the aggregator is
a real ``trustspace node`` / ``trustspace aggregator`` process started from a TOML config, with
identities from a throw-away CA and mutual TLS on 127.0.0.1. Nothing here is a shortcut around
the production code path; it only writes configs and starts and stops processes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
READY = re.compile(r" on (\S+:\d+)")


def _toml_value(value: Any) -> str:
    # json's string and list syntax is valid TOML for the values we write
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


@dataclass
class NodeSpec:
    """One organisation's node: its dataset files and policy (see docs/operations.md)."""

    name: str
    datasets: Mapping[str, Mapping[str, Any]]  # dataset -> {path, delimiter, columns, domains}
    policy: Mapping[str, Any] = field(default_factory=dict)  # min_group_size, release_rows, ...
    rules: Sequence[Mapping[str, Any]] = ()  # [[policy.rules]] tables


class LocalSpace:
    """CA, identities, configs and processes of a data space under ``root``.

    Use as a context manager; every process is stopped (SIGTERM, then SIGKILL) on exit.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "ca"
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.addresses: dict[str, str] = {}
        self._logs: list[Any] = []

    def __enter__(self) -> LocalSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- identities
    def init_ca(self, nodes: Sequence[str], analysts: Sequence[str]) -> None:
        from trustspace.transport.ca import init_ca, issue

        init_ca(self.ca)
        for name in nodes:
            issue(self.ca, name, "node")
        issue(self.ca, "operator", "aggregator")
        for name in analysts:
            issue(self.ca, name, "analyst")

    def identity(self, name: str) -> Path:
        return self.ca / name

    # -------------------------------------------------------------- configs
    def write_node_config(self, spec: NodeSpec) -> Path:
        lines = [
            "# written by trustspace (cli/_space.py); see docs/operations.md for every key",
            "[node]",
            f'name = "{spec.name}"',
            'listen = "127.0.0.1:0"',
            "drain_grace_s = 5",
            "",
            "[tls]",
            f'dir = "{self.identity(spec.name)}"',
            "",
            "[audit]",
            f'path = "{self.root / "audit" / (spec.name + ".jsonl")}"',
        ]
        for ds, d in spec.datasets.items():
            lines += ["", f"[datasets.{ds}]"]
            for key in ("path", "format", "delimiter", "header", "null_values"):
                if key in d:
                    lines.append(f"{key} = {_toml_value(str(d[key]) if key == 'path' else d[key])}")
            lines.append(f"[datasets.{ds}.columns]")
            lines += [f'"{c}" = "{t}"' for c, t in d["columns"].items()]
            if d.get("domains"):
                lines.append(f"[datasets.{ds}.domains]")
                lines += [f'"{c}" = {_toml_value(list(v))}' for c, v in d["domains"].items()]
        lines += ["", "[policy]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in spec.policy.items()]
        for rule in spec.rules:
            lines += ["", "[[policy.rules]]"]
            lines += [f"{k} = {_toml_value(list(v))}" for k, v in rule.items()]
        (self.root / "audit").mkdir(parents=True, exist_ok=True)
        path = self.root / f"{spec.name}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def write_aggregator_config(self, extra: Mapping[str, Any] | None = None) -> Path:
        lines = [
            "# written by trustspace (cli/_space.py); see docs/operations.md for every key",
            "[aggregator]",
            'name = "operator"',
            'listen = "127.0.0.1:0"',
            "drain_grace_s = 5",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in (extra or {}).items()]
        lines += ["", "[tls]", f'dir = "{self.identity("operator")}"']
        for name, address in self.addresses.items():
            lines += ["", "[[nodes]]", f'name = "{name}"', f'address = "{address}"']
        path = self.root / "aggregator.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    # -------------------------------------------------------------- processes
    def start(self, name: str, command: str, config: Path) -> str:
        """Start ``trustspace COMMAND CONFIG`` and wait for its ready line; returns its address."""
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
