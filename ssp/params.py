"""params.yaml: every knob of the pipeline, one section per stage.

Profiles: the base sections hold the demo profile (2 CPU cores, minutes); a profile
(``profiles.paper``) overrides any subset of them. The active one is the top-level
``profile`` key, so the DVC idiom switches it: ``dvc exp run -S profile=paper``.
Stages read ``load_params(path)[section]``; CLI ``--set section.key=value`` overrides
win over both.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ssp.errors import DataError

DEFAULT_PARAMS = Path("params.yaml")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train2.epochs=3"`` -> (["train2", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(params))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def load_params(
    path: str | Path | None = None, profile: str | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Base sections, merged with the active profile, then ``overrides``."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        return apply_overrides({}, overrides)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML: {e}") from e
    profiles = raw.pop("profiles", {}) or {}
    overrides = list(overrides)
    # `--set profile=paper` picks the profile too (as `dvc exp run -S profile=paper` does)
    chosen = [parse_override(o)[1] for o in overrides if parse_override(o)[0] == ["profile"]]
    name = profile or (str(chosen[-1]) if chosen else None) or raw.get("profile") or "demo"
    if name != "demo":
        if name not in profiles:
            raise DataError(path, f"profile {name!r} not defined (profiles: demo, {', '.join(profiles)})")
        raw = deep_merge(raw, profiles[name])
    raw["profile"] = name
    return apply_overrides(raw, overrides)
