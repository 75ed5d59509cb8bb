"""Reward from a Hugging Face sequence-classification reward model: one label's logit, unbounded.

"hf:org/rm(dtype=bfloat16, label=POSITIVE, revision=main, device=cuda)": the weights load in `dtype` on `device`
(default $DGALIGN_REWARD_DEVICE, set by `--reward-device`, else the CPU), from the hub `revision`; `label` picks
the logit (an index, or a name of the model's `config.label2id`; default the last label). Scores are float32.
"""

import functools
import os

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from dgalign.errors import DGAlignError
from dgalign.lm import resolve_device, resolve_dtype

REWARD_DEVICE = "DGALIGN_REWARD_DEVICE"  # where reward models run when a term names no device (`--reward-device`)


@functools.cache
def _load(model_id: str, dtype: torch.dtype | str, device: str, revision: str | None, trust_remote_code: bool):
    """(tokenizer, model), loaded once per (id, dtype, device, revision)."""
    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model_id, **hub)
    model = AutoModelForSequenceClassification.from_pretrained(model_id, dtype=dtype, **hub).to(device).eval()
    if tokenizer.pad_token is None:
        # batches need a pad token; decoder heads score the last non-pad token, found via config.pad_token_id
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


class HFRewardModel:
    """Logit of one label (default the last, the only one if num_labels == 1) of an HF reward model on
    prompt + completion."""

    def __init__(
        self,
        model_id: str,
        *,
        batch_size: int = 8,
        max_length: int = 4096,
        dtype: str = "auto",
        device: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        label: int | str | None = None,
    ):
        self.model_id = model_id  # hub id or local directory
        self.batch_size = batch_size  # texts per forward pass
        self.max_length = max_length  # tokens kept per text (the tokenizer's own limit applies if smaller)
        # None: $DGALIGN_REWARD_DEVICE, else the CPU (not the LM's device: a reward model may not fit beside it)
        self.device = resolve_device(device or os.environ.get(REWARD_DEVICE) or "cpu")
        # auto | float32 | bfloat16 | float16; auto is float32 on the CPU, the checkpoint's own dtype elsewhere
        self.dtype = resolve_dtype(dtype, self.device)
        if not (revision is None or isinstance(revision, str)):  # a bare 1234567 parses as a number
            raise DGAlignError(f"hf:{model_id}: revision must be a string; quote it: revision='{revision}'")
        self.revision = revision  # hub branch, tag or commit; None: the default branch
        if trust_remote_code not in (True, False, "true", "false"):
            raise DGAlignError(f"hf:{model_id}: trust_remote_code must be true or false, got {trust_remote_code!r}")
        self.trust_remote_code = trust_remote_code in (True, "true")  # run the repository's own modelling code
        self.label = -1 if label is None else self._label_index(label)  # the logit scored

    def _label_index(self, label: int | str) -> int:
        """A label index or `config.label2id` name as an index into the logits, checked against the config."""
        config = AutoConfig.from_pretrained(
            self.model_id, revision=self.revision, trust_remote_code=self.trust_remote_code
        )
        n = config.num_labels
        if isinstance(label, str):
            if label not in config.label2id:
                raise DGAlignError(
                    f"hf:{self.model_id} has no label {label!r}; valid: {', '.join(config.label2id)} "
                    f"(or an index 0..{n - 1})"
                )
            return int(config.label2id[label])
        if isinstance(label, bool) or not isinstance(label, int) or not -n <= label < n:
            raise DGAlignError(f"hf:{self.model_id}: label {label!r} is not an index of its {n} labels (0..{n - 1})")
        return label % n

    def _loaded(self):
        return _load(self.model_id, self.dtype, str(self.device), self.revision, self.trust_remote_code)

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """The text the model reads: its chat template with user=prompt, assistant=completion, if it has one."""
        tokenizer, _ = self._loaded()
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
        tokenizer, model = self._loaded()
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
            logits = model(**batch).logits  # (b, num_labels), in the model's dtype
            scores.append(logits[:, self.label].float())  # upcast: bf16/fp16 logits are scored as float32
        return torch.cat(scores).cpu()
