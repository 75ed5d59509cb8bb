"""Rounding a block's chain to tokens (DGA §2.7), with the explicit law q it drew from.

`posterior` rounding (the default) draws each position from the chain's final tilted posterior
π(v | x_1) ∝ p_θ,m(v)·e^{ψ_v}·N(x_1; √ᾱ_1 e_v, (1 − ᾱ_1) I): if x_1 follows the tilted process, v
then follows p_θ,m·e^ψ exactly, and the prior is counted once. `prior` rounding is the paper's
ρ(y | x̂_0) ∝ p_θ(y)·exp(−‖x̂_0 − e_y‖²/2τ²), which counts p_θ a second time on top of x̂_0 (it
sharpens the answers towards the base's likeliest tokens).

Candidates are the top-m of p_θ. With `tail=base` (k = 1) the tokens outside them keep their base
probability: the chain's candidates are drawn with their base mass M and the rest with p_θ, so the
truncation adds no drift (with `tail=drop` the answers live on the top-m, which alone costs
−log M nats per token). A block's proposal is mixed with ε·p_θ (defensive importance sampling,
Hesterberg 1995) so exact-mode weights stay ≤ e^Δψ/ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...ops import gather, rand, sample_logprobs
from ...types import LM, DecodeState
from .chain import ChainOut
from .denoiser import Candidates, candidates, sq_dist
from .twist import step_law


@dataclass
class Rounded:
    """One block's tokens and the log-laws of each row's block."""

    tokens: torch.Tensor  # (R, k), tokens after a row's end replaced by EOS
    kept: torch.Tensor  # (R, k) bool: the tokens that belong to the answer (up to the first EOS)
    log_q: torch.Tensor  # (R,) log q(block | chain), the proposal exact mode corrects
    log_p: torch.Tensor  # (R,) log of the base law exact mode targets (p_θ, or p_θ,m with tail=drop)
    base: torch.Tensor  # (R,) log p_θ(block | prefix), untruncated
    log_tilt: torch.Tensor | None  # (R,) log of the twisted law p·e^ψ/Z the chain targets (k = 1, with a twist)
    hidden: torch.Tensor | None  # (R, k − 1, Dh) the LM's hidden states on the block (k > 1)


def rounding_law(out: ChainOut, cfg, abar_1: float) -> torch.Tensor:
    """log ρ(v | chain) over each position's candidates, (R·k, m)."""
    if cfg.rounding == "posterior":  # the tilted posterior when the chain ran the tilted process (grad ≠ none)
        return out.log_pi if out.psi is None or not out.guided else (out.log_pi + out.psi).log_softmax(-1)
    tau2 = cfg.round_tau**2 if cfg.round_tau > 0 else (1 - abar_1) / abar_1
    return (out.cand.logp - sq_dist(out.x0, out.cand) / (2 * tau2)).log_softmax(-1)


def round_token(out: ChainOut, log_rho: torch.Tensor, state: DecodeState, mix: float, tail: str,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                           torch.Tensor | None]:
    """k = 1: one token per row from q = (1 − ε)·[M·ρ on the candidates, p_θ off them] + ε·p_θ.

    Returns the tokens (R,), log q, the targeted base's log p, the untruncated log p_θ and the
    twisted law's log (None without a twist), each (R,).
    """
    cand = out.cand
    full = state.logits.float().log_softmax(-1)  # (R, V)
    cand_full = full.gather(1, cand.ids)  # (R, m) untruncated log p_θ of the candidates
    law = step_law(full, cand.ids, out.psi, tail) if out.psi is not None else None  # the twisted law (vgd's)
    if tail == "base":
        inside = log_rho + cand_full.logsumexp(-1, keepdim=True)  # ρ carries the candidates' base mass M
        if mix > 0:
            inside = torch.logaddexp(inside + math.log1p(-mix), cand_full + math.log(mix))
        log_q_all = full.scatter(1, cand.ids, inside)  # (R, V): the tail keeps p_θ
        tok = sample_logprobs(log_q_all, generator)
        log_q, log_p = gather(log_q_all, tok), gather(full, tok)
        return tok, log_q, log_p, log_p, gather(law, tok) if law is not None else None
    log_q_all = torch.logaddexp(log_rho + math.log1p(-mix), cand.logp + math.log(mix)) if mix > 0 else log_rho
    pick = sample_logprobs(log_q_all, generator)
    tok = gather(cand.ids, pick)
    return tok, gather(log_q_all, pick), gather(cand.logp, pick), gather(full, tok), \
        gather(law, tok) if law is not None else None


