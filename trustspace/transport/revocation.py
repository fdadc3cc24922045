"""The one revocation checker of a server: ``[tls] revoked`` plus the CA's signed CRL, reloadable.

``Revocations.load(tls, ca_pem)`` builds it from a server's ``[tls]`` table: the static deny
list ``revoked`` (certificate names and ``serial:HEX``) and, with ``crl = "path"``, the X.509
revocation list that ``trustspace ca revoke`` writes. ``check(pem)`` says why a certificate is
revoked ("" if it is not). A node consults one instance for the aggregator calling it, for the
analyst who signed each query and for every secure-aggregation roster entry; the aggregator
for every analyst calling it. Replacing its content (``reload``) takes effect at all of them.

Live pick-up: ``check`` looks at the CRL file's modification time and size at most every
``RECHECK_S`` seconds and reloads it when they changed; ``reload()`` does so at once (SIGHUP).
A CRL that is unreadable, not signed by the data space CA, for another issuer, or older than
the loaded one (a lower CRL number: a rollback) is refused and the loaded list stays in force
(fail closed). A CRL past its ``next_update`` is still applied, with a warning: a stale list
still revokes what it lists.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from trustspace._config import TlsConfig
from trustspace.errors import ConfigError

__all__ = ["RECHECK_S", "CrlInfo", "Revocations", "crl_number", "parse_revoked"]

log = logging.getLogger("trustspace.transport")
RECHECK_S = 2.0  # a replaced CRL file is in force within this long; a stat() per period


def parse_revoked(revoked: tuple[str, ...]) -> tuple[frozenset[str], frozenset[int]]:
    """The names and the serial numbers of a ``[tls] revoked`` list."""
    names = frozenset(r for r in revoked if not r.lower().startswith("serial:"))
    serials = frozenset(
        int(r.split(":", 1)[1], 16) for r in revoked if r.lower().startswith("serial:")
    )
    return names, serials


@functools.lru_cache(maxsize=512)
def _subject(pem: bytes) -> tuple[int, str] | None:
    """(serial, common name) of a PEM certificate; None if it does not parse."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    cns = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return cert.serial_number, str(cns[0].value) if cns else ""


@dataclass(frozen=True)
class CrlInfo:
    """A loaded CRL: its number, update times, revoked serials and the file's fingerprint."""

    path: Path
    number: int
    last_update: dt.datetime
    next_update: dt.datetime | None
    serials: frozenset[int]
    stamp: tuple[int, int]  # (mtime_ns, size) when read
    digest: str

    def describe(self) -> str:
        nxt = f"{self.next_update:%Y-%m-%d %H:%M} UTC" if self.next_update else "none"
        return f"CRL {self.path} number {self.number}, {len(self.serials)} serial(s), next {nxt}"


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's number (its CRLNumber extension; 0 without one): a higher one is newer."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def read_crl(path: Path, ca_pem: bytes) -> CrlInfo:
    """Read ``path`` and check it is a CRL of the data space CA ``ca_pem``.

    Raises:
        ConfigError: missing, unreadable, for another issuer, or its signature does not verify
            under the CA's key (naming the file and what to do).
    """
    try:
        stamp = _stamp(path)
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: revocation list (tls.crl) not readable: {exc.strerror}"
        ) from None
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError:
        raise ConfigError(
            f"{path}: not an X.509 revocation list (tls.crl); copy crl.pem from the CA "
            "directory (`trustspace ca revoke` / `ca crl` write it)"
        ) from None
    ca = x509.load_pem_x509_certificate(ca_pem)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ConfigError(
            f"{path}: this revocation list is not signed by the data space CA "
            f"{ca.subject.rfc4514_string()} (it names {crl.issuer.rfc4514_string()}); use the "
            "crl.pem of this data space's CA"
        )
    return CrlInfo(
        path,
        crl_number(crl),
        crl.last_update_utc,
        crl.next_update_utc,
        frozenset(r.serial_number for r in crl),
        stamp,
        hashlib.sha256(data).hexdigest(),
    )


@dataclass(frozen=True)
class _State:
    names: frozenset[str]
    serials: frozenset[int]
    crl: CrlInfo | None
    crl_path: Path | None

    @property
    def empty(self) -> bool:
        return not self.names and not self.serials and self.crl_path is None


