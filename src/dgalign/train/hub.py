"""Publish a DGA checkpoint on the Hugging Face Hub: `dgalign train --push-to-hub REPO_ID`.

The repo holds the checkpoint files (`dga.json`, `dga.safetensors`), the command that made them
(`TRAIN_COMMAND`) and a model card (`README.md`); anyone loads it with
`--set checkpoint=hf:REPO_ID[@REVISION]` (`samplers/dga/checkpoint.py: hub_path`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..errors import DGAlignError
from ..samplers.dga.checkpoint import CARD, COMMAND, CONFIG, HUB_FILES, HUB_PREFIX, hub_errors


def check_push(repo_id: str) -> None:
    """Fail before training, not after it: a valid repo id, the Hub not switched off, a token to push with."""
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise DGAlignError(f"--push-to-hub {repo_id!r} is not a Hub repo id (ORG/NAME): {err}") from None
    if constants.is_offline_mode():
        raise DGAlignError("--push-to-hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise DGAlignError("--push-to-hub needs a Hugging Face token with write access: run `hf auth login` or "
                           "set HF_TOKEN")


def model_card(repo_id: str, meta: dict, command: str, revision: str | None = None) -> str:
    """The repo's README.md: what the nets were trained for, how to use them, and how they were made."""
    spec = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    losses = ", ".join(f"{k} {v:.4g}" for k, v in meta.get("losses", {}).items() if v is not None)
    model, reward = shlex.quote(str(meta.get("model"))), shlex.quote(str(meta.get("reward")))
    return f"""---
library_name: dgalign
tags:
- dgalign
- dga
- decode-time-alignment
---

# {repo_id}

A dgalign DGA checkpoint (Diffusion-Guided Alignment): the denoiser correction g_φ, value head r_φ
and proposal δ_ψ that steer the decoding of one language model towards p(y)·exp(β·r(y))/Z for one
reward r. The nets serve only the model they were trained on (dgalign refuses any other).

- **Base model**: `{meta.get("model")}`
- **Reward**: `{meta.get("reward")}`
- **β**: {meta.get("beta")} (the proposal is fitted for this β; it scales linearly with β at inference)
- **Schedule**: {meta.get("steps")} `{meta.get("schedule")}` steps over the top-{meta.get("top_m")} candidates
- **Data**: {meta.get("tuples")} tuples from {meta.get("prompts")} prompts; {meta.get("train_seconds")} s of training
- **Final losses**: {losses or "not recorded"}

## Use

```bash
dgalign generate "Tell me about my neighbours." --model {model} --reward {reward} --method dga \\
    --beta {meta.get("beta")} --set checkpoint={spec}
```

## Training command

```bash
{command}
```

Training configuration (`dga.json`, `train`):

```json
{json.dumps(meta.get("train", {}), indent=2)}
```
"""


def push_checkpoint(path: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    argv: list[str] | None = None) -> str:
    """Write a model card (and, from `argv`, a TRAIN_COMMAND when the checkpoint has none) into the checkpoint
    directory, then upload its checkpoint files to `repo_id` — created if missing, `private` or public (None:
    the Hub's default); `revision` a branch, created from main if missing. Returns the commit's URL."""
    path = Path(path)
    meta = json.loads((path / CONFIG).read_text())
    if argv and not (path / COMMAND).is_file():
        (path / COMMAND).write_text(f"# made with dgalign {__version__}, {meta.get('train_seconds')} s of training:\n"
                                    f"dgalign {shlex.join(argv[1:])}\n")
    command = (path / COMMAND).read_text().strip() if (path / COMMAND).is_file() else \
        "# not recorded; the training configuration below has every setting"
    (path / CARD).write_text(model_card(repo_id, meta, command, revision))
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=path, allow_patterns=HUB_FILES, revision=revision,
                                   commit_message=f"DGA checkpoint: {meta.get('model')} × {meta.get('reward')}, "
                                                  f"β = {meta.get('beta')}")
    except hub_errors() as err:  # the Hub's HTTP, connection and validation errors
        text = str(err).strip()
        cause = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
        again = f"hf upload {repo_id} {path}" + (f" --revision {revision}" if revision else "")
        raise DGAlignError(f"the checkpoint is saved in {path}, but pushing it to the Hugging Face Hub repo "
                           f"{repo_id!r} failed ({cause}); push it again with `{again}`") from None
    return commit.commit_url
