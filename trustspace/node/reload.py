"""Live reload of a running node's configuration: what changed, what needs a restart, triggers.

``Node.reload`` (``trustspace.node.server``) validates a new ``NodeConfig`` as at start-up and
swaps it in at once (``NodeService.reconfigure``), or keeps the old one and says why. This
module holds the parts that need no running node: the difference of two configurations
(``changes``, recorded in the audit log: keys and config values, never data values), the keys
that cannot change live (``restart_keys``), the report (``ReloadReport``), the file watch
(``Watcher``), the pid file ``trustspace node`` keeps (``PidFile``) and the wait for the audit
line of a reload (``wait_for_reload``, used by ``trustspace node reload``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from trustspace.engine import DatasetSpec
from trustspace.errors import ConfigError, NodeError
from trustspace.node.config import NodeConfig, PolicyConfig, Rule

__all__ = [
    "OPERATION",
    "PidFile",
    "ReloadReport",
    "Watcher",
    "changes",
    "data_stamps",
    "file_digests",
    "restart_keys",
    "scrub",
    "tls_files",
    "wait_for_reload",
    "watched_files",
]

log = logging.getLogger("trustspace.node")

OPERATION = "config.reload"  # the audit line of every reload attempt

#: The keys a running node cannot take live: its socket, identity and files it holds open.
#: (key, how to read it from a NodeConfig)
_RESTART: tuple[tuple[str, Callable[[NodeConfig], Any]], ...] = (
    ("node.name", lambda c: c.name),
    ("node.listen", lambda c: c.listen),
    ("node.pid_file", lambda c: str(c.pid_path)),
    ("node.drain_grace_s", lambda c: c.drain_grace_s),  # the signal loop holds the old one
    ("tls.ca", lambda c: str(c.tls.ca)),
    ("tls.cert", lambda c: str(c.tls.cert)),
    ("tls.key", lambda c: str(c.tls.key)),
    ("audit.path", lambda c: str(c.audit_path)),
    ("audit.dp_ledger", lambda c: str(c.dp_ledger_path)),
    ("audit.checkpoint_every", lambda c: c.checkpoint_every),
    # the admin port and the log file are opened once, at start
    ("admin", lambda c: None if c.admin is None else repr(c.admin)),
    ("engine", lambda c: repr(c.engine)),  # DuckDB's settings are made with its database
    ("logging", lambda c: repr(c.logging)),
)

#: The [node] keys that do change live.
_LIVE_NODE: tuple[tuple[str, Callable[[NodeConfig], Any]], ...] = (
    ("node.session_timeout_s", lambda c: c.session_timeout_s),
    ("node.output_dir", lambda c: None if c.output_dir is None else str(c.output_dir)),
    ("node.watch_s", lambda c: c.watch_s),
)

#: The scalar keys of [policy], compared one by one.
_POLICY_KEYS = (
    "min_group_size",
    "release_rows",
    "allow_two_party_anonymization",
    "allow_base_histogram",
    "min_nodes",
    "min_k",
    "members",
    "exact_requires_all",
    "glm_min_records_per_parameter",
)

#: The fields of a dataset declaration (``[datasets.NAME]``), in the order they are reported.
_DATASET_FIELDS = (
    "path",
    "format",
    "columns",
    "delimiter",
    "header",
    "null_values",
    "domains",
    "bounds",
    "source",
    "snapshot",
)


@dataclass(frozen=True)
class ReloadReport:
    """The outcome of one reload attempt (also one ``config.reload`` audit line).

    ``applied``: the new configuration is in force (or nothing had changed); otherwise the
    old one still is and ``error`` says why (file and key). ``changed``: what differs, as
    recorded in the audit log (see ``changes``). ``restart``: the keys that changed but need
    a restart (their presence alone refuses the reload).
    """

    applied: bool
    changed: Mapping[str, Any]
    trigger: str
    source: str
    error: str = ""
    restart: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def decision(self) -> str:
        return "allow" if self.applied else "deny"

    def summary(self) -> str:
        """One line for the log and ``trustspace node reload``."""
        if not self.applied:
            return f"reload refused, the old configuration stays in force: {self.error}"
        if not self.changed:
            return "reload: nothing changed"
        return f"reload applied: {describe(self.changed)}"


def describe(changed: Mapping[str, Any]) -> str:
    """``changed`` as a short human line: ``policy.min_group_size 5 -> 20; policy.rules +1 -0``."""
    parts = []
    for key, value in changed.items():
        if isinstance(value, list) and len(value) == 2:
            parts.append(f"{key} {json.dumps(value[0])} -> {json.dumps(value[1])}")
        elif isinstance(value, Mapping):
            inner = ", ".join(
                f"{k} {', '.join(map(str, v)) if isinstance(v, list | dict) else v}"
                for k, v in value.items()
                if v
            )
            parts.append(f"{key}: {inner}")
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- differences
def restart_keys(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The keys that differ between ``old`` and ``new`` but cannot change while running."""
    return [key for key, get in _RESTART if get(old) != get(new)]


