"""Disclosure floors for exact answers (issue 14): ``policy.min_k`` and
``policy.members`` with ``exact_requires_all``.

The attack: with one node down, an exact answer over the other two, subtracted from an earlier
answer over all three, gives the missing node's exact count. A node with
``exact_requires_all`` answers an exact query only when every listed member is in the session
(checked on the signed roster and again on the survivors before unmasking).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace.api import Federation
from trustspace.errors import ConfigError, PolicyError
from trustspace.node.config import policy_from_dict


def _parts() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(21)  # test data only
    return {
        f"n{i}": pd.DataFrame(
            {"age": rng.integers(18, 90, 60 + 10 * i), "sex": rng.choice(["F", "M"], 60 + 10 * i)}
        )
        for i in range(1, 4)
    }


RULES = [{"analysts": ["*"], "operations": ["*"]}]


def test_differencing_by_dropout_works_without_the_floor(tmp_path: Path) -> None:
    """The attack, so that the test below can fail: exact answers over 3 and then 2 nodes."""
    parts = _parts()
    with Federation.local(parts, {"min_group_size": 5, "rules": RULES}, workdir=tmp_path) as fed:
        total = fed.count()
        fed.nodes["n3"].stop(0)
        with pytest.warns(UserWarning, match="n3 did not answer"):
            without = fed.count()
    assert total - without == len(parts["n3"])  # n3's exact row count


def test_exact_requires_all_members(tmp_path: Path) -> None:
    parts = _parts()
    policy = {
        "min_group_size": 5,
        "members": ["n1", "n2", "n3"],
        "exact_requires_all": True,
        "rules": RULES,
    }
    with Federation.local(parts, policy, workdir=tmp_path) as fed:
        assert fed.count() == sum(len(p) for p in parts.values())
        assert fed.mean("default", "age", method="paillier") == pytest.approx(
            float(pd.concat(parts.values()).age.mean()), rel=1e-12
        )
        fed.nodes["n3"].stop(0)
        with pytest.raises(PolicyError, match=r"exact_requires_all.*missing: n3"):
            fed.count()
        with pytest.raises(PolicyError, match=r"exact_requires_all.*missing: n3"):
            fed.sum("default", "age", method="paillier")


def test_min_k_floor_for_releases(tmp_path: Path) -> None:
    from trustspace.anon.hierarchy import Hierarchy

    parts = _parts()
    policy = {"min_group_size": 5, "min_k": 10, "release_rows": True, "rules": RULES}
    age = Hierarchy("age", [[str(a), f"{a // 10 * 10}s", "*"] for a in range(18, 90)])
    with Federation.local(parts, policy, workdir=tmp_path) as fed:
        with pytest.raises(PolicyError, match=r"'min_k'.*k >= 10.*k = 5"):
            fed.anonymize("default", {"age": age}, k=5)
        assert fed.anonymize("default", {"age": age}, k=10).classes >= 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"min_k": -1}, "min_k = -1"),
        ({"exact_requires_all": True}, r"exact_requires_all = true needs .*policy\.members"),
        ({"members": "n1"}, "members"),
    ],
)
def test_bad_floor_config(data: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        policy_from_dict(data)
