"""Blockwise controlled decoding (Mudgal et al., ICML 2024, "Controlled Decoding from Language Models").

Target p_r ∝ p_θ·exp(β r), approached a block of k tokens at a time. For every unfinished answer:

    1. K drafts of the next k tokens from the base proposal, sharing the prefix's KV cache
    2. each scored by ψ(prefix ⊕ block), the twist read at the hidden state before the block's last
       token, on that token; a draft that completes the answer (EOS, or the length limit) is scored by
       the real reward β·r(c, answer) instead
    3. one kept, drawn ∝ exp(score) (select=sample) or the best (select=best); the others dropped

Keeping one of K base drafts costs at most log K nats of KL to the base per block (best-of-K at most
log K − (K − 1)/K, Beirami et al. 2024), so by the chain rule over blocks KL ≤ n·log K with n the mean
number of blocks an answer used: `kl_bound`. Not exact: choosing ∝ e^ψ among K drafts is
sampling-importance-resampling, which reaches p_r only as K → ∞ with ψ = V. Cost per block and row:
K·(k − 1) drafted tokens through the LM and one to commit the kept draft's last token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_choice, check_counts
from ..cost import Meter
from ..ops import gather, proposal_logprobs, sample_logprobs
from ..types import LM, DecodeState, Prompts, Reward, SamplerConfig, Samples
from .bon import bon_kl_bound
from .common import pack, prefill
from .dga.twist import build_twist
from .vgd import VALUES

SELECT = ("sample", "best")


@dataclass
class CDBlockConfig(SamplerConfig):
    value: str = "learned"  # twist ψ: learned (a DGA checkpoint's value head) | exact (toy only, by enumeration)
    checkpoint: str = ""  # `dgalign train` directory, shipped name or hf:REPO[@REV]; value=learned needs one
    block: int = 4  # k, tokens per block (the last block is clipped to the tokens left)
    drafts: int = 4  # K, base drafts per block
    select: str = "sample"  # sample: keep a draft ∝ exp(score); best: the highest score (ties: the first drawn)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("value", self.value, VALUES)
        check_counts(self, "block", "drafts")
        check_choice("select", self.select, SELECT)


@dataclass
class Drafts:
    """n drafted blocks: their tokens and base log-probs; the unfinished ones' LM state before their last token."""

    tokens: list[list[int]]  # (n,) each ≤ k tokens, EOS included where drawn
    base_logprobs: torch.Tensor  # (n,) log p_θ(block | prefix), untruncated base
    finished: torch.Tensor  # (n,) bool: the draft completes its answer
    rows: torch.Tensor  # (u,) the unfinished drafts
    state: DecodeState | None  # their state before the last token (None when u = 0)
    last: torch.Tensor  # (u,) their last token, not yet fed to the LM


def draw_drafts(lm: LM, state: DecodeState, cfg: SamplerConfig, width: int, final: bool,
                generator: torch.Generator | None) -> Drafts:
    """`width` tokens for every row of `state` from the base proposal; `final`: the block reaches the length limit."""
    n = state.batch_size
    tokens: list[list[int]] = [[] for _ in range(n)]
    base_lp = torch.zeros(n, device="cpu")
    finished = torch.zeros(n, dtype=torch.bool, device="cpu")
    rows = torch.arange(n, device="cpu")  # draft of each live state row
    eos = torch.tensor(lm.eos_token_ids, device="cpu")
    for j in range(width):
        base, prop = proposal_logprobs(state.logits, cfg.temperature, cfg.top_k, cfg.top_p)  # (b, V) each
        tok = sample_logprobs(prop, generator)  # (b,)
        base_lp[rows] += gather(base, tok).cpu()
        for r, v in zip(rows.tolist(), tok.tolist(), strict=True):
            tokens[r].append(v)
        ended = torch.isin(tok.cpu(), eos) | (final and j == width - 1)
        finished[rows[ended]] = True
        if ended.all():
            return Drafts(tokens, base_lp, finished, rows[:0], None, tok[:0])
        if ended.any():
            keep = (~ended).nonzero().squeeze(-1)
            state, tok, rows = lm.select(state, keep.to(tok.device)), tok[keep.to(tok.device)], rows[keep]
        if j < width - 1:
            state = lm.step(state, tok[:, None])
    return Drafts(tokens, base_lp, finished, rows, state, tok)