def _rule_key(rule: Rule) -> tuple[Any, ...]:
    return (
        rule.analysts,
        rule.operations,
        rule.datasets,
        rule.columns,
        rule.purposes,
        rule.exact,
    )


def _policy_changes(old: PolicyConfig, new: PolicyConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _POLICY_KEYS:
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            out[f"policy.{key}"] = [_plain(a), _plain(b)]
    a_rules, b_rules = Counter(map(_rule_key, old.rules)), Counter(map(_rule_key, new.rules))
    added, removed = sum((b_rules - a_rules).values()), sum((a_rules - b_rules).values())
    if added or removed:
        out["policy.rules"] = f"+{added} -{removed}"
    if old.rate_limit != new.rate_limit:
        out["policy.rate_limit"] = [_rate(old), _rate(new)]
    a_dp, b_dp = old.dp, new.dp
    if (a_dp is None) != (b_dp is None):
        out["policy.dp"] = ["off" if a_dp is None else "on", "off" if b_dp is None else "on"]
    elif a_dp is not None and b_dp is not None:
        for key in ("epsilon", "delta", "required", "colluders", "exact_analysts"):
            a, b = getattr(a_dp, key), getattr(b_dp, key)
            if a != b:
                out[f"policy.dp.{key}"] = [_plain(a), _plain(b)]
        who = _names_diff(a_dp.analysts, b_dp.analysts)
        if who:
            out["policy.dp.analysts"] = who
    return out


def _rate(policy: PolicyConfig) -> dict[str, Any] | None:
    r = policy.rate_limit
    return None if r is None else {"per_minute": r.per_minute, "burst": r.burst}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _names_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    out = {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }
    return {k: v for k, v in out.items() if v}


def _dataset_key(spec: DatasetSpec, name: str) -> Any:
    value = getattr(spec, name)
    if name == "path":
        return str(value)
    if name == "source":  # its declaration, without the password it may read
        return None if value is None else repr(value)
    if name == "columns":  # file order matters for CSV
        return [(c, str(getattr(t, "value", t))) for c, t in value.items()]
    if isinstance(value, Mapping):
        return sorted((k, list(v)) for k, v in value.items())
    return value


def data_stamps(config: NodeConfig) -> dict[str, tuple[int, int, int] | None]:
    """Each dataset file's (mtime ns, size, inode) now; None when it is missing. Taken before
    the engine reads the files, so a file replaced while being read is read again next time."""
    out: dict[str, tuple[int, int, int] | None] = {}
    for d in config.datasets:
        if d.source is not None:  # a database or Spark table: read live, checked at reload
            out[d.name] = None
            continue
        try:
            st = os.stat(d.file)
        except OSError:
            out[d.name] = None
        else:
            out[d.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def _dataset_changes(
    old: NodeConfig,
    new: NodeConfig,
    old_stamps: Mapping[str, tuple[int, int, int] | None],
    new_stamps: Mapping[str, tuple[int, int, int] | None],
) -> dict[str, Any]:
    a = {d.name: d for d in old.datasets}
    b = {d.name: d for d in new.datasets}
    changed: dict[str, list[str]] = {}
    for name in sorted(set(a) & set(b)):
        keys = [k for k in _DATASET_FIELDS if _dataset_key(a[name], k) != _dataset_key(b[name], k)]
        if "path" not in keys and old_stamps.get(name) != new_stamps.get(name):
            keys.append("file")  # same declaration, the file was replaced or edited
        if keys:
            changed[name] = keys
    out: dict[str, Any] = {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": changed,
    }
    return {k: v for k, v in out.items() if v}


def tls_files(config: NodeConfig) -> dict[str, Path]:
    """The files of ``[tls]`` besides the node's own identity (``ca``, ``cert``, ``key``): a
    revocation list file (``[tls] crl``, when the config has one), by dotted key."""
    out: dict[str, Path] = {}
    for f in fields(config.tls):
        value = getattr(config.tls, f.name)
        if f.name not in ("ca", "cert", "key") and isinstance(value, Path):
            out[f"tls.{f.name}"] = value
    return out


def file_digests(config: NodeConfig) -> dict[str, tuple[str, str | None]]:
    """``tls_files`` as key -> (path, SHA-256 of the content or None when unreadable): a
    revocation list re-signed in place is a change, though no key of the config changed."""
    out: dict[str, tuple[str, str | None]] = {}
    for key, path in tls_files(config).items():
        try:
            digest: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = None
        out[key] = (str(path), digest)
    return out


def changes(
    old: NodeConfig,
    new: NodeConfig,
    old_stamps: Mapping[str, tuple[int, int, int] | None] | None = None,
    new_stamps: Mapping[str, tuple[int, int, int] | None] | None = None,
    old_files: Mapping[str, tuple[str, str | None]] | None = None,
    new_files: Mapping[str, tuple[str, str | None]] | None = None,
) -> dict[str, Any]:
    """What differs from ``old`` to ``new``, as the audit line records it.

    Scalar keys as ``[old, new]``; ``policy.rules`` as ``"+ADDED -REMOVED"``; ``datasets`` as
    ``{"added": [...], "removed": [...], "changed": {NAME: [fields]}}`` (``"file"``: the same
    declaration over a file that changed on disk, by ``data_stamps``); ``tls.revoked`` as
    ``{"added": [...], "removed": [...]}``; the restart keys as ``[old, new]`` too. Only keys
    and configuration values, never a value of the data.

    >>> from dataclasses import replace
    >>> from trustspace.node.config import TlsConfig, policy_from_dict
    >>> base = policy_from_dict({"rules": [{"analysts": ["a"], "operations": ["count"]}]})
    >>> tls = TlsConfig(Path("ca.pem"), Path("cert.pem"), Path("key.pem"))
    >>> old = NodeConfig("n1", "127.0.0.1:0", tls, (), base, Path("a.jsonl"))
    >>> new = replace(old, policy=replace(base, min_group_size=20, rules=()))
    >>> changes(old, new)
    {'policy.min_group_size': [10, 20], 'policy.rules': '+0 -1'}
    """
    out: dict[str, Any] = {}
    for key, get in _RESTART + _LIVE_NODE:
        if get(old) != get(new):
            out[key] = [get(old), get(new)]
    out.update(_policy_changes(old.policy, new.policy))
    ds = _dataset_changes(old, new, old_stamps or {}, new_stamps or {})
    if ds:
        out["datasets"] = ds
    a_files, b_files = old_files or {}, new_files or {}
    for key in sorted(set(a_files) | set(b_files)):
        a, b = a_files.get(key), b_files.get(key)
        if a is not None and b is not None and a[0] == b[0]:
            if a[1] != b[1]:
                out[key] = "file changed"
        elif a != b:
            out[key] = [None if a is None else a[0], None if b is None else b[0]]
    a_rev, b_rev = set(old.tls.revoked), set(new.tls.revoked)
    if a_rev != b_rev:
        out["tls.revoked"] = {
            k: v
            for k, v in (("added", sorted(b_rev - a_rev)), ("removed", sorted(a_rev - b_rev)))
            if v
        }
    return out


def stale_datasets(changed: Mapping[str, Any]) -> set[str]:
    """The datasets whose in-flight requests a reload ends: removed or changed."""
    ds = changed.get("datasets") or {}
    return set(ds.get("removed", ())) | set(ds.get("changed", {}))


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def scrub(message: str, keep: Iterable[str]) -> str:
    """``message`` with every quoted literal replaced by ``<value>``, except the names in
    ``keep`` (datasets, columns, keys): a data file's error may quote the bad field, which
    must not reach the audit log (the node's own log and ``trustspace node reload`` show it).

    >>> scrub("line 4, column 2 ('age'): cannot read 'x41' as int", ["age"])
    "line 4, column 2 ('age'): cannot read <value> as int"
    """
    names = set(keep)

    def sub(m: re.Match[str]) -> str:
        return m.group(0) if m.group(0)[1:-1] in names else "<value>"

    return _QUOTED.sub(sub, message)


# ---------------------------------------------------------------------------- file watch
def watched_files(config: NodeConfig) -> tuple[Path, ...]:
    """The files whose change triggers a reload under ``[node] watch_s``: the config file and
    the revocation list it names (``[tls] crl``, when the config has one)."""
    return (config.source, *tls_files(config).values())


def _mtimes(files: Iterable[Path]) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Watcher:
    """Calls ``trigger()`` when a watched file's mtime or size changes (``[node] watch_s``).

    ``files()`` and ``interval()`` are asked again at every check, so that a reload which
    names another revocation file, or changes ``watch_s``, is followed; an interval of 0
    pauses the watch (checked again every second). A file being written when it is read
    fails validation and is refused (the old configuration stays); its final write changes
    the mtime again and is reloaded at the next check.
    """

    def __init__(
        self,
        files: Callable[[], tuple[Path, ...]],
        interval: Callable[[], float],
        trigger: Callable[[], None],
    ) -> None:
        self._files, self._interval, self._trigger = files, interval, trigger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trustspace-watch", daemon=True)
        self._seen = _mtimes(files())

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval() or 1.0):
            if not self._interval():
                continue
            files = self._files()
            now = _mtimes(files)
            if now == self._seen:
                continue
            self._seen = now
            try:
                self._trigger()
            except Exception:  # a reload reports its own errors; the watch must go on
                log.exception("config watch: reload failed")
            self._seen = _mtimes(self._files())  # what the reload read

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- pid file
class PidFile:
    """The pid file of a running ``trustspace node``, locked (``flock``) while it runs.

    A second node with the same pid file is refused (the lock is held by a live process;
    a stale file left by a killed node is not locked and is taken over). ``running(path)``
    gives the pid of the live node holding it, for ``trustspace node reload``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> PidFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="ascii")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            raise ConfigError(
                f"{self.path}: another node (pid {other}) is running with this pid file (key "
                "node.pid_file); stop it first, or give this node its own audit log and pid file"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._fh.close()
        self._fh = None

    @staticmethod
    def running(path: Path) -> int:
        """The pid of the live node holding ``path``.

        Raises:
            NodeError: no node holds it (none started, or it stopped).
        """
        try:
            fh = path.open("r", encoding="ascii")
        except FileNotFoundError:
            raise NodeError(
                f"{path}: no pid file, so no node is running with this config (key "
                "node.pid_file; `trustspace node CONFIG` writes it at start)"
            ) from None
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # locked: a live node holds it
                text = fh.read().strip()
                if text.isdigit():
                    return int(text)
                raise NodeError(f"{path}: the pid file holds no pid") from None
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        raise NodeError(
            f"{path}: stale pid file (no live node holds it); is the node running? Start it "
            "with `trustspace node CONFIG`"
        )


# ---------------------------------------------------------------------------- the wait
def audit_size(path: Path) -> int:
    """The audit log's size now (where ``wait_for_reload`` starts reading)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_reload(path: Path, offset: int, timeout: float) -> dict[str, Any] | None:
    """The first ``config.reload`` line written to the audit log ``path`` after byte
    ``offset``, waiting up to ``timeout`` seconds; None if none came."""
    deadline = time.monotonic() + timeout
    buf = b""
    pos = offset
    while True:
        try:
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        pos += len(chunk)
        buf += chunk
        *lines, buf = buf.split(b"\n")  # only whole lines: the last may be being written
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("operation") == OPERATION:
                return rec
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
