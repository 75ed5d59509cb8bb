"""The value-reading peers of DGA on the toy LM: vgd, cd-block and smc with value twists.

Their exactness claims (vgd-exact-*, smc-exact-twisted-b4) are in test_claims.py; here: the step law's
maths, bookkeeping, cost, and the direction and bounds of the inexact cd-block. Tolerances are set
from each estimator's noise at false-failure probability δ = 10⁻³ (`eval/montecarlo.py`).
"""

import dataclasses
import math

import pytest
import torch
from scipy import stats

from dgalign.eval.exact import enumerate_completions, exact_rewards, run_exact, tilted, toy_reward
from dgalign.eval.montecarlo import DELTA
from dgalign.samplers.ancestral import BaseConfig, sample_base
from dgalign.samplers.bon import bon_kl_bound
from dgalign.samplers.cd_block import CDBlockConfig, sample_cd_block
from dgalign.samplers.dga.checkpoint import DGANets
from dgalign.samplers.smc import SMCConfig, sample_smc
from dgalign.samplers.vgd import VGDConfig, sample_vgd, step_law
from dgalign.types import Prompts
from seeds import OFFSET

PROMPTS = ["ab", "ca"]
Z = stats.norm.ppf(1 - DELTA)  # one-sided normal quantile for a difference of means


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """An untrained DGA checkpoint for the toy whose value head favours token 0 ("a"): a learned twist, no LM calls."""
    path = tmp_path_factory.mktemp("vgd") / "ck"
    with torch.random.fork_rng():  # the nets' init draws from the global RNG: fixed here, whatever ran before
        torch.manual_seed(0)
        nets = DGANets.fresh(8, 8, 4, width=16, meta={"model": "toy"})
    with torch.no_grad():
        nets.value.token_bias.weight.copy_(torch.tensor([[0.5], [0.0], [-0.5], [0.0]]))
    nets.save(path)
    return str(path)


def log_z_of(toy, prompt: str, beta: float) -> float:
    enum = enumerate_completions(toy, toy.encode([prompt])[0], toy.max_new_tokens)
    return tilted(enum.logp, exact_rewards(toy, toy_reward, prompt, enum), beta)[1]


def forward_tokens_of_plain_decoding(prompts: Prompts, out) -> int:
    """Prefill once per prompt, then one LM position per generated token but the last of each answer."""
    return sum(len(p) for p in prompts.ids) + sum(len(t) - 1 for t in out.token_ids)


# -- the step law ---------------------------------------------------------------------------------
def test_step_law_keeps_the_top_m_mass_and_the_tail():
    gen = torch.Generator().manual_seed(0)
    prop = (torch.randn(5, 10, generator=gen) * 2).log_softmax(-1)  # (b, V)
    top = prop.topk(3, dim=-1).indices  # (b, m)
    psi = torch.randn(5, 3, generator=gen) * 3
    inside = torch.zeros(5, 10, dtype=torch.bool).scatter(-1, top, True)
    q = step_law(prop, top, psi, "base").exp()
    assert torch.allclose(q.sum(-1), torch.ones(5))
    assert torch.allclose((q * inside).sum(-1), (prop.exp() * inside).sum(-1))  # S keeps its base mass M
    assert torch.allclose(q[~inside], prop.exp()[~inside])  # the tail is untilted
    tilt_s = (prop.gather(-1, top) + psi).softmax(-1)  # within S: ∝ p·e^ψ
    assert torch.allclose(q.gather(-1, top) / q.gather(-1, top).sum(-1, keepdim=True), tilt_s, atol=1e-6)
    dropped = step_law(prop, top, psi, "drop").exp()
    assert torch.allclose(dropped.gather(-1, top), tilt_s, atol=1e-6) and (dropped[~inside] == 0).all()
    whole = torch.arange(10).expand(5, 10)  # top_m = 0: q = p·e^ψ / Σ p·e^ψ, whatever the tail
    psi_all = torch.randn(5, 10, generator=gen)
    for tail in ("base", "drop"):
        assert torch.allclose(step_law(prop, whole, psi_all, tail).exp(), (prop + psi_all).softmax(-1), atol=1e-6)


