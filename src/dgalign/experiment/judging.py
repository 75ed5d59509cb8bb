"""The pairwise LM judge of an experiment's runs: each method's answer against base's, per dimension, both orders.

The judge is `dgalign.rate.judge` (the MT-Bench pairwise prompt, one forward pass per order reading the
verdict tokens' probabilities; the debiased P(method preferred) and the MT-Bench verdict, a flip with the order
counted as a tie). One JSONL line per (prompt, seed, method, dimension), appended and fsynced, so a killed run
resumes where it stopped. The method is x, base is y.

Before its verdicts are read, the judge is checked (`check`, `judge_check.json`): on labelled pairs it never
sees elsewhere — for harmlessness the single-turn HH-RLHF harmless pairs of the held-out evaluation prompts
(chosen vs rejected), for any other dimension TruthfulQA training questions (a true vs a false reference
answer) — how often it prefers the labelled-better answer. A judge whose interval there holds ½ is a coin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..eval.bench_config import BenchConfig
from ..eval.harness import read_rows, suite_label

BASE = "base"
CHECK_PAIRS = 60  # labelled pairs per checked dimension
CHUNK = 4  # pairs per judge call (both orders: 8 prompts in one forward pass)


def answers(benches: list[tuple[BenchConfig, dict[str, str]]]) -> dict[tuple[int, int], dict[str, dict]]:
    """(prompt index, seed) -> table label -> row, over a run's bench directories (rows with errors left out)."""
    out: dict[tuple[int, int], dict[str, dict]] = {}
    for cfg, relabel in benches:
        for row in read_rows(Path(cfg.out) / f"{suite_label(cfg.suite)}.jsonl"):
            if not row.get("error") and row["method"] in relabel:
                out.setdefault((row["prompt_index"], row["seed"]), {})[relabel[row["method"]]] = row
    return out


def pending(path: Path, benches, dims) -> list[tuple[int, int, str, str]]:
    done = {(v["prompt_index"], v["seed"], v["method"], v["dimension"]) for v in read_rows(path)}
    return [(i, s, m, d) for (i, s), by in sorted(answers(benches).items()) if BASE in by
            for m in by if m != BASE for d in dims if (i, s, m, d) not in done]


def done(path: Path, benches, dims) -> bool:
    return not pending(path, benches, dims)


def judge(path: Path, benches, dims, model: str, progress: bool = True) -> None:
    from tqdm import tqdm

    from ..lm import load_lm
    from ..rate.judge import judge_pairs, lm_judge

    read_rows(path, repair=True)  # a torn last line (a kill mid-write) is cut before appending
    todo = pending(path, benches, dims)
    by = answers(benches)
    verdict = lm_judge(load_lm(model))
    with open(path, "a") as f, tqdm(total=len(todo), desc=f"judging {path.parent.name}", unit="pair",
                                    disable=not progress or None) as bar:
        for k in range(0, len(todo), CHUNK):
            chunk = todo[k : k + CHUNK]
            asks = [(by[(i, s)][m]["prompt"], by[(i, s)][m]["completion"], by[(i, s)][BASE]["completion"], d)
                    for i, s, m, d in chunk]
            for (i, s, m, d), res in zip(chunk, judge_pairs(verdict, asks), strict=True):
                f.write(json.dumps({"prompt_index": i, "seed": s, "method": m, "dimension": d, **res,
                                    "judge": model}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))


def check_done(path: Path) -> bool:
    return path.exists()


def check(path: Path, dims, model: str) -> None:
    """The judge's agreement with labels on each dimension, written atomically to `path` (judge_check.json)."""
    from ..bench.suites import labelled_pairs
    from ..eval.harness import write_atomic
    from ..lm import load_lm
    from ..rate.judge import check as check_judge
    from ..rate.judge import lm_judge

    verdict = lm_judge(load_lm(model))
    out = {}
    for d in dims:
        pairs, source = labelled_pairs(d, CHECK_PAIRS)
        out[d] = {**check_judge(verdict, pairs, d), "source": source, "judge": model}
    write_atomic(path, json.dumps(out, indent=1) + "\n")
