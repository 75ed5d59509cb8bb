"""The reward-aware proposal q_ψ = N(μ_φ + δ_ψ(x_t, t, h), Σ_φ) of DGA §2.5.

δ_ψ is a small MLP trained (eq. 9) to predict the guidance shift γ_t·ĝ that the gradient
estimators compute; at inference one forward pass replaces the gradient — the fast path.
"""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import net_input_width, time_features


class Proposal(nn.Module):
    """δ_ψ(x_t, t, h) -> (B, D) shift of the reverse-step mean, per unit of β."""

    def __init__(self, emb_dim: int, hidden_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(net_input_width(emb_dim, hidden_dim), width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, emb_dim),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, h.float(), time_features(t)], -1))
