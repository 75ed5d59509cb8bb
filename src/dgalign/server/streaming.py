"""Token streaming: plain sampling that reports each token as it is drawn, and the text a client may see.

Samplers decode whole batches and return at the end. Plain sampling (`base`) is streamed token by
token through `sample_base`'s callback, so the draws — and a seeded answer — are `sample_base`'s.
Aligned methods choose among candidates only at the end, so their answer is streamed once it is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..samplers.ancestral import BaseConfig, sample_base
from ..types import LM, Prompts, Reward, Samples


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

    def report(info: dict) -> None:
        for row, token in zip(info["rows"].tolist(), info["tokens"].tolist(), strict=True):
            on_token(row, token)

    return sample_base(lm, reward, prompts, cfg, generator=generator, callback=report)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class TextStream:
    """The text of one streamed choice: each new token yields the part that is safe to send.

    Text that could still become the start of a stop string, or an incomplete UTF-8 character
    (decoded as U+FFFD), is held back until the next token or the end decides it. A token in
    `stop_ids` ends the text after it (`finish` sends what is left).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str], stop_ids: frozenset[int] = frozenset()):
        self.decode = decode
        self.stops = stops
        self.stop_ids = stop_ids
        self.hold = max((len(s) for s in stops), default=1) - 1  # characters a stop string could still claim
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop string or stop token was seen: later tokens are not shown

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.tokens.append(token)
        if token in self.stop_ids:
            self.stopped = True  # the final text, and what was held back, is sent by `finish`
            return ""
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
