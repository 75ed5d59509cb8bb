"""Rewards as users write them: TRL-style `MODULE:ATTR` functions (keywords, lists, numpy) in specs and in
`generate`, `bench` and `serve`; `hf:` reward models' dtype, device, revision and label; learned rewards only load."""

import json
import time

import pytest
import torch
from typer.testing import CliRunner

import trl_rewards
from dgalign.errors import DGAlignError, RewardError, Unavailable
from dgalign.rewards import get_reward
from dgalign.rewards.hf import HFRewardModel
from dgalign.rewards.standardize import builtin_calibration

TEXTS = ["a b", "abc", "one two three"]
PROMPTS = ["p", "qq", "rrr"]
TOY_REWARD = "dgalign.eval.exact:toy_reward"


def scores(spec: str, prompts=PROMPTS, completions=TEXTS) -> torch.Tensor:
    return get_reward(spec)(prompts, completions)


# ----------------------------------------------------------------------------- what a reward may return


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("toy_list", [(c.count("a") - 0.5 * c.count("c")) / 3 for c in TEXTS]),
        ("n_words", [2.0, 1.0, 3.0]),
        ("keyword_only", [len(p) - len(c) for p, c in zip(PROMPTS, TEXTS, strict=True)]),
        ("positional", [len(p) + 0.5 * len(c) for p, c in zip(PROMPTS, TEXTS, strict=True)]),
        ("int_array", [3.0, 3.0, 13.0]),
        ("int_tensor", [3.0, 3.0, 13.0]),
        ("bools", [1.0, 1.0, 0.0]),
        ("numpy_scalars", [3.0, 3.0, 13.0]),
    ],
)
def test_lists_tuples_arrays_and_tensors_become_one_float32_cpu_tensor(name, expected):
    r = scores(f"trl_rewards:{name}")
    assert r.dtype == torch.float32 and r.device.type == "cpu" and r.shape == (3,)
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(scores(f"trl_rewards:{name}@-2"), -2 * r)


def test_a_trl_function_is_called_with_keywords_and_only_those_two():
    reward = get_reward("trl_rewards:Recorder,trl_rewards:positional:0")
    reward(PROMPTS, TEXTS)
    assert reward.terms[0][2].calls == [{"prompts": PROMPTS, "completions": TEXTS}]  # as TRL calls it, once
    assert reward.by_keyword == {"trl_rewards:Recorder": True, "trl_rewards:positional": False}


def test_list_terms_mix_with_tensor_terms():
    torch.testing.assert_close(
        scores(f"trl_rewards:toy_list:2,{TOY_REWARD}@-0.5,trl_rewards:n_words:0.25"),
        1.5 * scores(TOY_REWARD) + 0.25 * scores("trl_rewards:n_words"),
    )


def test_a_list_reward_can_be_standardized(tmp_path, monkeypatch):
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path))
    calibration = torch.tensor(trl_rewards.n_words(builtin_calibration()[1]), dtype=torch.float64)
    mean, std = calibration.mean(), calibration.std(correction=0)
    expected = ((torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64) - mean) / std).float()
    torch.testing.assert_close(scores("trl_rewards:n_words(standardize=true)"), expected)
    with pytest.raises(RewardError, match=r"^reward 'trl_rewards:short' returned 3 scores for 4 completions"):
        get_reward("trl_rewards:short(standardize=true)")(PROMPTS, TEXTS)  # its calibration probe of 4 rows


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("none_at_one", r"reward 'trl_rewards:none_at_one' returned None at index 1 of 3; expected a number \(TRL's "
                        r"None, 'not applicable', is not: a sampler needs a score for every completion\)"),
        ("strings", r"reward 'trl_rewards:strings' returned str at index 0 of 3; expected a number$"),
        ("short", r"reward 'trl_rewards:short' returned 2 scores for 3 completions; expected one per completion"),
        ("nan_last", r"reward 'trl_rewards:nan_last' returned NaN for 1 of 3 completions"),
        ("as_dict", r"reward 'trl_rewards:as_dict' returned dict for 3 completions; expected a tensor, numpy array "
                    r"or list of 3 numbers"),
        ("object_array", r"reward 'trl_rewards:object_array' returned a numpy array of object; expected numbers"),
        ("matrix", r"reward 'trl_rewards:matrix' returned shape \(3, 2\) for 3 completions; expected a tensor, "
                   r"array or list of shape \(3,\)"),
    ],
)
def test_a_bad_return_is_one_line_naming_the_reward_and_what_was_expected(name, message):
    reward = get_reward(f"trl_rewards:{name}:2")
    with pytest.raises(RewardError, match=message) as info:
        reward(PROMPTS, TEXTS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "signature"), [("completions_only", "(completions)"), ("three", "(prompts, completions, answers)")]
)
def test_a_callable_that_cannot_take_prompts_and_completions_fails_when_the_spec_is_built(name, signature):
    with pytest.raises(DGAlignError) as info:
        get_reward(f"toxicity,trl_rewards:{name}")
    assert str(info.value) == (
        f"reward 'trl_rewards:{name}' takes {signature}; a reward is called as f(prompts, completions), or as TRL "
        "calls its reward functions, f(prompts=..., completions=...) (e.g. def f(completions, **kwargs))"
    )
    with pytest.raises(DGAlignError, match=r"takes \(completions\)"):  # through standardize=true too
        get_reward("trl_rewards:completions_only(standardize=true)")


