"""Shared fixtures: a small generated corpus and a single torch thread."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnsweep.data import load_split, prepare_corpus

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/valid/test splits of a 20 kB generated corpus, made once per session."""
    root = tmp_path_factory.mktemp("corpus")
    prepare_corpus("generated", root / "data", cache_dir=root / "cache", generated_bytes=20_000)
    return root / "data"


@pytest.fixture(scope="session")
def splits(data_dir: Path):
    return load_split(data_dir, "train"), load_split(data_dir, "valid")


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


def run_worker_processes(stage_dir: Path, data_dir: Path, count: int, logs_dir: Path) -> tuple[list[int], list[str]]:
    """Run `count` real `rnnsweep worker` processes on one stage; return their exit codes and stderr texts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, logs = [], [logs_dir / f"worker{i}.err" for i in range(count)]
    for i, log in enumerate(logs):
        cmd = [
            sys.executable, "-m", "rnnsweep", "worker", "--stage", stage_dir.name, "--results", str(stage_dir.parent),
            "--data", str(data_dir), "--index", str(i), "--count", str(count), "--threads", "1", "--device", "cpu",
        ]
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
