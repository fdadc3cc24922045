"""Mutual TLS for every connection: server credentials, secure channels and a pre-flight check.

There is no insecure mode. A server requires a client certificate from the data space CA; a
client verifies the server's certificate chain and host name. Because gRPC reports a refused
handshake only as "failed to connect", a client first runs a short pre-flight handshake with
Python's ``ssl`` module and turns its outcome into a clear ``AuthenticationError`` (foreign CA,
expired certificate, wrong host name, the server refused our certificate, or the server has
the wrong role).
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from trustspace.errors import AuthenticationError, ConfigError, NodeError
from trustspace.transport.ca import (
    Credentials,
    check_issued_by,
    check_validity,
    identity_of,
    write_private,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 3072-bit ciphertext vector of ~80k entries fits
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
PREFLIGHT_TIMEOUT_S = 10.0
#: A restarted peer is tried again within this many ms (gRPC's default backoff grows to 120 s,
#: so a node back after a crash would be treated as down for up to two minutes).
MAX_RECONNECT_BACKOFF_MS = 5000
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    """Server side of mutual TLS: our key pair, client certificates required from our CA."""
    return grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_pem)],
        root_certificates=creds.ca_pem,
        require_client_auth=True,
    )


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); raises ``ConfigError`` naming the target."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def secure_channel(target: str, creds: Credentials, server_name: str | None = None) -> grpc.Channel:
    """A mutual-TLS channel to ``target``; ``server_name`` is the name the server's certificate
    must carry (default: the host of ``target``)."""
    options = [*GRPC_OPTIONS, ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    chan_creds = grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )
    return grpc.secure_channel(target, chan_creds, options=options)


def preflight(
    target: str,
    creds: Credentials,
    *,
    expected_role: str | None,
    server_name: str | None = None,
    timeout: float = PREFLIGHT_TIMEOUT_S,
) -> str:
    """Handshake with ``target`` once and check the server's certificate; returns its name.

    Raises:
        ConfigError: ``target`` is not ``HOST:PORT``.
        NodeError: nothing answers at ``target``.
        AuthenticationError: the handshake failed (with the reason), or the server's
            certificate has the wrong role (``expected_role``; None: any role).
    """
    check_own_credentials(creds, "our certificate")
    host, port = split_target(target)
    check_name = server_name or host
    ctx = _client_context(creds)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise NodeError(f"cannot reach {target}: {exc.strerror or exc}") from None
    try:
        with ctx.wrap_socket(raw, server_hostname=check_name) as tls:
            peer_der = tls.getpeercert(binary_form=True)
            tls.sendall(_H2_PREFACE)
            # TLS 1.3 sends a refusal of our certificate only after the handshake: read the
            # server's HTTP/2 SETTINGS frame (or its alert).
            answer = tls.recv(9)
    except ssl.SSLCertVerificationError as exc:
        presented = _presented(host, port, creds, timeout) if _is_name_error(exc) else None
        raise AuthenticationError(
            _explain_verify(target, check_name, exc, presented, by_host=server_name is None)
        ) from None
    except ssl.SSLError as exc:
        raise AuthenticationError(_explain_alert(target, creds, exc)) from None
    except OSError as exc:
        raise NodeError(f"TLS handshake with {target} failed: {exc}") from None
    finally:
        raw.close()
    if not answer:
        raise AuthenticationError(
            f"the server at {target} closed the connection after the handshake: it refused "
            f"our certificate ({creds.identity}); is it issued by the same CA as the server's?"
        )
    if not peer_der:
        raise AuthenticationError(f"{target} presented no certificate")
    peer = identity_of(x509.load_der_x509_certificate(peer_der))
    if expected_role is not None and peer.role != expected_role:
        raise AuthenticationError(
            f"{target} presents the certificate of {peer.name!r} with role {peer.role!r}, "
            f"but a {expected_role!r} was expected; check the address in your configuration"
        )
    return peer.name


def _client_context(creds: Credentials, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The pre-flight's TLS client context: our identity, our CA, TLS 1.2+, HTTP/2."""
    with tempfile.TemporaryDirectory(prefix="trustspace-tls-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_private(cert_file, creds.cert_pem)
        write_private(key_file, creds.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=creds.ca_pem.decode("ascii"))
        ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.check_hostname = check_hostname  # the chain is verified either way (CERT_REQUIRED)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _is_name_error(exc: ssl.SSLCertVerificationError) -> bool:
    reason = str(exc.verify_message or exc).lower()
    return "hostname" in reason or "ip address" in reason


def _presented(host: str, port: int, creds: Credentials, timeout: float) -> x509.Certificate | None:
    """The certificate the server presents, its chain verified but not its name (to say
    which server answered when the name check failed); None if that handshake fails too."""
    ctx = _client_context(creds, check_hostname=False)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def _explain_verify(
    target: str,
    name: str,
    exc: ssl.SSLCertVerificationError,
    presented: x509.Certificate | None = None,
    *,
    by_host: bool = False,
) -> str:
    """Why the server's certificate was refused, for a person. A name mismatch says which
    name was presented and which expected, and never advises re-issuing a certificate to
    make them match: that would defeat the check that we reach the right server."""
    reason = str(exc.verify_message or exc)
    if "expired" in reason:
        return (
            f"the server at {target} presents an expired certificate; its operator must "
            "renew it (`trustspace ca request`, then `ca sign --replace` at the CA)"
        )
    if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
        return (
            f"the server at {target} presents a certificate not issued by our data space CA; "
            "check that both sides use the same ca.pem"
        )
    if _is_name_error(exc):
        got = "a certificate"
        if presented is not None:
            try:
                who = identity_of(presented)
                got = f"the certificate of {who.name!r} (role {who.role})"
            except AuthenticationError:
                got = f"the certificate {presented.subject.rfc4514_string()}"
            names = _cert_names(presented)
            if names:
                got += f", valid for {', '.join(names)}"
        if by_host:
            return (
                f"the server at {target} presented {got}, but {name!r} (the host of the "
                f"address) was expected: the address probably points to another server, or "
                f"the certificate does not carry the name {name!r}. If it is the server you "
                "meant, connect with the name its certificate carries (server_name= / "
                "--server-name); otherwise fix the address"
            )
        return (
            # the address may be in a config ([[nodes]]) or on a command line (health)
            f"the server at {target} presented {got}, but {name!r} was expected: the "
            f"address probably points to the wrong server (or the "
            f"certificate of {name!r} does not carry that name); fix the address. Do not "
            "re-issue a certificate to make the names match: the check is what tells you "
            "that you reached the right server"
        )
    return f"the certificate of the server at {target} was refused: {reason}"


def _explain_alert(target: str, creds: Credentials, exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc).lower()
    ours = f"our certificate ({creds.identity})"
    if "expired" in reason:
        return f"the server at {target} refused {ours}: it has expired"
    if "unknown_ca" in reason or "unknown ca" in reason or "certificate_unknown" in reason:
        return (
            f"the server at {target} refused {ours}: it was not issued by the server's CA; "
            "use a certificate from the data space CA"
        )
    if (
        "certificate_required" in reason
        or "bad_certificate" in reason
        or "bad certificate" in reason
    ):
        return f"the server at {target} refused {ours} ({exc.reason})"
    return f"TLS handshake with {target} failed: {exc.reason or exc}"


def check_own_credentials(creds: Credentials, where: str) -> None:
    """Re-check our own certificate before serving or connecting (expiry may come later)."""
    ca = x509.load_pem_x509_certificate(creds.ca_pem)
    own = x509.load_pem_x509_certificate(creds.cert_pem)
    check_issued_by(own, ca, where)
    check_validity(own, where)
