"""Live reload of a running node (issue 15): what reloads, what is refused, what it records.

Three real in-process nodes over mutual TLS and an aggregator; each test edits a node's config
file and calls ``Node.reload()`` (what SIGHUP, ``trustspace node reload`` and the file watch
call), then checks what the running node does next. The attacks: a broken or mistyped config,
a dataset whose file is missing, has the wrong columns or a bad value (which must not reach the
audit log), a listen address change; each leaves the old configuration in force (a query still
works) and is recorded as denied. A secure-aggregation session in flight across a reload is
not corrupted. The last test does it all with real processes: ``trustspace node CONFIG``,
``trustspace node reload CONFIG`` (SIGHUP) and the pid file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import start_cli, write_node_config

from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.api import Federation
from trustspace.cli.main import main
from trustspace.errors import PolicyError, ProtocolError, TrustspaceError
from trustspace.node._anon import AnonJob
from trustspace.node.config import load_node_config
from trustspace.node.reload import PidFile, Watcher, watched_files
from trustspace.node.server import Node
from trustspace.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SecAggConfig,
    SecAggServer,
    Stage,
    UnmaskShares,
)
from trustspace.stats import Query, start
from trustspace.transport import types
from trustspace.transport.ca import Credentials, Identity
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import new_query

NODES = ("n1", "n2", "n3")
K = 5
POLICY = (
    f"min_group_size = {K}\nmin_nodes = 3\n"
    '[[policy.rules]]\nanalysts = ["alice"]\noperations = ["*"]\n'
    '[[policy.rules]]\nanalysts = ["bob"]\noperations = ["count"]\n'
)
BOB_RULE = '[[policy.rules]]\nanalysts = ["bob"]\noperations = ["count"]\n'
SECRET = "zz-secret-7731"  # a data value planted in a bad file: never in the audit log


@pytest.fixture(scope="module")
def space(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, partitions: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("reload")
    ca = pki / "ca"
    configs, texts, nodes = {}, {}, {}
    for name in NODES:
        data = root / f"{name}.csv"
        data.write_bytes(partitions[name].read_bytes())  # a copy the tests may replace
        shutil.copytree(ca / name, root / "id" / name)  # a copy, too
        cfg = write_node_config(
            root / f"{name}.toml",
            name=name,
            identity=root / "id" / name,
            data=data,
            audit=root / f"{name}.jsonl",
            policy=POLICY,
        )
        configs[name], texts[name] = cfg, cfg.read_text()
        nodes[name] = Node(load_node_config(cfg)).start()
    agg_cfg = root / "agg.toml"
    agg_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{ca / "agg"}"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{nodes[n].address}"\n' for n in NODES)
    )
    agg = Aggregator(load_aggregator_config(agg_cfg)).start()
    try:
        yield {
            "root": root,
            "ca": ca,
            "nodes": nodes,
            "agg": agg,
            "configs": configs,
            "texts": texts,
            "partitions": partitions,
        }
    finally:
        agg.stop(0)
        for n in nodes.values():
            n.stop(0)


@pytest.fixture(autouse=True)
def restore(space: dict[str, Any]) -> Iterator[None]:
    """Every test starts from the original configs and data files, reloaded."""
    yield
    for name in NODES:
        (space["root"] / f"{name}.csv").write_bytes(space["partitions"][name].read_bytes())
        space["configs"][name].write_text(space["texts"][name])
        report = space["nodes"][name].reload()
        assert report.applied, report.error


def _fed(space: dict[str, Any], who: str = "alice") -> Federation:
    creds = Credentials.from_dir(space["ca"] / who)
    return Federation.connect(space["agg"].address, creds, server_name="agg")


def _edit(space: dict[str, Any], node: str, old: str, new: str) -> Path:
    cfg: Path = space["configs"][node]
    text = space["texts"][node]
    assert old in text, old
    cfg.write_text(text.replace(old, new))
    return cfg


def _reloads(space: dict[str, Any], node: str) -> list[dict[str, Any]]:
    path = space["root"] / f"{node}.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in recs if r.get("operation") == "config.reload"]


def _count(space: dict[str, Any], who: str = "alice", where: str | None = None) -> int:
    with _fed(space, who) as fed:
        return int(fed.count("default", where=where))


# ------------------------------------------------------------------ what takes effect
def test_tightening_min_group_size_takes_effect_on_the_next_query(
    space: dict[str, Any], union: pd.DataFrame
) -> None:
    ages = sorted(union.age.unique(), reverse=True)
    cut = next(a for a in ages if 8 <= int((union.age >= a).sum()) < 20)  # a small group
    small = int((union.age >= cut).sum())
    assert _count(space, where=f"age >= {cut}") == small
    for name in NODES[:1]:  # one node tightening is enough: the strictest one counts
        _edit(space, name, f"min_group_size = {K}", "min_group_size = 20")
        report = space["nodes"][name].reload()
        assert report.applied and report.changed == {"policy.min_group_size": [K, 20]}
    with _fed(space) as fed, pytest.warns(UserWarning, match="suppressed.*min_group_size"):
        assert np.isnan(fed.count("default", where=f"age >= {cut}"))  # suppressed now
    last = _reloads(space, "n1")[-1]
    assert last["decision"] == "allow" and last["outcome"] == "applied"
    assert last["changed"] == {"policy.min_group_size": [K, 20]}
    assert last["via"] == "api" and last["event"] == "config.reload"


def test_removing_an_analysts_rule_stops_them_immediately(space: dict[str, Any]) -> None:
    assert _count(space, "bob") == 360
    _edit(space, "n2", BOB_RULE, "")
    report = space["nodes"]["n2"].reload()
    assert report.applied and report.changed == {"policy.rules": "+0 -1"}
    # n2 no longer shows bob its datasets (describe filters by policy), so he is refused
    # and told that it may be the policy, not missing data (the node cannot say which)
    with pytest.raises(
        TrustspaceError,
        match=r"node n2 serves no dataset 'default' to analyst 'bob' \(it shows them: none\): "
        r"either it does not serve that dataset, or no rule of its policy lets 'bob' use it",
    ):
        _count(space, "bob")
    assert _count(space, "alice") == 360  # alice is not affected
    assert _reloads(space, "n2")[-1]["changed"] == {"policy.rules": "+0 -1"}


def test_revocation_list_reloads(space: dict[str, Any]) -> None:
    assert _count(space, "bob") == 360
    _edit(space, "n3", "[tls]\n", '[tls]\nrevoked = ["bob"]\n')
    report = space["nodes"]["n3"].reload()
    assert report.applied and report.changed == {"tls.revoked": {"added": ["bob"]}}
    with pytest.raises(PolicyError, match=r"n3.*revoked"):
        _count(space, "bob")
    assert _count(space, "alice") == 360


def test_datasets_added_changed_and_removed(space: dict[str, Any], union: pd.DataFrame) -> None:
    extra = (
        '[datasets.second]\npath = "{p}"\n[datasets.second.columns]\n'
        'age = "int"\nincome = "float"\nsex = "str"\n'
    )
    for name in NODES:
        p = space["partitions"][name]
        _edit(space, name, "[policy]\n", extra.format(p=p) + "[policy]\n")
        report = space["nodes"][name].reload()
        assert report.applied, report.error
        assert report.changed == {"datasets": {"added": ["second"]}}
    with _fed(space) as fed:
        assert fed.count("second") == len(union)
    # "default" at n1 now over a file of its first 50 rows: the same declaration, a new file
    n1 = space["root"] / "n1.csv"
    pd.read_csv(space["partitions"]["n1"]).head(50).to_csv(n1, index=False)
    report = space["nodes"]["n1"].reload()
    assert report.applied and report.changed["datasets"] == {"changed": {"default": ["file"]}}
    assert _count(space) == len(union) - 120 + 50
    space["configs"]["n2"].write_text(space["texts"]["n2"])  # n2 drops "second"
    assert space["nodes"]["n2"].reload().changed == {"datasets": {"removed": ["second"]}}
    with _fed(space) as fed, pytest.raises(TrustspaceError, match="n2 serves no dataset 'second'"):
        fed.count("second")


def test_dp_budget_limit_change_takes_effect_and_spent_budget_is_kept(
    space: dict[str, Any],
) -> None:
    dp = "[policy.dp]\nepsilon = 1.0\ndelta = 1e-6\n"
    for name in NODES:
        _edit(space, name, BOB_RULE, BOB_RULE + dp)
        assert space["nodes"][name].reload().changed == {"policy.dp": ["off", "on"]}
    with _fed(space) as fed:
        fed.count("default", epsilon=0.5)
        left = fed.budget("default")
    spent = {n: float(left.loc[n, "epsilon_spent"]) for n in NODES}
    assert all(s > 0 for s in spent.values())
    for name in NODES:
        _edit(space, name, BOB_RULE, BOB_RULE + dp.replace("1.0", "3.0"))
        report = space["nodes"][name].reload()
        assert report.changed == {"policy.dp.epsilon": [1.0, 3.0]}
    with _fed(space) as fed:
        after = fed.budget("default")
    for n in NODES:
        assert after.loc[n, "epsilon"] == pytest.approx(3.0, rel=1e-3)  # the new limit
        assert after.loc[n, "epsilon_spent"] == pytest.approx(spent[n])  # the spend is kept


# ------------------------------------------------------------------ attacks: the old config stays
@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("[policy]\n", "[policy\n", r"n1\.toml: not valid TOML"),
        (f"min_group_size = {K}", "min_group_sise = 20", r"key policy\.min_group_sise: unknown"),
        (f"min_group_size = {K}", "min_group_size = 0", r"key policy\.min_group_size = 0"),
        ('operations = ["count"]', 'operations = ["count"]\ncolumns = "age"', r"columns"),
        ("[tls]\n", '[tls]\nrevoked = ["serial:xyz"]\n', r"key tls\.revoked.*serial:HEX"),
        ('dir = "', 'dir = "/nonexistent', r"key tls\.ca .*nonexistent.*needs a restart"),
    ],
    ids=["toml", "unknown-key", "bad-value", "bad-type", "bad-serial", "tls-dir"],
)
def test_a_broken_config_keeps_the_old_one(
    space: dict[str, Any], old: str, new: str, error: str
) -> None:
    before = _reloads(space, "n1")
    _edit(space, "n1", old, new)
    report = space["nodes"]["n1"].reload()
    assert not report.applied and re.search(error, report.error), report.error
    assert _count(space, "bob") == 360  # bob's rule and min_group_size are as before
    last = _reloads(space, "n1")
    assert len(last) == len(before) + 1
    assert last[-1]["decision"] == "deny" and last[-1]["outcome"] == "refused"
    assert re.search(error, last[-1]["reason"])


def test_a_certificate_swapped_on_disk_is_refused(space: dict[str, Any]) -> None:
    """The credentials are loaded again at every reload: another node's certificate put in
    place of n1's refuses the reload (and the policy change with it)."""
    ident = space["root"] / "id" / "n1"
    saved = {f: (ident / f).read_bytes() for f in ("cert.pem", "key.pem")}
    try:
        for f in saved:
            (ident / f).write_bytes((space["ca"] / "n2" / f).read_bytes())
        _edit(space, "n1", BOB_RULE, "")
        report = space["nodes"]["n1"].reload()
        assert not report.applied
        assert "node.name = 'n1' but the certificate" in report.error and "'n2'" in report.error
        assert _count(space, "bob") == 360
    finally:
        for f, data in saved.items():
            (ident / f).write_bytes(data)


