"""Compute accounting shared by every sampler: LM forward tokens, reward calls, time, memory."""

from __future__ import annotations

import resource
import sys
import time

import torch

from .errors import RewardError
from .types import LM, Cost, Reward


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class Meter:
    """Counts what one sampler call spends; `finish()` returns the `Cost`.

    LM tokens are read off the LM's running counter; reward calls are counted by `score`.
    """

    def __init__(self, lm: LM):
        self.lm = lm
        self.start_tokens = lm.forward_tokens
        self.start_time = time.perf_counter()
        self.reward_calls = 0

    def score(self, reward: Reward, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Call the reward on a batch, count the calls, and insist on a finite (B,) float tensor."""
        self.reward_calls += len(completions)
        values = torch.as_tensor(reward(prompts, completions), dtype=torch.float32)
        if values.shape != (len(completions),) or not torch.isfinite(values).all():
            name = getattr(reward, "name", repr(reward))
            raise RewardError(f"reward {name!r} returned {tuple(values.shape)} with non-finite values or wrong shape")
        return values

    def finish(self, generated_tokens: int) -> Cost:
        return Cost(
            lm_forward_tokens=self.lm.forward_tokens - self.start_tokens,
            reward_calls=self.reward_calls,
            wall_s=time.perf_counter() - self.start_time,
            peak_rss_mb=peak_rss_mb(),
            generated_tokens=generated_tokens,
        )
