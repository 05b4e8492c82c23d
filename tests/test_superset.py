"""Designs of one shape trained as one superset model (rnnsweep.model, train, claims, policy).

A run's files must not depend on which other designs share its group, it
must resume in any grouping, and it must agree with the design path to float
rounding. The path is a manifest column, so it is part of the fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import rnnsweep.train as train_mod
from rnnsweep import config, policy, provenance
from rnnsweep.claims import Worker
from rnnsweep.design import SWITCHES, Design
from rnnsweep.results import read_result
from rnnsweep.grid import READING, ManifestError, columns, make_runs, read_manifest, stage1_designs, write_manifest
from rnnsweep.layout import CHECKPOINT, manifest_path
from rnnsweep.model import ByteModel, initial_weights
from rnnsweep.plan import superset_layout
from rnnsweep.tokens import Text
from rnnsweep.train import Interrupted, train_runs
from grouping import DESIGNS, SHAPE, TINY, stop_at, superset_runs as _superset
from test_replicates import _start_steps, assert_same_run
from test_schedules import SCHEDULED
from test_train import read_curve, weights

CPU = torch.device("cpu")
DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
def _train(root, runs, splits, **kwargs) -> list[dict]:
    return train_runs(runs, Text.of_bytes(*splits), [root / run.id for run in runs], CPU, **kwargs)


@pytest.fixture
def group_sizes(monkeypatch) -> list[tuple[int, bool]]:
    """(replicates, superset?) of each model train.py builds, in order."""
    sizes = []

    class Counted(ByteModel):
        def __init__(self, designs, seeds, *args, superset=False, **kwargs):
            sizes.append((len(seeds), superset))
            super().__init__(designs, seeds, *args, superset=superset, **kwargs)

    monkeypatch.setattr(train_mod, "ByteModel", Counted)
    return sizes


# --------------------------------------------------------------------------- a run's numbers


def test_a_run_does_not_depend_on_the_designs_beside_it(tmp_path, splits, one_thread, group_sizes):
    """Bit for bit: each design in a group of four, in another group of two, and alone."""
    runs = _superset(DESIGNS)
    grouped = _train(tmp_path / "four", runs, splits)
    _train(tmp_path / "two", [runs[2], runs[0]], splits)
    alone = [_train(tmp_path / "alone", [run], splits)[0] for run in runs]
    assert group_sizes == [(4, True), (2, True)] + [(1, True)] * 4
    for run, got, want in zip(runs, grouped, alone):
        assert_same_run(tmp_path / "four" / run.id, tmp_path / "alone" / run.id)
        assert got == {**want, "wall_s": got["wall_s"], "steps_per_s": got["steps_per_s"]}
        assert got["engine"] == "superset" and got["status"] == "ok"
    for run in (runs[0], runs[2]):
        assert_same_run(tmp_path / "two" / run.id, tmp_path / "alone" / run.id)
    assert len({tuple(read_curve(tmp_path / "four" / run.id)) for run in runs}) == 4


def test_superset_path_agrees_with_the_design_path_to_rounding(tmp_path, splits, one_thread):
    """Same start, same data; only the matmul shapes differ, so the numbers agree to float32 rounding."""
    runs = _superset(DESIGNS)
    grouped = _train(tmp_path / "superset", runs, splits)
    for run, got in zip(runs, grouped):
        solo = dataclasses.replace(run, engine="design")
        want = _train(tmp_path / "design", [solo], splits)[0]
        for key in ("min_loss", "final_loss", "valid_bpb"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=0), key
        assert got["params"] == want["params"] and want["engine"] == "design"
        for name, value in weights(tmp_path / "design" / run.id).items():
            torch.testing.assert_close(weights(tmp_path / "superset" / run.id)[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_saved_weights_are_the_designs_own(tmp_path, splits, one_thread):
    runs = _superset(DESIGNS[:2])
    results = _train(tmp_path, runs, splits)
    for run, result in zip(runs, results):
        own = initial_weights(run.design, run.seed)
        saved = weights(tmp_path / run.id)
        assert saved.keys() == own.keys()
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in own.items()}
        assert result["params"] == sum(v.numel() for v in saved.values())


# --------------------------------------------------------------------------- interrupted and resumed


@pytest.mark.parametrize("changes", [{}, SCHEDULED], ids=["published-rule", "warm-up-cosine-clipped"])
def test_a_run_resumes_bit_exactly_in_any_grouping(tmp_path, splits, one_thread, group_sizes, changes):
    """Stopped at step 10 in a group of four; resumed as two pairs of other company, and one alone. With a
    schedule and clipping, stopped mid-warm-up: each design's rate and its own clip do not depend on the group."""
    runs = _superset(DESIGNS, **{"steps": 30, **changes})
    _train(tmp_path / "calm", runs, splits)
    root = tmp_path / "stopped"
    stop, report = stop_at(10)
    with pytest.raises(Interrupted, match="checkpoint at step 10"):
        _train(root, runs, splits, report=report, stop=stop)
    for run in runs:
        saved = torch.load(root / run.id / CHECKPOINT, weights_only=True)
        assert saved["params"].keys() == weights(tmp_path / "calm" / run.id).keys()
    del group_sizes[:]
    fresh = _superset([SHAPE[5]], **{"steps": 30, **changes})  # a design at step 0 beside two at step 10
    _train(root, [runs[3], fresh[0], runs[1]], splits)
    _train(root, [runs[0]], splits)
    _train(root, [runs[2]], splits)
    assert group_sizes == [(2, True), (1, True), (1, True), (1, True)]
    for run in runs:
        assert_same_run(root / run.id, tmp_path / "calm" / run.id)
        assert _start_steps(root / run.id) == [0, 10]


