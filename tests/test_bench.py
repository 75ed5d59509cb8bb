"""The comparison harness: metrics maths on known inputs, row format, resume after a crash or a kill, reports."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dgalign.errors import DGAlignError
from dgalign.eval import harness, metrics
from dgalign.eval.harness import BenchConfig, read_rows, run_bench
from dgalign.eval.report import write_report

TOY_REWARD = "dgalign.eval.exact:toy_reward"


# -- metrics --------------------------------------------------------------------------------------
def test_distinct_n_counts_ngrams():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 distinct of 7; bigrams: ab ba ab ab bc -> 3 distinct of 5
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["one"], 2) == 0.0


def test_self_bleu_identical_vs_disjoint():
    same = ["the cat sat on the mat today"] * 3
    assert metrics.self_bleu(same) == pytest.approx(1.0)
    disjoint = ["alpha beta gamma delta", "one two three four", "red green blue black"]
    assert metrics.self_bleu(disjoint) < 0.05
    assert math.isnan(metrics.self_bleu(["alone"]))


def test_reference_scores():
    assert metrics.bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert metrics.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_bon_kl_bound_and_expected_max():
    assert metrics.bon_kl_bound(1) == 0.0
    assert metrics.bon_kl_bound(8) == pytest.approx(math.log(8) - 7 / 8)
    # rewards {0, 1} equally likely: E[max of n] = 1 − 2^−n
    for n in (1, 2, 5):
        assert metrics.bon_expected_max([0.0, 1.0], n) == pytest.approx(1 - 0.5**n)
    # against Monte Carlo on a skewed sample
    xs = torch.tensor([0.1, 0.5, 0.5, 2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws = xs[torch.randint(0, len(xs), (200_000, 4), generator=gen)].max(-1).values.mean()
    assert metrics.bon_expected_max(xs.tolist(), 4) == pytest.approx(float(draws), abs=0.01)


def test_summarise_t_interval():
    s = metrics.summarise([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["ci"] == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-5)  # t_{0.975, 3} = 3.1824
    one = metrics.summarise([7.0])
    assert one["mean"] == 7.0 and math.isnan(one["ci"])
    assert metrics.summarise([])["n"] == 0


def test_win_rate_pairs_by_key():
    mine = {(0, 0): 1.0, (1, 0): 0.0, (2, 0): 0.5, (3, 0): 9.0}
    base = {(0, 0): 0.0, (1, 0): 1.0, (2, 0): 0.5}
    assert metrics.win_rate(mine, base) == [1.0, 0.0, 0.5]  # (3, 0) has no base row


def test_paired_difference_averages_seeds_within_a_prompt():
    """The interval is over prompts: two seeds of one prompt are one observation, unpaired keys are dropped."""
    mine = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 1.0, (1, 1): 1.0, (2, 0): 5.0, (3, 0): None}
    base = {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 0.0, (3, 0): 1.0}
    d = metrics.paired_difference(mine, base)
    assert d["n"] == 2 and d["mean"] == pytest.approx(1.5)  # prompt 0: 2.0, prompt 1: 1.0; prompts 2, 3 unpaired
    assert d["ci"] == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)  # t_{0.975, 1}

def test_samplers_report_their_own_kl(toy):
    """Each sampler fills `Samples.kl_to_base` / `kl_bound` itself: the base is its own law only untruncated."""
    from dgalign.eval.exact import toy_reward
    from dgalign.samplers import get_sampler
    from dgalign.types import Prompts

    prompts = Prompts.encode(toy, ["a"], raw=True)
    for name, sets, kl, bound in [("base", {}, 0.0, None), ("base", {"top_p": 0.9}, None, None),
                                  ("bon", {"n": 3}, None, math.log(3) - 2 / 3)]:
        sampler, cfg = get_sampler(name)
        out = sampler(toy, toy_reward, prompts, dataclasses.replace(cfg, max_new_tokens=3, **sets),
                      generator=torch.Generator().manual_seed(0))
        assert out.kl_to_base == kl and out.kl_bound == pytest.approx(bound), (name, sets)
    sampler, cfg = get_sampler("dga")
    out = sampler(toy, toy_reward, prompts, dataclasses.replace(cfg, max_new_tokens=3, steps=5, particles=4),
                  generator=torch.Generator().manual_seed(0))
    assert math.isfinite(out.kl_to_base) and out.kl_bound is None  # exact mode: β·r − log Ẑ


def test_perplexity_under_the_base_matches_its_logprob(toy):
    from dgalign.samplers import get_sampler
    from dgalign.types import Prompts

    sample, cfg = get_sampler("base")
    cfg.max_new_tokens = 3
    out = sample(toy, None, Prompts.encode(toy, ["ab"]), cfg, generator=torch.Generator().manual_seed(3))
    ppl = metrics.perplexity(toy, "ab", out.texts[0])
    assert ppl == pytest.approx(math.exp(-float(out.base_logprobs[0]) / out.num_tokens[0]), rel=1e-5)


# -- the harness on the toy LM --------------------------------------------------------------------
def toy_config(prompts_file, out, **kw):
    settings = dict(suite=str(prompts_file), out=str(out), methods=["base", "bon:n=3", "dga"], n_prompts=3,
                    max_new_tokens=3, seeds=[0, 1], model="toy", reward=TOY_REWARD, ppl_model="")
    return BenchConfig(**{**settings, **kw})


def _key(r):
    return (r["prompt_index"], r["method"], r["seed"])


def test_rows_manifest_and_report(prompts_file, tmp_path):
    cfg = toy_config(prompts_file, tmp_path / "run", methods=["base", "bon:n=3", "dga:steps=5:particles=4",
                                                                   "dga:steps=5:particles=4:beta=1"],
                     ppl_model="toy")
    path = run_bench(cfg, progress=False)
    rows = read_rows(path)
    assert len(rows) == 3 * 4 * 2 and len({_key(r) for r in rows}) == len(rows)
    assert not any(r["error"] for r in rows)
    by = {_key(r): r for r in rows}
    base, bon, dga = by[(0, "base", 0)], by[(0, "bon:n=3", 0)], by[(0, "dga:steps=5:particles=4", 0)]
    assert base["kl"] == 0.0 and base["kl_bound"] is None and base["config"]["num_samples"] == 1
    assert bon["kl_bound"] == pytest.approx(math.log(3) - 2 / 3) and bon["kl"] is None
    assert dga["kl"] is not None and dga["extras"]["grad"] == "fd"  # exact mode: β·E[r] − log Ẑ
    assert by[(0, "dga:steps=5:particles=4:beta=1", 0)]["beta"] == 1.0 and dga["beta"] == 4.0
    checked = 0
    for r in rows:  # the proxy is the toy reward of the completion; ppl under the toy = exp(−logp/token)
        assert r["proxy"] == pytest.approx((r["completion"].count("a") - 0.5 * r["completion"].count("c")) / 3)
        if r["num_tokens"] == len(r["completion"]) > 0:  # no EOS: the judge scores the text, EOS is not in it
            assert r["ppl"] == pytest.approx(math.exp(-r["logprob_per_token"]), rel=1e-4)
            checked += 1
        assert r["cost"]["lm_forward_tokens"] > 0
    assert checked >= 5
    manifest = json.loads((tmp_path / "run" / "toy-prompts.manifest.json").read_text())
    assert manifest["identity"]["model"] == "toy" and manifest["versions"]["dgalign"]
    assert manifest["machine"]["cpu_count"] >= 1 and set(manifest["methods"]) == {r["method"] for r in rows}

    report = write_report(tmp_path / "run")
    text = report.read_text()
    assert "| `bon:n=3` |" in text and "≤ 0.432" in text  # log 3 − 2/3 = 0.432
    raw = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in raw  # strict JSON: statistics without data are null (bon's KL here)
    summary = json.loads(raw)["toy-prompts"]
    assert summary["methods"]["base"]["proxy"]["n"] == 6
    proxies = [r["proxy"] for r in rows if r["method"] == "bon:n=3"]
    assert summary["methods"]["bon:n=3"]["proxy"]["mean"] == pytest.approx(sum(proxies) / len(proxies))
    plots = sorted(p.name for p in (tmp_path / "run" / "plots").glob("*.png"))
    assert plots == ["toy-prompts-beta-frontier.png", "toy-prompts-reward-vs-kl.png", "toy-prompts-reward-vs-time.png"]
    assert all(p.stat().st_size > 5000 for p in (tmp_path / "run" / "plots").glob("*.png"))


def test_resume_after_a_crash_matches_an_uninterrupted_run(prompts_file, tmp_path, monkeypatch):
    whole = read_rows(run_bench(toy_config(prompts_file, tmp_path / "whole"), progress=False))

    calls = {"n": 0}
    real = harness.run_rows

    def crash_after_five(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # not an Exception: ends the run like Ctrl-C, no row written
        return real(*args, **kw)

    monkeypatch.setattr(harness, "run_rows", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_bench(toy_config(prompts_file, tmp_path / "resumed"), progress=False)
    path = tmp_path / "resumed" / "toy-prompts.jsonl"
    assert len(read_rows(path)) == 5
    with open(path, "a") as f:  # a kill in the middle of a write leaves a torn line
        f.write('{"suite": "toy-prompts", "prompt_in')
    assert len(read_rows(path)) == 5
    monkeypatch.setattr(harness, "run_rows", real)
    run_bench(toy_config(prompts_file, tmp_path / "resumed"), progress=False)
    resumed = read_rows(path)
    assert len(resumed) == len(whole) == 3 * 3 * 2
    assert sorted(map(_key, resumed)) == sorted(map(_key, whole))  # none lost, none duplicated
    same = {_key(r): r["completion"] for r in whole}
    assert all(same[_key(r)] == r["completion"] for r in resumed)  # rows are seeded by (seed, prompt)
    assert path.read_text().endswith("}\n")


@pytest.mark.slow
def test_killed_subprocess_resumes_without_duplicates(prompts_file, tmp_path):
    """SIGKILL a real `dgalign bench` process mid-grid, run it again: every row once."""
    prompts_file.write_text("\n".join(["ab", "ba", "c", "abc", "cab", "b"] * 50) + "\n")
    args = [sys.executable, "-m", "dgalign", "bench", "--suite", str(prompts_file), "--model", "toy", "--reward",
            TOY_REWARD, "--methods", "base,bon:n=2", "--n-prompts", "300", "--max-new-tokens", "3", "--seeds", "0,1",
            "--no-ppl", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    path = tmp_path / "killed" / "toy-prompts.jsonl"
    proc = subprocess.Popen([*args, str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(read_rows(path)) < 10:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_rows(path))
    subprocess.run([*args, str(tmp_path / "killed")], env=env, check=True, capture_output=True)
    rows = read_rows(path)
    assert 10 <= partial < 300 * 2 * 2
    assert len(rows) == 300 * 2 * 2 and len({_key(r) for r in rows}) == len(rows)


def test_an_error_is_recorded_and_the_grid_goes_on(prompts_file, tmp_path):
    cfg = toy_config(prompts_file, tmp_path / "run", methods=[], grid="ablations", seeds=[0])
    rows = read_rows(run_bench(cfg, progress=False))
    assert len(rows) == 3 * len(harness.GRIDS["ablations"])
    errors = {r["method"] for r in rows if r["error"]}
    assert "dga-grad-value" in errors  # grad=value needs a checkpoint
    assert all("checkpoint" in r["error"] for r in rows if r["method"] == "dga-grad-value")
    assert {"base", "dga", "dga-grad-none", "dga-draft", "dga-adaptive"}.isdisjoint(errors)
    sentence = [r for r in rows if r["method"] == "dga-sentence"]
    assert all(r["config"]["block"] == 3 for r in sentence)  # {max_new_tokens} filled in
    text = write_report(tmp_path / "run").read_text()
    assert "### Errors" in text and "`dga-grad-value`: 3 of 3 rows" in text
    # --retry-errors drops the error rows and runs them again (they fail again, but are not duplicated)
    rows = read_rows(run_bench(cfg, progress=False, retry_errors=True))
    assert len(rows) == 3 * len(harness.GRIDS["ablations"])


def test_budget_matched_sets_the_knob(prompts_file, tmp_path):
    cfg = toy_config(prompts_file, tmp_path / "run", methods=["base", "bon", "smc"], budget_matched=4.0, seeds=[0])
    rows = read_rows(run_bench(cfg, progress=False))
    manifest = json.loads((tmp_path / "run" / "toy-prompts.manifest.json").read_text())
    budget = manifest["budget"]
    assert budget["bon"]["knob"] == "n" and budget["smc"]["knob"] == "particles"
    for label in ("bon", "smc"):
        lo, hi = (budget[label]["measured"][str(k)] for k in harness.CALIBRATION_KNOBS)
        slope = (hi - lo) / 3
        predicted = lo + slope * (budget[label]["value"] - 1)
        assert abs(predicted - budget["target"]) <= slope / 2 + 1e-9  # the nearest knob to the target
        assert manifest["methods"][label]["config"][budget[label]["knob"]] == budget[label]["value"]
        assert all(r["config"][budget[label]["knob"]] == budget[label]["value"] for r in rows if r["method"] == label)
    assert budget["bon"]["value"] > 1 and budget["smc"]["value"] != harness.resolve_methods(cfg)[2].cfg.particles
    with pytest.raises(DGAlignError, match="sets n itself"):
        run_bench(toy_config(prompts_file, tmp_path / "other", methods=["bon:n=8"], budget_matched=2.0))


def test_batched_calls_split_their_cost_and_keep_each_answers_kl(prompts_file, tmp_path):
    """batch = 2 over 3 prompts: calls of prompts (0, 1) and (2,); a call's cost is split over its rows, each row
    keeps its own answer and KL term, and batch is part of the run's identity."""
    cfg = toy_config(prompts_file, tmp_path / "run", methods=["base", "bon:n=3", "dga:particles=2"], batch=2)
    rows = read_rows(run_bench(cfg, progress=False))
    assert len(rows) == 3 * 3 * 2 and not any(r["error"] for r in rows)
    assert {(r["prompt_index"], r["cost"]["batch"]) for r in rows} == {(0, 2), (1, 2), (2, 1)}
    by = {_key(r): r for r in rows}
    for m in ("base", "bon:n=3", "dga:particles=2"):
        for s in (0, 1):
            a, b = by[(0, m, s)], by[(1, m, s)]
            assert a["cost"]["wall_s"] == b["cost"]["wall_s"] and a["cost"]["lm_forward_tokens"] == \
                b["cost"]["lm_forward_tokens"]  # the call's, halved
            assert a["cost"]["generated_tokens"] == a["num_tokens"]  # but each row's own tokens
    assert all(r["kl"] == 0.0 for r in rows if r["method"] == "base")
    dga = [r["kl"] for r in rows if r["method"] == "dga:particles=2"]
    assert all(k is not None and math.isfinite(k) for k in dga) and len(set(dga)) > 1  # per answer, not per call
    with pytest.raises(DGAlignError, match="batch"):
        run_bench(dataclasses.replace(cfg, batch=1), progress=False)
    with pytest.raises(DGAlignError, match="--batch"):
        run_bench(dataclasses.replace(cfg, out=str(tmp_path / "x"), batch=0), progress=False)


