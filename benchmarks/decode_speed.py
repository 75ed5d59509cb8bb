"""Our KV-cache decoding loop vs `model.generate` on the embedded model, and load time from the cache.

Both sample from the untruncated model (temperature 1, no top-k/top-p) for exactly N new tokens
(EOS ignored: `min_new_tokens` for generate, no EOS ids for ours), runs interleaved, median of R.

    python benchmarks/decode_speed.py [--model smollm2-135m-instruct] [--batches 1,8] [--tokens 64]
                                      [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from dgalign.lm import load_lm
from dgalign.samplers.ancestral import BaseConfig, sample_base
from dgalign.types import Prompts

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def time_ours(lm, prompts: Prompts, tokens: int, seed: int) -> float:
    start = time.perf_counter()
    out = sample_base(lm, None, prompts, BaseConfig(max_new_tokens=tokens), generator=torch.Generator().manual_seed(seed))
    assert all(len(t) == tokens for t in out.token_ids)
    return time.perf_counter() - start


def time_generate(lm, prompts: Prompts, tokens: int, seed: int) -> float:
    ids = torch.tensor(prompts.ids)  # one prompt repeated: no padding needed
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = lm.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=lm.pad_token_id,
        )
    assert out.shape[1] == ids.shape[1] + tokens
    return time.perf_counter() - start


def load_seconds(model: str, repeats: int) -> list[float]:
    """Wall seconds of `load_lm` from the safetensors cache, in a fresh process each time (imports excluded)."""
    code = (
        "import time, dgalign.lm as m, transformers;"
        f"t = time.perf_counter(); m.load_lm({model!r}, device='cpu'); print(time.perf_counter() - t)"
    )
    return [float(subprocess.check_output([sys.executable, "-c", code], stderr=subprocess.DEVNULL)) for _ in range(repeats)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    lm = load_lm(args.model, device="cpu")  # converts the GGUF once if the cache is empty
    lm.eos_token_ids = []  # run every row the full length, as min_new_tokens does for generate
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = Prompts.encode(lm, [PROMPT] * batch)
        time_ours(lm, prompts, 4, 0), time_generate(lm, prompts, 4, 0)  # warm-up
        ours, ref = [], []
        for rep in range(args.repeats):  # interleaved, order alternating, so machine noise hits both alike
            if rep % 2:
                ref.append(time_generate(lm, prompts, args.tokens, rep))
            ours.append(time_ours(lm, prompts, args.tokens, rep))
            if not rep % 2:
                ref.append(time_generate(lm, prompts, args.tokens, rep))
        med_ours, med_ref = statistics.median(ours), statistics.median(ref)
        rows.append({
            "batch": batch,
            "tokens": args.tokens,
            "ours_s": round(med_ours, 3),
            "generate_s": round(med_ref, 3),
            "ratio": round(med_ours / med_ref, 3),
            "ours_tokens_per_s": round(batch * args.tokens / med_ours, 1),
            "generate_tokens_per_s": round(batch * args.tokens / med_ref, 1),
        })
    loads = load_seconds(args.model, 3)
    result = {"model": args.model, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "decode": rows, "load_s_median": round(statistics.median(loads), 2)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model}: median of {args.repeats}, {args.tokens} new tokens, {torch.get_num_threads()} threads")
    for r in rows:
        print(f"  batch {r['batch']}: ours {r['ours_s']:.2f} s ({r['ours_tokens_per_s']} tok/s) · generate "
              f"{r['generate_s']:.2f} s ({r['generate_tokens_per_s']} tok/s) · ratio {r['ratio']:.3f} (<= 1.05 required)")
    print(f"  load from safetensors cache: {result['load_s_median']:.2f} s median of 3 (< 5 s required)")


if __name__ == "__main__":
    main()
