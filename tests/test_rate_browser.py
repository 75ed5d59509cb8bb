"""The rating page in a real browser: Playwright driving the system's chromium (Debian's `chromium` package,
installed by `make setup-browser`; no browser download). Two raters rate five pairs each, by clicks and by
keyboard, one reloads mid-way; then the SQLite rows and the report's win-rates are checked."""

import json
import shutil
import sqlite3
import threading
import time

import pytest
import uvicorn

from dgalign.eval.report import write_report
from dgalign.rate.app import create_app
from dgalign.rate.store import Store, resolve_pairs
from rate_helpers import METHOD_NAMES, copy_run, free_port

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (make setup-browser installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra (make setup)")

DIMS = ["quality", "helpfulness"]
SIDE = {"1": "left", "2": "tie", "3": "right"}
# per rater, per pair: (how, choices per dimension as keys 1/2/3); "reload" reloads after the first choice
PLANS = {
    "ann": [("click", "13"), ("click", "22"), ("keys-reload", "31"), ("keys", "11"), ("keys", "32")],
    "bob": [("keys", "13"), ("keys", "21"), ("click-reload", "33"), ("click", "12"), ("keys", "11")],
}


@pytest.fixture
def served(tmp_path):
    run = copy_run(tmp_path)
    store = Store(run)
    items = store.sync_items(resolve_pairs(run, "base,bon:n=3"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, items, DIMS), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield run, f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def _no_method_names(page) -> None:
    html = page.content()
    assert not [m for m in METHOD_NAMES if m in html]


def _rate(page, how: str, choices: str) -> None:
    prompt, left = page.inner_text("#prompt"), page.inner_text("#answer-a")
    for i, key in enumerate(choices):
        if how.startswith("click"):
            page.click(f"#dimensions tr:nth-child({i + 1}) button[data-side={SIDE[key]}]")
        else:
            page.keyboard.press(key)
        if i == 0 and how.endswith("reload"):  # mid-way: the same pair comes back, same order, choices cleared
            page.reload()
            assert (page.inner_text("#prompt"), page.inner_text("#answer-a")) == (prompt, left)
            assert page.locator("button.chosen").count() == 0
            return _rate(page, how.removesuffix("-reload"), choices)
    assert page.locator("button.chosen").count() == len(DIMS)
    with page.expect_navigation():
        page.click("#submit") if how == "click" else page.keyboard.press("Enter")


def test_two_raters_rate_five_pairs_by_clicks_and_keys(served):
    run, url = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        for rater, plan in PLANS.items():
            page = browser.new_context().new_page()  # a rater per context: their own cookie
            page.goto(url)
            page.fill("#name", rater)
            with page.expect_navigation():
                page.click("#signin")
            for done, (how, choices) in enumerate(plan):
                assert page.inner_text("#progress-text") == f"{done} of 5 rated"
                _no_method_names(page)
                if done == 0:  # Enter before any choice is refused on the page
                    page.keyboard.press("Enter")
                    assert "choose A, tie or B" in page.inner_text("#message")
                _rate(page, how, choices)
            assert page.locator("#done").count() == 1 and page.inner_text("#progress-text") == "5 of 5 rated"
        browser.close()

    with sqlite3.connect(run / "ratings.sqlite") as conn:
        rows = conn.execute("SELECT a.rater, a.x_on_left, v.dimension, v.winner FROM assignments a "
                            "JOIN ratings r ON r.assignment_id = a.id JOIN verdicts v ON v.rating_id = r.id "
                            "ORDER BY a.id, v.rowid").fetchall()
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM assignments").fetchone() == (10, 5)
    # what each press meant, in x/y terms through the order each rater was shown
    expected = {d: [] for d in DIMS}
    for k, (rater, x_on_left, dim, winner) in enumerate(rows):
        pressed = SIDE[PLANS[rater][(k // len(DIMS)) % 5][1][k % len(DIMS)]]
        want = "tie" if pressed == "tie" else ("x" if (pressed == "left") == bool(x_on_left) else "y")
        assert winner == want
        expected[dim].append(winner)
    assert len(rows) == 2 * 5 * len(DIMS)

    write_report(run)
    summary = json.loads((run / "summary.json").read_text())["human_evaluation"]
    assert summary["raters"] == ["ann", "bob"] and summary["ratings"] == 10
    for d in DIMS:
        w = summary["groups"]["humans"]["pairs"]["base vs bon:n=3"][d]
        assert w["n"] == 10 and w["prompts"] == 5
        for c in ("x", "tie", "y"):
            assert w[c]["mean"] == pytest.approx(expected[d].count(c) / 10)
            assert w[c]["lo"] <= w[c]["mean"] <= w[c]["hi"]
    assert summary["agreement"]["quality"]["kind"] == "Cohen" and summary["agreement"]["quality"]["items"] == 5
    assert "## Human evaluation" in (run / "report.md").read_text()
