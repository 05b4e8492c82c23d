"""A run's finished files: the result record, its curve and weights; how they are checked, written and set aside.

A run is *finished* when its result record and curve parse and the record's
fingerprint is the one its manifest row and the data give (rnnsweep.provenance).
The record is written last and atomically, so its presence is what marks a run
finished. Only the holder of a run's lock moves its files (`settle_result`);
anyone may read them (`read_result`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import torch

from rnnsweep import provenance
from rnnsweep.fsutil import atomic_open, atomic_write_json, atomic_write_text, real_dirs
from rnnsweep.layout import CURVE, CURVE_COLUMNS, FINISHED_FILES, RESULT, RESULT_FIELDS, SUPERSEDED, WEIGHTS, run_dir

log = logging.getLogger(__name__)

#: Result fields and the types they must have; numbers may be NaN (a diverged run's losses).
_NUMBERS = ("min_loss", "final_loss", "valid_bpb", "test_bpb", "wall_s", "steps_per_s")
_INTEGERS = ("params", "steps", "seed", "valid_bytes", "test_bytes", "valid_tokens", "test_tokens")
_TEXTS = ("id", "status", "device", "precision", "engine")
_HASHES = ("fingerprint", "data")  # also path components (superseded/<fingerprint>/): never anything but hex


def _record_problem(record: object, run_id: str) -> str | None:
    """What makes `record` not a complete result of run `run_id`, or None."""
    if not isinstance(record, dict) or record.get("status") not in ("ok", "diverged"):
        return "no valid status"
    missing = [k for k in RESULT_FIELDS if k not in record]
    if missing:
        return f"missing fields {missing}"
    wrong = [k for k in _NUMBERS if isinstance(record[k], bool) or not isinstance(record[k], (int, float))]
    wrong += [k for k in _INTEGERS if isinstance(record[k], bool) or not isinstance(record[k], int)]
    wrong += [k for k in _TEXTS if not isinstance(record[k], str)]
    wrong += [k for k in _HASHES if not (isinstance(record[k], str) and provenance.HASH.fullmatch(record[k]))]
    if wrong:
        return f"fields of the wrong type: {', '.join(wrong)}"
    if record["id"] != run_id:
        return f"it belongs to run {record['id']}"
    return None


def _curve_problem(path: Path) -> str | None:
    """What makes a run's curve.csv unreadable, or None."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
        if not rows or tuple(rows[0]) != CURVE_COLUMNS:
            return f"its curve {path.name} has no header {','.join(CURVE_COLUMNS)}"
        for step, ema in rows[1:]:
            int(step), float(ema)
    except FileNotFoundError:
        return f"its curve {path.name} is missing"
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as err:
        return f"its curve {path.name} is damaged ({err})"
    return None


def _finished_record(folder: Path, run_id: str) -> tuple[dict | None, str | None]:
    """(record, None) for a usable finished run in `folder`; (None, None) if unfinished; (None, why) if damaged."""
    path = folder / RESULT
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as err:
        return None, f"it does not parse ({err})"
    if isinstance(record, dict):
        record.setdefault("engine", "design")  # written before paths existed: the design path trained it
        for split in ("valid", "test"):  # written before tokenizers existed: a byte run predicts one token per byte
            if f"{split}_bytes" in record:
                record.setdefault(f"{split}_tokens", record[f"{split}_bytes"])
    problem = _record_problem(record, run_id) or _curve_problem(folder / CURVE)
    return (None, problem) if problem else (record, None)


def read_result(stage_dir: Path, run_id: str, fingerprint: str | None = None) -> dict | None:
    """The run's result record if the run is finished, usable and (with `fingerprint`) of these settings and data.

    This only reads: a damaged record, or one of other settings or data, is
    left where it is for `settle_result`, which moves files only while the
    run's lock is held.
    """
    record, _ = _finished_record(run_dir(stage_dir, run_id), run_id)
    if record is None or (fingerprint is not None and record["fingerprint"] != fingerprint):
        return None
    return record


def _move_files(stage_dir: Path, source: Path, target: Path, result_last: bool) -> None:
    """Move a finished run's files; the result record first when taking them away, last when putting them in place."""
    real_dirs(stage_dir, target)
    order = FINISHED_FILES[1:] + FINISHED_FILES[:1] if result_last else FINISHED_FILES
    for name in order:
        try:
            (source / name).replace(target / name)
        except FileNotFoundError:
            pass


def settle_result(stage_dir: Path, run_id: str, fingerprint: str) -> dict | None:
    """Under the run's lock: the run's usable result for `fingerprint`, after clearing away any other.

    * A damaged record (or one whose curve is damaged) is renamed
      result.json.corrupt-<ns>, kept for inspection, and reported.
    * A finished result of another fingerprint moves, with its curve, weights
      and config, to runs/<id>/superseded/<its fingerprint>/: nothing finished
      is lost.
    * If a result with the wanted fingerprint waits there (the settings were
      changed back), it is put back in place and used.
    """
    folder = run_dir(stage_dir, run_id)
    record, problem = _finished_record(folder, run_id)
    if problem is not None and (folder / RESULT).exists():
        aside = folder / f"{RESULT}.corrupt-{time.time_ns()}"
        (folder / RESULT).replace(aside)
        log.warning("result record %s is damaged (%s); moved to %s, the run will be trained again", folder / RESULT, problem, aside.name)
    if record is not None and record["fingerprint"] == fingerprint:
        return record
    if record is not None:
        aside = folder / SUPERSEDED / record["fingerprint"]
        _move_files(stage_dir, folder, aside, result_last=False)
        log.warning(
            "result of run %s was made with other settings or data (fingerprint %s, expected %s); moved to %s, "
            "the run will be trained again", run_id, record["fingerprint"], fingerprint, aside.relative_to(stage_dir),
        )
    kept = folder / SUPERSEDED / fingerprint
    restorable, _ = _finished_record(kept, run_id)
    if restorable is None or restorable["fingerprint"] != fingerprint:
        return None
    _move_files(stage_dir, kept, folder, result_last=True)
    log.info("run %s: restored its result for these settings from %s", run_id, kept.relative_to(stage_dir))
    return read_result(stage_dir, run_id, fingerprint)


def write_finished(folder: Path, record: dict, curve: list[tuple[int, float]], weights: dict[str, torch.Tensor]) -> None:
    """Write a run's curve, weights and, last and atomically, its result record."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    writer.writerows((step, repr(ema)) for step, ema in curve)
    atomic_write_text(folder / CURVE, buf.getvalue())
    with atomic_open(folder / WEIGHTS, "wb") as handle:
        torch.save(weights, handle)
    atomic_write_json(folder / RESULT, record)
