"""The admin port: ``[admin]`` config, the console app (Starlette TestClient) and the server.

A real space (three in-process nodes with mutual TLS, an aggregator, alice's queries, one of
them differentially private, bob's refused ones, and a purpose carrying a ``<script>``) gives
the pages content. The attacks: markup in analyst-supplied audit fields (must come back
escaped, under a CSP without scripts), a write method (405), a foreign ``Host`` header (DNS
rebinding, 421), a port already taken (refused), a non-loopback listen without TLS
(ConfigError), and on an mTLS admin port: no client certificate, an analyst's certificate,
an operator not listed, a revoked operator and a foreign CA's certificate (all refused).
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_node_config
from starlette.testclient import TestClient

from trustspace._config import AdminConfig, Table
from trustspace.admin._views import NodeView
from trustspace.admin.app import create_app
from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.api import Credentials, Federation
from trustspace.errors import ConfigError, PolicyError
from trustspace.node.audit import read_checkpoint
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.transport.ca import issue

NODES = ("n1", "n2", "n3")
SCRIPT = "<script>alert('pwned')</script>"
POLICY = (
    "min_group_size = 5\nmin_nodes = 3\n"
    '[[policy.rules]]\nanalysts = ["alice"]\noperations = ["*"]\n'
    '[[policy.rules]]\nanalysts = ["bob"]\noperations = ["count"]\ncolumns = ["sex"]\n'
    "[policy.dp]\nepsilon = 3.0\ndelta = 1e-6\n"
)
LOCAL = "http://127.0.0.1"


def _admin_table(text: str, name: str = "node.toml") -> Table:
    import tomllib

    return Table(Path(name), "admin", tomllib.loads(text)["admin"])


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[admin]\ntls = false\n", "admin.listen is missing"),
        ('[admin]\nlisten = "0.0.0.0:9464"\n', "reachable from other machines"),
        ('[admin]\nlisten = "10.1.2.3:9464"\n', "must not be open to the network"),
        ('[admin]\nlisten = "node-a.example:9464"\n', "tls is not true"),
        ('[admin]\nlisten = "0.0.0.0:9464"\ntls = true\n', "needs node.toml: key admin.operators"),
        ('[admin]\nlisten = "127.0.0.1:9464"\noperators = ["ops"]\n', "only checked with tls"),
        ('[admin]\nlisten = "127.0.0.1:9464"\ntsl = true\n', "admin.tsl: unknown key"),
        ('[admin]\nlisten = "127.0.0.1"\n', "expected HOST:PORT"),
        ('[admin]\nlisten = "127.0.0.1:50051"\n', "takes the port of the gRPC listen"),
    ],
)
def test_admin_config_refuses(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        AdminConfig.parse(_admin_table(text), "0.0.0.0:50051")


def test_admin_config_accepts_loopback_and_mtls() -> None:
    local = AdminConfig.parse(_admin_table('[admin]\nlisten = "127.0.0.1:9464"\n'))
    assert (local.host, local.port, local.tls) == ("127.0.0.1", 9464, False)
    v6 = AdminConfig.parse(_admin_table('[admin]\nlisten = "[::1]:9464"\n'))
    assert v6.host == "::1"
    remote = AdminConfig.parse(
        _admin_table('[admin]\nlisten = "0.0.0.0:9464"\ntls = true\noperators = ["ops"]\n')
    )
    assert remote.tls and remote.operators == ("ops",)


def test_node_config_without_admin_has_no_admin_port(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    cfg = write_node_config(
        tmp_path / "n1.toml",
        name="n1",
        identity=pki / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "a.jsonl",
    )
    assert load_node_config(cfg).admin is None
    cfg.write_text(cfg.read_text() + '\n[admin]\nlisten = "0.0.0.0:9464"\n')
    with pytest.raises(ConfigError, match=r"n1\.toml: key admin\.listen = '0\.0\.0\.0:9464'"):
        load_node_config(cfg)


# ------------------------------------------------------------------------------ a space
def _node_config(root: Path, ca: Path, name: str, data: Path, admin: str) -> Path:
    cfg = write_node_config(
        root / f"{name}.toml",
        name=name,
        identity=ca / name,
        data=data,
        audit=root / f"{name}.jsonl",
        policy=POLICY,
    )
    cfg.write_text(
        cfg.read_text().replace(
            "[datasets.default.columns]\n",
            '[datasets.default.domains]\nsex = ["F", "M"]\n'
            "[datasets.default.bounds]\nage = [0, 120]\n[datasets.default.columns]\n",
        )
        + admin
    )
    return cfg


@pytest.fixture(scope="module")
def space(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, partitions: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("admin")
    ca = pki / "ca"
    for name in ("ops", "ops2", "ops-revoked"):
        if not (ca / name).exists():
            issue(ca, name, "operator")
    nodes: dict[str, Node] = {}
    try:
        for name in NODES:
            admin = ""
            if name == "n1":
                admin = '\n[admin]\nlisten = "127.0.0.1:0"\n'
            if name == "n2":
                admin = (
                    '\n[admin]\nlisten = "127.0.0.1:0"\ntls = true\noperators = ["ops", '
                    '"ops-revoked", "alice"]\n'
                )
            cfg = _node_config(root, ca, name, partitions[name], admin)
            if name == "n2":
                cfg.write_text(
                    cfg.read_text().replace("[tls]\n", '[tls]\nrevoked = ["ops-revoked"]\n')
                )
            nodes[name] = Node(load_node_config(cfg)).start()
        agg_cfg = root / "agg.toml"
        agg_cfg.write_text(
            '[aggregator]\nlisten = "127.0.0.1:0"\n'
            f'[tls]\ndir = "{ca / "agg"}"\n'
            '[admin]\nlisten = "127.0.0.1:0"\n'
            + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{nodes[n].address}"\n' for n in NODES)
        )
        agg = Aggregator(load_aggregator_config(agg_cfg)).start()
        alice = Credentials.from_dir(ca / "alice")
        bob = Credentials.from_dir(ca / "bob")
        target = agg.address
        with Federation.connect(target, alice, server_name="agg", purpose="study-1") as fed:
            counts = [fed.count("default"), fed.count("default", where="age >= 40")]
            fed.mean("default", "age")
            fed.count("default", epsilon=1.0)
        with Federation.connect(target, alice, server_name="agg", purpose=SCRIPT) as fed:
            fed.count("default", where="sex == 'F'")
        with Federation.connect(target, bob, server_name="agg", purpose="audit") as fed:
            fed.count("default", where="sex == 'M'")
            with pytest.raises(PolicyError):
                fed.mean("default", "income")
        yield {"nodes": nodes, "agg": agg, "root": root, "ca": ca, "counts": counts}
        agg.stop(0)
    finally:
        for n in nodes.values():
            n.stop(0)


@pytest.fixture(scope="module")
def client(space: dict[str, Any]) -> Iterator[TestClient]:
    node = space["nodes"]["n1"]
    view = NodeView(
        node.service,
        serving=lambda: not node.server.stopping,
        address=lambda: node.address,
        ca_pem=(space["ca"] / "ca.pem").read_bytes(),
    )
    with TestClient(create_app(view), base_url=LOCAL) as c:
        yield c


# ------------------------------------------------------------------------------ pages
def test_overview(client: TestClient, space: dict[str, Any]) -> None:
    node = space["nodes"]["n1"]
    r = client.get("/")
    assert r.status_code == 200
    assert "n1" in r.text and "serving" in r.text and node.address in r.text
    assert node.service.audit.head in r.text
    o = client.get("/api/overview").json()
    assert o["audit"]["lines"] == node.service.audit.lines > 0
    assert o["health"] == "serving" and o["datasets"] == ["default"] and o["dp"] is True


def test_datasets_show_schema_but_no_value(client: TestClient, partitions: dict[str, Path]) -> None:
    import pandas as pd

    r = client.get("/datasets")
    assert r.status_code == 200
    for text in (str(partitions["n1"]), "csv", "income", "float", "[0.0, 120.0]", "F, M"):
        assert text in r.text
    d = client.get("/api/datasets").json()["datasets"][0]
    df = pd.read_csv(partitions["n1"])
    assert d["rows"] == len(df)
    assert [c["name"] for c in d["columns"]] == ["age", "income", "sex"]
    # no data value: not one income of the file appears on the page
    incomes = {f"{v:.2f}" for v in df["income"].dropna()}
    assert not [v for v in incomes if v in r.text]


def test_policy_is_read_at_request_time(client: TestClient, space: dict[str, Any]) -> None:
    import dataclasses

    r = client.get("/policy")
    assert r.status_code == 200
    assert "alice" in r.text and "bob" in r.text and "min_group_size" in r.text
    assert "epsilon 3.0, delta 1e-06" in r.text
    p = client.get("/api/policy").json()
    assert p["settings"]["min_group_size"] == 5 and p["dp"]["epsilon"] == 3.0
    assert "at start" in p["loaded"]
    # a live reload replaces the policy object: the console shows the new one at once
    policy = space["nodes"]["n1"].service.policy
    old = policy.config
    try:
        policy.config = dataclasses.replace(old, min_group_size=17)
        p = client.get("/api/policy").json()
        assert p["settings"]["min_group_size"] == 17
        assert "reloaded" in p["loaded"]
    finally:
        policy.config = old


def test_policy_is_dated_by_its_reload_not_by_the_first_view(space: dict[str, Any]) -> None:
    """The console dated a reloaded policy by when it first saw it, so a reload shown later
    looked recent, and a file edited after the reload (not applied) but before that first
    view raised no warning."""
    node = space["nodes"]["n3"]
    view = NodeView(
        node.service,
        serving=lambda: True,
        address=lambda: node.address,
        ca_pem=(space["ca"] / "ca.pem").read_bytes(),
    )
    cfg = node.config.source
    text = cfg.read_text()
    try:
        cfg.write_text(text.replace("min_group_size = 5", "min_group_size = 6"))
        before = time.time()
        assert node.reload().applied
        time.sleep(1.6)
        # edited again, not reloaded: the policy in force is not the file's
        cfg.write_text(text.replace("min_group_size = 5", "min_group_size = 7"))
        time.sleep(0.2)
        with TestClient(create_app(view), base_url=LOCAL) as c:  # the first view, later
            p = c.get("/api/policy").json()
        assert p["settings"]["min_group_size"] == 6
        assert p["loaded"].endswith(" reloaded")
        loaded = dt.datetime.fromisoformat(p["loaded"].split()[0]).timestamp()
        assert before - 1 <= loaded <= before + 1  # the reload's time, not the view's
        assert p["file_newer"] is True
    finally:
        cfg.write_text(text)
        assert node.reload().applied


def test_audit_lists_newest_first_and_filters(client: TestClient, space: dict[str, Any]) -> None:
    lines = space["nodes"]["n1"].service.audit.lines
    a = client.get("/api/audit").json()
    seqs = [r["seq"] for r in a["rows"]]
    assert seqs == sorted(seqs, reverse=True) and seqs[0] == lines - 1
    bob = client.get("/api/audit", params={"analyst": "bob"}).json()["rows"]
    assert bob and {r["requester"] for r in bob} == {"bob"}
    denied = client.get("/api/audit", params={"decision": "deny"}).json()["rows"]
    assert denied and {r["decision"] for r in denied} == {"deny"}
    assert any(r["requester"] == "bob" for r in denied)
    ops = client.get("/api/audit", params={"operation": "mean", "limit": 500}).json()["rows"]
    assert len(ops) == 9 and {r["operation"] for r in ops} == {"mean"}  # 8 alice, 1 bob
    found = client.get("/api/audit", params={"q": "age >= 40"}).json()["rows"]
    assert found and all("age >= 40" in r["detail"] for r in found)
    none = client.get("/api/audit", params={"analyst": "mallory"}).json()["rows"]
    assert none == []


def test_audit_pages_do_not_overlap(client: TestClient, space: dict[str, Any]) -> None:
    lines = space["nodes"]["n1"].service.audit.lines
    seen: list[int] = []
    before: int | None = None
    for _ in range(lines):
        params: dict[str, Any] = {"limit": 7}
        if before is not None:
            params["before"] = before
        page = client.get("/api/audit", params=params).json()
        seen += [r["seq"] for r in page["rows"]]
        before = page["older"]
        if before is None:
            break
    assert seen == list(range(lines - 1, -1, -1))


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "100000"}, {"decision": "maybe"}, {"before": "x"}, {"limit": "a"}],
)
def test_audit_bad_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/audit", params=params)
    assert r.status_code == 400 and "bad request" in r.text
    assert client.get("/api/audit", params=params).status_code == 400


def test_markup_from_analysts_is_rendered_inert(client: TestClient, space: dict[str, Any]) -> None:
    # a refused request's line as the node writes it: the dataset name is the analyst's
    space["nodes"]["n1"].service.audit.append(
        {
            "requester": "alice",
            "operation": "count",
            "dataset": '<img src=x onerror="alert(1)">',
            "purpose": SCRIPT,
            "decision": "deny",
            "reason": "</td><script>alert(2)</script>",
            "outcome": "refused",
        }
    )
    for path in ("/audit", "/usage", "/audit?q=script"):
        r = client.get(path)
        assert r.status_code == 200
        assert "<script>" not in r.text and "<img src=x" not in r.text, path
        assert "&lt;script&gt;alert(" in r.text, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
    assert client.get("/api/audit", params={"q": SCRIPT}).json()["rows"][0]["purpose"] == SCRIPT


def _view_over_copy(space: dict[str, Any], path: Path, lines: list[str]) -> NodeView:
    """A view of node n1 whose audit log is a copy at ``path`` with ``lines``."""
    node = space["nodes"]["n1"]
    path.write_text("".join(lines))

    class Copy:
        def __init__(self) -> None:
            self.path, self.lines, self.head = path, len(lines), ""

    fake = type("S", (), {})()
    fake.__dict__.update(node.service.__dict__)
    fake.audit = Copy()
    ca_pem = (space["ca"] / "ca.pem").read_bytes()
    return NodeView(fake, serving=lambda: True, address=lambda: "x:1", ca_pem=ca_pem)


def test_chain_status_and_tampering(
    tmp_path: Path, client: TestClient, space: dict[str, Any]
) -> None:
    import shutil

    chain = client.get("/api/audit").json()["chain"]
    assert chain["state"] == "intact" and "chain intact" in chain["text"]
    assert "tail matches the checkpoint" in chain["text"]
    log = space["nodes"]["n1"].service.audit.path
    lines = log.read_text().splitlines(keepends=True)
    # a copy of the log with one line edited: the chain names the line
    rec = json.loads(lines[1])
    rec["requester"] = "someone-else"
    edited = [*lines[:1], json.dumps(rec) + "\n", *lines[2:]]
    view = _view_over_copy(space, tmp_path / "edited.jsonl", edited)
    status = view.chain()
    assert status["state"] == "tampered" and "edited.jsonl:2" in status["text"]
    with TestClient(create_app(view), base_url=LOCAL) as c:
        assert 'class="chain tampered"' in c.get("/audit").text
    # a copy cut short beside the node's signed checkpoint: the chain is fine, the tail is not
    cp = log.with_name(log.name + ".checkpoint")
    signed_lines = read_checkpoint(cp).checkpoint.lines
    shutil.copy(cp, tmp_path / "cut.jsonl.checkpoint")
    status = _view_over_copy(space, tmp_path / "cut.jsonl", lines[: signed_lines - 3]).chain()
    assert status["state"] == "tampered" and "behind its checkpoint" in status["text"]
    assert "3 line(s) are missing" in status["text"]
    # a forged checkpoint (another node's) cannot vouch for the log
    n2 = space["nodes"]["n2"].service.audit.path
    shutil.copy(n2.with_name(n2.name + ".checkpoint"), tmp_path / "forged.jsonl.checkpoint")
    status = _view_over_copy(space, tmp_path / "forged.jsonl", lines).chain()
    assert status["state"] == "tampered" and "cannot be trusted" in status["text"]


def test_usage_per_analyst_and_purpose(client: TestClient) -> None:
    u = client.get("/api/usage").json()
    alice = next(r for r in u["analyst"]["rows"] if r["analyst"] == "alice")
    bob = next(r for r in u["analyst"]["rows"] if r["analyst"] == "bob")
    assert alice["queries"] >= 5 and bob["refused"] >= 1
    purposes = {r["purpose"] for r in u["purpose"]["rows"]}
    assert {"study-1", "audit", SCRIPT} <= purposes
    assert client.get("/usage").status_code == 200


def test_budgets_from_the_ledger(client: TestClient) -> None:
    b = client.get("/api/budgets").json()
    row = next(r for r in b["rows"] if r["analyst"] == "alice")
    assert row["dataset"] == "default" and row["epsilon"] == 3.0
    assert 0 < row["epsilon_spent"] < 3.0 and 0 < row["epsilon_remaining"] < 3.0
    assert "alice" in client.get("/budgets").text


def test_healthz_and_metrics(client: TestClient) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.text) == (200, "serving\n")
    assert client.get("/healthz?format=json").json()["status"] == "serving"
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")


def test_metrics_serve_the_given_registry(space: dict[str, Any]) -> None:
    from prometheus_client import CollectorRegistry, Counter

    reg = CollectorRegistry()
    Counter("trustspace_test_total", "a test counter", registry=reg).inc(3)
    node = space["nodes"]["n1"]
    view = NodeView(node.service, serving=lambda: False, address=lambda: "x", ca_pem=b"")
    with TestClient(create_app(view, reg), base_url=LOCAL) as c:
        assert "trustspace_test_total 3.0" in c.get("/metrics").text
        r = c.get("/healthz")
        assert (r.status_code, r.text) == (503, "draining\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/audit", "/api/audit", "/policy", "/metrics"])
def test_only_get(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 405


def test_foreign_host_header_is_refused(client: TestClient) -> None:
    r = client.get("/audit", headers={"host": "evil.example:9464"})
    assert r.status_code == 421 and "not a name of this console" in r.text
    assert client.get("/", headers={"host": "[::1]:9464"}).status_code == 200
    assert client.get("/", headers={"host": "localhost:1234"}).status_code == 200


# ------------------------------------------------------------------------------ the servers
def test_admin_port_serves_and_stops(space: dict[str, Any]) -> None:
    node = space["nodes"]["n1"]
    assert node.admin is not None
    url = node.admin.url
    r = httpx.get(url + "healthz")
    assert (r.status_code, r.text) == (200, "serving\n")
    assert "server" not in r.headers
    assert "alice" in httpx.get(url + "audit").text
    agg = space["agg"]
    assert agg.admin is not None
    assert httpx.get(agg.admin.url + "healthz").text == "serving\n"
    assert "n3" in httpx.get(agg.admin.url).text
    assert httpx.get(agg.admin.url + "audit").status_code == 404  # the aggregator has no log


def test_admin_port_serves_the_hosts_own_registry(space: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, Counter

    from trustspace.admin.server import node_admin

    reg = CollectorRegistry()
    Counter("trustspace_host_total", "a host's counter", registry=reg).inc()
    node = space["nodes"]["n1"]
    node.metrics = SimpleNamespace(registry=reg)  # type: ignore[attr-defined]
    try:
        server = node_admin(node).start()
        try:
            text = httpx.get(server.url + "metrics").text
        finally:
            server.stop()
    finally:
        del node.metrics  # type: ignore[attr-defined]
    assert "trustspace_host_total 1.0" in text
    with pytest.raises(httpx.ConnectError):  # stopped means closed
        httpx.get(server.url + "healthz", timeout=2)


def test_port_in_use_is_refused(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], space: dict[str, Any]
) -> None:
    taken = space["nodes"]["n1"].admin.port
    cfg = _node_config(
        tmp_path, pki / "ca", "n3", partitions["n3"], f'\n[admin]\nlisten = "127.0.0.1:{taken}"\n'
    )
    node = Node(load_node_config(cfg))
    with pytest.raises(ConfigError, match=f"127.0.0.1:{taken}' is already in use"):
        node.start()
    node.close()
    assert not node.server.stopping  # never started serving gRPC
    # and the first console still answers alone
    assert httpx.get(space["nodes"]["n1"].admin.url + "healthz").status_code == 200


def test_healthz_says_draining_during_a_drain(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    import threading

    cfg = _node_config(
        tmp_path, pki / "ca", "n3", partitions["n3"], '\n[admin]\nlisten = "127.0.0.1:0"\n'
    )
    node = Node(load_node_config(cfg)).start()
    assert node.admin is not None
    url = node.admin.url
    assert httpx.get(url + "healthz").status_code == 200
    release = threading.Event()
    original = node.server._server.stop

    def slow_stop(grace: float | None) -> Any:  # hold the drain open until we looked
        release.wait(5)
        return original(grace)

    node.server._server.stop = slow_stop  # type: ignore[method-assign]
    stopper = threading.Thread(target=node.stop, args=(1,))
    stopper.start()
    try:
        deadline = time.monotonic() + 5
        while not node.server.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.get(url + "healthz")
        assert (r.status_code, r.text) == (503, "draining\n")
    finally:
        release.set()
        stopper.join(10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "healthz", timeout=2)


# ------------------------------------------------------------------------------ mTLS
def _tls_get(url: str, identity: Path | None, ca: Path) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    if identity is not None:
        ctx.load_cert_chain(identity / "cert.pem", identity / "key.pem")
    with httpx.Client(verify=ctx, timeout=5) as c:
        return c.get(url)


def test_mtls_admin_port_needs_a_listed_operator(space: dict[str, Any], pki: Path) -> None:
    node = space["nodes"]["n2"]
    assert node.admin is not None and node.admin.url.startswith("https://")
    ca = space["ca"]
    ok = _tls_get(node.admin.url + "audit", ca / "ops", ca)
    assert ok.status_code == 200 and "ops (role operator)" in ok.text
    cases = {
        "alice": "has role 'analyst'",  # listed, but an analyst's certificate
        "ops2": "is not one of this console's operators",
        "ops-revoked": "is revoked",
        "n1": "has role 'node'",
    }
    for who, why in cases.items():
        r = _tls_get(node.admin.url + "audit", ca / who, ca)
        assert r.status_code == 403 and why in r.text, who
        assert "alice" not in r.text.replace("'alice'", "")
    with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
        _tls_get(node.admin.url + "healthz", None, ca)
    with pytest.raises(httpx.HTTPError):  # a foreign CA's certificate
        _tls_get(node.admin.url + "healthz", pki / "other" / "eve", ca)
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
        httpx.get(node.admin.url.replace("https", "http") + "healthz", timeout=5)


def test_a_live_reload_shows_in_the_console_and_its_audit_page(space: dict[str, Any]) -> None:
    """An operator edits the policy file, reloads the running node, and sees the new policy
    and the reload's audit line on the admin port (the real server, not a test client)."""
    node = space["nodes"]["n1"]
    assert node.admin is not None
    url, cfg = node.admin.url, node.config.source
    text = cfg.read_text()
    assert "min_group_size = 5\n" in text
    try:
        cfg.write_text(text.replace("min_group_size = 5\n", "min_group_size = 9\n", 1))
        report = node.reload(trigger="SIGHUP")
        assert report.applied, report.error
        assert httpx.get(url + "api/policy").json()["settings"]["min_group_size"] == 9
        assert "reloaded" in httpx.get(url + "api/policy").json()["loaded"]
        page = httpx.get(url + "policy").text
        assert ">9<" in page.replace(" ", "")
        audit = httpx.get(url + "api/audit", params={"operation": "config.reload"}).text
        assert "policy.min_group_size" in audit and "SIGHUP" in audit
        assert (
            "config.reload" in httpx.get(url + "audit", params={"operation": "config.reload"}).text
        )
        # a broken edit is refused, shown as denied, and the console keeps the policy in force
        cfg.write_text(text.replace("min_group_size = 5\n", "min_group_size = -1\n", 1))
        assert not node.reload(trigger="SIGHUP").applied
        assert httpx.get(url + "api/policy").json()["settings"]["min_group_size"] == 9
        denied = httpx.get(
            url + "api/audit", params={"operation": "config.reload", "decision": "deny"}
        ).text
        assert "min_group_size" in denied
    finally:
        cfg.write_text(text)
        assert node.reload().applied
