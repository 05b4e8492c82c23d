"""The house rules that keep the workflow easy to change: each fact in one place, lint and format clean.

The profile schema is the one place that names a profile's keys, their types, ranges and choices: the
commands' options are made from it (rnnsweep.options), and a key added to it reaches every run.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnnsweep import cli, config, figures, options, provenance, select, tables
from rnnsweep.grid import PRECISIONS, read_manifest
from rnnsweep.layout import STAGE_TABLES, SWEEP_TABLES
from rnnsweep.optim import SCHEDULES
from rnnsweep.train import COMPUTE_DTYPES

ROOT = Path(__file__).resolve().parents[1]
PROFILE = config.load(ROOT / "configs/default.yaml")
#: The files each command is given beside what it takes from a profile.
FILES = {
    "data": ["--out", "d"], "tokenize": ["--data", "d"], "worker": ["--manifest", "m.csv"], "aggregate": ["--manifest", "m.csv"],
    "plot": ["loss_curves", "--summary", "s", "--curves", "c", "--out", "o"], "baselines": ["--data", "d", "--out", "o"],
    "samples": ["--summary", "s", "--data", "d", "--out", "o"], "dynamics": ["--stage", "s"], "dynamics-ranked": ["--stage", "s"],
    "plot-dynamics": ["memory", "--stage", "s", "--out", "o"], "headline": ["--summary", "s", "--out", "o"],
    "table": ["groups", "--summary", "s", "--out", "o"],
    "corpora": ["--study", "a", "s", "--out", "o", "--effects", "e", "--figure", "f"],
}


def test_every_choice_the_schema_offers_has_its_implementation():
    assert set(COMPUTE_DTYPES) == set(PRECISIONS)
    assert set(config.schema()["$defs"]["training"]["lr_schedule"]["enum"]) == set(SCHEDULES)
    assert set(select.SELECTIONS) == set(config.STAGES[1:])
    assert {name for names in STAGE_TABLES.values() for name in names} | set(SWEEP_TABLES) == set(tables.TABLES)
    for figure in (*figures.STAGE_FIGURES, *figures.SWEEP_FIGURES, *figures.DYNAMICS_FIGURES):
        assert callable(figure.drawer()) and figure.caption and set(figure.stages) <= set(config.STAGES), figure.name


def test_design_keys_are_the_stage_blocks_own_keys():
    assert config.design_keys("stage1") == ("n_layers", "state_sizes")
    assert config.design_keys("stage2") == ("axes", "keep_fraction", "wide_state_size", "deep_layers", "deep_state_sizes")
    assert config.design_keys("stage3") == ("axes", "top_k", "replicates")
    for stage in config.STAGES:
        assert not set(config.design_keys(stage)) & set(config.training_keys())


def _parsed(argv: list[str], wanted) -> dict:
    """The options as parsed; a stage's setting, which may be an axis, arrives as a list, of one value if it is none."""
    args = cli.build_parser().parse_args(argv)
    values = {key.path: getattr(args, key.name) for key in wanted}
    return {path: value[0] if key.sweep and isinstance(value, list) and len(value) == 1 else value for (path, value), key in zip(values.items(), wanted)}


def _profile(wanted) -> dict:
    return {key.path: options._value(PROFILE, key.path) for key in wanted}


@pytest.mark.parametrize("command", sorted(options.COMMANDS))
def test_a_profile_reaches_each_command_unchanged(command):
    """What a rule passes (options.command_args) parses back, through the options made from the schema, to the
    profile's own values: the types, lists and nulls survive the trip through text."""
    wanted = options.COMMANDS[command]
    assert _parsed([command, *FILES[command], *options.command_args(PROFILE, command)], wanted) == _profile(wanted)


@pytest.mark.parametrize("stage", config.STAGES)
def test_a_profile_reaches_the_manifest_commands_unchanged(stage, tmp_path):
    out = ["--out", str(tmp_path / "manifest.csv")]
    argv = ["grid", *out] if stage == "stage1" else ["select", "--stage", stage, "--summary", "s.csv", *out]
    wanted = options.manifest_keys(stage)
    assert _parsed([*argv, *options.manifest_args(PROFILE, stage)], wanted) == _profile(wanted)


def test_an_axis_reaches_grid_whole_and_a_command_of_one_value_gets_its_first():
    swept = config.merge(copy.deepcopy(PROFILE), {"stage1": {"lr": [0.003, 0.001], "history_size": [100, 50]}})
    args = cli.build_parser().parse_args(["grid", "--out", "m.csv", *options.manifest_args(swept, "stage1")])
    assert args.lr == [0.003, 0.001] and args.history_size == [100, 50]
    assert options.command_args(swept, "baselines")[-4:] == ["--eval-bytes", "1000000", "--history-size", "100"]


def _schema_with(line: str) -> dict:
    """The profile schema with one more training setting (`line`, a YAML mapping entry), as a user would add it."""
    text = (ROOT / "src/rnnsweep/config.schema.yaml").read_text()
    anchor = "  training: &training\n"
    assert anchor in text
    return yaml.safe_load(text.replace(anchor, anchor + f"      {line}\n"))


def test_a_training_key_added_to_the_schema_reaches_the_manifest_and_the_fingerprint(monkeypatch, tmp_path):
    """Adding a key to the schema is the whole change outside the code that uses it: the profile validates it,
    `grid` takes it as an option, every manifest row carries it and its fingerprint changes with it; at its
    default the fingerprint is the one of before the key, so no result made before is retrained."""
    profile = config.load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml")
    before = _grid(profile, tmp_path / "before")[0]
    schema = _schema_with("clip: {type: number, minimum: 0, default: 0, description: a test}")
    monkeypatch.setattr(config, "schema", lambda: schema)
    with pytest.raises(config.ConfigError, match="stage1.clip"):
        config.validate({**profile, "stage1": {**profile["stage1"], "clip": -1}})
    at_default, clipped = (_grid({**profile, "stage1": {**profile["stage1"], "clip": value}}, tmp_path / str(value)) for value in (0, 0.5))
    assert [run.settings.clip for run in (at_default[0], clipped[0])] == [0, 0.5]
    header = (tmp_path / "0.5" / "manifest.csv").read_text().splitlines()[0].split(",")
    assert "clip" in header
    data = "d" * 16
    assert provenance.fingerprint(at_default[0], data) == provenance.fingerprint(before, data)
    assert provenance.fingerprint(clipped[0], data) != provenance.fingerprint(before, data)
    assert [run.id for run in clipped] == [run.id for run in at_default]


def _grid(profile: dict, folder: Path) -> list:
    """Stage 1's manifest as the workflow writes it: `rnnsweep grid` with the profile's arguments."""
    path = folder / "manifest.csv"
    assert cli.main(["grid", "--out", str(path), *options.manifest_args(config.validate(profile), "stage1")]) == 0
    return read_manifest(path)


def test_snakemake_lint_is_clean():
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "configs/smoke.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0 and "Lints for" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_snakefmt_would_change_nothing():
    files = ["Snakefile", *map(str, sorted((ROOT / "workflow").rglob("*.smk")))]
    done = subprocess.run(
        [Path(sys.executable).parent / "snakefmt", "--check", *files], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _rules() -> dict[str, str]:
    """Every rule of the workflow by name, with its text."""
    text = "\n".join(path.read_text() for path in sorted((ROOT / "workflow/rules").glob("*.smk")))
    text += "\n" + (ROOT / "Snakefile").read_text()
    return dict(re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.M))


def test_only_training_and_dynamics_go_to_a_cluster_and_only_training_is_retried():
    rules = _rules()
    local = {name for name, body in rules.items() if re.search(r"^\s+localrule: True$", body, flags=re.M)}
    assert local == set(rules) - {"train", "dynamics"}
    assert [name for name, body in rules.items() if "retries:" in body] == ["train"]
