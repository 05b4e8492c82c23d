"""A run's finished files: the result record, its curve and weights; how they are checked, written and set aside.

A run is *finished* when its result record and curve parse, the record agrees
with them and with its manifest row (`_contradiction`), and the record's
fingerprint is the one its manifest row and the data give (rnnsweep.provenance).
A record is a summary of its curve and its training; one that says anything its
own curve, files or run contradict is damaged, however it came to be. The
record is written last and atomically, so its presence is what marks a run
finished. Only the holder of a run's lock moves its files (`settle_result`);
anyone may read them (`read_result`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from rnnsweep import provenance
from rnnsweep.data import file_sha256
from rnnsweep.grid import Run
from rnnsweep.plan import count_params
from rnnsweep.fsutil import atomic_open, atomic_write_json, real_dirs
from rnnsweep.layout import CURVE, CURVE_COLUMNS, FINISHED_FILES, RESULT, SUPERSEDED, WEIGHTS, run_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """A finished run's record, result.json: what it scored, what it cost and what made it (its fingerprint and
    the id of the bytes it read). Losses are NaN where a run diverged; the bytes and tokens are each held-out
    split's scored slice."""

    id: str
    status: str  # ok or diverged
    min_loss: float  # the curve's minimum
    final_loss: float  # its last point
    valid_bpb: float
    test_bpb: float
    valid_bytes: int
    test_bytes: int
    valid_tokens: int
    test_tokens: int
    params: int
    steps: int
    wall_s: float
    steps_per_s: float
    device: str
    precision: str
    seed: int
    engine: str
    fingerprint: str = field(metadata={"hash": True})  # also a path component (superseded/<fingerprint>/)
    data: str = field(metadata={"hash": True})


def _fields_of(kind: str, hashes: bool = False) -> tuple[str, ...]:
    return tuple(f.name for f in fields(Result) if f.type == kind and f.metadata.get("hash", False) == hashes)


#: A record's fields, and the types they must have (numbers may be NaN); hashes are hex and nothing else.
RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result))
_NUMBERS, _INTEGERS, _TEXTS = _fields_of("float"), _fields_of("int"), _fields_of("str")
_HASHES = _fields_of("str", hashes=True)
#: What a finished run's losses are: positive and finite when it finished ok, not a number when it diverged.
_LOSSES = ("min_loss", "final_loss", "valid_bpb", "test_bpb")
_HELD_OUT_LOSSES = ("final_loss", "valid_bpb", "test_bpb")  # a diverged run has none of these
#: The record's field that names its files: {name: {"bytes": size, "sha256": hash}} for the curve and the weights,
#: so that a file cut, edited or swapped after the record was written is seen.
FILES_FIELD = "files"
#: Files whose hash every reader checks (small); the weights' hash is checked by thorough reads (aggregation).
_ALWAYS_HASHED = (CURVE,)
#: A run's curve: (step, EMA loss) rows.
Curve = list[tuple[int, float]]


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


