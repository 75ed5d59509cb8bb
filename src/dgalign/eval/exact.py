"""Exact ground truth by enumeration on a small LM (the toy): p_θ, p_r ∝ p_θ·exp(β r), Z, BoN.

Every complete sequence (EOS-terminated, or cut at the length limit) is enumerated with its
base log-probability, so a sampler's empirical distribution can be held to the exact target
by total-variation distance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
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


def toy_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    """The toy's reward in [-0.5, 1]: (#a − ½·#c) / 3 (tied levels, so BoN ties are exercised)."""
    return torch.tensor([(c.count("a") - 0.5 * c.count("c")) / 3 for c in completions], dtype=torch.float32,
                        device="cpu")


def weighted_empirical(samples, enum: Enumeration) -> torch.Tensor:
    """The sampler's law over the support: counts, or its importance weights where it returns them."""
    if samples.log_weights is None:
        return empirical(samples.token_ids, enum)
    index = enum.index()
    q = torch.zeros(len(enum.sequences), dtype=torch.float64)
    weights = samples.log_weights.double().softmax(0)
    for seq, w in zip(samples.token_ids, weights.tolist(), strict=True):
        q[index[tuple(seq)]] += w
    return q


def kl_divergence(p: torch.Tensor, q: torch.Tensor, n: int) -> float:
    """KL(p ‖ q) with q smoothed by half a count (0.5/n) where it saw nothing, so it stays finite."""
    q = torch.where(q > 0, q, torch.full_like(q, 0.5 / n))
    q = q / q.sum()
    keep = p > 0
    return float((p[keep] * (p[keep].log() - q[keep].log())).sum())


def run_exact(
    method: str,
    *,
    beta: float = 1.0,
    samples: int = 20_000,
    seed: int = 0,
    prompt: str = "ab",
    overrides: dict[str, str] | None = None,
    groups: int = 1,
    law: Callable[[Enumeration, torch.Tensor, object], torch.Tensor] | None = None,
) -> dict:
    """Run a registered method on the toy LM with `toy_reward` and compare to the enumerated target.

    `groups` > 1 draws the samples in that many independent sampler calls (one generator, used in
    turn), so the tolerance can be set from their spread: needed where a call's answers are
    correlated (pooled particles). `tv_floor` is the expected TV of a correct sampler, `tv_tol` the
    (1 − δ)-quantile of its TV (δ = 10⁻³); `log_z_tol` the same for log Ẑ where runs report Ẑ.
    `law(enum, rewards, cfg)` replaces the tilted target p_r by the law the method claims (best-of-N's).
    """
    from ..config import apply_overrides
    from ..lm.toy import ToyLM
    from ..samplers import get_sampler
    from ..types import Prompts
    from .montecarlo import log_z_tolerance, tv_null_grouped, tv_null_iid

    if groups < 1 or samples % groups:
        raise ValueError(f"samples ({samples}) must split evenly into groups ({groups})")
    lm = ToyLM()
    sampler, cfg = get_sampler(method)
    settings = {"max_new_tokens": str(lm.max_new_tokens), "num_samples": str(samples // groups), "beta": str(beta)}
    cfg = apply_overrides(cfg, {**settings, **(overrides or {})})
    prompts = Prompts.encode(lm, [prompt])
    enum = enumerate_completions(lm, prompts.ids[0], cfg.max_new_tokens)
    rewards = exact_rewards(lm, toy_reward, prompt, enum)
    target, log_z = tilted(enum.logp, rewards, cfg.beta)
    if law is not None:
        target = law(enum, rewards, cfg)
    generator = torch.Generator().manual_seed(seed)
    outs = [sampler(lm, toy_reward, prompts, cfg, generator=generator) for _ in range(groups)]
    laws = torch.stack([weighted_empirical(out, enum) for out in outs])  # (G, S)
    q = laws.mean(0)
    floor, tol = tv_null_iid(target, samples) if groups == 1 else tv_null_grouped(laws)
    run_log_z = [out.extras["run_log_z"] for out in outs if "run_log_z" in out.extras]
    est_log_z = None
    if outs[0].log_z is not None:  # equal-sized groups: log of the mean of their Ẑ
        est_log_z = float(torch.logsumexp(torch.stack([o.log_z[0].double() for o in outs]), 0) - math.log(groups))
    return {
        "method": method,
        "beta": cfg.beta,
        "samples": sum(len(out) for out in outs),
        "groups": groups,
        "tv": round(tv_distance(target, q), 5),
        "tv_floor": round(floor, 5),
        "tv_tol": round(tol, 5),
        "tv_of_base_law": round(tv_distance(target, enum.logp.exp()), 5),  # what ignoring the reward would score
        "kl": round(kl_divergence(target, q, samples), 5),
        "reward": round(float((q * rewards).sum()), 5),
        "exact_reward": round(float((target * rewards).sum()), 5),
        "log_z": None if est_log_z is None else round(est_log_z, 5),
        "log_z_tol": round(log_z_tolerance(torch.cat(run_log_z)), 5) if run_log_z else None,
        "exact_log_z": round(log_z, 5),
        "extras": {k: v for k, v in outs[0].extras.items() if isinstance(v, int | float | str)},
        "cost": outs[0].cost.as_dict() if groups == 1 else _summed_cost(outs),
    }


def _summed_cost(outs) -> dict:
    costs = [out.cost.as_dict() for out in outs]
    summed = {k: sum(c[k] for c in costs) for k in ("wall_s", "lm_forward_tokens", "reward_calls")}
    return {**costs[-1], **summed}
