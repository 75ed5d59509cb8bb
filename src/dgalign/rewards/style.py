"""Style and persona rewards: formality (TextBlob objectivity) and closeness to a persona description."""

from __future__ import annotations

import torch

from dgalign.errors import DGAlignError


class Formality:
    """Objectivity 1 − subjectivity of the completion under TextBlob's pattern lexicon, range [0, 1].

    TextBlob averages the subjectivity of the adjectives (and intensified phrases) it knows:
    opinion words ("amazing", "awful", "I think it's lovely") push toward 1, plain factual
    statements with none of them score 0. So 1 is neutral, impersonal wording — the formal end —
    and a text with no rated words (also the empty text) counts as fully objective, 1.
    """

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        from textblob import TextBlob

        return torch.tensor([1.0 - TextBlob(c).sentiment.subjectivity for c in completions], dtype=torch.float32)


class Persona:
    """Cosine similarity of the completion's MiniLM embedding to the persona description's, range [-1, 1]."""

    def __init__(self, description: str):
        if not isinstance(description, str) or not description.strip():
            raise DGAlignError("persona needs a description: persona(description='a cheerful pirate')")
        self.description = description  # who the answers should sound like

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        from dgalign.rewards import minilm

        vectors = minilm.encode([self.description, *completions])  # (1 + B, 384), unit norm
        return (vectors[1:] @ vectors[0]).clamp(-1.0, 1.0)  # dot = cosine
