"""Workers that claim runs through file locks, so any number can share one stage.

Runs that can share a batched model (one design, or on the superset path one
shape, with the same settings) form groups, sized and ordered by
rnnsweep.policy. A worker takes the locks of a group's pending runs without
waiting, keeps those it got, re-checks that each is still unfinished (another
worker may have finished it between the scan and the lock; rnnsweep.results),
trains them together and releases the locks. An OS-level lock
(`filelock.FileLock`, flock) dies with its process, so a run whose worker was
killed is simply claimed again. Workers that find every unfinished run locked
wait and re-scan instead of exiting, so a run abandoned by a dying worker is
still picked up by a live one.

On filesystems without flock (some network filesystems) the `soft` kind uses
a lock-file lease instead: a heartbeat thread refreshes it while the run
trains, and a lease left unrefreshed for `lease_s` seconds (its holder died,
on any host) may be taken over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLease, Timeout

from rnnsweep import data
from rnnsweep.fsutil import real_dirs
from rnnsweep.grid import ManifestError, Run, read_manifest
from rnnsweep.layout import TOKENIZER, TOKENS_META, lock_path, manifest_path, run_dir
from rnnsweep.progress import Heartbeat, ProgressBar
from rnnsweep.results import read_result, settle_result
from rnnsweep.tokens import fingerprints, text_of, texts_for

log = logging.getLogger(__name__)

LOCKS = ("filelock", "soft")


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how large a file is; None while it is missing (loading it then says which step writes it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def make_lock(stage_dir: Path, run_id: str, kind: str, lease_s: float | None = None) -> BaseFileLock:
    """The lock of a run: `filelock` (flock), or `soft`, a lease that may be taken over after `lease_s` unrefreshed."""
    path = lock_path(stage_dir, run_id)
    real_dirs(stage_dir, path.parent)
    if kind == "soft":
        if lease_s is None:
            raise ValueError("a soft lock needs its lease (lock_lease_s)")
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
    lease_s: float | None = None  # soft locks only: the profile's lock_lease_s
    poll_s: float = 2.0
    progress_s: float = 60.0  # seconds between progress lines in the log; `rnnsweep status` shows it live
    stop: threading.Event = field(default_factory=threading.Event)
    stopped_by: int | None = None  # the signal that set `stop`, if one did
    # One lock object per run, kept across scans: a soft lease is judged stale by
    # how long *this* object has watched it go unrefreshed.
    locks: dict[str, BaseFileLock] = field(default_factory=dict)
    texts: dict = field(default_factory=dict)  # (tokenizer, vocab_size) -> what its runs read (rnnsweep.tokens), set by run()
    fingerprints: dict[str, str] = field(default_factory=dict)  # run id -> what its result must carry
    inputs: tuple = ()  # _input_stamp() when run() started
    reads_tokens: bool = False  # whether any run reads BPE ids: then the token files are inputs too
    heartbeat: Heartbeat | None = None  # this process's status file while run() works

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

        runs = read_manifest(manifest_path(self.stage_dir))
        self.reads_tokens = any(run.tokenizer != "bytes" for run in runs)
        self.inputs = self._input_stamp()
        device = resolve_device(self.device)
        self.texts = texts_for(runs, self.data_dir)
        self.fingerprints = fingerprints(runs, self.texts)
        groups = policy.run_groups(runs, self.count, policy.device_kind(self.device))
        # Longest first; worker i starts at the i-th longest, so the workers begin on different groups.
        offset = self.index % len(groups) if groups else 0
        pending = groups[offset:] + groups[:offset]
        log.info("worker %d of %d (pid %d on %s): %s, %d runs in %d groups",
                 self.index, self.count, os.getpid(), socket.gethostname(), self.stage_dir.name, len(runs), len(groups))
        self.heartbeat = Heartbeat(self.stage_dir, self.index, self.count).start()
        try:
            return self._work(pending, len(runs), device)
        finally:
            self.heartbeat.close()

    def _work(self, pending: list[list[Run]], total: int, device) -> int:
        """Claim and train pending groups until none is left; return how many runs were trained here."""
        trained = 0
        while True:
            # Only the lock holder moves a run's files, so a run seen finished stays so: re-read the pending ones.
            pending = [[r for r in group if self._current_result(r) is None] for group in pending]
            pending = [group for group in pending if group]
            if not pending:
                log.info("worker %d: stage finished, %d runs trained here", self.index, trained)
                return trained
            claimed = self._claim_and_train(pending, total, device)
            trained += claimed
            if not claimed and self.stop.wait(self.poll_s):  # all pending runs are held by other workers
                log.info("worker %d: stopped while waiting", self.index)
                return trained

    def _input_stamp(self) -> tuple:
        """When and how large the manifest, the splits and (for BPE runs) the token files are: what this
        worker's fingerprints were made from."""
        files = [manifest_path(self.stage_dir), *(data.split_path(self.data_dir, split) for split in data.SPLITS)]
        if self.reads_tokens:
            files += [Path(self.data_dir) / TOKENIZER, Path(self.data_dir) / TOKENS_META]
        return tuple(_stamp(f) for f in files)

    def _check_inputs(self) -> None:
        """Refuse to act on a manifest or data that changed since this worker started (a worker left running
        from before an edit would otherwise set aside, one by one, the results the current settings need)."""
        if self._input_stamp() != self.inputs:
            raise ManifestError(
                f"{manifest_path(self.stage_dir)} or the splits in {self.data_dir} changed since this worker started; "
                "start it again to train the current settings"
            )

    def _current_result(self, run: Run) -> dict | None:
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

    def _claim_and_train(self, pending: list[list[Run]], total: int, device) -> int:
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
                self.heartbeat.claim([run.id for run in claimed], claimed[0].steps)

                def report(step: int, ema: float, steps_per_s: float) -> None:
                    bar.update(step, ema, steps_per_s)
                    self.heartbeat.update(step, ema, steps_per_s)

                dirs = [run_dir(self.stage_dir, run.id) for run in claimed]
                text = text_of(self.texts, first)
                try:
                    results = train_runs(
                        claimed, *text.splits, dirs, device, self.checkpoint_every, report, self.stop, text.data_id, text.vocab
                    )
                finally:
                    self.heartbeat.claim([], 0)
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
