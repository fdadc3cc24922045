"""TOML config helpers shared by the node and aggregator configs: tables, addresses, ``[tls]``.

Every error names the file, the dotted key and the bad value. Relative paths are relative to
the config file's directory.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustspace.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AdminConfig",
    "LoggingConfig",
    "Table",
    "TlsConfig",
    "check_address",
    "is_loopback",
    "read_toml",
]


class Table:
    """A TOML table with its file and dotted key, for error messages naming both.

    Every key read (``get``, ``table``, ...) is remembered, so ``check_unknown`` can refuse the
    keys nobody asked for (a typo must not silently fall back to a default).

    >>> t = Table(Path("node.toml"), "node", {"name": "org-a", "prot": 1})
    >>> t.get("name", str)
    'org-a'
    >>> t.get("port", int, 50051)
    50051
    >>> t.check_unknown()
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: node.toml: key node.prot: unknown key (allowed here: name, port)
    """

    def __init__(self, path: Path, key: str, data: Any) -> None:
        self.path, self.key = path, key
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{key}] must be a table, got {data!r}")
        self.data: dict[str, Any] = data
        self._used: set[str] = set()

    def where(self, name: str) -> str:
        """``FILE: key DOTTED.NAME``, the start of every error message about key ``name``."""
        return f"{self.path}: key {self.key + '.' if self.key else ''}{name}"

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """The value of key ``name``, checked to be a ``kind``; ``default`` if it is absent.

        Raises:
            ConfigError: the key is missing and has no default, or has the wrong type.
        """
        self._used.add(name)
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where(name)} is missing")
            return default
        value = self.data[name]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.where(name)} = {value!r}: expected a number")
        if not isinstance(value, kind):
            names = (
                " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            )
            raise ConfigError(f"{self.where(name)} = {value!r}: expected {names}")
        return value

    def table(self, name: str, *, required: bool = False) -> Table:
        """The sub-table ``name`` (empty when absent, unless ``required``)."""
        self._used.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(f"{self.where(name)} is missing (a [{name}] table)")
            return Table(self.path, self._sub(name), {})
        return Table(self.path, self._sub(name), self.data[name])

    def _sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def str_list(self, name: str, default: list[str] | None = None) -> tuple[str, ...]:
        """Key ``name`` as a list of non-empty strings."""
        value = self.get(name, list, default if default is not None else ...)
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where(name)} = {value!r}: expected a list of strings")
        return tuple(value)

    def path_value(self, name: str, base: Path, default: Any = ...) -> Path:
        """Key ``name`` as a path; a relative one is taken relative to ``base``."""
        value = self.get(name, str, default)
        if value is None:
            raise ConfigError(f"{self.where(name)} is missing")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def check_unknown(self) -> None:
        """Refuse a key of this table that no ``get``/``table`` call asked for."""
        extra = sorted(set(self.data) - self._used)
        if extra:
            raise ConfigError(
                f"{self.where(extra[0])}: unknown key (allowed here: "
                f"{', '.join(sorted(self._used)) or 'none'})"
            )


def check_address(table: Table, name: str, value: str) -> str:
    """``value`` (key ``name`` of ``table``) if it is ``HOST:PORT``; ConfigError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{table.where(name)} = {value!r}: expected HOST:PORT, e.g. 0.0.0.0:50051"
        )
    return value


