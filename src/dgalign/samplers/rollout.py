"""Ancestral decoding from a `DecodeState` to EOS or the length limit: the loop every sampler shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ops import gather, proposal_logprobs, sample_logprobs
from ..types import LM, DecodeState, SamplerConfig

# a proposal reshaper: (state, rows (b,) original rows, their tokens so far, log q (b, V)) -> log q' (b, V)
Law = Callable[[DecodeState, torch.Tensor, list[list[int]], torch.Tensor], torch.Tensor]


@dataclass
class Step:
    """What one decode step saw, kept by `rollout(..., record=m)` for training (DGA §2.6), on the CPU."""

    rows: torch.Tensor  # (b,) original row of each live row
    hidden: torch.Tensor  # (b, D) float32, h at the prefix
    top_ids: torch.Tensor  # (b, m) the top-m tokens of p_θ(· | prefix)
    top_logp: torch.Tensor  # (b, m) their log-probs, renormalised over the top-m
    tokens: torch.Tensor  # (b,) the token drawn


@dataclass
class Rollout:
    """Completions of B rows: tokens (EOS included when drawn) and their log-probs."""

    tokens: list[list[int]]
    base_logprobs: torch.Tensor  # (B,) log p_θ(y | prefix), untruncated base model
    proposal_logprobs: torch.Tensor  # (B,) log q(y | prefix) under the filtered proposal
    token_base_logprobs: torch.Tensor  # (B, T) log p_θ of each drawn token, 0 past the row's end
    token_proposal_logprobs: torch.Tensor  # (B, T) log q of each drawn token, 0 past the row's end
    trace: list[Step] = field(default_factory=list)  # one `Step` per decode step when recorded, else empty


def rollout(
    lm: LM,
    state: DecodeState,
    cfg: SamplerConfig,
    max_new_tokens: int | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    record: int = 0,
    law: Law | None = None,
) -> Rollout:
    """Sample every row of `state` to EOS; rows that finish leave the batch (their cache rows too).

    `max_new_tokens` is one limit for all rows or a (B,) tensor of per-row limits (each >= 1).
    `record` = m > 0 keeps a `Step` per position in `Rollout.trace` with the top-m of p_θ; 0 keeps none.
    `law` reshapes the proposal each step (value-guided decoding): law(state, rows, prefixes, log q) -> log q'
    (b, V), prefixes being the live rows' tokens so far; `proposal_logprobs` are then under it.
    The callback observes each step: {"step", "live", "rows" (b,), "tokens" (b,) the ids just drawn}.
    """
    batch = state.batch_size
    limit = torch.as_tensor(max_new_tokens, device="cpu").expand(batch)  # (B,) bookkeeping lives on the CPU
    width = int(limit.max())
    tokens: list[list[int]] = [[] for _ in range(batch)]
    base_lp = torch.zeros(batch, width, device="cpu")
    prop_lp = torch.zeros(batch, width, device="cpu")
    trace: list[Step] = []
    rows = torch.arange(batch, device="cpu")  # original row of each live row
    eos = torch.tensor(lm.eos_token_ids, device="cpu")
    for t in range(width):
        base, prop = proposal_logprobs(state.logits, cfg.temperature, cfg.top_k, cfg.top_p)  # (b, V) each
        if law is not None:
            prop = law(state, rows, [tokens[r] for r in rows.tolist()], prop)
        tok = sample_logprobs(prop, generator)  # (b,)
        base_lp[rows, t] = gather(base, tok).float().cpu()
        prop_lp[rows, t] = gather(prop, tok).float().cpu()
        for r, k in zip(rows.tolist(), tok.tolist(), strict=True):
            tokens[r].append(k)
        if record:
            top = torch.topk(state.logits.float(), record, dim=-1)  # (b, m)
            trace.append(Step(rows, state.hidden.float().cpu(), top.indices.cpu(), top.values.log_softmax(-1).cpu(),
                              tok.cpu()))
        if callback is not None:
            callback({"step": t, "live": len(rows), "rows": rows, "tokens": tok})
        done = torch.isin(tok.cpu(), eos) | (limit[rows] <= t + 1)
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            state, tok, rows = lm.select(state, keep), tok[keep.to(tok.device)], rows[keep]
        state = lm.step(state, tok[:, None])
    return Rollout(tokens, base_lp.sum(-1), prop_lp.sum(-1), base_lp, prop_lp, trace)