def test_a_checkpoint_of_the_other_path_is_not_resumed(tmp_path, splits, one_thread):
    """The path is in the fingerprint: a run whose manifest moved it to the other path starts afresh."""
    (run,) = _superset(DESIGNS[:1], steps=30)
    stop, report = stop_at(10)
    with pytest.raises(Interrupted):
        _train(tmp_path, [run], splits, report=report, stop=stop)
    moved = dataclasses.replace(run, engine="design")
    assert _train(tmp_path, [moved], splits)[0]["engine"] == "design"
    assert _start_steps(tmp_path / run.id) == [0, 0] and len(list((tmp_path / run.id).glob("checkpoint.pt.corrupt-*"))) == 1


def test_groups_mix_no_shapes_paths_or_settings(tmp_path, splits):
    other_shape = _superset([Design(**dict.fromkeys(SWITCHES, True), n_layers=1, state_size=8)])
    design_path = make_runs(DESIGNS[1:2], TINY)
    other_settings = _superset(DESIGNS[1:2], lr=1e-3)
    for mixed in (_superset(DESIGNS[:1]) + other_shape, _superset(DESIGNS[:1]) + design_path, _superset(DESIGNS[:1]) + other_settings):
        assert len({run.batch_key for run in mixed}) == 2
        with pytest.raises(ValueError, match="one shape"):
            _train(tmp_path, mixed, splits)


# --------------------------------------------------------------------------- manifests, fingerprints, workers


def test_the_path_is_a_manifest_column_and_part_of_the_fingerprint(tmp_path):
    runs = _superset(DESIGNS[:2]) + make_runs(DESIGNS[2:3], TINY)
    path = manifest_path(tmp_path / "stage1")
    write_manifest(path, runs)
    assert read_manifest(path) == runs
    assert [r.engine for r in read_manifest(path)] == ["superset", "superset", "design"]
    moved = dataclasses.replace(runs[0], engine="design")
    assert provenance.fingerprint(moved, "0" * 16) != provenance.fingerprint(runs[0], "0" * 16)
    text = path.read_text().replace(",superset,", ",turbo,", 1)
    path.write_text(text)
    with pytest.raises(ManifestError, match="engine 'turbo' is not one of design, superset"):
        read_manifest(path)


