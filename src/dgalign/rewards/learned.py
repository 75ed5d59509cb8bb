"""Learned reward models: a small head on frozen text features, trained on preference pairs.

r(c, y) = head(φ(c, y)), where φ is frozen and one of (`get_features`):

    minilm         [a, q ⊙ a]: a = MiniLM embedding of the answer y, q = of the prompt's last user turn
    lm:<model>     the LM's last hidden state, mean-pooled over the answer's tokens read after the prompt
    random:<dim>   hashed bag of words: the mean of a fixed N(0, I) vector per lower-cased word of y

The head (linear or a one-hidden-layer MLP) first standardises φ with statistics of its training
features. `dgalign train-rm` trains one (dgalign.train.reward_model) and saves it as a directory
`model.safetensors` + `config.json`; the reward spec `learned(path=DIR)` scores with it. The
built-in `harmless` and `truthfulness-rm` rewards are ones trained into the cache dir on the
training split of a suite (`--pairs hh-harmless:train`, `--pairs truthfulqa:train`: pairs from
rows the suite never evaluates on). A reward only loads: without its trained model it raises a
`DGAlignError` naming the `dgalign train-rm` command that makes it.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from dgalign.data import HH_ASSISTANT, HH_HUMAN, read_pair_rows, split_transcripts
from dgalign.errors import DGAlignError, Unavailable

WEIGHTS = "model.safetensors"  # head weights and the feature standardisation buffers
CONFIG = "config.json"  # features, head shape, data, split, validation accuracy, training time


# ------------------------------------------------------------------------------------------ pairs


@dataclass
class Pairs:
    """Preference pairs: for prompt i, answer chosen[i] was preferred to rejected[i]."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: torch.Tensor) -> Pairs:
        rows = index.tolist()
        return Pairs(*([items[i] for i in rows] for items in (self.prompts, self.chosen, self.rejected)))


def read_pairs(path: Path) -> Pairs:
    """Pairs from a JSONL file (gzipped if it ends in .gz), one {"prompt"?, "chosen", "rejected"} per line."""
    return pairs_from_rows(read_pair_rows(path))


def pairs_from_rows(rows: list[dict]) -> Pairs:
    """Pairs from rows {"prompt"?, "chosen", "rejected"}.

    Without a "prompt", chosen and rejected are HH-RLHF transcripts ("\\n\\nHuman: … \\n\\nAssistant: …"):
    the prompt is their shared prefix up to its last "\\n\\nAssistant:", and the answers are what follows it.
    """
    prompts, chosen, rejected = [], [], []
    for row in rows:
        if "prompt" in row:
            p, c, r = row["prompt"], row["chosen"], row["rejected"]
        else:
            p, c, r = split_transcripts(row["chosen"], row["rejected"])
        prompts.append(p)
        chosen.append(c)
        rejected.append(r)
    return Pairs(prompts, chosen, rejected)


def last_turn(prompt: str) -> str:
    """The last user turn of an HH-RLHF transcript ("...\\n\\nHuman: X\\n\\nAssistant:" -> X), else the prompt."""
    start = prompt.rfind(HH_HUMAN)
    if start < 0:
        return prompt.strip()
    end = prompt.find(HH_ASSISTANT, start)
    return prompt[start + len(HH_HUMAN) : end if end >= 0 else None].strip()


# ------------------------------------------------------------------------------------------ features


class MiniLMFeatures:
    """[a, q ⊙ a] with a, q the unit MiniLM embeddings of the answer and of the last user turn, (B, 768)."""

    name = "minilm"

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        from dgalign.rewards import minilm

        q = minilm.encode([last_turn(p) for p in prompts])  # (B, 384)
        a = minilm.encode(completions)  # (B, 384)
        return torch.cat([a, q * a], dim=-1)


class LMFeatures:
    """The LM's last hidden state mean-pooled over the answer tokens, read after the chat-formatted prompt, (B, D)."""

    def __init__(self, model: str, *, max_prompt_tokens: int = 256, max_answer_tokens: int = 256, batch_size: int = 8):
        self.name = f"lm:{model}"
        self.model = model  # built-in name, HF id or path for dgalign.lm.load_lm
        self.max_prompt_tokens = max_prompt_tokens  # keep the last ones: the question is at the end
        self.max_answer_tokens = max_answer_tokens  # keep the first ones
        self.batch_size = batch_size  # pairs of (prompt, answer) per forward pass

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        lm = _load_lm(self.model)
        prompt_ids = [ids[-self.max_prompt_tokens :] for ids in lm.encode([last_turn(p) for p in prompts])]
        answer_ids = [ids[: self.max_answer_tokens] for ids in lm.encode(completions, raw=True)]
        # similar lengths share a batch: less padding
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(answer_ids[i]))
        out = torch.zeros(len(prompts), lm.embeddings().shape[1])
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = lm.pooled_hidden([prompt_ids[i] for i in rows], [answer_ids[i] for i in rows]).cpu()
        return out


