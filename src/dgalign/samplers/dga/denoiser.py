"""The denoiser p_φ(x_{t-1} | x_t) = N(μ_φ, Σ_φ) of DGA §2.2, by x_0-prediction over the vocabulary.

π(v | x_t) ∝ p_θ(v | h) · N(x_t; √ᾱ_t e_v, (1 - ᾱ_t) I) · exp(g_φ(x_t, t, h)_v) over the top-m
tokens of p_θ, and x̂_0 = Σ_v π_v e_v. With g_φ = 0 this is the exact posterior mean (Tweedie)
of the noised next-token distribution; g_φ is a small learned correction. μ_φ is the DDPM
posterior mean given x̂_0 and Σ_φ the DDPM posterior variance (Ho et al. 2020, eq. 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from ...types import LM


@dataclass
class Candidates:
    """The top-m tokens of p_θ at each row's position, with their log-probs and scaled embeddings."""

    ids: torch.Tensor  # (B, m) token ids
    logp: torch.Tensor  # (B, m) log p_θ(v | h), renormalised over the top-m
    emb: torch.Tensor  # (B, m, D) e_v = E_v / scale

    @cached_property
    def sq_norm(self) -> torch.Tensor:
        """‖e_v‖², (B, m): every reverse step needs it, so it is computed once per candidate set."""
        return (self.emb * self.emb).sum(-1)


def embedding_scale(lm: LM) -> float:
    """RMS norm of the embedding rows: e_v = E_v / scale has ‖e_v‖ ≈ 1 whatever D, so the noise
    schedule spans the regime where the posterior over tokens is uncertain (with unit-RMS
    coordinates, ‖e_u − e_v‖² ≈ 2D and the posterior is one-hot at all but the noisiest steps)."""
    emb = lm.embeddings().detach().float()
    return float(emb.pow(2).sum(-1).mean().sqrt())


def candidates(logits: torch.Tensor, emb: torch.Tensor, top_m: int) -> Candidates:
    """The top-m of next-token `logits` (B, V); `emb` is the scaled embedding matrix (V, D)."""
    m = min(top_m, logits.shape[-1]) if top_m > 0 else logits.shape[-1]
    top, ids = torch.topk(logits.float(), m, dim=-1)  # (B, m)
    return Candidates(ids, top.log_softmax(-1), emb[ids])


def posterior_logits(
    x_t: torch.Tensor, abar: torch.Tensor, cand: Candidates, direction: torch.Tensor | None = None
) -> torch.Tensor:
    """log π(v | x_t) (B, m): prior + Gaussian likelihood at per-row noise level ᾱ (B,), + g_φ's logits
    e_v·u given as its `direction` u (B, D). Both terms linear in e_v share one batched product."""
    a = abar.to(x_t.dtype)[:, None]  # (B, 1)
    lin = a.sqrt() * x_t / (1 - a)
    if direction is not None:
        lin = lin + direction
    dot = torch.bmm(cand.emb, lin.unsqueeze(-1)).squeeze(-1)  # (B, m)
    logits = cand.logp + dot - a * cand.sq_norm / (2 * (1 - a))  # ‖x_t‖² is the same for every v: dropped
    return logits.log_softmax(-1)


def sq_dist(x: torch.Tensor, cand: Candidates, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """‖x − s·e_v‖² for every candidate, (B, D) -> (B, m), as ‖x‖² − 2s x·e_v + s²‖e_v‖² (one matmul)."""
    dot = torch.bmm(cand.emb, x.unsqueeze(-1)).squeeze(-1)
    return (x * x).sum(-1, keepdim=True) - 2 * scale * dot + scale**2 * cand.sq_norm


def tweedie(log_pi: torch.Tensor, cand: Candidates) -> torch.Tensor:
    """x̂_0 = Σ_v π_v e_v, (B, D); several posteriors at once for log_pi (B, n, m) -> (B, n, D)."""
    if log_pi.dim() == 3:
        return torch.bmm(log_pi.exp(), cand.emb)
    return torch.bmm(log_pi.exp().unsqueeze(1), cand.emb).squeeze(1)


def ddpm_mean_var(x_t, x0_hat, abar_t, abar_prev):
    """DDPM posterior q(x_{t-1} | x_t, x̂_0): mean (B, D) and variance (B, 1), per-row ᾱ allowed."""
    abar_t, abar_prev = abar_t.to(x_t.dtype).view(-1, 1), abar_prev.to(x_t.dtype).view(-1, 1)
    beta_t = 1 - abar_t / abar_prev
    c0 = abar_prev.sqrt() * beta_t / (1 - abar_t)
    ct = (1 - beta_t).sqrt() * (1 - abar_prev) / (1 - abar_t)
    var = beta_t * (1 - abar_prev) / (1 - abar_t)
    return c0 * x0_hat + ct * x_t, var


TIME_DIM = 16  # width of the sinusoidal time features that every DGA net reads


def net_input_width(emb_dim: int, hidden_dim: int) -> int:
    """Input width of the DGA nets (g_φ, r_φ, δ_ψ), which all read [x_t (D), h (Dh), time_features(t)]."""
    return emb_dim + hidden_dim + TIME_DIM


def time_features(t: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """Sinusoidal features of the noise level t ∈ [0, 1], (B,) -> (B, dim)."""
    freqs = torch.exp(torch.arange(dim // 2, device=t.device) * -(9.0 / (dim // 2)))  # 1 .. e^-9
    ang = t.float()[:, None] * 1000 * freqs
    return torch.cat([ang.sin(), ang.cos()], -1)


class Correction(nn.Module):
    """g_φ(x_t, t, h): logits added to π over the candidates, g_v = u(x_t, t, h) · e_v / √D.

    It returns the direction u/√D (B, D); `posterior_logits` takes its product with the candidates.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(net_input_width(emb_dim, hidden_dim), width), nn.SiLU(), nn.Linear(width, emb_dim)
        )
        nn.init.zeros_(self.net[-1].weight)  # starts at g = 0: the exact Tweedie denoiser
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, h.float(), time_features(t)], -1)) / x_t.shape[-1] ** 0.5  # (B, D)
