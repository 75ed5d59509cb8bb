"""Monte-Carlo tolerances: how far a correct sampler's empirical law may sit from its exact target.

A test holds a sampler to an exact law p by TV(p, q̂) ≤ tol. A tolerance is only honest if it comes
from the noise of *that* estimator, chosen so that a correct sampler fails with probability ≤ δ:

- i.i.d. draws (base, best-of-N, one answer per SMC run, one per MCMC chain): q̂ is multinomial,
  and the (1 − δ)-quantile of TV is read off simulated multinomial draws from p itself.
- correlated draws (answers pooled from shared particles): the draws are made in G independent
  groups (separate sampler calls); the spread of the G group laws estimates the covariance of q̂,
  and TV's null law is simulated from that Gaussian, widened by Student's t for the G − 1 degrees
  of freedom of the estimated spread. The i.i.d. floor would understate this noise.

Samplers exact only in a limit (N particles, T steps, n candidates) also carry a bias that no
sample size removes; tests add it explicitly, as a named, measured allowance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

DELTA = 1e-3  # false-failure probability a tolerance is set for
SIMS = 20_000  # simulated null draws per tolerance (the (1 − δ)-quantile then rests on 20 tail points)


def tv_null_iid(probs: torch.Tensor, n: int, delta: float = DELTA, sims: int = SIMS) -> tuple[float, float]:
    """(mean, (1 − δ)-quantile) of TV(p, q̂) for q̂ the law of n i.i.d. draws from p."""
    p = probs.double().clamp_min(0).numpy()
    p = p / p.sum()
    counts = np.random.default_rng(0).multinomial(n, p, size=sims)  # (sims, S)
    tv = 0.5 * np.abs(counts / n - p).sum(1)
    return float(tv.mean()), float(np.quantile(tv, 1 - delta))


def tv_null_grouped(laws: torch.Tensor, delta: float = DELTA, sims: int = SIMS) -> tuple[float, float]:
    """(mean, (1 − δ)-quantile) of TV(p, q̂) for q̂ the mean of G independent group laws `laws` (G, S)."""
    g = laws.shape[0]
    if g < 2:
        raise ValueError("the grouped tolerance needs at least 2 independent groups")
    dev = (laws - laws.mean(0)).double().numpy()  # (G, S)
    # d ~ N(0, Σ̂/G) with Σ̂ the groups' sample covariance: d = z·dev / √(G(G − 1)), z ~ N(0, I_G)
    widen = stats.t.ppf(1 - delta, g - 1) / stats.norm.ppf(1 - delta)  # Σ̂ itself is estimated
    z = np.random.default_rng(0).standard_normal((sims, g))
    tv = 0.5 * np.abs(z @ dev).sum(1) * widen / math.sqrt(g * (g - 1))
    return float(tv.mean()), float(np.quantile(tv, 1 - delta))


def log_z_tolerance(run_log_z: torch.Tensor, delta: float = DELTA) -> float:
    """Two-sided (1 − δ) half-width of log Ẑ = log mean_r Ẑ_r over R independent runs (delta method)."""
    w = (run_log_z.double() - torch.logsumexp(run_log_z.double(), 0)).exp() * len(run_log_z)  # Ẑ_r / mean
    r = len(run_log_z)
    return float(stats.t.ppf(1 - delta / 2, max(r - 1, 1)) * w.std() / math.sqrt(r))