def test_an_unknown_operation_keeps_the_old_config(space: dict[str, Any]) -> None:
    import trustspace.node.config as node_config

    if not hasattr(node_config, "OPERATIONS"):
        pytest.skip("operation names are checked by the config parser of branch h-checks")
    _edit(space, "n1", 'operations = ["count"]', 'operations = ["cuont"]')
    report = space["nodes"]["n1"].reload()
    assert not report.applied and "cuont" in report.error
    assert _count(space, "bob") == 360


def _bad_dataset(space: dict[str, Any], kind: str) -> str:
    """A config for n1 whose new dataset ``extra`` is broken in way ``kind``."""
    root = space["root"]
    f = root / f"extra-{kind}.csv"
    if kind == "missing":
        f = root / "no-such-file.csv"
    elif kind == "columns":
        f.write_text("age,salary,sex\n30,1.0,F\n")
    else:  # a bad value in an int column
        f.write_text(f"age,income,sex\n30,1.0,F\n{SECRET},2.0,M\n")
    return (
        f'[datasets.extra]\npath = "{f}"\n[datasets.extra.columns]\n'
        'age = "int"\nincome = "float"\nsex = "str"\n'
    )


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("missing", r"datasets\.extra\.path: file not found at \S*no-such-file\.csv"),
        ("columns", r"extra-columns\.csv: line 1 \(header\)"),
        ("value", r"extra-value\.csv: line 3, column 1 \('age'\): cannot read <value> as int"),
    ],
)
def test_a_broken_dataset_keeps_the_old_config(
    space: dict[str, Any], kind: str, error: str
) -> None:
    text = space["texts"]["n1"].replace("[policy]\n", _bad_dataset(space, kind) + "[policy]\n")
    space["configs"]["n1"].write_text(text.replace(BOB_RULE, ""))  # and a policy change
    report = space["nodes"]["n1"].reload()
    assert not report.applied and re.search(error, report.error), report.error
    assert report.changed == {"datasets": {"added": ["extra"]}, "policy.rules": "+0 -1"}
    assert _count(space, "bob") == 360  # bob's rule is still in force
    assert space["nodes"]["n1"].engine.datasets == ("default",)
    raw = (space["root"] / "n1.jsonl").read_text()
    assert SECRET not in raw  # the bad value never reaches the audit log
    last = _reloads(space, "n1")[-1]
    assert last["decision"] == "deny" and re.search(error, last["reason"])


