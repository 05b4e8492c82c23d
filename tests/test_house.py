"""The house rules that keep the workflow easy to change: each fact in one place, lint and format clean.

The profile schema is the one place that names a profile's keys and choices; the code's lists of
manifest columns, precisions, paths and lock kinds must say the same, and every key a rule passes
to a command must be an option of that command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnsweep import baselines, cli, config, plots, select, tables
from rnnsweep.claims import LOCKS
from rnnsweep.grid import BATCH_DESIGNS, PRECISIONS, SETTINGS
from rnnsweep.layout import STAGE_FIGURES, STAGE_TABLES, WITH_BASELINES

ROOT = Path(__file__).resolve().parents[1]
PROFILE = config.load(ROOT / "configs/default.yaml")


def _choices(key: str) -> tuple[str, ...]:
    return tuple(config.schema()["properties"][key]["enum"])


def test_the_code_lists_what_the_schema_lists():
    assert SETTINGS == config.training_keys()
    assert PRECISIONS == _choices("precision")
    assert BATCH_DESIGNS == _choices("batch_designs")
    assert LOCKS == _choices("lock")
    assert baselines.MAX_ORDER == config.schema()["properties"]["baselines"]["properties"]["max_order"]["maximum"]


def test_design_keys_are_the_stage_blocks_own_keys():
    assert config.design_keys("stage1") == ("n_layers", "state_sizes")
    assert config.design_keys("stage2") == ("keep_fraction", "wide_state_size", "deep_layers", "deep_state_sizes")
    assert config.design_keys("stage3") == ("top_k", "replicates")
    for stage in config.STAGES:
        assert not set(config.design_keys(stage)) & set(SETTINGS)


@pytest.mark.parametrize("stage", config.STAGES)
def test_a_profile_passes_through_the_manifest_commands(stage, tmp_path):
    out = ["--out", str(tmp_path / "manifest.csv")]
    argv = ["grid", *out] if stage == "stage1" else ["select", "--stage", stage, "--summary", "s.csv", *out]
    args = cli.build_parser().parse_args([*argv, *cli.manifest_options(PROFILE, stage)])
    for key in (*config.design_keys(stage), *SETTINGS):
        assert getattr(args, key) == PROFILE[stage][key], key
    for key in cli.MANIFEST_KEYS:
        assert getattr(args, key) == PROFILE[key], key


@pytest.mark.parametrize("command", ["worker", "aggregate"])
def test_a_profile_passes_through_the_training_commands(command, tmp_path):
    args = cli.build_parser().parse_args([command, "--manifest", "m.csv", *cli.worker_options(PROFILE)])
    for key in (*cli.WORKER_KEYS, cli.THREADS_KEY):
        assert getattr(args, key) == PROFILE[key], key


def test_a_profile_passes_through_the_plot_and_data_commands():
    plot = ["plot", "loss_curves", "--summary", "s", "--curves", "c", "--out", "o"]
    args = cli.build_parser().parse_args([*plot, *cli.profile_options(PROFILE["plots"], cli.PLOT_KEYS)])
    assert {key: getattr(args, key) for key in cli.PLOT_KEYS} == PROFILE["plots"]
    samples = ["samples", "--summary", "s", "--data", "d", "--out", "o"]
    options = cli.profile_options(PROFILE["samples"], cli.SAMPLE_KEYS) + cli.profile_options(PROFILE, ["seed"])
    args = cli.build_parser().parse_args([*samples, *options])
    assert {key: getattr(args, key) for key in cli.SAMPLE_KEYS} == PROFILE["samples"] and args.seed == PROFILE["seed"]
    options = cli.profile_options(PROFILE["baselines"], cli.BASELINE_KEYS) + cli.profile_options(PROFILE["stage1"], cli.SCORING_KEYS)
    args = cli.build_parser().parse_args(["baselines", "--data", "d", "--out", "o", *options])
    assert {key: getattr(args, key) for key in cli.BASELINE_KEYS} == PROFILE["baselines"]
    assert all(getattr(args, key) == PROFILE["stage1"][key] for key in cli.SCORING_KEYS)
    args = cli.build_parser().parse_args(["data", "--out", "d", *cli.profile_options(PROFILE, cli.DATA_KEYS)])
    assert (args.corpus, args.cache_dir, args.url, args.generated_bytes, args.seed) == tuple(
        PROFILE[key] for key in ("corpus", "cache_dir", "enwik8_url", "generated_bytes", "seed")
    )


def test_every_named_table_and_figure_has_its_function():
    assert {name for names in STAGE_TABLES.values() for name in names} == set(tables.TABLES)
    assert {name for names in STAGE_FIGURES.values() for name in names} == set(plots.FIGURES)
    assert set(select.SELECTIONS) == set(config.STAGES[1:])
    assert set(WITH_BASELINES) <= set(plots.FIGURES)


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
