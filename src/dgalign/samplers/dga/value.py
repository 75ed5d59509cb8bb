"""Value twists for DGA: ψ(prefix ⊕ v) ≈ log E_{p_θ}[exp(β r) | prefix ⊕ v] for each candidate v.

The learned head r_φ(x, t, h) (§2.3, trained in §2.6) predicts the standardised final reward
from the LM hidden state h at the prefix and a (noised) next-token embedding x; at t = 0 it
scores candidates (the value twist, ψ = β·r̂), and its gradient in x_t guides the kernel.
`ExactToyValue` computes ψ by enumeration on the toy LM (for tests and `dgalign exact`).
"""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import time_features


class ValueHead(nn.Module):
    """r_φ(x_t, t, h) -> (B,) standardised reward; `mean`/`std` map it back to reward units."""

    def __init__(self, emb_dim: int, hidden_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(emb_dim + hidden_dim + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 1),
        )
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, h.float(), time_features(t)], -1)).squeeze(-1)

    def reward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Predicted reward in the reward's own units."""
        return self(x, t, h) * self.std + self.mean

    def candidates(self, cand_emb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Predicted reward of each clean candidate (t = 0): (B, m, D), (B, Dh) -> (B, m)."""
        b, m, d = cand_emb.shape
        flat = self.reward(cand_emb.reshape(b * m, d), cand_emb.new_zeros(b * m), h.repeat_interleave(m, 0))
        return flat.view(b, m)


class ExactToyValue:
    """ψ(prefix) = log Σ_y p_θ(y | prefix)·exp(β r(c, prefix ⊕ y)), by recursion over the toy's tree.

    ψ(complete y) = β r(c, y); ψ(prefix) = log Σ_v p_θ(v | prefix)·exp(ψ(prefix ⊕ v)).
    """

    def __init__(self, lm, reward, prompt: str, prompt_ids: list[int], max_new_tokens: int, beta: float):
        self.table: dict[tuple[int, ...], float] = {}
        self.eos = eos = set(lm.eos_token_ids)

        def visit(prefix: tuple[int, ...]) -> float:
            if (prefix and prefix[-1] in eos) or len(prefix) == max_new_tokens:
                value = beta * float(reward([prompt], [lm.decode(list(prefix))])[0])
            else:
                logp = lm.start([prompt_ids + list(prefix)]).logits[0].double().log_softmax(-1)
                kids = torch.tensor([float(logp[v]) + visit(prefix + (v,)) for v in range(len(logp))])
                value = float(torch.logsumexp(kids, 0))
            self.table[prefix] = value
            return value

        self.log_z = visit(())

    def __call__(self, prefixes: list[tuple[int, ...]]) -> torch.Tensor:
        """ψ of each prefix; tokens after its first EOS are ignored (the answer ended there)."""
        return torch.tensor([self.table[self._cut(p)] for p in prefixes])

    def _cut(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        for i, tok in enumerate(prefix):
            if tok in self.eos:
                return prefix[: i + 1]
        return prefix