# ----------------------------------------------------------------------------- generate, bench and serve


def test_generate_with_a_trl_reward_picks_what_the_tensor_reward_picks():
    from dgalign.cli import app

    def generate(reward):
        res = CliRunner().invoke(app, ["generate", "ab", "c", "--model", "toy", "--raw", "--method", "bon",
                                       "--set", "n=4", "--reward", reward, "--max-new-tokens", "3",
                                       "--num-samples", "3", "--seed", "5", "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    out, ref = generate("trl_rewards:toy_list"), generate(TOY_REWARD)
    assert out["reward"] == "trl_rewards:toy_list"
    assert [(r["completion"], r["reward"]) for r in out["results"]] == [
        (r["completion"], r["reward"]) for r in ref["results"]
    ]
    for row in out["results"]:
        assert row["reward"] == pytest.approx(trl_rewards.toy_list([], [row["completion"]])[0])
    assert out["cost"]["reward_calls"] == 2 * 3 * 4


def test_bench_with_a_trl_reward(tmp_path):
    from dgalign.eval.harness import BenchConfig, read_rows, run_bench

    prompts = tmp_path / "toy-prompts.txt"
    prompts.write_text("ab\nba\nc\n")

    def bench(reward, out):
        cfg = BenchConfig(suite=str(prompts), out=str(tmp_path / out), methods=["base", "bon:n=3"], n_prompts=3,
                          max_new_tokens=3, seeds=[0], model="toy", reward=reward, ppl_model="")
        rows = read_rows(run_bench(cfg, progress=False))
        return sorted((r["prompt_index"], r["method"], r["completion"], r["proxy"], r["error"]) for r in rows)

    rows = bench("trl_rewards:toy_list", "trl")
    assert len(rows) == 6 and not any(error for *_, error in rows)
    for *_, completion, proxy, _ in rows:
        assert proxy == pytest.approx(trl_rewards.toy_list([], [completion])[0])
    assert rows == bench(TOY_REWARD, "tensor")


def test_serve_bon_with_a_trl_reward():
    from fastapi.testclient import TestClient

    from dgalign.lm import ToyLM
    from dgalign.server.app import create_app
    from dgalign.server.engine import Limits

    def ask(client, reward):
        body = {"model": "toy", "prompt": "b", "max_tokens": 3, "n": 6, "seed": 3,
                "alignment": {"method": "bon", "reward": reward, "params": {"n": 4}}}
        res = client.post("/v1/completions", json=body)
        assert res.status_code == 200, res.text
        return res.json()

    with TestClient(create_app(ToyLM(), limits=Limits(custom_rewards=True))) as client:
        out, ref = ask(client, "trl_rewards:toy_list"), ask(client, TOY_REWARD)
    texts = [c["text"] for c in out["choices"]]
    assert [c["reward"] for c in out["choices"]] == pytest.approx(trl_rewards.toy_list([], texts))
    assert texts == [c["text"] for c in ref["choices"]]
    assert out["dgalign"]["reward"] == "trl_rewards:toy_list" and out["dgalign"]["cost"]["reward_calls"] == 6 * 4


# ----------------------------------------------------------------------------- hf: reward models


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A random 1-layer BERT classifier with labels NEGATIVE, POSITIVE and a word-level tokenizer, saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = "a b c the movie was good bad one two three p qq rrr".split()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=32)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=vocab["[PAD]"],
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        initializer_range=0.5)  # logits of order 1 that differ between texts
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    root = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer([p + " " + c], return_tensors="pt")).logits
                            for p, c in zip(PROMPTS, TEXTS, strict=True)])  # (3, 2), one text at a time
    assert logits.std(0).min() > 0.1  # scores that tell the texts apart
    return root, logits


