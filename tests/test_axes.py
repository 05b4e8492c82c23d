"""A training setting swept as an axis: runs, ids, manifests, selection and the limits on a profile (rnnsweep.grid,
rnnsweep.select, rnnsweep.config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rnnsweep import config, provenance
from rnnsweep.grid import ManifestError, make_runs, read_manifest, stage1_designs, write_manifest
from rnnsweep.policy import engine_paths
from rnnsweep.select import planned_runs, size_problems, stage2_runs, stage3_runs

ROOT = Path(__file__).resolve().parents[1]
#: Every stage-1 run id of the default and quick profiles, with its fingerprint (data id "0" × 16), as the
#: code wrote them before axes existed: the published ids and fingerprints must not move.
PUBLISHED = json.loads((ROOT / "tests/data/stage1_fingerprints.json").read_text())
DATA = "0" * 16


def _profile(name: str, **overrides: object) -> dict:
    paths = [ROOT / "configs/default.yaml"] + ([ROOT / f"configs/{name}.yaml"] if name != "default" else [])
    return config.load(*paths, overrides=overrides)


def _stage1(profile: dict) -> list:
    block = profile["stage1"]
    designs = stage1_designs(block["n_layers"], block["state_sizes"])
    settings = {**block, "precision": profile["precision"], "batch_designs": profile["batch_designs"], "device": "cpu"}
    return make_runs(designs, settings, base_seed=profile["seed"], engine=engine_paths(designs, settings))


@pytest.mark.parametrize("name", ["default", "quick"])
def test_the_published_stage1_ids_and_fingerprints_do_not_move(name):
    runs = _stage1(_profile(name))
    assert {run.id: provenance.fingerprint(run, DATA) for run in runs} == PUBLISHED[name]


def test_an_axis_runs_every_design_at_every_value_and_names_the_values_that_differ():
    plain = _stage1(_profile("quick"))
    swept = _stage1(_profile("quick", stage1={"lr": [0.001, 0.003, 0.01]}))
    assert len(swept) == 3 * len(plain)
    first, rest = swept[: len(plain)], swept[len(plain):]
    assert first == plain  # the block's own value first: the same runs, ids and seeds as without the axis
    assert {run.id for run in rest} == {f"{run.id}@lr={lr}" for run in plain for lr in (0.003, 0.01)}
    by_design = {}
    for run in swept:
        by_design.setdefault(run.design, set()).add((run.seed, run.settings.lr))
    assert all(len({seed for seed, _ in values}) == 1 and len(values) == 3 for values in by_design.values())
    assert len({provenance.fingerprint(run, DATA) for run in swept}) == len(swept)


def test_two_axes_give_their_product_and_an_id_names_each_setting_that_differs():
    profile = _profile("smoke", stage1={"lr": [0.001, 0.01], "batch_size": [8, 16], "n_layers": [1], "state_sizes": [4]})
    runs = _stage1(profile)
    tags = sorted({run.id.partition("@")[2] for run in runs})
    assert len(runs) == 4 * 96 and tags == ["", "batch_size=16", "batch_size=16@lr=0.01", "lr=0.01"]


def test_an_axis_grows_extend_only_and_its_manifest_reads_back(tmp_path):
    path = tmp_path / "manifest.csv"
    two = _stage1(_profile("smoke", stage1={"lr": [0.001, 0.003]}))
    write_manifest(path, two)
    three = _stage1(_profile("smoke", stage1={"lr": [0.001, 0.003, 0.0003]}))
    written = write_manifest(path, three)
    assert written[: len(two)] == two and read_manifest(path) == written


def test_a_manifest_row_whose_id_names_other_settings_is_refused(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(path, _stage1(_profile("smoke", stage1={"lr": [0.001, 0.003]})))
    text = path.read_text().splitlines()
    row = next(i for i, line in enumerate(text) if "@lr=0.003," in line)
    text[row] = text[row].replace(",0.003,", ",0.004,")  # the setting, edited by hand; its id still says 0.003
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ManifestError, match=r"names lr=0.003, but the row has lr 0.004"):
        read_manifest(path)


@pytest.mark.parametrize(("overrides", "line"), [
    ({"stage1": {"lr": []}}, "stage1.lr: an empty list"),
    ({"stage2": {"log_every": [5, 10]}}, "stage2.log_every: one value, not a list; only steps, batch_size, history_size, lr, "),
    ({"stage1": {"lr": [0.001, 0.001]}}, "stage1.lr: [0.001, 0.001] repeats a value"),
    ({"stage1": {"lr": [0.001, 2.0]}}, "stage1.lr: 2.0 is greater than the maximum of 1"),
])
def test_a_bad_axis_is_one_line_naming_its_key(overrides, line):
    with pytest.raises(config.ConfigError) as err:
        _profile("smoke", **overrides)
    assert line in str(err.value) and len(str(err.value).splitlines()) == 2  # the heading and the one line


def test_an_axis_given_as_text_on_the_command_line_reads_as_its_values():
    """Snakemake hands a nested --config value over as text: `'stage1={lr: [0.001, 0.003]}'`."""
    profile = _profile("smoke", stage1={"lr": "[0.001, 0.003]", "steps": "[30, 60]"})
    assert profile["stage1"]["lr"] == [0.001, 0.003] and profile["stage1"]["steps"] == [30, 60]


def test_a_stage_that_may_outgrow_the_cap_is_refused_with_its_axes_named():
    profile = _profile("quick", stage1={"lr": [0.001, 0.003, 0.01], "batch_size": [32, 64]}, max_stage_runs=2000)
    assert planned_runs(profile)["stage1"] == 432 * 6
    assert size_problems(profile) == [
        "stage1.batch_size, stage1.lr: up to 2592 runs, more than max_stage_runs (2000); raise max_stage_runs to run them"]
    assert size_problems({**profile, "max_stage_runs": 2592}) == []


def test_grid_refuses_more_runs_than_its_cap_in_one_line(tmp_path):
    out = tmp_path / "manifest.csv"
    args = ["grid", "--out", str(out), "--n-layers", "1", "--state-sizes", "4", "--steps", "30", "--batch-size", "8",
            "--history-size", "16", "--log-every", "5", "--lr", "0.001", "0.003", "--eval-bytes", "128", "--precision",
            "fp32", "--batch-designs", "off", "--device", "cpu", "--seed", "0", "--tokenizer", "bytes", "--max-stage-runs", "100"]
    done = subprocess.run([sys.executable, "-m", "rnnsweep", *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().splitlines()[-1].endswith("stage1: 192 runs, more than --max-stage-runs (100); raise it to run them")


# --------------------------------------------------------------------------- later stages


def _summary(runs: list, loss) -> pd.DataFrame:
    """A finished stage: each run's row with the loss `loss(run)`."""
    frame = pd.DataFrame([run.row() for run in runs])
    frame["status"], frame["min_loss"] = "ok", [loss(run) for run in runs]
    return frame


