"""Reward from a Hugging Face sequence-classification reward model: the last label's logit, unbounded."""

import functools

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


@functools.cache
def _load(model_id: str, device: str):
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForSequenceClassification.from_pretrained(model_id).to(device, torch.float32).eval()
    if tokenizer.pad_token is None:
        # batches need a pad token; decoder heads score the last non-pad token, found via config.pad_token_id
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


class HFRewardModel:
    """Logit of the last label (the only one if num_labels == 1) of an HF reward model on prompt + completion."""

    def __init__(self, model_id: str, *, batch_size: int = 8, max_length: int = 4096, device: str = "cpu"):
        self.model_id = model_id  # hub id or local directory
        self.batch_size = batch_size  # texts per forward pass
        self.max_length = max_length  # tokens kept per text (the tokenizer's own limit applies if smaller)
        self.device = device

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """The text the model reads: its chat template with user=prompt, assistant=completion, if it has one."""
        tokenizer, _ = _load(self.model_id, self.device)
        if tokenizer.chat_template is None:
            return [p + c for p, c in zip(prompts, completions, strict=True)]
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in zip(prompts, completions, strict=True)
        ]

    @torch.inference_mode()
    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        tokenizer, model = _load(self.model_id, self.device)
        texts = self.texts(prompts, completions)
        # a chat template writes its own special tokens; plain text gets the tokenizer's (e.g. [CLS] ... [SEP])
        add_special = tokenizer.chat_template is None
        max_length = min(self.max_length, tokenizer.model_max_length)
        scores = []
        for i in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=add_special,
                return_tensors="pt",
            ).to(self.device)
            logits = model(**batch).logits  # (b, num_labels)
            scores.append(logits[:, -1].float())
        return torch.cat(scores).cpu()
