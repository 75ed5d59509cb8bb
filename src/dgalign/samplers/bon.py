"""Best-of-N: draw N completions from the base LM, keep the one the reward ranks highest.

KL(BoN ‖ p) ≤ log N − (N − 1)/N (Beirami et al. 2024); the N candidates share one prefill of
the prompt's KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..cost import Meter
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill, score
from .rollout import rollout


@dataclass
class BoNConfig(SamplerConfig):
    n: int = 4  # candidates per returned completion


@torch.no_grad()
def sample_bon(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: BoNConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Best-of-N with ties broken by the first candidate drawn."""
    meter = Meter(lm)
    groups = len(prompts) * cfg.num_samples  # one group of n candidates per returned completion
    state = prefill(lm, prompts, cfg.num_samples * cfg.n)
    out = rollout(lm, state, cfg, cfg.max_new_tokens, generator=generator, callback=callback)
    texts = [lm.decode(t) for t in out.tokens]
    prompt_of_row = [i for i in range(len(prompts)) for _ in range(cfg.num_samples * cfg.n)]
    rewards = score(meter, reward, [prompts.texts[i] for i in prompt_of_row], texts)
    best = rewards.view(groups, cfg.n).argmax(-1) + torch.arange(groups) * cfg.n  # (groups,) row ids
    keep = best.tolist()
    return pack(
        lm,
        meter,
        [prompt_of_row[r] for r in keep],
        [out.tokens[r] for r in keep],
        rewards[best],
        out.base_logprobs[best],
        [texts[r] for r in keep],
        extras={"kl_bound": math.log(cfg.n) - (cfg.n - 1) / cfg.n, "candidates": cfg.n},
    )
