"""The training loop, its result record, divergence and checkpoint resume (rnnsweep.train).

The expected curve and weights are recomputed here with a loop written
independently (window by window, state reset per window, EMA in plain Python)
from the same building blocks train.py uses: ByteModel, Sampler and Adam.
"""

from __future__ import annotations

import dataclasses
import csv
import json
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnsweep.data as data_mod
import rnnsweep.train as train_mod
from designs import all_on, design
from rnnsweep.design import Design
from rnnsweep.grid import make_runs
from rnnsweep.model import ByteModel
from rnnsweep.plan import count_params
from rnnsweep.optim import Adam, Schedule
from rnnsweep.results import FILES_FIELD, RESULT_FIELDS
from rnnsweep.tokens import Text
from rnnsweep.train import Sampler, optimiser_step, train_run

CPU = torch.device("cpu")

DESIGN = all_on(n_layers=2, state_size=4)
PLAIN = design("new_state", n_layers=1, state_size=4)  # no gates, no old state, no residual path
SETTINGS = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-2, eval_bytes=16)


def _run(design: Design = DESIGN, **changes):
    return make_runs([design], SETTINGS | changes)[0]


def reference(run, train_data):
    """(curve, final ema, weights) of `run`, by hand: windows of history_size bytes, history_size-1 steps each,
    step `step` (from 0) updated at its scheduled rate after its clip."""
    model = ByteModel(run.design, [run.seed])
    opt, schedule = Adam(model.theta, model.grad, lr=run.settings.lr), Schedule.of(run.settings)
    sampler = Sampler(train_data, run.settings.batch_size, run.settings.history_size, seed=run.seed + 1)
    ema, curve, step = 3.0, [], 0
    while step < run.settings.steps:
        batch = sampler.next().long()
        states = [torch.zeros(1, run.settings.batch_size, run.design.state_size) for _ in range(run.design.n_layers)]
        for j in range(run.settings.history_size - 1):
            if step == run.settings.steps:
                break
            loss, states = model.train_step(batch[None, :, j], batch[None, :, j + 1], states)
            optimiser_step(model, opt, schedule, run.settings.grad_clip, step)  # a plain opt.step() at the defaults
            ema = 0.95 * ema + 0.05 * loss.item()
            step += 1
            if step % run.settings.log_every == 0:
                curve.append((step, ema))
    return curve, ema, model.replicate(model.theta, 0)


