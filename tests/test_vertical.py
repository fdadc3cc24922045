"""Vertical partitions end to end: PSI and joint statistics over Federation.local.

Two organisations hold different columns of Adult about overlapping people, keyed by a
synthetic customer id. Every figure is checked against pandas / statsmodels on the joined rows;
every attack below is a request a curious analyst or a careless operator could make.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace import Federation
from trustspace.errors import ConfigError, DataError, PolicyError, ProtocolError, TrustspaceError
from trustspace.stats import Query

ADULT = Path(__file__).resolve().parents[1] / "demos" / "data" / "adult" / "adult.csv"
N = 1200


def _split(seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(bank, telco, joined): bank holds age/sex/salary, telco hours-like and region columns;
    60% of each side's people are in the other's data."""
    adult = pd.read_csv(ADULT, sep=";").head(N).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    adult["cid"] = [f"C{i:06d}" for i in rng.permutation(10 * N)[:N]]
    adult["defaulted"] = (adult["salary-class"] == ">50K").astype(int)
    adult["spend"] = (adult["age"] * 3.5 + rng.normal(0, 20, N)).round(2)
    order = rng.permutation(N)
    bank_rows = order[: int(0.8 * N)]
    telco_rows = order[int(0.3 * N) :]
    bank = adult.loc[bank_rows, ["cid", "age", "sex", "defaulted"]].sample(frac=1, random_state=1)
    telco = adult.loc[telco_rows, ["cid", "spend", "race", "workclass"]].sample(
        frac=1, random_state=2
    )
    joined = bank.merge(telco, on="cid")
    return bank.reset_index(drop=True), telco.reset_index(drop=True), joined


