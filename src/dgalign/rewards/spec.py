"""Reward specs: parse "toxicity:1,sentiment:0.5" into a checked weighted sum of reward callables.

    SPEC   := TERM ("," TERM)*                                  the terms' weighted sum
    TERM   := SOURCE ["(" KEY=VALUE ("," KEY=VALUE)* ")"] [(":" | "@") WEIGHT]
    SOURCE := NAME          a `REWARDS` entry: "toxicity", "length(target=20)"
            | MODULE:ATTR   an importable callable, a class being instantiated: "mypkg.rewards:score"
            | hf:MODEL      an HF sequence-classification reward model (hub id or local directory)
    WEIGHT := a decimal number, 1 when absent: "toxicity:2", "sentiment@-0.5", "mypkg.rewards:score@2"

A trailing ":" or "@" followed by a number is always the weight; after ":" anything that is not a
number is an attribute (or, after "hf:", a model), so "mypkg:score" and "toxicity:2" cannot be
confused; after a `REWARDS` name that is not also an importable module, after a second ":" and after
"@" it can only be a weight, so "toxicity:nan" and "mypkg:score@abc" are bad weights, not attributes.
A weight must be finite. Parameters go to the reward class's constructor ("hf:org/rm(dtype=bfloat16, label=1)"
too); each VALUE is a Python literal (20, 0.5, True, 'text, commas too') or else a bare word taken as a string.

A MODULE:ATTR callable may be written as TRL writes reward functions: one whose signature takes the keywords
(`def f(prompts, completions, **kwargs)`, `def f(completions, **kwargs)`) is called f(prompts=..., completions=...),
as TRL's GRPOTrainer calls its reward functions; one that does not (`def f(p, c)`) is called positionally; the
signature is read once, when the spec is built. It may return a tensor, a numpy array or a list/tuple of numbers
(TRL's `list[float]`), one per completion; every term's scores become a float32 CPU tensor in one place,
`_checked`. TRL's None for "not applicable" is refused: a sampler needs a score for every completion.

One parameter belongs to the spec, not to the reward, and any term takes it: `standardize=true`
z-scores the term, (r − μ) / σ, with μ, σ its mean and std on a built-in calibration set of 100
answers (`standardize=FILE` for a JSONL of {"prompt", "completion"}), computed once and cached
(dgalign.rewards.standardize), so terms on different scales can be weighted fairly:
"toxicity(standardize=true):1,harmless(standardize=true):0.5".
"""

import ast
import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgalign.errors import DGAlignError, RewardError, UnknownNameError
from dgalign.rewards.standardize import Standardized
from dgalign.rewards.table import REWARDS
from dgalign.types import Reward

SYNTAX = (
    "TERM[,TERM...] with TERM = NAME[(KEY=VALUE,...)][:WEIGHT], MODULE:ATTR[@WEIGHT] or hf:MODEL[@WEIGHT]"
)
# printed under `dgalign rewards`
SPEC_HELP = (
    "Combine rewards as a weighted sum: 'toxicity:1,sentiment:0.5'. Any term takes standardize=true, "
    "e.g. 'toxicity(standardize=true):1,harmless(standardize=true):1': it is z-scored, (r - mean) / std, "
    "with statistics of that reward on a built-in calibration set of 100 answers (or standardize=FILE.jsonl "
    "of {\"prompt\", \"completion\"}), computed once and cached."
)
HF_FACTORY = "dgalign.rewards.hf:HFRewardModel"

_WEIGHT = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"(?P<source>[^()]*?)(?:\((?P<params>[^()]*)\))?(?:[:@](?P<weight>{_WEIGHT}))?")
_NUMBER = re.compile(_WEIGHT)
_PARAMS_WEIGHT = re.compile(r"(?P<name>[^()]*\([^()]*\))\s*[:@](?P<weight>[^()]*)")  # a weight after (...)
_TERM_SEP = re.compile(r",(?![^()]*\))")  # commas outside parentheses
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_PARAM_SEP = re.compile(r""",(?=(?:[^'"]|'[^']*'|"[^"]*")*$)""")  # commas outside quoted values


@dataclass
class WeightedSum:
    """r(c, y) = sum_i w_i r_i(c, y) over named reward terms, each called once per batch and checked."""

    name: str  # the spec it was parsed from
    terms: list[tuple[str, float, Reward]]  # (term name, weight, reward)
    by_keyword: dict[str, bool] = field(init=False)  # term name -> called as r(prompts=..., completions=...)

    def __post_init__(self):
        self.by_keyword = {name: _by_keyword(name, reward) for name, _, reward in self.terms}

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise DGAlignError(
                f"reward {self.name!r} got {len(prompts)} prompts for {len(completions)} completions"
            )
        if not completions:
            return torch.zeros(0, device="cpu")
        return sum(
            weight * _checked(name, reward, self.by_keyword[name], prompts, completions)
            for name, weight, reward in self.terms
        )


