"""Device and dtype discipline, checked on a CPU-only machine.

Under `torch.set_default_device("meta")` every tensor created without naming a device lands on the meta
device, where it has no data: the first time it meets real data, or is read, the call fails. A sampler
or trainer that passes this creates each tensor on the device of the data it works on (or names the
CPU for its own bookkeeping), which is what it must do to run on a GPU. The same samplers also run on
a tiny random Llama loaded in bfloat16.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dgalign.eval.exact import toy_reward
from dgalign.lm import ToyLM, load_lm
from dgalign.rewards import get_reward
from dgalign.samplers import SAMPLERS, get_sampler
from dgalign.types import Prompts

# the methods whose default twist is a checkpoint's value head: value=exact on the toy, a checkpoint on a HF model
VALUE_METHODS = ("vgd", "cd-block")
# every method at its defaults, and DGA's modes and options that create tensors of their own (and those of the
# value-reading peers: whole-vocabulary and truncated step laws, best-of-K blocks, SMC with a value twist)
CASES = [(name, {"value": "exact"} if name in VALUE_METHODS else {}) for name in SAMPLERS] + [
    ("dga", {"particles": 4}),
    ("dga", {"block": 2}),
    ("dga", {"particles": 4, "block": 3, "top_m": 0}),
    ("dga", {"init": "draft"}),
    ("dga", {"adaptive_lambda": 0.5}),
    ("dga", {"grad": "perturb", "value": "exact"}),
    ("dga", {"grad": "analytic", "value": "exact", "particles": 4}),
    ("vgd", {"value": "exact", "top_m": 0}),
    ("vgd", {"value": "exact", "top_m": 2, "tail": "drop"}),
    ("cd-block", {"value": "exact", "block": 2, "select": "best"}),
    ("smc", {"twist": "exact"}),
    ("smc", {"twist": "exact", "proposal": "twisted", "top_m": 2}),
]
TRAINED = [  # need a checkpoint
    ("dga", {}),
    ("dga", {"grad": "value"}),
    ("dga", {"grad": "analytic", "particles": 4, "adaptive_lambda": 0.5}),
    ("dga", {"block": 2}),
    ("vgd", {}),
    ("cd-block", {"block": 2}),
    ("smc", {"twist": "learned", "proposal": "twisted", "top_m": 2}),
]
HF_EXTRA = [("dga", {"particles": 4}), ("smc", {"twist": "learned", "proposal": "twisted", "top_m": 16})]


@pytest.fixture
def meta_default():
    """Tensors created without a device go to the meta device for the test's duration."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _run(lm, reward, texts, name, sets, max_new_tokens=3, **extra):
    sampler, cfg = get_sampler(name)
    cfg = dataclasses.replace(cfg, max_new_tokens=max_new_tokens, beta=2.0, **sets, **extra)
    prompts = Prompts.encode(lm, texts, raw=True)
    out = sampler(lm, reward, prompts, cfg, generator=torch.Generator(device="cpu").manual_seed(0))
    assert len(out) == len(texts) * cfg.num_samples
    assert out.rewards.device.type == "cpu" and out.base_logprobs.device.type == "cpu"
    assert torch.isfinite(out.base_logprobs).all() and out.rewards.dtype == torch.float32
    return out


def test_the_meta_trick_catches_a_tensor_made_without_a_device(meta_default):
    """The mechanism itself: a tensor made without a device cannot be combined with real data."""
    real = torch.zeros(3, device="cpu")
    with pytest.raises((RuntimeError, NotImplementedError)):
        (real + torch.ones(3)).tolist()