@pytest.fixture(scope="module")
def space() -> Iterator[tuple[Federation, pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    bank, telco, joined = _split()
    fed = Federation.local(
        {"bank": bank, "telco": telco},
        domains={
            "sex": ["Female", "Male"],
            "race": sorted(set(telco["race"])),
            "defaulted": [0, 1],
        },
        key_bits=2048,
    )
    with fed:
        yield fed, bank, telco, joined


@pytest.fixture(scope="module")
def view(space: tuple[Federation, pd.DataFrame, pd.DataFrame, pd.DataFrame]):  # type: ignore[no-untyped-def]
    fed = space[0]
    return fed.intersect("default", on="cid", nodes=["bank", "telco"])


def test_cardinality_and_align_sizes_equal_the_join(space, view) -> None:  # type: ignore[no-untyped-def]
    fed, _, _, joined = space
    n = fed.intersect("default", on="cid", nodes=["bank", "telco"], mode="cardinality")
    assert isinstance(n, int) and n == len(joined)
    assert view.size == len(joined)
    assert set(view.columns) >= {"bank.age", "telco.spend", "telco.race"}
    assert not any(c.endswith(".cid") for c in view.columns)  # the id is never published


def test_joint_statistics_equal_pandas_on_the_join(space, view) -> None:  # type: ignore[no-untyped-def]
    _, _, _, joined = space
    old = joined[joined.age >= 40]
    assert view.count(where="bank.age >= 40") == len(old)
    assert view.mean("telco.spend", where="bank.age >= 40") == pytest.approx(
        old.spend.mean(), rel=1e-9
    )
    assert view.var("telco.spend", where="bank.age >= 40") == pytest.approx(
        old.spend.var(), rel=1e-8
    )
    assert view.sum("bank.age", where="telco.race = 'White'") == pytest.approx(
        joined[joined.race == "White"].age.sum(), rel=1e-12
    )
    assert view.corr("bank.age", "telco.spend") == pytest.approx(
        joined.age.corr(joined.spend), abs=1e-7
    )


def test_crosstab_across_nodes_equals_pd_crosstab(space, view) -> None:  # type: ignore[no-untyped-def]
    _, _, _, joined = space
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = view.crosstab("bank.sex", "telco.race")
    want = pd.crosstab(joined.sex, joined.race)
    k = 10
    for s in want.index:
        for r in want.columns:
            w = int(want.loc[s, r])
            g = got.loc[s, r]
            if w >= k:
                assert g == w
            else:
                assert np.isnan(g)  # suppressed below min_group_size


def test_woe_iv_equals_the_formula_on_the_join(space, view) -> None:  # type: ignore[no-untyped-def]
    _, _, _, joined = space
    edges = [100.0, 130.0, 160.0, 190.0]
    table = view.woe_iv(
        "bank.defaulted", ["telco.spend", "telco.race"], edges={"telco.spend": edges}
    )
    cut = pd.cut(joined.spend, [-np.inf, *edges, np.inf], right=False)
    ct = pd.crosstab(cut, joined.defaulted)
    spend = table.loc["telco.spend"]
    assert list(spend["pos"].fillna(-1).astype(int))[:2] == [
        int(ct.iloc[0][1]) if ct.iloc[0][1] >= 10 and ct.iloc[0][0] >= 10 else -1,
        int(ct.iloc[1][1]) if ct.iloc[1][1] >= 10 and ct.iloc[1][0] >= 10 else -1,
    ]
    ok = spend["woe"].notna().to_numpy()
    pos, neg = spend["pos"][ok].to_numpy(), spend["neg"][ok].to_numpy()
    woe = np.log((pos / pos.sum()) / (neg / neg.sum()))
    assert np.allclose(spend["woe"][ok], woe)
    assert table.attrs["iv"]["telco.spend"] == pytest.approx(
        float(((pos / pos.sum() - neg / neg.sum()) * woe).sum())
    )


def test_vertical_ols_equals_statsmodels(space, view) -> None:  # type: ignore[no-untyped-def]
    import statsmodels.api as sm

    _, _, _, joined = space
    fit = view.ols("telco.spend", ["bank.age", "bank.defaulted"])
    ref = sm.OLS(joined.spend, sm.add_constant(joined[["age", "defaulted"]])).fit()
    assert np.allclose(fit.table["coef"], ref.params, rtol=1e-7)
    assert np.allclose(fit.table["std_err"], ref.bse, rtol=1e-6)
    assert fit.r_squared == pytest.approx(ref.rsquared, rel=1e-7)
    assert fit.n == len(joined)


# ---------------------------------------------------------------------- attacks and bad input
def test_the_id_column_is_not_a_column_of_any_statistic(view) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ConfigError, match=r"'bank\.cid' is not a column of the view.*the view has bank\.age"
    ):
        view.count(where="bank.cid = 'C000001'")
    with pytest.raises(ConfigError):
        view.count("bank.cid")


def test_a_crafted_query_on_the_id_column_is_refused_past_the_api(space, view) -> None:  # type: ignore[no-untyped-def]
    """Signed by hand (no VerticalView check): the aggregator and the nodes plan over the
    union schema, which has no id column."""
    fed = space[0]
    q = Query("count", "default", (), "bank.cid = 'C000001'", {})
    with pytest.raises(ConfigError, match=r"bank\.cid"):
        fed.run(q, view=view.ref)


def test_a_filter_or_across_nodes_is_refused(view) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="and"):
        view.count(where="bank.age >= 40 or telco.spend > 100")


def test_paillier_method_is_refused_over_a_view(space, view) -> None:  # type: ignore[no-untyped-def]
    fed = space[0]
    q = Query("mean", "default", ("telco.spend",), None, {})
    with pytest.raises(ConfigError, match="secure aggregation"):
        fed.run(q, "paillier", view=view.ref)


def test_a_forged_view_is_refused_by_the_nodes(space, view) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    fed = space[0]
    q = Query("count", "default", (), None, {})
    bigger = replace(view.ref, size=view.size + 1)
    with pytest.raises(TrustspaceError, match="other nodes or size"):
        fed.run(q, view=bigger)
    other = replace(view.ref, id="f" * 32)
    with pytest.raises(PolicyError, match="does not exist here"):
        fed.run(q, view=other)


def test_another_analysts_view_is_refused(space, view) -> None:  # type: ignore[no-untyped-def]
    from trustspace.transport.ca import Credentials, issue

    fed = space[0]
    assert fed.workdir is not None
    mallory = issue(fed.workdir / "ca", "mallory", "analyst")
    other = Federation.connect(
        fed.aggregator.address, Credentials.from_dir(mallory), server_name="aggregator"
    )
    with other, pytest.raises(PolicyError, match="another analyst"):
        other.run(Query("count", "default", (), None, {}), view=view.ref)


