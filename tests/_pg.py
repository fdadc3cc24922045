"""A throw-away PostgreSQL server for the source tests: the machine's initdb / pg_ctl, a
temporary data directory, a free port on 127.0.0.1, password (SCRAM) authentication over TCP.

    python tests/_pg.py start DIR      # prints the superuser's DSN (its password in DIR)
    python tests/_pg.py stop DIR

``.ci/run`` starts one before ``make test`` (exporting ``TRUSTSPACE_TEST_PG_DSN``) and stops
it at the end; without that variable, ``tests/conftest.py``'s ``pg_admin`` fixture starts
its own. As root (CI containers), the server runs as the ``postgres`` user when there is
one, else ``nobody``: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ADMIN = "tsadmin"


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise FileNotFoundError(
        f"{name} not found: install PostgreSQL's server binaries (Debian: postgresql)"
    )


def available() -> bool:
    try:
        _bin("initdb")
        _bin("pg_ctl")
    except FileNotFoundError:
        return False
    return True


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root with neither a postgres nor a nobody user")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path) -> str:
    """Start a server under ``root`` (created); its superuser DSN."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o644 if os.geteuid() == 0 else 0o600)  # the server's user reads it once
    port = _free_port()
    runas = _as_user()
    if runas:
        user = runas[2]
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        [*runas, _bin("initdb"), "-D", str(data), "-U", ADMIN, f"--pwfile={pwfile}",
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    pwfile.unlink()
    (root / "admin-password").write_text(password + "\n")
    (root / "admin-password").chmod(0o600)
    conf = data / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{data}'\nfsync = off\nshared_buffers = 64MB\n"
            "max_connections = 60\n"
        )
    subprocess.run(
        [*runas, _bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w",
         "-t", "60", "start"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} dbname=postgres user={ADMIN} password={password}"
    (root / "dsn").write_text(dsn + "\n")
    (root / "dsn").chmod(0o600)
    return dsn


def stop(root: Path) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [*_as_user(), _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False, capture_output=True,
        )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    where = Path(sys.argv[2])
    if sys.argv[1] == "start":
        print(start(where))
    else:
        stop(where)