def read_toml(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The path and parsed content of a TOML config file.

    Raises:
        ConfigError: the file is missing, not UTF-8 or not valid TOML (naming the file).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        with p.open("rb") as fh:
            return p, tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None


@dataclass(frozen=True)
class TlsConfig:
    """Where this server's identity lives: CA certificate, certificate and private key.

    The ``[tls]`` table is ``dir = "certs/NAME"`` (an identity directory made by
    ``trustspace ca issue``) or the three files ``ca``, ``cert`` and ``key``; ``revoked`` and
    ``crl`` (the CA's signed revocation list) name refused peers (``transport.revocation``).
    """

    ca: Path
    cert: Path
    key: Path
    #: refused peers: certificate names, or serial numbers as ``"serial:HEX"`` (a deny list)
    revoked: tuple[str, ...] = ()
    #: the data space CA's signed revocation list (``crl.pem`` of ``trustspace ca revoke``)
    crl: Path | None = None

    @classmethod
    def parse(cls, t: Table, base: Path) -> TlsConfig:
        """Parse a ``[tls]`` table; relative paths are relative to ``base``."""
        revoked = t.str_list("revoked", [])
        for r in revoked:
            if r.lower().startswith("serial:"):
                try:
                    int(r.split(":", 1)[1], 16)
                except ValueError:
                    raise ConfigError(
                        f"{t.where('revoked')}: {r!r} is not serial:HEX (e.g. serial:1f3a)"
                    ) from None
        crl = t.path_value("crl", base) if "crl" in t.data else None
        if "dir" in t.data:
            d = t.path_value("dir", base)
            t.check_unknown()
            return cls(d / "ca.pem", d / "cert.pem", d / "key.pem", revoked, crl)
        tls = cls(
            t.path_value("ca", base),
            t.path_value("cert", base),
            t.path_value("key", base),
            revoked,
            crl,
        )
        t.check_unknown()
        return tls


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_ROTATIONS = ("size", "external")
#: Rotate the log file at 10 MiB, keeping 5 old files: at most ~60 MiB of logs per server.
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: where a node or the aggregator writes its log file (stderr stays text).

    ``file``: the log file (None: stderr only); ``format``: ``json`` (one object per line) or
    ``text``; ``level``: the file's level (stderr's is ``--log-level``); ``rotate``: ``size``
    (rotated here at ``max_bytes``, keeping ``backups`` old files) or ``external`` (logrotate
    or newsyslog renames the file; it is reopened when that happens).
    """

    file: Path | None = None
    format: str = "json"
    level: str = "INFO"
    rotate: str = "size"
    max_bytes: int = DEFAULT_LOG_MAX_BYTES
    backups: int = DEFAULT_LOG_BACKUPS

    @classmethod
    def parse(cls, t: Table, base: Path) -> LoggingConfig:
        """Parse a ``[logging]`` table; a relative ``file`` is relative to ``base``."""
        file = t.path_value("file", base) if "file" in t.data else None
        fmt = t.get("format", str, "json")
        if fmt not in LOG_FORMATS:
            raise ConfigError(f"{t.where('format')} = {fmt!r}: expected one of {LOG_FORMATS}")
        level = t.get("level", str, "INFO")
        if level.upper() not in LOG_LEVELS:
            raise ConfigError(f"{t.where('level')} = {level!r}: expected one of {LOG_LEVELS}")
        rotate = t.get("rotate", str, "size")
        if rotate not in LOG_ROTATIONS:
            raise ConfigError(
                f"{t.where('rotate')} = {rotate!r}: expected one of {LOG_ROTATIONS} (size: "
                "rotated by the server; external: by logrotate, the file is reopened)"
            )
        if rotate == "external":
            for key in ("max_bytes", "backups"):
                if key in t.data:
                    raise ConfigError(
                        f'{t.where(key)}: not used with rotate = "external" (logrotate '
                        'decides when and how many); remove it or set rotate = "size"'
                    )
        max_bytes = t.get("max_bytes", int, DEFAULT_LOG_MAX_BYTES)
        if max_bytes < 4096:
            raise ConfigError(
                f"{t.where('max_bytes')} = {max_bytes}: must be at least 4096 (bytes per file)"
            )
        backups = t.get("backups", int, DEFAULT_LOG_BACKUPS)
        if backups < 1:
            raise ConfigError(
                f"{t.where('backups')} = {backups}: must be at least 1 (old files kept)"
            )
        t.check_unknown()
        if file is None and t.data:
            raise ConfigError(
                f"{t.where('file')} is missing: [logging] configures the log file; name it "
                '(e.g. file = "node.log") or remove the table'
            )
        return cls(file, fmt, level.upper(), rotate, max_bytes, backups)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, ``[::1]`` or ``localhost``) names this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "[::1]", "localhost", "0.0.0.0", "node-a")]
    [True, True, True, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to any interface
        return False


@dataclass(frozen=True)
class AdminConfig:
    """The ``[admin]`` table: the admin port (operator console, ``/healthz``, ``/metrics``).

    ``listen = "127.0.0.1:PORT"``; absent table: no admin port. ``tls = true``: HTTPS with a
    client certificate required, issued by the data space CA (the server's own ``[tls]``
    identity serves it) with role ``operator`` and a name listed in ``operators``. Without
    ``tls`` the port must be a loopback address: the console shows who asked what (analysts,
    purposes, refusals), which is for this organisation's operators only. ``hosts``: extra
    names the console may be reached by (the ``Host`` header; loopback names and the listen
    host are always allowed), against DNS rebinding.
    """

    listen: str
    tls: bool = False
    operators: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def parse(cls, t: Table, serving: str = "") -> AdminConfig:
        """Parse an ``[admin]`` table (only called when the table is present); ``serving`` is
        the gRPC listen address, whose port the admin port must not take.

        Raises:
            ConfigError: no ``listen``; a non-loopback ``listen`` without ``tls = true``;
                ``tls = true`` without ``operators``.
        """
        if "listen" not in t.data:
            raise ConfigError(
                f"{t.where('listen')} is missing: give the admin port's address, e.g. "
                '"127.0.0.1:9464", or remove the [admin] table to turn the admin port off'
            )
        listen = check_address(t, "listen", t.get("listen", str))
        tls = t.get("tls", bool, False)
        operators = t.str_list("operators", [])
        hosts = t.str_list("hosts", [])
        t.check_unknown()
        host, _, port = listen.rpartition(":")
        if port != "0" and serving.rpartition(":")[2] == port:
            raise ConfigError(
                f"{t.where('listen')} = {listen!r} takes the port of the gRPC listen address "
                f"{serving!r}; give the admin port a port of its own, e.g. 9464"
            )
        if not tls and not is_loopback(host):
            raise ConfigError(
                f"{t.where('listen')} = {listen!r} is reachable from other machines, but "
                f"{t.where('tls')} is not true: the console shows the audit log (who asked "
                "what, for which purpose) and must not be open to the network. Listen on "
                "127.0.0.1 (and reach it through an ssh tunnel) or set tls = true and list the "
                "operators allowed (client certificates of the data space CA, role operator)"
            )
        if tls and not operators:
            raise ConfigError(
                f"{t.where('tls')} = true needs {t.where('operators')}: the certificate names "
                "(role operator, `trustspace ca issue DIR NAME --role operator`) allowed to "
                "open the console; any other certificate of the data space is refused"
            )
        if operators and not tls:
            raise ConfigError(
                f"{t.where('operators')} is only checked with tls = true (client "
                "certificates); set tls = true or remove operators"
            )
        return cls(listen, tls, operators, hosts)