def _later(profile: dict, stage: str, axes: str) -> dict:
    return {**profile[stage], "axes": axes, "seed": profile["seed"], "rank_by": "min_loss"}


def test_stage2_carries_each_kept_pair_and_best_takes_the_best_runs_values():
    profile = _profile("smoke", stage1={"lr": [0.001, 0.003], "n_layers": [3], "state_sizes": [8]}, stage2={"keep_fraction": 0.02})
    first = _stage1(profile)
    # lr 0.003 helps every design but the best design is best at 0.001
    best = first[0].design
    loss = {run.id: (1.0 if run.design == best and run.settings.lr == 0.001 else 2.0 - run.settings.lr * 100 - run.seed / 1e10)
            for run in first}
    summary = _summary(first, lambda run: loss[run.id])
    kept = sorted(first, key=lambda run: (loss[run.id], run.id))[:3]  # floor(0.02 × 192)
    carried = stage2_runs(summary, _later(profile, "stage2", "carry"))
    assert {(run.design, run.settings.lr) for run in carried if run.design.state_size == 8} == {
        (run.design, run.settings.lr) for run in kept}
    assert {run.id for run in carried if run.settings.lr == 0.003} == {run.id for run in carried if "@lr=0.003" in run.id}
    fixed = stage2_runs(summary, _later(profile, "stage2", "best"))
    assert {run.settings.lr for run in fixed} == {0.001} and all("@" not in run.id for run in fixed)
    assert {run.design for run in fixed if run.design.state_size == 8} == {run.design for run in kept}


def test_stage3_repeats_the_best_pairs_and_keeps_their_settings():
    profile = _profile("smoke", stage1={"lr": [0.001, 0.003]})
    second = make_runs(stage1_designs([1], [4])[:3], {**profile["stage2"], "lr": [0.001, 0.003]})
    summary = _summary(second, lambda run: run.settings.lr * 1000 + len(run.id) / 100)
    runs = stage3_runs(summary, _later(profile, "stage3", "carry") | {"top_k": 4, "replicates": 2})
    assert len(runs) == 8 and {run.settings.lr for run in runs} == {0.001, 0.003}
    assert {run.config_id for run in runs} == {run.id for run in sorted(second, key=lambda r: (r.settings.lr, r.id))[:4]}
