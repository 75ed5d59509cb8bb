"""Integration: soft-bon, smc, qalign and args on the embedded SmolLM2 model, tiny budgets.

Each method runs once through `dgalign generate`; then the library calls check that the KV-cache
bookkeeping (resampling, suffix re-prefill, candidate rows) keeps each answer's reported
log p_θ equal to a fresh scoring of the same tokens.
"""

import json
import sys

import pytest
import torch

from dgalign.cli import main
from dgalign.lm import load_lm
from dgalign.rewards import get_reward
from dgalign.samplers.args import ARGSConfig, sample_args
from dgalign.samplers.qalign import QAlignConfig, sample_qalign
from dgalign.samplers.smc import SMCConfig, sample_smc
from dgalign.types import Prompts

pytestmark = pytest.mark.integration

PROMPT = "Say something about the sea."


def generate(monkeypatch, capsys, method: str, setting: str) -> dict:
    argv = ["dgalign", "generate", PROMPT, "--method", method, "--set", setting, "--reward", "sentiment",
            "--max-new-tokens", "6", "--device", "cpu", "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["method"] == method and len(obj["results"]) == 1
    assert 1 <= obj["results"][0]["num_tokens"] <= 6
    return obj


def test_generate_soft_bon(monkeypatch, capsys):
    assert generate(monkeypatch, capsys, "soft-bon", "n=3")["cost"]["reward_calls"] == 3


def test_generate_smc(monkeypatch, capsys):
    calls = generate(monkeypatch, capsys, "smc", "particles=3")["cost"]["reward_calls"]
    assert 3 <= calls <= 3 * 6  # one call per particle per token at most


def test_generate_qalign(monkeypatch, capsys):
    assert generate(monkeypatch, capsys, "qalign", "steps=3")["cost"]["reward_calls"] == 1 + 3


def test_generate_args(monkeypatch, capsys):
    obj = generate(monkeypatch, capsys, "args", "top_k=3")
    assert obj["cost"]["reward_calls"] == 3 * obj["results"][0]["num_tokens"]


@pytest.fixture(scope="module")
def lm():
    return load_lm("smollm2-135m-instruct", device="cpu")


def test_kv_bookkeeping_keeps_log_probs_exact(lm):
    prompts = Prompts.encode(lm, [PROMPT, "Name a colour."])
    reward = get_reward("length(target=3)")  # -|words - 3| / 3: differs between particles at once
    gen = torch.Generator().manual_seed(0)
    smc = sample_smc(lm, reward, prompts, SMCConfig(max_new_tokens=6, particles=3, beta=30.0), generator=gen)
    assert int(smc.extras["run_resamples"].sum()) > 0  # resampling reordered the KV cache
    qalign = sample_qalign(lm, reward, prompts, QAlignConfig(max_new_tokens=6, steps=2, beta=30.0), generator=gen)
    args = sample_args(lm, reward, prompts, ARGSConfig(max_new_tokens=6, top_k=3, mode="sample"), generator=gen)
    for out in (smc, qalign, args):
        again = lm.sequence_logprobs([prompts.ids[i] for i in out.prompt_index], out.token_ids)
        assert torch.allclose(out.base_logprobs, again, atol=1e-3)
        assert torch.allclose(out.rewards, reward([prompts.texts[i] for i in out.prompt_index], out.texts))
