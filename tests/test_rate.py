"""Human evaluation: the statistics on known answers, the ratings store, the position-debiased judge, the CLI."""

import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dgalign.errors import DGAlignError
from dgalign.eval.human import (
    Verdict,
    bradley_terry,
    cohen_kappa,
    fleiss_kappa,
    read_verdicts,
    summarise,
    win_tie_loss,
)
from dgalign.eval.report import write_report
from dgalign.rate.judge import check, judge_pairs, judge_run, preference
from dgalign.rate.store import Store, resolve_pairs

RUN = Path(__file__).parent / "data" / "rate-run"  # `dgalign bench` on the toy LM: base, bon:n=3, smc × 5 prompts
DIMS = ["quality", "helpfulness"]


@pytest.fixture
def run(tmp_path):
    shutil.copytree(RUN, tmp_path / "run")
    return tmp_path / "run"


# -- statistics -----------------------------------------------------------------------------------
def test_cohen_kappa_textbook():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5, κ = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["y", "y"], ["y", "y"]))  # chance agreement 1: undefined


def test_fleiss_kappa_matches_fleiss_1971_example():
    # the worked example (10 items, 14 raters, 5 categories): P̄ = 0.378, P̄_e = 0.213, κ = 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)


def test_bradley_terry_two_methods_exact_and_three_at_the_likelihood_optimum():
    # A beats B 3 times of 4, no prior: p_A / p_B = 3 is the maximum-likelihood answer
    theta = bradley_terry([("A", "B", 1.0)] * 3 + [("A", "B", 0.0)], prior=0.0)
    assert theta["A"] - theta["B"] == pytest.approx(math.log(3), abs=1e-8)
    assert theta["A"] + theta["B"] == pytest.approx(0.0, abs=1e-10)
    # three methods with ties: at the fixed point the gradient of the log-likelihood vanishes,
    # W_i = Σ_j N_ij p_i / (p_i + p_j) for every i
    outcomes = ([("A", "B", 1.0)] * 5 + [("A", "B", 0.0)] * 2 + [("B", "C", 1.0)] * 4 + [("B", "C", 0.5)] * 2
                + [("A", "C", 0.0)] + [("A", "C", 1.0)] * 3)
    theta = bradley_terry(outcomes, prior=0.0)
    p = {m: math.exp(t) for m, t in theta.items()}
    for m in p:
        wins = sum(s if i == m else 1 - s for i, j, s in outcomes if m in (i, j))
        expected = sum(p[m] / (p[m] + p[j if i == m else i]) for i, j, _ in outcomes if m in (i, j))
        assert wins == pytest.approx(expected, abs=1e-8), m
    assert theta["A"] > theta["B"] > theta["C"]
    # an undefeated method stays finite with the prior
    assert math.isfinite(bradley_terry([("A", "B", 1.0)] * 4)["A"])


def test_win_tie_loss_bootstrap_resamples_prompts():
    # prompt 0: x wins twice; prompt 1: y wins twice; prompt 2: a tie -> point 2/6, 2/6, 2/6
    vs = [Verdict(k, ("s", p), ("a", "b"), f"r{k}", "q", w)
          for k, (p, w) in enumerate([(0, "x"), (0, "x"), (1, "y"), (1, "y"), (2, "tie"), (2, "tie")])]
    w = win_tie_loss(vs)
    assert (w["n"], w["prompts"]) == (6, 3)
    for c in ("x", "tie", "y"):
        assert w[c]["mean"] == pytest.approx(1 / 3)
        # a resample of 3 prompts misses a given one with probability (2/3)³ = 30% (share 0) and draws
        # only it with 1/27 = 3.7% > 2.5% (share 1): the 95% interval is [0, 1]
        assert w[c]["lo"] == 0.0 and w[c]["hi"] == 1.0
    one = win_tie_loss(vs[:2])  # one prompt: no variation to resample
    assert one["x"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}


def test_summary_agreement_cohen_for_two_fleiss_for_three():
    def v(item, rater, winner):
        return Verdict(item, ("s", item), ("a", "b"), rater, "q", winner)

    two = [v(i, "ann", w) for i, w in enumerate("xxyt")] + [v(i, "bob", w) for i, w in enumerate("xyyt")]
    two = [Verdict(x.item, x.prompt, x.pair, x.rater, x.dimension, "tie" if x.winner == "t" else x.winner)
           for x in two]
    s = summarise(two)
    a, b = ["x", "x", "y", "tie"], ["x", "y", "y", "tie"]
    assert s["agreement"]["q"] == {"raters": 2, "items": 4, "kappa": pytest.approx(cohen_kappa(a, b)), "kind": "Cohen"}
    three = two + [v(0, "cat", "x"), v(1, "cat", "x")]
    assert s["groups"]["humans"]["pairs"]["a vs b"]["q"]["n"] == 8
    k = summarise(three)["agreement"]["q"]
    assert k["kind"] == "Fleiss" and k["raters"] == 3 and k["items"] == 4