@functools.cache
def _load_lm(model: str):
    from dgalign.lm import load_lm

    return load_lm(model)


class RandomFeatures:
    """Hashed bag of words: the mean over the answer's lower-cased words of a N(0, I) vector seeded by the word."""

    _WORD = re.compile(r"\w+")

    def __init__(self, dim: int):
        if dim <= 0:
            raise DGAlignError(f"random features need a positive dimension, got {dim}")
        self.name = f"random:{dim}"
        self.dim = dim

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(completions), self.dim)
        for row, text in enumerate(completions):
            words = self._WORD.findall(text.lower())
            if words:
                out[row] = torch.stack([_word_vector(w, self.dim) for w in words]).mean(0)
        return out


@functools.cache
def _word_vector(word: str, dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(word.encode()))  # stable across runs, unlike hash()
    return torch.randn(dim, generator=gen)


def get_features(spec: str) -> MiniLMFeatures | LMFeatures | RandomFeatures:
    """The feature extractor a spec names: minilm, lm:<model> or random:<dim>."""
    kind, _, arg = spec.partition(":")
    if kind == "minilm" and not arg:
        return MiniLMFeatures()
    if kind == "lm" and arg:
        return LMFeatures(arg)
    if kind == "random" and arg.isdigit():
        return RandomFeatures(int(arg))
    raise DGAlignError(f"unknown features {spec!r}; valid: minilm, lm:<model> (e.g. lm:smollm2-135m-instruct), random:<dim>")


# ------------------------------------------------------------------------------------------ the head


class RewardHead(nn.Module):
    """Scalar reward from features: standardise with the training statistics, then linear or MLP."""

    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))  # (D,) training feature mean
        self.register_buffer("std", torch.ones(dim))  # (D,) training feature std
        if hidden == 0:
            self.net = nn.Sequential(nn.Linear(dim, 1))
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)  # (B, D) -> (B,)


def save_rm(head: RewardHead, meta: dict, path: Path) -> None:
    """Write the head's weights and the config into an (empty, new) directory."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps(meta, indent=2))


def load_rm(path: Path) -> tuple[MiniLMFeatures | LMFeatures | RandomFeatures, RewardHead, dict]:
    """(features, head, config) of a reward model saved by `save_rm`."""
    meta = json.loads((path / CONFIG).read_text())
    head = RewardHead(meta["dim"], meta["hidden"], meta["dropout"])
    head.load_state_dict(load_file(path / WEIGHTS))
    return get_features(meta["features"]), head.eval(), meta


# ------------------------------------------------------------------------------------------ rewards


class LearnedReward:
    """A reward model trained by `dgalign train-rm`, read from its directory; unbounded, higher is preferred."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not (self.path / CONFIG).is_file():
            raise Unavailable(f"no trained reward model in {self.path}; train one with `{self.train_command()}`")

    def train_command(self) -> str:
        """The `dgalign train-rm` command that makes this reward's model (named when it is missing)."""
        return f"dgalign train-rm --pairs FILE --out {self.path}"

    @functools.cached_property
    def model(self) -> tuple[MiniLMFeatures | LMFeatures | RandomFeatures, RewardHead, dict]:
        """(features, head, config), loaded on first use."""
        return load_rm(self.path)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        features, head, _ = self.model
        return head(features(prompts, completions)).float()


class SuiteRM(LearnedReward):
    """A reward model trained on a suite's training pairs only (`dgalign train-rm --pairs SUITE:train`), read from
    <dgalign cache dir>/rewards/<name>; one trained on anything else is refused, naming the command."""

    name: str  # the reward's name, and its directory under the cache dir
    pairs: str  # the named pair set it is trained on

    def __init__(self):
        from dgalign.lm.embedded import cache_dir

        super().__init__(cache_dir() / "rewards" / self.name)
        trained_on = json.loads((self.path / CONFIG).read_text()).get("data")
        if trained_on != self.pairs:
            raise Unavailable(f"{self.path} was trained on {trained_on}, not on {self.pairs} (the suite's training "
                              f"split only); delete it and run `{self.train_command()}`")

    def train_command(self) -> str:
        # train-rm's defaults are the config these are trained with (train.rm_config.HARMLESS == RMConfig())
        return shlex.join(["dgalign", "train-rm", "--pairs", self.pairs, "--out", str(self.path)])


class Harmless(SuiteRM):
    """Bradley-Terry reward model of HH-RLHF harmlessness preferences, on the hh-harmless suite's training pairs
    (those whose first human turn is not one of the suite's held-out evaluation prompts); a few minutes to train."""

    name, pairs = "harmless", "hh-harmless:train"


class TruthfulnessRM(SuiteRM):
    """Bradley-Terry reward model of TruthfulQA's correct over incorrect answers, on the truthfulqa suite's training
    questions only; it scores (question, answer) and reads no reference answer."""

    name, pairs = "truthfulness-rm", "truthfulqa:train"
