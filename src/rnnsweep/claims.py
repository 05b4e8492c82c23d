"""Workers that claim runs through file locks, so any number can share one stage.

A run is *finished* when its result record exists and parses. A worker takes
a run's lock without waiting, re-checks that the run is still unfinished
(another worker may have finished it between the scan and the lock), trains
it and releases the lock. An OS-level lock (`filelock.FileLock`, flock) dies
with its process, so a run whose worker was killed is simply claimed again.
Workers that find every unfinished run locked wait and re-scan instead of
exiting, so a run abandoned by a dying worker is still picked up by a live one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from rnnsweep import data
from rnnsweep.grid import Run, read_manifest
from rnnsweep.layout import RESULT, lock_path, manifest_path, run_dir

log = logging.getLogger(__name__)

LOCKS = {"filelock": FileLock, "soft": SoftFileLock}


def read_result(stage_dir: Path, run_id: str) -> dict | None:
    """The run's result record, or None if the run is unfinished.

    A record that does not parse is moved aside and reported: it can only
    come from outside interference (writes are atomic), and the run must be
    trained again rather than trusted.
    """
    path = run_dir(stage_dir, run_id) / RESULT
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("status") not in ("ok", "diverged"):
            raise ValueError("no valid status")
    except FileNotFoundError:
        return None
    except ValueError as err:
        aside = path.with_name(f"{RESULT}.corrupt-{time.time_ns()}")
        path.rename(aside)
        log.warning("result record %s is damaged (%s); moved to %s, the run will be trained again", path, err, aside.name)
        return None
    return record


def make_lock(stage_dir: Path, run_id: str, kind: str) -> BaseFileLock:
    return LOCKS[kind](lock_path(stage_dir, run_id))


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
    poll_s: float = 2.0
    progress_s: float = 10.0

    def run(self) -> int:
        """Train until every run of the stage is finished; return how many this worker trained."""
        from rnnsweep.train import resolve_device  # torch loads only where training happens

        runs = read_manifest(manifest_path(self.stage_dir))
        device = resolve_device(self.device)
        train = data.load_split(self.data_dir, "train")
        valid = data.load_split(self.data_dir, "valid")
        # Start each worker at its own slice of the manifest so they rarely contend.
        offset = self.index * len(runs) // max(self.count, 1)
        order = runs[offset:] + runs[:offset]
        trained, pending = 0, order
        while True:
            # A finished run stays finished, so only the still-pending ones are re-read.
            pending = [r for r in pending if read_result(self.stage_dir, r.id) is None]
            if not pending:
                log.info("worker %d: stage finished, %d runs trained here", self.index, trained)
                return trained
            if self._claim_one(pending, len(runs), train, valid, device):
                trained += 1
            else:
                time.sleep(self.poll_s)  # all pending runs are held by other workers

    def _claim_one(self, pending: list[Run], total: int, train, valid, device) -> bool:
        from rnnsweep.train import train_run

        for run in pending:
            lock = make_lock(self.stage_dir, run.id, self.lock)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                if read_result(self.stage_dir, run.id) is not None:
                    continue  # finished by another worker since the scan
                done = total - len(pending) + 1
                bar = ProgressBar(f"{self.stage_dir.name} {done}/{total} {run.id}", run.steps, self.progress_s)
                result = train_run(
                    run, train, valid, run_dir(self.stage_dir, run.id), device, self.checkpoint_every, bar.update
                )
                log.info(
                    "worker %d: %s %s min_loss %.4f (%.1f steps/s)",
                    self.index, run.id, result["status"], result["min_loss"], result["steps_per_s"],
                )
                return True
            finally:
                lock.release()
        return False


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
