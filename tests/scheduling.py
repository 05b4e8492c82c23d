"""Harness for tests that drive real `rnnsweep worker` processes and interrupt them (tests/test_interrupts.py).

Starting, waiting for and killing worker processes; watching the files a run leaves (checkpoint steps,
attempts, locks); comparing a run's files with another's; and the bookkeeping that starts only the
background scenarios the selected tests need. Failures name what was awaited and end with the worker's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from filelock import Timeout

from conftest import worker_args
from rnnsweep.layout import ATTEMPTS

#: One thread per worker process, and its output unbuffered so the log is current when a test reads it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# --------------------------------------------------------------------------- worker processes


def start_worker(results: Path, data_dir: Path, log: Path, **overrides: object) -> subprocess.Popen:
    """A real worker process on the stage1 of `results`, the tests' profile with `overrides`; output to `log`."""
    args = worker_args(results / "stage1", data_dir, **overrides)
    cmd = [sys.executable, "-m", "rnnsweep", *args]
    with log.open("a") as fh:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=ENV, cwd=results.parent
        )


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` unless it has already exited, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def finish(proc: subprocess.Popen, log: Path, timeout: float = 90) -> int:
    """The exit code of `proc`; fails the test (killing it) if it runs past `timeout` seconds."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"worker still running after {timeout}s:\n{log.read_text()[-3000:]}")


def run_to_end(proc: subprocess.Popen, log: Path) -> None:
    """Wait for the worker `proc` and require that it exited 0."""
    code = finish(proc, log)
    assert code == 0, log.read_text()[-3000:]


# --------------------------------------------------------------------------- watching a run's files


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Block until `path` exists while `proc` keeps running."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) before {path.name} appeared:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"no {path.name} after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def wait_for_checkpoint_step(
    path: Path, target: int, proc: subprocess.Popen, log: Path, timeout: float = 60
) -> tuple[int, float]:
    """Block until the checkpoint at `path` reaches `target` steps; return its step and seconds since the one before."""
    deadline = time.monotonic() + timeout
    seen_key, seen_at, gap = None, None, None
    while True:
        try:
            key = path.stat().st_ino, path.stat().st_mtime_ns  # each checkpoint is a new file renamed over the old
        except FileNotFoundError:
            key = None
        if key is not None and key != seen_key:
            now = time.monotonic()
            gap = now - seen_at if seen_at is not None else None
            seen_key, seen_at = key, now
            step = checkpoint_step(path) or 0
            if step >= target and gap is not None:
                return step, gap
        if proc.poll() is not None:
            text = log.read_text()[-3000:]
            pytest.fail(f"worker exited ({proc.returncode}) before step {target} was checkpointed:\n{text}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"no checkpoint of step {target} after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at `path`, or None if there is none."""
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def start_steps(rdir: Path) -> list[int]:
    """The step each claim of the run started from, in order."""
    return [json.loads(line)["start_step"] for line in (rdir / ATTEMPTS).read_text().splitlines()]


def can_take(lock) -> bool:
    """Whether `lock` (a FileLock or SoftFileLease) can be acquired at once; it is released again."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def assert_same_run(got: Path, want: Path) -> None:
    """Curve and weights bit for bit."""
    assert (got / "curve.csv").read_bytes() == (want / "curve.csv").read_bytes()
    a = torch.load(got / "weights.pt", map_location="cpu", weights_only=True)
    b = torch.load(want / "weights.pt", map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the undisturbed run: {different}"


# --------------------------------------------------------------------------- scenarios in the background


class Countdown:
    """`event` is set once `n` parties have each said done (at most once each; a party that fails says it too)."""

    def __init__(self, n: int) -> None:
        self.left, self.event, self._lock = n, threading.Event(), threading.Lock()
        if n <= 0:
            self.event.set()

    def party(self):
        """A new party's `done`: call it once that party is done (later calls change nothing)."""
        said = threading.Event()

        def done() -> None:
            with self._lock:
                if not said.is_set():
                    said.set()
                    self.left -= 1
                    if self.left <= 0:
                        self.event.set()

        return done


def uses(key: str):
    """Mark a test as checking scenario `key` ("sigkill" tests add their seed), so only needed ones are started."""

    def mark(test):
        test.scenario = key
        return test

    return mark


def wanted_scenarios(request: pytest.FixtureRequest) -> set[str]:
    """The scenarios the selected tests of the requesting module need (all of them unless -k deselected some)."""
    keys = set()
    for item in request.session.items:
        key = getattr(getattr(item, "function", None), "scenario", None)
        if item.module is request.module and key is not None:
            seed = getattr(item, "callspec", None) and item.callspec.params.get("seed")
            keys.add(f"{key}-{seed}" if seed is not None else key)
    return keys
