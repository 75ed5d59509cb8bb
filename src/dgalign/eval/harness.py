"""The comparison harness behind `dgalign bench`: methods × prompts × seeds over a suite, one JSONL row each.

A run directory holds, per suite, `<suite>.jsonl` (one row per (prompt, method, seed), appended
and fsynced as it finishes) and `<suite>.manifest.json` (versions, config, machine; written
atomically; each invocation records its `setup` timings — LM load, the rewards' first load, one
warm-up forward, paid by `cost.prepare` before the first row so no row's cost includes them).
Every input is checked (settings against an existing manifest, its rows file too) before any model
loads, and the directory is created only once the models have loaded.

Running the same command again resumes: rows already present are skipped, and a torn last line
left by a kill is cut off first, so a killed-and-resumed run holds exactly the rows of an
uninterrupted one. The settings that give rows their meaning (model, suite, rewards,
length, β, ...) must match the manifest's; methods, prompts and seeds may be added.

Each row is one answer (`num_samples` = 1). With `batch` = 1 (the default) each row is its own sampler
call, so its cost is its own and its KL estimate is that answer's; with `batch` = B, one call answers B
prompts (chunks 0..B−1, B..2B−1, ... of one method and seed), its cost is split evenly over them (the
`cost.batch` field says how many shared it) and each row keeps its own KL where the sampler gives per-answer
terms (`run_rows`). Batching changes throughput, not the law of an answer; `batch` is part of a run's
identity, since its random draws and per-answer costs differ. An error inside a call (e.g. a knob the
sampler rejects) is recorded in its rows' "error" field and the grid goes on. The random generator of a call
is seeded by (seed, its first prompt index) and shared by all methods: common random numbers for paired
comparisons.

`budget_matched = X` sets each method's knob (`KNOBS`) so that its LM forward tokens per answer
are ≈ X × base's, measured: base and the method (knob = 1 and 4) run on the first
`CALIBRATION_PROMPTS` prompts with seed 0, a line a + b·knob is fitted to the method's forward
tokens per answer, and knob = round((X·base − a) / b) ≥ 1. Measuring counts what the samplers
really do (shared prefill, early EOS, rewrites) rather than an analytic model. The result is
stored in the manifest and reused on resume.

Where the rows run is the runner's business: `LocalRows` runs them here, one after another;
`ray_bench.RayRows` (`dgalign bench --ray`) on Ray actors. Both build the shared context with
`load_context` and run each call through `run_rows`; either way this process alone writes the rows file.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..config import apply_overrides, check_out_dir, parse_sets
from ..errors import DGAlignError, UnknownNameError
from ..lm.embedded import MODELS
from ..types import LM, Reward, Sampler, SamplerConfig
from . import metrics
from .bench_config import IDENTITY, LATER_IDENTITY, BenchConfig

# Named grids for `--grid`: row label -> method spec; "{max_new_tokens}" is filled in.
GRIDS: dict[str, dict[str, str]] = {
    # §2.8 ablations: each variant changes one knob of the reference `dga` (token blocks, fixed
    # schedule, grad=auto — `analytic` from the value head when a checkpoint is given, `fd` without —,
    # noise init); `dga-no-diffusion` is diffusion vs none: value-guided decoding on the same value head
    # (vgd). Pass the checkpoint with `--set checkpoint=DIR`; proposal, value and vgd need one.
    "ablations": {
        "base": "base",
        "dga": "dga",
        "dga-sentence": "dga:block={max_new_tokens}",
        "dga-adaptive": "dga:adaptive_lambda=0.5",
        "dga-proposal": "dga:grad=proposal",
        "dga-grad-value": "dga:grad=value",
        "dga-grad-none": "dga:grad=none",
        "dga-draft": "dga:init=draft",
        "dga-no-diffusion": "vgd",
    },
}

# The compute knob `--budget-matched` sets, per method; methods not listed keep their settings.
KNOBS: dict[str, str] = {
    "bon": "n",
    "soft-bon": "n",
    "smc": "particles",
    "qalign": "steps",
    "refine": "steps",
    "langevin": "steps",
    "dga": "particles",
}
CALIBRATION_PROMPTS = 2  # prompts the budget calibration runs on
CALIBRATION_KNOBS = (1, 4)  # knob values the cost line is fitted through

# Suite row fields holding a reference answer (BLEU, ROUGE-L, BERTScore are computed against it): "reference"
# (mt-bench, or a prompts file's / dataset's column, `--reference-field`) before truthfulqa's "best".
REFERENCE_FIELDS = ("reference", "best")
JUDGE_MODEL = "gemma3-270m"  # the independent perplexity judge when installed


@dataclass
class _Method:
    label: str
    name: str  # SAMPLERS key
    spec: str  # as given (grid specs filled in)
    cfg: SamplerConfig  # the method's config dataclass, fully resolved
    sampler: Sampler | None = None


@dataclass
class RunContext:
    """What every row of one suite's run shares: the loaded model, the rewards and the perplexity judge."""

    suite: str  # the suite's label (the rows file's name)
    lm: LM
    raw: bool  # prompts as raw text (no chat template)
    proxy: Reward  # guides the methods
    gold: dict[str, Reward]  # spec -> reward, evaluation only
    judge: LM | None  # scores perplexity; None = not measured