def _by_keyword(name: str, reward: Reward) -> bool:
    """Whether `reward` is called as reward(prompts=..., completions=...), TRL's way, which a signature such as
    (completions, **kwargs) needs; else positionally, reward(prompts, completions). Read once, at build time."""
    try:
        signature = inspect.signature(reward)
    except (TypeError, ValueError):  # no signature to read (a builtin): positionally, as any reward can be
        return False
    if _binds(signature, prompts=[], completions=[]):
        return True
    if _binds(signature, [], []):
        return False
    raise DGAlignError(
        f"reward {name!r} takes {signature}; a reward is called as f(prompts, completions), or as TRL calls "
        "its reward functions, f(prompts=..., completions=...) (e.g. def f(completions, **kwargs))"
    )


def _binds(signature: inspect.Signature, *args, **kwargs) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _checked(
    name: str, reward: Reward, by_keyword: bool, prompts: list[str], completions: list[str]
) -> torch.Tensor:
    """One term's scores (B,) as a float32 CPU tensor, or a `RewardError` naming the term. The reward may return a
    tensor, a numpy array, or a list/tuple of numbers (TRL's `list[float]`), one score per completion."""
    try:
        out = reward(prompts=prompts, completions=completions) if by_keyword else reward(prompts, completions)
    except RewardError:  # a standardized term's own check: it names the reward already
        raise
    except Exception as err:
        raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err}") from err
    b = len(completions)
    if isinstance(out, list | tuple):
        if len(out) != b:
            raise RewardError(
                f"reward {name!r} returned {len(out)} scores for {b} completions; expected one per completion"
            )
        for i, x in enumerate(out):
            if not isinstance(x, numbers.Real):
                got, why = (type(x).__name__, "") if x is not None else (
                    "None", " (TRL's None, 'not applicable', is not: a sampler needs a score for every completion)")
                raise RewardError(f"reward {name!r} returned {got} at index {i} of {b}; expected a number{why}")
        scores = torch.tensor([float(x) for x in out], dtype=torch.float32, device="cpu")
    elif isinstance(out, torch.Tensor | np.ndarray):
        if out.shape != (b,):
            raise RewardError(
                f"reward {name!r} returned shape {tuple(out.shape)} for {b} completions; expected a tensor, "
                f"array or list of shape ({b},)"
            )
        if isinstance(out, np.ndarray):
            if out.dtype.kind not in "biuf":
                raise RewardError(f"reward {name!r} returned a numpy array of {out.dtype}; expected numbers")
            out = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        scores = out.to("cpu", torch.float32)
    else:
        raise RewardError(
            f"reward {name!r} returned {type(out).__name__} for {b} completions; expected a tensor, numpy array "
            f"or list of {b} numbers"
        )
    counts = {"NaN": int(scores.isnan().sum()), "inf": int(scores.isinf().sum())}
    if any(counts.values()):
        found = " and ".join(f"{kind} for {n}" for kind, n in counts.items() if n)
        raise RewardError(f"reward {name!r} returned {found} of {b} completions")
    return scores


def get_reward(spec: str) -> WeightedSum:
    """The reward a spec names (see the module docstring), as a `WeightedSum` of its terms."""
    spec = spec.strip()
    if not spec:
        raise DGAlignError(
            f"empty reward spec; a spec is {SYNTAX}, e.g. 'toxicity' or 'toxicity:1,sentiment:0.5'"
        )
    terms = []
    for text in _TERM_SEP.split(spec):
        if not text.strip():
            raise DGAlignError(f"empty term in reward spec {spec!r} (a stray comma?); a spec is {SYNTAX}")
        terms.append(_term(text.strip()))
    names = [name for name, _, _ in terms]
    for name in names:
        if names.count(name) > 1:
            raise DGAlignError(f"reward {name!r} appears twice in {spec!r}; give it one term with one weight")
    return WeightedSum(spec, terms)


def describe_rewards() -> list[dict]:
    """Name, range, description and whether it reads the answer key, of every `REWARDS` entry (`dgalign rewards
    --json`)."""
    return [
        {"name": name, "range": info.range, "description": info.description,
         "reads_references": info.reads_references} for name, info in REWARDS.items()
    ]


def reward_names(spec: str) -> list[str]:
    """The `REWARDS` entries a spec's terms name, read from its text without building them ("toxicity:1,
    persona(description='x')" -> ["toxicity", "persona"]); MODULE:ATTR and hf: terms name none."""
    sources = (re.split(r"[(:@]", term.strip(), maxsplit=1)[0].strip() for term in _TERM_SEP.split(spec))
    return [s for s in sources if s in REWARDS]


def reads_references(spec: str) -> bool:
    """Whether any term of a spec reads the prompt's reference answers (the answer key): a gold, never a guide."""
    return any(REWARDS[name].reads_references for name in reward_names(spec))


