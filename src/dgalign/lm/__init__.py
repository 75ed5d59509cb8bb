"""LM backends: the only package that imports transformers.

`load_lm(name_or_path)` accepts a built-in name (`dgalign models`), `toy`, a local model
directory or `.gguf` file, or any Hugging Face model id; `<model>+adapter:<dir>` adds a LoRA
adapter (`dgalign train-dpo`), merged into the weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import DGAlignError, UnknownNameError
from .embedded import DEFAULT_MODEL, MODELS, converted_dir
from .toy import ToyConfig, ToyLM

__all__ = ["DEFAULT_MODEL", "MODELS", "ToyConfig", "ToyLM", "describe_models", "load_lm"]

_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def describe_models() -> list[dict]:
    """Every built-in model: name, chat or base, how to install it, what it is."""
    rows = [
        {"name": name, "chat": m.chat, "install": m.pip, "description": m.description}
        for name, m in MODELS.items()
    ]
    rows.append({"name": "toy", "chat": False, "install": "built in", "description": ToyLM.__doc__.strip()})
    return rows


def load_lm(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | None = None,  # None: cuda when available, else cpu
    dtype: torch.dtype = torch.float32,
    chat: bool | None = None,  # apply the chat template; None: instruct models do
):
    """Load an LM by built-in name, local path or Hugging Face id, optionally `+adapter:<dir>`."""
    if name_or_path == "toy":
        return ToyLM(ToyConfig())
    full_name = name_or_path
    name_or_path, with_adapter, adapter = name_or_path.partition("+adapter:")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import HFLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(name_or_path).expanduser()
    if name_or_path in MODELS:
        source, gguf = converted_dir(name_or_path), None
        chat = MODELS[name_or_path].chat if chat is None else chat
    elif path.is_file() and path.suffix == ".gguf":
        source, gguf = path.parent, path.name
    elif path.is_dir() or _HF_ID.match(name_or_path):
        source, gguf = name_or_path, None
    else:
        raise UnknownNameError("model", name_or_path, [*MODELS, "toy", "<HF model id or local path>"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=dtype).to(device)
    except OSError as err:
        raise DGAlignError(f"could not load model {name_or_path!r}: {str(err).splitlines()[0]}") from err
    if with_adapter:
        model = _merge_adapter(model, adapter)
    return HFLM(model, tokenizer, name=full_name, chat=chat)


def _merge_adapter(model, adapter: str):
    """The model with a LoRA adapter directory merged into its weights (peft's merge_and_unload)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DGAlignError("loading an adapter needs peft: pip install 'dgalign[dpo]'") from None
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise DGAlignError(f"no LoRA adapter at {path} (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, path).merge_and_unload()
