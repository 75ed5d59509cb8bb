"""Sentiment reward: the VADER compound score of the completion, range [-1, 1]."""

import functools

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads the VADER lexicon once


class VaderSentiment:
    """VADER compound sentiment of each completion (Hutto & Gilbert 2014), range [-1, 1]."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        analyzer = _analyzer()
        return torch.tensor(
            [analyzer.polarity_scores(c)["compound"] for c in completions], dtype=torch.float32
        )
