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

A lock is held on the file that is at its path. A lock file removed or
replaced by hand would let a second worker lock a new file and train the same
run, so a holder that sees its file gone (`RunLock.intact`) checkpoints its
runs and claims them again through the new file, and a claimant that took a
lock trains nothing another live worker's heartbeat says it trains.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, SoftFileLease, Timeout

from rnnsweep import config, data
from rnnsweep.fsutil import real_dirs
from rnnsweep.grid import ManifestError, Run, read_manifest
from rnnsweep.layout import TOKENIZER, TOKENS_META, lock_path, manifest_path, run_dir
from rnnsweep.progress import Heartbeat, ProgressBar, trained_elsewhere
from rnnsweep.results import read_result, settle_result
from rnnsweep.tokens import fingerprints, text_of, texts_for

log = logging.getLogger(__name__)

LOCKS = config.choices("lock")


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how large a file is; None while it is missing (loading it then says which step writes it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class LockReplaced(Exception):
    """The file a lock was taken on is no longer the file at the lock's path."""


class RunLock:
    """A run's lock: `filelock` (flock on the file), or `soft` (a lease that may be taken over after `lease_s`
    unrefreshed); either knows whether the file it holds is still the one at its path."""

    def __init__(self, stage_dir: Path, run_id: str, kind: str, lease_s: float | None = None) -> None:
        self.path = lock_path(stage_dir, run_id)
        real_dirs(stage_dir, self.path.parent)
        self.lost = threading.Event()  # set by a soft lease's heartbeat when its marker went missing or changed
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file a flock is held on
        if kind == "soft":
            if lease_s is None:
                raise ValueError("a soft lock needs its lease (lock_lease_s)")
            self.lock = SoftFileLease(self.path, lease_duration=lease_s, on_compromise=lambda _: self.lost.set())
        else:
            self.lock = FileLock(self.path, on_acquired=self._pin)

    def _pin(self, fd: int) -> None:
        """On taking a flock: the file locked must be the one at the path (it may have been replaced meanwhile)."""
        held = os.fstat(fd)
        if _identity(self.path) != (held.st_dev, held.st_ino):
            raise LockReplaced(str(self.path))
        self.identity = (held.st_dev, held.st_ino)

    def acquire(self) -> bool:
        """Take the lock without waiting; False while another worker holds it."""
        self.lost.clear()
        try:
            self.lock.acquire(timeout=0)
        except (Timeout, LockReplaced):
            return False
        return True

    def release(self) -> None:
        self.lock.release()

    def intact(self) -> bool:
        """Whether the file this lock is held on is still at its path: no one removed or replaced it."""
        if self.lost.is_set():
            return False
        return self.identity is None or _identity(self.path) == self.identity


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


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
    thorough: bool = False  # also hash each finished run's weights (aggregation's check), not just their size
    stop: threading.Event = field(default_factory=threading.Event)
    stopped_by: int | None = None  # the signal that set `stop`, if one did
    # One lock object per run, kept across scans: a soft lease is judged stale by
    # how long *this* object has watched it go unrefreshed.
    locks: dict[str, RunLock] = field(default_factory=dict)
    texts: dict = field(default_factory=dict)  # (tokenizer, vocab_size) -> what its runs read (rnnsweep.tokens), set by run()
    fingerprints: dict[str, str] = field(default_factory=dict)  # run id -> what its result must carry
    inputs: tuple = ()  # _input_stamp() when run() started
    reads_tokens: bool = False  # whether any run reads BPE ids: then the token files are inputs too
    heartbeat: Heartbeat | None = None  # this process's status file while run() works
    halt: threading.Event = field(default_factory=threading.Event)  # stops the training in progress (`_train`)

    def stop_on_signals(self) -> None:
        """SIGTERM (scheduler preemption, time limit) and SIGINT (Ctrl-C) ask the worker to stop cleanly."""

        def request(signum: int, _frame: object) -> None:
            log.warning("worker %d: received %s, checkpointing and stopping", self.index, signal.Signals(signum).name)
            self.stopped_by = signum
            self.stop.set()
            self.halt.set()

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
        return read_result(self.stage_dir, run, self.fingerprints[run.id], self.thorough)

    def _try_lock(self, run: Run) -> bool:
        """Take the run's lock without waiting; False while another worker holds it."""
        if run.id not in self.locks:
            self.locks[run.id] = RunLock(self.stage_dir, run.id, self.lock, self.lease_s)
        return self.locks[run.id].acquire()

    def _free(self, held: list[Run]) -> list[Run]:
        """The runs of `held` that no other live worker trains: a lock taken only because its file was
        deleted under its holder is no licence to train the run a second time."""
        free = []
        for run in held:
            other = trained_elsewhere(self.stage_dir, run.id)
            if other is None:
                free.append(run)
            else:
                log.warning("worker %d: run %s is trained by %s, whose lock file was removed or replaced; "
                            "not training it twice", self.index, run.id, other)
        return free

    def _claim_and_train(self, pending: list[list[Run]], total: int, device) -> int:
        """Claim and train the pending runs of the first group with any lock free; return how many were trained."""
        left = sum(len(group) for group in pending)
        for group in pending:
            if self.stop.is_set():
                return 0
            held = [run for run in group if self._try_lock(run)]
            try:
                if held:
                    self._check_inputs()
                # Another worker may have finished some since the scan; results of other settings move aside.
                fingerprints = self.fingerprints
                claimed = [run for run in self._free(held) if settle_result(self.stage_dir, run, fingerprints[run.id], self.thorough) is None]
                if claimed:
                    return self._train(claimed, total - left + len(claimed), total, device)
            finally:
                for run in held:
                    self.locks[run.id].release()
        return 0

    def _train(self, claimed: list[Run], done: int, total: int, device) -> int:
        """Train runs whose locks are held; 0 if a lock file of theirs was removed or replaced meanwhile: then
        they are checkpointed and left unfinished, to be claimed again through the file now at the path."""
        from rnnsweep.train import Interrupted, train_runs

        first = claimed[0]
        what = first.config_id if first.engine == "design" else "{}x{} superset".format(*first.shape)
        bar = ProgressBar(f"{self.stage_dir.name} {done}/{total} {what} x{len(claimed)}", first.settings.steps, self.progress_s)
        self.halt = halt = threading.Event()  # set by a stop signal, or by a lock found not intact
        if self.stop.is_set():
            halt.set()

        def report(step: int, ema: float, steps_per_s: float) -> None:
            bar.update(step, ema, steps_per_s)
            self.heartbeat.update(step, ema, steps_per_s)
            if not all(self.locks[run.id].intact() for run in claimed):
                halt.set()

        self.heartbeat.claim([run.id for run in claimed], first.settings.steps)
        text = text_of(self.texts, first)
        dirs = [run_dir(self.stage_dir, run.id) for run in claimed]
        try:
            results = train_runs(claimed, text, dirs, device, self.checkpoint_every, report, halt)
        except Interrupted:
            if self.stop.is_set():
                raise
            log.warning("worker %d: a lock file of %s was removed or replaced while training; checkpointed, claiming again",
                        self.index, " ".join(run.id for run in claimed))
            return 0
        finally:
            self.heartbeat.claim([], 0)
        for result in results:
            log.info(
                "worker %d: %s %s min_loss %.4f (%.1f steps/s)",
                self.index, result["id"], result["status"], result["min_loss"], result["steps_per_s"],
            )
        return len(claimed)
