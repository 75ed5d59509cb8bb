"""Exact ground truth by enumeration on a small LM (the toy): p_θ, p_r ∝ p_θ·exp(β r), Z, BoN.

Every complete sequence (EOS-terminated, or cut at the length limit) is enumerated with its
base log-probability, so a sampler's empirical distribution can be held to the exact target
by total-variation distance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ..types import LM, Reward


@dataclass
class Enumeration:
    """All completions of one prompt with their exact base log-probs."""

    sequences: list[tuple[int, ...]]  # token ids, EOS included where drawn
    logp: torch.Tensor  # (S,) log p_θ(y | c), float64; logsumexp(logp) == 0

    def index(self) -> dict[tuple[int, ...], int]:
        return {s: i for i, s in enumerate(self.sequences)}


@torch.no_grad()
def enumerate_completions(lm: LM, prompt_ids: list[int], max_new_tokens: int) -> Enumeration:
    """Breadth-first over every continuation with non-zero probability (exponential: toys only)."""
    done: list[tuple[tuple[int, ...], float]] = []
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    eos = set(lm.eos_token_ids)
    for depth in range(max_new_tokens):
        state = lm.start([prompt_ids + list(seq) for seq, _ in frontier])
        logp = state.logits.double().log_softmax(-1)  # (F, V)
        nxt = []
        for row, (seq, lp) in enumerate(frontier):
            for tok in torch.isfinite(logp[row]).nonzero().squeeze(-1).tolist():
                item = (seq + (tok,), lp + float(logp[row, tok]))
                last = depth == max_new_tokens - 1
                (done if tok in eos or last else nxt).append(item)
        frontier = nxt
    return Enumeration([s for s, _ in done], torch.tensor([lp for _, lp in done], dtype=torch.float64))


def exact_rewards(lm: LM, reward: Reward, prompt: str, enum: Enumeration) -> torch.Tensor:
    """r(c, y) of every enumerated completion, float64."""
    texts = [lm.decode(list(s)) for s in enum.sequences]
    return torch.as_tensor(reward([prompt] * len(texts), texts), dtype=torch.float64)


def tilted(logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """p_r ∝ p·exp(β r) and log Z = log Σ p·exp(β r)."""
    logits = logp + beta * rewards
    log_z = torch.logsumexp(logits, 0)
    return (logits - log_z).exp(), float(log_z)


def best_of_n(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Exact law of best-of-n: P(max reward = r) = F(r)^n − F(r⁻)^n, split ∝ p within a tie."""
    out = torch.zeros_like(probs)
    for level in rewards.unique():
        at = rewards == level
        below = probs[rewards < level].sum()
        mass = (below + probs[at].sum()) ** n - below**n
        out[at] = mass * probs[at] / probs[at].sum()
    return out


def empirical(sequences: list[list[int]], enum: Enumeration) -> torch.Tensor:
    """Empirical distribution of samples over the enumerated support (float64)."""
    index = enum.index()
    counts = Counter(tuple(s) for s in sequences)
    unknown = [s for s in counts if s not in index]
    if unknown:
        raise ValueError(f"sample {unknown[0]} is outside the enumerated support")
    q = torch.zeros(len(enum.sequences), dtype=torch.float64)
    for seq, c in counts.items():
        q[index[seq]] = c
    return q / q.sum()


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance ½ Σ |p − q|."""
    return 0.5 * float((p - q).abs().sum())


def iid_tv(probs: torch.Tensor, n: int, generator: torch.Generator) -> float:
    """TV of n exact i.i.d. draws from `probs` to `probs`: the Monte-Carlo noise floor."""
    draws = torch.multinomial(probs.float(), n, replacement=True, generator=generator)
    q = torch.bincount(draws, minlength=len(probs)).double() / n
    return tv_distance(probs, q)


def toy_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    """The toy's reward: #a − ½·#c in the completion (a few tied levels, so BoN ties are exercised)."""
    return torch.tensor([c.count("a") - 0.5 * c.count("c") for c in completions], dtype=torch.float32)
