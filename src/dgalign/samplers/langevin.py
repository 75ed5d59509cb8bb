"""Langevin dynamics on soft token logits, then LM-guided rounding: the continuous-relaxation family
(COLD, Qin et al. 2022; MuCoLa, Kumar et al. 2022; SEA, arXiv 2505.20081).

Each answer is relaxed to soft logits ỹ (T, m) over m candidate tokens per position; the soft
sequence enters the LM as input embeddings softmax(ỹ_t)·E. The energy is

    E(ỹ) = − Σ_t Σ_v softmax(ỹ_t)_v · log p_θ(v | c, ỹ_<t)  −  β · r̂(ỹ)                   (1)

(COLD's soft cross-entropy fluency term, differentiable through the LM, plus the reward). The
real reward is a black-box text classifier, so r̂ is a surrogate fitted on the fly: a ridge head on
the mean-pooled input embeddings, trained on `n` base samples per prompt scored with the real
reward (those calls and LM tokens are in the cost). Then

  (1) init: ỹ_t = log p_θ(· | c, y_<t) + s·onehot(y_t) on the top-m tokens of p_θ at each position
      of a base sample y (its own token always among them);
  (2) `steps` updates ỹ ← ỹ − η ∇E(ỹ) + σ_k z, σ_k annealed geometrically from σ_start to σ_end
      (COLD: 1 → 0.05);
  (3) rounding (COLD): left to right with the hard prefix, take among the LM's top-k next tokens
      the one with the largest soft logit; a position with no candidate among them (or past the
      soft span, when the rounded text has not ended) takes the LM's top token; stop at EOS.
The rounded answers are scored with the real reward. A biased sampler: it seeks high r̂ under
the fluency energy, it does not sample p_θ·exp(β r).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_counts, check_range
from ..cost import Meter
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill, score
from .rollout import rollout


@dataclass
class LangevinConfig(SamplerConfig):
    n: int = 16  # base samples per prompt scored with the real reward to fit the surrogate r̂
    steps: int = 20  # Langevin updates of the soft logits
    step_size: float = 0.5  # η in ỹ ← ỹ − η ∇E + σ z
    noise_start: float = 1.0  # σ at the first update (COLD: 1)
    noise_end: float = 0.05  # σ at the last update (COLD: 0.05); geometric in between
    top_m: int = 64  # candidate tokens per position the soft logits live on (>= vocabulary: all of it)
    init_scale: float = 3.0  # s: logit bonus of the base sample's own token at init
    round_k: int = 5  # rounding: choose among the LM's top-k next tokens (COLD's top-k)
    surrogate_l2: float = 1.0  # ridge penalty λ of the surrogate head (on standardised features)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "n", "steps")
        check_range("step_size", self.step_size, 0, open_low=True)
        check_range("noise_start", self.noise_start, 0, open_low=True)  # σ is geometric from it: > 0
        check_range("noise_end", self.noise_end, 0)
        check_range("top_m", self.top_m, 1)
        check_range("init_scale", self.init_scale, 0)
        check_range("round_k", self.round_k, 1)
        check_range("surrogate_l2", self.surrogate_l2, 0, open_low=True)


@dataclass
class Surrogate:
    """r̂(φ) = r̄ + s_r · w·(φ − μ)/σ: a ridge head on mean-pooled input embeddings φ (B, D)."""

    mean: torch.Tensor  # (D,) μ of the training features
    std: torch.Tensor  # (D,) σ of the training features
    weight: torch.Tensor  # (D,) w on standardised features
    reward_mean: float  # r̄
    reward_std: float  # s_r

    @classmethod
    def fit(cls, features: torch.Tensor, rewards: torch.Tensor, l2: float) -> Surrogate:
        """Ridge regression in its dual form (N × N system: N samples, usually N < D)."""
        mean, std = features.mean(0), features.std(0, correction=0) + 1e-6
        x = (features - mean) / std  # (N, D)
        r_mean, r_std = float(rewards.mean()), float(rewards.std(correction=0)) + 1e-8
        target = (rewards - r_mean) / r_std  # (N,)
        gram = x @ x.T + l2 * torch.eye(len(x), dtype=x.dtype, device=x.device)  # (N, N)
        weight = x.T @ torch.linalg.solve(gram, target)  # (D,)
        return cls(mean, std, weight, r_mean, r_std)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.reward_mean + self.reward_std * (((features - self.mean) / self.std) @ self.weight)


def _pool(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) embeddings over each row's real positions (B, T) -> (B, D)."""
    return (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ids (B, T) and mask (B, T) float."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long, device="cpu")
    mask = torch.zeros(len(rows), width, device="cpu")
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long, device="cpu")
        mask[i, : len(r)] = 1.0
    return ids, mask


