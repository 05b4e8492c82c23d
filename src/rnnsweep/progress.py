"""What a worker is doing, for people: a progress line in its log and a heartbeat file that `rnnsweep status` reads.

The log line is for someone reading one worker's log; it is printed rarely, so
that a log stays a short list of claims, results and errors. The heartbeat is
for the whole stage: each worker process keeps one small JSON file in
`<stage>/progress/` (named by host and pid, so workers on any number of
machines never share one), rewritten every `HEARTBEAT_S` seconds by a thread
while the process lives. It says which runs the worker trains, at which step
and how fast. A clean exit removes it; a file not rewritten for `STALE_S`
seconds belongs to a worker that died, and its runs will be claimed again.
Nothing here takes or inspects a lock; claims.py asks `trained_elsewhere` before it trains a run whose
lock it took, so that a lock file deleted under a live holder never lets a second worker in.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from rnnsweep.fsutil import atomic_write_json, real_dirs
from rnnsweep.layout import progress_dir

HEARTBEAT_S = 10.0  # seconds between rewrites of a live worker's heartbeat
STALE_S = 60.0  # a heartbeat older than this belongs to a worker that is gone


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


class Heartbeat:
    """A worker's heartbeat file, kept fresh by a thread between `start()` and `close()`."""

    def __init__(self, stage_dir: Path, worker: int, count: int, every_s: float = HEARTBEAT_S) -> None:
        self.stage_dir, self.every_s = Path(stage_dir), every_s
        self.path = progress_dir(self.stage_dir) / f"{socket.gethostname()}-{os.getpid()}.json"
        self.state: dict[str, object] = {
            "host": socket.gethostname(), "pid": os.getpid(), "worker": worker, "count": count,
            "started": time.time(), "runs": [], "steps": 0, "step": 0, "since": None, "steps_per_s": 0.0, "ema": None,
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        real_dirs(self.stage_dir, self.path.parent)
        self._write()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop beating and remove the file: this worker holds nothing any more."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.path.unlink(missing_ok=True)

    def claim(self, run_ids: list[str], steps: int, step: int = 0) -> None:
        """The worker now trains `run_ids` (none: it waits or scans), to `steps` steps, from `step`."""
        with self._lock:
            self.state.update(runs=list(run_ids), steps=steps, step=step, since=time.time() if run_ids else None,
                              steps_per_s=0.0, ema=None)
        self._write()

    def update(self, step: int, ema: float, steps_per_s: float) -> None:
        """The training loop's report (rnnsweep.train.Reporter): written by the next beat, not now."""
        with self._lock:
            self.state.update(step=step, ema=ema, steps_per_s=steps_per_s)

    def _write(self) -> None:
        with self._lock:
            state = {**self.state, "updated": time.time()}
        atomic_write_json(self.path, state)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._write()
            except OSError:  # a full or vanished disk must not kill training; the next beat tries again
                pass


def read_heartbeats(stage_dir: Path) -> list[dict]:
    """The heartbeat files of a stage; one being replaced or half-written is skipped until the next look."""
    beats = []
    for path in sorted(progress_dir(stage_dir).glob("*.json")):
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(beat, dict) and isinstance(beat.get("runs"), list):
            beats.append(beat)
    return beats


def _alive(beat: dict, now: float) -> bool:
    """A worker is alive while its heartbeat is fresh and, on this host, while its pid is (a killed worker's runs are
    free at once; a pid reused by another process holds nothing once the heartbeat has gone stale)."""
    if now - float(beat.get("updated") or 0) > STALE_S:
        return False
    if beat.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(beat.get("pid") or 0), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True  # a process of another user, or a pid this system cannot name: assume it lives
    return True


def trained_elsewhere(stage_dir: Path, run_id: str) -> str | None:
    """`host:pid` of another live worker whose heartbeat says it trains `run_id`, or None."""
    me, now = (socket.gethostname(), os.getpid()), time.time()
    for beat in read_heartbeats(stage_dir):
        if run_id in beat["runs"] and (beat.get("host"), beat.get("pid")) != me and _alive(beat, now):
            return f"{beat.get('host')}:{beat.get('pid')}"
    return None
