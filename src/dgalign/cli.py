"""The `dgalign` command line: thin wrappers over the library, imports made lazily.

Commands: generate · exact · models · rewards · methods.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .errors import DGAlignError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Decode-time alignment of language models to a reward (DGA and baselines).",
)


def _emit_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DGAlignError(message)


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    model: Annotated[str, typer.Option(help="Built-in name (`dgalign models`), HF id or local path.")] = (
        "smollm2-135m-instruct"
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer prompts with an aligned sampler and print rewards and cost."""
    from .config import apply_overrides, parse_sets
    from .lm import load_lm
    from .ops import make_generator
    from .rewards import get_reward
    from .samplers import get_sampler
    from .types import Prompts

    # everything checkable without the model is checked first
    _check(all(p.strip() for p in prompts), "empty prompt: every prompt must contain text")
    _check(max_new_tokens > 0, f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    _check(num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}")
    sampler, cfg = get_sampler(method)
    cfg = apply_overrides(cfg, {"max_new_tokens": str(max_new_tokens), "num_samples": str(num_samples),
                                "beta": str(beta), **parse_sets(set_ or [])})
    reward_fn = get_reward(reward)

    lm = load_lm(model, device=device, chat=False if raw else None)
    batch = Prompts.encode(lm, prompts, raw=raw)
    longest = max(len(ids) for ids in batch.ids)
    _check(
        longest + cfg.max_new_tokens <= lm.max_context,
        f"--max-new-tokens {cfg.max_new_tokens} plus the longest prompt ({longest} tokens) exceeds "
        f"{lm.name}'s context of {lm.max_context} tokens",
    )
    with _progress(cfg.max_new_tokens, disable=as_json) as bar:
        out = sampler(lm, reward_fn, batch, cfg, generator=make_generator(seed, lm.device),
                      callback=lambda info: bar.update(1))
    results = [
        {"prompt": prompts[i], "completion": text, "reward": float(r), "num_tokens": n}
        for i, text, r, n in zip(out.prompt_index, out.texts, out.rewards.tolist(), out.num_tokens, strict=True)
    ]
    if as_json:
        _emit_json({"model": lm.name, "method": method, "reward": reward, "beta": cfg.beta, "seed": seed,
                    "results": results, "cost": out.cost.as_dict()})
        return
    for row in results:
        typer.echo(f"\n> {row['prompt']}\n{row['completion'].strip()}")
        typer.echo(f"  [reward {reward}: {row['reward']:+.4f} · {row['num_tokens']} tokens]")
    c = out.cost
    typer.echo(
        f"\ncost ({method}): {c.wall_s:.2f} s wall · {c.tokens_per_s:.1f} tokens/s · "
        f"{c.lm_forward_tokens} LM forward tokens · {c.reward_calls} reward calls · peak RSS {c.peak_rss_mb:.0f} MB"
    )


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="decoding", unit="step", file=sys.stderr, leave=False, disable=disable or None)


def _table(rows: list[dict], columns: list[str], as_json: bool) -> None:
    if as_json:
        _emit_json(rows)
        return
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns[:-1]}
    for row in rows:
        typer.echo("  ".join(f"{str(row[c]):<{width[c]}}" for c in columns[:-1]) + f"  {row[columns[-1]]}")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in models (any HF model id or local path also works)."""
    from .lm import describe_models

    _table(describe_models(), ["name", "install", "description"], as_json)


@app.command()
def rewards(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in rewards with their ranges (specs combine them: 'toxicity:1,sentiment:0.5')."""
    from .rewards import describe_rewards

    _table(describe_rewards(), ["name", "range", "description"], as_json)


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


def main() -> None:
    """Entry point: usage errors exit 2 (click's own); library errors become one line on stderr, exit 2."""
    try:
        app()
    except DGAlignError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
