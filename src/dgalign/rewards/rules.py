"""Rule rewards on the completion's surface: length to a target, and simple format checks."""

import re

import torch

from dgalign.errors import DGAlignError


class LengthReward:
    """-|n_words - target| / target, range (-inf, 0]: 0 at the target length, -1 at empty or twice it."""

    def __init__(self, target: int = 30):
        if target <= 0:
            raise DGAlignError(f"length target must be a positive number of words, got {target}")
        self.target = target  # words, split on whitespace

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        n_words = torch.tensor([len(c.split()) for c in completions], dtype=torch.float32)
        return -(n_words - self.target).abs() / self.target


# a completion "ends a sentence" with . ! ? or …, optionally followed by closing quotes or brackets
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
# leftover chat-template markup: <|im_start|> <|im_end|> <|eot_id|> <|endoftext|> ..., <s> </s>,
# [INST] [/INST], <start_of_turn> <end_of_turn>
_TEMPLATE_TOKEN = re.compile(r"<\|[^<>|]*\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")
# junk at the start: a line break, a tab, or two or more spaces (one space is how many tokenisers
# begin a continuation, so it is not junk)
_JUNK_START = re.compile(r"[\r\n\t]| {2}")


def format_checks(text: str) -> list[bool]:
    """The four checks of `FormatReward`, in order; an empty or blank text passes none."""
    if not text.strip():
        return [False] * 4
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [
        bool(_SENTENCE_END.search(text.rstrip())),  # 1. ends with sentence punctuation
        len(lines) == len(set(lines)),  # 2. no non-blank line appears twice
        not _TEMPLATE_TOKEN.search(text),  # 3. no leftover chat-template tokens
        not _JUNK_START.match(text),  # 4. starts without whitespace junk
    ]


class FormatReward:
    """Fraction of the four `format_checks` a completion passes, range [0, 1]."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return torch.tensor([sum(format_checks(c)) / 4 for c in completions], dtype=torch.float32)
