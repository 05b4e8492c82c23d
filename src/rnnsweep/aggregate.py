"""Collect a stage's finished runs into its summary and curves tables, and read those tables back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rnnsweep.tokens import fingerprints, texts_for
from rnnsweep.results import RESULT_FIELDS, read_result
from rnnsweep.fsutil import atomic_open
from rnnsweep import config
from rnnsweep.grid import OPTIONAL_COLUMNS, ManifestError, columns, read_manifest
from rnnsweep.layout import CURVE, CURVE_COLUMNS, curves_path, manifest_path, run_dir, summary_path

#: The share of a curve's last logged points that `tail_loss` averages (at least one point).
TAIL_FRACTION = 0.1


def tail_loss(emas: Sequence[float]) -> float:
    """Mean of the last TAIL_FRACTION of a curve's points (NaN for an empty curve): a run's late training loss,
    less noisy than one point and not biased low as the curve's minimum is."""
    if not len(emas):
        return math.nan
    return float(np.mean(np.asarray(emas, dtype=float)[-max(1, math.ceil(TAIL_FRACTION * len(emas))):]))


# The record's fields that the manifest row does not already hold (its `steps` becomes `steps_done`).
RESULT_COLUMNS = tuple(k for k in RESULT_FIELDS if k not in ("id", "seed", "steps"))


class MissingResults(RuntimeError):
    """Some runs of the manifest have no valid result for its settings and data; aggregating now would drop them."""

    def __init__(self, stage_dir: Path, missing: list[str], total: int) -> None:
        super().__init__(
            f"{stage_dir}: {len(missing)} of {total} runs have no valid result for these settings and data: "
            + " ".join(missing)
        )
        self.missing = missing


class SummaryError(ValueError):
    """A summary or curves table that is not what `aggregate` writes; the message names the file."""


#: Columns of the long-form curves table.
CURVES_COLUMNS = ("id", *CURVE_COLUMNS)


def summary_columns() -> tuple[str, ...]:
    """Columns every reader of a summary relies on: the manifest's, and what each run scored."""
    return (*columns(), "status", "min_loss", "valid_bpb", "test_bpb")


def read_summary(path: Path, curves: bool = False) -> pd.DataFrame:
    """A stage's summary table (or, with `curves`, its curves table), refused unless it has rows, its columns and numbers."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise SummaryError(f"{path} is empty; rerun the stage's aggregation") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SummaryError(f"{path} is not a valid CSV table ({err})") from None
    needed, numeric = (CURVES_COLUMNS, CURVE_COLUMNS) if curves else (summary_columns(), ("min_loss", "valid_bpb", "test_bpb"))
    if not curves:  # a table written before these columns existed: read as its runs were made
        absent = {**{c: int(v) if v.isdigit() else v for c, v in OPTIONAL_COLUMNS.items()}, **config.training_defaults()}
        for column, value in absent.items():
            if column not in frame.columns:
                frame[column] = value
        for split in ("valid", "test"):  # as result records of then: a byte run predicts a token per byte
            if f"{split}_tokens" not in frame.columns and f"{split}_bytes" in frame.columns:
                frame[f"{split}_tokens"] = frame[f"{split}_bytes"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SummaryError(f"{path} lacks the columns {', '.join(missing)}; rerun the stage's aggregation")
    if frame.empty:
        raise SummaryError(f"{path} has no rows; rerun the stage's aggregation")
    wrong = [c for c in numeric if not pd.api.types.is_numeric_dtype(frame[c])]
    if wrong:
        raise SummaryError(f"{path}: column {', '.join(wrong)} is not numeric")
    return frame


def collect(stage_dir: Path, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, curves) of a stage, in manifest order; refuses if any run lacks a valid result.

    Valid means what results.read_result checks, thoroughly: record and curve parse and
    agree with each other, with the manifest row and with the weights file (its hash), and the
    record's fingerprint is the one the manifest row and the data's splits give now.
    """
    runs = read_manifest(manifest_path(stage_dir))
    if not runs:
        raise ManifestError(f"{manifest_path(stage_dir)} lists no runs")
    prints = fingerprints(runs, texts_for(runs, data_dir))
    records = {run.id: read_result(stage_dir, run, prints[run.id], thorough=True) for run in runs}
    missing = [run.id for run in runs if records[run.id] is None]
    if missing:
        raise MissingResults(stage_dir, missing, len(runs))
    curves = {run.id: pd.read_csv(run_dir(stage_dir, run.id) / CURVE) for run in runs}
    # The manifest's `steps` is the target; the record's is what was done (less if diverged).
    rows = [
        {**run.row(), **{k: records[run.id][k] for k in RESULT_COLUMNS}, "steps_done": records[run.id]["steps"],
         "tail_loss": tail_loss(curves[run.id][CURVE_COLUMNS[1]].to_numpy())}
        for run in runs
    ]
    long = pd.concat([curves[run.id].assign(id=run.id) for run in runs], ignore_index=True)
    return pd.DataFrame(rows), long[list(CURVES_COLUMNS)]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table atomically: a reader never sees half of it."""
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False)


def aggregate(
    stage_dir: Path, data_dir: Path, summary_out: Path | None = None, curves_out: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write a stage's summary and curves tables (by default beside its manifest); return them."""
    summary, curves = collect(stage_dir, data_dir)
    write_csv(summary, summary_out or summary_path(stage_dir))
    write_csv(curves, curves_out or curves_path(stage_dir))
    return summary, curves