def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    with (run_dir / "curve.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [(int(r["step"]), float(r["ema_loss"])) for r in rows]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "weights.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def sabotage(monkeypatch, after: int, action: str, seeds: set[int] | None = None) -> None:
    """From the training step after the `after`-th on, make train.py's model raise (action "raise") or
    multiply the loss and gradients by float(action) for the replicates whose seed is in `seeds` (all if None)."""
    calls = 0

    class Sabotaged(ByteModel):
        def __init__(self, design, seeds_, *args, **kwargs):
            super().__init__(design, seeds_, *args, **kwargs)
            self.hit = [r for r, seed in enumerate(seeds_) if seeds is None or seed in seeds]

        def train_step(self, byte, target, states):
            nonlocal calls
            loss, states = super().train_step(byte, target, states)
            calls += 1
            if calls > after:
                if action == "raise":
                    raise RuntimeError(f"simulated crash in step {calls}")
                loss[self.hit] *= float(action)
                for view in self.views(self.grad).values():
                    view[self.hit] *= float(action)
            return loss, states

    monkeypatch.setattr(train_mod, "ByteModel", Sabotaged)


# --------------------------------------------------------------------------- the curve and the record


@pytest.mark.parametrize(
    "design, steps, history, log_every",
    [(DESIGN, 20, 8, 5), (DESIGN, 23, 8, 5), (PLAIN, 17, 5, 4), (PLAIN, 9, 2, 3)],
    ids=["multiple", "not-multiple", "short-windows", "one-step-windows"],
)
def test_curve_and_weights_match_independent_loop(tmp_path, splits, one_thread, design, steps, history, log_every):
    train, valid, test = splits
    run = _run(design, steps=steps, history_size=history, log_every=log_every)
    result = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "run", CPU)
    curve, final_ema, model = reference(run, train)

    assert result["steps"] == steps
    got = read_curve(tmp_path / "run")
    assert [s for s, _ in got] == [log_every * k for k in range(1, steps // log_every + 1)]
    assert len(got) == len(curve)
    for (s1, e1), (s2, e2) in zip(got, curve):
        assert s1 == s2
        assert e1 == pytest.approx(e2, abs=1e-9, rel=0)
    assert result["min_loss"] == min(e for _, e in got)
    assert result["final_loss"] == pytest.approx(final_ema, abs=1e-9, rel=0)
    assert_same_weights(weights(tmp_path / "run"), model)


def test_result_record(tmp_path, splits, one_thread):
    train, valid, test = splits
    run = _run(steps=23)
    result = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "run", CPU)
    assert set(result) == {*RESULT_FIELDS, FILES_FIELD}
    assert result["id"] == run.id
    assert result["status"] == "ok"
    assert result["steps"] == 23
    assert result["seed"] == run.seed
    assert result["device"] == "cpu"
    assert result["precision"] == "fp32"
    assert result["params"] == count_params(run.design) == sum(t.numel() for t in weights(tmp_path / "run").values())
    assert result["wall_s"] >= 0 and result["steps_per_s"] > 0
    assert 0 < result["valid_bpb"] < 64 and math.isfinite(result["valid_bpb"])
    assert 0 < result["test_bpb"] < 64 and math.isfinite(result["test_bpb"])
    assert result["valid_bytes"] == result["test_bytes"] == (16 - 1) // 7 * 7  # eval_bytes 16, windows of 8
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk == result
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_bf16_trains_in_bfloat16_and_keeps_float32_weights(tmp_path, splits, one_thread):
    """precision bf16: the same run, its arithmetic in bfloat16; weights and Adam stay float32."""
    train, valid, test = splits
    run = _run(design=all_on(n_layers=2, state_size=16), steps=40, lr=3e-3)
    fp32 = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "fp32", CPU)
    bf16 = train_run(dataclasses.replace(run, precision="bf16"), Text.of_bytes(train, valid, test), tmp_path / "bf16", CPU)
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "bf16").values())
    a, b = read_curve(tmp_path / "fp32"), read_curve(tmp_path / "bf16")
    # Rounding to 8 mantissa bits changes the curve (so bf16 really ran), but only slightly.
    assert a != b
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 0.05
    assert bf16["valid_bpb"] == pytest.approx(fp32["valid_bpb"], abs=0.05)


def test_same_run_twice_is_identical(tmp_path, splits, one_thread):
    train, valid, test = splits
    run = _run(steps=25)
    first = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "a", CPU)
    second = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "b", CPU)
    assert (tmp_path / "a" / "curve.csv").read_bytes() == (tmp_path / "b" / "curve.csv").read_bytes()
    assert read_curve(tmp_path / "a") == read_curve(tmp_path / "b")
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    for key in ("min_loss", "final_loss", "valid_bpb", "params", "steps", "seed", "status"):
        assert first[key] == second[key]


def test_other_seed_gives_other_curve(tmp_path, splits, one_thread):
    train, valid, test = splits
    a, b = make_runs([DESIGN], SETTINGS | {"steps": 10}, replicates=2)
    train_run(a, Text.of_bytes(train, valid, test), tmp_path / "a", CPU)
    train_run(b, Text.of_bytes(train, valid, test), tmp_path / "b", CPU)
    assert read_curve(tmp_path / "a") != read_curve(tmp_path / "b")


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize(
    "steps, after, value",
    [(30, 11, "nan"), (30, 11, "inf"), (23, 21, "nan"), (20, 0, "nan")],
    ids=["nan-mid", "inf-mid", "nan-after-last-log", "nan-from-start"],
)
def test_non_finite_loss_ends_as_diverged(tmp_path, splits, monkeypatch, one_thread, steps, after, value):
    train, valid, test = splits
    run = _run(steps=steps)
    sabotage(monkeypatch, after, value)
    result = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "run", CPU)
    assert result["status"] == "diverged"
    assert result["steps"] <= steps
    assert set(result) == {*RESULT_FIELDS, FILES_FIELD}
    curve = read_curve(tmp_path / "run")
    assert all(math.isfinite(e) for _, e in curve)
    assert all(s <= after for s, _ in curve)  # nothing logged after the loss went bad
    if curve:
        assert result["min_loss"] == min(e for _, e in curve)
    assert not math.isfinite(result["final_loss"])
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "diverged"


