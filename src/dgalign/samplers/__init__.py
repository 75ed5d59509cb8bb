"""The samplers, one file each, all with the signature
`sample_<name>(lm, reward, prompts, cfg, *, generator=None, callback=None) -> Samples`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from ..errors import UnknownNameError
from ..types import Sampler, SamplerConfig


@dataclass(frozen=True)
class Method:
    """A table entry: where the sampler and its config live, and what it does."""

    sampler: str  # "module:function", imported on use
    config: str  # "module:ConfigClass"
    needs_reward: bool
    description: str


SAMPLERS: dict[str, Method] = {
    "base": Method(
        "dgalign.samplers.ancestral:sample_base",
        "dgalign.samplers.ancestral:BaseConfig",
        needs_reward=False,
        description="plain ancestral sampling (temperature, top-p, top-k); reward only reported",
    ),
    "bon": Method(
        "dgalign.samplers.bon:sample_bon",
        "dgalign.samplers.bon:BoNConfig",
        needs_reward=True,
        description="best-of-N: N base samples sharing the prompt KV cache, keep the highest reward",
    ),
    "soft-bon": Method(
        "dgalign.samplers.soft_bon:sample_soft_bon",
        "dgalign.samplers.soft_bon:SoftBoNConfig",
        needs_reward=True,
        description="soft best-of-N: N base samples, return one drawn by softmax(β·r); tends to p·exp(βr) as N grows",
    ),
    "smc": Method(
        "dgalign.samplers.smc:sample_smc",
        "dgalign.samplers.smc:SMCConfig",
        needs_reward=True,
        description="token-level twisted SMC: particles weighted by β·r of partial text, ESS resampling, log Z",
    ),
    "qalign": Method(
        "dgalign.samplers.qalign:sample_qalign",
        "dgalign.samplers.qalign:QAlignConfig",
        needs_reward=True,
        description="QAlign: Metropolis-Hastings over full answers, proposals resample a random suffix",
    ),
    "args": Method(
        "dgalign.samplers.args:sample_args",
        "dgalign.samplers.args:ARGSConfig",
        needs_reward=True,
        description="ARGS: top-k next tokens rescored by log p + β·r(partial text); greedy or sampled (biased)",
    ),
    "langevin": Method(
        "dgalign.samplers.langevin:sample_langevin",
        "dgalign.samplers.langevin:LangevinConfig",
        needs_reward=True,
        description="COLD/SEA-style Langevin on soft logits of a base answer (fitted surrogate reward), "
        "LM-guided rounding (biased)",
    ),
    "refine": Method(
        "dgalign.samplers.refine:sample_refine",
        "dgalign.samplers.refine:RefineConfig",
        needs_reward=True,
        description="DiffPO-style refinement: Jacobi span rewrites of a base draft, greedy or MH acceptance",
    ),
    "vgd": Method(
        "dgalign.samplers.vgd:sample_vgd",
        "dgalign.samplers.vgd:VGDConfig",
        needs_reward=True,
        description="value-guided decoding (CD-FUDGE / GenARM): next token ∝ p·exp(ψ) over the top-m, ψ a value twist "
        "(DGA checkpoint or exact toy value); exact with the exact value and top_m=0",
    ),
    "cd-block": Method(
        "dgalign.samplers.cd_block:sample_cd_block",
        "dgalign.samplers.cd_block:CDBlockConfig",
        needs_reward=True,
        description="blockwise controlled decoding: K base drafts of k tokens, keep one by the value twist "
        "(sampled ∝ exp ψ or best); KL ≤ blocks·log K",
    ),
    "dga": Method(
        "dgalign.samplers.dga.sampler:sample_dga",
        "dgalign.samplers.dga.sampler:DGAConfig",
        needs_reward=True,
        description="Diffusion-Guided Alignment: reward-guided diffusion over next-token embeddings; "
        "particles>1 = exact mode",
    ),
}


def _load(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def get_method(name: str) -> Method:
    if name not in SAMPLERS:
        raise UnknownNameError("method", name, SAMPLERS)
    return SAMPLERS[name]


def get_sampler(name: str) -> tuple[Sampler, SamplerConfig]:
    """The sampler function and its default config for a method name."""
    method = get_method(name)
    return _load(method.sampler), _load(method.config)()


def describe_methods() -> list[dict]:
    """Every method: name, whether it needs a reward, description, and its config defaults."""
    return [
        {
            "name": name,
            "needs_reward": m.needs_reward,
            "description": m.description,
            "config": dataclasses.asdict(_load(m.config)()),
        }
        for name, m in SAMPLERS.items()
    ]
