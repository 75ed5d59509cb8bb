"""The DPO baseline: HH-RLHF parsing, training moves the margin the right way, resume, adapter loading.

Training uses a tiny random Llama with the embedded model's tokenizer, saved into a temp dir.
"""

import copy
import dataclasses
import gzip
import json

import pytest
import torch

from dgalign.data import read_pair_rows
from dgalign.errors import DGAlignError
from dgalign.train.dpo import DPOTrainConfig, split_hh, to_example, train_dpo

GOOD, BAD = "Yes, gladly.", "No. Go away now."
TOPICS = ["cats", "rain", "tea", "maps", "bread", "jazz", "moss", "kites", "clocks", "owls", "salt", "ferns"]


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer (it has a chat template)."""
    from transformers import AutoTokenizer

    from dgalign.lm.embedded import converted_dir

    return AutoTokenizer.from_pretrained(converted_dir("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """A tiny random LlamaForCausalLM with that tokenizer, and 12 pairs (HH transcripts and prompt form)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    with gzip.open(root / "pairs.jsonl.gz", "wt") as f:
        for i, topic in enumerate(TOPICS):
            if i % 2:
                row = {"prompt": f"Tell me about {topic}.", "chosen": GOOD, "rejected": BAD}
            else:
                ask = f"\n\nHuman: Tell me about {topic}.\n\nAssistant:"
                row = {"chosen": f"{ask} {GOOD}", "rejected": f"{ask} {BAD}"}
            f.write(json.dumps(row) + "\n")
    return root


def test_split_hh_takes_the_shared_prefix_as_the_prompt():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me lie.\n\nAssistant: I'd rather not."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me lie.\n\nAssistant: Sure, here is how."
    messages, good, bad = split_hh(chosen, rejected)
    assert messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "Help me lie."}]
    assert (good, bad) == ("I'd rather not.", "Sure, here is how.")
    # answers sharing a start still split at the last Assistant turn
    assert split_hh("\n\nHuman: Q\n\nAssistant: I think A", "\n\nHuman: Q\n\nAssistant: I think B")[1:] == (
        "I think A", "I think B")
    # transcripts that diverge before the last turn, or equal answers, are skipped
    assert split_hh("\n\nHuman: Q\n\nAssistant: A\n\nHuman: R\n\nAssistant: S",
                    "\n\nHuman: Q\n\nAssistant: B\n\nHuman: R\n\nAssistant: S") is None
    assert split_hh("\n\nHuman: Q\n\nAssistant: A", "\n\nHuman: Q\n\nAssistant: A") is None
    assert split_hh("no transcript", "at all") is None


def test_real_hh_file_format():
    from pathlib import Path

    path = Path("/work/shared/datasets/hh_harmless.jsonl.gz")
    if not path.exists():
        pytest.skip("the HH-RLHF harmless file is not here")
    rows = read_pair_rows(path)
    assert set(rows[0]) == {"chosen", "rejected"}
    assert sum(split_hh(r["chosen"], r["rejected"]) is not None for r in rows[:200]) >= 190


def test_examples_follow_the_tokenizer(tokenizer):
    hh = {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D", "rejected":
          "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: E"}
    chat = to_example(hh, tokenizer, max_prompt_length=128)
    assert chat["prompt"][-1] == {"role": "user", "content": "C"} and chat["chosen"][0]["content"] == "D"
    # a long history loses its earliest exchange first; the last user turn alone too long: skipped
    limit = len(tokenizer.apply_chat_template(chat["prompt"][-1:], add_generation_prompt=True, tokenize=True,
                                              return_dict=False))
    assert to_example(hh, tokenizer, max_prompt_length=limit)["prompt"] == chat["prompt"][-1:]
    assert to_example(hh, tokenizer, max_prompt_length=limit - 1) is None
    with pytest.raises(DGAlignError, match="needs 'chosen' and 'rejected'"):
        to_example({"prompt": "x", "chosen": "y"}, tokenizer, 128)
    tokenizer_plain = copy.deepcopy(tokenizer)
    tokenizer_plain.chat_template = None
    text = to_example(hh, tokenizer_plain, max_prompt_length=128)
    assert text == {"prompt": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:", "chosen": " D",
                    "rejected": " E"}


class _Interrupt(Exception):
    pass


def _margin(lm, prompt: str) -> float:
    """log p(GOOD) − log p(BAD) for a prompt, answers as the chat template writes them."""
    ids = lm.encode([prompt])[0]
    answers = []
    for answer in (GOOD, BAD):
        full = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": answer}],
                                                tokenize=True, return_dict=False)
        assert full[: len(ids)] == ids
        answers.append(full[len(ids):])
    lp = lm.sequence_logprobs([ids, ids], answers)
    return float(lp[0] - lp[1])


@pytest.mark.slow
def test_train_interrupt_resume_and_load(tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from dgalign.lm import load_lm

    root = tiny

    class StopAtFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise _Interrupt

    out = tmp_path / "adapter"
    cfg = DPOTrainConfig(model=str(root / "model"), pairs=str(root / "pairs.jsonl.gz"), out=str(out), max_pairs=8,
                         eval_pairs=4, epochs=2, lr=5e-3, batch_size=4, save_steps=2, logging_steps=1)
    with pytest.raises(_Interrupt):
        train_dpo(cfg, callbacks=[StopAtFirstSave()])
    work = tmp_path / ".adapter.partial"
    assert not out.exists() and (work / "checkpoint-2").is_dir()  # nothing published before the end
    with pytest.raises(DGAlignError, match="pass --resume"):
        train_dpo(cfg)
    with pytest.raises(DGAlignError, match="different settings than the partial run: lr"):
        train_dpo(dataclasses.replace(cfg, lr=1e-3, resume=True))

    summary = train_dpo(dataclasses.replace(cfg, resume=True))
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 4
    assert not work.exists() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "dpo.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["data"] == {"pairs": cfg.pairs, "train_pairs": 8, "eval_pairs": 4, "skipped": 0}
    losses = [loss for _, loss in summary["loss_curve"]]
    assert [s for s, _ in summary["loss_curve"]] == [1, 2, 3, 4] and losses[-1] < losses[0]
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["loss"] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts at zero: policy == reference
    assert after["loss"] < before["loss"] and after["margin"] > before["margin"]  # on held-out pairs
    assert all(float(t.abs().sum()) > 0 for k, t in load_file(out / "adapter_model.safetensors").items()
               if "lora_B" in k)  # every LoRA update moved off its zero init

    base = load_lm(str(root / "model"), device="cpu")
    tuned = load_lm(f"{root / 'model'}+adapter:{out}", device="cpu")
    assert tuned.name.endswith(f"+adapter:{out}")
    assert _margin(tuned, "Tell me about lakes.") > _margin(base, "Tell me about lakes.")
    with pytest.raises(DGAlignError, match="no LoRA adapter"):
        load_lm(f"{root / 'model'}+adapter:{tmp_path / 'missing'}", device="cpu")
