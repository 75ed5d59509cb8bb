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