def test_a_changed_listen_address_needs_a_restart(space: dict[str, Any]) -> None:
    node = space["nodes"]["n1"]
    address = node.address
    text = space["texts"]["n1"].replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"')
    space["configs"]["n1"].write_text(text.replace(BOB_RULE, ""))  # and a policy change
    report = space["nodes"]["n1"].reload()
    assert not report.applied and report.restart == ("node.listen",)
    assert "key node.listen '127.0.0.1:0' -> '127.0.0.1:1': needs a restart" in report.error
    assert node.address == address and node.config.listen == "127.0.0.1:0"
    assert _count(space, "bob") == 360  # the policy change was not applied either
    last = _reloads(space, "n1")[-1]
    assert last["decision"] == "deny" and "needs a restart" in last["reason"]
    assert last["changed"]["node.listen"] == ["127.0.0.1:0", "127.0.0.1:1"]


def test_no_change_is_recorded_too(space: dict[str, Any]) -> None:
    report = space["nodes"]["n3"].reload()
    assert report.applied and report.changed == {} and report.summary() == "reload: nothing changed"
    assert _reloads(space, "n3")[-1]["reason"] == "no change"


# ------------------------------------------------------------------ in flight
class _HandSession:
    """One secure-aggregation count driven stage by stage, as the aggregator drives it, so
    that a reload can happen between two stages."""

    def __init__(self, space: dict[str, Any], where: str) -> None:
        creds = Credentials.from_dir(space["ca"] / "agg")
        self.clients = {n: NodeClient(n, space["nodes"][n].address, creds) for n in NODES}
        alice = Credentials.from_dir(space["ca"] / "alice")
        schema = space["nodes"]["n1"].engine.schema("default")
        self.rnd = start(Query("count", "default", where=where), schema, K).next_round()
        assert self.rnd is not None
        self.query = new_query(alice, "count", "default", where=where)
        self.ref = types.RoundRef(0, K, None, self.rnd)
        self.ids = {n: i + 1 for i, n in enumerate(NODES)}
        self.names = {i: n for n, i in self.ids.items()}
        size = self.rnd.size
        self.setup = types.SecAggSetup(os.urandom(32), tuple(self.ids.values()), size)
        self.server = SecAggServer(SecAggConfig(self.setup.session_id, self.setup.client_ids, size))

    def step(self, node: str, stage: Stage, payloads: tuple[bytes, ...]) -> list[bytes]:
        ref = self.ref if stage is Stage.ADVERTISE else None
        step = types.SecAggStep(self.query, self.setup, stage, payloads, ref, self.ids[node])
        out: list[bytes] = self.clients[node].secagg_step(step, 30)
        return out

    def advertise(self) -> None:
        self.adv = {self.ids[n]: self.step(n, Stage.ADVERTISE, ()) for n in NODES}

    def finish(self) -> int:
        roster = self.server.collect_advertise(
            {c: AdvertiseKeys.from_bytes(o[0]) for c, o in self.adv.items()}
        )
        roster_bytes = tuple(b for c in roster for b in self.adv[c])
        shared = {c: self.step(self.names[c], Stage.SHARE_KEYS, roster_bytes) for c in roster}
        routing = self.server.collect_shares(
            {
                c: {m.recipient: m for m in (EncryptedShares.from_bytes(b) for b in out)}
                for c, out in shared.items()
            }
        )
        masked = {
            r: self.step(self.names[r], Stage.MASKED_INPUT, tuple(m.to_bytes() for m in s.values()))
            for r, s in routing.items()
        }
        request = self.server.collect_masked(
            {c: MaskedInput.from_bytes(o[0]) for c, o in masked.items()}
        )
        unmasked = {
            c: self.step(self.names[c], Stage.UNMASK, (request.to_bytes(),))
            for c in request.survivors
        }
        total: np.ndarray[Any, Any] = self.server.collect_unmask(
            {c: UnmaskShares.from_bytes(o[0]) for c, o in unmasked.items()}
        )
        return round(self.rnd.decode(total)[0])

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def test_a_session_in_flight_finishes_on_the_data_it_started_with(
    space: dict[str, Any], union: pd.DataFrame
) -> None:
    """Advertise (each node computes and masks its vector), then n1 reloads a new data file
    and a new policy, then the remaining stages: the total is the old data's, exactly."""
    where = "age > 30"
    session = _HandSession(space, where)
    try:
        session.advertise()
        n1 = space["root"] / "n1.csv"
        pd.read_csv(space["partitions"]["n1"]).head(40).to_csv(n1, index=False)
        _edit(space, "n1", f"min_group_size = {K}", "min_group_size = 6")
        report = space["nodes"]["n1"].reload()
        assert report.applied and "datasets" in report.changed
        assert session.finish() == int((union.age > 30).sum())
    finally:
        session.close()
    new = pd.concat([pd.read_csv(n1), *(pd.read_csv(space["partitions"][n]) for n in ("n2", "n3"))])
    assert _count(space, where=where) == int((new.age > 30).sum())  # the next one: new data


