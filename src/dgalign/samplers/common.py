"""Pieces every sampler shares: prefilling a prompt once for many rows, and packing `Samples`."""

from __future__ import annotations

import torch

from ..cost import Meter
from ..types import LM, DecodeState, Prompts, Reward, Samples


def prefill(lm: LM, prompts: Prompts, copies: int) -> DecodeState:
    """Prefill each prompt once and repeat its KV cache `copies` times: rows are prompt-major."""
    state = lm.start(prompts.ids)
    return lm.select(state, torch.arange(len(prompts)).repeat_interleave(copies))


def score(meter: Meter, reward: Reward | None, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """Reward of each completion (NaN everywhere when the sampler was given no reward)."""
    if reward is None:
        return torch.full((len(texts),), float("nan"))
    return meter.score(reward, prompts, texts)


def pack(
    lm: LM,
    meter: Meter,
    prompt_index: list[int],
    tokens: list[list[int]],
    rewards: torch.Tensor,
    base_logprobs: torch.Tensor,
    texts: list[str] | None = None,
    **extra,
) -> Samples:
    """Build `Samples`, closing the meter (cost counts every token returned)."""
    texts = texts if texts is not None else [lm.decode(t) for t in tokens]
    cost = meter.finish(generated_tokens=sum(len(t) for t in tokens))
    return Samples(prompt_index, texts, tokens, rewards, base_logprobs, cost=cost, **extra)