# --------------------------------------------------------------------------- checkpoints


def test_resume_after_crash_is_bit_identical(tmp_path, splits, monkeypatch, one_thread):
    train, valid, test = splits
    run = _run(steps=30, history_size=6, log_every=5)  # checkpoints at 7, 14 (mid-window), 21, 28
    full = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "a", CPU, checkpoint_every=7)

    sabotage(monkeypatch, 17, "raise")  # dies inside step 18, after the checkpoint of step 14
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(run, Text.of_bytes(train, valid, test), tmp_path / "b", CPU, checkpoint_every=7)
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    assert not (tmp_path / "b" / "result.json").exists()
    monkeypatch.undo()

    reported = []
    resumed = train_run(run, Text.of_bytes(train, valid, test), tmp_path / "b", CPU, checkpoint_every=7,
                        report=lambda step, ema, rate: reported.append(step))
    assert reported and min(reported) == 15, "did not resume from the step-14 checkpoint"
    assert reported[-1] == 30
    assert resumed["steps"] == 30
    assert read_curve(tmp_path / "b") == read_curve(tmp_path / "a")
    assert_same_weights(weights(tmp_path / "b"), weights(tmp_path / "a"))
    for key in ("min_loss", "final_loss", "valid_bpb", "status"):
        assert resumed[key] == full[key], key
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_checkpointing_does_not_change_the_run(tmp_path, splits, one_thread):
    train, valid, test = splits
    run = _run(steps=30, history_size=6, log_every=5)
    train_run(run, Text.of_bytes(train, valid, test), tmp_path / "plain", CPU)
    train_run(run, Text.of_bytes(train, valid, test), tmp_path / "ckpt", CPU, checkpoint_every=7)
    assert read_curve(tmp_path / "plain") == read_curve(tmp_path / "ckpt")
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "ckpt"))


