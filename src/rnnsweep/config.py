"""Load and validate a study profile against the JSON schema shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3")


class ConfigError(ValueError):
    """A profile that does not fit the schema; the message names the key."""


@cache
def schema() -> dict:
    return yaml.safe_load(resources.files("rnnsweep").joinpath("config.schema.yaml").read_text())


def _key(error: jsonschema.ValidationError) -> str:
    """Dotted path of the offending value; for unknown or missing keys the message names the key."""
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config: dict, source: str = "config") -> dict:
    """Raise ConfigError naming every offending key; return the config unchanged otherwise."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{_key(e)}: {e.message}" for e in errors]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))
    return config


def load(*paths: Path, overrides: dict | None = None) -> dict:
    """Merge profiles left to right (later ones win, nested keys merged), then validate."""
    merged: dict = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read profile: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a profile must be a mapping of keys to values")
        merge(merged, loaded)
    merge(merged, overrides or {})
    return validate(merged, " + ".join(map(str, paths)) or "config")


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into `base` in place, as Snakemake merges --configfile profiles."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    return stage
