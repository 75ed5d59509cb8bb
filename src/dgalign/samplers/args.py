"""ARGS: reward-guided search at decode time (Khanov et al., ICLR 2024).

At each token the top-k candidates v of p_θ(· | c, y_<t) are rescored

    s(v) = log p_θ(v | c, y_<t) + w·r(c, y_<t ⊕ v)                                        (1)

with the reward on the partial text, and the next token is the best score ("greedy") or a draw
from softmax(s / temperature) over the candidates ("sample") (2). Here w = β. The partial-text
reward stands in for the soft value log E[exp(β r) | prefix], so the law is biased with respect to
p_r ∝ p_θ·exp(β r) (the exact toy tests measure by how much). k reward calls per token per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_choice, check_range
from ..cost import Meter
from ..ops import filter_logits, sample_logprobs
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill

MODES = ("greedy", "sample")


@dataclass
class ARGSConfig(SamplerConfig):
    top_k: int = 10  # candidates rescored per token: the top-k of p_θ (within top_p, if set)
    mode: str = "greedy"  # "greedy": argmax of (1); "sample": draw from softmax((1) / temperature)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("ARGS mode", self.mode, MODES)
        check_range("top_k", self.top_k, 1)  # candidates rescored per token


@torch.no_grad()
def sample_args(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: ARGSConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """ARGS with weight w = β on the partial-text reward; rows that reach EOS leave the batch."""
    meter = Meter(lm)
    size = len(prompts) * cfg.num_samples
    prompt_texts = [prompts.texts[b // cfg.num_samples] for b in range(size)]
    state = prefill(lm, prompts, cfg.num_samples)
    seqs: list[list[int]] = [[] for _ in range(size)]
    base_lp = torch.zeros(size, device="cpu")
    rewards = torch.zeros(size, device="cpu")  # reward of each row's text so far; its final value at the end
    rows = torch.arange(size, device="cpu")  # row of each live state row
    k = min(cfg.top_k, lm.vocab_size)
    eos = torch.tensor(lm.eos_token_ids, device="cpu")

    for t in range(cfg.max_new_tokens):
        # (1) candidates: the top-k of p_θ among the tokens the nucleus keeps; reward of prefix ⊕ v
        base = state.logits.float().log_softmax(-1)  # (b, V)
        kept = torch.isfinite(filter_logits(state.logits, 1.0, 0, cfg.top_p))
        cand_lp, cand = base.masked_fill(~kept, float("-inf")).topk(k, dim=-1)  # (b, k) each
        valid = torch.isfinite(cand_lp).cpu()  # (b, k)
        pairs = valid.nonzero().tolist()  # (row, candidate) pairs to score
        live, cands = rows.tolist(), cand.tolist()
        texts = [lm.decode(seqs[live[i]] + [cands[i][j]]) for i, j in pairs]
        scored = meter.score(reward, [prompt_texts[live[i]] for i, _ in pairs], texts)
        r = torch.zeros(valid.shape, device="cpu").masked_scatter(valid, scored)  # (b, k)
        score = cand_lp + cfg.beta * r.to(cand_lp.device)  # (b, k), -inf off the nucleus

        # (2) greedy or sampled choice among the candidates
        if cfg.mode == "greedy":
            pick = score.argmax(-1)
        else:
            pick = sample_logprobs((score / cfg.temperature).log_softmax(-1), generator)
        tok = cand.gather(-1, pick[:, None]).squeeze(-1)  # (b,)
        pick, tok_cpu = pick.cpu(), tok.cpu()
        base_lp[rows] += cand_lp.gather(-1, pick[:, None].to(cand_lp.device)).squeeze(-1).cpu()
        rewards[rows] = r.gather(-1, pick[:, None]).squeeze(-1)
        for b, v in zip(live, tok_cpu.tolist(), strict=True):
            seqs[b].append(v)
        if callback is not None:
            callback({"step": t, "live": len(live)})

        done = torch.isin(tok_cpu, eos)
        if t == cfg.max_new_tokens - 1 or done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            state, tok, rows = lm.select(state, keep.to(lm.device)), tok[keep.to(tok.device)], rows[keep]
        state = lm.step(state, tok[:, None])

    return pack(
        lm,
        meter,
        [b // cfg.num_samples for b in range(size)],
        seqs,
        rewards,
        base_lp,
        extras={"candidates": k, "mode": cfg.mode},
    )
