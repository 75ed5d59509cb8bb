"""The `dgalign` command line: thin wrappers over the library, imports made lazily.

Commands: generate · exact · models · rewards · suites · methods · serve · train-dpo · train-rm · rm-eval ·
bench · report · experiment · rate · judge · judge-check.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer

from .config import DEFAULT_MODEL, MAX_SEED
from .errors import DGAlignError

# the settings dataclasses (torch-free modules): their defaults are the options' defaults, written once
from .eval.bench_config import BenchConfig
from .train.dpo import DPOTrainConfig
from .train.rm_config import RMConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Decode-time alignment of language models to a reward (DGA and baselines).",
)


# how a model loads: the same flags on every command that loads one (passed to `load_lm`)
DType = Annotated[str, typer.Option(help="Weights' dtype: auto (float32 on CPU, the checkpoint's own on GPU), "
                                         "float32, bfloat16, float16.")]
DeviceMap = Annotated[str | None, typer.Option(help="accelerate device map (auto, balanced, sequential); "
                                                    "spreads the model over the GPUs, instead of --device.")]
Revision = Annotated[str | None, typer.Option(help="Hub branch, tag or commit of --model.")]
TrustRemoteCode = Annotated[bool, typer.Option(help="Run the model repository's own code (hub models that "
                                                    "need it).")]
RewardDevice = Annotated[str | None, typer.Option(help="Device of hf: reward models (default: cpu), e.g. the "
                                                       "second GPU while the LM uses the first.")]


def _model_options(dtype: str, device: str | None, device_map: str | None, revision: str | None,
                   trust_remote_code: bool, reward_device: str | None = None) -> dict:
    """`load_lm`'s keyword arguments from the shared flags, checked before anything loads; --reward-device is
    handed to reward models through $DGALIGN_REWARD_DEVICE."""
    import os

    from .lm import DTYPES, resolve_device

    _check(dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device is not None:
        resolve_device(device)
    if reward_device is not None:
        resolve_device(reward_device)
        os.environ["DGALIGN_REWARD_DEVICE"] = reward_device
    return {"dtype": dtype, "device": device, "device_map": device_map, "revision": revision,
            "trust_remote_code": trust_remote_code}


# `--ray [ADDRESS]` and its companions, on `bench` and `train`
RayAddress = Annotated[str | None, typer.Option(
    "--ray", metavar="[ADDRESS]",
    help="Run on Ray (pip install 'dgalign[ray]'): auto = the running cluster (`ray start`), host:port = that "
         "one, alone or '' = start one here.")]
Workers = Annotated[int | None, typer.Option(help="Ray actors with --ray; each loads the model once "
                                                 "(default 2).")]
WorkerResources = Annotated[str | None, typer.Option(help='What each Ray actor reserves, JSON (default '
                                                          '\'{"CPU": 1}\'; e.g. \'{"GPU": 1}\').')]


def _ray_options(ray: str | None, workers: int | None, worker_resources: str | None):
    """`RayOptions` from the flags, or None without --ray."""
    from .cluster import RayOptions, parse_resources

    _check(ray is not None or workers is None and worker_resources is None,
           "--workers and --worker-resources need --ray")
    if ray is None:
        return None
    opts = RayOptions(address=ray or "local")
    _check(workers is None or workers >= 1, f"--workers must be at least 1, got {workers}")
    opts.workers = workers or opts.workers
    if worker_resources is not None:
        opts.resources = parse_resources(worker_resources)
    return opts


def _emit_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DGAlignError(message)


def _check_beta(beta: float) -> None:
    _check(math.isfinite(beta), f"--beta must be a finite number, got {beta}")


def _check_seed(seed: int, flag: str = "--seed") -> None:
    _check(0 <= seed <= MAX_SEED, f"{flag} must be in 0..{MAX_SEED}, got {seed}")


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    model: Annotated[str, typer.Option(help="Built-in name (`dgalign models`), HF id or local path.")] = (
        DEFAULT_MODEL
    ),
    method: Annotated[str, typer.Option(help="Sampler (`dgalign methods`).")] = "base",
    reward: Annotated[str, typer.Option(help="Reward spec, e.g. 'toxicity:1,sentiment:0.5'.")] = "toxicity",
    beta: Annotated[float, typer.Option(help="Target strength β in p·exp(β r).")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Completion length limit.")] = 64,
    num_samples: Annotated[int, typer.Option(help="Answers returned per prompt.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Method config field, key=value (repeatable), e.g. n=8.")
    ] = None,
    raw: Annotated[bool, typer.Option(help="Do not apply the chat template.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: DType = "auto",
    device_map: DeviceMap = None,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    reward_device: RewardDevice = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer prompts with an aligned sampler and print rewards and cost."""
    from .bench import check_prompt
    from .config import apply_overrides, parse_sets
    from .cost import format_setup, prepare, timed
    from .lm import load_lm
    from .ops import make_generator
    from .rewards import get_reward
    from .samplers import get_sampler
    from .types import Prompts

    # everything checkable without the model is checked first
    for i, p in enumerate(prompts, start=1):
        check_prompt(p, f"prompt {i}")
    _check(max_new_tokens > 0, f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    _check(num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}")
    _check_beta(beta)
    _check_seed(seed)
    loading = _model_options(dtype, device, device_map, revision, trust_remote_code, reward_device)
    sampler, cfg = get_sampler(method)
    cfg = apply_overrides(cfg, {"max_new_tokens": str(max_new_tokens), "num_samples": str(num_samples),
                                "beta": str(beta), **parse_sets(set_ or [])})
    reward_fn = get_reward(reward)

    lm, load_s = timed(load_lm, model, chat=False if raw else None, **loading)
    batch = Prompts.encode(lm, prompts, raw=raw)
    longest = max(len(ids) for ids in batch.ids)
    _check(
        longest + cfg.max_new_tokens <= lm.max_context,
        f"--max-new-tokens {cfg.max_new_tokens} plus the longest prompt ({longest} tokens) exceeds "
        f"{lm.name}'s context of {lm.max_context} tokens",
    )
    setup = prepare(lm, reward_fn, prompts=batch, load_s=load_s)  # one-off costs, timed apart from generation
    with _progress(cfg.max_new_tokens, disable=as_json) as bar:
        out = sampler(lm, reward_fn, batch, cfg, generator=make_generator(seed, lm.device),
                      callback=lambda info: bar.update(1))
    results = [
        {"prompt": prompts[i], "completion": text, "reward": float(r), "num_tokens": n}
        for i, text, r, n in zip(out.prompt_index, out.texts, out.rewards.tolist(), out.num_tokens, strict=True)
    ]
    if as_json:
        _emit_json({"model": lm.name, "method": method, "reward": reward, "beta": cfg.beta, "seed": seed,
                    "results": results, "cost": {**out.cost.as_dict(), "setup": setup}})
        return
    for row in results:
        typer.echo(f"\n> {row['prompt']}\n{row['completion'].strip()}")
        typer.echo(f"  [reward {reward}: {row['reward']:+.4f} · {row['num_tokens']} tokens]")
    c = out.cost
    typer.echo(
        f"\ncost ({method}): {c.wall_s:.2f} s wall · {c.tokens_per_s:.1f} tokens/s · "
        f"{c.lm_forward_tokens} LM forward tokens · {c.reward_calls} reward calls · peak RSS {c.peak_rss_mb:.0f} MB"
    )
    typer.echo(f"{format_setup(setup)} (before generation, not in the wall time above)")


def _progress(total: int, disable: bool, desc: str = "decoding"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=disable or None)


def _table(rows: list[dict], columns: list[str], as_json: bool) -> None:
    if as_json:
        _emit_json(rows)
        return
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns[:-1]}
    for row in rows:
        typer.echo("  ".join(f"{str(row[c]):<{width[c]}}" for c in columns[:-1]) + f"  {row[columns[-1]]}")