def test_corrupt_checkpoint_restarts_from_zero(tmp_path, splits, one_thread, caplog):
    train, valid, test = splits
    run = _run(steps=20)
    train_run(run, Text.of_bytes(train, valid, test), tmp_path / "fresh", CPU)
    target = tmp_path / "run"
    target.mkdir()
    garbage = bytes(range(256)) * 8
    (target / "checkpoint.pt").write_bytes(garbage)
    reported = []
    with caplog.at_level(logging.WARNING, logger="rnnsweep"):
        result = train_run(run, Text.of_bytes(train, valid, test), target, CPU, checkpoint_every=7,
                           report=lambda step, ema, rate: reported.append(step))
    assert result["status"] == "ok" and result["steps"] == 20
    assert reported[0] == 5  # from step 0
    aside = list(target.glob("checkpoint.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert any(r.levelno >= logging.WARNING and "checkpoint" in r.getMessage() for r in caplog.records)
    assert read_curve(target) == read_curve(tmp_path / "fresh")
    assert_same_weights(weights(target), weights(tmp_path / "fresh"))


class Evil:
    """Unpickling this object creates `marker`: code execution, if a loader allowed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_torch(path: Path, marker: Path) -> None:
    torch.save({"model": Evil(marker), "step": 3}, path)


def _write_pickle(path: Path, marker: Path) -> None:
    with path.open("wb") as fh:
        pickle.dump({"model": Evil(marker), "step": 3}, fh)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", [_write_torch, _write_pickle], ids=["torch.save", "pickle"])
def test_loading_a_checkpoint_never_executes_code(tmp_path, splits, one_thread, writer):
    train, valid, test = splits
    # control: the payload really does run code when loaded without restriction
    control_marker = tmp_path / "control-marker"
    writer(tmp_path / "control.pt", control_marker)
    try:
        torch.load(tmp_path / "control.pt", weights_only=False)
    except RuntimeError:
        pass  # a bare pickle is no torch file, but it ran its code while being read
    assert control_marker.exists()

    run = _run(steps=10)
    target = tmp_path / "run"
    target.mkdir()
    marker = tmp_path / "marker"
    writer(target / "checkpoint.pt", marker)
    result = train_run(run, Text.of_bytes(train, valid, test), target, CPU, checkpoint_every=7)
    assert not marker.exists(), "loading the checkpoint executed code"
    assert result["status"] == "ok" and result["steps"] == 10
    assert len(list(target.glob("checkpoint.pt.corrupt-*"))) == 1
    train_run(run, Text.of_bytes(train, valid, test), tmp_path / "fresh", CPU)
    assert read_curve(target) == read_curve(tmp_path / "fresh")


# --------------------------------------------------------------------------- held-out evaluation


@pytest.mark.parametrize("eval_bytes, length, windows", [(16, 100, 2), (22, 100, 3), (1000, 30, 4), (3, 100, 1)])
def test_held_out_windows_score_each_byte_of_the_slice_once(eval_bytes, length, windows):
    data = torch.arange(length, dtype=torch.uint8).numpy()
    got = data_mod.held_out_windows(data, eval_bytes, 8)
    assert got.shape == (windows, 8)
    predicted = got[:, 1:].ravel().tolist()  # the bytes that are targets
    assert predicted == list(range(1, 1 + windows * 7))  # each once, in order, from the slice's start
    assert (got[1:, 0] == got[:-1, -1]).all()  # a window starts where the previous one ended


def test_held_out_windows_of_tokens_lie_within_the_slice_of_bytes():
    """Token windows cover the tokens wholly within the first eval_bytes bytes: each once, none past it."""
    rng = np.random.default_rng(1)
    widths = rng.integers(1, 6, size=300)
    data = rng.integers(300, size=500).astype(np.uint16)
    ends = np.cumsum(widths[data])
    got = data_mod.held_out_windows(data, 400, 8, widths)
    last = got.shape[0] * 7  # index of the last token predicted
    assert (got.ravel()[: 8] == data[:8]).all() and (got[1:, 0] == got[:-1, -1]).all()
    assert ends[last] <= 400 < ends[last + 7]  # within the slice, and no further window would be


@pytest.mark.parametrize("vocab", [256, 300])
def test_held_out_bpb_is_summed_nats_over_the_bytes_predicted(splits, one_thread, monkeypatch, vocab):
    """Recomputed one window at a time, state reset per window, against the batched and chunked evaluation;
    for tokens of several bytes, over the bytes the predicted tokens cover."""
    _, valid, _ = splits
    rng = np.random.default_rng(2)
    data, widths = (valid, None) if vocab == 256 else (rng.integers(vocab, size=len(valid)).astype(np.uint16), rng.integers(1, 6, size=vocab))
    model = ByteModel(DESIGN, [3], vocab=vocab)
    windows = data_mod.held_out_windows(data, 100, 8, widths)
    total = 0.0
    for window in torch.from_numpy(windows.astype(np.int64)):
        states = model.initial_state(1)
        for j in range(7):
            logits, states = model.logits(window[j].view(1, 1), states)
            total += torch.nn.functional.cross_entropy(logits[0], window[j + 1].view(1), reduction="sum").item()
    covered = len(windows) * 7 if widths is None else int(widths[windows[:, 1:]].sum())
    expected = total / covered / math.log(2)
    score = train_mod.evaluate_bpb(model, data, 100, 8, widths)
    monkeypatch.setattr(train_mod, "EVAL_CHUNK", 5)
    (chunked,) = train_mod.evaluate_bpb(model, data, 100, 8, widths).bpb
    assert score.tokens == len(windows) * 7 and score.bytes == covered
    if widths is None:
        assert score.tokens == 98
    else:  # the first token's bytes are not predicted, as the first byte's are not
        assert int(np.cumsum(widths[data])[score.tokens]) == covered + widths[data[0]] <= 100
    (whole,) = score.bpb
    assert whole == pytest.approx(expected, rel=1e-6) and chunked == pytest.approx(expected, rel=1e-6)
