"""QAlign: Metropolis–Hastings over complete answers with suffix-resampling proposals
(Faria & Smith 2025, *Sample, Don't Search*; the QUEST sampler of Faria et al. 2024).

The chain's state is a complete answer y = (y_1, …, y_n), EOS included when drawn, and its
target is π(y) ∝ p_θ(y | c)·exp(β r(c, y)). One step:

  (1) cut index i ~ U{0, …, n − 1}; keep y_<i and draw a new suffix y'_≥i ~ q(· | c, y_<i) from
      the proposal q (the base LM under the shared temperature / top-k / top-p), so
      Q(y' | y) = (1/n)·q(y'_≥i | c, y_<i);
  (2) accept with probability min(1, α),
        log α = β (r(y') − r(y)) + log n − log n'
                + Σ_{j≥i} (log p_θ − log q)(y'_j) − Σ_{j≥i} (log p_θ − log q)(y_j),
      where p_θ(y_<i) cancels; the last two sums vanish when q = p_θ, leaving QAlign's rule.
The reverse move exists (y' has at least i + 1 tokens, so i is a valid cut of y'), so π is the
stationary law by detailed balance: exactly p_r when q is the untruncated base, and p_r
restricted to what q can draw otherwise. Chains start from a base draw and return their final state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_counts
from ..cost import Meter
from ..smc_math import uniform
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill
from .rollout import rollout


@dataclass
class QAlignConfig(SamplerConfig):
    steps: int = 32  # Metropolis–Hastings steps per chain, one suffix proposal each

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "steps")


def _splice(old: torch.Tensor, suffix: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Positions < cut from `old` (C, L), positions >= cut from `suffix` (C, W) shifted right by cut."""
    pos = torch.arange(old.shape[1], device=old.device)[None]  # (1, L)
    src = (pos - cut[:, None]).clamp(min=0)  # (C, L); below W wherever it is used, as the suffix limit is L − cut
    return torch.where(pos >= cut[:, None], suffix.gather(1, src), old)


@torch.no_grad()
def sample_qalign(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: QAlignConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """`num_samples` independent chains per prompt, batched; each returns its state after `steps` steps."""
    meter = Meter(lm)
    chains, length = len(prompts) * cfg.num_samples, cfg.max_new_tokens
    prompt_of = [c // cfg.num_samples for c in range(chains)]
    prompt_texts = [prompts.texts[p] for p in prompt_of]

    # the initial state: one base draw per chain
    out = rollout(lm, prefill(lm, prompts, cfg.num_samples), cfg, length, generator=generator)
    seqs = out.tokens  # list of C token lists
    lengths = torch.tensor([len(s) for s in seqs], device="cpu")  # (C,)
    log_ratio = out.token_base_logprobs - out.token_proposal_logprobs  # (C, L) log p_θ − log q per token
    base_tok = out.token_base_logprobs  # (C, L)
    texts = [lm.decode(s) for s in seqs]
    rewards = meter.score(reward, prompt_texts, texts)
    accepted = torch.zeros(chains, device="cpu")
    acceptance_by_step = []

    for step in range(cfg.steps):
        # (1) cut index, uniform over the n positions of each answer; re-prefill prompt + kept prefix
        cut = (uniform((chains,), lengths, generator) * lengths).long().clamp(max=lengths - 1)  # (C,)
        kept = [s[:i] for s, i in zip(seqs, cut.tolist(), strict=True)]
        state = lm.start([prompts.ids[p] + k for p, k in zip(prompt_of, kept, strict=True)])
        sfx = rollout(lm, state, cfg, length - cut, generator=generator)
        new_seqs = [k + s for k, s in zip(kept, sfx.tokens, strict=True)]
        new_lengths = cut + torch.tensor([len(s) for s in sfx.tokens], device="cpu")
        new_texts = [lm.decode(s) for s in new_seqs]
        new_rewards = meter.score(reward, prompt_texts, new_texts)

        # (2) acceptance: reward difference, index (length) terms, proposal correction
        resampled = torch.arange(length, device="cpu")[None] >= cut[:, None]  # (C, L)
        sfx_ratio = sfx.token_base_logprobs - sfx.token_proposal_logprobs  # (C, W)
        log_alpha = (
            cfg.beta * (new_rewards - rewards)
            + lengths.log() - new_lengths.log()
            + sfx_ratio.sum(-1) - (log_ratio * resampled).sum(-1)
        )
        accept = uniform((chains,), log_alpha, generator).log() < log_alpha  # (C,)

        seqs = [n if a else o for n, o, a in zip(new_seqs, seqs, accept.tolist(), strict=True)]
        texts = [n if a else o for n, o, a in zip(new_texts, texts, accept.tolist(), strict=True)]
        lengths = torch.where(accept, new_lengths, lengths)
        rewards = torch.where(accept, new_rewards, rewards)
        log_ratio = torch.where(accept[:, None], _splice(log_ratio, sfx_ratio, cut), log_ratio)
        base_tok = torch.where(accept[:, None], _splice(base_tok, sfx.token_base_logprobs, cut), base_tok)
        accepted += accept.float()
        acceptance_by_step.append(float(accept.float().mean()))
        if callback is not None:
            callback({"step": step, "acceptance": acceptance_by_step[-1]})

    return pack(
        lm,
        meter,
        prompt_of,
        seqs,
        rewards,
        base_tok.sum(-1),
        texts,
        extras={
            "steps": cfg.steps,
            "acceptance_rate": float(accepted.mean() / cfg.steps) if cfg.steps else 0.0,
            "acceptance_by_step": acceptance_by_step,  # fraction of chains that moved at each step
        },
    )
