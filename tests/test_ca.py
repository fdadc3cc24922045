"""The CA: init/issue, role in the certificate, 0600 keys, refusal of foreign/expired/wrong role."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from trustspace.cli.main import main
from trustspace.errors import AuthenticationError, ConfigError
from trustspace.transport.ca import Credentials, init_ca, issue


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_cli_init_and_issue_write_0600_keys_and_role(tmp_path: Path) -> None:
    assert main(["ca", "init", str(tmp_path / "ca"), "--data-space", "test-space"]) == 0
    assert _mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert main(["ca", "issue", str(tmp_path / "ca"), "org-a", "--role", "node"]) == 0
    ident = tmp_path / "ca" / "org-a"
    assert _mode(ident / "key.pem") == 0o600
    creds = Credentials.from_dir(ident)
    assert (creds.name, creds.role) == ("org-a", "node")
    assert "PRIVATE" not in repr(creds)
    # no temporary files left behind
    assert sorted(p.name for p in ident.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_ca(tmp_path, name="test-space")
    with pytest.raises(ConfigError, match="already exists"):
        init_ca(tmp_path, name="test-space")


@pytest.mark.parametrize(
    ("name", "role", "match"),
    [("ok", "admin", "role 'admin'"), ("bad name!", "node", "name 'bad name!'")],
)
def test_issue_rejects_bad_role_and_name(tmp_path: Path, name: str, role: str, match: str) -> None:
    init_ca(tmp_path, name="test-space")
    with pytest.raises(ConfigError, match=match):
        issue(tmp_path, name, role)


def test_issue_without_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trustspace ca init"):
        issue(tmp_path, "x", "node")


def test_cli_bad_role_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["ca", "issue", str(tmp_path), "x", "--role", "root"])


def test_expected_role_enforced(pki: Path) -> None:
    with pytest.raises(AuthenticationError, match=r"role 'analyst'.*needs a 'node'"):
        Credentials.from_dir(pki / "ca" / "alice", expected_role="node")


def test_expired_certificate_refused_on_load(tmp_path: Path) -> None:
    init_ca(tmp_path, name="test-space")
    issue(
        tmp_path,
        "old",
        "node",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(AuthenticationError, match="expired on 2021-01-01"):
        Credentials.from_dir(tmp_path / "old")


def test_certificate_from_other_ca_refused(pki: Path) -> None:
    ident = pki / "other" / "mallory"
    with pytest.raises(AuthenticationError, match="not issued by the data space CA"):
        Credentials.from_files(pki / "ca" / "ca.pem", ident / "cert.pem", ident / "key.pem")


def test_key_must_match_certificate(pki: Path) -> None:
    a, b = pki / "ca" / "n1", pki / "ca" / "n2"
    with pytest.raises(AuthenticationError, match="does not belong"):
        Credentials.from_files(a / "ca.pem", a / "cert.pem", b / "key.pem")


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="credentials directory not found"):
        Credentials.from_dir(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="CA certificate file not found"):
        Credentials.from_dir(tmp_path / "x")
