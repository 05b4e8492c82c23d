"""Shared fixtures and helpers: a small generated corpus, a single torch thread, real worker and lease-holder processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rnnsweep.data import SPLITS, load_split, prepare_corpus
from rnnsweep.layout import manifest_path

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CUDA tests run where a CUDA device is present and are skipped elsewhere, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device here; benchmarks/gpu.sh runs these on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/valid/test splits of a 20 kB generated corpus, made once per session."""
    root = tmp_path_factory.mktemp("corpus")
    prepare_corpus("generated", root / "data", cache_dir=root / "cache", generated_bytes=20_000, seed=0)
    return root / "data"


@pytest.fixture(scope="session")
def splits(data_dir: Path):
    return tuple(load_split(data_dir, split) for split in SPLITS)


@pytest.fixture
def one_thread():
    """Bitwise reproducibility needs a fixed thread count; restore the old one afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHECKOUT = ("Snakefile", "workflow", "configs", "profiles", "envs", "src")


@pytest.fixture(scope="session")
def copy_checkout():
    """Copy what a clone holds (workflow, configs, profiles, package) into a folder, as a user's checkout."""
    root = Path(__file__).resolve().parents[1]

    def copy(dest: Path) -> Path:
        for name in CHECKOUT:
            source = root / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
        return dest

    return copy


def worker_profile(**overrides: object) -> dict:
    """The smoke profile as the tests' workers train: on the CPU, one thread, no checkpoints unless asked.

    `overrides` are set after validation, so a test may use a value the schema keeps users from,
    such as a lease of 2 s that lets a takeover happen within the test.
    """
    from rnnsweep import config  # here, not at the top: the CUDA tests load this file with little more than PyTorch

    tests = {"device": "cpu", "threads_per_worker": 1, "checkpoint_every": 0}
    return {**config.load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml", overrides=tests), **overrides}


def worker_args(stage_dir: Path, data_dir: Path, index: int = 0, count: int = 1, **overrides: object) -> list[str]:
    """The arguments of `rnnsweep worker` on a stage folder with the tests' profile (and `overrides`)."""
    from rnnsweep.cli import worker_args

    return worker_args(manifest_path(stage_dir), data_dir, worker_profile(**overrides), index, count)


def run_worker_processes(stage_dir: Path, data_dir: Path, count: int, logs_dir: Path) -> tuple[list[int], list[str]]:
    """Run `count` real `rnnsweep worker` processes on one stage; return their exit codes and stderr texts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, logs = [], [logs_dir / f"worker{i}.err" for i in range(count)]
    for i, log in enumerate(logs):
        cmd = [sys.executable, "-m", "rnnsweep", *worker_args(stage_dir, data_dir, i, count)]
        with log.open("w") as fh:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env, cwd=logs_dir))
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, [log.read_text() for log in logs]


#: A process that takes a soft lease through filelock's public API and holds it until killed.
LEASE_HOLDER = """
import sys, time
from filelock import SoftFileLease
lease = SoftFileLease(sys.argv[1], lease_duration=float(sys.argv[2]))
lease.acquire(timeout=0)
print("held", flush=True)
time.sleep(300)
"""


def start_lease_holder(path: Path, lease_s: float, host: str | None = None) -> subprocess.Popen:
    """A live holder of the soft lease at `path`; with `host`, one that runs as if on another machine.

    The other machine is a UTS namespace of its own (`unshare`) whose host name is `host`: the lease
    it writes names that host, so no process here can probe its pid, exactly as for a worker on
    another node of a cluster.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", LEASE_HOLDER, str(path), str(lease_s)]
    if host is not None:
        cmd = ["unshare", "--map-root-user", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    if line.strip() != "held":
        proc.kill()
        proc.wait()
        pytest.fail(f"lease holder did not acquire {path}: {line!r} {proc.stderr.read()[-2000:]}")
    assert path.exists()
    return proc


def fake_result(
    folder: Path, run_id: str, n_steps: int = 20, log_every: int = 5, curve: list | None = None, **changes: object
) -> dict:
    """A finished run's files that agree with each other (curve, weights, record), with `changes` to the record.

    For tests of what reads results: a record made this way is accepted unless a change contradicts it.
    """
    import hashlib
    import json

    from rnnsweep.results import FILES_FIELD, RESULT_FIELDS

    folder.mkdir(parents=True, exist_ok=True)
    curve = curve or [(step, 3.0 - step / 100) for step in range(log_every, n_steps + 1, log_every)]
    files = {"curve.csv": ("step,ema_loss\n" + "".join(f"{s},{e!r}\n" for s, e in curve)).encode(),
             "weights.pt": b"weights of " + run_id.encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    record = {key: 0 for key in RESULT_FIELDS} | {
        "id": run_id, "status": "ok", "min_loss": min(e for _, e in curve), "final_loss": curve[-1][1],
        "valid_bpb": 3.5, "test_bpb": 3.6, "valid_bytes": 100, "test_bytes": 100, "valid_tokens": 100, "test_tokens": 100,
        "params": 1, "steps": n_steps, "wall_s": 1.0, "steps_per_s": 20.0, "device": "cpu", "precision": "fp32",
        "engine": "design", "fingerprint": "f" * 16, "data": "d" * 16,
        FILES_FIELD: {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
    } | changes
    (folder / "result.json").write_text(json.dumps(record))
    return record


class CountedWaits(threading.Event):
    """A worker's stop event that counts the poll periods the worker waited through (nothing it could claim)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def worker_in_thread(stage_dir: Path, data_dir: Path, stop: threading.Event | None = None
                     ) -> tuple[threading.Thread, dict]:
    """A claiming worker running in a thread of this process, started: (thread, outcome), where outcome gets
    `trained` (runs trained) or `error` (what it raised), for the main thread to report. `stop`: its stop event."""
    from rnnsweep.claims import Worker

    outcome: dict = {}
    stop = stop or threading.Event()

    def work() -> None:
        try:
            outcome["trained"] = Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9, stop=stop).run()
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, outcome