def test_hf_label_by_index_or_name_default_last(tiny_rm):
    root, logits = tiny_rm
    completions = [" " + c for c in TEXTS]
    for label, column in [("", 1), ("(label=1)", 1), ("(label=POSITIVE)", 1), ("(label=-1)", 1),
                          ("(label=0)", 0), ("(label=NEGATIVE)", 0), ("(label=-2)", 0)]:
        r = scores(f"hf:{root}{label}", PROMPTS, completions)
        torch.testing.assert_close(r, logits[:, column], msg=label)
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_hf_bfloat16_weights_give_float32_scores_and_are_cached_apart(tiny_rm):
    root, logits = tiny_rm
    [(_, _, bf16)] = get_reward(f"hf:{root}(dtype=bfloat16)").terms
    r = bf16(PROMPTS, [" " + c for c in TEXTS])
    assert bf16._loaded()[1].dtype == torch.bfloat16 and r.dtype == torch.float32 and r.device.type == "cpu"
    torch.testing.assert_close(r, logits[:, 1], atol=0.05, rtol=0.05)
    f32 = HFRewardModel(str(root))._loaded()
    assert f32[1].dtype == torch.float32  # auto is float32 on the CPU: one cache entry for both
    assert f32 is HFRewardModel(str(root), dtype="float32")._loaded() is not bf16._loaded()


def test_hf_revision_and_trust_remote_code_reach_every_loader(tiny_rm, monkeypatch):
    from dgalign.rewards import hf

    root, _ = tiny_rm
    seen, depth = [], [0]

    def recording(loader):
        real = loader.from_pretrained

        def from_pretrained(name, **kwargs):  # what dgalign asks for, not what transformers asks itself
            if not depth[0]:
                seen.append((loader.__name__, kwargs))
            depth[0] += 1
            try:
                return real(name, **{k: v for k, v in kwargs.items() if k != "revision"})  # a local directory
            finally:
                depth[0] -= 1

        monkeypatch.setattr(loader, "from_pretrained", from_pretrained)

    for loader in (hf.AutoConfig, hf.AutoTokenizer, hf.AutoModelForSequenceClassification):
        recording(loader)
    reward = get_reward(f"hf:{root}(revision=v0-test, label=NEGATIVE, trust_remote_code=true)")
    assert reward(["p"], [" a"]).shape == (1,)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    assert all(kw["revision"] == "v0-test" and kw["trust_remote_code"] is True for _, kw in seen), seen
    assert dict(seen)["AutoModelForSequenceClassification"]["dtype"] == torch.float32


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("label=HAPPY", r"hf:{root} has no label 'HAPPY'; valid: NEGATIVE, POSITIVE \(or an index 0..1\)"),
        ("label=2", r"hf:{root}: label 2 is not an index of its 2 labels \(0..1\)"),
        ("label=1.5", r"hf:{root}: label 1.5 is not an index of its 2 labels"),
        ("dtype=float64", r"unknown dtype 'float64'; valid: auto, float32, bfloat16, float16"),
        ("revision=1234567", r"hf:{root}: revision must be a string; quote it: revision='1234567'"),
        ("trust_remote_code=maybe", r"hf:{root}: trust_remote_code must be true or false, got 'maybe'"),
        ("device=gpu", r"unknown device 'gpu'"),
        ("colour=red", r"bad parameters"),
    ],
)
def test_hf_bad_parameters_fail_when_the_spec_is_built(tiny_rm, params, message):
    root, _ = tiny_rm
    with pytest.raises(DGAlignError, match=message.format(root=root)) as info:
        get_reward(f"hf:{root}({params})")
    assert "\n" not in str(info.value)


def test_hf_device_defaults_to_the_reward_device(tiny_rm, monkeypatch):
    root, _ = tiny_rm
    monkeypatch.delenv("DGALIGN_REWARD_DEVICE", raising=False)
    assert HFRewardModel(str(root)).device == torch.device("cpu")
    monkeypatch.setenv("DGALIGN_REWARD_DEVICE", "cuda:99")  # --reward-device sets it
    with pytest.raises(DGAlignError, match="device 'cuda:99' is not available on this machine"):
        get_reward(f"hf:{root}")
    assert HFRewardModel(str(root), device="cpu").device == torch.device("cpu")  # the term's own device wins


# ----------------------------------------------------------------------------- learned rewards only load


def test_harmless_without_its_model_fails_at_once_naming_train_rm(tmp_path, monkeypatch):
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(Unavailable) as info:
        get_reward("harmless")
    assert time.perf_counter() - start < 5  # nothing is trained, nothing is loaded
    message = str(info.value)
    assert "\n" not in message and "`dgalign train-rm --pairs " in message
    assert f"--out {tmp_path / 'cache' / 'rewards' / 'harmless'}`" in message
    assert not (tmp_path / "cache").exists()

