"""Integration: the embedded SmolLM2 model through our own KV-cache loop."""

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, PretrainedConfig

from dgalign.errors import DGAlignError
from dgalign.lm import load_lm
from dgalign.lm.hf import _context_length
from dgalign.rewards import get_reward
from dgalign.samplers.ancestral import BaseConfig, sample_base
from dgalign.samplers.bon import BoNConfig, sample_bon
from dgalign.types import Prompts

pytestmark = pytest.mark.integration

PROMPTS = ["What is the capital of France?", "Write one short sentence about the sea, please, in a calm tone."]


@pytest.fixture(scope="module")
def lm():
    return load_lm("smollm2-135m-instruct", device="cpu")


def test_context_length_is_the_configs_and_unknown_is_refused(lm):
    assert lm.max_context == lm.model.config.max_position_embeddings == 8192
    assert _context_length(SimpleNamespace(config=GPT2Config()), "gpt2") == 1024  # its n_positions, by another name
    with pytest.raises(DGAlignError, match="model 'bare': .* no max_position_embeddings"):
        _context_length(SimpleNamespace(config=PretrainedConfig()), "bare")


def test_chat_template_and_raw(lm):
    chat, raw = lm.encode(["Hi"]), lm.encode(["Hi"], raw=True)
    assert "<|im_start|>assistant" in lm.tokenizer.decode(chat[0])
    assert "<|im_start|>" not in lm.tokenizer.decode(raw[0])


def test_greedy_loop_matches_generate_with_left_padding(lm):
    prompts = Prompts.encode(lm, PROMPTS)
    assert len(prompts.ids[0]) != len(prompts.ids[1])  # the batch needs left padding
    out = sample_base(lm, None, prompts, BaseConfig(max_new_tokens=12, top_k=1))
    for ids, ours in zip(prompts.ids, out.token_ids, strict=True):
        ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
        assert ours == ref[: len(ours)]
    assert "Paris" in out.texts[0]


def test_sequence_logprobs_agree_with_decoding(lm):
    prompts = Prompts.encode(lm, PROMPTS)
    out = sample_base(lm, None, prompts, BaseConfig(max_new_tokens=10), generator=torch.Generator().manual_seed(0))
    again = lm.sequence_logprobs(prompts.ids, out.token_ids)
    assert torch.allclose(out.base_logprobs, again, atol=1e-3)


def test_bon_on_embedded_model_raises_reward(lm):
    prompts = Prompts.encode(lm, ["Say something about my neighbour."])
    reward = get_reward("sentiment")
    gen = torch.Generator().manual_seed(0)
    base = sample_base(lm, reward, prompts, BaseConfig(max_new_tokens=16, num_samples=8), generator=gen)
    bon = sample_bon(lm, reward, prompts, BoNConfig(max_new_tokens=16, num_samples=8, n=4), generator=gen)
    assert bon.cost.reward_calls == 32 and len(bon) == 8
    assert float(bon.rewards.mean()) > float(base.rewards.mean())
    # the 32 candidates share one prefill of the prompt: far fewer forward tokens than 32 prefills
    assert bon.cost.lm_forward_tokens < 32 * (len(prompts.ids[0]) + 16)


def test_hidden_state_is_the_last_layer_output(lm):
    ids = lm.encode(["Hi there", "Write a story about cats"])
    state = lm.start(ids)
    ref = lm.model(input_ids=torch.tensor([ids[1]]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert torch.allclose(state.hidden[1], ref, atol=1e-4)
    assert state.hidden.shape == (2, lm.embeddings().shape[1])
