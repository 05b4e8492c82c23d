"""Where a stage keeps its files; the one place that names them."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = "data"  # results/<study>/data/: the corpus splits beside the stages
RESULT = "result.json"  # written last, atomically: its presence marks a run finished
RESULT_FIELDS = (
    "id", "status", "min_loss", "final_loss", "valid_bpb", "params", "steps", "wall_s", "steps_per_s", "device", "precision", "seed",
    "engine", "fingerprint", "data",
)
CURVE = "curve.csv"
CURVE_COLUMNS = ("step", "ema_loss")  # a run's curve: the EMA loss every log_every steps
WEIGHTS = "weights.pt"
RUN_CONFIG = "config.json"
#: A finished run's files, moved together when the run's settings or data change.
FINISHED_FILES = (RESULT, CURVE, WEIGHTS, RUN_CONFIG)
SUPERSEDED = "superseded"  # runs/<id>/superseded/<fingerprint>/: results of the run under other settings or data
CHECKPOINT = "checkpoint.pt"
ATTEMPTS = "attempts.jsonl"  # one line per claim: who trained the run, from which step, when


def manifest_path(stage_dir: Path) -> Path:
    return stage_dir / "manifest.csv"


def run_dir(stage_dir: Path, run_id: str) -> Path:
    return stage_dir / "runs" / run_id


def lock_path(stage_dir: Path, run_id: str) -> Path:
    return stage_dir / "locks" / f"{run_id}.lock"
