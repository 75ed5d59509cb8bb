"""Where benchmark and reward-training data live: `$DGALIGN_DATA`, else `../shared/datasets` beside the checkout.

Data is never committed; every loader finds its files through `data_path`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dgalign.errors import DGAlignError

# src/dgalign/data.py -> parents[2] is the checkout root
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def data_dir() -> Path:
    """The data directory: `$DGALIGN_DATA` when set, else `../shared/datasets` relative to the checkout."""
    return Path(os.environ.get("DGALIGN_DATA") or DEFAULT_DATA_DIR)


def data_path(name: str) -> Path:
    """A file in the data directory, or a `DGAlignError` saying where it was looked for."""
    path = data_dir() / name
    if not path.is_file():
        raise DGAlignError(f"data file {name!r} not found in {path.parent} (set $DGALIGN_DATA to the datasets dir)")
    return path


# HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..." turns
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer) of two HH-RLHF transcripts that share their prompt.

    The prompt ends at the last "\\n\\nAssistant:" inside the common prefix; with none, it is empty.
    """
    cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cut < 0:
        return "", chosen.strip(), rejected.strip()
    cut += len(HH_ASSISTANT)
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()
