"""The baselines soft-bon, smc, qalign and args on the toy LM (their exactness claims: test_claims.py).

The default suite runs a few thousand samples per check; the full 20 000-sample versions that the
acceptance numbers quote are marked slow (`pytest -m slow tests/test_baselines_exact.py -s`).
"""

import json
import math
import sys

import pytest
import torch

from dgalign.cli import main
from dgalign.eval.exact import run_exact, toy_reward
from dgalign.samplers import get_sampler
from dgalign.samplers.args import ARGSConfig, sample_args
from dgalign.samplers.qalign import QAlignConfig, sample_qalign
from dgalign.samplers.smc import SMCConfig, sample_smc
from dgalign.smc_math import ess, log_mean_exp, normalise, pick_rows, resample, resample_runs
from dgalign.types import Prompts
from seeds import OFFSET

PROMPT = "ab"


def report(res: dict) -> dict:
    """Print the numbers a run reached (shown with -s) and hand them back."""
    keys = ("method", "beta", "samples", "tv", "tv_floor", "tv_tol", "kl", "log_z", "exact_log_z", "reward", "exact_reward")
    print(json.dumps({k: res[k] for k in keys}))
    return res


# -- the shared weight maths ---------------------------------------------------------------------
def test_weights_ess_and_normaliser():
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf], [1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(ess(log_w[:2]), torch.tensor([4.0, 1.0]))
    w = log_w[2].exp()
    assert math.isclose(float(ess(log_w[2])), float(w.sum() ** 2 / (w * w).sum()), rel_tol=1e-6)
    assert torch.allclose(normalise(log_w).exp().sum(-1), torch.ones(3))
    assert math.isclose(float(log_mean_exp(log_w[2])), math.log(float(w.mean())), rel_tol=1e-6)


def test_systematic_resampling_counts_are_floor_or_ceil():
    gen = torch.Generator().manual_seed(0)
    log_w = torch.randn(500, 7, generator=gen) * 2  # 500 independent systems of 7 particles
    index = resample(log_w, gen)  # (500, 7)
    counts = torch.zeros(500, 7).scatter_add_(1, index, torch.ones(500, 7))
    expected = normalise(log_w).exp() * 7
    # systematic resampling gives particle j either floor(N w_j) or ceil(N w_j) copies
    assert ((counts >= expected.floor() - 1e-9) & (counts <= expected.ceil() + 1e-9)).all()


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_single_draw_follows_the_weights(scheme):
    gen = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    index = resample(probs.log().expand(40_000, 5), gen, num=1, scheme=scheme).squeeze(-1)
    freq = torch.bincount(index, minlength=5).float() / 40_000
    assert (freq - probs).abs().max() < 0.01
    assert freq[4] == 0  # zero weight is never drawn


def test_unknown_resampling_scheme_is_a_clear_error():
    with pytest.raises(Exception, match="unknown resampling scheme 'stratified'; valid: systematic, multinomial"):
        resample(torch.zeros(2, 3), scheme="stratified")


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resample_runs_keeps_healthy_runs_and_resamples_the_rest(scheme):
    n, runs = 8, 4000
    w = torch.tensor([0.6, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0])  # ESS = 1 / Σ w² ≈ 2.2 < N/2
    skewed = w.log() + 3.0  # unnormalised: mean weight e³/N
    flat = torch.zeros(n) - 1.0  # ESS = N
    log_w = torch.stack([flat if r % 2 == 0 else skewed for r in range(runs)])  # (R, N): even runs healthy
    ancestors, log_z_inc, resampled = resample_runs(log_w, 0.5, torch.Generator().manual_seed(2), scheme)
    assert ancestors.shape == (runs * n,) and log_z_inc.shape == resampled.shape == (runs,)
    assert resampled.tolist() == [r % 2 == 1 for r in range(runs)]
    rows = ancestors.view(runs, n)
    first = torch.arange(runs)[:, None] * n  # (R, 1) each run's first global row
    assert torch.equal(rows[0::2], (first + torch.arange(n))[0::2])  # identity where the ESS is high
    local = rows[1::2] - first[1::2]  # resampled runs draw only from their own particles
    assert ((local >= 0) & (local < 3)).all()  # zero weights are never drawn
    counts = torch.zeros(runs // 2, n).scatter_add_(1, local, torch.ones(runs // 2, n))  # copies of each parent
    if scheme == "systematic":  # floor or ceil of N·w copies
        assert ((counts >= (n * w).floor()) & (counts <= (n * w).ceil())).all()
    assert (counts.mean(0) / n - w).abs().max() < 0.015  # copies follow the weights
    assert torch.allclose(log_z_inc[1::2], torch.full((runs // 2,), 3.0 + math.log(float(w.mean()))))  # log mean w
    assert (log_z_inc[0::2] == 0).all()


def test_resample_runs_draws_nothing_when_no_run_resamples():
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    ancestors, log_z_inc, resampled = resample_runs(torch.zeros(5, 4), 0.5, gen)
    assert torch.equal(ancestors, torch.arange(20)) and not resampled.any() and (log_z_inc == 0).all()
    assert torch.equal(gen.get_state(), state)


def test_pick_rows_applies_group_offsets():
    log_w = torch.full((3, 4), -math.inf).scatter(1, torch.tensor([[2], [0], [3]]), 0.0)  # one live row per group
    assert pick_rows(log_w).tolist() == [2, 4, 11]
    assert pick_rows(log_w, num=2, scheme="multinomial").tolist() == [2, 2, 4, 4, 11, 11]


# -- smc -----------------------------------------------------------------------------------------
def test_smc_resamples_and_accounts(toy):
    prompts = Prompts.encode(toy, [PROMPT, "ca"])
    cfg = SMCConfig(max_new_tokens=3, num_samples=50, beta=4.0, particles=16)
    out = sample_smc(toy, toy_reward, prompts, cfg, generator=torch.Generator().manual_seed(0))
    assert len(out) == 100 and out.prompt_index == [0] * 50 + [1] * 50
    assert out.log_z.shape == (2,) and out.extras["run_log_z"].shape == (100,)
    assert (out.extras["run_resamples"] > 0).any()  # β = 4 drives the ESS under N/2
    assert (out.extras["run_min_ess"] <= out.extras["run_final_ess"] + 1e-6).all()
    # every particle is scored once per token it continues past and once when it finishes
    assert 100 * 16 <= out.cost.reward_calls <= 100 * 16 * 3
    assert torch.allclose(out.rewards, toy_reward(prompts.texts, out.texts))
    exact_lp = toy.sequence_logprobs([prompts.ids[i] for i in out.prompt_index], out.token_ids)
    assert torch.allclose(out.base_logprobs, exact_lp, atol=1e-4)


def test_smc_unknown_twist(toy):
    with pytest.raises(Exception, match="unknown twist 'value2'; valid: reward, none"):
        sample_smc(toy, toy_reward, Prompts.encode(toy, [PROMPT]), SMCConfig(max_new_tokens=3, twist="value2"))


# -- qalign --------------------------------------------------------------------------------------
def test_qalign_tempered_base_is_far_from_the_target():
    # the claim `qalign-tempered` holds the corrected chain to p_r; uncorrected tempered sampling is far off
    assert report(run_exact("base", seed=OFFSET, beta=1.0, samples=2000, overrides={"temperature": "0.6"}))["tv"] > 0.1


def test_qalign_accounting_and_acceptance(toy):
    prompts = Prompts.encode(toy, [PROMPT])
    cfg = QAlignConfig(max_new_tokens=3, num_samples=200, beta=4.0, steps=10)
    out = sample_qalign(toy, toy_reward, prompts, cfg, generator=torch.Generator().manual_seed(0))
    assert out.cost.reward_calls == 200 * (10 + 1)  # the initial draw, then one proposal per step
    assert 0.05 < out.extras["acceptance_rate"] < 0.95 and len(out.extras["acceptance_by_step"]) == 10
    assert torch.allclose(out.rewards, toy_reward(prompts.texts * 200, out.texts))
    exact_lp = toy.sequence_logprobs(prompts.ids * 200, out.token_ids)
    assert torch.allclose(out.base_logprobs, exact_lp, atol=1e-4)


# -- soft-bon ------------------------------------------------------------------------------------
def test_soft_bon_approaches_target_as_n_grows():
    small = report(run_exact("soft-bon", seed=OFFSET, beta=4.0, samples=5000, overrides={"n": "4"}))
    large = report(run_exact("soft-bon", seed=OFFSET, beta=4.0, samples=5000, overrides={"n": "64"}))
    assert large["tv"] < small["tv"] - 0.1  # n = 64 itself is held to p_r by the claim `soft-bon-64`


# -- args ----------------------------------------------------------------------------------------
def test_args_is_biased():
    res = report(run_exact("args", seed=OFFSET, beta=4.0, samples=5000, overrides={"mode": "sample"}))
    assert res["tv"] > res["tv_tol"] + 0.05
    assert res["reward"] > report(run_exact("base", seed=OFFSET, beta=4.0, samples=5000))["reward"]  # but it does steer


def test_args_greedy_and_reward_calls(toy):
    prompts = Prompts.encode(toy, [PROMPT])
    cfg = ARGSConfig(max_new_tokens=3, num_samples=20, beta=4.0, top_k=2)
    out = sample_args(toy, toy_reward, prompts, cfg, generator=torch.Generator().manual_seed(0))
    assert len({tuple(t) for t in out.token_ids}) == 1  # greedy is deterministic
    assert out.cost.reward_calls == 2 * sum(out.num_tokens)  # k candidates per token per row
    assert torch.allclose(out.rewards, toy_reward(prompts.texts * 20, out.texts))
    # the greedy choice maximises log p + β r(prefix ⊕ v) over the top-2 of p_θ at every step
    seq: list[int] = []
    for _ in range(3):
        logp = toy.start([prompts.ids[0] + seq]).logits[0].log_softmax(-1)
        top = logp.topk(2).indices.tolist()
        seq.append(max(top, key=lambda v: float(logp[v]) + 4 * float(toy_reward([PROMPT], [toy.decode(seq + [v])])[0])))
        if seq[-1] in toy.eos_token_ids:
            break
    assert out.token_ids[0] == seq


# -- the table and the CLI -----------------------------------------------------------------------
def test_methods_listed(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dgalign", "methods", "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {"soft-bon", "smc", "qalign", "args"} <= set(methods)
    assert methods["smc"]["config"]["particles"] == 16 and methods["smc"]["config"]["twist"] == "reward"
    assert methods["qalign"]["config"]["steps"] == 32
    assert methods["args"]["config"]["top_k"] == 10 and methods["args"]["config"]["mode"] == "greedy"
    assert methods["soft-bon"]["config"]["n"] == 8
    for name in ("soft-bon", "smc", "qalign", "args"):
        sampler, cfg = get_sampler(name)
        assert sampler.__name__ == "sample_" + name.replace("-", "_") and cfg.beta == 1.0


# -- the full-size runs (slow; the exact samplers' full-size claims are in test_claims.py) ---------
@pytest.mark.slow
def test_soft_bon_and_args_full():
    small = report(run_exact("soft-bon", seed=OFFSET, beta=4.0, samples=20_000, overrides={"n": "4"}))
    large = report(run_exact("soft-bon", seed=OFFSET, beta=4.0, samples=20_000, overrides={"n": "64"}))
    assert large["tv"] < small["tv"] - 0.1
    for mode in ("sample", "greedy"):
        res = report(run_exact("args", seed=OFFSET, beta=4.0, samples=20_000, overrides={"mode": mode}))
        assert res["tv"] > res["tv_tol"] + 0.05
