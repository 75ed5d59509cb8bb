"""The served model: a request's alignment becomes a sampler job; a batch of jobs is one sampler call.

`check_chars` refuses an oversized prompt before it is tokenised; `prepare` (off the event loop)
checks everything else a request asks for (limits, method, its config fields, checkpoint, reward)
and returns the batching key with the job; `run` executes a batch in the inference thread and
splits the `Samples` back per job, then scores the tokens of the jobs that asked for `logprobs`
(`logprobs.score_tokens`). Rewards are built once per spec and kept. A client names only what the
server ships (built-in rewards with numeric parameters, shipped DGA checkpoints) unless the
operator allowed more: nothing a client sends makes the server import, read or probe a path.

`temperature: 0` is greedy decoding, exactly and without a sampler of its own: the method's config
gets `top_k=1, temperature=1.0` (the top token only; top_p and top_k then change nothing). Every
method's config has the shared `top_k`, so an aligned method at temperature 0 draws its base
proposals greedily: its candidates (BoN's n, SMC's particles, ARGS's top_k) all become the greedy
answer. A sampler call whose every request has been abandoned (its clients left) stops at its next
step: the sampler's callback raises `Abandoned`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import re
import threading
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..config import apply_overrides
from ..cost import Meter
from ..errors import DGAlignError, Unavailable, UnknownNameError
from ..ops import make_generator
from ..rewards import REWARDS, get_reward
from ..samplers import get_method, get_sampler
from ..samplers.dga.checkpoint import SHIPPED, DGANets
from ..types import LM, Prompts, Reward, SamplerConfig
from .logprobs import Scored, score_tokens
from .schemas import Alignment, APIError
from .streaming import sample_base_streaming

log = logging.getLogger("dgalign.server")

# config fields a request sets with OpenAI's own fields, so `alignment.params` may not
RESERVED = {
    "max_new_tokens": "max_tokens",
    "num_samples": "n",
    "beta": "alignment.beta",
    "temperature": "temperature",
    "top_p": "top_p",
}
REQUEST_FIELD = RESERVED | {"top_k": "top_k"}  # the request field behind each config field the request sets
GREEDY = {"temperature": "1.0", "top_k": "1"}  # temperature 0: keep the top token only, at the model's temperature

_WEIGHT = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(_WEIGHT)
_INT = re.compile(r"[+-]?\d{1,9}")  # an integer parameter: no fraction, nothing that overflows a tensor
# what a client may name unless --allow-custom-rewards: a `REWARDS` entry, its weight a finite number, and
# only the parameters its constructor types int or float, given as such (a string could be a path or a model
# id: the server would read or load what the client names); and `standardize=True|False` (any other value is
# a calibration file)
_BUILTIN_TERM = re.compile(
    rf"\s*(?P<name>[A-Za-z][\w-]*)\s*(?:\((?P<params>[^()]*)\))?\s*(?:[:@]\s*(?P<weight>{_WEIGHT}))?\s*"
)
_TERM_SEP = re.compile(r",(?![^()]*\))")  # commas outside parentheses
_FLAGS = ("True", "False", "true", "false")
_MAX_REWARDS = 32  # reward specs kept built
_MAX_CHECKPOINTS = 32  # checkpoints kept checked
CHARS_PER_TOKEN = 16  # a generous bound (English averages about 4): longer prompts are refused untokenised


@dataclass(frozen=True)
class Limits:
    """What a request may ask of this server."""

    max_prompt_tokens: int = 2048  # longest prompt accepted, in tokens
    max_tokens: int = 512  # largest max_tokens; also a chat request's default
    max_n: int = 16  # most choices per prompt
    max_body_bytes: int = 4 * 2**20  # largest request body, refused (413) before it is parsed
    custom_rewards: bool = False  # accept MODULE:ATTR, hf: and string parameters in reward terms
    checkpoint_paths: bool = False  # accept DGA checkpoint paths, not only the shipped names


class Abandoned(Exception):
    """Every request of a sampler call has been abandoned: the call stops where it is."""


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
    max_tokens: int = 1  # the request's; 0 draws nothing (echo: the prompt is only scored)
    logprobs: int | None = None  # score each token, with this many top alternatives; None: no scoring pass
    echo: bool = False  # score the prompt's tokens too
    on_token: Callable[[int, int], None] | None = field(
        default=None, repr=False
    )  # (choice, token), thread-side
    abandoned: bool = False  # its client left: set on the event loop, read by the inference thread

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.cfg.num_samples


@dataclass
class ScoreWork:
    """A /v1/score job: a reward of (prompt, completion) pairs, alone in its call."""

    reward: Reward
    prompts: list[str]
    completions: list[str]
    abandoned: bool = False


@dataclass
class Answer:
    """A job's share of a sampler call: choices in OpenAI's order (prompt-major, then n)."""

    texts: list[str]
    token_ids: list[list[int]]
    rewards: list[float | None]  # None when no reward was asked for
    cost: dict  # `Cost.as_dict()` of the whole sampler call (plus this job's `logprob_forward_tokens`)
    batch_prompts: int  # prompts that shared the call
    scored: list[Scored] | None = None  # per-token log-probs of each choice, when the job asked for them


class Engine:
    def __init__(self, lm: LM, limits: Limits):
        self.lm = lm
        self.limits = limits
        self.generator = make_generator(None, lm.device)  # unseeded requests; inference thread only
        self.prompt_tokens = min(limits.max_prompt_tokens, lm.max_context)  # the longest servable prompt
        self._rewards: dict[str, Reward] = {}
        self._checkpoints: dict[str, str | None] = {}  # checkpoint -> the model it was trained for
        self._lock = threading.Lock()

    def check_chars(self, chars: int, param: str) -> None:
        """Refuse a prompt too long to serve from its length in characters, before tokenising it."""
        limit = self.prompt_tokens * CHARS_PER_TOKEN
        if chars > limit:
            raise APIError(
                400,
                f"{param}: {chars} characters; this server accepts at most {limit} "
                f"({self.prompt_tokens} tokens of at most {CHARS_PER_TOKEN} characters)",
                param,
                "context_length_exceeded",
            )

    def check_prompt_tokens(self, tokens: int, param: str) -> None:
        """Refuse a prompt of more tokens than this server serves."""
        if tokens > self.prompt_tokens:
            raise APIError(
                400,
                f"the prompt is {tokens} tokens; this server accepts at most {self.prompt_tokens}",
                param,
                "context_length_exceeded",
            )

    def check_token_ids(self, ids: list[int], param: str) -> None:
        """Refuse token ids outside the vocabulary [0, vocab_size)."""
        bad = next((t for t in ids if not 0 <= t < self.lm.vocab_size), None)
        if bad is not None:
            raise APIError(
                400, f"{param}: token id {bad} is not in {self.lm.name}'s vocabulary [0, {self.lm.vocab_size})", param
            )

    def reward(self, spec: str, param: str = "alignment.reward") -> Reward:
        """The reward a spec names, built on first use (call it off the event loop: models may load);
        a refusal names `param`, the request field that gave the spec."""
        if not self.limits.custom_rewards:
            for term in _TERM_SEP.split(spec):
                if not _builtin(term):
                    raise APIError(
                        400,
                        f"{param}: term {term.strip()!r} is not allowed; this server accepts "
                        f"built-in rewards only ({', '.join(REWARDS)}) with their numeric parameters, "
                        "as NAME[(KEY=NUMBER,...)][:WEIGHT]",
                        param,
                    )
        with self._lock:
            if spec not in self._rewards:
                try:
                    built = get_reward(spec)
                except Unavailable as err:  # valid, but this machine lacks a part: its paths are not the client's
                    log.warning("reward %r is unavailable here: %s", spec, err)
                    raise APIError(400, f"{param}: {spec!r} is not available on this server (a model or "
                                   "file it needs is not installed; see the server log)", param,
                                   "reward_unavailable") from None
                except Exception as err:  # a constructor the client chose: what it raises is the request's
                    if not isinstance(err, DGAlignError):
                        log.warning("reward %r could not be built", spec, exc_info=True)
                    raise APIError(400, f"{param}: {_one_line(err)}", param) from None
                if len(self._rewards) >= _MAX_REWARDS:
                    self._rewards.pop(next(iter(self._rewards)))
                self._rewards[spec] = built
            return self._rewards[spec]

    def checkpoint(self, spec: str) -> None:
        """Check a DGA checkpoint a request names: shipped (by name) unless --allow-checkpoint-paths,
        loadable, and trained for the served model. A refused name is not looked up: a client learns
        nothing about the server's files."""
        param = "alignment.params.checkpoint"
        shipped = spec in SHIPPED
        if not (shipped or self.limits.checkpoint_paths):
            raise APIError(
                400,
                f"{param} must name a shipped checkpoint ({', '.join(sorted(SHIPPED))}); "
                "this server does not load checkpoints by path",
                param,
            )
        with self._lock:
            if spec not in self._checkpoints:
                try:
                    model = DGANets.load(spec).meta.get("model")
                except DGAlignError as err:
                    log.warning("checkpoint %r: %s", spec, err)
                    why = f"shipped checkpoint {spec!r} is not installed on this server" if shipped else err
                    raise APIError(400, f"{param}: {why}", param) from None
                if len(self._checkpoints) >= _MAX_CHECKPOINTS:
                    self._checkpoints.pop(next(iter(self._checkpoints)))
                self._checkpoints[spec] = model
            model = self._checkpoints[spec]
        if model != self.lm.name:
            raise APIError(
                400,
                f"{param}: {spec!r} was trained for model {model!r}; this server serves {self.lm.name!r}",
                param,
            )

    def prepare(
        self,
        alignment: Alignment | None,
        prompts: Prompts,
        *,
        max_tokens: int,
        n: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stream: bool,
        prompt_param: str,
        top_k: int | None = None,  # vLLM's; -1 and 0 turn it off; None leaves the method's
        logprobs: int | None = None,  # top alternatives per token; None: no per-token log-probs
        echo: bool = False,
    ) -> tuple[Hashable, Work]:
        """Check a request against the limits and the method's config, then build its reward (off the event
        loop: checkpoints are read, reward models may load); the batching key and the job."""
        lim = self.limits
        if n > lim.max_n:
            raise APIError(400, f"n must be at most {lim.max_n}, got {n}", "n")
        if max_tokens > lim.max_tokens:
            raise APIError(
                400, f"max_tokens must be at most {lim.max_tokens}, got {max_tokens}", "max_tokens"
            )
        longest = max(len(ids) for ids in prompts.ids)
        self.check_prompt_tokens(longest, prompt_param)
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
        for param, asked in [("logprobs", logprobs is not None), ("echo", echo)]:
            if asked and alignment.method != "base":
                raise APIError(
                    400,
                    f"{param}: logprobs are defined for plain sampling only (method 'base'); method "
                    f"{alignment.method!r}'s answers are not drawn from per-token probabilities (it chooses "
                    "among candidates by their reward), so per-token log-probs would not describe them",
                    param,
                )
        if method.needs_reward and alignment.reward is None:
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
                    f"alignment.params.{key}",
                )
        sampler, default = get_sampler(alignment.method)
        given = {k: _as_text(v) for k, v in alignment.params.items()}
        fixed = {
            "max_new_tokens": str(max(max_tokens, 1)),  # 0 draws nothing; the config still needs a length
            "num_samples": str(n),
            "beta": repr(alignment.beta),
            "temperature": repr(temperature),
            "top_p": repr(top_p),
        }
        if temperature == 0:
            fixed |= GREEDY
        elif top_k is not None:
            if "top_k" in given:
                raise APIError(400, "alignment.params.top_k: the request's top_k sets it too; give one of them",
                               "alignment.params.top_k")
            fixed["top_k"] = str(max(top_k, 0))  # vLLM's -1 is "off", as 0 is here
        cfg = _config(default, given, fixed)
        if given.get("checkpoint"):  # only DGA's config has the field, and apply_overrides accepted it
            self.checkpoint(cfg.checkpoint)
        reward = None if alignment.reward is None else self.reward(alignment.reward)
        stream_tokens = stream and alignment.method == "base"
        # equal keys may share a sampler call; a seeded job is alone, so its answer depends on its seed only
        key = (
            alignment.method,
            alignment.reward,
            repr(cfg),
            stream_tokens,
            max_tokens > 0,
            None if seed is None else object(),
        )
        return key, Work(sampler, alignment.method, reward, cfg, prompts, seed, stream_tokens, max_tokens,
                         logprobs, echo)

    def run(self, works: list[Work] | list[ScoreWork]) -> list[Answer] | list[tuple[list[float], dict]]:
        """One sampler call on the concatenated prompts of a batch of jobs (inference thread), then the
        scoring pass of the jobs that asked for logprobs; a /v1/score job is one reward call."""
        if isinstance(works[0], ScoreWork):
            return [self.score(w) for w in works]
        answers = self.sample(works) if works[0].max_tokens > 0 else self.nothing(works)
        for w, answer in zip(works, answers, strict=True):
            if w.logprobs is not None and not w.abandoned:
                before = self.lm.forward_tokens
                answer.scored = [
                    score_tokens(self.lm, w.prompts.ids[i // w.cfg.num_samples], tokens, echo=w.echo, top=w.logprobs)
                    for i, tokens in enumerate(answer.token_ids)
                ]
                answer.cost = answer.cost | {"logprob_forward_tokens": self.lm.forward_tokens - before}
        return answers

    def sample(self, works: list[Work]) -> list[Answer]:
        """The batch's sampler call, split back per job."""
        first = works[0]
        prompts = Prompts(
            [t for w in works for t in w.prompts.texts], [ids for w in works for ids in w.prompts.ids]
        )
        generator = self.generator if first.seed is None else make_generator(first.seed, self.lm.device)

        def unless_abandoned(info: dict | None = None) -> None:  # the sampler's callback, once per step
            if all(w.abandoned for w in works):
                raise Abandoned("every client of this sampler call has left")

        if first.stream_tokens:
            owner = [(w, c) for w in works for c in range(w.choices)]  # batch row -> (job, choice)

            def on_token(row: int, token: int) -> None:
                unless_abandoned()
                job, choice = owner[row]
                if not job.abandoned:  # a client that left is fed no more
                    job.on_token(choice, token)

            out = sample_base_streaming(
                self.lm, first.reward, prompts, first.cfg, generator=generator, on_token=on_token
            )
        else:
            out = first.sampler(self.lm, first.reward, prompts, first.cfg, generator=generator,
                                callback=unless_abandoned)
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

    def nothing(self, works: list[Work]) -> list[Answer]:
        """max_tokens 0: no sampler call, an empty answer per choice (the prompt is only scored)."""
        cost = Meter(self.lm).finish(generated_tokens=0).as_dict()
        size = sum(len(w.prompts) for w in works)
        return [Answer([""] * w.choices, [[] for _ in range(w.choices)], [None] * w.choices, cost, size)
                for w in works]

    def score(self, work: ScoreWork) -> tuple[list[float], dict]:
        """A reward of (prompt, completion) pairs (finite, or the call fails) and the cost of the call."""
        meter = Meter(self.lm)
        values = meter.score(work.reward, work.prompts, work.completions).tolist()
        return values, meter.finish(generated_tokens=0).as_dict()

    def finish_reason(self, tokens: list[int], max_tokens: int) -> str:
        """ "stop" when the model ended the answer, "length" when the limit did."""
        ended = bool(tokens) and tokens[-1] in self.lm.eos_token_ids
        return "length" if len(tokens) >= max_tokens and not ended else "stop"


def _builtin(term: str) -> bool:
    """Whether a term names a `REWARDS` entry with numeric parameters of its constructor's types only."""
    match = _BUILTIN_TERM.fullmatch(term)
    if match is None or match["name"] not in REWARDS:
        return False
    if match["weight"] is not None and not math.isfinite(float(match["weight"])):
        return False
    kinds = _numeric_params(match["name"])
    params = (match["params"] or "").strip()
    for item in params.split(",") if params else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if key == "standardize":
            ok = value in _FLAGS
        elif kinds.get(key) is int:
            ok = _INT.fullmatch(value) is not None
        elif kinds.get(key) is float:
            ok = _NUMBER.fullmatch(value) is not None and math.isfinite(float(value))
        else:  # a string parameter, or no parameter of that name
            ok = False
        if not (eq and ok):
            return False
    return True


@functools.cache
def _numeric_params(name: str) -> dict[str, type]:
    """The int and float parameters of a `REWARDS` entry's constructor (none when it cannot be imported:
    building it then says why)."""
    module, _, attr = REWARDS[name].factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ImportError:
        return {}
    hints = typing.get_type_hints(factory.__init__) if isinstance(factory, type) else {}
    return {k: t for k, t in hints.items() if t in (int, float)}


def _config(default: SamplerConfig, given: dict[str, str], fixed: dict[str, str]) -> SamplerConfig:
    """The method's config built as the CLI builds it; a refusal names the request field that caused it (one
    the request sets, e.g. top_k, failing on its own), else the `alignment.params` field (the first that
    fails on its own), or `alignment.params` when only their combination fails."""
    try:
        return apply_overrides(default, given | fixed)
    except (DGAlignError, ValueError) as err:
        message = str(err).removeprefix("--set ")
    for key, value in fixed.items():
        try:
            apply_overrides(default, {key: value})
        except (DGAlignError, ValueError):
            param = REQUEST_FIELD[key]
            raise APIError(400, f"{param}: {message}", param) from None
    param = "alignment.params"
    for key, value in given.items():
        try:
            apply_overrides(default, {key: value} | fixed)
        except (DGAlignError, ValueError):
            param = f"alignment.params.{key}"
            break
    raise APIError(400, f"{param}: {message}", param)


def _one_line(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return first if isinstance(err, DGAlignError) else f"{type(err).__name__}: {first}"


def _as_text(value) -> str:
    """A JSON value as `apply_overrides` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)
