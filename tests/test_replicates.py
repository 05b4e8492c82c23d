"""Runs of one design trained as one batched model (rnnsweep.train.train_runs, the Worker's groups).

A run's files must not depend on the company it was trained in: alone,
in a group, interrupted and resumed, or resumed from checkpoints taken in
other groupings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnsweep.train as train_mod
from rnnsweep.claims import Worker
from rnnsweep.design import Design
from rnnsweep.results import read_result
from rnnsweep.grid import make_runs, write_manifest
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, RESULT, lock_path, manifest_path, run_dir
from rnnsweep.model import ByteModel
from rnnsweep.policy import run_groups
from rnnsweep.tokens import Text
from rnnsweep.train import Interrupted, train_run, train_runs
from conftest import CountedWaits, run_worker_processes, wait_for, worker_in_thread
from designs import all_on, design
from grouping import TINY, stop_at
from test_claims import HOLDER
from test_train import read_curve, sabotage, weights

CPU = torch.device("cpu")
DESIGN = all_on(n_layers=2, state_size=8)
UNALIGNED = DESIGN.replace(state_size=6)
OTHER = design("forget_gate", "state_gate", "new_state", "residual", n_layers=1, state_size=4)
SAME = ("status", "min_loss", "final_loss", "valid_bpb", "params", "steps", "seed")


def _runs(n: int = 3, design: Design = DESIGN, **changes) -> list:
    return make_runs([design], TINY | changes, replicates=n)


def _dirs(root: Path, runs: list) -> list[Path]:
    return [root / run.id for run in runs]


def _solo(root: Path, runs: list, splits) -> list[dict]:
    return [train_run(run, Text.of_bytes(*splits), root / run.id, CPU) for run in runs]


def assert_same_run(got: Path, want: Path) -> None:
    """Curve file and weights bit for bit."""
    assert (got / "curve.csv").read_bytes() == (want / "curve.csv").read_bytes()
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def _start_steps(folder: Path) -> list[int]:
    return [json.loads(line)["start_step"] for line in (folder / ATTEMPTS).read_text().splitlines()]


@pytest.fixture
def group_sizes(monkeypatch) -> list[int]:
    """How many replicates each model train.py builds has, in order."""
    sizes = []

    class Counted(ByteModel):
        def __init__(self, design, seeds, *args, **kwargs):
            sizes.append(len(seeds))
            super().__init__(design, seeds, *args, **kwargs)

    monkeypatch.setattr(train_mod, "ByteModel", Counted)
    return sizes


# --------------------------------------------------------------------------- a group is its runs alone


def test_group_gives_each_run_its_solo_files_bit_for_bit(tmp_path, splits, one_thread, group_sizes):
    """At these sizes the batched kernels compute each replicate exactly as alone: equal, not just close.

    (On the CPU that holds where every replicate's block of each activation
    fills whole SIMD chunks: 32 floats, the step of PyTorch's AVX-512 loops,
    as batch 4 × state 8 and 4 evaluation windows × state 8 do; 2 windows ×
    state 8 is whole on AVX2 but not on AVX-512. See the next test.)
    """
    runs = _runs(3)
    grouped = train_runs(runs, Text.of_bytes(*splits), _dirs(tmp_path / "group", runs), CPU)
    alone = _solo(tmp_path / "solo", runs, splits)
    assert group_sizes == [3, 1, 1, 1]
    assert [r["id"] for r in grouped] == [run.id for run in runs]
    for run, got, want in zip(runs, grouped, alone):
        assert_same_run(tmp_path / "group" / run.id, tmp_path / "solo" / run.id)
        assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
        assert got["status"] == "ok" and got["steps"] == TINY["steps"]
        assert json.loads((tmp_path / "group" / run.id / RESULT).read_text()) == got
        assert json.loads((tmp_path / "group" / run.id / "config.json").read_text())["id"] == run.id
        assert _start_steps(tmp_path / "group" / run.id) == [0]
    curves = [read_curve(tmp_path / "group" / run.id) for run in runs]
    assert curves[0] != curves[1] != curves[2]  # three seeds, three runs


def test_group_at_unaligned_sizes_matches_solo_to_rounding(tmp_path, splits, one_thread):
    """Batch 3 × state 6: close, but not bit for bit.

    PyTorch's CPU elementwise kernels (sigmoid, tanh, log, ...) compute the
    SIMD body and the scalar tail of a tensor with different code that can
    round differently, so a replicate whose block starts mid-chunk can differ
    from the solo run in the last bit; training then carries that along.
    Measured: weights within ~4e-7, curves within ~3e-8 relative.
    """
    runs = _runs(3, UNALIGNED, batch_size=3)
    grouped = train_runs(runs, Text.of_bytes(*splits), _dirs(tmp_path / "group", runs), CPU)
    alone = _solo(tmp_path / "solo", runs, splits)
    for run, got, want in zip(runs, grouped, alone):
        g, w = tmp_path / "group" / run.id, tmp_path / "solo" / run.id
        assert [s for s, _ in read_curve(g)] == [s for s, _ in read_curve(w)]
        assert [e for _, e in read_curve(g)] == pytest.approx([e for _, e in read_curve(w)], rel=1e-6, abs=0)
        for key, value in weights(w).items():
            torch.testing.assert_close(weights(g)[key], value, rtol=1e-5, atol=1e-5, msg=key)
        for key in ("min_loss", "final_loss", "valid_bpb"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=0), key
        exact = ("status", "params", "steps", "seed")
        assert {k: got[k] for k in exact} == {k: want[k] for k in exact}


def test_group_needs_one_design_and_one_set_of_settings(tmp_path, splits):
    mixed = _runs(1) + _runs(1, OTHER)
    with pytest.raises(ValueError, match="one design"):
        train_runs(mixed, Text.of_bytes(*splits), _dirs(tmp_path, mixed), CPU)
    other_lr = _runs(1) + _runs(1, lr=1e-3)
    with pytest.raises(ValueError, match="same settings"):
        train_runs(other_lr, Text.of_bytes(*splits), _dirs(tmp_path, other_lr), CPU)


def test_diverging_replicate_ends_alone_and_leaves_the_others_untouched(tmp_path, splits, monkeypatch, one_thread):
    runs = _runs(3, steps=30)
    alone = _solo(tmp_path / "solo", runs, splits)
    sabotage(monkeypatch, 11, "nan", seeds={runs[1].seed})  # replicate 1's loss is NaN from step 12 on
    grouped = train_runs(runs, Text.of_bytes(*splits), _dirs(tmp_path / "group", runs), CPU, checkpoint_every=7)
    bad = grouped[1]
    assert bad["status"] == "diverged" and bad["steps"] == 15  # found at the first logged step after
    assert math.isnan(bad["final_loss"]) and math.isnan(bad["valid_bpb"])
    assert read_curve(tmp_path / "group" / runs[1].id) == read_curve(tmp_path / "solo" / runs[1].id)[:2]
    assert bad["min_loss"] == min(e for _, e in read_curve(tmp_path / "group" / runs[1].id))
    assert not (tmp_path / "group" / runs[1].id / CHECKPOINT).exists()
    for i in (0, 2):
        assert_same_run(tmp_path / "group" / runs[i].id, tmp_path / "solo" / runs[i].id)
        assert {k: grouped[i][k] for k in SAME} == {k: alone[i][k] for k in SAME}


# --------------------------------------------------------------------------- interrupted and resumed


def test_interrupted_group_resumes_to_the_uninterrupted_files(tmp_path, splits, one_thread):
    runs = _runs(3, steps=30)
    train_runs(runs, Text.of_bytes(*splits), _dirs(tmp_path / "calm", runs), CPU)

    dirs = _dirs(tmp_path / "stopped", runs)
    stop, report = stop_at(10)  # checked before step 11: position 3 of a 7-step window
    with pytest.raises(Interrupted, match="interrupted; checkpoint at step 10") as caught:
        train_runs(runs, Text.of_bytes(*splits), dirs, CPU, checkpoint_every=0, report=report, stop=stop)
    assert caught.value.step == 10
    for folder in dirs:
        assert not (folder / RESULT).exists()
        saved = torch.load(folder / CHECKPOINT, weights_only=True)
        assert saved["step"] == 10 and saved["position"] == 3
        assert saved["batch"].shape == (TINY["batch_size"], TINY["history_size"]) and saved["batch"].dtype == torch.uint8
        assert saved["params"].keys() == weights(tmp_path / "calm" / folder.name).keys()

    resumed = train_runs(runs, Text.of_bytes(*splits), dirs, CPU)
    assert all(r["status"] == "ok" and r["steps"] == 30 for r in resumed)
    for run, folder in zip(runs, dirs):
        assert_same_run(folder, tmp_path / "calm" / run.id)
        assert _start_steps(folder) == [0, 10]
        assert not (folder / CHECKPOINT).exists()


def test_runs_checkpointed_at_different_steps_train_in_batches_of_equal_step(tmp_path, splits, one_thread, group_sizes):
    """a and b stopped together at step 10, c alone at step 15, d never started: three batches, all exact."""
    runs = _runs(4, steps=30)
    a, b, c, d = runs
    train_runs(runs, Text.of_bytes(*splits), _dirs(tmp_path / "calm", runs), CPU)
    dirs = _dirs(tmp_path / "mixed", runs)
    stop, report = stop_at(10)
    with pytest.raises(Interrupted):
        train_runs([a, b], Text.of_bytes(*splits), dirs[:2], CPU, report=report, stop=stop)
    stop, report = stop_at(15)
    with pytest.raises(Interrupted):
        train_run(c, Text.of_bytes(*splits), dirs[2], CPU, report=report, stop=stop)
    del group_sizes[:]

    results = train_runs(runs, Text.of_bytes(*splits), dirs, CPU)
    assert group_sizes == [1, 2, 1]  # step 15, then step 10, then step 0
    assert [r["id"] for r in results] == [run.id for run in runs]
    assert all(r["status"] == "ok" and r["steps"] == 30 for r in results)
    for run, folder, start in zip(runs, dirs, ([0, 10], [0, 10], [0, 15], [0])):
        assert_same_run(folder, tmp_path / "calm" / run.id)
        assert _start_steps(folder) == start


def test_checkpoint_of_another_design_is_set_aside(tmp_path, splits, one_thread):
    (mine,), (foreign,) = _runs(1), _runs(1, OTHER)
    stop, report = stop_at(10)
    with pytest.raises(Interrupted):
        train_run(foreign, Text.of_bytes(*splits), tmp_path / "foreign", CPU, report=report, stop=stop)
    target = tmp_path / "mine"
    target.mkdir()
    (tmp_path / "foreign" / CHECKPOINT).rename(target / CHECKPOINT)
    result = train_run(mine, Text.of_bytes(*splits), target, CPU)
    assert result["status"] == "ok" and _start_steps(target) == [0]
    assert len(list(target.glob(f"{CHECKPOINT}.corrupt-*"))) == 1
    train_run(mine, Text.of_bytes(*splits), tmp_path / "fresh", CPU)
    assert_same_run(target, tmp_path / "fresh")


# --------------------------------------------------------------------------- workers claim groups


def _stage3(tmp_path: Path) -> tuple[Path, list]:
    """A stage-3-like manifest: 2 configs × 3 replicates."""
    runs = make_runs([DESIGN, OTHER], TINY, replicates=3)
    stage_dir = tmp_path / "results" / "stage3"
    write_manifest(manifest_path(stage_dir), runs)
    return stage_dir, runs


def test_groups_are_one_config_with_one_set_of_settings():
    runs = make_runs([DESIGN, OTHER], TINY, replicates=2)
    odd = dataclasses.replace(runs[1], id="odd", settings=runs[1].settings.replace(steps=40))  # same config, other settings
    groups = run_groups([runs[0], runs[2], odd, runs[1], runs[3]], workers=1, kind="cpu")
    # The longest first (40 steps), then the two configs in manifest order.
    assert [[r.id for r in g] for g in groups] == [["odd"], [runs[0].id, runs[1].id], [runs[2].id, runs[3].id]]


def test_worker_trains_each_config_as_one_group(tmp_path, data_dir, one_thread, capsys, group_sizes):
    stage_dir, runs = _stage3(tmp_path)
    assert Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run() == 6
    assert group_sizes == [3, 3]
    labels = re.findall(r"stage3 \d+/6 (\w+) x(\d+) \[#+\] step 20/20", capsys.readouterr().err)
    assert sorted(labels) == sorted({(run.config_id, "3") for run in runs})
    for run in runs:
        assert read_result(stage_dir, run.id)["status"] == "ok"


def test_worker_trains_the_free_part_of_a_group_then_the_rest_once_freed(tmp_path, data_dir, one_thread, group_sizes):
    runs = make_runs([DESIGN], TINY, replicates=3)
    stage_dir = tmp_path / "results" / "stage3"
    write_manifest(manifest_path(stage_dir), runs)
    held = lock_path(stage_dir, runs[1].id)
    held.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        stop = CountedWaits()
        thread, outcome = worker_in_thread(stage_dir, data_dir, stop)
        wait_for(lambda: not thread.is_alive() or all(read_result(stage_dir, run.id) for run in (runs[0], runs[2])),
                 "the free replicates")
        waited = stop.waits
        # Ten poll periods with only the held replicate left: the worker must wait for it, not give up.
        wait_for(lambda: stop.waits >= waited + 10 or not thread.is_alive(), "ten polls")
        assert thread.is_alive(), outcome
        assert read_result(stage_dir, runs[1].id) is None
    finally:
        holder.kill()
        holder.wait()
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["trained"] == 3
    assert group_sizes == [2, 1]
    assert all(read_result(stage_dir, run.id)["status"] == "ok" for run in runs)


def test_two_worker_processes_finish_every_replicate_exactly_once(tmp_path, data_dir):
    stage_dir, runs = _stage3(tmp_path)
    codes, texts = run_worker_processes(stage_dir, data_dir, 2, tmp_path)
    assert codes == [0, 0], "\n".join(texts)

    trained = [run_id for text in texts for run_id in re.findall(r"worker \d+: (\S+) ok\b", text)]
    assert sorted(trained) == sorted(run.id for run in runs), "some run was trained twice or not at all"
    counts = [int(m) for text in texts for m in re.findall(r"stage finished, (\d+) runs trained here", text)]
    assert len(counts) == 2 and sum(counts) == 6
    # However the two workers split the groups, each config's replicates add up to three.
    for config in {run.config_id for run in runs}:
        sizes = [int(n) for text in texts for n in re.findall(rf"{config} x(\d+) \[#+\] step 20/20", text)]
        assert sum(sizes) == 3, (config, texts)
    for run in runs:
        folder = run_dir(stage_dir, run.id)
        assert read_result(stage_dir, run.id)["steps"] == 20
        assert _start_steps(folder) == [0], "claimed more than once"
        assert sorted(p.name for p in folder.glob("result.json*")) == [RESULT]
