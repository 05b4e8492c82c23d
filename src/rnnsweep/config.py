"""Load and validate a study profile against the JSON schema shipped with the package."""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
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


def _resolved(node: dict) -> dict:
    """The schema node itself, or the $defs entry its $ref names."""
    return schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node


def _types(node: dict) -> set[str]:
    """The JSON types a schema node allows."""
    node = _resolved(node)
    if "enum" in node:
        return {"string"} if any(isinstance(v, str) for v in node["enum"]) else {"number"}
    kinds = node.get("type", [])
    return set([kinds] if isinstance(kinds, str) else kinds)


def _items(node: dict) -> dict:
    return _resolved(node).get("items", {})


#: How YAML 1.1 spells a boolean: an unquoted `off` in a profile arrives as False.
_BOOLEAN_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def _coerce_value(value: object, node: dict) -> object:
    """A text value turned into the scalar its schema node wants, where it reads as one."""
    kinds = _types(node)
    if isinstance(value, bool) and kinds == {"string"}:
        # `batch_designs: off` unquoted: the word the schema's choices spell for that boolean.
        words = [w for w in _BOOLEAN_WORDS[value] if w in _resolved(node).get("enum", ())]
        return words[0] if words else value
    if isinstance(value, list):
        return [_coerce_value(v, _items(node) if "array" in kinds else node) for v in value]
    if isinstance(value, str) and "null" in kinds and value in ("null", "~"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kinds == {"string"}:
        return str(value)  # `--config study=2024`: Snakemake made it a number
    if not isinstance(value, str) or "string" in kinds:
        return value
    parsed = _parse_scalar(value, kinds | ({"array"} if node.get("axis") else set()))
    if isinstance(parsed, list):
        return _coerce_value(parsed, node)
    return value if parsed is None else parsed  # text that reads as nothing wanted stays text: the schema names it


def _parse_scalar(text: str, kinds: set[str]) -> object | None:
    """`text` as the integer, number, boolean or list `kinds` allows, or None if it reads as none of them."""
    for kind, parse in (("integer", int), ("number", float)):
        if kind in kinds:
            try:
                return parse(text)
            except ValueError:
                pass
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "array" in kinds:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def coerce(config: dict, node: dict | None = None) -> dict:
    """Turn text into the numbers and booleans the schema asks for, in place; return `config`.

    Snakemake reads the value of a nested `--config` entry as YAML text without
    types (`'stage1={steps: 35}'` gives `{"steps": "35"}`), so without this no
    nested key could be overridden on the command line. What does not read as
    the wanted type stays as it is and fails validation, naming the key.
    """
    node = schema() if node is None else node
    for key, value in config.items():
        sub = node.get("properties", {}).get(key)
        if sub is None:
            continue
        if isinstance(value, dict):
            coerce(value, sub)
        else:
            config[key] = _coerce_value(value, sub)
    return config


def _key(error: jsonschema.ValidationError) -> str:
    """Dotted path of the offending value; for unknown or missing keys the message names the key."""
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config: dict, source: str = "config") -> dict:
    """Raise ConfigError naming every offending key; return the config unchanged otherwise.

    A stage's axes (a training setting listed with several values) are checked
    as lists first, then each of their values against the setting's schema.
    """
    lines = _axis_problems(config)
    if not lines:
        validator = jsonschema.Draft202012Validator(schema())
        errors = [e for view in _scalar_views(config) for e in validator.iter_errors(view)]
        errors.sort(key=lambda e: list(map(str, e.absolute_path)))
        lines = list(dict.fromkeys(f"{_key(e)}: {e.message}" for e in errors))
        lines += [f"{key}: NaN is not a number" for key in _nan_keys(config)]
        lines += _long_warmups(config)
    if lines:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))
    return config


def axis_keys() -> tuple[str, ...]:
    """The training settings a stage may sweep, listing several values (the schema marks them `axis: true`)."""
    return tuple(key for key, node in schema()["$defs"]["training"].items() if node.get("axis"))


def _stage_lists(config: dict) -> Iterator[tuple[str, str, list]]:
    """(stage, key, values) for each training setting that a stage block gives as a list."""
    for stage in STAGES:
        block = config.get(stage)
        if isinstance(block, dict):
            for key in training_keys():
                if isinstance(block.get(key), list):
                    yield stage, key, block[key]


def _axis_problems(config: dict) -> list[str]:
    """One line for each list a stage block may not have: of a setting that is no axis, empty, or repeating a value."""
    lines = []
    for stage, key, values in _stage_lists(config):
        if key not in axis_keys():
            lines.append(f"{stage}.{key}: one value, not a list; only {', '.join(axis_keys())} can be axes")
        elif not values:
            lines.append(f"{stage}.{key}: an empty list; give one value, or several to sweep them")
        elif len({repr(v) for v in values}) < len(values):
            lines.append(f"{stage}.{key}: {values} repeats a value; each value is listed once")
    return lines


def _scalar_views(config: dict) -> list[dict]:
    """The profile once per position of its longest axis, each axis at that value (or its last): every value is
    checked by the schema, which knows each setting as one value."""
    lists = list(_stage_lists(config))
    views = []
    for i in range(max((len(values) for _, _, values in lists), default=1)):
        view = {**config, **{stage: dict(config[stage]) for stage, _, _ in lists}}
        for stage, key, values in lists:
            view[stage][key] = values[min(i, len(values) - 1)]
        views.append(view)
    return views


def axes(block: Mapping) -> dict[str, list]:
    """A stage block's axes: the settings it lists several values of, in schema order (a list of one is one value)."""
    return {key: list(block[key]) for key in training_keys() if isinstance(block.get(key), list) and len(block[key]) > 1}


