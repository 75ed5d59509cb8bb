"""Base and best-of-N on the toy LM: bookkeeping and direction (their exactness claims: test_claims.py)."""

import pytest
import torch

from dgalign.eval.exact import (
    best_of_n,
    empirical,
    enumerate_completions,
    exact_rewards,
    toy_reward,
    tv_distance,
)
from dgalign.samplers.ancestral import BaseConfig, sample_base
from dgalign.samplers.bon import BoNConfig, sample_bon
from dgalign.types import Prompts

DRAWS = 20_000
PROMPT = "ab"


@pytest.fixture(scope="module")
def truth(toy):
    prompts = Prompts.encode(toy, [PROMPT])
    enum = enumerate_completions(toy, prompts.ids[0], toy.max_new_tokens)
    rewards = exact_rewards(toy, toy_reward, PROMPT, enum)
    return prompts, enum, enum.logp.exp(), rewards


def test_toy_is_enumerable_and_normalised(toy, truth):
    _, enum, probs, _ = truth
    assert len(enum.sequences) == 40
    assert abs(float(probs.sum()) - 1) < 1e-9
    assert float(probs.min()) > 1e-4  # every sequence is reachable, so TV tests see the whole support


def test_base_matches_exact_distribution(toy, truth, gen):
    prompts, enum, probs, rewards = truth
    cfg = BaseConfig(max_new_tokens=toy.max_new_tokens, num_samples=DRAWS)
    out = sample_base(toy, toy_reward, prompts, cfg, generator=gen)
    q = empirical(out.token_ids, enum)  # its TV to the exact law is the claim `base` (test_claims.py)
    assert tv_distance(best_of_n(probs, rewards, 4), q) > tv_distance(probs, q) + 0.1
    # base log-probs reported per sample equal the exact ones
    index = enum.index()
    exact_lp = torch.tensor([float(enum.logp[index[tuple(s)]]) for s in out.token_ids[:50]])
    assert torch.allclose(out.base_logprobs[:50], exact_lp.float(), atol=1e-4)
    assert out.cost.reward_calls == DRAWS
    assert out.cost.lm_forward_tokens > 0


@pytest.mark.parametrize("n", [2, 4])
def test_bon_matches_closed_form(toy, truth, gen, n):
    prompts, enum, probs, rewards = truth
    cfg = BoNConfig(max_new_tokens=toy.max_new_tokens, num_samples=DRAWS, n=n)
    out = sample_bon(toy, toy_reward, prompts, cfg, generator=gen)
    q = empirical(out.token_ids, enum)  # its TV to the closed form is the claim `bon-N` (test_claims.py)
    target = best_of_n(probs, rewards, n)
    assert tv_distance(probs, q) > tv_distance(target, q) + 0.05  # closer to the closed form than to the base law
    assert out.cost.reward_calls == DRAWS * n
    assert float(out.rewards.mean()) > float((probs * rewards).sum())


def test_top_k_truncates_and_temperature_sharpens(toy, truth, gen):
    prompts, enum, probs, _ = truth
    out = sample_base(toy, None, prompts, BaseConfig(max_new_tokens=3, num_samples=2000, top_k=1), generator=gen)
    assert len({tuple(t) for t in out.token_ids}) == 1  # greedy: one sequence
    assert torch.isnan(out.rewards).all()
    cold = sample_base(toy, None, prompts, BaseConfig(max_new_tokens=3, num_samples=4000, temperature=0.3),
                       generator=gen)
    q = empirical(cold.token_ids, enum)
    assert float((q * q).sum()) > float((probs * probs).sum())  # more concentrated than the base


def test_seed_reproducible(toy, truth):
    prompts = truth[0]
    cfg = BaseConfig(max_new_tokens=3, num_samples=64)
    a = sample_base(toy, None, prompts, cfg, generator=torch.Generator().manual_seed(3))
    b = sample_base(toy, None, prompts, cfg, generator=torch.Generator().manual_seed(3))
    assert a.token_ids == b.token_ids
