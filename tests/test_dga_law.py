"""The law of DGA fast mode's answers on the toy: the untilted tail, and the KL estimate against the exact KL.

Tolerances are from each estimator's noise (false failure ≤ 10⁻³): TV by `tv_null_iid`; the plug-in
KL(q̂ ‖ p_θ) of the empirical law by its multinomial bootstrap (3.3 standard deviations, plus its
O(support / n) upward bias).
"""

from __future__ import annotations

import math

import torch

from dgalign.config import apply_overrides
from dgalign.eval.exact import (
    empirical,
    enumerate_completions,
    exact_rewards,
    tilted,
    toy_reward,
    tv_distance,
)
from dgalign.eval.montecarlo import tv_null_iid
from dgalign.lm.toy import ToyLM
from dgalign.samplers.dga.sampler import DGAConfig, sample_dga
from dgalign.types import Prompts
from seeds import OFFSET


def _toy(n: int, seed: int, **sets):
    lm = ToyLM()
    prompts = Prompts.encode(lm, ["ab"])
    cfg = apply_overrides(DGAConfig(), {"max_new_tokens": "3", "num_samples": str(n), "beta": "4",
                                        **{k: str(v) for k, v in sets.items()}})
    out = sample_dga(lm, toy_reward, prompts, cfg, generator=torch.Generator().manual_seed(seed))
    enum = enumerate_completions(lm, prompts.ids[0], 3)
    return out, enum, empirical(out.token_ids, enum), lm


def _kl(q: torch.Tensor, p: torch.Tensor) -> float:
    keep = q > 0
    return float((q[keep] * (q[keep].log() - p[keep].log())).sum())


def test_an_untilted_tail_keeps_the_base_law_and_a_dropped_one_truncates():
    # top_m = 1 with no guidance: tail=base draws the likeliest token with its own mass and the rest from
    # p_θ, i.e. the base law itself; tail=drop can only ever take the likeliest token (greedy)
    n = 4000
    out, enum, q, _ = _toy(n, 11 + OFFSET, value="none", grad="none", top_m=1, tail="base")
    base = enum.logp.exp()
    _, tol = tv_null_iid(base, n)
    assert tv_distance(base, q) <= tol
    out, _, q, _ = _toy(200, 12 + OFFSET, value="none", grad="none", top_m=1, tail="drop")
    assert len(set(map(tuple, out.token_ids))) == 1


def test_fast_mode_kl_estimate_matches_the_exact_kl_of_its_answers():
    # with the exact twist DGA's default chain samples p_r; its estimate (Σ log of the twisted law it
    # targets − log p_θ) must agree with KL(q̂ ‖ p_θ) computed from the answers' empirical law
    n = 4000
    out, enum, q, _ = _toy(n, 13 + OFFSET, value="exact")
    base = enum.logp.exp()
    plug_in = _kl(q, base)
    torch.manual_seed(1 + OFFSET)  # the bootstrap draws
    draws = torch.distributions.Multinomial(n, probs=q).sample((300,)) / n
    sd = float(torch.tensor([_kl(d, base) for d in draws]).std())
    bias = len(enum.sequences) / (2 * n)  # the plug-in's upward bias, (support − 1)/2n to first order
    assert abs(out.kl_to_base - plug_in) <= 3.3 * sd + bias, (out.kl_to_base, plug_in, sd)
    # and it lands on the target's own KL(p_r ‖ p_θ) = β·E[r] − log Z
    rewards = exact_rewards(ToyLM(), toy_reward, "ab", enum)
    target, log_z = tilted(enum.logp, rewards, 4.0)
    exact_kl = 4.0 * float((target * rewards).sum()) - log_z
    assert math.isclose(exact_kl, _kl(target, base), abs_tol=1e-9)
    assert abs(out.kl_to_base - exact_kl) <= 3.3 * sd + bias
