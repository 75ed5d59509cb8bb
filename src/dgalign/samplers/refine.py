"""DiffPO-style iterative refinement of a full draft with parallel (Jacobi) span rewrites
(Chen et al., ACL 2025, *DiffPO: Diffusion-styled Preference Optimization*), training-free.

DiffPO rewrites a whole draft with a trained aligner LLM decoded by parallel Jacobi iterations;
its aligner checkpoints are not reachable here, so the base LM proposes the rewrites. One step
per answer y (prompt c, L tokens, the last one EOS when drawn):

  (1) span [s, s + ℓ) at a uniform start among the rewritable positions (every non-EOS one);
  (2) Jacobi sweeps: one forward over c ⊕ y' gives p(y'_i | c, y'_<i) at every position at once;
      every span position is redrawn from its conditional by inverse CDF with a uniform u_i
      frozen across sweeps (EOS excluded, so the rewrite keeps the length; shared temperature /
      top-k / top-p). Position s + j is final after j + 1 sweeps, so after ℓ sweeps — or as soon
      as a sweep changes nothing, a fixed point — the span is an exact ancestral draw
      q(y'_span | c, y_<s); fewer sweeps leave it approximate;
  (3) accept "greedy": when r(y') >= r(y); "mh": with probability min(1, α),
        log α = β (r(y') − r(y)) + log p_θ(y') − log p_θ(y) − log q(y'_span | ·) + log q(y_span | ·).
With "mh", converged sweeps and no truncation the chain is exact for p_θ·exp(βr) *within the
draft's length class* (the rewrite never changes the length or the EOS), so overall it samples
Σ_class p_θ(class)·p_r(y | class): biased in length toward the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_counts, check_range
from ..cost import Meter
from ..errors import DGAlignError
from ..ops import filter_logits, inverse_cdf
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill, score
from .rollout import rollout

ACCEPT = ("greedy", "mh")


@dataclass
class RefineConfig(SamplerConfig):
    steps: int = 8  # rewrite proposals per answer
    span: int = 8  # ℓ: tokens rewritten per proposal, a contiguous span at a uniform random start
    jacobi_iters: int = 8  # most Jacobi sweeps per proposal; >= span makes the rewrite exact
    accept: str = "greedy"  # "greedy": keep a rewrite unless the reward drops; "mh": Metropolis–Hastings with β

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "steps", "jacobi_iters")
        if self.accept not in ACCEPT:
            raise DGAlignError(f"refine: accept must be one of {', '.join(ACCEPT)}, got {self.accept!r}")
        check_range("span", self.span, 1)


def _proposal(logits: torch.Tensor, eos: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """log q over the vocabulary at the given positions (K, V): no EOS, then temperature / top-k / top-p."""
    return filter_logits(logits.float().index_fill(-1, eos, float("-inf")), cfg.temperature, cfg.top_k,
                         cfg.top_p).log_softmax(-1)


def _token_logp(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p_θ(y_t | c, y_<t) over each row's real positions: (B, T, V), (B, T), (B, T) -> (B,)."""
    return (logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask).sum(-1)


@torch.no_grad()
def sample_refine(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: RefineConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """`num_samples` drafts per prompt, each refined by `steps` span rewrites; returns the final states."""
    meter = Meter(lm)
    emb = lm.embeddings().detach()  # (V, D)
    device = emb.device
    eos = torch.tensor(lm.eos_token_ids, device=device)
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]
    prompt_ids = [prompts.ids[i] for i in index]
    prompt_texts = [prompts.texts[i] for i in index]

    # the draft: plain base samples
    draft = rollout(lm, prefill(lm, prompts, cfg.num_samples), cfg, cfg.max_new_tokens, generator=generator).tokens
    batch, width = len(draft), max(len(t) for t in draft)
    ids = torch.full((batch, width), lm.pad_token_id, dtype=torch.long, device=device)  # (B, T)
    for i, t in enumerate(draft):
        ids[i, : len(t)] = torch.tensor(t, device=device)
    lengths = torch.tensor([len(t) for t in draft], device=device)
    pos = torch.arange(width, device=device)[None]  # (1, T)
    mask = (pos < lengths[:, None]).float()  # (B, T)
    ends_eos = torch.isin(ids.gather(1, (lengths - 1)[:, None]).squeeze(1), eos)
    rewritable = lengths - ends_eos.long()  # (B,) positions 0 … rewritable−1 may change

    logits = lm.logits_from_embeddings(prompt_ids, emb[ids])  # (B, T, V) of the current answers
    rewards = score(meter, reward, prompt_texts, [lm.decode(t) for t in draft])
    trace, accepted, sweeps = [rewards.clone()], torch.zeros(batch, device="cpu"), []
    for k in range(cfg.steps):
        # (1) the span: start uniform over the rewritable positions (empty when there are none)
        start = (torch.rand(batch, generator=generator, device=device) * rewritable).long()
        span = (pos >= start[:, None]) & (pos < torch.minimum(start + cfg.span, rewritable)[:, None])  # (B, T)
        u = torch.rand(int(span.sum()), generator=generator, device=device)  # frozen across sweeps

        # (2) Jacobi sweeps from the current answer's conditionals until a fixed point or jacobi_iters
        new, new_logits, prev, used = ids, logits, ids, 0
        for _ in range(cfg.jacobi_iters):
            used += 1
            new = ids.clone()
            new[span] = inverse_cdf(_proposal(new_logits[span], eos, cfg), u)
            if torch.equal(new, prev):  # a fixed point: new_logits already belong to `new`
                break
            new_logits, prev = lm.logits_from_embeddings(prompt_ids, emb[new]), new
        sweeps.append(used)
        new_rewards = score(meter, reward, prompt_texts, [lm.decode(r[: int(n)]) for r, n in zip(new.tolist(), lengths, strict=True)])

        # (3) accept
        if cfg.accept == "greedy":
            take = new_rewards >= rewards
        else:
            log_q_new = torch.zeros(batch, device=device).index_add(
                0, span.nonzero()[:, 0], _proposal(new_logits[span], eos, cfg).gather(-1, new[span][:, None]).squeeze(-1)
            )
            log_q_old = torch.zeros(batch, device=device).index_add(
                0, span.nonzero()[:, 0], _proposal(logits[span], eos, cfg).gather(-1, ids[span][:, None]).squeeze(-1)
            )
            log_alpha = (cfg.beta * (new_rewards - rewards).to(device) + _token_logp(new_logits, new, mask)
                         - _token_logp(logits, ids, mask) - log_q_new + log_q_old)
            take = (torch.rand(batch, generator=generator, device=device).log() < log_alpha).cpu()
        ids = torch.where(take.to(device)[:, None], new, ids)
        logits = torch.where(take.to(device)[:, None, None], new_logits, logits)
        rewards = torch.where(take, new_rewards, rewards)
        accepted += take.float()
        trace.append(rewards.clone())
        if callback is not None:
            callback({"phase": "refine", "step": k, "accepted": float(take.float().mean()), "sweeps": used})

    tokens = [r[: int(n)] for r, n in zip(ids.tolist(), lengths.tolist(), strict=True)]
    base_lp = _token_logp(logits, ids, mask).cpu()
    return pack(
        lm, meter, index, tokens, rewards, base_lp,
        extras={
            "draft_tokens": draft,
            "reward_trace": torch.stack(trace),  # (steps + 1, B): reward of each answer after each step
            "acceptance_rate": (accepted / max(cfg.steps, 1)).tolist(),
            "jacobi_sweeps": sweeps,  # sweeps used by each step (batch-wide fixed point or jacobi_iters)
        },
    )
