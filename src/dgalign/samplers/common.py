"""Pieces every sampler shares: prefilling a prompt once for many rows, and packing `Samples`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_counts
from ..cost import Meter
from ..types import LM, DecodeState, Prompts, Reward, SamplerConfig, Samples
from .rollout import Rollout, rollout


def prefill(lm: LM, prompts: Prompts, copies: int) -> DecodeState:
    """Prefill each prompt once and repeat its KV cache `copies` times: rows are prompt-major."""
    state = lm.start(prompts.ids)
    return lm.select(state, torch.arange(len(prompts), device=state.logits.device).repeat_interleave(copies))


def score(meter: Meter, reward: Reward | None, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """Reward of each completion (NaN everywhere when the sampler was given no reward)."""
    if reward is None:
        return torch.full((len(texts),), float("nan"), device="cpu")
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


@dataclass
class PoolConfig(SamplerConfig):
    """Methods that choose among n base candidates per returned completion (best-of-N, soft best-of-N)."""

    n: int = 4  # candidates per returned completion

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "n")


@dataclass
class Pool:
    """n base completions per returned answer, prompt-major, decoded and scored."""

    rollout: Rollout
    texts: list[str]
    prompt_of_row: list[int]
    rewards: torch.Tensor  # (rows,)


def draw_pool(lm: LM, reward: Reward, prompts: Prompts, cfg: SamplerConfig, n: int, meter: Meter, *,
              generator: torch.Generator | None, callback) -> Pool:
    """One prefill per prompt, `num_samples × n` rollouts from it, each scored by the reward."""
    state = prefill(lm, prompts, cfg.num_samples * n)
    out = rollout(lm, state, cfg, cfg.max_new_tokens, generator=generator, callback=callback)
    texts = [lm.decode(t) for t in out.tokens]
    prompt_of_row = [i for i in range(len(prompts)) for _ in range(cfg.num_samples * n)]
    rewards = score(meter, reward, [prompts.texts[i] for i in prompt_of_row], texts)
    return Pool(out, texts, prompt_of_row, rewards)


def pack_rows(lm: LM, meter: Meter, pool: Pool, rows: torch.Tensor, **extra) -> Samples:
    """`Samples` of the chosen pool rows (B,)."""
    keep = rows.tolist()
    return pack(lm, meter, [pool.prompt_of_row[r] for r in keep], [pool.rollout.tokens[r] for r in keep],
                pool.rewards[rows], pool.rollout.base_logprobs[rows], [pool.texts[r] for r in keep], **extra)
