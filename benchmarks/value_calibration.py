"""Held-out calibration of a DGA checkpoint's value head against Monte-Carlo soft values, by prefix length.

    python benchmarks/value_calibration.py --checkpoint runs/soft-rtp --suite rtp-toxic --reward toxicity \
        --rows 400:424 [--lengths 1,8,16,24] [--rollouts 8] [--beta 4] [--json]

For each prompt (rows the head never trained on) and prefix length L: draw a base prefix of L tokens,
take the two likeliest next tokens v₁, v₂, and from each prefix ⊕ v roll out `--rollouts` base
continuations to the full length; the Monte-Carlo soft value is (1/β)·log mean exp(β r). The head
predicts the same quantity, r̂(e_v, 0, h_prefix) in reward units. Reported per L: the mean of each
(calibration in level), their correlation across prompts and the mean absolute error, and — what a
twist's softmax actually reads — the correlation and slope of the *difference* v₁ − v₂ (predicted
against Monte Carlo; a slope below 1 is a head that under-tilts, above 1 one that over-tilts).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch

from dgalign.bench import get_suite
from dgalign.lm import load_lm
from dgalign.rewards import get_reward
from dgalign.samplers.ancestral import BaseConfig
from dgalign.samplers.dga.twist import build_twist
from dgalign.samplers.rollout import rollout
from dgalign.types import Prompts


def corr(a: list[float], b: list[float]) -> float:
    if len(a) < 3 or statistics.pstdev(a) == 0 or statistics.pstdev(b) == 0:
        return math.nan
    return statistics.correlation(a, b)


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y (predicted) on x (Monte Carlo)."""
    if len(x) < 3 or statistics.pvariance(x) == 0:
        return math.nan
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--suite", default="rtp-toxic")
    ap.add_argument("--reward", default="toxicity")
    ap.add_argument("--rows", default="400:424", help="START:STOP rows of the suite (never trained on)")
    ap.add_argument("--lengths", default="1,8,16,24")
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.rows.split(":"))
    lm = load_lm(args.model)
    suite = get_suite(args.suite)
    texts = [r["prompt"] for r in suite.load()[lo:hi]]
    prompts = Prompts.encode(lm, texts, raw=suite.raw)
    reward = get_reward(args.reward)
    twist = build_twist("learned", lm, reward, prompts, beta=args.beta, max_new_tokens=args.max_new_tokens,
                        checkpoint=args.checkpoint)
    gen = torch.Generator().manual_seed(args.seed)
    eos = set(lm.eos_token_ids)
    out = {"checkpoint": args.checkpoint, "rows": [lo, hi], "beta": args.beta, "rollouts": args.rollouts, "by_length": []}
    for length in (int(x) for x in args.lengths.split(",")):
        pre = rollout(lm, lm.start(prompts.ids), BaseConfig(), length, generator=gen)
        pred, mc, dpred, dmc = [], [], [], []
        for i, prefix in enumerate(pre.tokens):
            if any(t in eos for t in prefix):
                continue  # the answer already ended: no value to estimate
            state = lm.start([prompts.ids[i] + prefix])
            top = state.logits[0].topk(2).indices[None]  # (1, 2)
            psi = twist([i], [prefix], state.hidden, top)[0] / args.beta  # (2,) predicted soft value, reward units
            soft = []
            for v in top[0].tolist():
                ids = prompts.ids[i] + prefix + [v]
                rest = rollout(lm, lm.start([ids] * args.rollouts), BaseConfig(),
                               args.max_new_tokens - length - 1, generator=gen)
                answers = [lm.decode(prefix + [v] + t) for t in rest.tokens]
                r = reward([texts[i]] * len(answers), answers).double()
                soft.append(float((torch.logsumexp(args.beta * r, 0) - math.log(len(r))) / args.beta))
            pred.append(float(psi[0]))
            mc.append(soft[0])
            dpred.append(float(psi[0] - psi[1]))
            dmc.append(soft[0] - soft[1])
        out["by_length"].append({
            "length": length, "prefixes": len(pred), "pred_mean": statistics.fmean(pred), "mc_mean": statistics.fmean(mc),
            "corr": corr(mc, pred), "mae": statistics.fmean(abs(a - b) for a, b in zip(pred, mc, strict=True)),
            "diff_corr": corr(dmc, dpred), "diff_slope": slope(dmc, dpred),
            "diff_sd_pred": statistics.pstdev(dpred), "diff_sd_mc": statistics.pstdev(dmc)})
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.checkpoint}: {args.suite} rows {lo}..{hi - 1}, β = {args.beta}, {args.rollouts} rollouts per (prefix, v)")
    print("  L  n   pred mean  MC mean   corr   MAE    Δ corr  Δ slope  sd(Δ pred)  sd(Δ MC)")
    for r in out["by_length"]:
        print(f"{r['length']:3d} {r['prefixes']:3d}  {r['pred_mean']:+.3f}   {r['mc_mean']:+.3f}   {r['corr']:+.2f}  "
              f"{r['mae']:.3f}   {r['diff_corr']:+.2f}   {r['diff_slope']:+.2f}    {r['diff_sd_pred']:.3f}      "
              f"{r['diff_sd_mc']:.3f}")


if __name__ == "__main__":
    main()