def test_an_analyst_revoked_mid_session_is_stopped_at_the_next_stage(
    space: dict[str, Any],
) -> None:
    """The node verified alice's signed query at advertise; revoked by a reload, the same
    query is refused at the session's next stage (no cached verification lets it through)."""
    session = _HandSession(space, "age > 30")
    try:
        session.advertise()
        _edit(space, "n1", "[tls]\n", '[tls]\nrevoked = ["alice"]\n')
        assert space["nodes"]["n1"].reload().applied
        with pytest.raises(PolicyError, match=r"node n1 refused.*'alice' is revoked"):
            session.finish()
    finally:
        session.close()


def test_a_reload_waits_for_the_calls_in_flight(space: dict[str, Any]) -> None:
    """A call sees one configuration from start to end: the swap waits for it, and calls that
    arrive meanwhile wait for the swap."""
    node = space["nodes"]["n1"]
    engine, policy = node.engine, node.service.policy
    entered, release = threading.Event(), threading.Event()

    def slow_may_see(analyst: str, dataset: str) -> bool:  # inside the describe call
        entered.set()
        assert release.wait(10)
        return True

    caller = Identity("agg", "aggregator", dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC))
    seen: list[Any] = []
    policy.may_see = slow_may_see  # type: ignore[method-assign]
    try:
        t = threading.Thread(target=lambda: seen.append(node.service.describe(caller, None)))
        t.start()
        assert entered.wait(10)
        extra = (
            f'[datasets.more]\npath = "{space["partitions"]["n1"]}"\n[datasets.more.columns]\n'
            'age = "int"\nincome = "float"\nsex = "str"\n'
        )
        _edit(space, "n1", "[policy]\n", extra + "[policy]\n")
        reports: list[Any] = []
        r = threading.Thread(target=lambda: reports.append(node.reload()))
        r.start()
        time.sleep(0.5)  # the new engine is built; the swap waits for the describe
        assert not reports and r.is_alive()
        release.set()
        t.join(10)
        r.join(20)
    finally:
        release.set()
    assert [d.name for d in seen[0].datasets] == ["default"]  # the old config, throughout
    assert reports[0].applied and node.engine is not engine
    assert node.service.policy is not policy
    node.service.policy.may_see = lambda a, d: True  # type: ignore[method-assign]
    assert [d.name for d in node.service.describe(caller, None).datasets] == ["default", "more"]


