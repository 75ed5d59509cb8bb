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
from ..types import LM, Prompts, Reward, Samples
from .common import PoolConfig, draw_pool, pack_rows


@dataclass
class BoNConfig(PoolConfig):
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
    pool = draw_pool(lm, reward, prompts, cfg, cfg.n, meter, generator=generator, callback=callback)
    best = pool.rewards.view(groups, cfg.n).argmax(-1) + torch.arange(groups, device="cpu") * cfg.n  # (groups,) rows
    return pack_rows(lm, meter, pool, best, kl_bound=bon_kl_bound(cfg.n), extras={"candidates": cfg.n})


def bon_kl_bound(n: int) -> float:
    """KL(best-of-n ‖ p_θ) ≤ log n − (n − 1)/n (Beirami et al. 2024, Theorem 1)."""
    return math.log(n) - (n - 1) / n
