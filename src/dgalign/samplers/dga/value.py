"""Value twists for DGA: ψ(prefix ⊕ v) ≈ log E_{p_θ}[exp(β r) | prefix ⊕ v] for each candidate v.

The learned head r_φ(x, t, h) (§2.3, trained in §2.6) predicts the standardised final reward
from the LM hidden state h at the prefix and a (noised) next-token embedding x; at t = 0 it
scores candidates (the value twist, ψ = β·r̂), and its gradient in x_t guides the kernel.
The exact soft value on the toy LM (`twist.ExactToyValue`) and the twist objects every value-reading
method shares are in `twist.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import net_input_width, time_features


class ValueHead(nn.Module):
    """r_φ(x_t, t, h) -> (B,) standardised reward; `mean`/`std` map it back to reward units.

    A clean token v (t = 0, known id) also gets a learned per-token offset b_v: many rewards are
    largely lexical (a slur is toxic after any prefix), which one scalar per token captures from a
    few occurrences where the MLP on e_v would need many. b starts at 0 and is trained only by the
    candidate contrasts; noised inputs x_t (no id) use the MLP alone.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, vocab_size: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(net_input_width(emb_dim, hidden_dim), width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 1),
        )
        self.token_bias = nn.Embedding(vocab_size, 1)
        nn.init.zeros_(self.token_bias.weight)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.pairs(x, t, h, torch.arange(len(x), device=x.device))

    def pairs(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Standardised r_φ of rows x (N, D) at t (N,) read at hidden states h[index] (h: (B, Dh)).

        The first layer acts on [x, h, t] as a sum, so its h part is computed once per hidden state
        rather than once per (hidden state, candidate) pair.
        """
        first, d, dh = self.net[0], x.shape[-1], h.shape[-1]
        w = first.weight
        pre = x @ w[:, :d].T + (h.float() @ w[:, d:d + dh].T)[index] + time_features(t) @ w[:, d + dh:].T + first.bias
        return self.net[1:](pre).squeeze(-1)

    def units(self, z: torch.Tensor) -> torch.Tensor:
        """A standardised prediction in the reward's own units."""
        return z * self.std + self.mean

    def reward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Predicted reward in the reward's own units."""
        return self.units(self(x, t, h))

    def clean(self, ids: torch.Tensor, emb: torch.Tensor, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Standardised r_φ of clean tokens `ids` (N,) with embeddings `emb` (N, D) at hidden states h[index]."""
        return self.pairs(emb, emb.new_zeros(len(emb)), h, index) + self.token_bias(ids).squeeze(-1)

    def candidates(self, cand, h: torch.Tensor) -> torch.Tensor:
        """Predicted reward of each clean candidate (t = 0), in reward units: Candidates (B, m), h (B, Dh) -> (B, m)."""
        b, m, d = cand.emb.shape
        index = torch.arange(b, device=h.device).repeat_interleave(m)
        flat = self.clean(cand.ids.reshape(-1), cand.emb.reshape(b * m, d), h, index)
        return self.units(flat).view(b, m)