class Revocations:
    """Why a peer's certificate is revoked: ``check(pem)``; ``reload()`` re-reads the CRL.

    Thread-safe: the lists are one immutable state swapped whole, so a check sees either the
    old or the new list, never a mix.
    """

    def __init__(
        self,
        ca_pem: bytes,
        *,
        revoked: tuple[str, ...] = (),
        crl: Path | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        """Raises ConfigError if ``crl`` is missing, unreadable or not signed by the CA."""
        self._ca = ca_pem
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._state = self._build(revoked, crl)
        self._next_look = time.monotonic() + recheck_s
        self._bad: str | None = None  # the digest/stamp of a refused file, logged once
        self._warned_stale: int | None = None
        #: told ``(applied, before, after or the error)`` when a changed CRL file is taken up
        #: (or refused) by itself, between reloads; a node records it in its audit log
        self.listener: Callable[[bool, str, str], None] | None = None
        self._warn_if_stale(self._state.crl)

    @classmethod
    def load(cls, tls: TlsConfig, ca_pem: bytes) -> Revocations:
        """From a ``[tls]`` table: its ``revoked`` list and its ``crl`` file (if any)."""
        return cls(ca_pem, revoked=tls.revoked, crl=tls.crl)

    def _build(self, revoked: tuple[str, ...], crl: Path | None) -> _State:
        names, serials = parse_revoked(revoked)
        info = read_crl(crl, self._ca) if crl is not None else None
        return _State(names, serials, info, crl)

    # ---------------------------------------------------------------- checking
    def check(self, pem: bytes) -> str:
        """Why ``pem`` is revoked ("" if it is not). An unparsable certificate counts as
        revoked (fail closed). Picks up a changed CRL file (at most every ``RECHECK_S``)."""
        self._maybe_reload()
        state = self._state
        if state.empty:
            return ""
        subject = _subject(bytes(pem))
        if subject is None:
            return "unreadable certificate"
        serial, name = subject
        if name in state.names:
            return f"name {name!r} is on the revocation list"
        if serial in state.serials:
            return f"serial {serial:x} is on the revocation list"
        if state.crl is not None and serial in state.crl.serials:
            return f"serial {serial:x} is revoked by the CA (CRL number {state.crl.number})"
        return ""

    __call__ = check

    @property
    def crl(self) -> CrlInfo | None:
        """The CRL in force (None without ``tls.crl``)."""
        return self._state.crl

    def check_line(self) -> str:
        """What ``node --check`` and ``aggregator --check`` say of ``[tls] revoked`` and
        ``crl`` ("" when neither is set). A missing, foreign or broken CRL raised already, in
        ``load``, as at a start."""
        s = self._state
        if s.empty:
            return ""
        line = f"revocation: {self.describe()}"
        nxt = s.crl.next_update if s.crl is not None else None
        if nxt is not None and nxt < dt.datetime.now(dt.UTC):
            line += (
                " (past its next update: still applied, but re-sign it with `trustspace ca "
                "crl` and copy it here)"
            )
        return line

    def describe(self) -> str:
        """One line for logs: what is in force."""
        s = self._state
        parts = [f"{len(s.names)} name(s) and {len(s.serials)} serial(s) in tls.revoked"]
        if s.crl is not None:
            parts.append(s.crl.describe())
        return "; ".join(parts)

    # ---------------------------------------------------------------- reloading
    def reload(self, tls: TlsConfig | None = None, *, force: bool = False) -> bool:
        """Re-read the CRL file if it changed (or adopt ``tls``'s ``revoked`` and ``crl``).

        The file counts as changed when its modification time or size did, or always with
        ``force`` (SIGHUP: the operator asked). Validates first: on any error the lists in
        force stay as they were and the error is raised. Returns whether anything changed.

        Raises:
            ConfigError: the new CRL file is missing, unreadable, not signed by the data
                space CA, or has a lower CRL number than the one in force (a rollback).
        """
        with self._lock:
            old = self._state
            if tls is not None:
                new = self._build(tls.revoked, tls.crl)
            elif old.crl_path is None:
                return False
            else:
                assert old.crl is not None
                try:
                    if not force and _stamp(old.crl_path) == old.crl.stamp:
                        return False
                except OSError:
                    pass  # read_crl raises the clear error
                info = read_crl(old.crl_path, self._ca)
                if info.digest == old.crl.digest:
                    self._state = _State(old.names, old.serials, info, old.crl_path)
                    return False
                new = _State(old.names, old.serials, info, old.crl_path)
            _refuse_rollback(old, new)
            changed = new != old
            self._state = new
            self._bad = None
        if changed:
            log.info("revocation list reloaded: %s", self.describe())
            self._warn_if_stale(new.crl)
        return changed

    def successor(self, tls: TlsConfig) -> Revocations:
        """A checker for ``tls`` (a node's live reload), validated as ``reload`` validates (a
        CRL that is unreadable, not signed by the data space CA or older than the one in force
        raises ConfigError); this one is left as it is, so the caller swaps only once the rest
        of the new configuration is validated too."""
        new = Revocations(self._ca, revoked=tls.revoked, crl=tls.crl, recheck_s=self._recheck_s)
        _refuse_rollback(self._state, new._state)
        return new

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_look or self._state.crl_path is None:
            return
        self._next_look = now + self._recheck_s
        before = self.describe()
        try:
            changed = self.reload()
        except ConfigError as exc:
            msg = str(exc)
            if msg != self._bad:  # once per distinct problem, not on every call
                self._bad = msg
                log.error("%s; the previous revocation list stays in force", msg)
                self._tell(False, before, msg)
        else:
            if changed:
                self._tell(True, before, self.describe())
        self._warn_if_stale(self._state.crl)

    def _tell(self, applied: bool, before: str, after_or_error: str) -> None:
        """Report a CRL file taken up (or refused) by itself to ``listener`` (a node audits it)."""
        if self.listener is None:
            return
        try:
            self.listener(applied, before, after_or_error)
        except Exception:  # reporting must never break a revocation check
            log.exception("revocation list: the change listener failed")

    def _warn_if_stale(self, crl: CrlInfo | None) -> None:
        if crl is None or crl.next_update is None:
            return
        if dt.datetime.now(dt.UTC) > crl.next_update and self._warned_stale != crl.number:
            self._warned_stale = crl.number
            log.warning(
                "%s: the revocation list is past its next update (%s UTC); it is still applied. "
                "Ask the CA operator for a fresh one (`trustspace ca crl`)",
                crl.path,
                f"{crl.next_update:%Y-%m-%d %H:%M}",
            )


def _refuse_rollback(old: _State, new: _State) -> None:
    """ConfigError if ``new`` puts an older CRL of the same file in force than ``old``."""
    if (
        new.crl is not None
        and old.crl is not None
        and new.crl_path == old.crl_path
        and new.crl.number < old.crl.number
    ):
        raise ConfigError(
            f"{new.crl.path}: CRL number {new.crl.number} is older than the one in force "
            f"({old.crl.number}); refusing to roll the revocation list back (copy the latest "
            "crl.pem from the CA)"
        )