# -- vgd ------------------------------------------------------------------------------------------
def test_vgd_exact_reports_the_exact_kl_and_log_probs(toy, gen):
    """With ψ = V over the whole vocabulary, log q(y) − log p_θ(y) = β r(y) − log Z for every answer."""
    prompts = Prompts.encode(toy, PROMPTS)
    beta = 4.0
    out = sample_vgd(toy, toy_reward, prompts, VGDConfig(max_new_tokens=3, num_samples=500, beta=beta, value="exact",
                                                         top_m=0), generator=gen)
    assert out.prompt_index == [0] * 500 + [1] * 500 and out.cost.reward_calls == 1000
    assert torch.allclose(out.rewards, toy_reward([PROMPTS[i] for i in out.prompt_index], out.texts))
    exact_lp = toy.sequence_logprobs([prompts.ids[i] for i in out.prompt_index], out.token_ids)
    assert torch.allclose(out.base_logprobs, exact_lp, atol=1e-4)
    log_z = torch.tensor([log_z_of(toy, p, beta) for p in PROMPTS])[out.prompt_index]
    assert out.kl_to_base == pytest.approx(float((beta * out.rewards.double() - log_z).mean()), abs=1e-4)


def test_vgd_learned_twist_costs_the_lm_tokens_of_plain_sampling(toy, toy_checkpoint, gen):
    prompts = Prompts.encode(toy, PROMPTS)
    cfg = VGDConfig(max_new_tokens=3, num_samples=200, beta=4.0, checkpoint=toy_checkpoint)
    out = sample_vgd(toy, toy_reward, prompts, cfg, generator=gen)
    base = sample_base(toy, toy_reward, prompts, BaseConfig(max_new_tokens=3, num_samples=200), generator=gen)
    for o in (out, base):
        assert o.cost.lm_forward_tokens == forward_tokens_of_plain_decoding(prompts, o)
    assert out.cost.reward_calls == base.cost.reward_calls == 400
    assert out.kl_to_base > 0.05  # the head does tilt the law


def test_vgd_tails(toy, gen):
    """top_m = 1: tilting one token is no tilt (tail=base: the base law, KL 0); dropping the tail is greedy."""
    prompts = Prompts.encode(toy, ["ab"])
    cfg = VGDConfig(max_new_tokens=3, num_samples=300, beta=4.0, value="exact", top_m=1)
    same = sample_vgd(toy, toy_reward, prompts, cfg, generator=gen)
    assert abs(same.kl_to_base) < 1e-5 and len({tuple(t) for t in same.token_ids}) > 5
    greedy = sample_vgd(toy, toy_reward, prompts, dataclasses.replace(cfg, tail="drop"), generator=gen)
    assert len({tuple(t) for t in greedy.token_ids}) == 1
    assert greedy.kl_to_base == pytest.approx(-float(greedy.base_logprobs.mean()), abs=1e-5)  # log q = 0


def test_vgd_without_a_checkpoint_says_so(toy):
    from dgalign.errors import DGAlignError

    with pytest.raises(DGAlignError, match="needs --set checkpoint=DIR"):
        sample_vgd(toy, toy_reward, Prompts.encode(toy, ["ab"]), VGDConfig(max_new_tokens=3))


# -- smc with value twists ------------------------------------------------------------------------
def test_smc_twisted_by_the_exact_value_has_constant_weights(toy, gen):
    prompts = Prompts.encode(toy, PROMPTS)
    cfg = SMCConfig(max_new_tokens=3, num_samples=100, beta=4.0, particles=4, twist="exact", proposal="twisted",
                    top_m=0)
    out = sample_smc(toy, toy_reward, prompts, cfg, generator=gen)
    assert torch.allclose(out.extras["run_final_ess"], torch.full((200,), 4.0))
    assert (out.extras["run_resamples"] == 0).all()
    log_z = torch.tensor([log_z_of(toy, p, 4.0) for p in PROMPTS], dtype=torch.float64)
    assert torch.allclose(out.extras["run_log_z"].double(), log_z.repeat_interleave(100), atol=1e-4)  # Ẑ = Z per run
    assert out.cost.reward_calls == 200 * 4  # the value twist calls no reward before the end


