"""DPO fine-tuning of a LoRA adapter on preference pairs: the RLHF stand-in baseline
(Rafailov et al., NeurIPS 2023, *Direct Preference Optimization*), with TRL's `DPOTrainer` and peft.

Pairs are JSONL (optionally gzipped), one {"prompt"?, "chosen", "rejected"} per line. With a
"prompt" the answers are plain strings; without one, chosen and rejected are whole HH-RLHF
transcripts ("\\n\\nHuman: … \\n\\nAssistant: …") and their shared prefix, up to its last
"Assistant:" turn, becomes the prompt. Pairs become chat messages for models with a chat template
(as `dgalign generate` prompts them) and plain text otherwise; prompts longer than
`max_prompt_length` lose their earliest turns. A seeded shuffle puts `eval_pairs` aside before the
`max_pairs` training pairs are taken; the chosen-vs-rejected log-prob margin on those held-out
pairs is measured before and after training.

Training runs in `<out>.partial` beside `out` (checkpoints every `save_steps`, `resume` continues
from the last); the adapter and `dpo.json` (model, data, hyperparameters, time, losses, margins)
are renamed to `out` only at the end. The result loads as `load_lm("<model>+adapter:<out>")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import HH_ASSISTANT, HH_HUMAN, split_transcripts
from ..errors import DGAlignError
from .pairs import pair_rows, pairs_name

INSTALL = "pip install 'dgalign[dpo]'"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass
class DPOTrainConfig:
    model: str  # base model: built-in name, HF id or local directory
    pairs: str  # preference pairs, JSONL or JSONL.gz, or a suite's training split by name (hh-harmless:train)
    out: str  # adapter directory, written when training ends
    max_pairs: int = 200  # training pairs (CPU-sized)
    eval_pairs: int = 50  # held-out pairs for the chosen-vs-rejected margin before / after
    epochs: float = 1.0  # passes over the training pairs
    lr: float = 5e-4  # AdamW learning rate of the LoRA weights (linear decay)
    beta: float = 0.1  # DPO β: larger keeps the policy closer to the base
    lora_r: int = 8  # LoRA rank, on every linear layer but the LM head
    lora_alpha: int = 16  # LoRA scale numerator (scale = alpha / r)
    max_length: int = 256  # prompt + answer tokens; answers are cut at the end beyond it
    max_prompt_length: int = 128  # prompt tokens; earliest turns dropped, pairs that still exceed skipped
    batch_size: int = 4  # pairs per optimiser step
    save_steps: int = 10  # checkpoint every this many steps (what `resume` restarts from)
    logging_steps: int = 5  # loss logged every this many steps
    seed: int = 0  # data shuffle and split, LoRA init
    resume: bool = False  # continue the run in `<out>.partial` from its last checkpoint
    dtype: str = "auto"  # the base model's weights (lm.DTYPES); LoRA weights train in float32
    device: str | None = None  # None: cuda when available
    revision: str | None = None  # hub branch, tag or commit of `model`
    trust_remote_code: bool = False


def split_hh(chosen: str, rejected: str) -> tuple[list[dict], str, str] | None:
    """HH-RLHF transcripts -> (prompt messages ending on a user turn, chosen answer, rejected answer).

    None when the shared prefix has no "Assistant:" turn, the transcripts diverge before their
    last turn, or the answers are empty or equal.
    """
    prompt, good, bad = split_transcripts(chosen, rejected)
    if not prompt:
        return None
    if not good or not bad or good == bad or HH_HUMAN in good or HH_HUMAN in bad:
        return None
    parts = _TURN.split(prompt[: -len(HH_ASSISTANT)])  # ['', 'Human', ' text', 'Assistant', ' text', …]
    if parts[0].strip() or len(parts) < 3:
        return None
    messages = [{"role": _ROLE[role], "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2],
                                                                                      strict=True)]
    if messages[-1]["role"] != "user":
        return None
    return messages, good, bad


def to_example(row: dict, tokenizer, max_prompt_length: int) -> dict | None:
    """One pair in TRL's conversational (chat template) or standard (plain text) format, or None to skip."""
    if not {"chosen", "rejected"} <= set(row):
        raise DGAlignError(f"a preference pair needs 'chosen' and 'rejected' (and optionally 'prompt'); got {sorted(row)}")
    if "prompt" in row:
        messages, good, bad = [{"role": "user", "content": row["prompt"]}], row["chosen"], row["rejected"]
    else:
        split = split_hh(row["chosen"], row["rejected"])
        if split is None:
            return None
        messages, good, bad = split
    chat = tokenizer.chat_template is not None
    while True:  # drop the earliest exchange until the prompt fits
        if chat:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        else:
            ids = tokenizer(_transcript(messages))["input_ids"]
        if len(ids) <= max_prompt_length:
            break
        if len(messages) < 3:
            return None
        messages = messages[2:]
    if chat:
        return {"prompt": messages, "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}
    return {"prompt": _transcript(messages), "chosen": " " + good, "rejected": " " + bad}


def _transcript(messages: list[dict]) -> str:
    """Plain-text prompt for a model without a chat template: HH-style turns, ending on "Assistant:"."""
    tags = {"user": HH_HUMAN, "assistant": HH_ASSISTANT}
    return "".join(f"{tags[m['role']]} {m['content']}" for m in messages) + HH_ASSISTANT


def select_pairs(rows: list[dict], tokenizer, cfg: DPOTrainConfig) -> tuple[list[dict], list[dict], int]:
    """(train, held-out, skipped): a seeded shuffle, held-out pairs first, then the training pairs."""
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    chosen, skipped, need = [], 0, cfg.eval_pairs + cfg.max_pairs
    for i in order:
        example = to_example(rows[i], tokenizer, cfg.max_prompt_length)
        if example is None:
            skipped += 1
            continue
        chosen.append(example)
        if len(chosen) == need:
            break
    if len(chosen) <= cfg.eval_pairs:
        raise DGAlignError(f"{cfg.pairs}: only {len(chosen)} usable pairs ({skipped} skipped), "
                           f"need more than eval_pairs={cfg.eval_pairs}")
    return chosen[cfg.eval_pairs:], chosen[: cfg.eval_pairs], skipped


def _margins(metrics: dict) -> dict:
    """Held-out summary from TRL's eval metrics: mean log p(chosen) − log p(rejected) and DPO loss."""
    return {
        "logp_chosen": metrics["eval_logps/chosen"],
        "logp_rejected": metrics["eval_logps/rejected"],
        "margin": metrics["eval_logps/chosen"] - metrics["eval_logps/rejected"],
        "reward_accuracy": metrics["eval_rewards/accuracies"],  # share of pairs whose margin grew vs the base
        "loss": metrics["eval_loss"],
    }


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def train_dpo(cfg: DPOTrainConfig, *, callbacks: list | None = None) -> dict:
    """Train the adapter, write it to `cfg.out` atomically, and return the summary saved in `dpo.json`.

    `callbacks` are transformers `TrainerCallback`s (progress hooks; tests interrupt a run with one).
    """
    import torch

    try:
        import peft
        import trl
        from datasets import Dataset
        from transformers.trainer_utils import get_last_checkpoint
    except ImportError as err:
        raise DGAlignError(f"DPO training needs peft and trl ({err.name} is missing): {INSTALL}") from None
    from ..lm import load_lm
    from ..lm.hf import HFLM

    out = Path(cfg.out).expanduser()
    work = out.with_name(f".{out.name}.partial")
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"}
    if out.exists():
        raise DGAlignError(f"{out} already exists; choose another --out or delete it")
    if cfg.max_pairs < 1 or cfg.eval_pairs < 1 or cfg.epochs <= 0:
        raise DGAlignError("max_pairs and eval_pairs must be at least 1 and epochs positive")
    if work.exists() and not cfg.resume:
        raise DGAlignError(f"a partial run is in {work}: pass --resume to continue it, or delete it")
    if cfg.resume:
        if not (work / "run.json").exists():
            raise DGAlignError(f"nothing to resume: no partial run in {work}")
        saved = json.loads((work / "run.json").read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise DGAlignError(f"--resume with different settings than the partial run: {', '.join(changed)}")

    rows = pair_rows(cfg.pairs)  # before the model loads: a bad file fails fast
    lm = load_lm(cfg.model, dtype=cfg.dtype, device=cfg.device, revision=cfg.revision,
                 trust_remote_code=cfg.trust_remote_code)
    if not isinstance(lm, HFLM):
        raise DGAlignError(f"DPO fine-tunes a Hugging Face model; {cfg.model!r} has no weights to train "
                           "(give a built-in name, an HF id or a model directory)")
    model, tokenizer = lm.model, lm.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, held_out, skipped = select_pairs(rows, tokenizer, cfg)
    args = trl.DPOConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        beta=cfg.beta,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        gradient_checkpointing=False,  # small model: recomputation costs more than it saves
        bf16=lm.model.dtype == torch.bfloat16 and lm.device.type == "cuda",  # mixed precision on a GPU only
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
    )
    lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                           task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                             eval_dataset=Dataset.from_list(held_out), processing_class=tokenizer,
                             peft_config=lora, callbacks=callbacks)

    work.mkdir(parents=True, exist_ok=True)
    if cfg.resume and (work / "eval_before.json").exists():
        before = json.loads((work / "eval_before.json").read_text())
    else:  # the LoRA update starts at zero: this is the base model
        _write_json(work / "run.json", settings)
        before = _margins(trainer.evaluate())
        _write_json(work / "eval_before.json", before)
    checkpoint = get_last_checkpoint(str(work)) if cfg.resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    after = _margins(trainer.evaluate())

    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    summary = {
        "model": cfg.model,
        "data": {"pairs": pairs_name(cfg.pairs), "train_pairs": len(train), "eval_pairs": len(held_out), "skipped": skipped},
        "hyperparameters": settings,
        "train_seconds": round(seconds, 2),
        "resumed_from": None if checkpoint is None else Path(checkpoint).name,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1][1] if losses else result.training_loss,
        "mean_train_loss": result.training_loss,
        "loss_curve": losses,
        "eval_before": before,
        "eval_after": after,
        "versions": {"trl": trl.__version__, "peft": peft.__version__},
    }
    final = work / "adapter"
    trainer.model.save_pretrained(final)
    _write_json(final / "dpo.json", summary)
    os.replace(final, out)
    shutil.rmtree(work)
    return summary
