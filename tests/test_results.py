"""A result is what its own curve, files and run say (rnnsweep.results): every contradiction is damage."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from rnnsweep import provenance
from rnnsweep.grid import make_runs, stage1_designs
from rnnsweep.layout import CURVE, RESULT, WEIGHTS, run_dir
from rnnsweep.results import finished_record, read_result, settle_result
from rnnsweep.tokens import Text
from rnnsweep.train import train_run

TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits):
    """One finished run of a 2-layer design, trained once for every test here: (stage folder, run, fingerprint)."""
    torch.set_num_threads(1)
    run = make_runs(stage1_designs([2], [4])[40:41], TINY)[0]
    stage_dir = tmp_path_factory.mktemp("results") / "stage1"
    stage_dir.mkdir()
    train_run(run, Text.of_bytes(*splits), run_dir(stage_dir, run.id), torch.device("cpu"))
    return stage_dir, run, provenance.fingerprint(run, provenance.data_id(*splits))


@pytest.fixture
def finished(trained, tmp_path):
    """A copy of the finished run to damage: (stage folder, run, fingerprint)."""
    stage_dir, run, fingerprint = trained
    copy = tmp_path / "stage1"
    shutil.copytree(run_dir(stage_dir, run.id), run_dir(copy, run.id))
    return copy, run, fingerprint


def _edit_record(folder: Path, **changes: object) -> None:
    record = json.loads((folder / RESULT).read_text())
    (folder / RESULT).write_text(json.dumps(record | changes))


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_untouched_result_is_accepted(finished):
    stage_dir, run, fingerprint = finished
    record = read_result(stage_dir, run, fingerprint, thorough=True)
    assert record is not None and record["status"] == "ok"
    assert settle_result(stage_dir, run, fingerprint, thorough=True) == record
    assert finished_record(run_dir(stage_dir, run.id)) == record


#: Each attack on a finished run: (the change, a word the warning must name).
RECORD_EDITS = {
    "min_loss below its curve": ({"min_loss": 0.0001}, "min_loss"),
    "min_loss not a number": ({"min_loss": math.nan}, "min_loss"),
    "valid_bpb negative": ({"valid_bpb": -3.0}, "valid_bpb"),
    "valid_bpb infinite": ({"valid_bpb": math.inf}, "valid_bpb"),
    "test_bpb zero": ({"test_bpb": 0.0}, "test_bpb"),
    "status flipped to diverged": ({"status": "diverged"}, "final_loss"),
    "final_loss not its curve's last point": ({"final_loss": 1.0}, "final_loss"),
    "fewer steps than the run's": ({"steps": 15}, "steps"),
    "another seed": ({"seed": 12345}, "seed"),
    "another engine": ({"engine": "superset"}, "engine"),
    "params of another design": ({"params": 7}, "params"),
    "negative wall time": ({"wall_s": -1.0}, "wall_s"),
    "more tokens than bytes scored": ({"valid_tokens": 10**9}, "valid_tokens"),
    "files of another size recorded": ({"files": {"curve.csv": {"bytes": 3, "sha256": "0" * 64},
                                                  "weights.pt": {"bytes": 3, "sha256": "0" * 64}}}, "curve.csv has"),
    "files record of the wrong shape": ({"files": "yes"}, "files is not"),
}


@pytest.mark.parametrize("changes, named", RECORD_EDITS.values(), ids=RECORD_EDITS.keys())
def test_a_record_that_contradicts_its_run_is_damage(finished, caplog, changes, named):
    stage_dir, run, fingerprint = finished
    folder = run_dir(stage_dir, run.id)
    _edit_record(folder, **changes)
    assert read_result(stage_dir, run, fingerprint) is None
    assert (folder / RESULT).exists()  # a reader moves nothing
    with caplog.at_level(logging.WARNING):
        assert settle_result(stage_dir, run, fingerprint) is None
    assert not (folder / RESULT).exists() and len(list(folder.glob(f"{RESULT}.corrupt-*"))) == 1
    assert named in caplog.text and "trained again" in caplog.text


def test_a_curve_point_edited_anywhere_is_damage(finished):
    """Not only its minimum: the record names its curve's hash, so a point changed in place is seen."""
    stage_dir, run, fingerprint = finished
    path = run_dir(stage_dir, run.id) / CURVE
    text = path.read_text()
    last_digit = text.rstrip("\n")[-1]
    path.write_text(text.rstrip("\n")[:-1] + str((int(last_digit) + 1) % 10) + "\n")
    assert read_result(stage_dir, run, fingerprint) is None


def test_a_curve_edited_below_the_recorded_minimum_is_damage(finished):
    stage_dir, run, fingerprint = finished
    path = run_dir(stage_dir, run.id) / CURVE
    lines = path.read_text().splitlines()
    step = lines[2].split(",")[0]
    path.write_text("\n".join([*lines[:2], f"{step},0.5", *lines[3:]]) + "\n")
    assert read_result(stage_dir, run, fingerprint) is None


def test_a_curve_with_a_point_missing_is_damage(finished):
    stage_dir, run, fingerprint = finished
    path = run_dir(stage_dir, run.id) / CURVE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    assert read_result(stage_dir, run, fingerprint) is None


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_weights_deleted_or_cut_make_the_run_unfinished(finished, damage):
    stage_dir, run, fingerprint = finished
    weights = run_dir(stage_dir, run.id) / WEIGHTS
    if damage == "deleted":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    assert read_result(stage_dir, run, fingerprint) is None
    assert settle_result(stage_dir, run, fingerprint) is None


def test_weights_edited_in_place_are_caught_by_the_thorough_check_and_by_loading(finished):
    """A worker's scan compares the size; aggregation (thorough) and `sample` compare the hash."""
    stage_dir, run, fingerprint = finished
    folder = run_dir(stage_dir, run.id)
    _flip_byte(folder / WEIGHTS, (folder / WEIGHTS).stat().st_size // 2)
    assert read_result(stage_dir, run, fingerprint) is not None
    assert read_result(stage_dir, run, fingerprint, thorough=True) is None
    with pytest.raises(ValueError, match="SHA-256"):
        finished_record(folder)
    assert settle_result(stage_dir, run, fingerprint, thorough=True) is None
    assert list(folder.glob(f"{RESULT}.corrupt-*"))


def test_a_result_of_other_settings_is_set_aside_not_called_damaged(finished, caplog):
    """A record made under other settings need not agree with today's manifest row: it is superseded, kept."""
    stage_dir, run, fingerprint = finished
    other = make_runs([run.design], {**TINY, "steps": 25})[0]
    with caplog.at_level(logging.WARNING):
        assert settle_result(stage_dir, other, "0" * 16) is None
    assert "damaged" not in caplog.text
    assert (run_dir(stage_dir, run.id) / "superseded" / fingerprint / RESULT).exists()
