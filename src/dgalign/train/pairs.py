"""Preference pairs for `dgalign train-rm`, `rm-eval` and `train-dpo`: a JSONL(.gz) file, or a suite's training split.

`SUITE:train` names the pairs a suite draws from its training rows alone (`Suite.pairs`): `hh-harmless:train`
(HH-RLHF harmless pairs whose first human turn is not a held-out evaluation prompt), `truthfulqa:train` (each
training question with each of its true answers over each of its false ones). Anything else is a file path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..bench import SUITES
from ..data import read_pair_rows
from ..errors import DGAlignError

SPLIT = ":train"


def named_sets() -> list[str]:
    return [f"{name}{SPLIT}" for name, s in SUITES.items() if s.pairs is not None]


def is_named(spec: str) -> bool:
    """Whether `spec` names a suite's pair set rather than a file ("x:train" that exists is a file)."""
    return spec.endswith(SPLIT) and not Path(spec).expanduser().exists()


def pair_rows(spec: str) -> list[dict]:
    """The rows {"prompt"?, "chosen", "rejected"} of a named set or of a pairs file."""
    if not is_named(spec):
        return read_pair_rows(spec)
    suite = SUITES.get(spec.removesuffix(SPLIT))
    if suite is None or suite.pairs is None:
        raise DGAlignError(f"no pair set {spec!r}; named sets: {', '.join(named_sets())} (or a JSONL(.gz) file)")
    return suite.pairs()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pairs_digest(spec: str) -> str:
    """SHA-256 of what `spec` names: the file's bytes, or a named set's rows as JSON lines."""
    if not is_named(spec):
        return file_sha256(Path(spec).expanduser())
    digest = hashlib.sha256()
    for row in pair_rows(spec):
        digest.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def pairs_name(spec: str) -> str:
    """What a trained model records as its data: a named set as named, a file as its absolute path."""
    return spec if is_named(spec) else str(Path(spec).expanduser().resolve())