def test_a_view_describing_another_schema_is_refused(space, view) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from trustspace.stats import TableSchema

    fed = space[0]
    schemas = dict(view.ref.schemas)
    schemas["telco"] = TableSchema({"spend": "str", "race": "str", "workclass": "str"})
    with pytest.raises(TrustspaceError, match="schema"):
        fed.run(Query("count", "default", (), None, {}), view=replace(view.ref, schemas=schemas))


def test_wrong_id_column_name_names_the_node(space) -> None:  # type: ignore[no-untyped-def]
    fed = space[0]
    with pytest.raises(ConfigError, match=r"node bank: the id column .* is 'cid', not 'customer'"):
        fed.intersect("default", on="customer", nodes=["bank", "telco"])


def test_duplicate_ids_are_refused_by_count_never_by_value(tmp_path: Path) -> None:
    bank, telco, _ = _split()
    bank.loc[5, "cid"] = bank.loc[6, "cid"]
    secret = str(bank.loc[6, "cid"])
    fed = Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path)
    with fed, pytest.raises(DataError) as err:
        fed.intersect("default", on="cid", nodes=["bank", "telco"])
    assert "1 row(s) repeat an identifier" in str(err.value)
    assert secret not in str(err.value)
    audit = (tmp_path / "audit" / "bank.jsonl").read_text()
    assert secret not in audit


def test_null_ids_are_left_out(tmp_path: Path) -> None:
    bank, telco, joined = _split()
    lost = bank.loc[:9, "cid"].tolist()
    bank.loc[:9, "cid"] = None
    with Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path) as fed:
        n = fed.intersect("default", on="cid", nodes=["bank", "telco"], mode="cardinality")
    assert n == len(joined) - int(joined.cid.isin(lost).sum())


def test_normalisation_declared_alike_matches(tmp_path: Path) -> None:
    bank, telco, joined = _split()
    telco["cid"] = "  " + telco["cid"].str.lower()  # telco stores padded, lower-case ids
    plain = Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path / "plain")
    with plain, pytest.raises(PolicyError, match="fewer records"):
        plain.intersect("default", on="cid", nodes=["bank", "telco"])  # nobody matches
    spec = {"column": "cid", "case": "lower", "trim": True}
    both = Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path / "b", id_column=spec)
    with both:
        n = both.intersect("default", on="cid", nodes=["bank", "telco"], mode="cardinality")
    assert n == len(joined)


def test_mismatched_normalisation_is_refused_naming_the_nodes(tmp_path: Path) -> None:
    bank, telco, _ = _split()
    ids = {"bank": {"column": "cid", "case": "keep"}, "telco": {"column": "cid", "case": "lower"}}
    fed = Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path, id_column=ids)
    with fed, pytest.raises(ConfigError, match=r"(?s)identifiers differently.*bank:.*telco:"):
        fed.intersect("default", on="cid", nodes=["bank", "telco"])


def test_small_intersection_releases_nothing(tmp_path: Path) -> None:
    bank, telco, _ = _split()
    telco = telco[~telco.cid.isin(bank.cid)].copy()
    telco = pd.concat([telco, bank.head(3)[["cid"]].assign(spend=1.0, race="x", workclass="y")])
    with Federation.local({"bank": bank, "telco": telco}, workdir=tmp_path) as fed:
        with pytest.raises(PolicyError, match="fewer records than the strictest"):
            fed.intersect("default", on="cid", nodes=["bank", "telco"])
        for node in fed.nodes.values():
            assert not node.service.vertical.views  # no view kept anywhere