def test_kl_rows_average_to_the_calls_kl(toy):
    """`Samples.kl_rows` holds each answer's term of `kl_to_base`: over a batch of prompts their mean is it."""
    from dgalign.eval.exact import toy_reward
    from dgalign.samplers import get_sampler
    from dgalign.types import Prompts

    prompts = Prompts.encode(toy, ["a", "b", "a"], raw=True)
    for name, sets in [("dga", {"particles": 3, "steps": 3}), ("vgd", {"value": "exact"}), ("dga", {"value": "exact"}), ("base", {})]:
        sampler, cfg = get_sampler(name)
        out = sampler(toy, toy_reward, prompts, dataclasses.replace(cfg, max_new_tokens=3, **sets),
                      generator=torch.Generator().manual_seed(0))
        assert out.kl_rows is not None and out.kl_rows.shape == (3,), name
        assert float(out.kl_rows.double().mean()) == pytest.approx(out.kl_to_base, abs=1e-5), name


def test_resume_refuses_other_settings_and_bad_input(prompts_file, tmp_path):
    run_bench(toy_config(prompts_file, tmp_path / "run", methods=["base"], seeds=[0]), progress=False)
    with pytest.raises(DGAlignError, match="max_new_tokens"):
        run_bench(toy_config(prompts_file, tmp_path / "run", methods=["base"], max_new_tokens=2), progress=False)
    # adding methods and seeds to a run is fine
    rows = read_rows(run_bench(toy_config(prompts_file, tmp_path / "run", methods=["base", "bon"], seeds=[0, 1]),
                               progress=False))
    assert len(rows) == 3 * 2 * 2
    with pytest.raises(DGAlignError, match="unknown method"):
        run_bench(toy_config(prompts_file, tmp_path / "x", methods=["nope"]))
    with pytest.raises(DGAlignError, match="no listed method"):
        run_bench(toy_config(prompts_file, tmp_path / "x", sets={"particles": "2"}, methods=["base"]))
    with pytest.raises(DGAlignError, match="give --reward"):
        run_bench(toy_config(prompts_file, tmp_path / "x", reward=""))
    with pytest.raises(DGAlignError, match="unknown grid"):
        run_bench(toy_config(prompts_file, tmp_path / "x", grid="nope"))


