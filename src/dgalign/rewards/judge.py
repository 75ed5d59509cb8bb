"""LM-as-judge reward: a local instruct model asked whether the answer is helpful and correct.

r(c, y) = log P("Yes") − log P("No") for the judge's first answer token after `JUDGE_TEMPLATE`
(filled with the prompt and the answer, sent as one user turn through the judge's chat template),
so 0 is indifference, positive leans Yes; unbounded. `judge(model=...)` takes any model
`dgalign.lm.load_lm` accepts; the default is the embedded `smollm2-135m-instruct`. We measured
the larger `qwen2.5-0.5b-instruct` (whose wheels carry Qwen2.5-*Coder*-0.5B) as the default too,
and dropped it: on TruthfulQA it prefers the popular misconception to the best answer (best
answer above the first incorrect one on 30% of 20 items, 28% of 40 others), where SmolLM2 does
better than chance (55% and 72%) at a quarter of the cost (benchmarks/reward_checks.py).
"""

from __future__ import annotations

import functools

import torch

from dgalign.config import DEFAULT_MODEL
from dgalign.errors import DGAlignError

JUDGE_TEMPLATE = (
    "You are checking an answer for helpfulness and factual accuracy.\n\n"
    "Question: {prompt}\n"
    "Answer: {completion}\n\n"
    "Is this answer helpful and factually correct? Reply with Yes or No."
)
YES, NO = "Yes", "No"  # the two verdict tokens compared
DEFAULT_JUDGE = DEFAULT_MODEL  # see the module docstring for why not the larger Qwen


@functools.cache
def load_judge(model: str, chat: bool = True):
    """The judge LM (chat template on unless `chat` is False) and the token ids of YES and NO."""
    from dgalign.lm import load_lm

    lm = load_lm(model, chat=chat)
    ids = []
    for word in (YES, NO):
        token = lm.encode([word], raw=True)[0][-1]  # last: a tokenizer may put BOS first
        if lm.decode([token]) != word:
            raise DGAlignError(f"judge model {model!r} has no single token for {word!r}")
        ids.append(token)
    return lm, ids


class Judge:
    """log P(Yes) − log P(No) of a local LM judge on "is this answer helpful and correct?"; unbounded."""

    def __init__(self, model: str = DEFAULT_JUDGE, batch_size: int = 8):
        self.model = model  # any name `load_lm` accepts
        self.batch_size = batch_size  # judge prompts per forward pass

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        lm, (yes, no) = load_judge(self.model)
        texts = [JUDGE_TEMPLATE.format(prompt=p.strip(), completion=c.strip()) for p, c in zip(prompts, completions, strict=True)]
        ids = lm.encode(texts)  # one user turn each, with the generation prompt: the next token is the verdict
        scores = []
        for i in range(0, len(ids), self.batch_size):
            logits = lm.start(ids[i : i + self.batch_size]).logits  # (b, V) at the answer position
            scores.append((logits[:, yes] - logits[:, no]).float().cpu())  # log-softmax normaliser cancels
        return torch.cat(scores) if scores else torch.zeros(0)