def test_an_anonymization_job_on_a_changed_dataset_ends(space: dict[str, Any]) -> None:
    """A prepared job holds counts read from the old data: its next step is refused, with the
    reason; a job on another dataset goes on."""
    anon = space["nodes"]["n1"].service._anon
    now = time.monotonic()
    on_default = AnonJob(SimpleNamespace(dataset="default"), None, "alice", "r1", now)  # type: ignore[arg-type]
    elsewhere = AnonJob(SimpleNamespace(dataset="other"), None, "alice", "r2", now)  # type: ignore[arg-type]
    anon._jobs.update({("alice", "r1"): on_default, ("alice", "r2"): elsewhere})
    try:
        pd.read_csv(space["partitions"]["n1"]).head(50).to_csv(
            space["root"] / "n1.csv", index=False
        )
        report = space["nodes"]["n1"].reload()
        assert report.applied and report.changed == {"datasets": {"changed": {"default": ["file"]}}}
        with pytest.raises(ProtocolError, match=r"request 'r1' was ended: the dataset was changed"):
            anon.job("alice", "r1")
        assert anon.job("alice", "r2") is elsewhere
    finally:
        anon._jobs.clear()


def test_queries_during_reloads_are_exact_or_fail_cleanly(
    space: dict[str, Any], union: pd.DataFrame
) -> None:
    """Queries run while n1 reloads back and forth between two data files: every answer is
    exactly one file's, or a clean error, never a mix."""
    n1 = space["root"] / "n1.csv"
    full = pd.read_csv(space["partitions"]["n1"])
    small = full.head(60)
    others = [pd.read_csv(space["partitions"][n]) for n in ("n2", "n3")]
    expect = {}
    for df in (full, small):
        u = pd.concat([df, *others])
        expect[len(df)] = (len(u), float(u.age.mean()))
    answers: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def query() -> None:
        with _fed(space) as fed:
            while not stop.is_set():
                try:
                    answers.append((int(fed.count("default")), float(fed.mean("default", "age"))))
                except TrustspaceError as exc:
                    errors.append(exc)

    t = threading.Thread(target=query)
    t.start()
    try:
        for i in range(8):
            (small if i % 2 == 0 else full).to_csv(n1, index=False)
            assert space["nodes"]["n1"].reload().applied
            time.sleep(0.15)
    finally:
        stop.set()
        t.join(60)
    assert answers
    counts = {c for c, _ in expect.values()}
    for count, mean in answers:
        assert count in counts
        # count and mean are separate queries: each is one file's, whichever
        assert any(mean == pytest.approx(m, rel=1e-12) for _, m in expect.values())
    for exc in errors:  # a query whose rounds straddle a data change ends, saying why
        assert "configuration reload" in str(exc) or "changed" in str(exc), exc


