"""LM backends: the only package that imports transformers.

`load_lm(name_or_path)` accepts a built-in name (`dgalign models`), `toy`, a local model
directory or `.gguf` file, or any Hugging Face model id; `<model>+adapter:<dir>` adds a LoRA
adapter (`dgalign train-dpo`), merged into the weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import check_choice
from ..errors import DGAlignError
from .embedded import DEFAULT_MODEL, MODELS, converted_dir
from .toy import ToyConfig, ToyLM

__all__ = ["DEFAULT_MODEL", "DTYPES", "MODELS", "ToyConfig", "ToyLM", "describe_models", "load_lm", "resolve_device"]

_HF_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$")  # org/name; a leading "." or "/" or "~" makes it a path
VALID = ("a built-in name (`dgalign models`), a Hugging Face id (org/name), a directory with config.json and "
         "weights, or a .gguf file")
MODEL_HELP = f"a model is {VALID}"
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")  # weight files transformers reads from a model directory


def describe_models() -> list[dict]:
    """Every built-in model: name, chat or base, how to install it, what it is."""
    rows = [
        {"name": name, "chat": m.chat, "install": m.pip, "description": m.description}
        for name, m in MODELS.items()
    ]
    rows.append({"name": "toy", "chat": False, "install": "built in", "description": ToyLM.__doc__.strip()})
    return rows


def resolve_device(device: str | None) -> torch.device:
    """`device` as a torch device that exists here; None: cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DGAlignError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(dev.type, False):
        here = ", ".join(["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())),
                          *(["mps"] if available["mps"] else [])])
        raise DGAlignError(f"device {device!r} is not available on this machine; available: {here}")
    return dev


def _source(name: str) -> tuple[str | Path, str | None]:
    """Where transformers loads `name` from: (directory or HF id, GGUF file name or None)."""
    path = Path(name).expanduser()
    if name in MODELS:
        return converted_dir(name), None
    if path.is_file():
        with open(path, "rb") as f:
            if path.suffix != ".gguf" or f.read(4) != b"GGUF":
                raise DGAlignError(f"{path} is not a model: a file must be a GGUF (.gguf, starting with the GGUF "
                                   f"magic bytes); {MODEL_HELP}")
        return path.parent, path.name
    if path.is_dir():
        has_config = (path / "config.json").is_file()
        has_weights = any(next(path.glob(w), None) for w in _WEIGHTS)
        if not (has_config and has_weights):
            missing = " and ".join(m for m, ok in [("config.json", has_config), ("weights", has_weights)] if not ok)
            gguf = next(path.glob("*.gguf"), None)
            hint = f"; to load {gguf.name} pass the file itself" if gguf else ""
            raise DGAlignError(f"{path} is not a model directory (no {missing}){hint}; {MODEL_HELP}")
        return path, None
    if _HF_ID.match(name):
        return name, None
    if name.startswith((".", "/", "~")) or "/" in name:
        raise DGAlignError(f"no such file or directory {str(path)!r}; {MODEL_HELP}")
    raise DGAlignError(f"unknown model {name!r}; valid: {VALID} (built in: {', '.join([*MODELS, 'toy'])})")


# --dtype: "auto" is float32 on the CPU (half-precision matmuls are slow there) and the checkpoint's own dtype
# (transformers' dtype="auto") on an accelerator
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype | str:
    """What `from_pretrained(dtype=...)` gets for a `--dtype` value on `device`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    check_choice("dtype", dtype, DTYPES)
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return DTYPES[dtype]


def load_lm(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",  # auto | float32 | bfloat16 | float16 (DTYPES), or a torch dtype
    device: str | None = None,  # None: cuda when available, else cpu; ignored with device_map
    device_map: str | dict | None = None,  # accelerate's placement ("auto", "balanced", {module: device})
    revision: str | None = None,  # hub branch, tag or commit
    trust_remote_code: bool = False,  # run the repository's own modelling code (hub models that need it)
    chat: bool | None = None,  # apply the chat template; None: instruct models do
):
    """Load an LM by built-in name, local path or Hugging Face id, optionally `+adapter:<dir>`.

    Weights load in `dtype` on `device` (or spread by `device_map`); the samplers' own maths upcasts to
    float32 wherever it needs it, so bf16 and fp16 models sample correctly.
    """
    device = resolve_device(device if device_map is None else None)  # with a map: where most of it will be
    torch_dtype = resolve_dtype(dtype, device)
    if name_or_path == "toy":
        return ToyLM(ToyConfig())
    full_name = name_or_path
    name_or_path, with_adapter, adapter = name_or_path.partition("+adapter:")
    if name_or_path == "toy":
        raise DGAlignError("the toy LM takes no adapter (train-dpo fine-tunes Hugging Face models)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import HFLM

    source, gguf = _source(name_or_path)
    if name_or_path in MODELS:
        chat = MODELS[name_or_path].chat if chat is None else chat
    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf, **hub)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch_dtype, **hub, **placement)
        if device_map is None:
            model = model.to(device)
    except Exception as err:  # user files meet a third-party loader: whatever it raises, name the model
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DGAlignError(f"could not load model {name_or_path!r}: {first}") from err
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
    try:
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    except Exception as err:  # a damaged or foreign adapter directory
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DGAlignError(f"could not load the LoRA adapter in {path}: {first}") from err
