"""Suites and experiments: no suite guides by its answer key, `dgalign suites --json`, the splits, the experiment
YAML's checks, and one tiny `dgalign experiment` end to end (it resumes: a second run does no work)."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgalign.bench import SUITES, load_prompts
from dgalign.cli import app, main
from dgalign.data import data_dir
from dgalign.errors import DGAlignError
from dgalign.experiment import experiment_names, load_experiment
from dgalign.rewards import REWARDS, reads_references, reward_names

needs_data = pytest.mark.skipif(not (data_dir() / "hh_harmless.jsonl.gz").exists(), reason="no benchmark data dir")


# -- suites ---------------------------------------------------------------------------------------
def test_no_suite_guides_by_a_reward_that_reads_its_answer_key():
    for name, suite in SUITES.items():
        assert reward_names(suite.proxy), f"{name}'s guide {suite.proxy!r} names no built-in reward"
        assert not reads_references(suite.proxy), f"{name} is guided by {suite.proxy!r}, which reads the answer key"
        assert suite.proxy not in suite.gold, f"{name}'s gold includes its guide"
    # the references are read by the gold alone: truthfulqa's gold does, its guide (a reward model) does not
    assert REWARDS["truthfulness"].reads_references and not REWARDS["truthfulness-rm"].reads_references
    assert reads_references("truthfulness") and not reads_references("truthfulness-rm:1,formality:0.5")
    assert reward_names("persona(description='a, b'):2,mymod:fn,hf:org/rm") == ["persona"]


def test_suites_json_lists_each_suites_guide_gold_and_split():
    res = CliRunner().invoke(app, ["suites", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == set(SUITES)
    for name, r in rows.items():
        assert r["guide"] == {"reward": SUITES[name].proxy, "reads_references": False}
        assert [g["reward"] for g in r["gold"]["rewards"]] == list(SUITES[name].gold)
        assert set(r["gold"]) == {"rewards", "judge_vs_base", "metrics"}
        assert r["split"]["heldout"] == SUITES[name].heldout and r["split"]["how"]
    assert rows["hh-harmless"]["guide"]["reward"] == "harmless"
    assert rows["hh-harmless"]["gold"]["judge_vs_base"] == ["harmlessness"]
    assert rows["harmbench"]["gold"]["rewards"] == [{"reward": "refusal", "reads_references": False},
                                                    {"reward": "harmbench-judge", "reads_references": False}]
    assert rows["truthfulqa"]["gold"]["rewards"] == [{"reward": "truthfulness", "reads_references": True}]
    assert rows["mt-bench"]["guide"]["reward"] == "judge" and rows["mt-bench"]["gold"]["judge_vs_base"]
    assert rows["truthfulqa"]["split"]["training_pairs"] == "truthfulqa:train"
    text = CliRunner().invoke(app, ["suites"]).output
    assert "guide harmless" in text and "rows 0..239 evaluate" in text


@needs_data
@pytest.mark.parametrize("name", ["hh-harmless", "truthfulqa", "mt-bench", "harmbench"])
def test_training_rows_and_pairs_are_disjoint_from_the_evaluation_rows(name):
    suite = SUITES[name]
    rows, _ = load_prompts(name)
    held, train = rows[: suite.heldout], rows[suite.heldout :]
    assert len(held) == suite.heldout and train
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    if suite.pairs is not None:
        from dgalign.rewards.learned import last_turn
        from dgalign.train.pairs import pair_rows

        pairs = pair_rows(f"{name}:train")
        firsts = {p.get("prompt") or p["chosen"].split("\n\nHuman:")[1].split("\n\nAssistant:")[0].strip()
                  for p in pairs}
        assert firsts and not firsts & {r["prompt"] for r in held}
        assert all(last_turn(p.get("prompt", "")) not in {r["prompt"] for r in held} for p in pairs[:50])


@needs_data
def test_harmbench_is_its_own_split_and_mt_bench_balances_categories():
    rows, _ = load_prompts("harmbench")
    assert len(rows) == 300 and all(r["category"] != "copyright" for r in rows)  # 240 test, 60 validation
    assert any("\n\n---\n\n" in r["prompt"] for r in rows[:240])  # contextual behaviours: context, ---, behaviour
    rows, _ = load_prompts("mt-bench")
    held = [r["category"] for r in rows[:40]]
    assert all(held.count(c) == 5 for c in set(held)) and len(set(held)) == 8


# -- the experiment YAML ----------------------------------------------------------------------------
def test_the_shipped_experiments_parse_and_dga_is_its_default_config():
    assert set(experiment_names()) >= {"quality", "efficiency", "controllability", "generalisation", "ablations"}
    for name in experiment_names():
        exp = load_experiment(name)
        assert exp.name == name and exp.runs
        for run in exp.runs:
            assert run.n_prompts <= SUITES[run.suite].heldout and 32 <= run.max_new_tokens <= 64
    quality = load_experiment("quality")
    assert {r.suite for r in quality.runs} == {"hh-harmless", "harmbench", "truthfulqa", "mt-bench"}
    for run in quality.runs:
        assert "dga" in run.methods and not [m for m in run.methods if m.startswith("dga:")]  # no hand-tuned knobs
        assert run.seeds == [0, 1, 2] and run.budget_matched > 0 and "dpo" in run.methods


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "words"), [
    ("suites: [hh-harmless]\nbogus: 1\n", ["x.yaml", "unknown field 'bogus'", "suites"]),
    ("suites: [nosuch]\n", ["unknown suite 'nosuch'", "hh-harmless"]),
    ("suites: [hh-harmless]\ndefaults: {n_prompts: forty}\n", ["n_prompts must be integer", "'forty'"]),
    ("suites: [hh-harmless]\ndefaults: {n_prompts: 500}\n", ["n_prompts must be in 1..100"]),
    ("suites: [hh-harmless]\ndefaults: {methods: [base, nosuch]}\n", ["unknown method 'nosuch'", "dga"]),
    ("suites: [hh-harmless]\ndefaults: {methods: [bon]}\n", ["must include base"]),
    ("runs: [{id: a}]\n", ["runs[0]", "missing field 'suite'"]),
    ("runs: [{id: a, suite: hh-harmless, seeds: [0, 0]}]\n", ["seeds must be distinct"]),
    ("suites: [hh-harmless\n", ["x.yaml:", "not valid YAML"]),
    ("- a list\n", ["expected a mapping"]),
    ("name: x\n", ["no runs"]),
    ("suites: [hh-harmless]\ntrain: {dga: {n_prompt: 3}}\n", ["train.dga", "unknown field 'n_prompt'", "n_prompts"]),
])
def test_bad_experiment_yaml_is_one_line(tmp_path, text, words):
    with pytest.raises(DGAlignError) as err:
        load_experiment(_yaml(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_unknown_experiment_names_the_valid_ones(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dgalign", "experiment", "nosuch"])
    with pytest.raises(SystemExit) as code:
        main()
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unknown experiment 'nosuch'" in err and "quality" in err


# -- one tiny experiment end to end -------------------------------------------------------------------
TINY = """
name: tiny
description: a tiny random Llama on two prompts
defaults: {{model: "{model}", n_prompts: 2, max_new_tokens: 4, seeds: [0, 1], ppl_model: "", reward: toxicity, gold: []}}
runs:
  - {{id: rtp, suite: rtp-toxic, kind: efficiency, methods: [base, "bon:n=2", dga], batches: [1, 2], repeats: 1}}
  - {{id: hh, suite: hh-harmless, methods: [base, "bon:n=2"]}}
