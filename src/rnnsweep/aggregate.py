"""Collect a stage's finished runs into summary.csv and curves.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rnnsweep.claims import read_result
from rnnsweep.fsutil import atomic_open
from rnnsweep.grid import read_manifest
from rnnsweep.layout import RESULT_FIELDS, manifest_path, run_dir

# The record's fields that the manifest row does not already hold (its `steps` becomes `steps_done`).
RESULT_COLUMNS = tuple(k for k in RESULT_FIELDS if k not in ("id", "seed", "steps"))


class MissingResults(RuntimeError):
    """Some runs of the manifest have no result yet; aggregating now would silently drop them."""


def collect(stage_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, curves) of a stage, in manifest order; refuses if any run is unfinished."""
    runs = read_manifest(manifest_path(stage_dir))
    records = {run.id: read_result(stage_dir, run.id) for run in runs}
    missing = [run_id for run_id, record in records.items() if record is None]
    if missing:
        raise MissingResults(f"{stage_dir}: {len(missing)} of {len(runs)} runs have no result: {' '.join(missing)}")
    # The manifest's `steps` is the target; the record's is what was done (less if diverged).
    rows = [
        {**run.row(), **{k: records[run.id][k] for k in RESULT_COLUMNS}, "steps_done": records[run.id]["steps"]}
        for run in runs
    ]
    summary = pd.DataFrame(rows)
    curves = pd.concat(
        [pd.read_csv(run_dir(stage_dir, run.id) / "curve.csv").assign(id=run.id) for run in runs],
        ignore_index=True,
    )[["id", "step", "ema_loss"]]
    return summary, curves


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False)


def aggregate(stage_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary, curves = collect(stage_dir)
    write_csv(summary, stage_dir / "summary.csv")
    write_csv(curves, stage_dir / "curves.csv")
    return summary, curves