@pytest.mark.parametrize("proposal", ["base", "twisted"])
def test_smc_with_a_learned_twist(toy, toy_checkpoint, gen, proposal):
    prompts = Prompts.encode(toy, PROMPTS)
    cfg = SMCConfig(max_new_tokens=3, num_samples=50, beta=4.0, particles=8, twist="learned",
                    checkpoint=toy_checkpoint, proposal=proposal, top_m=2)
    out = sample_smc(toy, toy_reward, prompts, cfg, generator=gen)
    assert len(out) == 100 and torch.isfinite(out.log_z).all()
    # the reward scores finished particles only (a slot refilled by resampling may finish again)
    assert 100 * 8 <= out.cost.reward_calls <= 100 * 8 * 3
    exact_lp = toy.sequence_logprobs([prompts.ids[i] for i in out.prompt_index], out.token_ids)
    assert torch.allclose(out.base_logprobs, exact_lp, atol=1e-4)


# -- cd-block -------------------------------------------------------------------------------------
def test_cd_block_with_one_draft_is_base_sampling():
    res = run_exact("cd-block", beta=4.0, samples=20_000, seed=OFFSET,
                    overrides={"value": "exact", "drafts": "1", "block": "2"}, law=lambda enum, r, cfg: enum.logp.exp())
    assert res["tv"] <= res["tv_tol"], res  # i.i.d. base draws: the (1 − δ)-quantile of a correct sampler's TV
    assert res["extras"]["mean_blocks"] > 1  # answers of 2 and 3 tokens used two blocks


def _mean_and_se(out) -> tuple[float, float]:
    r = out.rewards.double()
    return float(r.mean()), float(r.std() / math.sqrt(len(r)))


def test_cd_block_raises_the_reward_and_best_beats_sample(toy):
    prompts = Prompts.encode(toy, ["ab"])
    enum = enumerate_completions(toy, prompts.ids[0], 3)
    base_reward = float((enum.logp.exp() * exact_rewards(toy, toy_reward, "ab", enum)).sum())
    gen = torch.Generator().manual_seed(7 + OFFSET)
    outs = {select: sample_cd_block(toy, toy_reward, prompts, CDBlockConfig(
        max_new_tokens=3, num_samples=4000, beta=4.0, value="exact", block=2, drafts=4, select=select), generator=gen)
        for select in ("sample", "best")}
    (sample, se_s), (best, se_b) = (_mean_and_se(outs[s]) for s in ("sample", "best"))
    assert sample - base_reward > Z * se_s  # guided by the exact value, the reward rises above the base's
    assert best - sample > -Z * math.hypot(se_s, se_b)  # and best-of-K per block rises at least as far
    for select, out in outs.items():
        blocks = out.extras["mean_blocks"]
        assert 1 < blocks < 2
        per_block = math.log(4) if select == "sample" else bon_kl_bound(4)
        assert out.kl_bound == pytest.approx(blocks * per_block)
        assert torch.allclose(out.rewards, toy_reward(prompts.texts * 4000, out.texts))
        exact_lp = toy.sequence_logprobs(prompts.ids * 4000, out.token_ids)
        assert torch.allclose(out.base_logprobs, exact_lp, atol=1e-4)
        # reward calls: only drafts that complete an answer; at least one per answer, at most K per block
        assert 4000 <= out.cost.reward_calls <= 4 * 4000 * blocks
        # LM positions per block and answer: at most K·(k − 1) drafted and 1 committed (≈ K× plain decoding)
        prefill = len(prompts.ids[0])
        assert forward_tokens_of_plain_decoding(prompts, out) < out.cost.lm_forward_tokens
        assert out.cost.lm_forward_tokens <= prefill + 4000 * blocks * (4 * (2 - 1) + 1) + 1e-6