train:
  dga: {{n_prompts: 2, tiny: true}}
judge: {{model: "{model}"}}
"""


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


@needs_data
def test_a_tiny_experiment_runs_end_to_end_and_resumes(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path / "cache"))
    yaml_path = _yaml(tmp_path, TINY.format(model=tiny_llama))
    out, work = tmp_path / "results", tmp_path / "work"
    args = ["experiment", yaml_path, "--out", str(out), "--work", str(work)]
    res = CliRunner().invoke(app, [*args, "--runs", "nosuch"])
    assert isinstance(res.exception, DGAlignError) and "no run 'nosuch'" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--runs", "hh"])  # one run first: the report covers both
    assert res.exit_code == 0, res.output
    assert "## rtp\n\nNo rows yet." in (out / "report.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["invocations"][0]["ran"] == [
        "bench hh", "judge check hh", "judge hh"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "## rtp" in report and "## hh" in report and "### Efficiency" in report and "Wall time" in report
    assert "judge harmlessness: win / tie / loss" in report  # hh-harmless's pairwise judge vs base
    assert "judge harmlessness: P(method preferred) [95% CI]" in report and "**Judge check (harmlessness)**" in report
    check = json.loads((work / "tiny" / "hh" / "judge_check.json").read_text())["harmlessness"]
    assert check["pairs"] == 60 and 0 <= check["preferred"]["lo"] <= check["preferred"]["hi"] <= 1
    assert {"versions", "machine", "invocations", "steps", "artifacts"} <= set(manifest)
    assert manifest["machine"]["cpu_count"] and manifest["versions"]["torch"]
    ran = manifest["invocations"][1]["ran"]
    assert any(s.startswith("train dga rtp-toxic") for s in ran) and "bench rtp" in ran and "time rtp" in ran
    assert "bench hh" not in ran
    (ckpt,) = manifest["artifacts"]["dga"]
    assert (Path(ckpt) / "dga.json").is_file() and "--skip 400" in (Path(ckpt) / "TRAIN_COMMAND").read_text()
    rows = [json.loads(line) for line in (work / "tiny" / "rtp" / "rtp-toxic.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2 and not [r for r in rows if r["error"]]  # prompts × methods × seeds
    assert {r["method"] for r in rows} == {"base", "bon:n=2", "dga"}  # the yaml's labels, not checkpoint paths
    timings = (work / "tiny" / "rtp" / "efficiency.jsonl").read_text().splitlines()
    assert len(timings) == 3 * 2  # methods × batches × repeats
    verdicts = (work / "tiny" / "hh" / "judge.jsonl").read_text().splitlines()
    assert len(verdicts) == 2 * 2 and all(json.loads(v)["winner"] in ("x", "tie", "y") for v in verdicts)
    assert all(0 <= json.loads(v)["pref_x"] <= 1 and len(json.loads(v)["probs_x_first"]) == 3 for v in verdicts)
    assert list((out / "plots").glob("rtp-*.png"))

    before = _tree(work)
    res = CliRunner().invoke(app, args)  # again: everything is there, nothing is redone
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["invocations"]) == 3 and manifest["invocations"][2]["ran"] == []
    after = _tree(work)
    changed = {k for k in after if before.get(k) != after[k]}
    assert all(Path(k).name in ("report.md", "summary.json") or "plots" in k for k in changed), changed


def test_the_plan_trains_one_checkpoint_per_model_suite_and_guide(tmp_path):
    from dgalign.experiment.runner import plan

    p = plan(load_experiment("generalisation"), tmp_path)
    trained = sorted((w["model"], w["suite"], w["reward"]) for w in p.dga.values())
    assert ("smollm2-135m-instruct", "hh-harmless", "harmless") in trained  # for the OOD run on harmbench
    assert ("smollm2-135m-instruct", "harmbench", "harmless") in trained  # harmbench's own
    assert ("qwen2.5-0.5b-instruct", "hh-harmless", "harmless") in trained
    assert len([t for t in trained if t[2].startswith("judge(standardize=true)")]) == 3  # one per weight
    (ood, _), = p.benches["ood-harmbench"]
    own, other = (m.split("checkpoint=")[1] for m in ood.methods if m.startswith("dga"))
    assert p.dga[own]["suite"] == "harmbench" and p.dga[other]["suite"] == "hh-harmless"
    assert ood.labels == ["base", "bon:n=4", "dga", "dga:checkpoint=@hh-harmless"]
    q = plan(load_experiment("quality"), tmp_path)
    (main_run, _), (dpo_run, relabel) = q.benches["hh-harmless"]
    assert "dpo" not in main_run.methods and dpo_run.methods == ["base"] and relabel == {"base": "dpo"}
    assert dpo_run.model == f"smollm2-135m-instruct+adapter:{next(iter(q.dpo))}"
    assert q.guides == {"hh-harmless": "harmless", "harmbench": "harmless", "truthfulqa": "truthfulness-rm",
                        "mt-bench": "judge"}


def test_the_gain_table_pairs_by_prompt_and_names_the_strongest_peer():
    from dgalign.experiment.report import gain_section

    gold = {"base": [0.0, 0.0], "bon:n=4": [0.5, 0.3], "soft-bon": [0.1, 0.1], "dga": [0.4, 0.6]}  # per prompt
    rows = [{"method": m, "prompt_index": i, "seed": s, "gold": {"g": v[i] + 0.01 * s}, "error": None}
            for m, v in gold.items() for i in range(2) for s in range(2)]
    rows.append({"method": "dga", "prompt_index": 1, "seed": 0, "gold": {}, "error": "boom"})  # dropped
    summary = {"base": "base", "methods": {m: {} for m in gold}}
    text, out = gain_section(rows, summary, ["g"])
    assert out["strongest_peer"] == "bon:n=4"  # mean gain 0.4 > soft-bon's 0.1
    assert out["gain_vs_base"]["g"]["dga"]["mean"] == pytest.approx(0.5) and out["gain_vs_base"]["g"]["dga"]["n"] == 2
    assert out["dga_vs_peer"]["dga"]["g"]["mean"] == pytest.approx(0.1)  # (−0.1 + 0.3) / 2
    assert "`dga` − `bon:n=4`" in "".join(text)


def test_peak_memory_sees_each_calls_allocations_once_freed_memory_is_released(tiny_llama):
    """Repeated sampler calls: without release_memory, a call reuses the heap the previous one freed and its
    peak reads ~0 MB; with it, every call shows the memory it uses (the efficiency cells' peak MB)."""
    import torch

    from dgalign.experiment.speed import PeakRSS, release_memory
    from dgalign.lm import load_lm
    from dgalign.samplers import get_sampler
    from dgalign.types import Prompts, SamplerConfig

    lm, base = load_lm(tiny_llama), get_sampler("base")[0]
    batch = Prompts.encode(lm, ["Tell me about cats."] * 8)

    def peaks(release: bool) -> list[float]:
        out = []
        for i in range(3):
            if release:
                release_memory()
            with PeakRSS() as mem:
                base(lm, lambda p, c: torch.zeros(len(c)), batch, SamplerConfig(max_new_tokens=32),
                     generator=torch.Generator().manual_seed(i))
            out.append(mem.mb)
        return out

    peaks(False)  # the first calls pay one-off allocations
    kept, released = peaks(False), peaks(True)
    assert min(released) >= 3.0  # 8 rows × 49,152 logits × 4 bytes = 1.5 MB a step, and the KV cache
    assert min(released) > 2 * max(kept) or max(kept) >= 3.0  # release is what makes the peak visible
