"""`--set key=value` overrides for any config dataclass, typed by the dataclass's own fields."""

from __future__ import annotations

import dataclasses
import typing

from .errors import DGAlignError

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(kind, text: str, key: str):
    """Parse `text` as the field type `kind` (bool, int, float, str, or X | None)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args:  # Optional[X] / X | None
        return None if text.lower() == "none" else _coerce(args[0], text, key)
    try:
        if kind is bool:
            return _BOOL[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise DGAlignError(f"--set {key}={text}: expected {getattr(kind, '__name__', kind)}") from None


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