# -- the store ------------------------------------------------------------------------------------
def test_store_assigns_each_pair_once_rates_once_and_continues_after_reopening(run):
    pairs = resolve_pairs(run, "smc,base")
    assert pairs == [("base", "smc")]
    store = Store(run)
    items = store.sync_items(pairs)
    assert len(items) == 5  # five prompts, one seed
    ann = store.sign_in(name=" ann ")
    a = store.next_assignment(ann, items)
    assert store.next_assignment(ann, items) == a  # a reload shows the open one again
    item = store.item(a.item_id)
    assert {a.left, a.right} == {item["completion_x"], item["completion_y"]}
    rid, dup = store.rate(ann, a.id, {"quality": "left", "helpfulness": "tie"}, score_left=5, note="fine")
    assert not dup and store.rate(ann, a.id, {"quality": "right", "helpfulness": "tie"}) == (rid, True)
    b = store.next_assignment(ann, items)
    store.skip(ann, b.id)
    with pytest.raises(DGAlignError, match="skipped"):
        store.rate(ann, b.id, {"quality": "left"})
    with pytest.raises(DGAlignError, match="not 'bob'"):
        store.rate("bob", a.id, {"quality": "left"})
    reopened = Store(run)
    assert reopened.sync_items(pairs) == items  # same items, same order
    assert reopened.progress(ann, items) == (2, 5)
    seen = {a.item_id, b.item_id}
    while (c := reopened.next_assignment(ann, items)) is not None:
        assert c.item_id not in seen
        seen.add(c.item_id)
        reopened.rate(ann, c.id, {"quality": "tie", "helpfulness": "tie"})
    assert seen == set(items)
    verdicts = read_verdicts(run / "ratings.sqlite")
    first = [v for v in verdicts if v.item == a.item_id]
    winner = "x" if a.x_on_left else "y"  # left won quality: left is x when x was shown on the left
    assert {v.dimension: v.winner for v in first} == {"quality": winner, "helpfulness": "tie"}
    with sqlite3.connect(run / "ratings.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        scores = conn.execute("SELECT score_x, score_y, note FROM ratings WHERE id = ?", (rid,)).fetchone()
    assert scores == ((5, None, "fine") if a.x_on_left else (None, 5, "fine"))


def test_invites_and_names(run):
    store = Store(run)
    token = store.invite("carol")
    assert store.sign_in(token=token) == "carol"
    with pytest.raises(DGAlignError, match="invite token"):
        store.sign_in(name="carol")
    with pytest.raises(DGAlignError, match="unknown invite token"):
        store.sign_in(token="nope")
    with pytest.raises(DGAlignError, match="LM judges"):
        store.sign_in(name="judge:me")
    assert store.rater_of(store.cookie("carol")) == "carol"
    assert store.rater_of(store.cookie("carol")[:-1] + "0") in (None, "carol")  # one hex digit may survive
    assert store.rater_of("6361726f6c.bad") is None and store.rater_of(None) is None


def test_pairs_are_checked_against_the_run(run, tmp_path):
    assert resolve_pairs(run, None) == [("base", "bon:n=3"), ("base", "smc"), ("bon:n=3", "smc")]
    with pytest.raises(DGAlignError, match="its methods: base, bon:n=3, smc"):
        resolve_pairs(run, "base,dga")
    with pytest.raises(DGAlignError, match="two different"):
        resolve_pairs(run, "base,base")
    with pytest.raises(DGAlignError, match="no bench run"):
        resolve_pairs(tmp_path / "nothing", None)


# -- the judge ------------------------------------------------------------------------------------
def _judge(fn):
    """A judge from a rule (question, first, second) -> verdict, as one-hot probabilities."""
    def judge(asks):
        return np.array([np.eye(3)[("A", "B", "tie").index(fn(q, a, b))] for q, a, b, _ in asks])
    return judge


def test_a_judge_that_always_prefers_position_a_gives_only_ties_and_preference_one_half(run):
    store = Store(run)
    items = store.sync_items(resolve_pairs(run, "base,smc"))
    first = _judge(lambda q, a, b: "A")
    [r] = judge_pairs(first, [("q", "x", "y", "quality")])
    assert (r["winner"], r["x_first"], r["y_first"], r["pref_x"]) == ("tie", "A", "A", 0.5)
    table = judge_run(store, items, first, "judge:first", DIMS, progress=False)
    assert [(r["dimension"], r["items"], r["ties"], r["inconsistent"], r["pref_x"]) for r in table] == [
        ("quality", 5, 5, 5, 0.5), ("helpfulness", 5, 5, 5, 0.5)]
    # a judge that reads the answers: the one containing more "a"s wins, whatever its position
    judge = _judge(lambda q, a, b: "A" if a.count("a") > b.count("a") else "B" if b.count("a") > a.count("a") else "tie")
    table = judge_run(store, items, judge, "judge:count", ["quality"], progress=False)
    [row] = table
    assert row["inconsistent"] == 0 and row["items"] == 5
    expected = {"x": 0, "y": 0, "tie": 0}
    for i in items:
        it = store.item(i)
        cx, cy = it["completion_x"].count("a"), it["completion_y"].count("a")
        expected["x" if cx > cy else "y" if cy > cx else "tie"] += 1
    assert (row["x_wins"], row["ties"], row["y_wins"]) == (expected["x"], expected["tie"], expected["y"])
    assert judge_run(store, items, judge, "judge:count", ["quality"], progress=False) == table  # resumes: no rework


def test_preference_cancels_a_position_bias_but_keeps_what_the_judge_reads():
    # a judge with a strong lean to "A" (+2 nats) that also reads the answers (+1 nat for the better one):
    # its argmax verdict is always "A" (all ties), but the debiased preference still finds the better answer
    def probs(first_better):
        logits = np.array([2.0 + (1.0 if first_better else 0.0), 0.0 if first_better else 1.0, -5.0])
        return np.exp(logits) / np.exp(logits).sum()

    pref = preference(probs(True), probs(False))  # x better: x first, then y first
    assert pref > 0.6 and preference(probs(False), probs(True)) == pytest.approx(1 - pref)
    assert preference(probs(True), probs(True)) == pytest.approx(0.5)  # no information: exactly a half


def test_judge_check_tells_a_reading_judge_from_a_coin():
    rng = np.random.default_rng(0)
    labelled = [(f"q{i}", "good " * int(rng.integers(1, 4)), "bad") for i in range(60)]
    reads = check(_judge(lambda q, a, b: "A" if a.startswith("good") else "B"), labelled, "quality")
    assert reads["accuracy"]["mean"] == 1.0 and reads["preferred"]["lo"] > 0.9 and not reads["chance"]
    coin = check(lambda asks: np.tile([0.5, 0.5, 0.0], (len(asks), 1)), labelled, "quality")
    assert coin["preferred"]["mean"] == 0.5 and coin["chance"]
    with pytest.raises(DGAlignError, match="no labelled pairs"):
        check(coin, [], "quality")


@pytest.fixture(scope="module")
def tiny_judge(tiny_llama):
    """The tiny random Llama (conftest): reads text, judges at random but consistently."""
    return tiny_llama


def test_judge_cli_on_the_committed_run_prints_a_verdict_table_and_feeds_the_report(run, tiny_judge):
    cmd = [sys.executable, "-m", "dgalign", "judge", str(run), "--pair", "base,bon:n=3", "--judge", tiny_judge,
           "--dimensions", "quality", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header, line = (line.split() for line in out.stdout.splitlines())
    row = dict(zip(header, line, strict=True))
    rater = f"judge:{Path(tiny_judge).name}"
    assert (row["rater"], row["x"], row["y"], row["dimension"], row["items"]) == (
        rater, "base", "bon:n=3", "quality", "5")
    row = {k: int(row[k]) for k in ("x_wins", "ties", "y_wins", "inconsistent")}
    assert row["x_wins"] + row["ties"] + row["y_wins"] == 5 and row["ties"] >= row["inconsistent"]
    report = write_report(run).read_text()
    assert "## Human evaluation" in report and f"`{rater}`" in report and (run / "plots" / "human-eval.png").exists()
    summary = json.loads((run / "summary.json").read_text())["human_evaluation"]
    w = summary["groups"][rater]["pairs"]["base vs bon:n=3"]["quality"]
    assert (w["x"]["mean"], w["tie"]["mean"], w["y"]["mean"]) == pytest.approx(
        (row["x_wins"] / 5, row["ties"] / 5, row["y_wins"] / 5))


def test_cli_bad_input_is_one_line(run):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dgalign", *args], capture_output=True, text=True, timeout=60)

    for args, message in [((str(run), "--host", "0.0.0.0"), "give --access-token"),
                          ((str(run), "--pair", "base,nope"), "its methods"),
                          ((str(run), "--dimensions", ","), "--dimensions")]:
        out = cli("rate", *args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = cli("rate", str(run), "--invite", "dora")
    assert out.returncode == 0
    assert Store(run).sign_in(token=out.stdout.strip().splitlines()[-1]) == "dora"