def _read_curve(path: Path) -> tuple[Curve | None, str | None]:
    """(the run's curve, None), or (None, what makes its curve.csv unreadable)."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
        if not rows or tuple(rows[0]) != CURVE_COLUMNS:
            return None, f"its curve {path.name} has no header {','.join(CURVE_COLUMNS)}"
        return [(int(step), float(ema)) for step, ema in rows[1:]], None
    except FileNotFoundError:
        return None, f"its curve {path.name} is missing"
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as err:
        return None, f"its curve {path.name} is damaged ({err})"


def _number_problem(record: dict) -> str | None:
    """A number out of its range: losses by status, counts below zero, times not finite."""
    ok = record["status"] == "ok"
    for key in _LOSSES if ok else ():
        if not (math.isfinite(record[key]) and record[key] > 0):
            return f"{key} is {record[key]!r}, not a positive finite number"
    for key in () if ok else _HELD_OUT_LOSSES:
        if not math.isnan(record[key]):
            return f"{key} is {record[key]!r}, but a diverged run has none"
    for key in ("wall_s", "steps_per_s", *_INTEGERS):
        if not (math.isfinite(record[key]) and record[key] >= 0):
            return f"{key} is {record[key]!r}, not a finite number of at least 0"
    for split in ("valid", "test") if ok else ():
        if not 0 < record[f"{split}_tokens"] <= record[f"{split}_bytes"]:
            return f"{split}_tokens {record[f'{split}_tokens']} and {split}_bytes {record[f'{split}_bytes']} are no scored slice"
    return None


def _curve_contradiction(record: dict, curve: Curve) -> str | None:
    """What the record says that its own curve contradicts: its minimum, its last step, finite points."""
    steps = [step for step, _ in curve]
    emas = [ema for _, ema in curve]
    if not all(math.isfinite(ema) for ema in emas):
        return "its curve has a point that is not a finite number (a run ends, diverged, before such a point)"
    if steps and (steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] > record["steps"]):
        return f"its curve's steps are not increasing within the {record['steps']} steps done"
    lowest = min(emas, default=float("nan"))
    if not (record["min_loss"] == lowest or (math.isnan(lowest) and math.isnan(record["min_loss"]))):
        return f"min_loss {record['min_loss']!r} is not the minimum of its curve ({lowest!r})"
    return None


def _run_contradiction(record: dict, curve: Curve, run: Run) -> str | None:
    """What the record says that its manifest row contradicts: steps, seed, settings, size, where the curve is logged."""
    for key in ("seed", "precision", "engine"):
        if record[key] != getattr(run, key):
            return f"{key} is {record[key]!r}, but the run's is {getattr(run, key)!r}"
    ok = record["status"] == "ok"
    if record["steps"] > run.settings.steps or (ok and record["steps"] != run.settings.steps):
        return f"steps is {record['steps']}, but an {record['status']} run of {run.settings.steps} steps {'does' if ok else 'does at most'} that many"
    if record["params"] != count_params(run.design, run.vocab_size):
        return f"params is {record['params']}, but the design has {count_params(run.design, run.vocab_size)}"
    logged = [step for step, _ in curve]
    if logged != list(range(run.settings.log_every, (record["steps"] if ok else record["steps"] - 1) + 1, run.settings.log_every)):
        return f"its curve is not logged every {run.settings.log_every} steps up to step {record['steps']}"
    if ok and curve and logged[-1] == record["steps"] and record["final_loss"] != curve[-1][1]:
        return f"final_loss {record['final_loss']!r} is not its curve's last point ({curve[-1][1]!r})"
    return None


def _files_problem(folder: Path, record: dict, thorough: bool) -> str | None:
    """Whether the files the record names are there as recorded: their sizes, and hashes of the curve (and,
    `thorough`, of the weights). A record written before records named their files: that its weights exist."""
    named = record.get(FILES_FIELD)
    if named is None:
        return None if (folder / WEIGHTS).is_file() else f"its weights {WEIGHTS} are missing"
    if not (isinstance(named, dict) and set(named) == {CURVE, WEIGHTS} and all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str) for v in named.values())):
        return f"{FILES_FIELD} is not a record of its {CURVE} and {WEIGHTS} (bytes and SHA-256 of each)"
    for name, expected in named.items():
        try:
            size = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"its {name} is missing"
        if size != expected["bytes"]:
            return f"its {name} has {size} bytes, not the {expected['bytes']} recorded"
        if (thorough or name in _ALWAYS_HASHED) and file_sha256(folder / name) != expected["sha256"]:
            return f"its {name} is not the one recorded (SHA-256 differs)"
    return None


def _contradiction(folder: Path, record: dict, run: Run | None, thorough: bool) -> str | None:
    """What makes a well-typed record disagree with what it summarises: itself, its curve, its run, its files."""
    curve, problem = _read_curve(folder / CURVE)
    if problem:
        return problem
    return (
        _number_problem(record)
        or _curve_contradiction(record, curve)
        or (run and _run_contradiction(record, curve, run))
        or _files_problem(folder, record, thorough)
    )


def _finished_record(
    folder: Path, run: Run | str, fingerprint: str | None = None, thorough: bool = False
) -> tuple[dict | None, str | None]:
    """(record, None) for a usable finished run in `folder`; (None, None) if unfinished; (None, why) if damaged.

    `run` is the manifest row a record of `fingerprint` (its settings and data) must agree with, or only its
    id where no row is at hand; a record of another fingerprint is checked against itself and its files
    alone, since it was made under other settings. `thorough` also hashes the weights file (aggregation
    does; a worker's scan compares its size).
    """
    run_id = run if isinstance(run, str) else run.id
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
    problem = _record_problem(record, run_id)
    if problem is None:
        row = None if isinstance(run, str) or record["fingerprint"] != fingerprint else run
        problem = _contradiction(folder, record, row, thorough)
    return (None, problem) if problem else (record, None)


def read_result(stage_dir: Path, run: Run | str, fingerprint: str | None = None, thorough: bool = False) -> dict | None:
    """The run's result record if the run is finished, usable and (with `fingerprint`) of these settings and data.

    This only reads: a damaged record, or one of other settings or data, is
    left where it is for `settle_result`, which moves files only while the
    run's lock is held.
    """
    run_id = run if isinstance(run, str) else run.id
    record, _ = _finished_record(run_dir(stage_dir, run_id), run, fingerprint, thorough)
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


def settle_result(stage_dir: Path, run: Run | str, fingerprint: str, thorough: bool = False) -> dict | None:
    """Under the run's lock: the run's usable result for `fingerprint`, after clearing away any other.

    * A damaged record (one that does not parse, or that its curve, its
      files or its manifest row contradict) is renamed
      result.json.corrupt-<ns>, kept for inspection, and reported with the
      field at fault.
    * A finished result of another fingerprint moves, with its curve, weights
      and config, to runs/<id>/superseded/<its fingerprint>/: nothing finished
      is lost.
    * If a result with the wanted fingerprint waits there (the settings were
      changed back), it is put back in place and used.
    """
    run_id = run if isinstance(run, str) else run.id
    folder = run_dir(stage_dir, run_id)
    record, problem = _finished_record(folder, run, fingerprint, thorough)
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
    restorable, _ = _finished_record(kept, run, fingerprint, thorough)
    if restorable is None or restorable["fingerprint"] != fingerprint:
        return None
    _move_files(stage_dir, kept, folder, result_last=True)
    log.info("run %s: restored its result for these settings from %s", run_id, kept.relative_to(stage_dir))
    return read_result(stage_dir, run, fingerprint, thorough)


def write_finished(folder: Path, record: dict, curve: Curve, weights: dict[str, torch.Tensor]) -> None:
    """Write a run's curve, weights and, last and atomically, its result record, which names their sizes and hashes."""
    import torch  # only the training process writes weights; readers of results start without it
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    writer.writerows((step, repr(ema)) for step, ema in curve)
    blob = io.BytesIO()
    torch.save(weights, blob)
    files = {CURVE: buf.getvalue().encode(), WEIGHTS: blob.getvalue()}
    for name, data in files.items():
        with atomic_open(folder / name, "wb") as handle:
            handle.write(data)
    record[FILES_FIELD] = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}
    atomic_write_json(folder / RESULT, record)


def finished_record(folder: Path) -> dict:
    """The result record of the finished run in `folder`, its weights' hash checked; ValueError saying why not."""
    record, problem = _finished_record(Path(folder), Path(folder).name, thorough=True)
    if record is None:
        raise ValueError(problem or f"it has no {RESULT}: the run has not finished")
    return record
