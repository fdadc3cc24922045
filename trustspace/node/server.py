"""Compose a node from its config: credentials, engine (checked at start-up), audit, gRPC server."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from trustspace.dp import Ledger
from trustspace.engine import Engine
from trustspace.errors import ConfigError, DataError, TrustspaceError
from trustspace.node import reload as _reload
from trustspace.node.config import NodeConfig, load_node_config
from trustspace.node.reload import ReloadReport
from trustspace.node.service import NodeService
from trustspace.obs.metrics import code_reason
from trustspace.transport.ca import Credentials
from trustspace.transport.checkpoint import CHECKPOINT_KEY
from trustspace.transport.server import CallHooks, ServerHost, TlsServer
from trustspace.transport.servicers import NODE_SERVICE, add_node_servicer

if TYPE_CHECKING:
    from trustspace.admin.server import AdminServer

log = logging.getLogger("trustspace.node")


def build_engine(config: NodeConfig) -> Engine:
    """The node's engine over its datasets, validated (DataError naming file, line, column)."""
    for d in config.datasets:
        if d.source is not None:
            continue  # checked by Engine.validate (an unreachable source leaves the others)
        path = d.file
        if config.source.is_file() and not path.is_file():
            raise DataError(
                f"{config.source}: key datasets.{d.name}.path: file not found at "
                f"{path.absolute()} (a relative path is relative to the config file's "
                f"directory, {config.source.parent.absolute()}); fix the path"
            )
    e = config.engine
    engine = Engine(
        {d.name: d for d in config.datasets},
        database=e.database if e.database is not None else ":memory:",
        memory_limit=e.memory_limit,
        threads=e.threads,
        temp_directory=e.temp_directory,
        node=config.name,
    )
    try:
        engine.validate()
    except BaseException:
        engine.close()
        raise
    return engine


def load_credentials(config: NodeConfig) -> Credentials:
    creds = Credentials.from_files(
        config.tls.ca, config.tls.cert, config.tls.key, expected_role="node"
    )
    if creds.name != config.name:
        raise ConfigError(
            f"{config.source}: key node.name = {config.name!r} but the certificate "
            f"{config.tls.cert} is issued to {creds.name!r}; the aggregator checks nodes by "
            "certificate name, so they must match"
        )
    return creds