# -- files ----------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# what every row of a run holds; rows without an error also hold the results, costs under "cost"
ROW_FIELDS = ("prompt_index", "method", "sampler", "seed", "beta")
RESULT_FIELDS = ("completion", "num_tokens", "proxy", "gold", "kl", "logprob_per_token", "ppl", "cost")
COST_FIELDS = ("wall_s", "lm_forward_tokens", "reward_calls", "energy_j", "peak_rss_mb")


def _missing(row: dict) -> list[str]:
    """The fields a bench row lacks, or holds with the wrong JSON type."""
    missing = [k for k in ROW_FIELDS if k not in row]
    if not row.get("error"):
        missing += [k for k in RESULT_FIELDS if k not in row]
        missing += [f"{k} (an object)" for k in ("gold", "cost") if k in row and not isinstance(row[k], dict)]
        missing += [f"cost.{k}" for k in COST_FIELDS if isinstance(row.get("cost"), dict) and k not in row["cost"]]
    return missing


def read_rows(path: Path, *, repair: bool = False, checked: bool = False) -> list[dict]:
    """The complete rows of a JSONL file; a torn last line (no newline) is ignored, or cut off if `repair`.

    `checked`: every row must be a bench row (ROW_FIELDS; RESULT_FIELDS unless it records an error)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    rows = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as err:  # not JSON, or not UTF-8
                reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
                raise DGAlignError(f"{path}:{number} is not a JSON row ({reason}); the run file is damaged") from None
            if not isinstance(row, dict):
                raise DGAlignError(f"{path}:{number} is a JSON {type(row).__name__}, not a row object; "
                                   "the run file is damaged")
            if checked and _missing(row):
                raise DGAlignError(f"{path}:{number} is not a bench row (missing {', '.join(_missing(row))}); "
                                   "the run file is damaged")
            rows.append(row)
    return rows


# the manifest's parts and their JSON types (`identity` holds every IDENTITY field, `machine` machine()'s)
MANIFEST_PARTS = {"started": str, "identity": dict, "invocations": list, "methods": dict, "budget": dict,
                  "versions": dict, "machine": dict}
MACHINE_FIELDS = ("platform", "cpu_count", "memory_gb")


def read_manifest(path: Path) -> dict:
    """A run's manifest, checked for the parts `bench` (resuming) and `report` read."""
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise DGAlignError(f"{path} is not valid JSON ({err}); the run's manifest is damaged") from None
    m = manifest if isinstance(manifest, dict) else {}
    if isinstance(m.get("identity"), dict):  # runs written before a field joined the identity had its default
        for key, value in LATER_IDENTITY.items():
            m["identity"].setdefault(key, value)
    part = {k: m.get(k) if isinstance(m.get(k), kind) else kind() for k, kind in MANIFEST_PARTS.items()}
    bad = [k for k, kind in MANIFEST_PARTS.items() if not isinstance(m.get(k), kind)]
    bad += [f"identity.{k}" for k in IDENTITY if k not in part["identity"]]
    bad += [f"machine.{k}" for k in MACHINE_FIELDS if k not in part["machine"]]
    if not part["invocations"] or not all(isinstance(i, dict) for i in part["invocations"]):
        bad.append("invocations")
    if bad:
        raise DGAlignError(f"{path} is not a bench manifest (missing or malformed: "
                           f"{', '.join(dict.fromkeys(bad))}); the run's manifest is damaged")
    return manifest