def round_block(lm: LM, out: ChainOut, log_rho: torch.Tensor, state: DecodeState, cand0: Candidates,
                emb: torch.Tensor, cfg, mix: float, live: torch.Tensor, eos: torch.Tensor, k: int,
                generator: torch.Generator | None) -> Rounded:
    """A block of k tokens per row from the rounding law, its log q, log p and (k > 1) the LM's hidden states on it.

    k > 1: every position is drawn from its ρ at once; with probability ε a row takes a block drawn from
    p_θ instead (`draft_block`), q(y) = (1 − ε)·Π_j ρ_j(y_j) + ε·p_θ(y | prefix).
    """
    rows = live.shape[0]
    if k == 1:
        tok, log_q, log_p, base, tilt = round_token(out, log_rho, state, mix, cfg.tail, generator)
        tok = torch.where(live, tok, eos[0])[:, None]
        return Rounded(tok, _kept(tok, live, eos), log_q, log_p, base, tilt, None)
    tok = gather(out.cand.ids, sample_logprobs(log_rho, generator)).view(rows, k)
    if mix > 0:
        from_base = rand((rows,), out.x0, generator) < mix
        if from_base.any():  # the draft costs k(k−1)/2 peeked tokens per row
            tok = torch.where(from_base[:, None], draft_block(lm, state, cand0, emb, cfg.top_m, k, generator), tok)
    tok = torch.where(live[:, None], tok, eos[0])
    kept = _kept(tok, live, eos)
    # log p_θ(y_j | prefix ⊕ y_<j) needs the LM on y itself (the chain's last peek, when y is that block)
    same = out.peeked is not None and torch.equal(out.peeked[0][live], tok[live, :-1])
    logits, hidden = out.peeked[1:] if same else lm.peek(state, tok[:, :-1])
    base = torch.cat([state.logits[:, None], logits], 1).float().log_softmax(-1)
    base = base.gather(-1, tok[..., None]).squeeze(-1)  # (R, k)
    block_base = torch.where(kept, base, 0.0).sum(1)  # untruncated: k > 1 exact mode has top_m = 0
    rho_y = torch.where(out.cand.ids == tok.view(-1, 1), log_rho, -math.inf).logsumexp(-1).view(rows, k)
    block_lq = torch.where(kept, rho_y, 0.0).sum(1)
    if mix > 0:
        block_lq = torch.logaddexp(block_lq + math.log1p(-mix), block_base + math.log(mix))
    return Rounded(tok, kept, block_lq, block_base, block_base, None, hidden)


def _kept(tok: torch.Tensor, live: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """(R, k) bool: a live row's tokens up to and including its first EOS."""
    is_eos = torch.isin(tok, eos).long()
    return live[:, None] & (is_eos.cumsum(1) - is_eos == 0)


def draft_block(lm: LM, state, first: Candidates, emb: torch.Tensor, top_m: int, k: int, generator) -> torch.Tensor:
    """k tokens drawn one after another from the top-m of p_θ (draft init), (R, k); later positions by `peek`."""
    drafted = gather(first.ids, sample_logprobs(first.logp, generator))[:, None]
    while drafted.shape[1] < k:
        nxt = candidates(lm.peek(state, drafted)[0][:, -1], emb, top_m)
        drafted = torch.cat([drafted, gather(nxt.ids, sample_logprobs(nxt.logp, generator))[:, None]], 1)
    return drafted