# ------------------------------------------------------------------ the file watch
def test_the_file_watch_reloads_a_changed_config(space: dict[str, Any]) -> None:
    node = space["nodes"]["n2"]
    before = len(_reloads(space, "n2"))

    def trigger() -> None:
        node.reload(trigger="watch")

    watch = Watcher(lambda: watched_files(node.config), lambda: 0.5, trigger).start()
    try:
        time.sleep(0.6)  # unchanged: no reload
        assert len(_reloads(space, "n2")) == before
        _edit(space, "n2", BOB_RULE, "")
        deadline = time.monotonic() + 10
        while len(_reloads(space, "n2")) == before and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watch.stop()
    last = _reloads(space, "n2")[-1]
    assert last["via"] == "watch" and last["changed"] == {"policy.rules": "+0 -1"}
    with pytest.raises(TrustspaceError, match="node n2 serves no dataset"):
        _count(space, "bob")


def test_pid_file_refuses_a_second_holder(tmp_path: Path) -> None:
    pid = PidFile(tmp_path / "node.pid").acquire()
    try:
        assert PidFile.running(tmp_path / "node.pid") == os.getpid()
        with pytest.raises(TrustspaceError, match=r"another node \(pid \d+\) is running"):
            PidFile(tmp_path / "node.pid").acquire()
    finally:
        pid.release()
    assert not (tmp_path / "node.pid").exists()
    (tmp_path / "node.pid").write_text("999999\n")  # left by a killed node: not locked
    with pytest.raises(TrustspaceError, match="stale pid file"):
        PidFile.running(tmp_path / "node.pid")
    PidFile(tmp_path / "node.pid").acquire().release()  # a stale file is taken over


