"""Reward functions written as for TRL's GRPOTrainer (`reward(prompts, completions, **kwargs) -> list[float]`),
named in specs as `trl_rewards:NAME` (tests/ is on sys.path) by tests/test_rewards_user.py."""

import numpy as np
import torch


def toy_list(prompts, completions, **kwargs):
    """The toy's reward (dgalign.eval.exact.toy_reward), (#a − ½·#c) / 3, as TRL's list of floats."""
    return [(c.count("a") - 0.5 * c.count("c")) / 3 for c in completions]


def n_words(completions, **kwargs):
    """TRL's common form: only the completions are named, the rest arrive in kwargs."""
    return [float(len(c.split())) for c in completions]


def keyword_only(*, prompts, completions):
    return tuple(float(len(p) - len(c)) for p, c in zip(prompts, completions, strict=True))


def positional(p, c):
    """Names of its own: called positionally, (prompts, completions)."""
    return np.array([len(x) + 0.5 * len(y) for x, y in zip(p, c, strict=True)])  # float64


def int_array(prompts, completions, **kwargs):
    return np.array([len(c) for c in completions])  # int64


def int_tensor(prompts, completions, **kwargs):
    return torch.tensor([len(c) for c in completions])  # int64


def bools(prompts, completions, **kwargs):
    return [c.startswith("a") for c in completions]


def numpy_scalars(prompts, completions, **kwargs):
    return [np.float32(len(c)) for c in completions]


class Recorder:
    """Records the keyword arguments it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return [0.0] * len(kwargs["completions"])


# -- broken ones
def none_at_one(prompts, completions, **kwargs):
    return [None if i == 1 else 0.0 for i in range(len(completions))]


def strings(prompts, completions, **kwargs):
    return ["1.5"] * len(completions)


def short(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def nan_last(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1) + [float("nan")]


def as_dict(prompts, completions, **kwargs):
    return {"score": [0.0] * len(completions)}


def object_array(prompts, completions, **kwargs):
    return np.array([object() for _ in completions])


def matrix(prompts, completions, **kwargs):
    return np.zeros((len(completions), 2))


def completions_only(completions):
    """Takes neither (prompts, completions) nor prompts=...: it cannot be a reward."""
    return [0.0] * len(completions)


def three(prompts, completions, answers):
    return [0.0] * len(completions)