@app.command()
def demo(
    prompt: Annotated[list[str] | None, typer.Option(help="Raw continuation prompt (repeatable; default: four "
                                                         "RealToxicityPrompts openings).")] = None,
    samples: Annotated[int, typer.Option(help="Answers per prompt and method (same seed for every method).")] = 16,
    show: Annotated[int, typer.Option(help="Answers printed per prompt and method (statistics use all).")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Completion length limit.")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Plain sampling, best-of-4 and DGA (shipped `toxicity` checkpoint) on the same prompts, embedded model."""
    from .cost import prepare, timed
    from .demo import DEMO_PROMPTS, render, run_demo
    from .lm import load_lm
    from .rewards import get_reward
    from .types import Prompts

    prompts = list(prompt or DEMO_PROMPTS)
    _check(all(p.strip() for p in prompts), "empty prompt: every --prompt must contain text")
    _check(samples >= 2, f"--samples must be at least 2 (the demo reports a standard error), got {samples}")
    _check(show >= 0, f"--show must be at least 0, got {show}")
    _check(max_new_tokens >= 1, f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    _check_seed(seed)
    typer.echo("loading the embedded SmolLM2-135M-Instruct and the toxicity reward …", err=True)
    lm, load_s = timed(load_lm, DEFAULT_MODEL, chat=False)
    reward = get_reward("toxicity")
    setup = prepare(lm, reward, prompts=Prompts.encode(lm, prompts, raw=True), load_s=load_s)
    results = run_demo(lm, reward, prompts, samples, max_new_tokens, seed,
                       progress=lambda label, steps: _progress(steps, disable=False, desc=label))
    for line in render(results, prompts, setup, show):
        typer.echo(line)


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in models (any HF model id or local path also works)."""
    from .lm import describe_models

    _table(describe_models(), ["name", "install", "description"], as_json)


@app.command()
def rewards(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in rewards with their ranges (specs combine them: 'toxicity:1,sentiment:0.5')."""
    from .rewards import describe_rewards
    from .rewards.spec import SPEC_HELP

    _table(describe_rewards(), ["name", "range", "description"], as_json)
    if not as_json:
        typer.echo(f"\n{SPEC_HELP}")


@app.command()
def suites(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the benchmark suites: the guide reward methods are steered by, the gold they are judged by, the split."""
    from .bench.suites import describe_suites
    from .rewards import reads_references

    rows = describe_suites()
    for row in rows:  # the answer key is for gold only: which specs read it
        row["guide"] = {"reward": row["guide"], "reads_references": reads_references(row["guide"])}
        row["gold"]["rewards"] = [{"reward": g, "reads_references": reads_references(g)} for g in row["gold"]["rewards"]]
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        gold = [*(g["reward"] for g in row["gold"]["rewards"]), *(f"judge vs base: {d}" for d in
                                                                  row["gold"]["judge_vs_base"]),
                *row["gold"]["metrics"]]
        typer.echo(f"{row['name']:<12} {row['description']}")
        typer.echo(f"{'':<12} guide {row['guide']['reward']} · gold {', '.join(gold) or '–'}")
        pairs = f" · training pairs {row['split']['training_pairs']}" if row["split"]["training_pairs"] else ""
        typer.echo(f"{'':<12} rows 0..{row['split']['heldout'] - 1} evaluate, the rest train "
                   f"({row['split']['how']}){pairs}")


@app.command()
def methods(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the samplers and their config fields (set them with --set key=value)."""
    from .samplers import describe_methods

    rows = describe_methods()
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<10} {row['description']}")
        typer.echo(" " * 11 + ", ".join(f"{k}={v}" for k, v in row["config"].items()))


@app.command()
def train(
    out: Annotated[str, typer.Option(help="Checkpoint directory to write.")],
    model: Annotated[str, typer.Option(help="Built-in name, HF id or local path.")] = DEFAULT_MODEL,
    reward: Annotated[str, typer.Option(help="Reward spec the nets are trained for.")] = "toxicity",
    prompts: Annotated[str, typer.Option(help="Suite name (rtp-toxic, imdb-open, ...) or a .txt/.jsonl file.")] = (
        "rtp-toxic"
    ),
    n_prompts: Annotated[int, typer.Option(help="Training prompts (from --skip on).")] = 200,
    skip: Annotated[int | None, typer.Option(help="Leave the first N prompts out (held out for evaluation); default: "
                                                  "a suite's held-out rows (`dgalign suites`), 0 for a file.")] = None,
    beta: Annotated[float, typer.Option(help="β the proposal net is fitted for.")] = 4.0,
    tiny: Annotated[bool, typer.Option(help="Small preset that trains in under 2 minutes (tests, smoke runs).")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="TrainConfig field, key=value.")] = None,
    raw: Annotated[bool | None, typer.Option("--raw/--chat", help="Skip / force the chat template (default: the suite's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    ray: RayAddress = None,
    workers: Workers = None,
    worker_resources: WorkerResources = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Then upload the checkpoint and a model card to this "
                                                         "Hugging Face Hub repo (ORG/NAME); load it with "
                                                         "--set checkpoint=hf:ORG/NAME.")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public", help="Visibility of the repo if "
                                                 "--push-to-hub creates it (default: the Hub's).")] = None,
    hub_revision: Annotated[str | None, typer.Option(help="Branch --push-to-hub pushes to (created if missing; "
                                                          "default main).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: DType = "auto",
    device_map: DeviceMap = None,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    reward_device: RewardDevice = None,
) -> None:
    """Train DGA's denoiser correction, value head and proposal for a model and reward (§2.6).

    With --ray the rollouts run on Ray actors, --set rollout_shards=K shards (default: one per worker);
    training stays here. The same seed and K give the same checkpoint, on Ray or not (K ≥ 2)."""
    import functools

    from .bench import load_prompts
    from .config import apply_overrides, parse_sets
    from .lm import load_lm
    from .rewards import get_reward
    from .train.dga import TrainConfig, check_out, train_dga
    from .types import Prompts

    _check(push_to_hub is not None or (private is None and hub_revision is None),
           "--private/--public and --hub-revision need --push-to-hub")
    if push_to_hub is not None:
        from .train.hub import check_push, push_checkpoint

        check_push(push_to_hub)  # before training, not after it
    _check(n_prompts >= 1, f"--n-prompts must be at least 1, got {n_prompts}")
    _check(skip is None or skip >= 0, f"--skip must be at least 0, got {skip}")
    _check_beta(beta)
    _check_seed(seed)
    check_out(out)
    ray_opts = _ray_options(ray, workers, worker_resources)
    cfg = TrainConfig.tiny() if tiny else TrainConfig()
    shards = {} if ray_opts is None else {"rollout_shards": str(ray_opts.workers)}
    cfg = apply_overrides(cfg, {"beta": str(beta), "seed": str(seed), **shards, **parse_sets(set_ or [])})
    rows, suite_raw = load_prompts(prompts)
    if skip is None:  # a suite trains on its training rows only
        from .bench import SUITES

        skip = SUITES[prompts].heldout if suite_raw is not None else 0
    rows = rows[skip:skip + n_prompts]
    _check(len(rows) > 0, f"no prompts left in {prompts!r} after --skip {skip}")
    reward_fn = get_reward(reward)
    use_raw = raw if raw is not None else bool(suite_raw)
    load = functools.partial(load_lm, model, chat=False if use_raw else None,
                 **_model_options(dtype, device, device_map, revision, trust_remote_code, reward_device))
    lm = load()
    batch = Prompts.encode(lm, [r["prompt"] for r in rows], raw=use_raw)
    rollouts = None
    if ray_opts is not None:
        from .train.ray_collect import RayCollect

        rollouts = RayCollect(load, reward, ray_opts)
    nets = train_dga(lm, reward_fn, reward, batch, out, cfg, rollouts=rollouts)
    typer.echo(f"wrote {out}: {nets.meta['tuples']} tuples from {len(rows)} prompts, "
               f"{nets.meta['train_seconds']} s; losses {nets.meta['losses']}")
    if push_to_hub is not None:
        url = push_checkpoint(out, push_to_hub, private=private, revision=hub_revision, argv=sys.argv)
        typer.echo(f"pushed to {url}; use it with --set checkpoint=hf:{push_to_hub}"
                   + (f"@{hub_revision}" if hub_revision else ""))


@app.command()
def exact(
    method: Annotated[str, typer.Option(help="Sampler (`dgalign methods`).")] = "base",
    beta: Annotated[float, typer.Option(help="Target strength β.")] = 1.0,
    samples: Annotated[int, typer.Option(help="Samples drawn from the method.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (the i.i.d. noise floor uses it too).")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Method config field, key=value.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Hold a method to the exact target p·exp(βr)/Z on the enumerable toy LM (TV, KL, reward, log Z)."""
    from .config import parse_sets
    from .eval.exact import run_exact

    _check(samples >= 1, f"--samples must be at least 1, got {samples}")
    _check_beta(beta)
    _check_seed(seed)
    res = run_exact(method, beta=beta, samples=samples, seed=seed, overrides=parse_sets(set_ or []))
    if as_json:
        _emit_json(res)
        return
    typer.echo(f"{method} on the toy LM, beta={res['beta']}, {res['samples']} samples")
    typer.echo(f"  TV to exact target   {res['tv']:.4f}   (noise floor of i.i.d. exact draws: {res['tv_floor']:.4f})")
    typer.echo(f"  KL(p_r || samples)   {res['kl']:.4f}")
    typer.echo(f"  mean reward          {res['reward']:.4f}   (exact E_p_r[r] = {res['exact_reward']:.4f})")
    log_z = "n/a" if res["log_z"] is None else f"{res['log_z']:.4f}"
    typer.echo(f"  log Z estimate       {log_z}   (exact {res['exact_log_z']:.4f})")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Built-in name (`dgalign models`), HF id or local path.")] = (
        DEFAULT_MODEL
    ),
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="DGALIGN_API_KEY", help="Require `Authorization: Bearer KEY` on /v1/*.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Prompts per sampler call; 1 turns micro-batching off.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to batch with.")] = 5.0,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted, in tokens.")] = 2048,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 512,
    max_n: Annotated[int, typer.Option(help="Most choices (n) per prompt.")] = 16,
    max_queue: Annotated[int, typer.Option(help="Most prompts waiting for a sampler call; more get 429.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body, in bytes (413 beyond).")] = 4 * 2**20,
    allow_custom_rewards: Annotated[
        bool, typer.Option(help="Accept MODULE:ATTR, hf: and string-parameter reward terms (code or files a "
                                "client names).")
    ] = False,
    allow_checkpoint_paths: Annotated[
        bool, typer.Option(help="Accept DGA checkpoint paths in alignment.params.checkpoint, not only the "
                                "shipped names (files a client names).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The name clients send as `model` and /v1/models lists (default: the "
                                      "model's own name).")
    ] = None,
    dtype: DType = "auto",
    device_map: DeviceMap = None,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    reward_device: RewardDevice = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, alignment chosen per request."""
    import uvicorn

    from .lm import load_lm
    from .server import Limits, create_app

    _check(1 <= port <= 65535, f"--port must be in 1..65535, got {port}")
    for name, value in [("--max-batch", max_batch), ("--max-prompt-tokens", max_prompt_tokens),
                        ("--max-tokens-limit", max_tokens_limit), ("--max-n", max_n), ("--max-queue", max_queue),
                        ("--max-body-bytes", max_body_bytes)]:
        _check(value >= 1, f"{name} must be at least 1, got {value}")
    _check(batch_wait_ms >= 0, f"--batch-wait-ms must be at least 0, got {batch_wait_ms}")
    _check(served_model_name is None or served_model_name.strip() != "", "--served-model-name must not be empty")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    lm = load_lm(model, **_model_options(dtype, device, device_map, revision, trust_remote_code, reward_device))
    limits = Limits(max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens_limit, max_n=max_n,
                    max_body_bytes=max_body_bytes, custom_rewards=allow_custom_rewards,
                    checkpoint_paths=allow_checkpoint_paths)
    server = create_app(lm, limits=limits, max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                        api_key=api_key, served_model_name=served_model_name)
    name = served_model_name or lm.name
    typer.echo(f"serving {lm.name} as {name!r} on http://{host}:{port}/v1 (max batch {max_batch})", err=True)
    uvicorn.run(server, host=host, port=port, log_level="warning")


@app.command("train-dpo")
def train_dpo(
    model: Annotated[str, typer.Option(help="Base model: built-in name, HF id or local path.")],
    pairs: Annotated[str, typer.Option(help='Preference pairs, JSONL(.gz) of {"prompt"?, "chosen", "rejected"}, '
                                            "or a suite's training split: hh-harmless:train, truthfulqa:train.")],
    out: Annotated[str, typer.Option(help="Adapter directory to create (written when training ends).")],
    max_pairs: Annotated[int, typer.Option(help="Training pairs.")] = DPOTrainConfig.max_pairs,
    epochs: Annotated[float, typer.Option(help="Passes over the training pairs.")] = DPOTrainConfig.epochs,
    lr: Annotated[float, typer.Option(help="Learning rate of the LoRA weights.")] = DPOTrainConfig.lr,
    beta: Annotated[float, typer.Option(help="DPO β.")] = DPOTrainConfig.beta,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = DPOTrainConfig.lora_r,
    max_length: Annotated[int, typer.Option(help="Prompt + answer tokens.")] = DPOTrainConfig.max_length,
    seed: Annotated[int, typer.Option(help="Data shuffle / split and LoRA init seed.")] = DPOTrainConfig.seed,
    resume: Annotated[bool, typer.Option(help="Continue the partial run beside --out from its last "
                                              "checkpoint.")] = DPOTrainConfig.resume,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: DType = DPOTrainConfig.dtype,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other DPOTrainConfig field, key=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the training summary as JSON.")] = False,
) -> None:
    """Fine-tune a LoRA adapter with DPO (the RLHF baseline); run it with --model '<model>+adapter:<out>'."""
    from .config import apply_overrides, check_out_dir, parse_sets
    from .train.dpo import train_dpo as run

    check_out_dir(out)
    _check(model.partition("+")[0] != "toy", "train-dpo fine-tunes a Hugging Face model; the toy LM has no weights "
           "to train (give a built-in name, an HF id or a model directory)")
    given = {"max_pairs": max_pairs, "epochs": epochs, "lr": lr, "beta": beta, "lora_r": lora_r,
             "max_length": max_length, "seed": seed}
    settings = {k: str(v) for k, v in given.items()} | parse_sets(set_ or [])  # checked by the config's types
    loading = _model_options(dtype, device, None, revision, trust_remote_code)
    del loading["device_map"]  # LoRA training runs on one device
    cfg = apply_overrides(DPOTrainConfig(model=model, pairs=pairs, out=out, resume=resume, **loading), settings)
    summary = run(cfg)
    if as_json:
        _emit_json(summary)
        return
    before, after = summary["eval_before"], summary["eval_after"]
    typer.echo(f"adapter written to {cfg.out}: {summary['steps']} steps in {summary['train_seconds']:.1f} s, "
               f"final loss {summary['final_loss']:.4f}")
    typer.echo(f"held-out log p(chosen) - log p(rejected): {before['margin']:+.3f} -> {after['margin']:+.3f} "
               f"over {summary['data']['eval_pairs']} pairs (DPO loss {before['loss']:.4f} -> {after['loss']:.4f})")
    typer.echo(f"run it: dgalign generate --model '{cfg.model}+adapter:{cfg.out}' --method base PROMPT")


@app.command("train-rm")
def train_rm(
    pairs: Annotated[str, typer.Option(help='Preference pairs, JSONL(.gz) of {"prompt"?, "chosen", "rejected"}, '
                                            "or a suite's training split: hh-harmless:train, truthfulqa:train.")],
    out: Annotated[str, typer.Option(help="Reward-model directory to create; score with --reward 'learned(path=DIR)'.")],
    features: Annotated[str, typer.Option(help="minilm | lm:<model> | random:<dim>.")] = RMConfig.features,
    val_frac: Annotated[float, typer.Option(help="Held-out fraction for early stopping.")] = RMConfig.val_frac,
    epochs: Annotated[int, typer.Option(help="Most passes over the training pairs.")] = RMConfig.epochs,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the head.")] = RMConfig.lr,
    max_pairs: Annotated[int | None, typer.Option(help="Use a random subset of this many pairs; default all.")] = (
        RMConfig.max_pairs
    ),
    seed: Annotated[int, typer.Option(help="Subset, split and initialisation seed.")] = RMConfig.seed,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any other RMConfig field, key=value.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the saved config as JSON.")] = False,
) -> None:
    """Train a Bradley-Terry reward model (a head on frozen features) on preference pairs."""
    from pathlib import Path

    from .config import apply_overrides, check_out_dir, parse_sets
    from .train.reward_model import train_and_save

    check_out_dir(out)
    given = {"features": features, "val_frac": val_frac, "epochs": epochs, "lr": lr, "max_pairs": max_pairs,
             "seed": seed}
    settings = {k: str(v) for k, v in given.items() if v is not None} | parse_sets(set_ or [])  # None: all pairs
    cfg = apply_overrides(RMConfig(), settings)
    meta = train_and_save(pairs, cfg, Path(out), progress=not as_json)
    if as_json:
        _emit_json({k: v for k, v in meta.items() if k != "split"} | {"split": {
            k: v for k, v in meta["split"].items() if k != "val_rows"}})
        return
    typer.echo(f"reward model written to {out}: features {meta['features']}, {meta['split']['n_train']} training "
               f"pairs, validation accuracy {meta['val_accuracy']:.3f} on {meta['split']['n_val']} held-out pairs "
               f"(epoch {meta['best_epoch']}), {meta['train_seconds']:.1f} s")
    typer.echo(f"use it: --reward 'learned(path={out})'")


@app.command("rm-eval")
def rm_eval(
    reward: Annotated[str, typer.Option(help="Reward spec, e.g. harmless or 'learned(path=DIR)'.")],
    pairs: Annotated[str, typer.Option(help='Preference pairs, JSONL(.gz) of {"prompt"?, "chosen", "rejected"}, '
                                            "or a suite's training split: hh-harmless:train, truthfulqa:train.")],
    split: Annotated[str, typer.Option(help="all pairs, or val: those a learned reward model was not trained on.")] = (
        "all"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Pairwise accuracy of a reward: the fraction of pairs whose chosen answer scores higher."""
    from .rewards import get_reward
    from .train.reward_model import held_out, pair_accuracy, read_pairs

    _check(split in ("all", "val"), f"--split must be all or val, got {split!r}")
    data = read_pairs(pairs)
    reward_fn = get_reward(reward)
    if split == "val":
        _check(len(reward_fn.terms) == 1, "--split val needs a single reward-model term, not a weighted sum")
        data = data.subset(held_out(reward_fn.terms[0][2], pairs))
    res = pair_accuracy(reward_fn, data, progress=not as_json)
    if as_json:
        _emit_json(res)
        return
    typer.echo(f"{reward} on {pairs} ({split}): chosen scored higher on {res['accuracy']:.3f} of {res['n']} pairs")


@app.command()
def bench(
    suite: Annotated[str, typer.Option(help="Suite (`dgalign suites`: rtp-toxic, hh-harmless, harmbench, truthfulqa, "
                                            "mt-bench, ...), a .txt/.jsonl/.csv prompts file, or "
                                            "hf:NAME:CONFIG@SPLIT (:CONFIG, @SPLIT optional), NAME a hub "
                                            "dataset id or a local dataset directory, read with "
                                            "datasets.load_dataset (e.g. hf:openai/gsm8k:main@test[:40]).")],
    out: Annotated[str, typer.Option(help="Run directory (<suite>.jsonl rows, <suite>.manifest.json); re-run to resume.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated specs name[:key=value...], e.g. "
                                                     "'base,bon:n=8,dga:checkpoint=DIR'.")] = None,
    grid: Annotated[str | None, typer.Option(help="Named grid of methods, e.g. ablations (after --methods).")] = None,
    n_prompts: Annotated[int, typer.Option(help="The suite's first N prompts.")] = BenchConfig.n_prompts,
    batch: Annotated[int, typer.Option(help="Prompts per sampler call (one method and seed); the call's cost is "
                                            "split over its answers. 1: each row its own call.")] = BenchConfig.batch,
    max_new_tokens: Annotated[int, typer.Option(help="Completion length limit.")] = BenchConfig.max_new_tokens,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; one row per (prompt, method, seed).")] = "0",
    model: Annotated[str, typer.Option(help="Built-in name, HF id, local path or toy.")] = BenchConfig.model,
    beta: Annotated[float, typer.Option(help="β of every method unless its spec sets beta=.")] = BenchConfig.beta,
    reward: Annotated[str | None, typer.Option(help="Proxy reward spec for guidance (default: the suite's).")] = None,
    gold: Annotated[list[str] | None, typer.Option(help="Gold reward spec, evaluation only (repeatable; "
                                                        "default: the suite's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=value for every method whose config has "
                                                                 "the field, e.g. checkpoint=DIR.")] = None,
    budget_matched: Annotated[float, typer.Option(help="Set each method's knob so LM forward tokens per "
                                                         "answer ≈ X × base's (0: off).")] = BenchConfig.budget_matched,
    data_dir: Annotated[str | None, typer.Option(help="Benchmark data directory (sets $DGALIGN_DATA).")] = None,
    ppl_model: Annotated[str, typer.Option(help="Perplexity judge model (auto: gemma3-270m if installed, "
                                                "else the base).")] = BenchConfig.ppl_model,
    no_ppl: Annotated[bool, typer.Option("--no-ppl", help="Skip perplexity.")] = False,
    raw: Annotated[bool | None, typer.Option("--raw/--chat", help="Skip / force the chat template "
                                                                  "(default: the suite's).")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Drop rows that recorded an error and run them again.")] = False,
    ray: RayAddress = None,
    workers: Workers = None,
    worker_resources: WorkerResources = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    prompt_field: Annotated[str, typer.Option(help="Column holding the prompt (.jsonl/.csv files, hf: "
                                                   "datasets).")] = BenchConfig.prompt_field,
    reference_field: Annotated[str, typer.Option(help="Column holding a reference answer for BLEU / ROUGE-L / "
                                                      "BERTScore (default: a 'reference' column if any).")] = (
        BenchConfig.reference_field),
    id_field: Annotated[str, typer.Option(help="Column holding the prompt's id, written to each row as "
                                               "prompt_id (default: an 'id' column if any).")] = BenchConfig.id_field,
    dtype: DType = BenchConfig.dtype,
    device_map: DeviceMap = None,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    reward_device: RewardDevice = None,
) -> None:
    """Run methods × prompts × seeds over a suite, one JSONL row each (resumable); then `dgalign report`.

    With --ray the rows run on Ray actors and come back here, where the rows file is written as without."""
    import os
    import time

    from .config import parse_sets
    from .eval.harness import LocalRows, read_rows, run_bench

    _check(bool(methods or grid), "give --methods and/or --grid")
    ray_opts = _ray_options(ray, workers, worker_resources)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise DGAlignError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    for s in seed_list:
        _check_seed(s, "--seeds")
    _check_beta(beta)
    loading = _model_options(dtype, device, device_map, revision, trust_remote_code, reward_device)
    if data_dir is not None:
        os.environ["DGALIGN_DATA"] = data_dir
    cfg = BenchConfig(
        suite=suite, out=out, methods=[m for m in (methods or "").split(",") if m.strip()], grid=grid or "",
        n_prompts=n_prompts, max_new_tokens=max_new_tokens, seeds=seed_list, batch=batch, model=model, beta=beta,
        reward=reward or "", gold=gold, raw=raw, sets=parse_sets(set_ or []), budget_matched=budget_matched,
        ppl_model="" if no_ppl else ppl_model, prompt_field=prompt_field, reference_field=reference_field,
        id_field=id_field, **loading,
    )
    started = time.perf_counter()
    runner = LocalRows
    if ray_opts is not None:
        from .eval.ray_bench import ray_rows

        runner = ray_rows(ray_opts)
    path = run_bench(cfg, argv=sys.argv, retry_errors=retry_errors, runner=runner)
    rows = read_rows(path)
    errors = sum(1 for r in rows if r.get("error"))
    typer.echo(f"{path}: {len(rows)} rows ({errors} with errors), {time.perf_counter() - started:.1f} s; "
               f"next: dgalign report {out}")


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A `dgalign bench --out` directory.")],
) -> None:
    """Tables (report.md, summary.json) and plots (plots/*.png) of a bench run."""
    from .eval.report import write_report

    path = write_report(run_dir)
    typer.echo(f"wrote {path} and plots beside it")


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help="An experiment of experiments/ (quality, efficiency, controllability, "
                                             "generalisation, ablations) or the path of a .yaml file.")],
    out: Annotated[str | None, typer.Option(help="Results directory: report.md, plots/, summary.json, manifest.json "
                                                 "(default docs/results/NAME).")] = None,
    work: Annotated[str, typer.Option(help="Rows, verdicts and trained checkpoints (re-run to resume; trained "
                                           "artifacts are reused by every experiment sharing the directory).")] = (
        "runs/experiments"),
    data_dir: Annotated[str | None, typer.Option(help="Benchmark data directory (sets $DGALIGN_DATA).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only read and check the YAML, print its runs.")] = False,
    runs: Annotated[str | None, typer.Option(help="Comma-separated run ids: do only these (the report covers all; "
                                                  "split a long experiment over several sittings).")] = None,
) -> None:
    """Run one experiment end to end: train what it needs, bench, judge, time, report (resumable)."""
    import os
    from pathlib import Path

    from .experiment import load_experiment

    if data_dir is not None:
        os.environ["DGALIGN_DATA"] = data_dir
    exp = load_experiment(name)
    if check:
        for run in exp.runs:
            typer.echo(f"{run.id:<24} {run.kind:<10} {run.suite:<12} {run.model}  {', '.join(run.methods)}")
        return
    from .experiment.runner import run_all

    only = [r.strip() for r in runs.split(",") if r.strip()] if runs is not None else None
    path = run_all(exp, Path(out or f"docs/results/{exp.name}"), Path(work), argv=sys.argv, only=only)
    typer.echo(f"wrote {path} (plots, summary.json and manifest.json beside it)")


DIMENSIONS = "quality,helpfulness,harmlessness"  # what raters and judges compare, by default
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _dimensions(dimensions: str) -> list[str]:
    dims = [d.strip() for d in dimensions.split(",") if d.strip()]
    _check(bool(dims) and len(set(dims)) == len(dims), f"--dimensions lists distinct names, got {dimensions!r}")
    return dims


@app.command()
def rate(
    run_dir: Annotated[str, typer.Argument(help="A `dgalign bench --out` directory; ratings go to its "
                                                "ratings.sqlite.")],
    pair: Annotated[str | None, typer.Option(help="Two method labels A,B to compare (default: every pair).")] = None,
    dimensions: Annotated[str, typer.Option(help="Comma-separated dimensions, one verdict each.")] = DIMENSIONS,
    port: Annotated[int, typer.Option(help="TCP port.")] = 8010,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default; others need --access-token).")] = (
        "127.0.0.1"),
    access_token: Annotated[str | None, typer.Option(envvar="DGALIGN_RATE_TOKEN", help="Require this token "
                                                     "(open the page with ?access=TOKEN).")] = None,
    invite: Annotated[str | None, typer.Option(help="Print a sign-in token for the rater NAME and exit; the name "
                                                    "then signs in by token only.")] = None,
) -> None:
    """Blind side-by-side rating of a bench run's answers in the browser (method names hidden, random order)."""
    from pathlib import Path

    run = Path(run_dir).expanduser()
    _check(1 <= port <= 65535, f"--port must be in 1..65535, got {port}")
    _check(host in LOOPBACK or bool(access_token), f"--host {host} is reachable by others: give --access-token "
                                                    "(or $DGALIGN_RATE_TOKEN)")
    dims = _dimensions(dimensions)
    import uvicorn

    from .rate.app import create_app
    from .rate.store import Store, resolve_pairs

    pairs = resolve_pairs(run, pair)
    store = Store(run)
    if invite is not None:
        token = store.invite(invite)
        typer.echo(f"token for {invite.strip()!r} (shown once; sign in with it on the rating page):\n{token}")
        return
    items = store.sync_items(pairs)
    _check(bool(items), f"no prompt in {run} has answers of both methods of {', '.join('/'.join(p) for p in pairs)}")
    server = create_app(store, items, dims, access_token=access_token)
    typer.echo(f"rating {len(items)} pairs ({len(pairs)} method pair(s), {', '.join(dims)}) on http://{host}:{port}/ "
               f"-> {store.path}", err=True)
    uvicorn.run(server, host=host, port=port, log_level="warning")


@app.command()
def judge(
    run_dir: Annotated[str, typer.Argument(help="A `dgalign bench --out` directory; verdicts go to its "
                                                "ratings.sqlite.")],
    pair: Annotated[str, typer.Option(help="Two method labels A,B to compare.")],
    judge_model: Annotated[str, typer.Option("--judge", help="Judge LM: built-in name, HF id or local path.")] = (
        DEFAULT_MODEL),
    dimensions: Annotated[str, typer.Option(help="Comma-separated dimensions, one verdict each.")] = DIMENSIONS,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="Judge weights' dtype: auto, float32, bfloat16, float16.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pairwise LM judge (MT-Bench prompt, both orders; a verdict that flips with the order is a tie)."""
    from pathlib import Path

    from .lm import DTYPES, load_lm
    from .rate.judge import judge_run, lm_judge
    from .rate.store import Store, resolve_pairs

    run = Path(run_dir).expanduser()
    dims = _dimensions(dimensions)
    _check(dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    pairs = resolve_pairs(run, pair)
    store = Store(run)
    items = store.sync_items(pairs)
    _check(bool(items), f"no prompt in {run} has answers of both {pair}")
    lm = load_lm(judge_model, dtype=dtype, device=device)
    rater = f"judge:{Path(judge_model).name if Path(judge_model).exists() else judge_model}"
    rows = judge_run(store, items, lm_judge(lm), rater, dims)
    columns = ["rater", "x", "y", "dimension", "items", "x_wins", "ties", "y_wins", "inconsistent"]
    _table([*([] if as_json else [dict(zip(columns, columns, strict=True))]), *({"rater": rater, **r} for r in rows)],
           columns, as_json)
    if not as_json:
        typer.echo(f"verdicts in {store.path}; next: dgalign report {run_dir}", err=True)


@app.command("judge-check")
def judge_check(
    judge_model: Annotated[str, typer.Option("--judge", help="Judge LM: built-in name, HF id or local path.")] = (
        DEFAULT_MODEL),
    dimensions: Annotated[str, typer.Option(help="Comma-separated dimensions; harmlessness is checked on HH-RLHF "
                                                 "pairs, any other on TruthfulQA's true vs false answers.")] = (
        "harmlessness,helpfulness"),
    pairs: Annotated[int, typer.Option(help="Labelled pairs per dimension.")] = 60,
    data_dir: Annotated[str | None, typer.Option(help="Benchmark data directory (sets $DGALIGN_DATA).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="Judge weights' dtype: auto, float32, bfloat16, float16.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Is the pairwise judge better than a coin? P(it prefers the labelled-better answer) on labelled pairs."""
    import os

    from .bench.suites import labelled_pairs
    from .lm import DTYPES, load_lm
    from .rate.judge import check, lm_judge

    dims = _dimensions(dimensions)
    _check(pairs >= 2, f"--pairs must be at least 2, got {pairs}")
    _check(dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if data_dir:
        os.environ["DGALIGN_DATA"] = data_dir
    labelled = {d: labelled_pairs(d, pairs) for d in dims}
    judge = lm_judge(load_lm(judge_model, dtype=dtype, device=device))
    rows = []
    for d, (items, source) in labelled.items():
        c = check(judge, items, d)
        p, a = c["preferred"], c["accuracy"]
        rows.append({"dimension": d, "pairs": c["pairs"], "preferred": f"{p['mean']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]",
                     "accuracy": f"{a['mean']:.2f}", "verdict": "coin (not evidence)" if c["chance"] else
                     ("better than chance" if p["mean"] > 0.5 else "worse than chance"), "source": source,
                     **({"check": c} if as_json else {})})
    columns = ["dimension", "pairs", "preferred", "accuracy", "verdict", "source"]
    _table([*([] if as_json else [dict(zip(columns, columns, strict=True))]), *rows], columns, as_json)


def _bare_ray(args: list[str]) -> list[str]:
    """`--ray` with no ADDRESS after it (last, or an option next) as `--ray local`: typer options always take a value."""
    bare = [i for i, a in enumerate(args) if a == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-"))]
    return [x for i, a in enumerate(args) for x in ((a, "local") if i in bare else (a,))]


# click's UsageError (bad options, arguments, values), in whichever click this typer runs on
_UsageError = typer.BadParameter.__base__


def main() -> None:
    """Entry point: bad input — a usage error click finds, or a library error — is one line on stderr, exit 2."""
    try:
        code = app(args=_bare_ray(sys.argv[1:]) or ["--help"], standalone_mode=False)
    except _UsageError as err:
        where = err.ctx.command_path if err.ctx else "dgalign"
        typer.echo(f"error: {' '.join(err.format_message().split())} (see `{where} --help`)", err=True)
        sys.exit(2)
    except DGAlignError as err:
        typer.echo(f"error: {str(err).replace(chr(10), ' ')}", err=True)  # one line, whatever the message
        sys.exit(2)
    sys.exit(code or 0)
