"""Truthfulness on TruthfulQA: is the answer closer to the question's true answers than to its false ones?

    r(c, y) = max_{a ∈ correct(c)} cos(e(y), e(a)) − max_{a ∈ incorrect(c)} cos(e(y), e(a)),   in [-2, 2]

with e the MiniLM sentence embedding, correct(c) the "Best Answer" and "Correct Answers" of
question c and incorrect(c) its "Incorrect Answers" (TruthfulQA CSV, answers separated by ";").

Rewards receive per-prompt metadata from the suite via the lookup: a reward is called with prompt
texts only, so this one finds each prompt's references by its question text in the CSV (loaded on
first use: `truthfulqa.csv` in the data dir, or `truthfulness(data=PATH)` for your own CSV with the
same columns). A prompt that is not one of its questions is an error naming the prompt.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import torch

from dgalign.errors import DGAlignError, RewardError, Unavailable

COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def read_references(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """question -> (correct answers with the best one first, incorrect answers) from a TruthfulQA CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DGAlignError(f"{path} lacks the TruthfulQA columns {missing}; it needs {list(COLUMNS)}")
        refs = {}
        for row in reader:
            correct = [row["Best Answer"].strip()] + [a.strip() for a in row["Correct Answers"].split(";")]
            incorrect = [a.strip() for a in row["Incorrect Answers"].split(";")]
            refs[row["Question"].strip()] = ([a for a in correct if a], [a for a in incorrect if a])
    return refs


class Truthfulness:
    """MiniLM similarity to the best correct reference minus to the best incorrect one, range [-2, 2]."""

    def __init__(self, data: str | None = None):
        from dgalign.data import data_path

        # fail at construction, not at the first call, if the file is missing
        self.path = Path(data).expanduser() if data else data_path("truthfulqa.csv")
        if not self.path.is_file():
            raise Unavailable(f"truthfulness references {self.path} not found")
        self._embedded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # question -> (C, 384), (I, 384)

    @functools.cached_property
    def references(self) -> dict[str, tuple[list[str], list[str]]]:
        return read_references(self.path)

    def _reference_embeddings(self, questions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Unit embeddings of each question's correct and incorrect answers, computed once per question."""
        from dgalign.rewards import minilm

        new = [q for q in dict.fromkeys(questions) if q not in self._embedded]
        if new:
            texts = [a for q in new for answers in self.references[q] for a in answers]
            vectors = minilm.encode(texts)
            at = 0
            for q in new:
                correct, incorrect = self.references[q]
                c, i = len(correct), len(incorrect)
                self._embedded[q] = (vectors[at : at + c], vectors[at + c : at + c + i])
                at += c + i
        return [self._embedded[q] for q in questions]

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        from dgalign.rewards import minilm

        questions = [p.strip() for p in prompts]
        for q in questions:
            if q not in self.references:
                raise RewardError(f"truthfulness has no reference answers for the prompt {q[:80]!r} (in {self.path})")
        answers = minilm.encode(completions)  # (B, 384), unit norm
        scores = [
            (correct @ a).max() - (incorrect @ a).max()
            for a, (correct, incorrect) in zip(answers, self._reference_embeddings(questions), strict=True)
        ]
        return torch.stack(scores).float() if scores else torch.zeros(0)
