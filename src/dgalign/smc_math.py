"""Importance-weight maths shared by the particle samplers (SMC, soft best-of-N, DGA exact mode).

Every function acts on the last dimension of a (..., N) tensor of log-weights, so a batch of
independent particle systems (one per run, or one per prompt) is handled in one call. Weights stay
in log space; only normalised weights are exponentiated, in float64. `resample_runs` (the adaptive
resampling step) and `pick_rows` (the final draw) take R systems as (R, N) and return flat row
indices into the (R·N,) per-particle state, so a particle sampler never handles run offsets itself.
"""

from __future__ import annotations

import math

import torch

from .errors import DGAlignError
from .ops import rand

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
    """U[0, 1) float64 draws of `shape` on `like`'s device, made on the generator's own device (`ops.rand`)."""
    return rand(shape, like, generator, torch.float64)


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


def resample_runs(
    log_w: torch.Tensor, threshold: float, generator: torch.Generator | None = None, scheme: str = "systematic"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One adaptive-resampling step of R independent particle systems, log_w (R, N) since each run's last resampling.

    Run r resamples when ESS_r = (Σ_i w_ri)² / Σ_i w_ri² < threshold·N (Kong, Liu & Wong 1994), and then
    draws N ancestors a_ri ∝ w_ri (`resample`; uniforms are drawn for the resampled runs only). Its
    epoch ends: Ẑ_r gains the factor (1/N) Σ_i w_ri, the unbiased estimate of the epoch's normaliser
    (Del Moral 2004), and its new particles restart at weight 1 (log w = 0; the caller resets them).
    Returns

      ancestors (R·N,): flat global row of each new particle's parent, run r's rows being r·N … r·N + N − 1
                        (identity for runs that do not resample), to index any per-particle state;
      log_z_increment (R,): log (1/N) Σ_i w_ri where resampled, else 0 (add it to each run's log Ẑ);
      resampled (R,) bool.
    """
    runs, n = log_w.shape
    resampled = ess(log_w) < threshold * n  # (R,)
    ancestors = torch.arange(runs * n, device=log_w.device).view(runs, n)  # (R, N)
    if resampled.any():
        ancestors[resampled] = resample(log_w[resampled], generator, scheme=scheme) + ancestors[resampled, :1]
    return ancestors.flatten(), torch.where(resampled, log_mean_exp(log_w), 0.0), resampled


def pick_rows(
    log_w: torch.Tensor, generator: torch.Generator | None = None, *, num: int = 1, scheme: str = "systematic"
) -> torch.Tensor:
    """`num` rows drawn ∝ exp(log w) from each of G groups of M, log_w (G, M) -> flat global rows (G·num,).

    The final pick of a particle method: group g's rows are g·M … g·M + M − 1, so the result indexes
    the flat (G·M,) per-particle state (one group per run, or the pooled particles of one prompt).
    """
    groups, m = log_w.shape
    offsets = torch.arange(groups, device=log_w.device)[:, None] * m  # (G, 1) first row of each group
    return (resample(log_w, generator, num=num, scheme=scheme) + offsets).flatten()
