"""``trustspace node CONFIG --check``: everything a start checks, without a side effect.

A start creates the audit log (and its directory), its checkpoint and the DP ledger; the check
creates and modifies no file: it loads the credentials (certificate valid, issued by the CA, its
name the node's), validates every dataset with the engine (in memory), verifies an existing
audit log's chain read-only, and says whether the listen port is free.
"""

from __future__ import annotations

import datetime as dt
import errno

from trustspace._files import unwritable_ancestor
from trustspace.errors import ConfigError, DataError
from trustspace.node.audit import verify
from trustspace.node.config import NodeConfig
from trustspace.node.server import build_engine, load_credentials
from trustspace.transport.revocation import Revocations
from trustspace.transport.server import bind_error

__all__ = ["RENEW_DAYS", "check_node"]

#: a certificate expiring within this many days is pointed out (time to issue the next one)
RENEW_DAYS = 30


def _port_in_use(listen: str) -> bool:
    if int(listen.rpartition(":")[2]) == 0:
        return False
    err = bind_error(listen)
    return err is not None and err.errno == errno.EADDRINUSE


def check_node(config: NodeConfig) -> list[str]:
    """Check ``config`` as a start would; returns one line per thing checked.

    Raises:
        ConfigError, AuthenticationError, DataError: the first problem, as a start raises it.
    """
    creds = load_credentials(config)
    days = (creds.identity.not_after - dt.datetime.now(dt.UTC)).days
    out = [
        f"certificate {config.tls.cert}: {creds.name!r} (role {creds.role}), valid until "
        f"{creds.identity.not_after:%Y-%m-%d} ({days} days"
        + ("; renew it soon: an expired certificate stops the node" if days < RENEW_DAYS else "")
        + ")"
    ]
    line = Revocations.load(config.tls, creds.ca_pem).check_line()  # a start refuses it too
    if line:
        out.append(line)
    engine = build_engine(config)
    try:
        for d in config.datasets:
            if d.name in engine.unavailable:  # a node would start and serve the others
                raise DataError(engine.unavailable[d.name])
            kind = d.format if d.source is None else d.kind
            out.append(
                f"dataset {d.name!r}: {d.location} ({kind}, {len(d.columns)} columns: "
                + ", ".join(f"{c} {t.value}" for c, t in d.schema.columns.items())
                + ") OK"
            )
    finally:
        engine.close()
    audit = config.audit_path
    if audit.exists():
        report = verify(audit)
        if not report.ok:
            raise ConfigError(
                f"audit log {audit} is broken: {report.problem}; move it aside (keep it as "
                "evidence) and start the node again"
            )
        out.append(f"audit log {audit}: {report.lines} lines, chain OK")
    else:
        out.append(f"audit log {audit}: absent (the node creates it at start)")
    for what, path in (("audit log", audit), ("DP ledger", config.dp_ledger_path)):
        bad = unwritable_ancestor(path.parent)
        if bad is not None:
            raise ConfigError(
                f"{config.source}: the {what} {path} cannot be created: {bad} is not writable "
                "by this user"
            )
    if _port_in_use(config.listen):
        out.append(
            f"listen {config.listen}: the port is in use now (fine if this node is running; "
            "a second start would be refused)"
        )
    else:
        out.append(f"listen {config.listen}: free")
    if config.admin is not None:
        state = "free"
        if _port_in_use(config.admin.listen):
            state = "in use now (fine if this node is running; a second start would be refused)"
        out.append(f"admin {config.admin.listen}: {state}")
    return out