def test_results_from_before_paths_existed_are_still_used(tmp_path, data_dir, splits, one_thread):
    """The design path computes what the engine always computed: a result written before the `engine`
    column and field, the tokenizer columns and the later training settings existed (its fingerprint made without
    them) is reused, not retrained."""
    (run,) = make_runs(DESIGNS[:1], TINY)
    stage_dir = tmp_path / "stage1"
    write_manifest(manifest_path(stage_dir), [run])
    folder = stage_dir / "runs" / run.id
    result = _train(stage_dir / "runs", [run], splits)[0]
    data = provenance.data_id(*splits)
    row = {k: v for k, v in run.row().items() if k not in ("engine", *READING, *config.training_defaults())}  # nor later settings
    canonical = json.dumps({"run": row, "data": data, "engine": provenance.ENGINE}, sort_keys=True, separators=(",", ":"))
    old = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert result["fingerprint"] == old
    record = {k: v for k, v in result.items() if k not in ("engine", "valid_tokens", "test_tokens")}
    (folder / "result.json").write_text(json.dumps(record))
    assert read_result(stage_dir, run.id, provenance.fingerprint(run, data))["engine"] == "design"
    assert Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run() == 0


def test_a_manifest_from_before_the_column_reads_as_the_design_path(tmp_path):
    runs = make_runs(DESIGNS[:2], TINY)
    path = manifest_path(tmp_path / "stage1")
    write_manifest(path, runs)
    lines = [line.rsplit(",", 3)[0] for line in path.read_text().splitlines()]  # nor the tokenizer columns
    assert lines[0] == ",".join(columns()[:-3])
    path.write_text("\n".join(lines) + "\n")
    assert read_manifest(path) == runs


def test_worker_trains_superset_groups_and_records_the_path(tmp_path, data_dir, one_thread, capsys, group_sizes):
    runs = _superset(DESIGNS) + make_runs([DESIGNS[0].replace(state_size=4)], TINY)
    stage_dir = tmp_path / "results" / "stage1"
    write_manifest(manifest_path(stage_dir), runs)
    assert Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run() == 5
    assert sorted(group_sizes) == [(1, False), (4, True)]
    assert re.search(r"stage1 \d/5 2x8 superset x4 \[#+\] step 20/20", capsys.readouterr().err)
    for run in runs:
        assert read_result(stage_dir, run.id)["engine"] == run.engine


# --------------------------------------------------------------------------- the policy


def test_batch_designs_off_keeps_every_design_on_its_own_path():
    designs = stage1_designs([1, 2], [8, 64])
    assert set(policy.choose_paths(designs, 32, 1, "off", "cpu").values()) == {"design"}


def _costs(monkeypatch, design: policy.PathCost, superset: policy.PathCost) -> None:
    cost = policy.DeviceCost(design, superset, memory_bytes=2**40)
    monkeypatch.setattr(policy, "device_cost", lambda kind: cost)


def test_auto_takes_the_superset_path_only_where_predicted_margin_times_faster(monkeypatch):
    """Synthetic constants where only per-step overhead counts: 48 designs cost 48 steps' overhead one by one
    and one step's on the superset path, so the superset's overhead sets the predicted speed-up."""
    designs = SHAPE[:48]
    free = dict(per_layer_s=0.0, per_replicate_layer_s=0.0, gflops=1e15, per_element_s=0.0)
    for speedup, path in ((policy.MARGIN * 0.96, "design"), (policy.MARGIN * 1.04, "superset"), (0.5, "design")):
        _costs(monkeypatch, policy.PathCost(1e-3, **free), policy.PathCost(48e-3 / speedup, **free))
        assert set(policy.choose_paths(designs, 32, 1, "auto", "cpu").values()) == {path}, speedup
        assert set(policy.choose_paths(designs, 32, 1, "off", "cpu").values()) == {"design"}
    # Without overhead, at equal rates, the superset's extra FLOPs (the parts that are off) decide.
    flops = dict(overhead_s=0.0, per_layer_s=0.0, per_replicate_layer_s=0.0, gflops=10.0, per_element_s=0.0)
    _costs(monkeypatch, policy.PathCost(**flops), policy.PathCost(**flops))
    assert set(policy.choose_paths(designs, 32, 1, "auto", "cpu").values()) == {"design"}


def test_the_measured_cpu_model_batches_narrow_cells_and_not_wide_ones():
    designs = stage1_designs([1, 3], [8, 512])
    narrow = policy.choose_paths(designs, 8, 1, "auto", "cpu")
    assert {narrow[d] for d in designs if d.state_size == 8} == {"superset"}  # batch 8: overhead dominates
    wide = policy.choose_paths(designs, 256, 1, "auto", "cpu")
    assert {wide[d] for d in designs if d.state_size == 512} == {"design"}  # batch 256 × 512: the FLOPs do