def noise_schedule(steps: int, start: float, end: float) -> torch.Tensor:
    """σ_k for k = 0 … steps−1, geometric from `start` to `end` (COLD's annealed noise)."""
    if steps == 1:
        return torch.tensor([end], device="cpu")
    return torch.tensor([start * (end / start) ** (k / (steps - 1)) for k in range(steps)], device="cpu")


def _energy(lm: LM, prompt_ids, logits: torch.Tensor, cand: torch.Tensor, mask: torch.Tensor, head, beta: float):
    """E(ỹ) of eq. (1) per row (B,) and the surrogate reward r̂ (B,)."""
    emb = lm.embeddings().detach().float()  # (V, D), float32 whatever the model's dtype
    probs = logits.softmax(-1)  # (B, T, m)
    dense = probs.new_zeros(*probs.shape[:2], emb.shape[0]).scatter(-1, cand, probs)  # (B, T, V)
    soft = dense @ emb  # (B, T, D) soft input embeddings
    logp = lm.logits_from_embeddings(prompt_ids, soft).log_softmax(-1).gather(-1, cand)  # (B, T, m)
    fluency = -((probs * logp).sum(-1) * mask).sum(-1)  # (B,) soft cross-entropy
    reward_hat = head(_pool(soft, mask))  # (B,)
    return fluency - beta * reward_hat, reward_hat


