"""DGA checkpoints: the learned nets (g_φ, r_φ, δ_ψ) as safetensors plus a JSON config.

The JSON names the LM, reward and β they were trained for, the embedding scale, and the
training config, so a checkpoint is never used silently with another model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ...errors import DGAlignError
from .denoiser import Correction
from .proposal import Proposal
from .value import ValueHead

CONFIG, WEIGHTS = "dga.json", "dga.safetensors"
SHIPPED_DIR = Path(__file__).parent / "shipped"
# checkpoints shipped as package data, named (not pathed) by `--set checkpoint=NAME`; each directory
# holds the `dgalign train` command that made it (TRAIN_COMMAND)
SHIPPED = {
    "toxicity": "smollm2-135m-instruct-toxicity",  # embedded SmolLM2 × `toxicity`, β = 4, raw RTP prompts
    "sentiment": "smollm2-135m-instruct-sentiment",  # embedded SmolLM2 × `sentiment`, β = 4, raw IMDB openings
}


def shipped_path(name: str) -> Path:
    """The directory of a shipped checkpoint (`toxicity`, `sentiment`)."""
    if name not in SHIPPED:
        raise DGAlignError(f"unknown shipped DGA checkpoint {name!r}; valid: {', '.join(sorted(SHIPPED))}")
    return SHIPPED_DIR / SHIPPED[name]


def resolve_checkpoint(spec: str) -> Path:
    """A shipped checkpoint's name, or a directory written by `dgalign train`."""
    return shipped_path(spec) if spec in SHIPPED else Path(spec)


@dataclass
class DGANets:
    """The learned parts of DGA for one (LM, reward) pair."""

    emb_dim: int
    hidden_dim: int
    vocab_size: int
    correction: Correction
    value: ValueHead
    proposal: Proposal
    meta: dict = field(default_factory=dict)  # model, reward, beta, emb_scale, train config, losses

    @classmethod
    def fresh(cls, emb_dim: int, hidden_dim: int, vocab_size: int, width: int = 256,
              meta: dict | None = None) -> DGANets:
        return cls(emb_dim, hidden_dim, vocab_size, Correction(emb_dim, hidden_dim, width),
                   ValueHead(emb_dim, hidden_dim, vocab_size, width), Proposal(emb_dim, hidden_dim, width),
                   dict(meta or {}, width=width))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"correction": self.correction, "value": self.value, "proposal": self.proposal}

    def save(self, out: str | Path) -> Path:
        """Write atomically: a temp dir beside `out`, then rename over it."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}.{k}": v.detach().contiguous().cpu()
                   for name, mod in self.modules().items() for k, v in mod.state_dict().items()}
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
        save_file(tensors, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps({"emb_dim": self.emb_dim, "hidden_dim": self.hidden_dim,
                                              "vocab_size": self.vocab_size, **self.meta}, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        (tmp / WEIGHTS).chmod(0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, spec: str | Path) -> DGANets:
        """Load a shipped checkpoint by name or a `dgalign train` directory by path."""
        path = resolve_checkpoint(str(spec))
        if not (path / CONFIG).exists() or not (path / WEIGHTS).exists():
            raise DGAlignError(f"{path} is not a DGA checkpoint (needs {CONFIG} and {WEIGHTS}; make one with `dgalign train`)")
        damaged = "the checkpoint is damaged; retrain it with `dgalign train`"
        try:
            meta = json.loads((path / CONFIG).read_bytes())
        except ValueError as err:  # not JSON, or not UTF-8
            raise DGAlignError(f"{path / CONFIG} is not valid JSON ({err}); {damaged}") from None
        if isinstance(meta, dict) and "emb_dim" in meta and "vocab_size" not in meta:
            raise DGAlignError(f"{path} was written by an older dgalign (no vocab_size); retrain it with `dgalign train`")
        sizes = [meta.get("emb_dim"), meta.get("hidden_dim"), meta.get("vocab_size"), meta.get("width", 256)] \
            if isinstance(meta, dict) else [None]
        if not all(isinstance(n, int) and n > 0 for n in sizes):
            raise DGAlignError(f"{path / CONFIG} needs positive integers emb_dim, hidden_dim, vocab_size (and width); "
                               f"{damaged}")
        nets = cls.fresh(meta.pop("emb_dim"), meta.pop("hidden_dim"), meta.pop("vocab_size"), meta.get("width", 256),
                         meta)
        try:
            tensors = load_file(path / WEIGHTS)
            for name, mod in nets.modules().items():
                mod.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
                mod.eval()
        except (SafetensorError, RuntimeError) as err:  # truncated or foreign file; tensors not matching dga.json
            first = str(err).strip().splitlines()[0]
            raise DGAlignError(f"{path / WEIGHTS} cannot be loaded ({first}); {damaged}") from None
        return nets
