"""Compute accounting shared by every sampler: LM forward tokens, reward calls, time, memory.

A sampler's `Cost` covers generation only. The one-off costs before it — loading the LM, the
reward's first (lazy) load, the first LM forward — are paid and timed apart by `timed` and
`prepare`, so tokens/s measures decoding:

    lm, load_s = timed(load_lm, "smollm2-135m-instruct")
    setup = prepare(lm, reward, prompts=batch, load_s=load_s)  # {"load_s", "reward_load_s", "warmup_s"}
    out = sampler(lm, reward, batch, cfg)                       # out.cost: generation only
    print(format_setup(setup))                                  # setup: load 2.3 s · reward load 1.1 s · ...
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import RewardError
from .types import LM, Cost, Prompts, Reward

T = TypeVar("T")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process's work on `device`, MiB, and what was measured: the accelerator's
    allocator peak (`max_memory_allocated`) on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    return peak_rss_mb(), "rss"


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
        values = torch.as_tensor(reward(prompts, completions), dtype=torch.float32, device="cpu")  # rewards: CPU
        if values.shape != (len(completions),) or not torch.isfinite(values).all():
            name = getattr(reward, "name", repr(reward))
            raise RewardError(f"reward {name!r} returned {tuple(values.shape)} with non-finite values or wrong shape")
        return values

    def finish(self, generated_tokens: int) -> Cost:
        memory, kind = peak_memory_mb(torch.device(self.lm.device))
        return Cost(
            lm_forward_tokens=self.lm.forward_tokens - self.start_tokens,
            reward_calls=self.reward_calls,
            wall_s=time.perf_counter() - self.start_time,
            peak_rss_mb=peak_rss_mb(),
            generated_tokens=generated_tokens,
            peak_memory_mb=memory,
            memory=kind,
        )


def timed(fn: Callable[..., T], *args, **kwargs) -> tuple[T, float]:
    """`fn(*args, **kwargs)` and the wall seconds it took."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def prepare(lm: LM, *rewards: Reward, prompts: Prompts | None = None, load_s: float = 0.0) -> dict[str, float]:
    """Pay, and time, the one-off costs a timed run must not count; returns the setup timings.

    Each reward is called once on the first prompt (a lazy reward loads its model there), then the LM
    runs one short forward — a prefill of the first prompt and one cached decode step — so the first
    call's allocations and kernel set-up happen here. Neither changes any state a sampler reads.
    Returns {"load_s": `load_s` (the caller's `timed` load_lm), "reward_load_s", "warmup_s"}, seconds.
    """
    text = prompts.texts[0] if prompts is not None and len(prompts) else ""
    ids = prompts.ids[0] if prompts is not None and len(prompts) and prompts.ids[0] else [lm.eos_token_ids[0]]
    start = time.perf_counter()
    for reward in rewards:
        reward([text], ["warm-up"])
    reward_s = time.perf_counter() - start
    start = time.perf_counter()
    state = lm.start([ids])
    lm.step(state, state.logits.argmax(-1, keepdim=True))  # (1, 1): one decode step on the cache
    return {"load_s": round(load_s, 4), "reward_load_s": round(reward_s, 4),
            "warmup_s": round(time.perf_counter() - start, 4)}


def format_setup(setup: dict[str, float]) -> str:
    """One line of setup timings: 'setup: load 2.3 s · reward load 1.1 s · warm-up 0.4 s'."""
    return (f"setup: load {setup['load_s']:.1f} s · reward load {setup['reward_load_s']:.1f} s · "
            f"warm-up {setup['warmup_s']:.1f} s")
