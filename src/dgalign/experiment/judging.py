"""The pairwise LM judge of an experiment's runs: each method's answer against base's, per dimension, both orders.

The judge is `dgalign.rate.judge` (the MT-Bench pairwise prompt, the verdict read from log-probabilities,
a verdict that flips with the order counted as a tie). One JSONL line per (prompt, seed, method, dimension),
appended and fsynced, so a killed run resumes where it stopped. The method is x, base is y.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..eval.bench_config import BenchConfig
from ..eval.harness import read_rows, suite_label

BASE = "base"


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
    from ..rate.judge import judge_both_orders, lm_judge

    read_rows(path, repair=True)  # a torn last line (a kill mid-write) is cut before appending
    todo = pending(path, benches, dims)
    by = answers(benches)
    verdict = lm_judge(load_lm(model))
    with open(path, "a") as f:
        for i, s, m, d in tqdm(todo, desc=f"judging {path.parent.name}", unit="pair", disable=not progress or None):
            x, y = by[(i, s)][m], by[(i, s)][BASE]
            winner, x_first, y_first = judge_both_orders(verdict, x["prompt"], x["completion"], y["completion"], d)
            f.write(json.dumps({"prompt_index": i, "seed": s, "method": m, "dimension": d, "winner": winner,
                                "x_first": x_first, "y_first": y_first, "judge": model}) + "\n")
            f.flush()
            os.fsync(f.fileno())