class Node(ServerHost):
    """A running node: ``start()``, ``address``, ``stop(grace)`` (drains in-flight calls)."""

    def __init__(self, config: NodeConfig, *, credentials: Credentials | None = None) -> None:
        creds = credentials or load_credentials(config)
        self.config = config
        self.admin: AdminServer | None = None  # [admin]: opened by start()
        self.drain_grace_s = config.drain_grace_s
        self._creds = creds
        self._reload_lock = threading.Lock()
        self._data_stamps = _reload.data_stamps(config)  # before the engine reads the files
        self._file_digests = _reload.file_digests(config)  # a revocation list file's content
        self.engine = build_engine(config)
        try:
            self.service = NodeService(config, self.engine, credentials=creds)
        except BaseException:  # e.g. an unusable DP ledger: nothing is left open
            self.engine.close()
            raise
        #: Prometheus metrics (own registry; served at /metrics on the admin port)
        self.metrics = self.service.metrics
        self.service.revocations.listener = self._crl_taken_up  # audited like a reload
        try:
            self.server = TlsServer(
                name=config.name,
                listen=config.listen,
                listen_key=f"{config.source}: key node.listen",
                creds=creds,
                register=lambda s: add_node_servicer(s, self.service),
                service_names=(NODE_SERVICE,),
                hooks=self._hooks(),
            )
        except BaseException:
            self.service.close()
            self.engine.close()
            raise
        log.info(
            "node %s: audit log %s (%d lines, head %s)",
            config.name,
            config.audit_path,
            self.service.audit.lines,
            self.service.audit.head,
        )

    def _hooks(self) -> CallHooks:
        """Revoked callers are refused before any work; every refused call is audited; every
        answer carries the audit log's signed checkpoint (made after the call's line)."""
        audit = self.service.audit
        name = self.config.name
        service = self.service

        def refused(method: str, caller: str, code: str, details: str) -> None:
            audit.append(
                {
                    "requester": "",
                    "via": caller,
                    "operation": f"rpc.{method}",
                    "dataset": "",
                    "columns": [],
                    "params": {"status": code},
                    "decision": "deny",
                    "reason": details[:500],
                    "outcome": "refused",
                }
            )
            self.metrics.refused_call(method, code, details)
            log.warning(
                "node %s: refused %s from %s: %s: %s",
                name,
                method,
                caller,
                code,
                details[:500],
                extra={
                    "via": caller,
                    "operation": f"rpc.{method}",
                    "decision": "deny",
                    "code": code,
                    "reason": code_reason(code, details),
                },
            )

        def trailing() -> tuple[tuple[str, bytes], ...]:
            signed = audit.checkpoint()  # one signature per answer, not per line
            if signed is None:
                return ()
            return ((CHECKPOINT_KEY, signed.to_proto().SerializeToString()),)

        return CallHooks(
            revoked=lambda pem: service.revocations.check(pem),  # the one checker; follows a reload
            before=audit.mark,
            refused=refused,
            handled=audit.written_since_mark,
            trailing=trailing,
        )

    def _admin_port(self) -> AdminServer | None:
        if self.config.admin is None:
            return None
        from trustspace.admin.server import node_admin  # uvicorn only when configured

        return node_admin(self)

    # ------------------------------------------------------------------ live reload
    def reload(self, new_config: NodeConfig | None = None, *, trigger: str = "api") -> ReloadReport:
        """Take a new configuration while serving (SIGHUP, ``trustspace node reload``, the
        ``[node] watch_s`` file watch); ``new_config`` None: read the config file again.

        Validates first, exactly as at start-up: the file parses, the credentials still load
        and match ``node.name``, and when a dataset was added, removed, re-declared or its file
        changed, a new engine over every dataset is built and checked. Then swaps at once
        (``NodeService.reconfigure``: policy, datasets, revocation list, DP limits, live
        ``[node]`` keys). The keys of ``reload.restart_keys`` (listen address, name, TLS
        files, audit and ledger paths) are refused as needing a restart. On any error the old
        configuration stays in force entirely and the report says why (file, key). Every
        attempt is one ``config.reload`` line in the audit log and one log line.
        """
        with self._reload_lock:  # one reload at a time (SIGHUP and the watch may race)
            report = self._reload(new_config, trigger)
            self._record(report)
        return report

    def _reload(self, new_config: NodeConfig | None, trigger: str) -> ReloadReport:
        old = self.config
        source = str(old.source if new_config is None else new_config.source)
        changed: dict[str, Any] = {}
        notes: list[str] = []
        new = new_config
        try:
            if new is None:
                new = load_node_config(old.source)
            stamps, files = _reload.data_stamps(new), _reload.file_digests(new)
            changed = _reload.changes(
                old, new, self._data_stamps, stamps, self._file_digests, files
            )
            restart = tuple(_reload.restart_keys(old, new))
            if restart:
                what = "; ".join(f"key {k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in restart)
                raise ConfigError(
                    f"{new.source}: {what}: needs a restart (the running node keeps its old "
                    "configuration; restart it to take the change)"
                )
            creds = load_credentials(new)  # the files still load and name this node
            if creds.cert_pem != self._creds.cert_pem:
                notes.append(
                    f"{new.tls.cert}: the certificate file changed since start; the node "
                    "serves the old one until it is restarted"
                )
            if "datasets" not in changed:  # a new engine checks its sources itself
                recheck = getattr(self.engine, "recheck_sources", dict)
                notes += [f"dataset {n!r} is unavailable: {why}" for n, why in recheck().items()]
            if not changed:
                return ReloadReport(True, {}, trigger, source, notes=tuple(notes))
            engine = build_engine(new) if "datasets" in changed else None
            if engine is not None:
                notes += [
                    f"dataset {n!r} is unavailable: {w}" for n, w in engine.unavailable.items()
                ]
            ledger = None
            try:
                if new.policy.dp is not None and self.service.ledger is None:
                    ledger = Ledger(new.dp_ledger_path, node=new.name)
                replaced = self.service.reconfigure(
                    new, engine, stale=_reload.stale_datasets(changed), ledger=ledger
                )
            except BaseException:
                if engine is not None:
                    engine.close()
                if ledger is not None:
                    ledger.close()
                raise
            self.config, self._data_stamps, self._file_digests = new, stamps, files
            if engine is not None:
                assert replaced is self.engine
                self.engine, engine = engine, self.engine
                engine.close()  # no call uses it any more: reconfigure waited for them
        except TrustspaceError as exc:
            error = str(exc)
            restart = tuple(_reload.restart_keys(old, new)) if new is not None else ()
            if isinstance(exc, DataError):  # a data file's error may quote a field's value
                specs = old.datasets + (new.datasets if new is not None else ())
                names = {d.name for d in specs} | {c for d in specs for c in d.columns}
                error = _reload.scrub(error, names)
                log.warning("node %s: reload refused: %s", old.name, exc)  # in full, locally
            return ReloadReport(False, changed, trigger, source, error, restart, tuple(notes))
        except Exception as exc:  # not a bad input we know: refused, and the old config stays
            log.exception("node %s: reload failed", old.name)
            error = f"{source}: internal error ({type(exc).__name__}); see the node's log"
            return ReloadReport(False, changed, trigger, source, error, notes=tuple(notes))
        return ReloadReport(True, changed, trigger, source, notes=tuple(notes))

    def _crl_taken_up(self, applied: bool, before: str, after_or_error: str) -> None:
        """A changed ``[tls] crl`` file taken up (or refused) between reloads: one
        ``config.reload`` audit line (trigger ``crl-file``), written from another thread so
        it is not counted as the audit line of the call that noticed the change."""
        source = str(self.config.tls.crl)
        if applied:
            crl, known = self.service.revocations.crl, self._file_digests.get("tls.crl")
            if crl is not None and known is not None:  # in force: not a change a reload reports
                self._file_digests = {**self._file_digests, "tls.crl": (known[0], crl.digest)}
            report = ReloadReport(True, {"tls.crl": [before, after_or_error]}, "crl-file", source)
        else:
            report = ReloadReport(False, {}, "crl-file", source, after_or_error)
        threading.Thread(target=self._record, args=(report,), daemon=True).start()

    def _record(self, report: ReloadReport) -> None:
        """The audit line and the log line of a reload attempt."""
        entry = {
            "node": self.config.name,
            "event": _reload.OPERATION,
            "requester": "",
            "via": report.trigger,
            "request_id": "",
            "operation": _reload.OPERATION,
            "dataset": "",
            "columns": [],
            "params": {"config": report.source, "trigger": report.trigger},
            "changed": dict(report.changed),
            "decision": report.decision,
            "reason": report.error
            or ("no change" if not report.changed else "validated and applied"),
            "outcome": "applied" if report.applied else "refused",
        }
        if report.notes:
            entry["notes"] = list(report.notes)
        try:
            self.service.audit.append(entry)
            self.service.audit.checkpoint()
        except TrustspaceError as exc:
            log.error(
                "node %s: could not record the reload in the audit log: %s", self.config.name, exc
            )
        level = logging.INFO if report.applied else logging.WARNING
        log.log(level, "node %s: %s (%s)", self.config.name, report.summary(), report.trigger)
        for note in report.notes:
            log.warning("node %s: %s", self.config.name, note)

    def close(self) -> None:
        self.service.close()
        self.engine.close()
