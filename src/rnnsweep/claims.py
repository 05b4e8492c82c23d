"""Workers that claim runs through file locks, so any number can share one stage.

A run is *finished* when its result record exists and parses. Runs of one
design with the same settings (stage 3's replicates) form a group that trains
as one batched model. A worker takes the locks of a group's pending runs
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

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLease, Timeout

from rnnsweep import data
from rnnsweep.grid import Run, read_manifest
from rnnsweep.layout import RESULT, RESULT_FIELDS, lock_path, manifest_path, run_dir

log = logging.getLogger(__name__)

LOCKS = ("filelock", "soft")


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
        missing = [k for k in RESULT_FIELDS if k not in record]
        if missing or record["id"] != run_id:
            raise ValueError(f"missing fields {missing}" if missing else f"it belongs to run {record['id']}")
    except FileNotFoundError:
        return None
    except ValueError as err:
        aside = path.with_name(f"{RESULT}.corrupt-{time.time_ns()}")
        try:
            path.rename(aside)
        except FileNotFoundError:
            return None  # another worker's scan moved it aside first
        log.warning("result record %s is damaged (%s); moved to %s, the run will be trained again", path, err, aside.name)
        return None
    return record


def make_lock(stage_dir: Path, run_id: str, kind: str, lease_s: float = 60.0) -> BaseFileLock:
    path = lock_path(stage_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    precision: str = "fp32"
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
        from rnnsweep.train import resolve_device  # torch loads only where training happens

        runs = read_manifest(manifest_path(self.stage_dir))
        device = resolve_device(self.device)
        train = data.load_split(self.data_dir, "train")
        valid = data.load_split(self.data_dir, "valid")
        groups = _groups(runs)
        # Start each worker at its own slice of the groups so they rarely contend.
        offset = self.index * len(groups) // max(self.count, 1)
        trained, pending = 0, groups[offset:] + groups[:offset]
        while True:
            # A finished run stays finished, so only the still-pending ones are re-read.
            pending = [[r for r in group if read_result(self.stage_dir, r.id) is None] for group in pending]
            pending = [group for group in pending if group]
            if not pending:
                log.info("worker %d: stage finished, %d runs trained here", self.index, trained)
                return trained
            claimed = self._claim_group(pending, len(runs), train, valid, device)
            trained += claimed
            if not claimed and self.stop.wait(self.poll_s):  # all pending runs are held by other workers
                log.info("worker %d: stopped while waiting", self.index)
                return trained

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
                # Another worker may have finished some since the scan.
                claimed = [run for run in held if read_result(self.stage_dir, run.id) is None]
                if not claimed:
                    continue
                done = total - left + len(claimed)
                label = f"{self.stage_dir.name} {done}/{total} {claimed[0].config_id} x{len(claimed)}"
                bar = ProgressBar(label, claimed[0].steps, self.progress_s)
                dirs = [run_dir(self.stage_dir, run.id) for run in claimed]
                results = train_runs(
                    claimed, train, valid, dirs, device, self.checkpoint_every, bar.update, self.stop, self.precision
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


def _groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that can train as one batched model: one design, the same settings; in manifest order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.batch_key, []).append(run)
    return list(groups.values())


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
