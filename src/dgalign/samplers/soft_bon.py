"""Soft best-of-N: draw N completions, return one with probability ∝ exp(β·r) (Verdun et al. 2025).

It is sampling-importance-resampling with the base as proposal, so its law converges to
p_r ∝ p_θ·exp(β r) as N grows (at rate O(1/N)); hard best-of-N is its β → ∞ limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..cost import Meter
from ..smc_math import ess, log_mean_exp, pick_rows
from ..types import LM, Prompts, Reward, Samples
from .common import PoolConfig, draw_pool, pack_rows


@dataclass
class SoftBoNConfig(PoolConfig):
    n: int = 8  # candidates per returned completion


@torch.no_grad()
def sample_soft_bon(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: SoftBoNConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Soft best-of-N; with a tempered or truncated proposal q the weights carry log p_θ − log q."""
    meter = Meter(lm)
    groups = len(prompts) * cfg.num_samples  # one group of n candidates per returned completion
    pool = draw_pool(lm, reward, prompts, cfg, cfg.n, meter, generator=generator, callback=callback)
    # 1. importance weight of each candidate for p_r: w = p_θ·exp(β r) / q
    log_w = (cfg.beta * pool.rewards + pool.rollout.base_logprobs - pool.rollout.proposal_logprobs).view(groups, cfg.n)
    # 2. one draw per group from the normalised weights
    pick = pick_rows(log_w, generator)  # (groups,) row ids
    # 3. Ẑ = mean weight is unbiased for Z = E_p[exp(β r)]; pool every candidate of a prompt
    per_prompt = log_w.view(len(prompts), cfg.num_samples * cfg.n)
    return pack_rows(lm, meter, pool, pick, ess=float(ess(log_w).mean()), log_z=log_mean_exp(per_prompt),
                     extras={"candidates": cfg.n, "run_log_z": log_mean_exp(log_w)})  # (groups,) Ẑ of each group
