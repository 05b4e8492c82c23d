"""Profiles and their schema (rnnsweep.config)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rnnsweep.config import STAGES, ConfigError, check_stage, load, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT = CONFIGS / "default.yaml"
SMOKE = CONFIGS / "smoke.yaml"
QUICK = CONFIGS / "quick.yaml"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _override(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "override.yaml"
    path.write_text(text)
    return path


def test_default_validates_and_is_the_study():
    cfg = load(DEFAULT)
    assert cfg == _yaml(DEFAULT)
    assert cfg["stage1"]["n_layers"] == [1, 2, 3]
    assert cfg["stage1"]["state_sizes"] == [32, 256]
    assert cfg["stage2"]["keep_fraction"] == 0.1


@pytest.mark.parametrize("profile", [SMOKE, QUICK], ids=["smoke", "quick"])
def test_profiles_merge_onto_default_and_validate(profile):
    cfg = load(DEFAULT, profile)
    expected = _deep_merge(_yaml(DEFAULT), _yaml(profile))
    assert cfg == expected
    # nested keys are merged, not replaced: a stage key the profile leaves out keeps the default
    for stage in STAGES:
        for key, value in _yaml(DEFAULT)[stage].items():
            if key not in _yaml(profile).get(stage, {}):
                assert cfg[stage][key] == value


def test_profile_alone_is_incomplete():
    with pytest.raises(ConfigError) as err:
        load(SMOKE)
    assert "cache_dir" in str(err.value)


def test_later_profile_wins(tmp_path):
    override = _override(tmp_path, "workers: 5\nstage1:\n  steps: 77\n")
    cfg = load(DEFAULT, SMOKE, override)
    assert cfg["workers"] == 5
    assert cfg["stage1"]["steps"] == 77
    assert cfg["stage1"]["batch_size"] == _yaml(SMOKE)["stage1"]["batch_size"]
    assert cfg["stage1"]["lr"] == _yaml(DEFAULT)["stage1"]["lr"]


@pytest.mark.parametrize(
    "text, names",
    [
        ("bogus_setting: 1\n", ["bogus_setting"]),
        ("stage1:\n  stepz: 10\n", ["stage1", "stepz"]),
        ("stage2:\n  keep_fraktion: 0.2\n", ["stage2", "keep_fraktion"]),
        ("stage1:\n  steps: many\n", ["stage1.steps"]),
        ("stage3:\n  replicates: 2.5\n", ["stage3.replicates"]),
        ("workers: 0\n", ["workers"]),
        ("threads_per_worker: -1\n", ["threads_per_worker"]),
        ("stage1:\n  lr: 0\n", ["stage1.lr"]),
        ("stage2:\n  lr: 2.0\n", ["stage2.lr"]),
        ("stage2:\n  keep_fraction: 0\n", ["stage2.keep_fraction"]),
        ("lock: nfs\n", ["lock"]),
        ("device: gpu\n", ["device"]),
        ("precision: fp16\n", ["precision"]),
        ("stage1:\n  history_size: 1\n", ["stage1.history_size"]),
        ("stage1:\n  state_sizes: []\n", ["stage1.state_sizes"]),
        ("plots:\n  threshold: zero\n", ["plots.threshold"]),
        ("stage1:\n  lr_schedule: exponential\n", ["stage1.lr_schedule"]),
        ("stage2:\n  warmup_steps: -1\n", ["stage2.warmup_steps"]),
        ("stage3:\n  min_lr_fraction: 1.5\n", ["stage3.min_lr_fraction"]),
        ("stage1:\n  grad_clip: -0.1\n", ["stage1.grad_clip"]),
        ("stage2:\n  steps: 30\n  warmup_steps: 30\n", ["stage2.warmup_steps: 30 is not fewer than the stage's 30 steps"]),
    ],
)
def test_bad_values_raise_naming_the_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load(DEFAULT, _override(tmp_path, text))
    for name in names:
        assert name in str(err.value)


def test_training_settings_with_defaults_may_be_left_out_or_set():
    """The default profile leaves the schedule and clipping keys out (commented); a profile may set them."""
    assert "lr_schedule" not in load(DEFAULT)["stage1"]
    rule = {"lr_schedule": "cosine", "warmup_steps": 29, "min_lr_fraction": 0, "grad_clip": 0.5}
    loaded = load(DEFAULT, overrides={"stage3": {"steps": 30, **rule}})["stage3"]
    assert {key: loaded[key] for key in rule} == rule


def test_overrides_argument_is_validated_too():
    with pytest.raises(ConfigError) as err:
        load(DEFAULT, overrides={"stage1": {"steps": "many"}})
    assert "stage1.steps" in str(err.value)
    assert load(DEFAULT, overrides={"stage1": {"steps": 12}})["stage1"]["steps"] == 12


def test_every_offending_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(DEFAULT, _override(tmp_path, "workers: 0\nlock: nfs\nstage1:\n  steps: many\n"))
    message = str(err.value)
    for name in ("workers", "lock", "stage1.steps"):
        assert name in message


def test_unreadable_and_non_mapping_profiles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load(DEFAULT, bad)
    assert str(bad) in str(err.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load(DEFAULT, listy)
    with pytest.raises(ConfigError):
        load(DEFAULT, tmp_path / "missing.yaml")


def test_validate_returns_valid_config_unchanged():
    cfg = _yaml(DEFAULT)
    assert validate(cfg) is cfg


def test_check_stage():
    for stage in ("stage1", "stage2", "stage3"):
        assert check_stage(stage) == stage
    for bad in ("stage4", "stage0", "Stage1", ""):
        with pytest.raises(ConfigError):
            check_stage(bad)


def test_command_line_text_becomes_the_types_the_schema_asks_for():
    """Snakemake hands nested --config values over as text ('stage1={steps: 35}' gives '35')."""
    from rnnsweep.config import coerce

    cfg = load(DEFAULT, SMOKE)
    cli = {"study": 2024, "enwik8_sha256": "null", "plots": {"threshold": "2.5"},
           "stage1": {"steps": "35", "lr": "1e-3", "state_sizes": ["4", "8"], "n_layers": "[1, 2]"}}
    merged = validate(coerce(copy.deepcopy(_deep_merge(cfg, cli))))
    assert merged["study"] == "2024" and merged["enwik8_sha256"] is None and merged["plots"]["threshold"] == 2.5
    assert merged["stage1"] | {} == cfg["stage1"] | {"steps": 35, "lr": 0.001, "state_sizes": [4, 8], "n_layers": [1, 2]}
    for bad, key in (({"stage1": {"steps": "oops"}}, "stage1.steps"), ({"stage1": {"n_layers": "[1, 2"}}, "stage1.n_layers"),
                     ({"plots": {"best_curves": "1:20"}}, "plots.best_curves")):
        with pytest.raises(ConfigError) as err:
            validate(coerce(_deep_merge(cfg, bad)))
        assert key in str(err.value)
