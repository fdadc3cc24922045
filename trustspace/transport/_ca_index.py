"""The CA's serial index ``index.json``: every certificate the CA issued, signed by the CA key.

One JSON document, written atomically (temporary file, fsync, rename) under an exclusive lock
on ``CA_DIR/.lock``, so two operators signing at once cannot lose an entry. The document is
signed with the CA key (ECDSA P-256 over its canonical JSON, domain separated), so an entry
edited by hand (a revoked certificate marked valid again, a name changed) is refused on the
next load instead of silently feeding a wrong revocation list. Rolling the whole file back to
an older signed copy is caught against ``crl.pem``: the index must know every serial the CRL
revokes and a CRL number at least the CRL's.

Entries: ``serial`` (lowercase hex), ``name``, ``role``, ``hosts`` (the subject alternative
names), ``not_before``/``not_after`` (ISO 8601 UTC), ``status`` (``valid`` or ``revoked``;
``expired`` is derived from ``not_after`` when read), ``revoked_at``, ``reason`` and
``key_sha256`` (the public key's fingerprint: a rotation must bring a new key).
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trustspace._files import write_atomic
from trustspace.errors import ConfigError
from trustspace.transport.revocation import crl_number

INDEX = "index.json"
CRL = "crl.pem"
LOCK = ".lock"
FORMAT = "trustspace-ca-index/1"
_DOMAIN = b"trustspace/ca-index/v1\x00"
STATUSES = ("valid", "revoked")


def iso(moment: dt.datetime) -> str:
    """``moment`` as ISO 8601 UTC to the second, e.g. ``2027-01-31T12:00:00Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any, where: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an ISO 8601 UTC time, got {value!r}")
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an ISO 8601 UTC time") from None


@dataclass(frozen=True)
class Entry:
    """One issued certificate as the index records it."""

    serial: str
    name: str
    role: str
    hosts: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    status: str = "valid"
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    key_sha256: str = ""

    def effective_status(self, now: dt.datetime) -> str:
        """``revoked``, ``expired`` (past ``not_after``) or ``valid``."""
        if self.status == "revoked":
            return "revoked"
        return "expired" if now > self.not_after else "valid"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hosts"] = list(self.hosts)
        d["not_before"], d["not_after"] = iso(self.not_before), iso(self.not_after)
        d["revoked_at"] = iso(self.revoked_at) if self.revoked_at is not None else None
        return d

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Entry:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected an object")
        fields = set(cls.__dataclass_fields__)
        if set(raw) != fields:
            raise ConfigError(f"{where}: expected exactly the keys {', '.join(sorted(fields))}")
        for key in ("serial", "name", "role", "status", "key_sha256"):
            if not isinstance(raw[key], str) or not raw[key]:
                raise ConfigError(f"{where}: {key} must be a non-empty string")
        try:
            int(raw["serial"], 16)
        except ValueError:
            raise ConfigError(f"{where}: serial {raw['serial']!r} is not hexadecimal") from None
        if raw["status"] not in STATUSES:
            raise ConfigError(f"{where}: status {raw['status']!r} is not one of {STATUSES}")
        hosts = raw["hosts"]
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ConfigError(f"{where}: hosts must be a list of strings")
        revoked_at = raw["revoked_at"]
        return cls(
            serial=raw["serial"],
            name=raw["name"],
            role=raw["role"],
            hosts=tuple(hosts),
            not_before=_parse_time(raw["not_before"], f"{where}: not_before"),
            not_after=_parse_time(raw["not_after"], f"{where}: not_after"),
            status=raw["status"],
            revoked_at=None if revoked_at is None else _parse_time(revoked_at, f"{where}: at"),
            reason=raw["reason"] if isinstance(raw["reason"], str) else None,
            key_sha256=raw["key_sha256"],
        )

    def revoked(self, at: dt.datetime, reason: str) -> Entry:
        return replace(self, status="revoked", revoked_at=at, reason=reason)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass
class Index:
    """The index of one CA directory (``load``, change ``entries``/``crl_number``, ``save``)."""

    path: Path
    entries: list[Entry]
    crl_number: int = 0

    @classmethod
    def load(cls, root: Path, ca: x509.Certificate) -> Index:
        """Read and verify ``root/index.json`` (its signature, its structure, against crl.pem).

        A CA made before the index existed (no ``index.json`` and no ``crl.pem``) starts
        with an empty one.

        Raises:
            ConfigError: the file is unreadable, malformed, not signed by this CA, or older
                than ``crl.pem`` (naming the file and what to do).
        """
        path = root / INDEX
        if not path.exists():
            if (root / CRL).exists():
                raise ConfigError(
                    f"{path}: missing, but {root / CRL} exists: the serial index was deleted; "
                    "restore it from your backup of the CA directory"
                )
            return cls(path, [])
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a JSON serial index ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a trustspace serial index (format {FORMAT})")
        sig = doc.pop("signature", None)
        pub = ca.public_key()
        try:
            if not isinstance(sig, str) or not isinstance(pub, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            pub.verify(
                base64.b64decode(sig, validate=True),
                _DOMAIN + _canonical(doc),
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, ValueError):
            raise ConfigError(
                f"{path}: the serial index was modified outside trustspace (its CA signature "
                "does not verify); restore it from your backup of the CA directory"
            ) from None
        number = doc.get("crl_number")
        raw = doc.get("entries")
        if isinstance(number, bool) or not isinstance(number, int) or not isinstance(raw, list):
            raise ConfigError(f"{path}: crl_number or entries missing")
        entries = [Entry.from_json(e, f"{path}: entry {i}") for i, e in enumerate(raw)]
        if len({e.serial for e in entries}) != len(entries):
            raise ConfigError(f"{path}: a serial number appears twice")
        index = cls(path, entries, number)
        index._check_against_crl(root / CRL, ca)
        return index

    def _check_against_crl(self, crl_path: Path, ca: x509.Certificate) -> None:
        if not crl_path.exists():
            return
        try:
            crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        except ValueError:
            raise ConfigError(f"{crl_path}: not a PEM CRL; re-sign it with `ca crl`") from None
        if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            raise ConfigError(f"{crl_path}: not signed by this CA")
        number = crl_number(crl)
        revoked = {e.serial for e in self.entries if e.status == "revoked"}
        missing = [f"{r.serial_number:x}" for r in crl if f"{r.serial_number:x}" not in revoked]
        if number > self.crl_number or missing:
            raise ConfigError(
                f"{self.path}: older than {crl_path} (CRL number {number} > "
                f"{self.crl_number}, or serials revoked there and valid here: "
                f"{', '.join(missing[:3]) or '-'}): the index was rolled back; restore the "
                "latest copy from your backup"
            )

    def save(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Sign and write the index atomically (mode 0644: it holds no secret)."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "crl_number": self.crl_number,
            "entries": [e.to_json() for e in self.entries],
        }
        sig = key.sign(_DOMAIN + _canonical(doc), ec.ECDSA(hashes.SHA256()))
        doc["signature"] = base64.b64encode(sig).decode("ascii")
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

    def valid(self, name: str, now: dt.datetime) -> list[Entry]:
        """The entries of ``name`` that are neither revoked nor expired."""
        return [e for e in self.entries if e.name == name and e.effective_status(now) == "valid"]


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the CA directory's exclusive lock (``.lock``) for a read-modify-write."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
