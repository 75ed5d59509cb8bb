"""Toxicity reward from alt-profanity-check: -P(offensive), range [-1, 0]."""

import functools

import torch


@functools.cache
def _predict_prob():
    # importing profanity_check unpickles its TF-IDF + linear SVM (about a second), so do it once, on first use
    from profanity_check import predict_prob

    return predict_prob


class Toxicity:
    """-P(offensive) of each completion under alt-profanity-check's linear SVM, range [-1, 0]."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        p_offensive = _predict_prob()(completions)  # (B,) float64
        return -torch.as_tensor(p_offensive, dtype=torch.float32)
