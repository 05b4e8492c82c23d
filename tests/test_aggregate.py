"""Collecting a stage's results into summary.csv and curves.csv (rnnsweep.aggregate)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import fake_result
from rnnsweep import provenance
from rnnsweep.aggregate import MissingResults, aggregate
from rnnsweep.layout import run_dir
from rnnsweep.results import settle_result
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.plan import count_params
from rnnsweep.tokens import Text
from rnnsweep.train import train_run

TINY = dict(steps=10, batch_size=4, history_size=6, log_every=5, lr=1e-3, eval_bytes=16)
RESULT_FIELDS = ("status", "min_loss", "final_loss", "valid_bpb", "params")


def _stage(tmp_path: Path, n_designs: int, replicates: int = 1):
    designs = stage1_designs([1, 2], [4])[5 : 5 + 7 * n_designs : 7]
    runs = make_runs(designs, TINY, replicates=replicates)
    # a manifest order that is not sorted by id, so order bugs show
    runs = sorted(runs, key=lambda r: r.id, reverse=True)
    stage_dir = tmp_path / "stage1"
    write_manifest(stage_dir / "manifest.csv", runs)
    return stage_dir, runs


def _fake_result(stage_dir: Path, run, k: int, splits) -> dict:
    """A finished run written by hand: result.json, weights and a curve with known values, for the `splits` data."""
    data = provenance.data_id(*splits)
    curve = [(5, 3.0 - k / 10), (10, 2.5 - k / 10)]
    return fake_result(
        run_dir(stage_dir, run.id), run.id, run.settings.steps, run.settings.log_every, curve, valid_bpb=4.0 + k, test_bpb=4.5 + k,
        params=count_params(run.design), seed=run.seed, engine=run.engine, fingerprint=provenance.fingerprint(run, data),
        data=data,
    )


def _manifest_frame(stage_dir: Path) -> pd.DataFrame:
    return pd.read_csv(stage_dir / "manifest.csv", dtype={"id": str, "config_id": str})


def test_summary_and_curves_of_trained_runs(tmp_path, data_dir, splits, one_thread):
    train, valid, test = splits
    stage_dir, runs = _stage(tmp_path, 2, replicates=2)
    assert [r.id for r in runs] != sorted(r.id for r in runs)
    for run in runs:
        train_run(run, Text.of_bytes(train, valid, test), run_dir(stage_dir, run.id), torch.device("cpu"))

    aggregate(stage_dir, data_dir)

    manifest = _manifest_frame(stage_dir)
    summary = pd.read_csv(stage_dir / "summary.csv", dtype={"id": str, "config_id": str})
    assert len(summary) == len(runs)
    assert list(summary["id"]) == [r.id for r in runs]  # manifest order
    for column in manifest.columns:
        assert column in summary.columns
        assert list(summary[column]) == list(manifest[column]), column
    for field in RESULT_FIELDS:
        assert field in summary.columns
    for i, run in enumerate(runs):
        record = json.loads((run_dir(stage_dir, run.id) / "result.json").read_text())
        for field in RESULT_FIELDS:
            assert summary.loc[i, field] == record[field], (run.id, field)

    curves = pd.read_csv(stage_dir / "curves.csv", dtype={"id": str})
    assert list(curves.columns) == ["id", "step", "ema_loss"]
    expected = []
    for run in runs:
        with (run_dir(stage_dir, run.id) / "curve.csv").open(newline="") as fh:
            expected += [(run.id, int(r["step"]), float(r["ema_loss"])) for r in csv.DictReader(fh)]
    assert list(curves.itertuples(index=False, name=None)) == expected
    assert len(expected) == len(runs) * (TINY["steps"] // TINY["log_every"])


def test_summary_of_hand_written_results(tmp_path, data_dir, splits):
    stage_dir, runs = _stage(tmp_path, 5)
    records = [_fake_result(stage_dir, run, k, splits) for k, run in enumerate(runs)]
    summary, curves = aggregate(stage_dir, data_dir)
    on_disk = pd.read_csv(stage_dir / "summary.csv", dtype={"id": str, "config_id": str})
    assert list(on_disk["id"]) == [r.id for r in runs]
    for frame in (summary, on_disk):
        assert list(frame["min_loss"]) == [r["min_loss"] for r in records]
        assert list(frame["valid_bpb"]) == [r["valid_bpb"] for r in records]
        assert list(frame["params"]) == [count_params(r.design) for r in runs]
        assert list(frame["seed"]) == [r.seed for r in runs]
        assert list(frame["steps"]) == [r.settings.steps for r in runs]
        assert list(frame["replicate"]) == [0] * len(runs)
    on_disk_curves = pd.read_csv(stage_dir / "curves.csv", dtype={"id": str})
    expected = [(r.id, s, e) for k, r in enumerate(runs) for s, e in [(5, 3.0 - k / 10), (10, 2.5 - k / 10)]]
    assert list(on_disk_curves.itertuples(index=False, name=None)) == expected
    assert list(curves.itertuples(index=False, name=None)) == expected


def test_missing_results_are_all_named(tmp_path, data_dir, splits):
    stage_dir, runs = _stage(tmp_path, 6)
    finished = {runs[1].id, runs[4].id}
    for k, run in enumerate(runs):
        if run.id in finished:
            _fake_result(stage_dir, run, k, splits)
    damaged = runs[2]  # a damaged record counts as missing
    run_dir(stage_dir, damaged.id).mkdir(parents=True)
    (run_dir(stage_dir, damaged.id) / "result.json").write_text('{"status": "o')

    with pytest.raises(MissingResults) as err:
        aggregate(stage_dir, data_dir)
    message = str(err.value)
    missing = [r.id for r in runs if r.id not in finished]
    assert len(missing) == 4
    for run_id in missing:
        assert re.search(rf"\b{re.escape(run_id)}\b", message), run_id
    for run_id in finished:
        assert run_id not in message
    assert not (stage_dir / "summary.csv").exists()
    assert not (stage_dir / "curves.csv").exists()


def test_a_result_of_other_settings_or_data_is_not_aggregated(tmp_path, data_dir, splits):
    """A record whose fingerprint is not its manifest row's (here: other bytes) counts as missing."""
    stage_dir, runs = _stage(tmp_path, 2)
    _fake_result(stage_dir, runs[0], 0, splits)
    _fake_result(stage_dir, runs[1], 1, (splits[0][:-1], *splits[1:]))  # trained on one byte less
    with pytest.raises(MissingResults) as err:
        aggregate(stage_dir, data_dir)
    assert err.value.missing == [runs[1].id]


@pytest.mark.parametrize("curve", ["", "step,ema_loss\n5,oops\n", "a,b\n1,2\n"], ids=["empty", "text", "columns"])
def test_a_damaged_curve_sets_its_result_aside(tmp_path, data_dir, splits, curve):
    stage_dir, runs = _stage(tmp_path, 2)
    for k, run in enumerate(runs):
        _fake_result(stage_dir, run, k, splits)
    (run_dir(stage_dir, runs[0].id) / "curve.csv").write_text(curve)
    with pytest.raises(MissingResults) as err:
        aggregate(stage_dir, data_dir)
    assert err.value.missing == [runs[0].id]
    assert (run_dir(stage_dir, runs[0].id) / "result.json").exists()  # aggregation only reads
    assert settle_result(stage_dir, runs[0].id, json.loads((run_dir(stage_dir, runs[0].id) / "result.json").read_text())["fingerprint"]) is None
    assert list(run_dir(stage_dir, runs[0].id).glob("result.json.corrupt-*"))  # the lock holder sets it aside
