"""Per-term standardisation: z(c, y) = (r(c, y) − μ) / σ with μ, σ of r on a calibration set.

Rewards live on different scales (toxicity in [-1, 0], a reward model's logits unbounded), so a
weighted sum of raw terms is dominated by whichever spreads most. The spec option
`standardize=true` (e.g. "toxicity(standardize=true):1,harmless(standardize=true):1") puts each
term on a unit scale first: μ and σ (population std) are the term's mean and spread on
`CALIBRATION_SIZE` built-in answers, or on `standardize=FILE` (JSONL of {"prompt", "completion"}).

The built-in calibration set comes from the data dir, chosen by fixed rule: TruthfulQA questions
each with an answer — 30 best answers, 30 incorrect ones, and 40 HH-RLHF assistant answers
(chosen and rejected alternately, cut to 60 words; off-topic for their question, which widens
the spread the way a weak sampler's answers do). Every prompt is a TruthfulQA question, so
`truthfulness` can be standardised too.

μ, σ are computed once and cached under <dgalign cache dir>/calibration, keyed by the term, the
calibration set and the term's scores on its first rows (a retrained reward model gets new
statistics). A term that is constant on the calibration set cannot be standardised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from dgalign.errors import DGAlignError
from dgalign.types import Reward

CALIBRATION_SIZE = 100  # built-in calibration answers
_PROBE = 4  # rows scored to fingerprint the reward in the cache key


def builtin_calibration() -> tuple[list[str], list[str]]:
    """(prompts, completions) of the built-in calibration set (see the module docstring)."""
    from dgalign.data import data_path
    from dgalign.rewards.learned import read_pairs
    from dgalign.rewards.truthfulness import read_references

    refs = list(read_references(data_path("truthfulqa.csv")).items())
    questions = [q for q, _ in refs[:: len(refs) // CALIBRATION_SIZE]][:CALIBRATION_SIZE]  # (100,) spread out
    completions = []
    for k, q in enumerate(questions[:60]):  # 30 true, 30 false
        correct, incorrect = dict(refs)[q]
        completions.append(correct[0] if k % 2 == 0 else incorrect[0])
    hh = read_pairs(data_path("hh_harmless.jsonl.gz"))
    step = len(hh) // 40
    for k in range(40):
        answer = hh.chosen[k * step] if k % 2 == 0 else hh.rejected[k * step]
        completions.append(" ".join(answer.split()[:60]))
    return questions, completions


def read_calibration(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, completions) of a JSONL file of {"prompt", "completion"}."""
    prompts, completions = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                        and isinstance(row.get("completion"), str)):
                    raise DGAlignError(f'{path}:{line_no}: expected {{"prompt": str, "completion": str}}')
                prompts.append(row["prompt"])
                completions.append(row["completion"])
    if len(prompts) < 2:
        raise DGAlignError(f"calibration file {path} needs at least 2 rows, has {len(prompts)}")
    return prompts, completions


def calibration_stats(reward: Reward, name: str, prompts: list[str], completions: list[str]) -> tuple[float, float]:
    """(μ, σ) of `reward` on the calibration rows, from the cache or computed and cached."""
    from dgalign.lm.embedded import cache_dir

    probe = reward(prompts[:_PROBE], completions[:_PROBE]).tolist()
    digest = hashlib.sha256(json.dumps([name, prompts, completions, [round(x, 5) for x in probe]]).encode())
    path = cache_dir() / "calibration" / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        stats = json.loads(path.read_text())
        return stats["mean"], stats["std"]
    scores = reward(prompts, completions).double()
    mean, std = scores.mean().item(), scores.std(correction=0).item()
    if not std > 1e-8:
        raise DGAlignError(f"cannot standardize {name!r}: it is constant ({mean:.4g}) on the calibration set")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"term": name, "mean": mean, "std": std, "n": len(prompts)}, f)
    os.replace(tmp, path)
    return mean, std


class Standardized:
    """(r − μ) / σ for a reward r, with μ, σ from a calibration set, computed on the first call."""

    def __init__(self, reward: Reward, name: str, calibration: Path | None = None):
        self.reward = reward
        self.name = name  # the term without its weight and standardize option: the cache key
        self.calibration = calibration  # JSONL of {"prompt", "completion"}; None: the built-in set
        if calibration is not None and not calibration.is_file():
            raise DGAlignError(f"calibration file {calibration} not found")
        self.stats: tuple[float, float] | None = None  # (μ, σ) once computed

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        if self.stats is None:
            rows = builtin_calibration() if self.calibration is None else read_calibration(self.calibration)
            self.stats = calibration_stats(self.reward, self.name, *rows)
        mean, std = self.stats
        return (self.reward(prompts, completions) - mean) / std