def _term(text: str) -> tuple[str, float, Reward]:
    """(name, weight, reward) of one term."""
    if "::" in text:
        raise _malformed(text, "'::' is not valid; one ':' separates MODULE from ATTR, or NAME from WEIGHT")
    match = _TERM.fullmatch(text)
    if match is None:
        if weighted := _PARAMS_WEIGHT.fullmatch(text):  # "length(target=5):nan"
            _weight(weighted["name"].strip(), weighted["weight"])
        raise _malformed(
            text, "parameters go in one (...) right after the source, and only a weight may follow them"
        )
    source, weight = match["source"].strip(), match["weight"]
    if not source:
        raise _malformed(text, "no reward is named before the weight")
    if weight is None and (bad := _trailing_weight(source)):
        _weight(*bad)
    name, w = text, 1.0
    if weight is not None:
        name = text[: match.start("weight") - 1].strip()
        w = _weight(name, weight)
    params = _params(text, match["params"])
    standardize = params.pop("standardize", False)
    reward = _build(text, source, params)
    if standardize in (False, "false"):
        return name, w, reward
    # the cache key of the statistics: the term without its weight and without this option
    key = source + (f"({','.join(f'{k}={v!r}' for k, v in sorted(params.items()))})" if params else "")
    calibration = None if standardize in (True, "true") else Path(str(standardize)).expanduser()
    scores = functools.partial(_checked, key, reward, _by_keyword(key, reward))  # what it standardizes: a tensor
    return name, w, Standardized(scores, key, calibration)


def _weight(name: str, raw: str) -> float:
    """A term's WEIGHT as a float: a decimal number, and finite ("1e999" is not)."""
    value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if not math.isfinite(value):
        raise DGAlignError(f"reward weight for {name!r} must be a finite number, got {raw!r} (e.g. '{name}:0.5')")
    return value


def _trailing_weight(source: str) -> tuple[str, str] | None:
    """(what it weights, the text) where a source without a valid WEIGHT ends in what can only be meant as
    one: anything after '@'; after a second ':' ("pkg:score:nan"); or after a `REWARDS` name and ':'
    ("toxicity:nan", "toxicity:abc"), unless that name is also an importable module (then MODULE:ATTR)."""
    if "@" in source:
        name, _, raw = source.rpartition("@")
        return name.strip(), raw
    if source.startswith("hf:"):
        return None
    if source.count(":") > 1:
        name, _, raw = source.rpartition(":")
        return name.strip(), raw
    name, colon, raw = source.partition(":")
    if colon and raw and name in REWARDS and importlib.util.find_spec(name) is None:
        return name, raw
    return None


def _build(term: str, source: str, params: dict) -> Reward:
    """The reward callable a term's source names, constructed with its parameters."""
    if source.startswith("hf:"):
        model = source.removeprefix("hf:").strip()
        if not model:
            raise _malformed(term, "hf: needs a model id or directory, e.g. 'hf:org/reward-model'")
        return _construct(term, _import(term, HF_FACTORY), params, model)
    if ":" in source:
        module, _, attr = source.partition(":")
        if not (module and attr):
            raise _malformed(term, "':' needs a reward before it and a WEIGHT or ATTR after it")
        if not (_DOTTED.fullmatch(module) and _DOTTED.fullmatch(attr)):
            raise _malformed(
                term, f"{source!r} is neither NAME:WEIGHT (a number) nor MODULE:ATTR (Python names)"
            )
        return _construct(term, _import(term, source), params)
    if source not in REWARDS:
        raise UnknownNameError("reward", source, REWARDS)
    return _construct(term, _import(term, REWARDS[source].factory), params)


def _import(term: str, target: str):
    """The object "module:attr" names; the attribute may be dotted."""
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise DGAlignError(f"reward term {term!r}: cannot import module {module!r}: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise DGAlignError(f"reward term {term!r}: module {module!r} has no attribute {attr!r}") from err
    return obj


def _construct(term: str, factory, params: dict, *args) -> Reward:
    """A class is instantiated with the term's parameters; a function is the reward itself."""
    if isinstance(factory, type):
        try:
            return factory(*args, **params)
        except TypeError as err:
            raise DGAlignError(f"reward term {term!r}: bad parameters {params}: {err}") from err
    if not callable(factory):
        raise DGAlignError(f"reward term {term!r} names {type(factory).__name__}, not a callable")
    if params:
        raise DGAlignError(f"reward term {term!r}: parameters apply only to a class, not to a function")
    return factory


def _params(term: str, params: str | None) -> dict:
    """KEY=VALUE parameters; a VALUE is a Python literal, or else a bare word taken as a string."""
    if params is None or not params.strip():
        return {}
    kwargs = {}
    for item in _PARAM_SEP.split(params):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not (eq and key.isidentifier() and value):
            raise _malformed(term, f"parameters are KEY=VALUE, got {item.strip()!r}")
        kwargs[key] = _literal(value)
    return kwargs


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _malformed(term: str, why: str) -> DGAlignError:
    return DGAlignError(f"bad reward term {term!r}: {why}; a spec is {SYNTAX}")