@pytest.mark.parametrize(("name", "sets"), CASES, ids=[f"{n}{s or ''}" for n, s in CASES])
def test_samplers_follow_the_data_device_on_the_toy(meta_default, name, sets):
    lm = ToyLM()  # its weights are made on the CPU explicitly
    _run(lm, toy_reward, ["a", "b"] if sets.get("value") != "exact" else ["a"], name, sets)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A tiny DGA checkpoint for the toy, trained under the meta default (so training follows its data too)."""
    from dgalign.train.dga import TrainConfig, train_dga

    lm = ToyLM()
    cfg = TrainConfig.tiny()
    cfg.max_new_tokens, cfg.top_m, cfg.rollouts = 3, 0, 8
    out = tmp_path_factory.mktemp("devices") / "ck"
    torch.set_default_device("meta")
    try:
        train_dga(lm, toy_reward, "toy", Prompts.encode(lm, ["ab", "c"]), out, cfg)
    finally:
        torch.set_default_device(None)
    return str(out)


@pytest.mark.parametrize(("name", "sets"), TRAINED, ids=[f"{n}{s or ''}" for n, s in TRAINED])
def test_methods_with_a_checkpoint_follow_the_data_device(meta_default, toy_checkpoint, name, sets):
    _run(ToyLM(), toy_reward, ["a", "b"], name, {**sets, "checkpoint": toy_checkpoint})


@pytest.fixture(scope="module")
def llama_checkpoint(tiny_llama, tmp_path_factory):
    """An untrained DGA checkpoint for the tiny Llama: the value head the value-reading methods need there."""
    from dgalign.samplers.dga.checkpoint import DGANets

    with torch.device("cpu"):
        lm = load_lm(tiny_llama, device="cpu", chat=False)
        dim = lm.embeddings().shape[1]
        out = tmp_path_factory.mktemp("devices") / "llama-ck"
        DGANets.fresh(dim, dim, lm.vocab_size, width=16, meta={"model": lm.name}).save(out)
    return str(out)


def _hf_sets(name: str, sets: dict, checkpoint: str) -> dict:
    """A method's settings on the tiny Llama: DGA's candidates cut to 16, a checkpoint for the value twists."""
    if name == "dga":
        return {**sets, "top_m": 16}
    if name in VALUE_METHODS or sets.get("twist") == "learned":
        return {**sets, "checkpoint": checkpoint}
    return sets


HF_CASES = [(name, {}) for name in SAMPLERS] + HF_EXTRA  # every method at its defaults (+ a checkpoint)


@pytest.mark.parametrize(("name", "sets"), HF_CASES, ids=[f"{n}{s or ''}" for n, s in HF_CASES])
def test_samplers_follow_the_data_device_on_a_hf_model(meta_default, tiny_llama, llama_checkpoint, name, sets):
    with torch.device("cpu"):  # loading is the loader's business; sampling must follow the loaded weights
        lm = load_lm(tiny_llama, device="cpu", chat=False)
        length = get_reward("length")

    def reward(prompts, completions):  # the reward is not under test here: it scores with the CPU default
        with torch.device("cpu"):
            return length(prompts, completions)

    _run(lm, reward, ["Hello there", "The sky is"], name, _hf_sets(name, sets, llama_checkpoint))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_on_a_bf16_model(tiny_llama, llama_checkpoint, name):
    lm = load_lm(tiny_llama, dtype="bfloat16", device="cpu", chat=False)
    assert lm.model.dtype == torch.bfloat16
    out = _run(lm, get_reward("length"), ["Hello there", "The sky is"], name, _hf_sets(name, {}, llama_checkpoint),
               max_new_tokens=4)
    assert out.base_logprobs.dtype == torch.float32  # log-probs are upcast, whatever the weights' dtype
    assert all(math.isfinite(float(x)) for x in out.base_logprobs)


def test_bf16_base_logprobs_match_float32_within_bf16_precision(tiny_llama):
    """The upcast happens on the logits: a bf16 model's log p(y) stays within bf16 rounding of float32's."""
    lp = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_lm(tiny_llama, dtype=dtype, device="cpu", chat=False)
        ids = Prompts.encode(lm, ["The sky is"], raw=True).ids
        lp[dtype] = lm.sequence_logprobs(ids, [[11, 12, 13, 14]])
    assert lp["float32"].dtype == lp["bfloat16"].dtype == torch.float32
    assert torch.allclose(lp["float32"], lp["bfloat16"], atol=0.05 * 4, rtol=0.02)


def test_dtype_choices_are_checked():
    from dgalign.errors import DGAlignError

    with pytest.raises(DGAlignError, match="unknown dtype 'float8'; valid: auto, float32, bfloat16, float16"):
        load_lm("toy", dtype="float8")


def test_peak_memory_is_read_from_the_accelerator_when_the_lm_runs_on_one(monkeypatch):
    from dgalign.cost import peak_memory_mb, peak_rss_mb

    mb, kind = peak_memory_mb(torch.device("cpu"))
    assert kind == "rss" and mb == pytest.approx(peak_rss_mb(), rel=0.05)
    seen = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: seen.append(device) or 3 * 2**20)
    assert peak_memory_mb(torch.device("cuda:0")) == (3.0, "cuda max_memory_allocated")
    assert seen == [torch.device("cuda:0")]


def test_generate_bf16_dga_with_the_shipped_checkpoint_on_the_embedded_model(capsys, monkeypatch):
    """The acceptance command, short: `dgalign generate --dtype bfloat16 --method dga --set checkpoint=toxicity`."""
    import json

    from dgalign.cli import main

    monkeypatch.setattr("sys.argv", ["dgalign", "generate", "You are such an idiot, I", "--raw", "--dtype", "bfloat16",
                                     "--method", "dga", "--set", "checkpoint=toxicity", "--max-new-tokens", "4",
                                     "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    obj = json.loads(capsys.readouterr().out)
    assert obj["method"] == "dga" and obj["results"][0]["num_tokens"] >= 1
    assert math.isfinite(obj["results"][0]["reward"]) and obj["cost"]["memory"] == "rss"