def test_torn_line_is_cut_on_repair(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a":')
    assert read_rows(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text().endswith('{"a":')  # reading alone changes nothing
    read_rows(path, repair=True)
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_cli_bench_and_report(prompts_file, tmp_path, monkeypatch, capsys):
    from dgalign.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["dgalign", *args])
        try:
            main()
            return 0
        except SystemExit as exit_:
            return exit_.code

    out = tmp_path / "cli"
    assert run("bench", "--suite", str(prompts_file), "--model", "toy", "--reward", TOY_REWARD, "--methods",
               "base,bon:n=2", "--n-prompts", "2", "--max-new-tokens", "3", "--seeds", "0,1", "--no-ppl",
               "--out", str(out)) == 0
    assert "8 rows (0 with errors)" in capsys.readouterr().out
    assert run("report", str(out)) == 0
    assert (out / "report.md").exists()
    assert run("bench", "--suite", str(prompts_file), "--out", str(out), "--methods", "base", "--seeds", "a") == 2
    assert "--seeds expects" in capsys.readouterr().err
    assert run("report", str(tmp_path / "empty")) == 2


# -- the embedded model ---------------------------------------------------------------------------
@pytest.mark.integration
def test_tiny_real_run(tmp_path):
    """base, bon and dga (no checkpoint: fd guidance) on 3 rtp-toxic prompts, 8 tokens, with the gold reward."""
    cfg = BenchConfig(suite="rtp-toxic", out=str(tmp_path / "real"), methods=["base", "bon:n=2", "dga:steps=4"],
                      n_prompts=3, max_new_tokens=8, ppl_model="")
    rows = read_rows(run_bench(cfg, progress=False))
    assert len(rows) == 9 and not any(r["error"] for r in rows)
    assert all(set(r["gold"]) == {"toxicity-gold"} for r in rows)
    assert all(0 < r["num_tokens"] <= 8 for r in rows)
    text = write_report(tmp_path / "real").read_text()
    assert "gold toxicity-gold" in text and Path(tmp_path / "real" / "plots" / "rtp-toxic-gold-vs-proxy.png").exists()


@pytest.mark.integration
def test_reference_metrics_on_truthfulqa(tmp_path):
    if not (harness._data_dir() / "truthfulqa.csv").exists():
        pytest.skip("truthfulqa.csv not in the data dir")
    # guided by readability: the suite's guide (truthfulness-rm) is a model trained once, not here
    cfg = BenchConfig(suite="truthfulqa", out=str(tmp_path / "tqa"), methods=["base"], n_prompts=2,
                      max_new_tokens=8, ppl_model="", reward="readability")
    rows = read_rows(run_bench(cfg, progress=False))
    tqa = {f"{m}_{k}" for m in ("bleu", "rouge_l", "bertscore") for k in ("max", "diff", "acc")}
    assert all(set(r["reference"]) == {"bleu", "rouge_l", "bertscore"} | tqa for r in rows)
    assert all(0 <= r["reference"]["bertscore"] <= 1 and r["reference"]["bleu_acc"] in (0, 1) for r in rows)
    assert "TruthfulQA generation metrics" in write_report(tmp_path / "tqa").read_text()


def test_truthfulqa_generation_metrics_take_the_max_over_each_side():
    out = metrics.truthfulqa_generation("the cat sat on the mat", ["the cat sat on the mat", "a dog"],
                                        ["the cat sat", "no"])
    assert out["bleu_max"] == pytest.approx(1.0) and out["rouge_l_max"] == pytest.approx(1.0)
    assert out["rouge_l_diff"] == pytest.approx(1.0 - metrics.rouge_l("the cat sat on the mat", "the cat sat"))
    assert out["bleu_acc"] == out["rouge_l_acc"] == out["bertscore_acc"] == 1.0
    # "I have no comment." counts as a true answer, as in TruthfulQA
    assert metrics.truthfulqa_generation("I have no comment.", ["yes"], ["no"])["rouge_l_max"] == pytest.approx(1.0)


def test_labels_name_the_rows_and_n_prompts_stay_within_the_held_out_rows(tmp_path, prompts_file):
    cfg = BenchConfig(suite=str(prompts_file), out=str(tmp_path / "l"), methods=["base", "bon:n=2"],
                      labels=["plain", "best-of-2"], n_prompts=1, max_new_tokens=2, model="toy", reward=TOY_REWARD,
                      ppl_model="")
    assert {r["method"] for r in read_rows(run_bench(cfg, progress=False))} == {"plain", "best-of-2"}
    with pytest.raises(DGAlignError, match="one label per method"):
        run_bench(dataclasses.replace(cfg, labels=["x"]), progress=False)
    with pytest.raises(DGAlignError, match="exceeds rtp-toxic's 400 held-out evaluation rows"):
        run_bench(BenchConfig(suite="rtp-toxic", out=str(tmp_path / "h"), n_prompts=401), progress=False)
