"""Property: on random small toy LMs and rewards, SMC and DGA exact mode sample the enumerated target.

Hypothesis draws a toy (the seed of its weights, 2–4 letters, answers of ≤ 2–3 tokens, sharpness,
EOS bias), a prompt, β, and a reward that is a table of arbitrary values in [0, 1] over every text
the toy can write (so SMC's twist, the reward of the partial text, is scored too, and is no better
a guide than chance). Each sampler's law is held to p_r ∝ p_θ·exp(β r), computed by enumeration,
within its Monte-Carlo tolerance (`eval.montecarlo`) plus the measured bias of its N = 64 particles.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from dgalign.eval.exact import enumerate_completions, exact_rewards, tilted, tv_distance, weighted_empirical
from dgalign.eval.montecarlo import tv_null_grouped, tv_null_iid
from dgalign.lm.toy import ToyConfig, ToyLM
from dgalign.samplers.dga.sampler import DGAConfig, sample_dga
from dgalign.samplers.smc import SMCConfig, sample_smc
from dgalign.types import Prompts
from seeds import OFFSET

# TV allowances for N = 64 particles, as the claims' (eval/claims.py): the largest TV to the target over
# 30 random problems at a large size, rounded up to 0.005, an upper estimate of the bias. SMC at 16 000
# answers: 0.0296 (4 letters × 3 tokens, β = 3.9; the other 29 ≤ 0.018). DGA at 3 000 (150 groups):
# 0.042, never above that size's own tolerance, so no bias is resolved there. At the sizes below, over 60
# other random problems, TV stayed below the tolerance alone by ≥ 0.003 (SMC) and ≥ 0.030 (DGA).
SMC_BIAS = 0.03
DGA_BIAS = 0.045


@dataclass(frozen=True)
class Problem:
    toy: ToyConfig
    prompt: str
    beta: float
    table: dict[str, float]  # r(c, y) of every text y of ≤ max_new_tokens letters, whatever c

    def reward(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return torch.tensor([self.table[c] for c in completions])


@st.composite
def problems(draw) -> Problem:
    letters = "abcd"[: draw(st.integers(2, 4))]
    length = draw(st.integers(2, 3))
    toy = ToyConfig(letters=letters, max_new_tokens=length, seed=draw(st.integers(0, 2**16)),
                    sharpness=draw(st.floats(0.3, 1.0)), eos_bias=draw(st.floats(-2.0, 0.0)))
    texts = ["".join(t) for n in range(length + 1) for t in itertools.product(letters, repeat=n)]
    values = draw(st.lists(st.floats(0.0, 1.0), min_size=len(texts), max_size=len(texts)))
    return Problem(toy, draw(st.text(letters, min_size=1, max_size=2)), draw(st.floats(0.5, 4.0)),
                   dict(zip(texts, values, strict=True)))


def held_to_target(problem: Problem, sampler, cfg, groups: int, seed: int) -> dict:
    """TV of the sampler's law (pooled over `groups` calls) to the enumerated p_r, and its (1 − 10⁻³) tolerance."""
    lm = ToyLM(problem.toy)
    prompts = Prompts.encode(lm, [problem.prompt])
    enum = enumerate_completions(lm, prompts.ids[0], cfg.max_new_tokens)
    target, _ = tilted(enum.logp, exact_rewards(lm, problem.reward, problem.prompt, enum), cfg.beta)
    generator = torch.Generator().manual_seed(seed)
    laws = torch.stack([weighted_empirical(sampler(lm, problem.reward, prompts, cfg, generator=generator), enum)
                        for _ in range(groups)])  # (G, S)
    _, tol = tv_null_iid(target, groups * cfg.num_samples) if groups == 1 else tv_null_grouped(laws)
    return {"tv": tv_distance(target, laws.mean(0)), "tv_tol": tol, "support": len(enum.sequences)}


@seed(OFFSET)
@settings(max_examples=8, deadline=None, database=None)
@given(problems())
def test_smc_and_dga_exact_mode_sample_the_enumerated_target(problem):
    """SMC: one answer per run (i.i.d.); DGA exact mode: answers pooled from shared particles, so drawn
    in 30 independent calls and toleranced from their spread (`montecarlo.tv_null_grouped`)."""
    common = {"max_new_tokens": problem.toy.max_new_tokens, "beta": problem.beta}
    smc = held_to_target(problem, sample_smc, SMCConfig(**common, num_samples=2000, particles=64), 1, OFFSET)
    assert smc["tv"] <= smc["tv_tol"] + SMC_BIAS, smc
    dga = held_to_target(problem, sample_dga, DGAConfig(**common, num_samples=20, particles=64, value="exact"), 30,
                         OFFSET)
    assert dga["tv"] <= dga["tv_tol"] + DGA_BIAS, dga
