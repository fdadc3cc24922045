"""Node policy: rules by analyst/dataset/operation/columns, rate limit, release of rows."""

from __future__ import annotations

import pytest

from trustspace.errors import ConfigError, PolicyError
from trustspace.node.config import policy_from_dict
from trustspace.node.policy import Policy, PolicyRefused, Request, work_units

POLICY = {
    "min_group_size": 5,
    "rules": [
        {"analysts": ["alice"], "operations": ["*"], "datasets": ["default"]},
        {
            "analysts": ["bob"],
            "operations": ["count", "mean"],
            "datasets": ["default"],
            "columns": ["age"],
        },
    ],
    "rate_limit": {"per_minute": 60, "burst": 2},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _policy(clock: FakeClock | None = None) -> Policy:
    return Policy("org-a", policy_from_dict(POLICY), clock=clock or FakeClock())


def test_allowed_requests_pass() -> None:
    p = _policy()
    p.check(Request("alice", "corr", "default", ("age", "income"), "r1"))
    p.check(Request("bob", "mean", "default", ("age",), "r2"))


@pytest.mark.parametrize(
    ("req", "rule"),
    [
        (Request("carol", "count", "default", ()), "analysts"),
        (Request("alice", "count", "secret", ()), "datasets"),
        (Request("bob", "var", "default", ("age",)), "operations"),
        (Request("bob", "mean", "default", ("age", "income")), "columns"),
    ],
)
def test_refusals_name_node_and_rule(req: Request, rule: str) -> None:
    with pytest.raises(PolicyRefused) as info:
        _policy().check(req)
    assert info.value.rule == rule and info.value.node == "org-a"
    assert isinstance(info.value, PolicyError)
    assert "org-a" in str(info.value) and rule in str(info.value)


def test_columns_refusal_names_the_column() -> None:
    with pytest.raises(PolicyRefused, match="income"):
        _policy().check(Request("bob", "mean", "default", ("age", "income")))


def test_rate_limit_charges_work_per_analyst() -> None:
    clock = FakeClock()
    p = _policy(clock)  # 60 units per minute, burst 2
    p.check(Request("alice", "count", "default", ()))  # the rules cost nothing
    p.charge("alice", work_units(1))  # one small round: one unit
    p.charge("alice")
    with pytest.raises(PolicyRefused, match="work units per minute") as info:
        p.charge("alice")
    assert info.value.rule == "rate_limit"
    p.charge("bob")  # buckets are per analyst
    clock.now += 1.0  # 60/min -> one unit per second
    p.charge("alice")
    # a large round costs more: a 20,000-entry histogram is 5 units, 256 encrypted words 1 more
    assert work_units(20_000) == 5 and work_units(10, 256) == 2
    clock.now += 2.0
    p.charge("alice", work_units(20_000))  # dearer than the burst: runs only from a full bucket
    with pytest.raises(PolicyRefused):
        p.charge("alice", 1)


def test_release_rows_default_refused() -> None:
    with pytest.raises(PolicyRefused) as info:
        _policy().check_release("alice")
    assert info.value.rule == "release_rows"
    Policy("n", policy_from_dict({"release_rows": True})).check_release("alice")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"min_group_size": 0}, "min_group_size = 0"),
        ({"min_group_size": "5"}, "min_group_size = '5'"),
        ({"rules": [{"analysts": "alice", "operations": ["*"]}]}, r"rules\[0\].analysts"),
        ({"rules": [{"analysts": ["a"], "operations": ["*"], "colums": ["x"]}]}, "colums"),
        ({"rate_limit": {"per_minute": -1}}, "per_minute = -1"),
        ({"release_rows": "yes"}, "release_rows"),
    ],
)
def test_bad_policy_names_key_and_value(data: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        policy_from_dict(data)


def test_may_see_hides_datasets_without_a_rule() -> None:
    p = _policy()
    assert p.may_see("alice", "default") and p.may_see("bob", "default")
    assert not p.may_see("alice", "secret") and not p.may_see("carol", "default")
