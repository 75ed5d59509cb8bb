"""Importance-weight maths shared by the particle samplers (SMC, soft best-of-N, DGA exact mode).

Every function acts on the last dimension of a (..., N) tensor of log-weights, so a batch of
independent particle systems (one per run, or one per prompt) is handled in one call. Weights stay
in log space; only normalised weights are exponentiated, in float64.
"""

from __future__ import annotations

import math

import torch

from .errors import DGAlignError

RESAMPLING = ("systematic", "multinomial")


def normalise(log_w: torch.Tensor) -> torch.Tensor:
    """log w − logsumexp(log w): normalised log-weights along the last dimension."""
    return log_w - torch.logsumexp(log_w, -1, keepdim=True)


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/N) Σ exp(log w): the log of one step's unbiased normaliser estimate, (...,)."""
    return torch.logsumexp(log_w, -1) - math.log(log_w.shape[-1])


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size (Σ w)² / Σ w², in [1, N] along the last dimension, (...,)."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """U[0, 1) float64 draws of `shape` on `like`'s device, made on the generator's own device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).to(like.device)


def resample(
    log_w: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    num: int | None = None,
    scheme: str = "systematic",
) -> torch.Tensor:
    """Ancestor indices (..., num) drawn ∝ exp(log w) along the last dimension (num defaults to N).

    systematic: one uniform u per system, positions (u + j) / num (Kitagawa 1996; lowest variance
    of the usual schemes); multinomial: num independent draws. With num = 1 both are one exact
    categorical draw.
    """
    n = log_w.shape[-1]
    num = n if num is None else num
    cdf = normalise(log_w.double()).exp().cumsum(-1).contiguous()  # (..., N)
    batch = tuple(log_w.shape[:-1])
    if scheme == "systematic":
        offsets = torch.arange(num, dtype=torch.float64, device=log_w.device)
        u = (uniform((*batch, 1), log_w, generator) + offsets) / num  # (..., num), sorted
    elif scheme == "multinomial":
        u = uniform((*batch, num), log_w, generator)
    else:
        raise DGAlignError(f"unknown resampling scheme {scheme!r}; valid: {', '.join(RESAMPLING)}")
    index = torch.searchsorted(cdf, (u * cdf[..., -1:]).contiguous(), right=True)
    return index.clamp(max=n - 1)