def _append(f, row: dict) -> None:
    """One complete line per row, on disk before the next row starts."""
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def suite_label(suite: str) -> str:
    """The name a suite's files and tables go by: the suite name, a prompts file's stem, or an hf: dataset's
    name-config-split."""
    from ..bench import HF_PREFIX, hf_label

    if suite.startswith(HF_PREFIX):
        return hf_label(suite)
    path = Path(suite).expanduser()
    return path.stem if path.is_file() else suite


# -- methods --------------------------------------------------------------------------------------
def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    """'bon:n=8:top_p=0.9' -> ('bon', {'n': '8', 'top_p': '0.9'})."""
    name, *settings = spec.strip().split(":")
    if not name:
        raise DGAlignError(f"empty method name in {spec!r}; a method spec is name[:key=value...], e.g. bon:n=8")
    return name, parse_sets(settings)


def method_specs(cfg: BenchConfig) -> dict[str, str]:
    """Row label -> method spec: `methods` (label = spec), then the grid's."""
    specs: dict[str, str] = {}
    if cfg.grid and cfg.grid not in GRIDS:
        raise UnknownNameError("grid", cfg.grid, GRIDS)
    if cfg.labels and len(cfg.labels) != len(cfg.methods):
        raise DGAlignError(f"{len(cfg.labels)} labels for {len(cfg.methods)} methods; give one label per method")
    grid = {k: v.format(max_new_tokens=cfg.max_new_tokens) for k, v in GRIDS.get(cfg.grid, {}).items()}
    labels = cfg.labels or cfg.methods
    for label, spec in [*((k.strip(), m.strip()) for k, m in zip(labels, cfg.methods, strict=True)), *grid.items()]:
        if label in specs:
            raise DGAlignError(f"method {label!r} is listed twice")
        specs[label] = spec
    if not specs:
        raise DGAlignError("no methods: give --methods and/or --grid")
    return specs


def resolve_methods(cfg: BenchConfig) -> list[_Method]:
    """Every method's config: defaults, then length and β, then `sets` where the field exists, then the spec."""
    from ..samplers import get_sampler

    out = []
    used = set()
    for label, spec in method_specs(cfg).items():
        name, settings = parse_method(spec)
        sampler, default = get_sampler(name)
        fields = {f.name for f in dataclasses.fields(default)}
        common = {k: v for k, v in cfg.sets.items() if k in fields}
        used |= common.keys()
        if cfg.budget_matched and KNOBS.get(name) in settings:
            raise DGAlignError(f"{spec!r} sets {KNOBS[name]} itself; drop it or drop --budget-matched")
        base = {"max_new_tokens": str(cfg.max_new_tokens), "beta": str(cfg.beta), "num_samples": "1"}
        resolved = apply_overrides(default, {**base, **common, **settings})
        if resolved.num_samples != 1:
            raise DGAlignError(f"{spec!r}: the harness writes one answer per row; num_samples must stay 1")
        out.append(_Method(label, name, spec, resolved, sampler))
    unused = set(cfg.sets) - used
    if unused:
        raise DGAlignError(f"--set {', '.join(sorted(unused))}: no listed method has such a setting")
    return out


