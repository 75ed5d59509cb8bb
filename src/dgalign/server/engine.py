"""The served model: a request's alignment becomes a sampler job; a batch of jobs is one sampler call.

`prepare` checks everything a request asks for (limits, method, its config fields, reward) and
returns the batching key with the job; `run` executes a batch in the inference thread and splits
the `Samples` back per job. Rewards are built once per spec and kept.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..config import apply_overrides
from ..errors import DGAlignError, UnknownNameError
from ..ops import make_generator
from ..rewards import REWARDS, get_reward
from ..samplers import get_method, get_sampler
from ..types import LM, Prompts, Reward, SamplerConfig
from .schemas import Alignment, APIError
from .streaming import sample_base_streaming

# config fields a request sets with OpenAI's own fields, so `alignment.params` may not
RESERVED = {
    "max_new_tokens": "max_tokens",
    "num_samples": "n",
    "beta": "alignment.beta",
    "temperature": "temperature",
    "top_p": "top_p",
}

_WEIGHT = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# what a client may name unless --allow-custom-rewards: a `REWARDS` entry whose parameters are numbers
# or booleans (a string could be a path or a model id: the server would read or load what the client names)
_NUMBER_PARAM = rf"\s*[A-Za-z_]\w*\s*=\s*(?:{_WEIGHT}|True|False)\s*"
_BUILTIN_TERM = re.compile(
    rf"\s*(?P<name>[A-Za-z][\w-]*)\s*(?:\((?:{_NUMBER_PARAM}(?:,{_NUMBER_PARAM})*)?\))?\s*(?:[:@]\s*{_WEIGHT})?\s*"
)
_TERM_SEP = re.compile(r",(?![^()]*\))")  # commas outside parentheses
_MAX_REWARDS = 32  # reward specs kept built


@dataclass(frozen=True)
class Limits:
    """What a request may ask of this server."""

    max_prompt_tokens: int = 2048  # longest prompt accepted, in tokens
    max_tokens: int = 512  # largest max_tokens; also a chat request's default
    max_n: int = 16  # most choices per prompt
    custom_rewards: bool = (
        False  # accept MODULE:ATTR and hf: reward terms (they import code the client names)
    )


@dataclass
class Work:
    """One request's job: every job of a batch has the same method, reward, config and seed."""

    sampler: Callable
    method: str
    reward: Reward | None
    cfg: SamplerConfig
    prompts: Prompts
    seed: int | None  # None: the server's own generator
    stream_tokens: bool  # plain sampling streamed token by token
    on_token: Callable[[int, int], None] | None = field(
        default=None, repr=False
    )  # (choice, token), thread-side

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.cfg.num_samples


@dataclass
class Answer:
    """A job's share of a sampler call: choices in OpenAI's order (prompt-major, then n)."""

    texts: list[str]
    token_ids: list[list[int]]
    rewards: list[float | None]  # None when no reward was asked for
    cost: dict  # `Cost.as_dict()` of the whole sampler call
    batch_prompts: int  # prompts that shared the call


