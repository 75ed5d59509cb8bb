"""`--set key=value` overrides for any config dataclass, typed by the dataclass's own fields, and the
checks configs share (a choice among names, an output directory that can be created)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import typing
from pathlib import Path

from .errors import DGAlignError

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default: every command's --model unless given

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
MAX_SEED = 2**32 - 1  # seeds every generator accepts (the harness derives per-row seeds from them)


def _coerce(kind, text: str, key: str):
    """Parse `text` as the field type `kind` (bool, int, float, str, or X | None); floats must be finite."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args:  # Optional[X] / X | None
        return None if text.lower() == "none" else _coerce(args[0], text, key)
    try:
        if kind is bool:
            return _BOOL[text.lower()]
        value = kind(text)
    except (KeyError, ValueError):
        raise DGAlignError(f"--set {key}={text}: expected {getattr(kind, '__name__', kind)}") from None
    if kind is float and not math.isfinite(value):
        raise DGAlignError(f"--set {key}={text}: expected a finite number")
    return value


def apply_overrides(cfg, overrides: dict[str, str]):
    """A copy of dataclass `cfg` with string overrides parsed to each field's type."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    values = {}
    for key, text in overrides.items():
        if key not in names:
            raise DGAlignError(f"unknown setting {key!r} for {type(cfg).__name__}; valid: {', '.join(names)}")
        values[key] = _coerce(hints[key], text, key)
    return dataclasses.replace(cfg, **values)


def parse_sets(items: list[str]) -> dict[str, str]:
    """['n=8', 'top_p=0.9'] -> {'n': '8', 'top_p': '0.9'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DGAlignError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def check_choice(name: str, value: str, valid: typing.Iterable[str]) -> None:
    """A string knob must be one of `valid`: 'unknown schedule 'x'; valid: cosine, linear'."""
    valid = tuple(valid)
    if value not in valid:
        raise DGAlignError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def check_range(name: str, value: float, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    """A numeric knob must be finite and lie in [low, high] ((low, high] with `open_low`); NaN and ±inf never do."""
    inside = math.isfinite(value) and (low < value if open_low else low <= value) and value <= high
    if not inside:
        bound = f"{'>' if open_low else '>='} {low:g}"
        if math.isfinite(high):
            wanted = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
        else:
            wanted = bound if math.isfinite(value) else f"a finite number {bound}"
        raise DGAlignError(f"{name} must be {wanted}, got {value}")


def check_counts(cfg: object, *names: str) -> None:
    """Each named count of a config (candidates, particles, steps...) must be at least 1."""
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise DGAlignError(f"{name} must be at least 1, got {value}")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a directory this process can create (or write into): not a file, not below a file, and
    its nearest existing directory accepts a file. Checked before any work, so a bad --out fails fast
    and nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DGAlignError(f"{flag} {path} is a file; give a directory (it is created if missing)")
    parent = next(p for p in [path, *path.parents] if p.exists())
    if not parent.is_dir():
        raise DGAlignError(f"{flag} {path} cannot be created: {parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):  # the only sure test of writability (root, read-only mounts)
            pass
    except OSError as err:
        raise DGAlignError(f"{flag} {path} cannot be written: {parent}: {err.strerror}") from None
    return path
