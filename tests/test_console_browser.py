"""The operator console in a real headless Chromium, against a running data space.

Three ``trustspace node`` processes and a ``trustspace aggregator`` (``trustspace.testing``,
mutual TLS on 127.0.0.1), alice's and bob's real queries (one differentially private, one
refused, one with a ``<script>`` as its purpose), then Chromium (Debian's ``/usr/bin/chromium``
driven by Playwright) visits every page of node org-a's console: checks what it shows, uses
the audit filters through the form, reads the chain status, and fails on any script dialog,
any request that leaves the console's origin, or any console error. A screenshot of each page
goes to a temporary directory, and into ``$TRUSTSPACE_SCREENSHOTS`` when it is set (that is
how ``docs/images/console-*.png`` are made).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace.api import Credentials, Federation
from trustspace.errors import PolicyError
from trustspace.testing import LocalSpace, NodeSpec

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT = "<script>alert('pwned')</script>"
NODES = ("org-a", "org-b", "org-c")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`) "
        "to run the console's browser tests",
    ),
]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("console")
    rng = np.random.default_rng(11)  # test data only
    columns = {"age": "int", "income": "float", "sex": "str"}
    specs = []
    for name in NODES:
        n = 200
        csv = root / f"{name}.csv"
        pd.DataFrame(
            {
                "age": rng.integers(18, 90, n),
                "income": rng.normal(50_000, 9_000, n).round(2),
                "sex": rng.choice(["F", "M"], n),
            }
        ).to_csv(csv, index=False)
        specs.append(
            NodeSpec(
                name,
                {
                    "adult": {
                        "path": csv,
                        "columns": columns,
                        "domains": {"sex": ["F", "M"]},
                        "bounds": {"age": [0, 120]},
                    }
                },
                policy={"min_group_size": 5, "dp": {"epsilon": 2.0, "delta": 1e-6}},
                rules=[
                    {"analysts": ["alice"], "operations": ["*"]},
                    {"analysts": ["bob"], "operations": ["count"], "columns": ["sex"]},
                ],
                admin={"listen": "127.0.0.1:0"} if name == "org-a" else None,
            )
        )
    with LocalSpace(root) as space:
        space.init_ca(list(NODES), analysts=["alice", "bob"])
        target = space.start_all(specs)
        m = re.search(r"admin console (http://\S+/)", space.ready["org-a"])
        assert m, space.ready["org-a"]
        alice = Credentials.from_dir(space.identity("alice"))
        bob = Credentials.from_dir(space.identity("bob"))
        with Federation.connect(target, credentials=alice, purpose="wage-study") as fed:
            fed.count("adult")
            fed.mean("adult", "income", where="age >= 30")
            fed.count("adult", where="sex == 'F'", epsilon=0.5)
        with Federation.connect(target, credentials=alice, purpose=SCRIPT) as fed:
            fed.count("adult", where="age < 30")
        with Federation.connect(target, credentials=bob, purpose="headcount") as fed:
            fed.count("adult", where="sex == 'M'")
            with pytest.raises(PolicyError):
                fed.mean("adult", "income")
        yield {"url": m.group(1), "space": space, "root": root}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    taken: list[Path] = []
    yield taken
    out = os.environ.get("TRUSTSPACE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for p in taken:
            shutil.copy(p, Path(out) / p.name)


def test_console_pages_in_chromium(
    console: dict[str, Any], shots: list[Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = console["url"]
    dialogs: list[str] = []
    foreign: list[str] = []
    errors: list[str] = []

    def shot(page: Any, name: str) -> None:
        path = tmp_path / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5_000
        shots.append(path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on(
                "request",
                lambda r: None if r.url.startswith(url) else foreign.append(r.url),
            )
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "response",
                lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )

            # overview
            page.goto(url)
            expect(page).to_have_title(re.compile("overview · org-a"))
            expect(page.locator("#health")).to_have_text("serving")
            overview = page.locator("#overview")
            expect(overview).to_contain_text(console["space"].addresses["org-a"])
            expect(overview).to_contain_text("adult")
            head = page.locator("#head").inner_text()
            assert re.fullmatch(r"[0-9a-f]{64}", head)
            expect(page.locator("#chain")).to_contain_text(f"head {head[:16]}")
            shot(page, "overview")

            # datasets: the declared schema, no value
            page.click("nav >> text=datasets")
            expect(page).to_have_url(url + "datasets")
            schema = page.locator("#ds-adult table.schema")
            expect(schema).to_contain_text("income")
            expect(schema).to_contain_text("[0.0, 120.0]")
            expect(page.locator("#ds-adult td.rows")).to_have_text("200")
            shot(page, "datasets")

            # policy
            page.click("nav >> text=policy")
            expect(page.locator("#rules tbody tr")).to_have_count(2)
            expect(page.locator("#rules")).to_contain_text("bob")
            expect(page.locator("#settings")).to_contain_text("min_group_size")
            expect(page.locator("#dp")).to_contain_text("epsilon 2.0")
            shot(page, "policy")

            # audit: the chain, the rows, then the filters through the form
            page.click("nav >> text=audit")
            expect(page.locator("#chain")).to_contain_text("chain intact")
            expect(page.locator("#chain")).to_contain_text("tail matches the checkpoint")
            purpose = page.locator("#audit td.purpose", has_text="<script>").first
            expect(purpose).to_have_text(SCRIPT)  # shown as text, never run
            shot(page, "audit")
            page.fill("input[name=analyst]", "bob")
            page.select_option("select[name=decision]", "deny")
            page.click("form.filters button[type=submit]")
            expect(page).to_have_url(re.compile(r"analyst=bob.*decision=deny"))
            rows = page.locator("#audit tbody tr")
            expect(rows.first.locator("td.requester")).to_have_text("bob")
            n = rows.count()
            assert n >= 1
            for i in range(n):
                assert rows.nth(i).locator("td.requester").inner_text() == "bob"
                assert rows.nth(i).locator("td.decision").inner_text() == "deny"
            rows.first.locator("summary").click()
            expect(rows.first.locator("pre")).to_contain_text("policy rule")
            shot(page, "audit-filtered")
            page.fill("input[name=analyst]", "")
            page.select_option("select[name=decision]", "")
            page.fill("input[name=q]", "age >= 30")
            page.click("form.filters button[type=submit]")
            rows = page.locator("#audit tbody tr")
            expect(rows.first.locator("td.requester")).to_have_text("alice")
            expect(rows.first.locator("td.operation")).to_have_text("mean")

            # usage and budgets
            page.click("nav >> text=usage")
            usage = page.locator("#usage-analyst")
            expect(usage.locator("td.key")).to_have_text(["alice", "bob"])
            expect(page.locator("#usage-purpose")).to_contain_text("wage-study")
            expect(page.locator("#usage-purpose td.key", has_text="<script>")).to_have_text(SCRIPT)
            shot(page, "usage")
            page.click("nav >> text=budgets")
            budgets = page.locator("#budgets tbody tr")
            expect(budgets).to_have_count(2)  # a budget is set when an analyst first asks
            expect(budgets.nth(0)).to_contain_text("alice")
            expect(budgets.nth(1)).to_contain_text("bob")
            used = [float(budgets.nth(i).locator("meter").get_attribute("value")) for i in (0, 1)]
            assert used[0] > 0 and used[1] == 0  # only alice asked a DP question
            shot(page, "budgets")

            # the machine endpoints
            health = page.goto(url + "healthz")
            assert health is not None and health.status == 200
            assert page.inner_text("body").strip() == "serving"
        finally:
            browser.close()
    assert dialogs == [], f"a script ran in the console: {dialogs}"
    assert foreign == [], f"the console loaded something from elsewhere: {foreign}"
    assert errors == [], f"console errors: {errors}"
    assert len(shots) == 7
