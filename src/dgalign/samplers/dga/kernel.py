"""The reward-guided transition kernel of DGA §2.3: x_{t-1} = μ_φ + γ_t·ĝ + √Σ_φ·z.

ĝ estimates the guidance score ∇_x log E_{π(v|x_t)}[exp ψ(v)], the part of ∇ log p_r,t(x_t)
that the base denoiser does not already hold (classifier guidance, Dhariwal & Nichol 2021).
With γ_t = β_t / √α_t, adding γ_t·ĝ to the mean is the score-form DDPM step, so an exact ĝ
makes the chain sample the tilted next-token law. Estimators (config `grad`):

- `analytic`: closed form from candidate values ψ_v: (√ᾱ/(1-ᾱ))·(x̂_0^tilted - x̂_0).
- `value`: autograd through the learned noise-conditional reward head, β·∇_x r_φ(x_t, t, h).
- `perturb`: the paper's K-perturbation estimator on the tilted noised density p̃(x):
  Σ_k w_k (x^(k) - x)/σ² with w_k ∝ p̃(x^(k))/p̃(x), minus the same for the base density.
- `fd`: the real reward of decoded perturbations (Demon-style, Yeh et al. 2024): weights
  softmax(r_k/τ) with τ = std of the K rewards, ĝ = β·Σ_k (w_k - 1/K)(x^(k) - x)/σ².
- `proposal`: δ_ψ(x_t, t, h) (§2.5), one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...ops import randn
from .denoiser import Candidates, posterior_logits, tweedie


@dataclass
class GuideInputs:
    """What an estimator may look at for one reverse step of B rows."""

    x_t: torch.Tensor  # (B, D)
    abar: torch.Tensor  # (B,) ᾱ_t per row
    t_frac: torch.Tensor  # (B,) t / T
    cand: Candidates
    log_pi: torch.Tensor  # (B, m) base posterior (with g_φ)
    hidden: torch.Tensor  # (B, Dh)
    psi: torch.Tensor | None  # (B, m) candidate twists ψ_v, when a value is available
    beta: float


def analytic(g: GuideInputs) -> torch.Tensor:
    """(√ᾱ/(1-ᾱ))·(x̂_0 under π·e^ψ − x̂_0 under π)."""
    a = g.abar.to(g.x_t.dtype)[:, None]
    both = tweedie(torch.stack([(g.log_pi + g.psi).log_softmax(-1), g.log_pi], 1), g.cand)  # (B, 2, D)
    return a.sqrt() / (1 - a) * (both[:, 0] - both[:, 1])


def value_gradient(g: GuideInputs, head) -> torch.Tensor:
    """β·∇_x r_φ(x_t, t, h): backprop through the small head only, never through the reward."""
    with torch.enable_grad():
        x = g.x_t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(head.reward(x, g.t_frac, g.hidden).sum(), x)
    return g.beta * grad


def _perturbations(g: GuideInputs, k: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """K Gaussian perturbations at the chain's own noise scale, x^(k) = x_t + √σ²·z_k with σ² = 1 − ᾱ_t.

    Returns x^(k) (K, B, D) and σ² (B, 1); the `perturb` and `fd` estimators weight x^(k) − x_t by σ⁻².
    """
    sigma2 = 1 - g.abar.to(g.x_t.dtype)[:, None]  # (B, 1)
    z = randn((k, *g.x_t.shape), g.x_t, generator)
    return g.x_t[None] + sigma2.sqrt()[None] * z, sigma2


def perturb(g: GuideInputs, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Self-normalised K-perturbation score of the tilted density minus that of the base density."""
    a = g.abar.to(g.x_t.dtype)[:, None]
    xs, sigma2 = _perturbations(g, k, generator)  # (K, B, D), (B, 1)

    def log_density(x: torch.Tensor, psi: torch.Tensor | None) -> torch.Tensor:
        sq = ((x[:, :, None, :] - a.sqrt()[None, :, :, None] * g.cand.emb[None]) ** 2).sum(-1)  # (K, B, m)
        logits = g.cand.logp[None] - sq / (2 * sigma2[None])
        return torch.logsumexp(logits + (0 if psi is None else psi[None]), -1)  # (K, B)

    def score(psi):
        w = log_density(xs, psi).softmax(0)  # (K, B)
        return (w[..., None] * (xs - g.x_t[None])).sum(0) / sigma2

    return score(g.psi) - score(None)


def finite_difference(
    g: GuideInputs, k: int, reward_of: Callable[[torch.Tensor, Candidates], torch.Tensor],
    generator: torch.Generator | None
) -> torch.Tensor:
    """Demon-style estimate from the real reward of K perturbations, each rounded to its likeliest token."""
    xs, sigma2 = _perturbations(g, k, generator)  # (K, B, D), (B, 1)
    picks = torch.stack([posterior_logits(x, g.abar, g.cand).argmax(-1) for x in xs])  # (K, B)
    rewards = reward_of(picks, g.cand)  # (K, B) real reward of prefix ⊕ picked candidate
    tau = rewards.std(0, keepdim=True).clamp(min=1e-6)
    w = (rewards / tau).softmax(0) - 1.0 / k  # (K, B); zero when every perturbation scores the same
    return g.beta * (w[..., None] * (xs - g.x_t[None])).sum(0) / sigma2