# -- the manifest ---------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import importlib.metadata

    import transformers

    return {"dgalign": importlib.metadata.version("dgalign"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def machine() -> dict:
    import psutil

    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _identity(cfg: BenchConfig) -> dict:
    return json.loads(json.dumps({k: getattr(cfg, k) for k in IDENTITY}))


def _manifest(cfg: BenchConfig, path: Path, argv: list[str] | None) -> dict:
    """The manifest to write: the existing one (checked against `cfg`) with this invocation added, or a new one."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    invocation = {"started": now, "argv": argv, "methods": cfg.methods, "grid": cfg.grid,
                  "n_prompts": cfg.n_prompts, "seeds": cfg.seeds}
    if path.exists():
        manifest = read_manifest(path)
        differ = [k for k, v in _identity(cfg).items() if manifest["identity"].get(k) != v]
        if differ:
            raise DGAlignError(
                f"{path.parent} holds a {manifest['identity']['suite']} run with other settings ({', '.join(differ)}: "
                + "; ".join(f"{manifest['identity'].get(k)!r} there, {getattr(cfg, k)!r} now" for k in differ)
                + "); resume with the same settings or use another --out"
            )
        manifest["invocations"].append(invocation)
    else:
        manifest = {"started": now, "identity": _identity(cfg), "invocations": [invocation], "methods": {},
                    "budget": {}}
    manifest.update(versions=versions(), machine=machine(), config=json.loads(json.dumps(dataclasses.asdict(cfg))),
                    data_dir=str(_data_dir()), energy_watts_per_core=metrics.WATTS_PER_CORE)
    return manifest


def _data_dir() -> Path:
    from ..data import data_dir

    return data_dir()


def resolve_ppl_model(cfg: BenchConfig) -> str:
    """The perplexity judge's name: `ppl_model`, or for "auto" gemma3-270m if its wheels are installed, else the base."""
    if cfg.ppl_model != "auto":
        return cfg.ppl_model
    installed = importlib.util.find_spec(MODELS[JUDGE_MODEL].packages[0]) is not None
    return JUDGE_MODEL if installed else cfg.model


# -- one row --------------------------------------------------------------------------------------
def _scalars(extras: dict) -> dict:
    return {k: v for k, v in extras.items() if isinstance(v, (bool, int, float, str))}


def _generator(seed: int, prompt_index: int, device):
    from ..ops import make_generator

    return make_generator(seed * 1_000_003 + prompt_index, device)


def row_head(suite: str, method: _Method, index: int, row: dict, seed: int) -> dict:
    """What a row records before its answer: which (prompt, method, seed) it is, and the method's settings."""
    return {"suite": suite, "prompt_index": index, "method": method.label, "sampler": method.name,
            "seed": seed, "beta": method.cfg.beta, "config": dataclasses.asdict(method.cfg), "prompt": row["prompt"],
            **({"prompt_id": row["id"]} if "id" in row else {})}


def run_rows(ctx: RunContext, method: _Method, indices: list[int], rows: list[dict], seed: int) -> list[dict]:
    """Sample one answer for each of `rows` (the prompts `indices`) in ONE sampler call, and measure them.

    The call's cost is split evenly over its answers (wall and CPU seconds, LM forward tokens, reward calls,
    energy); each row keeps its own generated tokens and, where the sampler gives per-answer terms
    (`Samples.kl_rows`), its own KL estimate — a call-wide KL estimate is given to a row only for a call of
    one. An exception from the sampler or a metric becomes the error of every row of the call.
    """
    from ..types import Prompts

    lm, n = ctx.lm, len(rows)
    prompts = [row["prompt"] for row in rows]
    outs = [row_head(ctx.suite, method, i, row, seed) for i, row in zip(indices, rows, strict=True)]
    try:
        batch = Prompts.encode(lm, prompts, raw=ctx.raw)
        cpu0 = metrics.cpu_seconds()
        samples = method.sampler(lm, ctx.proxy, batch, method.cfg, generator=_generator(seed, indices[0], lm.device))
        cpu = (metrics.cpu_seconds() - cpu0) / n
        where = {p: j for j, p in enumerate(samples.prompt_index)}  # prompt -> its (one) answer
        texts = [samples.texts[where[k]] for k in range(n)]
        gold = {spec: [float(v) for v in fn(prompts, texts)] for spec, fn in ctx.gold.items()}
        cost = samples.cost.as_dict()
        shared = {**cost, **{k: round(cost[k] / n, 4) for k in ("wall_s", "lm_forward_tokens", "reward_calls")},
                  "cpu_s": round(cpu, 4), "energy_j": round(metrics.energy_joules(cpu), 2), "batch": n}
        results = []
        for k, row in enumerate(rows):
            j = where[k]
            tokens, base_lp = samples.num_tokens[j], float(samples.base_logprobs[j])
            kl = (float(samples.kl_rows[j]) if samples.kl_rows is not None
                  else samples.kl_to_base if n == 1 else None)
            results.append(dict(
                completion=texts[k],
                num_tokens=tokens,
                proxy=float(samples.rewards[j]),
                gold={spec: values[k] for spec, values in gold.items()},
                base_logprob=base_lp,
                logprob_per_token=base_lp / tokens if tokens else None,
                kl=kl,
                kl_bound=samples.kl_bound,
                ppl=(metrics.perplexity(ctx.judge, row["prompt"] if ctx.raw else row["prompt"] + "\n\n", texts[k])
                     if ctx.judge is not None else None),
                reference=_reference_scores(row, texts[k]),
                cost={**shared, "generated_tokens": tokens},
                extras=_scalars(samples.extras),
                error=None,
            ))
        for out, result in zip(outs, results, strict=True):
            out.update(result)
    except Exception as err:  # one call failing must not end the grid
        for out in outs:
            out["error"] = f"{type(err).__name__}: {err}"
    return outs


def _reference_scores(row: dict, text: str) -> dict | None:
    """BLEU, ROUGE-L, BERTScore against the row's reference answer; with true and false answers (truthfulqa) also
    TruthfulQA's max-similarity-difference metrics (`metrics.truthfulqa_generation`)."""
    ref = next((row[k] for k in REFERENCE_FIELDS if row.get(k)), None)
    if ref is None:
        return None
    out = {"bleu": metrics.bleu(text, ref), "rouge_l": metrics.rouge_l(text, ref),
           "bertscore": metrics.bertscore_f1([text], [ref])[0]}
    if row.get("correct") and row.get("incorrect"):
        out |= metrics.truthfulqa_generation(text, list(dict.fromkeys([ref, *row["correct"]])), row["incorrect"])
    return out


# -- budget matching ------------------------------------------------------------------------------
def _forward_tokens_per_answer(ctx: RunContext, method: _Method, rows: list[dict], batch: int = 1) -> float:
    """LM forward tokens per answer of `method` on `rows`, in calls of `batch` prompts as the run makes them."""
    from ..types import Prompts

    lm, spent = ctx.lm, 0
    for start in range(0, len(rows), batch):
        chunk = Prompts.encode(lm, [row["prompt"] for row in rows[start : start + batch]], raw=ctx.raw)
        spent += method.sampler(lm, ctx.proxy, chunk, method.cfg, generator=_generator(0, start, lm.device)
                                ).cost.lm_forward_tokens
    return spent / len(rows)


def calibration_rows(prompts: list[dict], batch: int) -> list[dict]:
    """The prompts the budget calibration runs on: the first CALIBRATION_PROMPTS, or one call's worth."""
    return prompts[: max(CALIBRATION_PROMPTS, batch)]


def calibrate(ctx: RunContext, methods: list[_Method], rows: list[dict], multiple: float, known: dict,
              batch: int = 1) -> dict:
    """Per label: the knob value that makes LM forward tokens/answer ≈ `multiple` × base's (module docstring).

    Labels already in `known` (a resumed run's manifest) keep their value; only new ones are measured.
    """
    from ..samplers import get_sampler

    out = dict(known)
    if "base_forward_tokens" not in out:
        sampler, base_cfg = get_sampler("base")
        base_cfg = dataclasses.replace(base_cfg, max_new_tokens=methods[0].cfg.max_new_tokens, num_samples=1)
        base = _forward_tokens_per_answer(ctx, _Method("base", "base", "base", base_cfg, sampler), rows, batch)
        out.update(base_forward_tokens=base, target=multiple * base)
    for m in methods:
        knob = KNOBS.get(m.name)
        if knob is None or m.label in out:
            continue
        try:
            lo, hi = CALIBRATION_KNOBS
            cost = {k: _forward_tokens_per_answer(ctx, dataclasses.replace(
                m, cfg=dataclasses.replace(m.cfg, **{knob: k})), rows, batch) for k in (lo, hi)}
            slope = (cost[hi] - cost[lo]) / (hi - lo)
            if slope <= 0:
                raise DGAlignError(f"its forward tokens did not grow with {knob} ({cost})")
            value = max(1, round((out["target"] - (cost[lo] - slope * lo)) / slope))
            out[m.label] = {"knob": knob, "value": value, "measured": cost}
        except Exception as err:  # the rows of this method will record the error; the rest stay matched
            out[m.label] = {"knob": knob, "error": f"{type(err).__name__}: {err}"}
    return out


# -- the grid -------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A run checked before any model loads: its settings (suite defaults filled in), methods, prompts, files."""

    cfg: BenchConfig  # reward, gold, raw and ppl_model resolved
    name: str  # suite_label(cfg.suite)
    methods: list[_Method]
    prompts: list[dict]  # the suite's rows ("prompt", optionally "reference", "id", ...), first n_prompts
    rows_path: Path
    manifest_path: Path
    manifest: dict  # to write once the rows to run are known


def plan_bench(cfg: BenchConfig, argv: list[str] | None = None) -> Plan:
    """Check everything checkable without a model (settings against an existing manifest, its rows file too)."""
    from ..bench import get_suite, load_prompts
    from ..rewards import get_reward

    if cfg.n_prompts < 1 or cfg.max_new_tokens < 1 or cfg.batch < 1:
        raise DGAlignError(f"--n-prompts, --max-new-tokens and --batch must be at least 1 (got {cfg.n_prompts}, "
                           f"{cfg.max_new_tokens}, {cfg.batch})")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise DGAlignError(f"--seeds must list distinct seeds, got {cfg.seeds}")
    if not 0 <= cfg.budget_matched < math.inf:
        raise DGAlignError(f"--budget-matched must be a positive number (0: off), got {cfg.budget_matched}")
    out_dir = check_out_dir(cfg.out)
    methods = resolve_methods(cfg)
    rows, suite_raw = load_prompts(cfg.suite, fields=cfg.field_map())
    rows = rows[: cfg.n_prompts]
    is_file = suite_raw is None  # a prompts file or an hf: dataset
    if not cfg.reward and is_file:
        raise DGAlignError(f"{cfg.suite} is a prompts file or dataset, not a suite: give --reward")
    suite = None if is_file else get_suite(cfg.suite)
    if suite is not None and cfg.n_prompts > suite.heldout:
        raise DGAlignError(f"--n-prompts {cfg.n_prompts} exceeds {cfg.suite}'s {suite.heldout} held-out evaluation "
                           f"rows (rows {suite.heldout}.. are its training rows: {suite.split})")
    cfg = dataclasses.replace(
        cfg,
        reward=cfg.reward or suite.proxy,
        gold=list(cfg.gold if cfg.gold is not None else (() if is_file else suite.gold)),
        raw=cfg.raw if cfg.raw is not None else bool(suite_raw),
        ppl_model=resolve_ppl_model(cfg),
    )
    for spec in [cfg.reward, *cfg.gold]:  # the specs are checked here; each runner builds its own rewards
        get_reward(spec)
    name = suite_label(cfg.suite)
    rows_path, manifest_path = out_dir / f"{name}.jsonl", out_dir / f"{name}.manifest.json"
    manifest = _manifest(cfg, manifest_path, argv)  # a resumed run's settings are checked here,
    read_rows(rows_path, checked=True)  # and its rows file: before the models load and anything is written
    return Plan(cfg, name, methods, rows, rows_path, manifest_path, manifest)


def load_context(cfg: BenchConfig, name: str) -> tuple[RunContext, float]:
    """The model, rewards and perplexity judge a run's rows share, and the LM's load seconds: built the same
    way here and in every Ray worker."""
    from ..cost import timed
    from ..lm import load_lm
    from ..rewards import get_reward

    loading = {"dtype": cfg.dtype, "device": cfg.device, "device_map": cfg.device_map, "revision": cfg.revision,
               "trust_remote_code": cfg.trust_remote_code}
    lm, load_s = timed(load_lm, cfg.model, chat=False if cfg.raw else None, **loading)
    judge = None
    if cfg.ppl_model:  # the judge loads on the LM's device, in its dtype (its own revision: the default)
        judge = lm if cfg.ppl_model == cfg.model else load_lm(cfg.ppl_model, dtype=cfg.dtype, device=str(lm.device),
                                                              chat=False)
    return RunContext(name, lm, cfg.raw, get_reward(cfg.reward), {s: get_reward(s) for s in cfg.gold}, judge), load_s


def warm_up(ctx: RunContext, prompt: dict, load_s: float) -> dict[str, float]:
    """Pay the one-off costs (`cost.prepare`) before the first row, so no row's cost includes them; their timings."""
    from ..cost import prepare
    from ..types import Prompts

    batch = Prompts.encode(ctx.lm, [prompt["prompt"]], raw=ctx.raw)
    return prepare(ctx.lm, ctx.proxy, *ctx.gold.values(), prompts=batch, load_s=load_s)


Call = tuple[tuple[int, ...], _Method, int]  # one sampler call: (its prompts' indices, method, seed)


def calls(pending: list[tuple[int, _Method, int]], batch: int) -> list[Call]:
    """The pending (prompt, method, seed) rows as sampler calls of up to `batch` prompts each.

    Prompts are grouped by fixed chunks (indices 0..b−1, b..2b−1, ...), so a call's prompts and generator do not
    depend on what an earlier, killed invocation finished; a chunk with rows already done runs the rest.
    """
    grouped: dict[tuple[int, str, int], list] = {}
    for i, method, seed in pending:
        grouped.setdefault((i // batch, method.label, seed), [method, seed, []])[2].append(i)
    return [(tuple(indices), method, seed) for method, seed, indices in grouped.values()]


class Rows(Protocol):
    """Where a run's rows run (`run_bench(..., runner=)` builds one from the plan, loading what the rows need)."""

    def setup(self) -> dict: ...  # what the invocation records of the setup: "setup" (`warm_up`'s timings), ...
    def calibrate(self, methods: list[_Method], multiple: float, known: dict) -> dict: ...  # `calibrate`'s answer
    def run(self, grid: list[Call]) -> Iterator[dict]: ...  # every row, as it finishes
    def close(self) -> None: ...


class LocalRows:
    """Rows run in this process, one after another."""

    def __init__(self, plan: Plan):
        self.ctx, self.load_s = load_context(plan.cfg, plan.name)
        self.prompts = plan.prompts

    def setup(self) -> dict:
        """What the invocation records of this runner's setup: "setup" (`warm_up`'s timings)."""
        return {"setup": warm_up(self.ctx, self.prompts[0], self.load_s)}

    def calibrate(self, methods: list[_Method], multiple: float, known: dict, batch: int = 1) -> dict:
        return calibrate(self.ctx, methods, calibration_rows(self.prompts, batch), multiple, known, batch)

    def run(self, grid: list[Call]) -> Iterator[dict]:
        for indices, method, seed in grid:
            yield from run_rows(self.ctx, method, list(indices), [self.prompts[i] for i in indices], seed)

    def close(self) -> None:
        pass


def run_bench(cfg: BenchConfig, *, progress: bool = True, argv: list[str] | None = None,
              retry_errors: bool = False, runner: Callable[[Plan], Rows] = LocalRows) -> Path:
    """Run (or resume) the grid; returns the rows file. `runner(plan)` loads what the rows need and runs them:
    `LocalRows` here, `ray_bench.ray_rows(opts)` on Ray actors."""
    from tqdm import tqdm

    plan = plan_bench(cfg, argv)
    cfg, methods, rows_path, manifest = plan.cfg, plan.methods, plan.rows_path, plan.manifest
    with closing(runner(plan)) as rows:
        rows_path.parent.mkdir(parents=True, exist_ok=True)  # every input is valid: only now is anything written
        existing = read_rows(rows_path, repair=True)
        if retry_errors and any(r.get("error") for r in existing):
            existing = [r for r in existing if not r.get("error")]
            write_atomic(rows_path, "".join(json.dumps(r) + "\n" for r in existing))
        done = {(r["prompt_index"], r["method"], r["seed"]) for r in existing}
        pending = [(i, m.label, s) for i in range(len(plan.prompts)) for m in methods for s in cfg.seeds]
        if not done.issuperset(pending):  # the first row must not pay for lazy loads: time them apart, on record
            manifest["invocations"][-1].update(rows.setup())

        if cfg.budget_matched:
            manifest["budget"] = rows.calibrate(methods, cfg.budget_matched, manifest["budget"], cfg.batch)
            for i, m in enumerate(methods):
                entry = manifest["budget"].get(m.label, {})
                if "value" in entry:
                    methods[i] = dataclasses.replace(m, cfg=dataclasses.replace(m.cfg, **{entry["knob"]: entry["value"]}))
        manifest["methods"].update({m.label: {"spec": m.spec, "sampler": m.name, "config": dataclasses.asdict(m.cfg)}
                                    for m in methods})
        write_atomic(plan.manifest_path, json.dumps(manifest, indent=2) + "\n")

        todo = [(i, m, s) for i in range(len(plan.prompts)) for m in methods for s in cfg.seeds
                if (i, m.label, s) not in done]
        total = len(plan.prompts) * len(methods) * len(cfg.seeds)
        with open(rows_path, "a") as f, tqdm(total=total, initial=total - len(todo), desc=f"bench {plan.name}",
                                             unit="row", file=sys.stderr, disable=not progress or None) as bar:
            for row in rows.run(calls(todo, cfg.batch)):
                _append(f, row)
                bar.set_postfix_str(row["method"], refresh=False)
                bar.update(1)
    return rows_path