# ------------------------------------------------------------------ real processes
@pytest.mark.slow
def test_reload_a_running_node_process(
    tmp_path: Path,
    pki: Path,
    partitions: dict[str, Path],
    union: pd.DataFrame,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``trustspace node CONFIG`` processes; n1's policy file is edited; ``trustspace node
    reload`` SIGHUPs it, waits for its audit line and prints what changed; bob's count,
    allowed before, is now refused by the running node; a broken edit is refused locally and,
    sent by SIGHUP anyway, recorded as denied while the node goes on with the last good one."""
    ca = pki / "ca"
    procs: list[subprocess.Popen[str]] = []
    cfgs, addrs = {}, {}
    try:
        for name in NODES:
            cfgs[name] = write_node_config(
                tmp_path / f"{name}.toml",
                name=name,
                identity=ca / name,
                data=partitions[name],
                audit=tmp_path / "audit" / f"{name}.jsonl",
                policy=POLICY,
            )
            proc, addrs[name] = start_cli(["node", str(cfgs[name])])
            procs.append(proc)
        agg_cfg = tmp_path / "agg.toml"
        agg_cfg.write_text(
            '[aggregator]\nlisten = "127.0.0.1:0"\ndrain_grace_s = 5\n'
            f'[tls]\ndir = "{ca / "agg"}"\n'
            + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{a}"\n' for n, a in addrs.items())
        )
        agg_proc, agg = start_cli(["aggregator", str(agg_cfg)])
        procs.append(agg_proc)
        bob = Credentials.from_dir(ca / "bob")
        with Federation.connect(agg, credentials=bob, server_name="agg") as fed:
            assert fed.count("default", where="age > 30") == int((union.age > 30).sum())

        # a second node on the same config is refused (the pid file is held)
        second = subprocess.run(
            [sys.executable, "-m", "trustspace.cli.main", "node", str(cfgs["n1"])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and "another node (pid" in second.stderr

        cfg = cfgs["n1"]
        good = cfg.read_text()
        cfg.write_text(good.replace(BOB_RULE, BOB_RULE + 'columns = ["sex"]\n'))  # not age
        capsys.readouterr()
        assert main(["node", "reload", str(cfg), "--timeout", "30"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"node n1 \(pid \d+\): reload applied \(audit line \d+\): ", out), out
        assert "policy.rules +1 -1" in out
        with (
            Federation.connect(agg, credentials=bob, server_name="agg") as fed,
            pytest.raises(PolicyError, match=r"node n1 refused.*'columns'.*column\(s\) age"),
        ):
            fed.count("default", where="age > 30")

        # broken: `node reload` checks it first and does not signal the node
        cfg.write_text(good.replace("[policy]\n", "[policy\n"))
        assert main(["node", "reload", str(cfg)]) == 2
        assert "not valid TOML" in capsys.readouterr().err
        pid = PidFile.running(tmp_path / "audit" / "n1.jsonl.pid")
        os.kill(pid, signal.SIGHUP)  # sent anyway: the node refuses it and says so
        log = tmp_path / "audit" / "n1.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = [json.loads(x) for x in log.read_text().splitlines()]
            reloads = [r for r in recs if r.get("operation") == "config.reload"]
            if len(reloads) == 2:
                break
            time.sleep(0.1)
        assert [r["decision"] for r in reloads] == ["allow", "deny"]
        assert reloads[0]["changed"] == {"policy.rules": "+1 -1"}
        assert reloads[1]["via"] == "SIGHUP" and "not valid TOML" in reloads[1]["reason"]
        alice = Credentials.from_dir(ca / "alice")
        with Federation.connect(agg, credentials=alice, server_name="agg") as fed:
            assert fed.count("default") == 360  # still serving on the last good config

        for p in procs:
            p.send_signal(signal.SIGTERM)
        errs = []
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            errs.append(err)
        assert re.search(r"node n1: reload applied: policy\.rules \+1 -1 \(SIGHUP\)", errs[0])
        denied = [json.loads(x) for x in log.read_text().splitlines() if '"deny"' in x]
        assert any(d["requester"] == "bob" for d in denied)  # the running node refused bob
        assert "node n1: reload refused" in errs[0]  # the log line of each attempt
        assert not (tmp_path / "audit" / "n1.jsonl.pid").exists()  # removed at exit
        assert main(["audit", "verify", str(log)]) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)


def test_a_revocation_list_file_rewritten_in_place_is_a_change(tmp_path: Path) -> None:
    """A ``[tls]`` file besides the identity (the CA's revocation list, ``[tls] crl``) is
    watched and compared by content: re-signed in place, it is a change to reload, though no
    key of the config changed."""
    from dataclasses import dataclass, replace

    from trustspace.node.config import NodeConfig as Config
    from trustspace.node.config import TlsConfig, policy_from_dict
    from trustspace.node.reload import changes, file_digests

    @dataclass(frozen=True)
    class TlsWithCrl(TlsConfig):
        crl: Path | None = None

    crl = tmp_path / "ca.crl"
    crl.write_bytes(b"list 1")
    tls = TlsWithCrl(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", (), crl)
    cfg = Config("n1", "127.0.0.1:0", tls, (), policy_from_dict({}), tmp_path / "a.jsonl")
    cfg = replace(cfg, source=tmp_path / "n1.toml")
    assert watched_files(cfg) == (tmp_path / "n1.toml", crl)
    before = file_digests(cfg)
    assert changes(cfg, cfg, None, None, before, file_digests(cfg)) == {}
    crl.write_bytes(b"list 2")
    assert changes(cfg, cfg, None, None, before, file_digests(cfg)) == {"tls.crl": "file changed"}
