"""Per-token log-probabilities of plain sampling: one scoring pass of the base model, in OpenAI's shapes.

A sampler returns each answer's total log p_θ(y | c); OpenAI's `logprobs` want each token's, with
the most likely alternatives. `score_tokens` re-reads the chosen tokens in one forward pass (`start`
on the context, `peek` over the rest), so the values are the base model's own log-softmax —
temperature 1, nothing truncated — whatever temperature, top_p or top_k drew the answer (vLLM's
"raw" log-probs). `completion_logprobs` and `chat_logprobs` put them in each endpoint's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..types import LM

FLOOR = -9999.0  # what a log-prob of -inf is sent as (JSON has no infinity), as vLLM does
WINDOW = 4  # tokens decoded before each one to find the text it adds (a token alone can lose its space)


@dataclass
class Scored:
    """Log p_θ of each token of (the echoed prompt and) an answer; an echoed prompt's first token has none."""

    echoed: int  # how many of `logprobs` are the prompt's (0 without echo)
    logprobs: list[float | None]  # (echoed + T,)
    top: list[list[tuple[int, float]]]  # the most likely tokens at each position, best first ([] at a None)


@torch.no_grad()
def score_tokens(lm: LM, prompt: list[int], answer: list[int], *, echo: bool, top: int) -> Scored:
    """log p_θ(y_t | y_<t) of every answer token (and of every prompt token but the first when `echo`),
    with the `top` most likely tokens at each position: one forward pass over prompt + answer."""
    seq = prompt + answer
    first = min(1, len(prompt)) if echo else len(prompt)  # the first position that is predicted
    head = [None] * first if echo else []
    if len(seq) == first:
        return Scored(len(head), head, [[] for _ in head])
    state = lm.start([seq[:first]])
    logits = state.logits[:, None]  # (1, 1, V): predicts seq[first]
    if len(seq) - first > 1:
        ahead, _ = lm.peek(state, torch.tensor([seq[first:-1]], device=state.logits.device))  # (1, L - 1, V)
        logits = torch.cat([logits, ahead.to(logits.device)], dim=1)
    logp = logits[0].float().log_softmax(-1)  # (L, V)
    ids = torch.tensor(seq[first:], device=logp.device)
    chosen = logp.gather(-1, ids[:, None]).squeeze(-1).tolist()  # (L,)
    alternatives = [[] for _ in chosen]
    if top:
        values, index = logp.topk(min(top, logp.shape[-1]), dim=-1)  # (L, top)
        alternatives = [list(zip(i, v, strict=True)) for i, v in zip(index.tolist(), values.tolist(), strict=True)]
    echoed = len(prompt) if echo else 0
    return Scored(echoed, head + chosen, [[] for _ in head] + alternatives)


def pieces(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """The text each token adds to the decoded text, read with up to WINDOW tokens before it."""
    out = []
    for j, token in enumerate(ids):
        before = decode(ids[max(j - WINDOW, 0) : j])
        after = decode(ids[max(j - WINDOW, 0) : j + 1])
        out.append(after[len(before) :] if after.startswith(before) else decode([token]))
    return out


def before_cut(decode: Callable[[list[int]], str], ids: list[int], chars: int) -> list[int]:
    """The tokens that begin within the first `chars` characters of their text (a stop string cut the rest)."""
    offset, kept = 0, []
    for token, piece in zip(ids, pieces(decode, ids), strict=True):
        if offset >= chars:
            break
        kept.append(token)
        offset += len(piece)
    return kept


def _value(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


def completion_logprobs(decode: Callable[[list[int]], str], scored: Scored, prompt: list[int], answer: list[int],
                        start: int) -> dict:
    """OpenAI's completions `logprobs` of the echoed prompt (if scored) and the answer's tokens `answer` (a prefix
    of those scored): {tokens, token_logprobs, top_logprobs, text_offset}. Offsets count characters of the
    returned text; the answer's start at `start` (the echoed prompt's length, else 0). Each `top_logprobs`
    entry holds the top alternatives and the chosen token (so up to logprobs + 1 entries)."""
    echoed = prompt if scored.echoed else []
    ids = echoed + answer
    text = pieces(decode, echoed) + pieces(decode, answer)
    offsets, at = [], 0
    for j, piece in enumerate(text):
        if j == len(echoed):
            at = start
        offsets.append(at)
        at += len(piece)
    tops = []
    for j, (token, piece) in enumerate(zip(ids, text, strict=True)):
        logprob = scored.logprobs[j]
        if logprob is None:
            tops.append(None)
            continue
        entry = {decode([alt]): _value(value) for alt, value in scored.top[j]}
        if token not in {alt for alt, _ in scored.top[j]}:
            entry.setdefault(piece, _value(logprob))
        tops.append(entry)
    return {
        "tokens": text,
        "token_logprobs": [None if lp is None else _value(lp) for lp in scored.logprobs[: len(ids)]],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(decode: Callable[[list[int]], str], scored: Scored, answer: list[int]) -> dict:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}
    for the answer's tokens `answer` (a prefix of those scored)."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode())}

    return {
        "content": [
            entry(piece, scored.logprobs[j]) | {"top_logprobs": [entry(decode([alt]), v) for alt, v in scored.top[j]]}
            for j, piece in enumerate(pieces(decode, answer))
        ]
    }
