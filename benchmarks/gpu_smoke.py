"""GPU smoke test: every method on the embedded model in bfloat16, one batch of 32 prompts each.

Prints, per method, generated tokens/s and the peak GPU memory of its call (torch.cuda.max_memory_allocated,
reset before each method), and fails (exit 1) on the first method that raises. Run it through
`benchmarks/gpu_smoke.sh` on a machine with a GPU; `--device cpu --batch 2` exercises the same code here.

    python benchmarks/gpu_smoke.py [--device cuda] [--dtype bfloat16] [--batch 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from dgalign.cost import prepare, timed
from dgalign.lm import load_lm
from dgalign.ops import make_generator
from dgalign.rewards import get_reward
from dgalign.samplers import SAMPLERS, get_sampler
from dgalign.types import Prompts

OPENINGS = ["The best way to spend a rainy afternoon is", "My neighbour keeps parking in front of my house, so",
            "Here is a short story about a lighthouse keeper:", "The most underrated invention of the last century is",
            "When I first learned to cook, I", "Honestly, the people who run this city are"]
# every method at its defaults (the value-reading peers of DGA with the shipped checkpoint, which they need), DGA
# with it as well, and SMC with its value head as twist and twisted proposal
NEEDS_CHECKPOINT = ("vgd", "cd-block")
CASES = [(name, {"checkpoint": "toxicity"} if name in NEEDS_CHECKPOINT else {}) for name in SAMPLERS] + [
    ("dga", {"checkpoint": "toxicity"}),
    ("dga", {"checkpoint": "toxicity", "particles": 4}),
    ("smc", {"twist": "learned", "checkpoint": "toxicity", "proposal": "twisted"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this smoke test is for a GPU machine (--device cpu --batch 2 to dry-run)")
    lm, load_s = timed(load_lm, "smollm2-135m-instruct", dtype=args.dtype, device=args.device, chat=False)
    reward = get_reward("toxicity")
    prompts = Prompts.encode(lm, [OPENINGS[i % len(OPENINGS)] for i in range(args.batch)], raw=True)
    setup = prepare(lm, reward, prompts=prompts, load_s=load_s)
    print(f"model {lm.name} · {lm.model.dtype} on {lm.device} · batch {args.batch} · {args.max_new_tokens} tokens · "
          f"setup {setup}", file=sys.stderr)
    rows = []
    for name, sets in CASES:
        sampler, cfg = get_sampler(name)
        cfg = dataclasses.replace(cfg, max_new_tokens=args.max_new_tokens, **sets)
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
            torch.cuda.reset_peak_memory_stats(lm.device)
        started = time.perf_counter()
        out = sampler(lm, reward, prompts, cfg, generator=make_generator(0, lm.device))
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        wall = time.perf_counter() - started
        label = name + "".join(f":{k}={v}" for k, v in sets.items())
        rows.append({"method": label, "tokens_per_s": round(out.cost.generated_tokens / wall, 1),
                     "wall_s": round(wall, 2), "peak_memory_mb": round(out.cost.peak_memory_mb, 1),
                     "memory": out.cost.memory, "mean_reward": round(float(out.rewards.mean()), 4)})
        print(f"{label:<34} {rows[-1]['tokens_per_s']:>9.1f} tok/s  {rows[-1]['peak_memory_mb']:>9.1f} MB "
              f"({out.cost.memory})  reward {rows[-1]['mean_reward']:+.3f}", flush=True)
    if args.json:
        print(json.dumps({"device": str(lm.device), "dtype": str(lm.model.dtype), "batch": args.batch, "rows": rows}))


if __name__ == "__main__":
    main()