@torch.no_grad()
def sample_langevin(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: LangevinConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """`num_samples` answers per prompt, each a base sample moved by Langevin on (1) and rounded."""
    meter = Meter(lm)
    per_prompt = cfg.n + cfg.num_samples  # n surrogate-training samples, then the inits
    emb = lm.embeddings().detach().float()  # (V, D), float32 whatever the model's dtype

    # base samples: n per prompt to fit r̂ on, num_samples per prompt to start chains from
    state = prefill(lm, prompts, per_prompt)
    drawn = rollout(lm, state, cfg, cfg.max_new_tokens, generator=generator).tokens
    train_rows = [r for r in range(len(drawn)) if r % per_prompt < cfg.n]
    init_rows = [r for r in range(len(drawn)) if r % per_prompt >= cfg.n]
    train_ids, train_mask = _pad([drawn[r] for r in train_rows], lm.pad_token_id)
    train_texts = [lm.decode(drawn[r]) for r in train_rows]
    train_prompts = [prompts.texts[r // per_prompt] for r in train_rows]
    train_rewards = score(meter, reward, train_prompts, train_texts)
    head = Surrogate.fit(_pool(emb[train_ids.to(emb.device)], train_mask.to(emb.device)), train_rewards.to(emb.device),
                         cfg.surrogate_l2)

    # (1) init on the top-m candidates of p_θ along each base sample
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]
    prompt_ids = [prompts.ids[i] for i in index]
    init = [drawn[r] for r in init_rows]
    ids, mask = _pad(init, lm.pad_token_id)
    ids, mask = ids.to(emb.device), mask.to(emb.device)
    base_logits = lm.logits_from_embeddings(prompt_ids, emb[ids]).log_softmax(-1)  # (B, T, V)
    m = min(cfg.top_m, lm.vocab_size)
    cand = base_logits.topk(m, dim=-1).indices  # (B, T, m)
    own = (cand == ids[..., None]).any(-1)  # the sample's token is already a candidate
    cand[..., -1] = torch.where(own, cand[..., -1], ids)
    logits = base_logits.gather(-1, cand) + cfg.init_scale * (cand == ids[..., None]).float()  # (B, T, m)
    init_reward_hat = head(_pool(emb[ids], mask))

    # (2) Langevin: ỹ ← ỹ − η ∇E(ỹ) + σ_k z
    sigmas = noise_schedule(cfg.steps, cfg.noise_start, cfg.noise_end) if cfg.steps > 0 else torch.zeros(0, device="cpu")
    backward_tokens = 0
    for k, sigma in enumerate(sigmas.tolist()):
        with torch.enable_grad():
            logits.requires_grad_(True)
            energy, _ = _energy(lm, prompt_ids, logits, cand, mask, head, cfg.beta)
            (grad,) = torch.autograd.grad(energy.sum(), logits)
        backward_tokens += sum(len(p) for p in prompt_ids) + ids.numel()
        noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        logits = logits.detach() - cfg.step_size * grad + sigma * noise
        if callback is not None:
            callback({"phase": "langevin", "step": k, "energy": float(energy.mean())})
    final_energy, final_reward_hat = _energy(lm, prompt_ids, logits, cand, mask, head, cfg.beta)

    # (3) LM-guided top-k rounding, left to right with the hard prefix
    tokens, base_lp = _round(lm, prompts, cfg, logits, cand, mask, generator, callback)
    texts = [lm.decode(t) for t in tokens]
    rewards = score(meter, reward, [prompts.texts[i] for i in index], texts)
    residual = train_rewards.to(emb.device) - head(_pool(emb[train_ids.to(emb.device)], train_mask.to(emb.device)))
    return pack(
        lm, meter, index, tokens, rewards, base_lp, texts,
        extras={
            "init_tokens": init,
            "init_surrogate_reward": init_reward_hat.cpu(),
            "surrogate_reward": final_reward_hat.cpu(),
            "energy": final_energy.cpu(),
            "surrogate_r2": 1 - float(residual.var(correction=0)) / max(float(train_rewards.var(correction=0)), 1e-12),
            "surrogate_samples": len(train_rows),
            "lm_backward_tokens": backward_tokens,
        },
    )


def _round(lm: LM, prompts: Prompts, cfg: LangevinConfig, logits, cand, mask, generator, callback):
    """COLD rounding: among the LM's top-k next tokens, the one with the largest soft logit."""
    batch, width = mask.shape
    state = prefill(lm, prompts, cfg.num_samples)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    base_lp = torch.zeros(batch, device="cpu")
    rows = torch.arange(batch, device=mask.device)  # original row of each live row
    eos = torch.tensor(lm.eos_token_ids, device=mask.device)
    for t in range(cfg.max_new_tokens):
        logp = state.logits.float().log_softmax(-1)  # (b, V)
        top = logp.topk(min(cfg.round_k, lm.vocab_size), dim=-1).indices  # (b, k), most likely first
        soft = torch.full_like(logp, -math.inf)
        if t < width:  # soft logits of the live rows at position t; −inf off the candidates / past the span
            live = mask[rows, t].bool()[:, None]
            soft.scatter_(-1, cand[rows, t], torch.where(live, logits[rows, t], -math.inf))
        tok = top.gather(-1, soft.gather(-1, top).argmax(-1, keepdim=True)).squeeze(-1)  # ties: LM's top
        base_lp[rows.cpu()] += logp.gather(-1, tok[:, None]).squeeze(-1).cpu()
        for r, k in zip(rows.tolist(), tok.tolist(), strict=True):
            tokens[r].append(k)
        if callback is not None:
            callback({"phase": "rounding", "step": t, "live": len(rows)})
        done = torch.isin(tok, eos)
        if t == cfg.max_new_tokens - 1 or done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            state, tok, rows = lm.select(state, keep), tok[keep], rows[keep]
        state = lm.step(state, tok[:, None])
    return tokens, base_lp