def test_groups_fit_memory_and_spread_over_the_workers(monkeypatch):
    runs = make_runs(SHAPE, TINY, engine=lambda d, s: "superset")  # 96 designs of one shape
    one = policy.run_groups(runs, workers=1, kind="cpu")
    assert [len(g) for g in one] == [96]
    assert [len(g) for g in policy.run_groups(runs, workers=4, kind="cpu")] == [24] * 4
    cap = 2 * policy.replicate_bytes(superset_layout(SHAPE[0]), TINY["batch_size"])
    cost = dataclasses.replace(policy.device_cost("cpu"), memory_bytes=cap)
    monkeypatch.setattr(policy, "device_cost", lambda kind: cost)
    assert [len(g) for g in policy.run_groups(runs, workers=1, kind="cpu")] == [2] * 48
    assert sorted(run.id for g in one for run in g) == sorted(run.id for run in runs)


def test_groups_come_longest_first():
    small = make_runs(SHAPE[:4], TINY, engine=lambda d, s: "superset")
    wide = make_runs([d.replace(state_size=64) for d in SHAPE[:2]], TINY)
    groups = policy.run_groups(small + wide, workers=1, kind="cpu")
    seconds = [policy.group_seconds(g, "cpu") for g in groups]
    assert seconds == sorted(seconds, reverse=True) and len(groups) == 3
    together = next(g for g in groups if g[0].engine == "superset")
    step = policy.group_step_s(superset_layout(SHAPE[0]), 4, TINY["batch_size"], "superset", "cpu")
    assert len(together) == 4 and policy.group_seconds(together, "cpu") == TINY["steps"] * step


def test_unquoted_off_in_a_profile_means_off(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("batch_designs: off\n")
    loaded = yaml.safe_load(profile.read_text())
    assert loaded == {"batch_designs": False}  # YAML 1.1 reads it as a boolean
    assert config.coerce(loaded) == {"batch_designs": "off"}
    with pytest.raises(config.ConfigError, match="batch_designs"):
        config.validate({**yaml.safe_load(DEFAULT.read_text()), "batch_designs": "sometimes"})


def test_grid_command_writes_the_chosen_paths(tmp_path):
    from rnnsweep.cli import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    manifest = manifest_path(tmp_path / "stage1")
    args = ["grid", "--out", str(manifest), "--n-layers", "1", "--state-sizes", "8", "512", *flags, "--device", "cpu",
            "--precision", "fp32", "--seed", "0", "--tokenizer", "bytes"]
    assert main(args + ["--batch-designs", "off"]) == 0
    assert {r.engine for r in read_manifest(manifest)} == {"design"}
    assert main(args + ["--batch-designs", "auto"]) == 0
    runs = read_manifest(manifest)
    want = policy.choose_paths([r.design for r in runs], TINY["batch_size"], 1, "auto", "cpu")
    assert [r.engine for r in runs] == [want[r.design] for r in runs]
    assert "superset" in {r.engine for r in runs}
    json.dumps([r.row() for r in runs])  # rows stay plain data


def test_superset_in_bf16_keeps_switched_off_parts_at_zero(tmp_path, splits, one_thread):
    runs = _superset(DESIGNS, precision="bf16")
    results = _train(tmp_path, runs, splits)
    for run, result in zip(runs, results):
        assert result["status"] == "ok" and result["precision"] == "bf16" and result["engine"] == "superset"
        assert weights(tmp_path / run.id).keys() == initial_weights(run.design, 0).keys()
    designs = [run.design for run in runs]
    model = ByteModel(designs, [1, 2, 3, 4], superset=True, compute_dtype=torch.bfloat16)
    before = model.theta.ne(0)
    data = torch.randint(0, 256, (4, 4, 6), generator=torch.Generator().manual_seed(2))
    states = model.initial_state(4)
    for j in range(5):
        _, states = model.train_step(data[:, :, j], data[:, :, j + 1], states)
        assert not model.grad[~before].any()
