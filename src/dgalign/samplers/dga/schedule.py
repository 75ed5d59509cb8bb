"""Noise schedules (DGA §2.2) and the reward-adaptive schedule (§2.4).

Forward process q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I); ᾱ_t = Π_{s≤t} (1 - β_s), kept in
float64. Index 0 is clean (ᾱ_0 = 1); index T is the noisiest.
"""

from __future__ import annotations

import math

import torch


def base_betas(kind: str, steps: int) -> torch.Tensor:
    """β_1..β_T (T,) float64 for `linear` (DDPM, Ho et al. 2020) or `cosine` (Nichol & Dhariwal 2021)."""
    if kind == "linear":
        scale = 1000 / steps  # keep the DDPM range 1e-4..0.02 at T = 1000, rescaled for short chains
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), steps, dtype=torch.float64, device="cpu")
    if kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64, device="cpu") / steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {kind!r}; valid: linear, cosine")


def alpha_bars(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_0..ᾱ_T (T + 1,) float64 with ᾱ_0 = 1."""
    return torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, 0)])


def adaptive_beta(beta_t: float, r_std: torch.Tensor, lam: float, clip: float) -> torch.Tensor:
    """β_t · exp(-λ · r̂) per row (§2.4), r̂ a standardised reward clipped to [-clip, clip]."""
    return (beta_t * torch.exp(-lam * r_std.double().clamp(-clip, clip))).clamp(max=0.999)


class RunningStats:
    """Running mean and variance (Welford, batched) used to standardise rewards for §2.4."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        if x.numel() == 0:
            return
        n_b, mean_b = x.numel(), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        delta, total = mean_b - self.mean, self.n + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta**2 * self.n * n_b / total
        self.n = total

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        std = math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0
        return (x - self.mean) / max(std, 1e-6)


def adaptive_abar_prev(abar: torch.Tensor, abars: torch.Tensor, t: int, r_std: torch.Tensor, lam: float,
                       clip: float) -> torch.Tensor:
    """ᾱ_{t−1} per row under §2.4's β_t·exp(−λ r̂), taken in log-ᾱ so every chain still ends at ᾱ_1.

    The base schedule removes a fraction f_t of the remaining log-ᾱ gap to ᾱ_1 at step t; the
    adaptive one removes f_t·exp(−λ r̂) of it (clipped to [0, 1]), and all of it at t = 2, so a
    row never jumps from high noise straight to the clean rounding step.
    """
    if t == 1:
        return torch.ones_like(abar, dtype=torch.float64)
    log_a, log_end = abar.double().log(), float(abars[1].log())
    f_base = float((abars[t - 1].log() - abars[t].log()) / (abars[1].log() - abars[t].log()))
    frac = torch.ones_like(log_a) if t == 2 else adaptive_beta(f_base, r_std, lam, clip).clamp(max=1.0)
    return (log_a + frac * (log_end - log_a)).exp()