@torch.no_grad()
def sample_cd_block(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: CDBlockConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Blockwise CD with the twist `cfg.value`; answers that finish leave the batch."""
    twist = build_twist(cfg.value, lm, reward, prompts, beta=cfg.beta, max_new_tokens=cfg.max_new_tokens,
                        checkpoint=cfg.checkpoint)
    meter = Meter(lm)
    size, k = len(prompts) * cfg.num_samples, cfg.drafts
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]  # prompt of each answer
    answers: list[list[int]] = [[] for _ in range(size)]
    base_lp = torch.zeros(size, device="cpu")
    rewards = torch.full((size,), float("nan"), device="cpu")
    blocks = torch.zeros(size, device="cpu")  # blocks each answer used
    rows = torch.arange(size, device="cpu")  # answer of each state row; all have the same length
    state = prefill(lm, prompts, cfg.num_samples)
    while len(rows):
        done_len = len(answers[int(rows[0])])
        width = min(cfg.block, cfg.max_new_tokens - done_len)
        # 1. K drafts per answer, drafts of answer i at i·K … i·K + K − 1
        owner = rows.repeat_interleave(k)  # (n,) answer of each draft
        rep = torch.arange(len(rows), device=state.logits.device).repeat_interleave(k)
        drafts = draw_drafts(lm, lm.select(state, rep), cfg, width, done_len + width == cfg.max_new_tokens, generator)

        # 2. scores: ψ(prefix ⊕ block) for unfinished drafts, β·r(c, answer) for finished ones
        scores = torch.zeros(len(owner), device="cpu")
        draft_r = torch.full((len(owner),), float("nan"), device="cpu")
        fin = drafts.finished.nonzero().squeeze(-1).tolist()
        if fin:
            texts = [lm.decode(answers[int(owner[i])] + drafts.tokens[i]) for i in fin]
            draft_r[fin] = meter.score(reward, [prompts.texts[index[int(owner[i])]] for i in fin], texts)
            scores[fin] = cfg.beta * draft_r[fin]
        unf = drafts.rows.tolist()
        if unf:
            psi = twist([index[int(owner[i])] for i in unf], [answers[int(owner[i])] + drafts.tokens[i][:-1] for i in unf],
                        drafts.state.hidden, drafts.last[:, None])  # (u, 1)
            scores[unf] = psi[:, 0].float().cpu()

        # 3. keep one draft per answer
        grouped = scores.view(len(rows), k)  # (b, K)
        pick = grouped.argmax(-1) if cfg.select == "best" else sample_logprobs(grouped.log_softmax(-1), generator)
        chosen = (torch.arange(len(rows), device="cpu") * k + pick.cpu()).tolist()  # (b,) draft ids
        for i in chosen:
            answers[int(owner[i])] += drafts.tokens[i]
        base_lp[rows] += drafts.base_logprobs[chosen]
        blocks[rows] += 1
        done = drafts.finished[chosen]  # (b,)
        rewards[rows[done]] = draft_r[chosen][done]
        if callback is not None:
            callback({"step": done_len, "live": len(rows), "rows": rows})
        if done.all():
            break
        slot = torch.full((len(owner),), -1, dtype=torch.long, device="cpu")  # draft -> row of drafts.state
        slot[drafts.rows] = torch.arange(len(unf), device="cpu")
        keep = slot[torch.tensor(chosen, device="cpu")[~done]].to(drafts.last.device)
        state = lm.step(lm.select(drafts.state, keep), drafts.last[keep][:, None])  # commit the kept block
        rows = rows[~done]

    n_blocks = float(blocks.mean())
    per_block = math.log(k) if cfg.select == "sample" else bon_kl_bound(k)
    return pack(lm, meter, index, answers, rewards, base_lp, kl_bound=n_blocks * per_block,
                extras={"drafts": k, "block": cfg.block, "select": cfg.select, "mean_blocks": n_blocks})