class Engine:
    def __init__(self, lm: LM, limits: Limits):
        self.lm = lm
        self.limits = limits
        self.generator = make_generator(None, lm.device)  # unseeded requests; inference thread only
        self._rewards: dict[str, Reward] = {}
        self._lock = threading.Lock()

    def reward(self, spec: str) -> Reward:
        """The reward a spec names, built on first use (call it off the event loop: models may load)."""
        if not self.limits.custom_rewards:
            for term in _TERM_SEP.split(spec):
                match = _BUILTIN_TERM.fullmatch(term)
                if match is None or match["name"] not in REWARDS:
                    raise APIError(
                        400,
                        f"reward term {term.strip()!r}: this server accepts built-in rewards only "
                        f"({', '.join(REWARDS)}), as NAME[(KEY=NUMBER,...)][:WEIGHT]",
                        "alignment.reward",
                    )
        with self._lock:
            if spec not in self._rewards:
                try:
                    built = get_reward(spec)
                except DGAlignError as err:
                    raise APIError(400, str(err), "alignment.reward") from None
                if len(self._rewards) >= _MAX_REWARDS:
                    self._rewards.pop(next(iter(self._rewards)))
                self._rewards[spec] = built
            return self._rewards[spec]

    def prepare(
        self,
        alignment: Alignment | None,
        reward: Reward | None,
        prompts: Prompts,
        *,
        max_tokens: int,
        n: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stream: bool,
        prompt_param: str,
    ) -> tuple[Hashable, Work]:
        """Check a request against the limits and the method's config; the batching key and the job."""
        lim = self.limits
        if n > lim.max_n:
            raise APIError(400, f"n must be at most {lim.max_n}, got {n}", "n")
        if max_tokens > lim.max_tokens:
            raise APIError(
                400, f"max_tokens must be at most {lim.max_tokens}, got {max_tokens}", "max_tokens"
            )
        longest = max(len(ids) for ids in prompts.ids)
        if longest > lim.max_prompt_tokens:
            raise APIError(
                400,
                f"the prompt is {longest} tokens; this server accepts at most {lim.max_prompt_tokens}",
                prompt_param,
                "context_length_exceeded",
            )
        if longest + max_tokens > self.lm.max_context:
            raise APIError(
                400,
                f"max_tokens {max_tokens} plus the prompt's {longest} tokens exceeds "
                f"{self.lm.name}'s context of {self.lm.max_context} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        alignment = alignment or Alignment()
        try:
            method = get_method(alignment.method)
        except UnknownNameError as err:
            raise APIError(400, str(err), "alignment.method") from None
        if method.needs_reward and reward is None:
            raise APIError(
                400,
                f'method {alignment.method!r} needs a reward, e.g. "reward": "toxicity"',
                "alignment.reward",
            )
        for key in alignment.params:
            if key in RESERVED:
                raise APIError(
                    400,
                    f"alignment.params may not set {key!r}; use the request's {RESERVED[key]}",
                    "alignment.params",
                )
        sampler, cfg = get_sampler(alignment.method)
        settings = {k: _as_text(v) for k, v in alignment.params.items()}
        settings |= {
            "max_new_tokens": str(max_tokens),
            "num_samples": str(n),
            "beta": repr(alignment.beta),
            "temperature": repr(temperature),
            "top_p": repr(top_p),
        }
        try:
            cfg = apply_overrides(cfg, settings)
        except DGAlignError as err:
            raise APIError(400, str(err).removeprefix("--set "), "alignment.params") from None
        stream_tokens = stream and alignment.method == "base"
        # equal keys may share a sampler call; a seeded job is alone, so its answer depends on its seed only
        key = (
            alignment.method,
            alignment.reward,
            repr(cfg),
            stream_tokens,
            None if seed is None else object(),
        )
        return key, Work(sampler, alignment.method, reward, cfg, prompts, seed, stream_tokens)

    def run(self, works: list[Work]) -> list[Answer]:
        """One sampler call on the concatenated prompts of a batch of jobs (inference thread)."""
        first = works[0]
        prompts = Prompts(
            [t for w in works for t in w.prompts.texts], [ids for w in works for ids in w.prompts.ids]
        )
        generator = self.generator if first.seed is None else make_generator(first.seed, self.lm.device)
        if first.stream_tokens:
            owner = [(w, c) for w in works for c in range(w.choices)]  # batch row -> (job, choice)
            out = sample_base_streaming(
                self.lm,
                first.reward,
                prompts,
                first.cfg,
                generator=generator,
                on_token=lambda row, tok: owner[row][0].on_token(owner[row][1], tok),
            )
        else:
            out = first.sampler(self.lm, first.reward, prompts, first.cfg, generator=generator)
        rewards = [None if math.isnan(r) else r for r in out.rewards.tolist()]
        cost = out.cost.as_dict()
        answers, start = [], 0
        for w in works:
            rows = sorted(
                (i for i, p in enumerate(out.prompt_index) if start <= p < start + len(w.prompts)),
                key=lambda i: out.prompt_index[i],
            )  # stable: prompt-major, draws in order
            answers.append(
                Answer(
                    [out.texts[i] for i in rows],
                    [out.token_ids[i] for i in rows],
                    [rewards[i] for i in rows],
                    cost,
                    len(prompts),
                )
            )
            start += len(w.prompts)
        return answers

    def finish_reason(self, tokens: list[int], max_tokens: int) -> str:
        """ "stop" when the model ended the answer, "length" when the limit did."""
        ended = bool(tokens) and tokens[-1] in self.lm.eos_token_ids
        return "length" if len(tokens) >= max_tokens and not ended else "stop"


def _as_text(value) -> str:
    """A JSON value as `apply_overrides` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)