def points(block: Mapping) -> list[dict[str, object]]:
    """The training settings of each combination of a block's axis values, the first values first.

    Each is the block's settings with one value per key; a block without axes has one point.
    """
    swept = axes(block)
    base = {key: _first(block[key]) for key in training_keys() if key in block}
    return [{**base, **dict(zip(swept, values))} for values in itertools.product(*swept.values())]


def _first(value: object) -> object:
    return value[0] if isinstance(value, list) else value


def _long_warmups(config: dict) -> list[str]:
    """A line for each stage where a warm-up may take every step (of any value of an axis), which the schema cannot
    say: it compares no two keys."""
    lines = []
    for stage in STAGES:
        block = config[stage] if isinstance(config.get(stage), dict) else {}
        warmups, steps = _values(block.get("warmup_steps")), _values(block.get("steps"))
        if warmups and steps and max(warmups) >= min(steps):
            lines.append(f"{stage}.warmup_steps: {max(warmups)} is not fewer than the stage's {min(steps)} steps")
    return lines


def _values(value: object) -> list[int]:
    """An integer setting's values: one, or an axis's (other types: the schema names them)."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _nan_keys(value: object, where: str = "") -> list[str]:
    """Dotted keys whose value is NaN, which no range of the schema refuses (every comparison with it is false)."""
    if isinstance(value, float) and math.isnan(value):
        return [where or "(top level)"]
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in _nan_keys(v, f"{where}.{key}" if where else str(key))]
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _nan_keys(v, f"{where}.{i}")]
    return []


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
    return validate(coerce(merged), " + ".join(map(str, paths)) or "config")


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into `base` in place, as Snakemake merges --configfile profiles."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def design_keys(stage: str) -> tuple[str, ...]:
    """The keys of a stage's block that choose its designs (stage 1's grid, stage 2's and 3's selection), in schema order.

    They are the stage's own keys beside the training settings every stage
    shares. The rules, the command line and the tests take them from here, so
    adding one to the schema is the whole change outside the code that uses it.
    """
    shared = schema()["$defs"]["training"]
    return tuple(key for key in schema()["properties"][check_stage(stage)]["properties"] if key not in shared)


def training_keys() -> tuple[str, ...]:
    """The training settings every stage's block has and every manifest row carries, in schema order."""
    return tuple(schema()["$defs"]["training"])


def training_defaults() -> dict[str, object]:
    """The training settings that a profile or manifest may leave out, each with the value that means.

    A setting with a schema default is one the study did without: at that
    value training is what it was before the key existed, so a fingerprint
    leaves it out and earlier results stay valid (rnnsweep.provenance).
    """
    return {key: node["default"] for key, node in schema()["$defs"]["training"].items() if "default" in node}


def setting_value(key: str, text: str) -> object:
    """A training setting read back from a manifest cell, as the type its schema node names."""
    kinds = _types(schema()["$defs"]["training"][key])
    if "string" in kinds:
        return text
    value = _parse_scalar(text, kinds)
    if value is None:
        raise ValueError(f"{key}: {text!r} is not {' or '.join(sorted(kinds))}")
    return value


def node(path: tuple[str, ...]) -> dict:
    """The schema node of the profile key at `path` (("plots", "threshold"): the plots block's threshold)."""
    found = schema()
    for key in path:
        found = found["properties"][key]
    return found


def types(path: tuple[str, ...]) -> set[str]:
    """The JSON types the profile key at `path` allows ("array" for a list key such as n_layers)."""
    return _types(node(path))


def nullable(path: tuple[str, ...]) -> bool:
    """Whether a profile may leave the key at `path` null (the command then goes without it)."""
    return "null" in _types(node(path))


def default(*path: str) -> object:
    """The schema's default of the profile key at `path`: what a command uses when the option is not given."""
    return node(path)["default"]


def description(*path: str) -> str:
    """The schema's description of the profile key at `path`: a command-line option's help."""
    return node(path).get("description") or _resolved(node(path)).get("description", "")


def option_type(*path: str) -> Callable[[str], object]:
    """An argparse `type` for the profile key at `path` (e.g. "samples", "temperature"): its text parsed as the
    schema's type and checked against the schema's range, so a command and a profile refuse the same values."""
    found = node(path)
    kinds = _types(found)
    validator = jsonschema.Draft202012Validator({**_resolved(found), "$defs": schema()["$defs"]})

    def parse(text: str) -> object:
        value = text if "string" in kinds else _parse_scalar(text, kinds)
        if isinstance(value, float) and math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({'.'.join(path)} in the profile schema)")
        if value is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not {' or '.join(sorted(kinds))}")
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            raise argparse.ArgumentTypeError(f"{text}: {error.message} ({'.'.join(path)} in the profile schema)")
        return value

    return parse


def item_type(*path: str) -> Callable[[str], object] | None:
    """An argparse `type` for one item of the list key at `path`, like option_type; None if the key is no list,
    or is one value or a list (`corpus`), of which every command takes one value."""
    found = node(path)
    if "array" not in _types(found) or "string" in _types(found):
        return None
    items = {**_resolved(_items(found)), "$defs": schema()["$defs"]}
    validator = jsonschema.Draft202012Validator(items)
    kinds = _types(items)

    def parse(text: str) -> object:
        value = _parse_scalar(text, kinds)
        error = None if value is None else jsonschema.exceptions.best_match(validator.iter_errors(value))
        if value is None or error is not None:
            raise argparse.ArgumentTypeError(f"{text}: {error.message if error else 'not ' + ' or '.join(sorted(kinds))}"
                                             f" ({'.'.join(path)} in the profile schema)")
        return value

    return parse


def choices(key: str) -> tuple[str, ...]:
    """The values the schema allows a top-level key that names one of a few (precision, lock, tokenizer, ...)."""
    return tuple(schema()["properties"][key]["enum"])


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    return stage
