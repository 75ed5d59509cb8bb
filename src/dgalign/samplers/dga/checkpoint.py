"""DGA checkpoints: the learned nets (g_φ, r_φ, δ_ψ) as safetensors plus a JSON config.

The JSON names the LM, reward and β they were trained for, the embedding scale, and the
training config, so a checkpoint is never used silently with another model. `checkpoint=` names a
shipped checkpoint, a directory, or `hf:ORG/NAME[@REVISION]`: a Hugging Face Hub repo that
`dgalign train --push-to-hub` wrote, fetched into (or found in) the HF cache.
"""

from __future__ import annotations

import importlib
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
COMMAND, CARD = "TRAIN_COMMAND", "README.md"  # the `dgalign train` command; a Hub repo's model card
HUB_PREFIX = "hf:"  # `checkpoint=hf:ORG/NAME[@REVISION]`: a Hugging Face Hub repo
HUB_FILES = [CONFIG, WEIGHTS, COMMAND, CARD]  # what a Hub checkpoint repo holds (and all that is fetched)
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


def hub_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises: OS and validation errors, and its HTTP library's (httpx2 in huggingface_hub 2,
    httpx in 1, requests before)."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def hub_path(spec: str) -> Path:
    """The local snapshot of `hf:REPO_ID[@REVISION]` (default revision `main`): downloaded, or found in the
    HF cache (`HF_HUB_CACHE`) when the Hub cannot be reached or `HF_HUB_OFFLINE=1`."""
    from huggingface_hub import snapshot_download

    repo_id, at, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    if not repo_id or (at and not revision):
        raise DGAlignError(f"checkpoint {spec!r}: give a Hub repo, {HUB_PREFIX}ORG/NAME or {HUB_PREFIX}ORG/NAME@REVISION")
    where = f"Hugging Face Hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_FILES))
    except hub_errors() as err:  # the Hub's errors; ValueError: a malformed repo id
        raise DGAlignError(f"cannot load DGA checkpoint {spec!r}: {_hub_failure(err, where)}") from None
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise DGAlignError(f"the {where} is not a DGA checkpoint: its snapshot {path} has no "
                           f"{' and no '.join(missing)} (make one with `dgalign train --push-to-hub`)")
    return path


def _hub_failure(err: Exception, where: str) -> str:
    """Why `snapshot_download` failed, in one line naming the repo."""
    from huggingface_hub import errors

    if isinstance(err, errors.RevisionNotFoundError):
        return f"the {where} was not found (the repo has no such branch, tag or commit)"
    if isinstance(err, errors.RepositoryNotFoundError):  # gated and private ones too
        return (f"no {where}, or it is private or gated and no token with access is set (`hf auth login` or "
                "HF_TOKEN)")
    if isinstance(err, errors.IncompleteSnapshotError):
        return f"the Hub cannot be reached and the cached snapshot of the {where} is incomplete"
    if isinstance(err, errors.LocalEntryNotFoundError):  # offline and not in the cache
        offline = isinstance(err.__cause__, errors.OfflineModeIsEnabled)
        why = "HF_HUB_OFFLINE is set" if offline else _first_line(err.__cause__ or err)
        return f"the Hub cannot be reached ({why}) and the {where} is not in the local cache"
    return f"the {where} cannot be fetched ({_first_line(err)})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def resolve_checkpoint(spec: str) -> Path:
    """A shipped checkpoint's name, `hf:REPO_ID[@REVISION]`, or a directory written by `dgalign train`."""
    if spec.startswith(HUB_PREFIX):
        return hub_path(spec)
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
        """Load a shipped checkpoint by name, a Hub repo by `hf:REPO_ID[@REVISION]`, or a `dgalign train`
        directory by path."""
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
