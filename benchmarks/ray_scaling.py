"""Rows per second of `dgalign bench` locally and on Ray (1 and N workers), and the per-row cost Ray adds.

Two workloads: the toy LM (a row is ~1 ms of work) and a real model (SmolLM2-135M, plain sampling:
a row is real compute, so the ratio is the scaling). Only the rows are timed: each runner loads its
model and warms up first (`setup`), then the same grid runs through `harness.run_rows`, here
(`LocalRows`, with torch's default threads and with one) or on actors of 1 CPU each (`RayRows`,
where Ray sets one thread). A row's time on one Ray worker minus its time locally on one thread is
what Ray adds per row: the call to the actor and the row back to the driver. Nothing is written:
the grid is consumed, not saved.

    python benchmarks/ray_scaling.py [--workers 1,2] [--toy-rows 300] [--rows 24] [--tokens 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import closing
from pathlib import Path

import torch

from dgalign.cluster import RayOptions, connect
from dgalign.eval.harness import BenchConfig, LocalRows, calls, plan_bench
from dgalign.eval.ray_bench import ray_rows

PROMPTS = ["Tell me about the sea.", "What is a good breakfast?", "Describe your favourite city.",
           "How do plants grow?", "Write a line about autumn.", "Why is the sky blue?"]


def rows_per_second(cfg: BenchConfig, runner) -> tuple[int, float]:
    """(rows, seconds) of the whole grid on `runner`, setup excluded."""
    plan = plan_bench(cfg)
    with closing(runner(plan)) as rows:
        rows.setup()
        grid = calls([(i, m, s) for i in range(len(plan.prompts)) for m in plan.methods for s in plan.cfg.seeds],
                     plan.cfg.batch)
        start = time.perf_counter()
        n = sum(1 for row in rows.run(grid) if not row.get("error"))
        return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    ap.add_argument("--toy-rows", type=int, default=300, help="rows of the toy workload")
    ap.add_argument("--rows", type=int, default=24, help="rows of the real-model workload (0: skip it)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per real-model row")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    prompts = tmp / "prompts.txt"
    toy_prompts = tmp / "toy.txt"
    prompts.write_text("\n".join(PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(max(args.rows, 1))) + "\n")
    toy_prompts.write_text("\n".join(["ab", "ba", "c", "abc", "cab", "b"][i % 6] for i in range(args.toy_rows)) + "\n")
    workloads = {
        "toy": BenchConfig(suite=str(toy_prompts), out=str(tmp / "out"), methods=["base"], n_prompts=args.toy_rows,
                           max_new_tokens=3, model="toy", reward="dgalign.eval.exact:toy_reward", ppl_model=""),
    }
    if args.rows:
        workloads[args.model] = BenchConfig(suite=str(prompts), out=str(tmp / "out"), methods=["base"],
                                            n_prompts=args.rows, max_new_tokens=args.tokens, model=args.model,
                                            reward="length", ppl_model="", raw=True, device="cpu")
    connect(RayOptions(address="local", workers=max(counts)))  # started once, outside the timings
    results = []
    for name, cfg in workloads.items():
        n, seconds = rows_per_second(cfg, LocalRows)
        local = {"workload": name, "runner": "local", "rows": n, "seconds": round(seconds, 3),
                 "rows_per_s": round(n / seconds, 2), "threads": torch.get_num_threads()}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        n, one = rows_per_second(cfg, LocalRows)
        torch.set_num_threads(threads)
        results += [local, {"workload": name, "runner": "local 1t", "rows": n, "seconds": round(one, 3),
                            "rows_per_s": round(n / one, 2), "vs_local": round(seconds / one, 2), "threads": 1}]
        for w in counts:
            n, seconds = rows_per_second(cfg, ray_rows(RayOptions(address="local", workers=w)))
            results.append({"workload": name, "runner": f"ray x{w}", "rows": n, "seconds": round(seconds, 3),
                            "rows_per_s": round(n / seconds, 2),
                            "vs_local": round(n / seconds / local["rows_per_s"], 2),
                            "added_ms_per_row": round(1000 * (seconds - one) / n, 2) if w == 1 else None})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'workload':<24}{'runner':<10}{'rows':>6}{'s':>9}{'rows/s':>9}{'× local':>9}{'+ms/row vs 1 thread':>21}")
    for r in results:
        added = r.get("added_ms_per_row")
        print(f"{r['workload']:<24}{r['runner']:<10}{r['rows']:>6}{r['seconds']:>9.2f}{r['rows_per_s']:>9.2f}"
              f"{r.get('vs_local', 1.0):>9.2f}{'' if added is None else f'{added:.2f}':>21}")


if __name__ == "__main__":
    main()
