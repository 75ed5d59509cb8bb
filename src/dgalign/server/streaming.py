"""Token streaming: plain sampling that reports each token as it is drawn, and the text a client may see.

Samplers decode whole batches and return at the end. Plain sampling (`base`) is streamed token by
token: each step is the shared `rollout` for one token, so the draws — and a seeded answer — are
exactly `sample_base`'s. Aligned methods choose among candidates only at the end, so their
answer is streamed once it is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cost import Meter
from ..samplers.ancestral import BaseConfig
from ..samplers.common import pack, prefill, score
from ..samplers.rollout import rollout
from ..types import LM, Prompts, Reward, Samples


@torch.no_grad()
def sample_base_streaming(
    lm: LM,
    reward: Reward | None,
    prompts: Prompts,
    cfg: BaseConfig,
    *,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None],
) -> Samples:
    """`sample_base`, calling `on_token(row, token)` for each token as it is drawn (rows prompt-major)."""
    meter = Meter(lm)
    state = prefill(lm, prompts, cfg.num_samples)
    batch = state.batch_size
    tokens: list[list[int]] = [[] for _ in range(batch)]
    base_lp = torch.zeros(batch)
    rows = torch.arange(batch)  # original row of each live row
    eos = set(lm.eos_token_ids)
    for t in range(cfg.max_new_tokens):
        draw = rollout(lm, state, cfg, 1, generator=generator)  # one token for every live row
        tok = [ids[0] for ids in draw.tokens]
        base_lp[rows] += draw.base_logprobs
        for r, k in zip(rows.tolist(), tok, strict=True):
            tokens[r].append(k)
            on_token(r, k)
        done = torch.tensor([k in eos for k in tok])
        if t == cfg.max_new_tokens - 1 or done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            state, rows, tok = lm.select(state, keep), rows[keep], [tok[i] for i in keep.tolist()]
        state = lm.step(state, torch.tensor(tok)[:, None])
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]
    texts = [lm.decode(t) for t in tokens]
    rewards = score(meter, reward, [prompts.texts[i] for i in index], texts)
    return pack(lm, meter, index, tokens, rewards, base_lp, texts)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class TextStream:
    """The text of one streamed choice: each new token yields the part that is safe to send.

    Text that could still become the start of a stop string, or an incomplete UTF-8 character
    (decoded as U+FFFD), is held back until the next token or the end decides it.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode = decode
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1  # characters a stop string could still claim
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop string was seen: later tokens are not shown

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.tokens.append(token)
        text, self.stopped = cut_at_stop(self.decode(self.tokens), self.stops)
        if not self.stopped:
            text = text.rstrip("\ufffd")
            text = text[: max(len(text) - self.hold, 0)]
        return self._advance(text)

    def finish(self, text: str) -> str:
        """What is left to send of the final (stop-cut) text."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
