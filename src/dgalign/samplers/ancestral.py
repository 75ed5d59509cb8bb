"""Plain ancestral sampling from the base LM (temperature, top-k, top-p), seeded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..cost import Meter
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill, score
from .rollout import rollout


@dataclass
class BaseConfig(SamplerConfig):
    """Plain sampling: only the shared knobs (temperature, top_p, top_k, max_new_tokens)."""


@torch.no_grad()
def sample_base(
    lm: LM,
    reward: Reward | None,
    prompts: Prompts,
    cfg: BaseConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Ancestral sampling; the reward (if any) only scores the result."""
    meter = Meter(lm)
    state = prefill(lm, prompts, cfg.num_samples)
    out = rollout(lm, state, cfg, cfg.max_new_tokens, generator=generator, callback=callback)
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]
    texts = [lm.decode(t) for t in out.tokens]
    rewards = score(meter, reward, [prompts.texts[i] for i in index], texts)
    untruncated = cfg.temperature == 1.0 and cfg.top_p == 1.0 and cfg.top_k == 0  # then q is p_θ itself
    return pack(lm, meter, index, out.tokens, rewards, out.base_logprobs, texts,
                kl_to_base=0.0 if untruncated else None, kl_rows=torch.zeros(len(texts)) if untruncated else None)
