"""The CA lifecycle: request -> sign -> list -> revoke -> CRL, attacked at each step.

A CSR that was altered, asks for a role or hosts it may not have, or for a name that is
already certified is refused; an index edited by hand or rolled back is refused; a CRL of
another CA is refused; and revoking (by name or serial) reaches running nodes and a running
aggregator without a restart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_node_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.api import Federation
from trustspace.cli.main import main
from trustspace.errors import AuthenticationError, ConfigError, PolicyError, ProtocolError
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.transport.ca import (
    Credentials,
    init_ca,
    issue,
    list_certificates,
    make_request,
    revoke,
    sign_request,
    write_crl,
)
from trustspace.transport.revocation import Revocations

ROOT = Path(__file__).resolve().parent.parent


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _serial(identity: Path) -> str:
    cert = x509.load_pem_x509_certificate((identity / "cert.pem").read_bytes())
    return f"{cert.serial_number:x}"


def _csr(
    path: Path,
    *,
    cn: str = "org-x",
    ou: str | None = "node",
    hosts: tuple[str, ...] = (),
    ca: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Path:
    """A CSR built by hand (as a hostile or careless organisation could)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if hosts:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    csr = b.sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", name="lifecycle")
    return tmp_path / "ca"


# ------------------------------------------------------------------ request -> sign
def test_csr_flow_end_to_end_by_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["ca", "init", "ca", "--data-space", "health-eu"]) == 0
    out = capsys.readouterr().out
    assert "data space name (the audience of signed queries): health-eu/" in out
    assert _mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    # the organisation, on its own machine
    args = ["ca", "request", "org-a", "--role", "node", "--host", "a.example.org"]
    assert main([*args, "--out", "org"]) == 0
    said = capsys.readouterr().out
    org = tmp_path / "org"
    assert _mode(org / "key.pem") == 0o600
    assert sorted(p.name for p in org.iterdir()) == ["key.pem", "org-a.csr.pem"]
    assert b"PRIVATE" not in (org / "org-a.csr.pem").read_bytes()
    fingerprint = said.split("second channel: ")[1].split()[0]
    # the CA operator: the CSR travels alone (a copy in an inbox, no key next to it)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(org / "org-a.csr.pem", inbox)
    assert main(["ca", "sign", "ca", "inbox/org-a.csr.pem", "--days", "30"]) == 0
    signed = capsys.readouterr().out
    assert fingerprint in signed and "a.example.org" in signed
    assert sorted(p.name for p in inbox.iterdir()) == ["ca.pem", "cert.pem", "org-a.csr.pem"]
    for f in ("cert.pem", "ca.pem"):
        shutil.copy(inbox / f, org)
        assert b"PRIVATE" not in (inbox / f).read_bytes()
    creds = Credentials.from_dir(org, expected_role="node")
    assert (creds.name, creds.role) == ("org-a", "node")
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "a.example.org" in sans.get_values_for_type(x509.DNSName)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    assert main(["ca", "list", "ca", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["role"], row["status"]) == ("org-a", "node", "valid")
    assert row["serial"] == f"{cert.serial_number:x}"
    assert row["key_sha256"] == fingerprint
    # the CA's key file is the only private key in the CA directory
    keys = [p.name for p in (tmp_path / "ca").rglob("*") if b"PRIVATE" in p.read_bytes()]
    assert keys == ["ca-key.pem"]


def test_sign_beside_the_request_by_default(ca: Path, tmp_path: Path) -> None:
    _key, csr = make_request("alice", "analyst", out_dir=tmp_path / "alice")
    done = sign_request(ca, csr)
    assert done.out == tmp_path / "alice"
    Credentials.from_dir(tmp_path / "alice", expected_role="analyst")


def test_a_forged_csr_signature_is_refused(ca: Path, tmp_path: Path) -> None:
    """The CN was altered after signing (org-a -> org-b, same length): the self-signature of
    the request no longer verifies."""
    _, csr = make_request("org-a", "node", out_dir=tmp_path / "a")
    der = x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"org-a") == 2  # CN and the name in the SAN
    forged = x509.load_der_x509_csr(der.replace(b"org-a", b"org-b"))
    bad = tmp_path / "org-b.csr.pem"
    bad.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"org-b\.csr\.pem: the request's signature does not"):
        sign_request(ca, bad, out_dir=tmp_path / "out")
    assert list_certificates(ca) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ou": "admin"}, r"role 'admin' is not one of node, aggregator, analyst"),
        ({"ou": None}, "exactly one role"),
        ({"cn": "bad name!"}, "name 'bad name!' is invalid"),
        ({"ca": True}, "asks to be a CA"),
        ({"ou": "analyst", "hosts": ("agg.example.org",)}, "analyst certificate is only ever"),
        ({"hosts": ("*.example.org",)}, r"host '\*\.example\.org' is neither"),
    ],
)
def test_sign_refuses_what_a_csr_may_not_ask_for(
    ca: Path, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    csr = _csr(tmp_path / "req.csr.pem", **kwargs)
    with pytest.raises(ConfigError, match=match):
        sign_request(ca, csr, out_dir=tmp_path / "out")
    assert list_certificates(ca) == []


def test_sign_refuses_a_foreign_key_type(ca: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = _csr(tmp_path / "req.csr.pem", key=key)
    with pytest.raises(ConfigError, match="not ECDSA P-256"):
        sign_request(ca, csr, out_dir=tmp_path / "out")


def test_a_name_holds_one_valid_certificate_until_replaced(ca: Path, tmp_path: Path) -> None:
    _, first = make_request("org-a", "node", out_dir=tmp_path / "v1")
    old = sign_request(ca, first)
    _, second = make_request("org-a", "node", out_dir=tmp_path / "v2")
    with pytest.raises(ConfigError, match=r"'org-a' already holds a valid certificate"):
        sign_request(ca, second)
    # a rotation keeps the role
    _, as_agg = make_request("org-a", "aggregator", out_dir=tmp_path / "v3")
    with pytest.raises(ConfigError, match="a rotation keeps the role"):
        sign_request(ca, as_agg, replace=True)
    new = sign_request(ca, second, replace=True)
    assert new.replaced == (old.serial,)
    # the same key twice is no rotation
    dup = tmp_path / "dup" / "org-a.csr.pem"
    dup.parent.mkdir()
    shutil.copy(first, dup)
    with pytest.raises(ConfigError, match="already certified by this CA"):
        sign_request(ca, dup, replace=True)
    # an expired certificate does not block the name; a revoked one neither
    revoke(ca, f"serial:{old.serial}", reason="superseded")
    revoke(ca, "org-a")
    _, third = make_request("org-a", "node", out_dir=tmp_path / "v4")
    sign_request(ca, third)
    assert [e.effective_status(dt.datetime.now(dt.UTC)) for e in list_certificates(ca)] == [
        "revoked",
        "revoked",
        "valid",
    ]


def test_sign_refuses_a_key_that_is_not_the_requests(ca: Path, tmp_path: Path) -> None:
    make_request("org-a", "node", out_dir=tmp_path / "a")
    csr = _csr(tmp_path / "a" / "other.csr.pem", cn="org-b")
    with pytest.raises(ConfigError, match=r"a/key\.pem is not the key of"):
        sign_request(ca, csr)


def test_request_and_issue_never_overwrite_an_identity(ca: Path, tmp_path: Path) -> None:
    ident = issue(ca, "org-a", "node")
    before = (ident / "key.pem").read_bytes()
    assert main(["ca", "issue", str(ca), "org-a", "--role", "node"]) == 2
    with pytest.raises(
        ConfigError, match=r"already holds cert\.pem and key\.pem.*--out.*--replace"
    ):
        issue(ca, "org-a", "node", replace=True)
    with pytest.raises(ConfigError, match=r"already holds key\.pem"):
        make_request("org-a", "node", out_dir=ident)
    assert (ident / "key.pem").read_bytes() == before
    # elsewhere, a second valid certificate for the name needs --replace
    with pytest.raises(ConfigError, match="already holds a valid certificate"):
        issue(ca, "org-a", "node", out_dir=tmp_path / "again")
    issue(ca, "org-a", "node", out_dir=tmp_path / "again", replace=True)


def test_init_needs_a_name_and_never_overwrites(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["ca", "init", str(tmp_path / "ca")])
    assert main(["ca", "init", str(tmp_path / "ca"), "--data-space", "a/b"]) == 2
    assert main(["ca", "init", str(tmp_path / "ca"), "--name", "space-one"]) == 0
    assert main(["ca", "init", str(tmp_path / "ca"), "--data-space", "space-two"]) == 2
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "space-one"


# ------------------------------------------------------------------ index
def test_list_shows_revoked_and_expired(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    issue(ca, "old", "node", not_before=past, not_after=past + dt.timedelta(days=1))
    issue(ca, "bob", "analyst")
    issue(ca, "agg", "aggregator", hosts=("agg.example.org",))
    assert main(["ca", "revoke", str(ca), "bob", "--reason", "key-compromise"]) == 0
    capsys.readouterr()
    assert main(["ca", "list", str(ca)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SERIAL", "NAME", "ROLE", "NOT", "AFTER", "STATUS"]
    status = {ln.split()[1]: ln.split()[5] for ln in table[1:]}
    assert status == {"old": "expired", "bob": "revoked", "agg": "valid"}
    assert "(key-compromise)" in next(ln for ln in table if " bob " in ln)
    assert main(["ca", "list", str(ca), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["agg"]["hosts"] == ["agg", "localhost", "127.0.0.1", "agg.example.org"]
    assert rows["bob"]["revoked_at"] is not None and rows["old"]["status"] == "expired"


def test_a_tampered_index_is_refused(ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issue(ca, "bob", "analyst")
    revoke(ca, "bob")
    path = ca / "index.json"
    doc = json.loads(path.read_text())
    doc["entries"][0]["status"] = "valid"  # un-revoke bob by hand
    path.write_text(json.dumps(doc))
    for call in (["list"], ["crl"], ["revoke", "bob"]):
        assert main(["ca", call[0], str(ca), *call[1:]]) == 2
        assert "modified outside trustspace" in capsys.readouterr().err
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"index\.json: not a JSON serial index"):
        list_certificates(ca)


def test_a_rolled_back_index_is_refused(ca: Path) -> None:
    issue(ca, "bob", "analyst")
    saved = (ca / "index.json").read_bytes()  # a signed copy from before the revocation
    revoke(ca, "bob")
    (ca / "index.json").write_bytes(saved)
    with pytest.raises(ConfigError, match="rolled back"):
        issue(ca, "carol", "analyst")
    (ca / "index.json").unlink()
    with pytest.raises(ConfigError, match="the serial index was deleted"):
        list_certificates(ca)


def test_revoke_by_name_serial_and_errors(ca: Path, tmp_path: Path) -> None:
    a = issue(ca, "bob", "analyst")
    b = issue(ca, "bob", "analyst", out_dir=tmp_path / "bob2", replace=True)
    c = issue(ca, "carol", "analyst")
    done = revoke(ca, "bob", reason="affiliation-changed")
    assert {e.serial for e in done} == {_serial(a), _serial(b)}
    with pytest.raises(ConfigError, match="revoked already"):
        revoke(ca, "bob")
    serial = _serial(c).upper()  # as openssl prints it
    (done1,) = revoke(ca, serial)
    assert done1.name == "carol"
    with pytest.raises(ConfigError, match="was revoked already"):
        revoke(ca, f"serial:{serial}")
    with pytest.raises(ConfigError, match="no certificate of this name or serial"):
        revoke(ca, "nobody")
    with pytest.raises(ConfigError, match="reason 'because'"):
        revoke(ca, "carol", reason="because")
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert {r.serial_number for r in crl} == {int(_serial(p), 16) for p in (a, b, c)}
    assert crl.is_signature_valid(
        x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes()).public_key()  # type: ignore[arg-type]
    )
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    write_crl(ca)
    again = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert again.next_update_utc is not None and again.next_update_utc > dt.datetime.now(dt.UTC)


def test_concurrent_signing_loses_no_entry(ca: Path, tmp_path: Path) -> None:
    names = [f"org-{i}" for i in range(8)]
    reqs = [make_request(n, "node", out_dir=tmp_path / n)[1] for n in names]
    errors: list[BaseException] = []

    def sign(csr: Path) -> None:
        try:
            sign_request(ca, csr)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sign, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(e.name for e in list_certificates(ca)) == sorted(names)


# ------------------------------------------------------------------ the checker
def _other_crl(tmp_path: Path) -> Path:
    init_ca(tmp_path / "rogue", name="lifecycle")  # same name, another key
    issue(tmp_path / "rogue", "x", "analyst")
    revoke(tmp_path / "rogue", "x")
    return tmp_path / "rogue" / "crl.pem"


def test_a_crl_of_another_ca_is_refused_in_config_and_reload(
    ca: Path, tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    ca_pem = (ca / "ca.pem").read_bytes()
    rogue = _other_crl(tmp_path)
    with pytest.raises(ConfigError, match=r"rogue/crl\.pem: this revocation list is not signed"):
        Revocations(ca_pem, crl=rogue)
    # in a node config: the node does not start
    cfg = write_node_config(
        tmp_path / "n1.toml",
        name="n1",
        identity=pki / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "n1.jsonl",
    )
    cfg.write_text(cfg.read_text().replace("[tls]\n", f'[tls]\ncrl = "{rogue}"\n'))
    with pytest.raises(ConfigError, match="not signed by the data space CA"):
        Node(load_node_config(cfg))
    # at a reload: the list in force stays
    issue(ca, "bob", "analyst")
    revoke(ca, "bob")
    live = tmp_path / "live.pem"
    shutil.copy(ca / "crl.pem", live)
    rev = Revocations(ca_pem, crl=live)
    bob = (ca / "bob" / "cert.pem").read_bytes()
    assert "revoked by the CA" in rev.check(bob)
    shutil.copy(rogue, live)
    with pytest.raises(ConfigError, match="not signed by the data space CA"):
        rev.reload()
    assert "revoked by the CA" in rev.check(bob)
    live.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"not an X\.509 revocation list"):
        rev.reload()
    live.unlink()
    with pytest.raises(ConfigError, match="not readable"):
        rev.reload()
    assert "revoked by the CA" in rev.check(bob)


def test_reload_refuses_a_rollback_and_applies_a_stale_crl(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca_pem = (ca / "ca.pem").read_bytes()
    bob = issue(ca, "bob", "analyst")
    carol = issue(ca, "carol", "analyst")
    write_crl(ca)
    first = (ca / "crl.pem").read_bytes()  # nobody revoked
    revoke(ca, "bob")
    live = tmp_path / "crl.pem"
    shutil.copy(ca / "crl.pem", live)
    rev = Revocations(ca_pem, crl=live, recheck_s=0.0)
    assert rev.check((bob / "cert.pem").read_bytes())
    live.write_bytes(first)  # an attacker replays the older list
    with pytest.raises(ConfigError, match="older than the one in force"):
        rev.reload()
    assert rev.check((bob / "cert.pem").read_bytes())
    # a list past its next update still revokes what it lists, with a warning
    key = serialization.load_pem_private_key((ca / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    stale = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(past - dt.timedelta(days=7))
        .next_update(past)
        .add_extension(x509.CRLNumber(99), False)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(_serial(carol), 16))
            .revocation_date(past - dt.timedelta(days=7))
            .build()
        )
        .sign(key, hashes.SHA256())
    )
    live.write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    with caplog.at_level(logging.WARNING, logger="trustspace.transport"):
        assert rev.check((carol / "cert.pem").read_bytes())  # picked up by the check itself
    assert "past its next update" in caplog.text
    assert rev.check((bob / "cert.pem").read_bytes()) == ""  # the new list is the whole truth


def test_static_list_and_unreadable_certificates(ca: Path) -> None:
    bob = issue(ca, "bob", "analyst")
    rev = Revocations((ca / "ca.pem").read_bytes(), revoked=(f"serial:{_serial(bob)}",))
    assert "on the revocation list" in rev.check((bob / "cert.pem").read_bytes())
    assert rev.check(b"garbage") == "unreadable certificate"
    assert Revocations((ca / "ca.pem").read_bytes()).check(b"garbage") == ""


def test_crl_path_is_relative_to_the_config_file(tmp_path: Path, pki: Path) -> None:
    cfg = tmp_path / "conf" / "agg.toml"
    cfg.parent.mkdir()
    cfg.write_text(
        f'[aggregator]\n[tls]\ndir = "{pki / "ca" / "agg"}"\ncrl = "pki/crl.pem"\n'
        '[[nodes]]\nname = "n1"\naddress = "127.0.0.1:1"\n'
    )
    assert load_aggregator_config(cfg).tls.crl == tmp_path / "conf" / "pki" / "crl.pem"
    with pytest.raises(ConfigError, match=r"conf/pki/crl\.pem: revocation list \(tls\.crl\) not"):
        Aggregator(load_aggregator_config(cfg))


def test_a_cached_query_is_refused_once_its_signer_is_revoked(ca: Path) -> None:
    """A node caches verified queries by signature (Paillier rounds reuse one query): the
    revocation must still apply to the cached query."""
    from trustspace.node._runs import Runs
    from trustspace.transport.signing import data_space_name, new_query

    alice = Credentials.from_dir(issue(ca, "alice", "analyst"))
    deny: set[str] = set()

    def check(pem: bytes) -> str:
        return "revoked for the test" if deny else ""

    runs = Runs(
        "n1",
        "node n1",
        ca_pem=alice.ca_pem,
        audience=data_space_name(alice.ca_pem),
        revoked=check,
    )
    q = new_query(alice, "count", "default")
    runs.verify(q)
    deny.add("alice")
    with pytest.raises(PolicyError, match=r"revoked (here|at this node)"):
        runs.verify(q)


# ------------------------------------------------------------------ live servers
def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, partitions: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    """A CA, three nodes reading CA/crl.pem and an aggregator reading its own copy agg-crl.pem
    (so a test decides which side learns of a revocation)."""
    root = tmp_path_factory.mktemp("live")
    ca = root / "ca"
    init_ca(ca, name="live-space")
    for name in ("n1", "n2", "n3"):
        issue(ca, name, "node")
    issue(ca, "agg", "aggregator")
    for name in ("alice", "carol", "dave"):
        issue(ca, name, "analyst")
    write_crl(ca)
    shutil.copy(ca / "crl.pem", root / "agg-crl.pem")
    nodes = {}
    for name in ("n1", "n2", "n3"):
        cfg = write_node_config(
            root / f"{name}.toml",
            name=name,
            identity=ca / name,
            data=partitions[name],
            audit=root / f"{name}.jsonl",
        )
        cfg.write_text(cfg.read_text().replace("[tls]\n", '[tls]\ncrl = "ca/crl.pem"\n'))
        nodes[name] = Node(load_node_config(cfg)).start()
    agg_cfg = root / "agg.toml"
    agg_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{ca / "agg"}"\ncrl = "agg-crl.pem"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{nodes[n].address}"\n' for n in nodes)
    )
    agg = Aggregator(load_aggregator_config(agg_cfg)).start()
    try:
        yield {"root": root, "ca": ca, "nodes": nodes, "agg": agg}
    finally:
        agg.stop(0)
        for n in nodes.values():
            n.stop(0)


def _count(live: dict[str, Any], who: str) -> float:
    creds = Credentials.from_dir(live["ca"] / who)
    with Federation.connect(live["agg"].address, creds, server_name="agg") as fed:
        return fed.count()


def test_revoking_by_name_reaches_running_nodes(live: dict[str, Any]) -> None:
    assert _count(live, "carol") > 0
    assert main(["ca", "revoke", str(live["ca"]), "carol"]) == 0
    t0 = time.monotonic()

    def refused() -> bool:
        try:
            _count(live, "carol")
        except PolicyError as exc:
            assert re.search("revoked (here|at this node)", str(exc))
            assert "revoked by the CA" in str(exc)
            return True
        return False

    _wait(refused)
    assert time.monotonic() - t0 < 8
    assert _count(live, "alice") > 0  # the others are served
    deny = [
        json.loads(ln)
        for ln in (live["root"] / "n1.jsonl").read_text().splitlines()
        if '"deny"' in ln
    ]
    assert any("carol" in d["reason"] and "revoked" in d["reason"] for d in deny)
    # every place of the node consults one object
    service = live["nodes"]["n1"].service
    assert service.revocations.crl is not None and service.revocations.crl.number >= 2
    # the node says in its audit log that it took the new list up by itself

    def crl_lines() -> list[dict[str, Any]]:
        lines = (live["root"] / "n1.jsonl").read_text().splitlines()
        return [
            r
            for r in map(json.loads, lines)
            if r.get("event") == "config.reload" and r.get("via") == "crl-file"
        ]

    _wait(lambda: bool(crl_lines()))
    rec = crl_lines()[-1]
    assert rec["decision"] == "allow" and "tls.crl" in rec["changed"]
    before, after = rec["changed"]["tls.crl"]
    assert "number 1, 0 serial(s)" in before and "number 2, 1 serial(s)" in after
    # taken up already: a later reload (of a policy edit, say) does not report it again
    report = live["nodes"]["n1"].reload()
    assert report.applied and "tls.crl" not in report.changed, report.changed


def test_revoking_by_serial_reaches_the_running_aggregator(live: dict[str, Any]) -> None:
    assert _count(live, "dave") > 0
    serial = _serial(live["ca"] / "dave")
    assert main(["ca", "revoke", str(live["ca"]), serial, "--reason", "key-compromise"]) == 0
    shutil.copy(live["ca"] / "crl.pem", live["root"] / "agg-crl.pem")

    def refused() -> bool:
        try:
            _count(live, "dave")
        except AuthenticationError as exc:
            assert "revoked" in str(exc) and serial in str(exc)
            return True
        except PolicyError:
            return False  # a node noticed first; the aggregator must too
        return False

    _wait(refused)
    assert _count(live, "alice") > 0


def test_revoking_a_node_reaches_the_other_nodes_rosters(live: dict[str, Any]) -> None:
    """n3's certificate revoked: n1 and n2 refuse to run secure aggregation with it."""
    assert main(["ca", "revoke", str(live["ca"]), "n3"]) == 0

    def refused() -> bool:
        try:
            _count(live, "alice")
        except ProtocolError as exc:
            assert "roster entry of n3" in str(exc) and "revoked" in str(exc)
            return True
        return False

    _wait(refused)


def test_sighup_runs_on_hup_and_survives_its_error() -> None:
    """serve_until_signal runs ``on_hup`` per SIGHUP (an error does not stop the server) and
    drains on SIGTERM."""
    from trustspace.cli._serve import serve_until_signal

    calls: list[int] = []
    stopped: list[float | None] = []

    class Server:
        def stop(self, grace: float | None = None) -> None:
            stopped.append(grace)

    def on_hup() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConfigError("bad crl")

    def poke() -> None:
        for sig in (signal.SIGHUP, signal.SIGHUP, signal.SIGTERM):
            time.sleep(0.6)
            os.kill(os.getpid(), sig)

    before = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup, else SIG_DFL
    t = threading.Thread(target=poke)
    t.start()
    assert serve_until_signal(Server(), "test", 0.1, "ready", on_hup=on_hup) == 0
    t.join()
    assert calls == [1, 1] and stopped == [0.1]
    assert signal.getsignal(signal.SIGHUP) is before  # put back as it was


# ------------------------------------------------------------------ the docs run as written
def test_operations_certificate_lifecycle_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Certificate lifecycle", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "no sh blocks in 'Certificate lifecycle'"
    script = (
        "set -euo pipefail\n"
        f'trustspace() {{ "{sys.executable}" -m trustspace.cli.main "$@"; }}\n' + "\n".join(blocks)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    creds = Credentials.from_dir(tmp_path / "org-a", expected_role="node")
    status = {(e.name, e.serial): e.status for e in list_certificates(tmp_path / "ca")}
    assert status[("org-a", _serial(tmp_path / "org-a"))] == "valid"
    assert status[("org-a", _serial(tmp_path / "org-a.old"))] == "revoked"
    assert status[("alice", _serial(tmp_path / "alice"))] == "revoked"
    crl = Revocations(creds.ca_pem, crl=tmp_path / "org-a" / "crl.pem")
    assert crl.check((tmp_path / "org-a.old" / "cert.pem").read_bytes())
    assert crl.check(creds.cert_pem) == ""


def _count_at(address: str, creds: Credentials) -> float:
    with Federation.connect(address, creds, server_name="op") as fed:
        return fed.count()


@pytest.mark.slow
def test_aggregator_process_reloads_its_crl_on_sighup(
    tmp_path: Path, partitions: dict[str, Path]
) -> None:
    """A real ``trustspace aggregator`` process: a revocation copied to its tls.crl and
    announced by SIGHUP is in force for the next call; a bad file on SIGHUP keeps the list."""
    import re
    import subprocess
    import sys

    ca = tmp_path / "ca"
    init_ca(ca, name="process-space")
    for name, role in (("n1", "node"), ("n2", "node"), ("op", "aggregator")):
        issue(ca, name, role)
    for name in ("alice", "dave"):
        issue(ca, name, "analyst")
    write_crl(ca)
    shutil.copy(ca / "crl.pem", tmp_path / "agg-crl.pem")
    procs: list[subprocess.Popen[str]] = []
    logs: dict[str, Path] = {}
    handles: list[Any] = []

    def start(name: str, args: list[str]) -> str:
        logs[name] = tmp_path / f"{name}.log"
        handles.append(logs[name].open("w"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustspace.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=handles[-1],
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        m = re.search(r"on (127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert m is not None, logs[name].read_text()
        return m.group(1)

    try:
        nodes = {}
        for name in ("n1", "n2"):
            cfg = write_node_config(
                tmp_path / f"{name}.toml",
                name=name,
                identity=ca / name,
                data=partitions[name],
                audit=tmp_path / f"{name}.jsonl",
            )
            nodes[name] = start(name, ["node", str(cfg)])
        agg_cfg = tmp_path / "aggregator.toml"
        agg_cfg.write_text(
            '[aggregator]\nlisten = "127.0.0.1:0"\ndrain_grace_s = 5\n'
            f'[tls]\ndir = "{ca / "op"}"\ncrl = "agg-crl.pem"\n'
            + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{a}"\n' for n, a in nodes.items())
        )
        agg = start("aggregator", ["aggregator", str(agg_cfg)])
        dave = Credentials.from_dir(ca / "dave")
        with Federation.connect(agg, dave, server_name="op") as fed:
            assert fed.count() > 0
        revoke(ca, "dave")
        shutil.copy(ca / "crl.pem", tmp_path / "agg-crl.pem")
        procs[-1].send_signal(signal.SIGHUP)
        _wait(lambda: "revocation list reloaded" in logs["aggregator"].read_text())
        with pytest.raises(AuthenticationError, match="revoked"):
            _count_at(agg, dave)
        (tmp_path / "agg-crl.pem").write_bytes(b"not a crl")
        procs[-1].send_signal(signal.SIGHUP)
        _wait(lambda: "not an X.509 revocation list" in logs["aggregator"].read_text())
        assert procs[-1].poll() is None  # still serving, with the old list
        with pytest.raises(AuthenticationError, match="revoked"):
            _count_at(agg, dave)
        alice = Credentials.from_dir(ca / "alice")
        with Federation.connect(agg, alice, server_name="op") as fed:
            assert fed.count() > 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        for h in handles:
            h.close()
    assert all(p.returncode == 0 for p in procs)
