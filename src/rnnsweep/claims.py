"""Workers that claim runs through file locks, so any number can share one stage.

A run is *finished* when its result record and curve parse and the record's
fingerprint is the one its manifest row and the data give (rnnsweep.provenance). Runs that
can share a batched model (one design, or on the superset path one shape, with the same
settings) form groups, sized and ordered by rnnsweep.policy. A worker takes the locks of a group's pending runs
without waiting, keeps those it got, re-checks that each is still unfinished
(another worker may have finished it between the scan and the lock), trains
them together and releases the locks. An OS-level lock (`filelock.FileLock`, flock) dies
with its process, so a run whose worker was killed is simply claimed again.
Workers that find every unfinished run locked wait and re-scan instead of
exiting, so a run abandoned by a dying worker is still picked up by a live one.

On filesystems without flock (some network filesystems) the `soft` kind uses
a lock-file lease instead: a heartbeat thread refreshes it while the run
trains, and a lease left unrefreshed for `lease_s` seconds (its holder died,
on any host) may be taken over.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLease, Timeout

from rnnsweep import data, provenance
from rnnsweep.grid import ManifestError, Run, read_manifest
from rnnsweep.fsutil import real_dirs
from rnnsweep.layout import (
    CURVE, CURVE_COLUMNS, FINISHED_FILES, RESULT, RESULT_FIELDS, SUPERSEDED, lock_path, manifest_path, run_dir,
)

log = logging.getLogger(__name__)

LOCKS = ("filelock", "soft")


#: Result fields and the types they must have; numbers may be NaN (a diverged run's losses).
_NUMBERS = ("min_loss", "final_loss", "valid_bpb", "wall_s", "steps_per_s")
_INTEGERS = ("params", "steps", "seed")
_TEXTS = ("id", "status", "device", "precision", "engine")
_HASHES = ("fingerprint", "data")  # also path components (superseded/<fingerprint>/): never anything but hex


def _problem(record: object, run_id: str) -> str | None:
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


def _load(folder: Path, run_id: str) -> tuple[dict | None, str | None]:
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
    problem = _problem(record, run_id) or _curve_problem(folder / CURVE)
    return (None, problem) if problem else (record, None)


def read_result(stage_dir: Path, run_id: str, fingerprint: str | None = None) -> dict | None:
    """The run's result record if the run is finished, usable and (with `fingerprint`) of these settings and data.

    This only reads: a damaged record, or one of other settings or data, is
    left where it is for `settle_result`, which moves files only while the
    run's lock is held.
    """
    record, _ = _load(run_dir(stage_dir, run_id), run_id)
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
    record, problem = _load(folder, run_id)
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
    restorable, _ = _load(kept, run_id)
    if restorable is None or restorable["fingerprint"] != fingerprint:
        return None
    _move_files(stage_dir, kept, folder, result_last=True)
    log.info("run %s: restored its result for these settings from %s", run_id, kept.relative_to(stage_dir))
    return read_result(stage_dir, run_id, fingerprint)


def make_lock(stage_dir: Path, run_id: str, kind: str, lease_s: float = 60.0) -> BaseFileLock:
    path = lock_path(stage_dir, run_id)
    real_dirs(stage_dir, path.parent)
    if kind == "soft":
        return SoftFileLease(path, lease_duration=lease_s)
    return FileLock(path)


@dataclass
class Worker:
    """One claiming loop over a stage's manifest."""

    stage_dir: Path
    data_dir: Path
    index: int = 0
    count: int = 1
    device: str = "auto"
    lock: str = "filelock"
    checkpoint_every: int = 0
    lease_s: float = 60.0
    poll_s: float = 2.0
    progress_s: float = 10.0
    stop: threading.Event = field(default_factory=threading.Event)
    stopped_by: int | None = None  # the signal that set `stop`, if one did
    # One lock object per run, kept across scans: a soft lease is judged stale by
    # how long *this* object has watched it go unrefreshed.
    locks: dict[str, BaseFileLock] = field(default_factory=dict)
    data_id: str = ""  # of the splits this worker trains on, set by run()
    fingerprints: dict[str, str] = field(default_factory=dict)  # run id -> what its result must carry
    inputs: tuple = ()  # _stamp() when run() started

    def stop_on_signals(self) -> None:
        """SIGTERM (scheduler preemption, time limit) and SIGINT (Ctrl-C) ask the worker to stop cleanly."""

        def request(signum: int, _frame: object) -> None:
            log.warning("worker %d: received %s, checkpointing and stopping", self.index, signal.Signals(signum).name)
            self.stopped_by = signum
            self.stop.set()

        signal.signal(signal.SIGTERM, request)
        signal.signal(signal.SIGINT, request)

    def run(self) -> int:
        """Train until every run of the stage is finished; return how many this worker trained.

        Raises train.Interrupted when `stop` is set during training (after checkpointing its runs).
        """
        from rnnsweep import policy  # torch loads only where training happens
        from rnnsweep.train import resolve_device

        self.inputs = self._stamp()
        runs = read_manifest(manifest_path(self.stage_dir))
        device = resolve_device(self.device)
        train = data.load_split(self.data_dir, "train")
        valid = data.load_split(self.data_dir, "valid")
        self.data_id = provenance.data_id(train, valid)
        self.fingerprints = {run.id: provenance.fingerprint(run, self.data_id) for run in runs}
        groups = policy.run_groups(runs, self.count, policy.device_kind(self.device))
        # Longest first; worker i starts at the i-th longest, so the workers begin on different groups.
        offset = self.index % len(groups) if groups else 0
        trained, pending = 0, groups[offset:] + groups[:offset]
        while True:
            # Only the lock holder moves a run's files, so a run seen finished stays so: re-read the pending ones.
            pending = [[r for r in group if self._result(r) is None] for group in pending]
            pending = [group for group in pending if group]
            if not pending:
                log.info("worker %d: stage finished, %d runs trained here", self.index, trained)
                return trained
            claimed = self._claim_group(pending, len(runs), train, valid, device)
            trained += claimed
            if not claimed and self.stop.wait(self.poll_s):  # all pending runs are held by other workers
                log.info("worker %d: stopped while waiting", self.index)
                return trained

    def _stamp(self) -> tuple:
        """When and how large the manifest and the two splits are: what this worker's fingerprints were made from."""
        files = [manifest_path(self.stage_dir), *(data.split_path(self.data_dir, split) for split in ("train", "valid"))]
        return tuple((st.st_mtime_ns, st.st_size) for st in (f.stat() for f in files))

    def _check_inputs(self) -> None:
        """Refuse to act on a manifest or data that changed since this worker started (a worker left running
        from before an edit would otherwise set aside, one by one, the results the current settings need)."""
        if self._stamp() != self.inputs:
            raise ManifestError(
                f"{manifest_path(self.stage_dir)} or the splits in {self.data_dir} changed since this worker started; "
                "start it again to train the current settings"
            )

    def _result(self, run: Run) -> dict | None:
        """The run's result for its current settings and data, without touching its files."""
        return read_result(self.stage_dir, run.id, self.fingerprints[run.id])

    def _try_lock(self, run: Run) -> bool:
        """Take the run's lock without waiting; False while another worker holds it."""
        if run.id not in self.locks:
            self.locks[run.id] = make_lock(self.stage_dir, run.id, self.lock, self.lease_s)
        try:
            self.locks[run.id].acquire(timeout=0)
        except Timeout:
            return False
        return True

    def _claim_group(self, pending: list[list[Run]], total: int, train, valid, device) -> int:
        """Claim and train the pending runs of the first group with any lock free; return how many were trained."""
        from rnnsweep.train import train_runs

        left = sum(len(group) for group in pending)
        for group in pending:
            if self.stop.is_set():
                return 0
            held: list[Run] = []
            try:
                for run in group:
                    if self._try_lock(run):
                        held.append(run)
                if held:
                    self._check_inputs()
                # Another worker may have finished some since the scan; results of other settings move aside.
                claimed = [run for run in held if settle_result(self.stage_dir, run.id, self.fingerprints[run.id]) is None]
                if not claimed:
                    continue
                done = total - left + len(claimed)
                first = claimed[0]
                what = first.config_id if first.engine == "design" else "{}x{} superset".format(*first.shape)
                label = f"{self.stage_dir.name} {done}/{total} {what} x{len(claimed)}"
                bar = ProgressBar(label, claimed[0].steps, self.progress_s)
                dirs = [run_dir(self.stage_dir, run.id) for run in claimed]
                results = train_runs(
                    claimed, train, valid, dirs, device, self.checkpoint_every, bar.update, self.stop, self.data_id
                )
                for result in results:
                    log.info(
                        "worker %d: %s %s min_loss %.4f (%.1f steps/s)",
                        self.index, result["id"], result["status"], result["min_loss"], result["steps_per_s"],
                    )
                return len(claimed)
            finally:
                for run in held:
                    self.locks[run.id].release()
        return 0


class ProgressBar:
    """A progress line for log files: printed every `interval_s` and at the end, never with \\r."""

    def __init__(self, label: str, total: int, interval_s: float) -> None:
        self.label, self.total, self.interval_s = label, total, interval_s
        self.last = 0.0

    def update(self, step: int, ema: float, steps_per_s: float) -> None:
        now = time.monotonic()
        if step < self.total and now - self.last < self.interval_s:
            return
        self.last = now
        filled = int(20 * step / self.total)
        eta = (self.total - step) / max(steps_per_s, 1e-9)
        print(
            f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] step {step}/{self.total} "
            f"ema {ema:.4f} {steps_per_s:.0f} steps/s ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )
