"""deploy/: the example systemd units parse, carry the hardening the docs promise, and stop
later than a drain takes. With ``systemd-analyze`` installed they are also verified by systemd
itself (unknown keys, bad values and a missing executable are reported) and scored."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trustspace.aggregator.config import AggregatorConfig
from trustspace.node.config import NodeConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = {"trustspace-node@.service": "node", "trustspace-aggregator.service": "aggregator"}
EXEC = "/opt/trustspace/.venv/bin/trustspace"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "UMask": "0077",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "trustspace",
}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_hardening_and_drain_settings(name: str) -> None:
    unit = _unit(name)
    svc = unit["Service"]
    for key, want in HARDENING.items():
        assert svc.get(key) == want, f"{name}: {key}={svc.get(key)!r}, expected {want!r}"
    assert svc["ExecStart"].split()[:2] == [EXEC, UNITS[name]]
    assert svc["ExecStart"].split()[2].startswith("/etc/trustspace/")
    assert int(svc["LimitNOFILE"]) >= 4096
    # systemd must wait for the drain (the configs' default drain_grace_s) before SIGKILL
    default_grace = (NodeConfig if UNITS[name] == "node" else AggregatorConfig).drain_grace_s
    assert _seconds(svc["TimeoutStopSec"]) > default_grace
    # every directory it writes is writable under ProtectSystem=strict, and nothing else
    state = svc["StateDirectory"]
    writable = svc["ReadWritePaths"].split()
    assert f"/var/lib/{state}" in writable and "/var/log/trustspace" in writable
    assert svc["WorkingDirectory"] == f"/var/lib/{state}"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_sysusers_creates_the_dedicated_user() -> None:
    lines = [
        ln.split()
        for ln in (DEPLOY / "trustspace.sysusers.conf").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0][:2] == ["u", "trustspace"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_and_scores_the_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints a warning for an unknown key, a bad value or an
    executable that does not exist: none may appear. The path of the executable is replaced
    by this interpreter's ``trustspace`` script (it exists here), templates get an instance."""
    exe = Path(sys.executable).with_name("trustspace")
    if not exe.is_file():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    copies = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace(EXEC, str(exe))
        copy = tmp_path / name.replace("@.", "@org-a.")
        copy.write_text(text)
        copies.append(copy)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    for copy in copies:
        sec = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(copy)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
        assert m, sec.stdout[-500:] + sec.stderr
        assert float(m.group(1)) <= 2.5, f"{copy.name}: exposure {m.group(1)}"


def test_a_typo_in_a_unit_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: a misspelt hardening key is not the key."""
    text = (DEPLOY / "trustspace-aggregator.service").read_text()
    (tmp_path / "x.service").write_text(text.replace("ProtectSystem=", "ProtectSytem="))
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(tmp_path / "x.service")
    assert parser["Service"].get("ProtectSystem") is None
    if shutil.which("systemd-analyze") is not None:
        proc = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / "x.service")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Unknown key 'ProtectSytem'" in proc.stderr
