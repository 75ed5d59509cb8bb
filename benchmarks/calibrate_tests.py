"""Rerun every exactness claim of the test suite over many seeds and print its worst margin.

    python benchmarks/calibrate_tests.py [--seeds 20] [--offset 0] [--slow] [--claims a,b] [--json]

A claim (`dgalign.eval.claims`) holds when TV ≤ tv_tol + bias, with tv_tol the (1 − 10⁻³)-quantile
of a correct sampler's TV. Over 20 seeds a correct claim should never fail (P ≈ 2 %); the table
shows the worst margin (tolerance − observed; ≥ 0 passes), the mean of TV − E[TV] (an estimate
of the sampler's bias, to compare with its allowance) and, where log Ẑ is claimed, its worst margin.
Seeds are `offset + i`, so `--offset 1000` reproduces `make test-seeds`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from tqdm import tqdm

from dgalign.eval.claims import CLAIMS, CLAIMS_BY_NAME, KL_CLAIMS, check, check_kl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--slow", action="store_true", help="also the slow-marked acceptance-size claims")
    ap.add_argument("--claims", default="", help="comma-separated claim names (default: all)")
    ap.add_argument("--bias", type=int, default=0, metavar="SAMPLES",
                    help="instead: run each claim once at SAMPLES samples (same draws per group) and print its TV, "
                         "an upper estimate of the bias the allowance must cover")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.claims:
        unknown = [n for n in args.claims.split(",") if n not in CLAIMS_BY_NAME]
        if unknown:
            sys.exit(f"error: unknown claim {unknown[0]!r}; valid: {', '.join(CLAIMS_BY_NAME)}")
        claims = [CLAIMS_BY_NAME[n] for n in args.claims.split(",")]
    else:
        claims = [c for c in CLAIMS if args.slow or not c.slow]
    if args.bias:
        return bias_table(claims, args.bias, args.offset)
    rows = []
    for claim in tqdm(claims, desc="claims", file=sys.stderr):
        started = time.perf_counter()
        runs = [check(claim, args.offset + i) for i in range(args.seeds)]
        tv_m = [r["tv_margin"] for r in runs]
        row = {
            "claim": claim.name, "seeds": args.seeds, "samples": claim.samples, "groups": claim.groups,
            "tv_tol": round(sum(r["tv_tol"] for r in runs) / len(runs), 4), "bias_allowance": claim.bias,
            "worst_tv_margin": min(tv_m), "failures": sum(m < 0 for m in tv_m),
            "mean_tv_minus_floor": round(sum(r["tv"] - r["tv_floor"] for r in runs) / len(runs), 4),
            "worst_log_z_margin": min(r["log_z_margin"] for r in runs) if claim.log_z_bias is not None else None,
            "log_z_failures": sum(r["log_z_margin"] < 0 for r in runs) if claim.log_z_bias is not None else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        tqdm.write(json.dumps(row), file=sys.stderr)
    kl_rows = []
    for claim in [] if args.claims else KL_CLAIMS:
        runs = [check_kl(claim, args.offset + i) for i in range(args.seeds)]
        kl_rows.append({"claim": claim.name, "seeds": args.seeds, "exact_kl": runs[0]["exact_kl"],
                        "mean_estimate": round(sum(r["kl"] for r in runs) / len(runs), 4), "bias_allowance": claim.bias,
                        "worst_kl_margin": min(r["kl_margin"] for r in runs),
                        "failures": sum(r["kl_margin"] < 0 for r in runs)})
        tqdm.write(json.dumps(kl_rows[-1]), file=sys.stderr)
    if args.json:
        print(json.dumps({"tv": rows, "kl": kl_rows}, indent=2))
        return
    head = ("claim", "samples", "groups", "tv_tol", "bias_allowance", "mean_tv_minus_floor", "worst_tv_margin",
            "failures", "worst_log_z_margin", "log_z_failures", "seconds")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join("–" if row[k] is None else str(row[k]) for k in head) + " |")
    if kl_rows:
        print("\n| KL claim | exact KL | mean estimate | bias allowance | worst margin | failures |\n|---|---|---|---|---|---|")
        for r in kl_rows:
            print(f"| {r['claim']} | {r['exact_kl']} | {r['mean_estimate']} | {r['bias_allowance']} | "
                  f"{r['worst_kl_margin']} | {r['failures']} |")
    print(f"\n{args.seeds} seeds from {args.offset}; worst margin over all claims: "
          f"{min(r['worst_tv_margin'] for r in rows)} (TV), "
          f"{min((r['worst_log_z_margin'] for r in rows if r['worst_log_z_margin'] is not None), default=None)} (log Z)")


def bias_table(claims, samples: int, seed: int) -> None:
    """TV at a large sample size: bias + a noise floor that shrinks as 1/√samples."""
    print("| claim | samples | TV | E[TV] of a correct sampler | allowance |\n|---|---|---|---|---|")
    for claim in claims:
        per_group = claim.samples // claim.groups
        big = dataclasses.replace(claim, samples=samples, groups=max(1, samples // per_group) if claim.groups > 1 else 1)
        res = check(big, seed)
        print(f"| {claim.name} | {res['samples']} | {res['tv']} | {res['tv_floor']} | {claim.bias} |", flush=True)


if __name__ == "__main__":
    main()