def test_the_aggregator_relays_nothing_readable(space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every envelope the aggregator relays is ciphertext: no identifier, no hash of one."""
    import hashlib

    from trustspace.aggregator import _vertical

    fed, bank, _, _ = space
    seen: list[bytes] = []
    real = _vertical.NodeClient.vertical_step

    def spy(self, step, timeout=60.0):  # type: ignore[no-untyped-def]
        reply = real(self, step, timeout)
        seen.extend(e.body for e in reply.outbox)
        return reply

    monkeypatch.setattr(_vertical.NodeClient, "vertical_step", spy)
    fed.intersect("default", on="cid", nodes=["bank", "telco"], mode="cardinality")
    blob = b"".join(seen)
    assert len(blob) > 32 * len(bank)
    for cid in bank.cid.head(50):
        assert cid.encode() not in blob
        assert hashlib.sha256(cid.encode()).digest() not in blob


def test_a_tampered_envelope_aborts_the_job(space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from trustspace.aggregator import _vertical
    from trustspace.transport import types

    fed = space[0]
    real = _vertical.NodeClient.vertical_step

    def flip(self, step, timeout=60.0):  # type: ignore[no-untyped-def]
        if step.inbox:
            e = step.inbox[0]
            bad = types.Envelope(e.sender, e.recipient, e.body[:-1] + bytes([e.body[-1] ^ 1]))
            step = type(step)(**{**step.__dict__, "inbox": (bad, *step.inbox[1:])})
        return real(self, step, timeout)

    monkeypatch.setattr(_vertical.NodeClient, "vertical_step", flip)
    with pytest.raises(ProtocolError):
        fed.intersect("default", on="cid", nodes=["bank", "telco"], mode="cardinality")


def test_cli_intersect_and_statistic_over_the_saved_view(space, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from trustspace.cli.main import main

    fed, _, _, joined = space
    assert fed.workdir is not None
    creds = next(
        p.parent for p in (fed.workdir / "ca").rglob("cert.pem") if p.parent.name == "analyst"
    )
    addr = fed.aggregator.address
    view_file = tmp_path / "view.json"
    rc = main(
        ["query", "-a", addr, "-c", str(creds), "--server-name", "aggregator", "intersect",
         "default", "--on", "cid", "--nodes", "bank,telco", "--save-view", str(view_file)]
    )  # fmt: skip
    assert rc == 0
    assert json.loads(view_file.read_text())["size"] == len(joined)
    assert oct(view_file.stat().st_mode & 0o777) == "0o600"
    rc = main(
        ["query", "-a", addr, "-c", str(creds), "--server-name", "aggregator", "count",
         "default", "--view", str(view_file), "--where", "bank.age >= 40"]
    )  # fmt: skip
    assert rc == 0
    assert str(int((joined.age >= 40).sum())) in capsys.readouterr().out


def test_dp_statistic_over_a_view_is_noisy_and_charged_at_every_node(tmp_path: Path) -> None:
    """epsilon= over a view: each node adds its noise share inside secure aggregation and
    charges its own ledger; the answer is within its stated interval of the exact one."""
    bank, telco, joined = _split()
    policy = {
        "min_group_size": 10,
        "rules": [{"analysts": ["*"], "operations": ["*"]}],
        "dp": {"epsilon": 5.0, "delta": 1e-5},
    }
    fed = Federation.local(
        {"bank": bank, "telco": telco},
        policy,
        bounds={"age": (17, 91), "spend": (0, 400)},
        workdir=tmp_path,
    )
    with fed:
        view = fed.intersect("default", on="cid", nodes=["bank", "telco"])
        r = view.run(
            Query("count", "default", (), "bank.age >= 40 and telco.spend > 100", {}),
            epsilon=1.0,
        )
        exact = int(((joined.age >= 40) & (joined.spend > 100)).sum())
        assert r.dp is not None and r.dp["epsilon"] == 1.0
        assert abs(float(r.value) - exact) <= 6 * r.dp["noise_std"] + 1
        budget = fed.budget("default")
        assert set(budget.index) == {"bank", "telco"}
        assert (budget["epsilon_spent"] > 0).all()


def test_two_node_view_runs_under_the_default_min_nodes(tmp_path: Path) -> None:
    """policy.min_nodes (3 by default) governs horizontal sums; a view's sessions hold exactly
    its nodes, so two organisations can work on a view (a horizontal sum is still refused)."""
    bank, telco, joined = _split()
    policy = {"min_nodes": 3, "rules": [{"analysts": ["*"], "operations": ["*"]}]}
    fed = Federation.local({"bank": bank, "telco": telco}, policy, workdir=tmp_path)
    with fed:
        view = fed.intersect("default", on="cid", nodes=["bank", "telco"])
        assert view.count(where="bank.age >= 40") == int((joined.age >= 40).sum())


def test_aggregator_check_compares_id_columns_not_schemas_of_a_vertical_dataset() -> None:
    from trustspace.aggregator.check import NodeCheck, _schemas
    from trustspace.stats import TableSchema
    from trustspace.transport.types import DatasetDescription, NodeDescription
    from trustspace.vertical.ids import IdSpec

    def check(name: str, cols: dict[str, str], ident: IdSpec) -> NodeCheck:
        d = DatasetDescription("default", TableSchema(cols).to_dict(), None, ident.to_dict())
        return NodeCheck(name, "x:1", description=NodeDescription(name, (d,), 10, False, 3))

    same = [
        check("bank", {"age": "int"}, IdSpec("cid")),
        check("telco", {"spend": "float"}, IdSpec("cid")),
    ]
    lines, problems = _schemas(same)
    assert not problems and "vertical on id column 'cid'" in lines[0]
    differ = [same[0], check("telco", {"spend": "float"}, IdSpec("cid", case="lower"))]
    lines, problems = _schemas(differ)
    assert problems and "id columns disagree" in problems[0] and "telco" in problems[0]


def test_three_nodes_intersect_and_a_term_may_join_two_of_them(tmp_path: Path) -> None:
    bank, telco, joined = _split()
    rng = np.random.default_rng(3)
    shop = (
        joined[["cid"]]
        .sample(frac=0.7, random_state=4)
        .assign(basket=lambda d: rng.integers(1, 50, len(d)))
    )
    all3 = joined.merge(shop, on="cid")
    fed = Federation.local({"bank": bank, "telco": telco, "shop": shop}, workdir=tmp_path)
    with fed:
        n = fed.intersect("default", on="cid", nodes=["bank", "telco", "shop"], mode="cardinality")
        assert n == len(all3)
        view = fed.intersect("default", on="cid", nodes=["shop", "bank", "telco"])
        assert view.size == len(all3)
        assert view.mean("shop.basket", where="bank.age >= 40") == pytest.approx(
            all3[all3.age >= 40].basket.mean(), rel=1e-12
        )
        with pytest.raises(ConfigError, match=r"two nodes"):
            view.mean("shop.basket", where="bank.age >= 40 and telco.spend > 100")


def test_horizontal_woe_iv_equals_pandas_on_the_union(tmp_path: Path) -> None:
    """woe_iv is a statistic of its own: over horizontal partitions too (bins at deciles)."""
    rng = np.random.default_rng(11)
    df = pd.DataFrame({"y": rng.integers(0, 2, 900), "x": rng.normal(size=900).round(3)})
    parts = {"a": df.iloc[:300], "b": df.iloc[300:600], "c": df.iloc[600:]}
    with Federation.local(parts, workdir=tmp_path) as fed:
        table = fed.woe_iv("default", "y", ["x"], edges={"x": [-1.0, 0.0, 1.0]})
    cut = pd.cut(df.x, [-np.inf, -1, 0, 1, np.inf], right=False)
    ct = pd.crosstab(cut, df.y)
    assert table["pos"].tolist()[0] == ct.iloc[0][1] and table["neg"].tolist()[0] == ct.iloc[0][0]
    pos, neg = table["pos"].to_numpy(), table["neg"].to_numpy()
    assert table.attrs["iv"]["x"] == pytest.approx(
        float(
            (
                (pos / pos.sum() - neg / neg.sum()) * np.log((pos / pos.sum()) / (neg / neg.sum()))
            ).sum()
        )
    )


def test_a_node_without_an_id_column_is_named(tmp_path: Path) -> None:
    bank, telco, _ = _split()
    fed = Federation.local(
        {"bank": bank, "telco": telco}, workdir=tmp_path, id_column={"bank": "cid"}
    )
    with (
        fed,
        pytest.raises(ConfigError, match="node telco: dataset 'default' declares no id_column"),
    ):
        fed.intersect("default", on="cid", nodes=["bank", "telco"])


def test_a_column_the_node_does_not_hold_is_named(view) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"telco\.salary"):
        view.mean("telco.salary")
    with pytest.raises(ConfigError, match=r"node\.column"):
        view.mean("spend")  # not qualified by its node
