"""The smoke study on a real SLURM cluster, through profiles/slurm as shipped but for the local partition.

These tests need a running cluster: `bash tools/slurm_cluster.sh start` (as root) makes a one-node
one on 127.0.0.1, and `.ci/run` starts it before `pytest -m slurm`. The plain test command leaves
them out (pyproject.toml: addopts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rnnsweep.config import STAGES, load
from rnnsweep.layout import ATTEMPTS, LOGS_DIR, RESULT, SUMMARY

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
MEASURED = load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml")["dynamics"]["stages"]  # dynamics jobs
STUDY = SMOKE["study"]
RESULTS = f"results/{STUDY}"
#: Columns that say how long a run took, where, or on which attempt: all that may differ between two runs of the study.
TIMING = ["wall_s", "steps_per_s"]


def _smoke(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "configs/smoke.yaml", *args]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _local_profile(workdir: Path) -> Path:
    """profiles/slurm with training sent to this cluster's one partition, without GPUs: nothing else changed."""
    shipped = yaml.safe_load((workdir / "profiles/slurm/config.yaml").read_text())
    shipped["set-resources"]["train"].update(slurm_partition="cpu", gpu=0)
    folder = workdir / "profiles/slurm-local"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(shipped))
    return folder


def _summaries(workdir: Path) -> dict[str, pd.DataFrame]:
    return {stage: pd.read_csv(workdir / RESULTS / stage / SUMMARY).drop(columns=TIMING) for stage in STAGES}


def _assert_same_summaries(workdir: Path, local_study: Path) -> None:
    """Every stage's summary of `workdir` equals the local run's, bit for bit (timing columns aside)."""
    ours, local = _summaries(workdir), _summaries(local_study)
    for stage in STAGES:
        pd.testing.assert_frame_equal(ours[stage], local[stage], check_exact=True)


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, copy_checkout) -> Path:
    workdir = copy_checkout(tmp_path_factory.mktemp("local"))
    _smoke(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split(), (
        "no SLURM cluster answers; start one with `bash tools/slurm_cluster.sh start` (as root)"
    )


def test_smoke_study_on_slurm_equals_the_local_one(tmp_path, copy_checkout, local_study):
    workdir = copy_checkout(tmp_path)
    started = time.monotonic()
    done = _smoke(workdir, "--profile", str(_local_profile(workdir)))
    print(f"smoke study on SLURM: {time.monotonic() - started:.0f} s")
    log = done.stdout + done.stderr
    submitted = [line for line in log.splitlines() if "has been submitted with SLURM jobid" in line]
    queued = ("rule_train", "rule_dynamics")
    assert submitted and all(any(rule in line for rule in queued) for line in submitted), "only training and dynamics go to the queue"
    assert len(submitted) == len(STAGES) * SMOKE["workers"] + len(MEASURED)
    assert log.count("Unable to guess SLURM account") < len(submitted), "an account is guessed once, not at every submission"
    _assert_same_summaries(workdir, local_study)


def _train_jobs() -> dict[str, str]:
    """SLURM job id -> its Snakemake comment (rule and wildcards) for the jobs queued or running now."""
    done = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, check=True)
    jobs = {}
    for line in done.stdout.splitlines():
        job, state, comment = line.split("|", 2)
        if state == "RUNNING" and comment.startswith("rule_train_"):
            jobs[job] = comment
    return jobs


def _training(history: Path) -> bool:
    """Whether the worker writing this history has started (its signal handlers are set) and not yet finished."""
    text = history.read_text() if history.is_file() else ""
    return "worker 0 of 2 (pid" in text and "stage finished" not in text


def test_a_cancelled_worker_is_resubmitted_and_nothing_is_lost_or_trained_twice(tmp_path, copy_checkout, local_study):
    workdir = copy_checkout(tmp_path)
    profile = _local_profile(workdir)
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "configs/smoke.yaml", "--profile", str(profile)]
    runs = workdir / RESULTS / "stage1" / "runs"
    history = workdir / RESULTS / LOGS_DIR / "stage1" / "worker-0.history.log"
    with open(tmp_path / "snakemake.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        cancelled = None
        deadline = time.monotonic() + 600
        while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
            finished = len(list(runs.glob(f"*/{RESULT}"))) if runs.is_dir() else 0
            jobs = _train_jobs()
            stage1 = [job for job, comment in jobs.items() if comment.endswith("_stage1_0")]  # worker 0 of stage 1
            if stage1 and 0 < finished and _training(history):
                subprocess.run(["scancel", stage1[0]], check=True)
                cancelled = (stage1[0], finished)
            time.sleep(0.1)
        assert cancelled is not None, "never saw stage 1 in the middle of training\n" + (tmp_path / "snakemake.log").read_text()[-3000:]
        assert proc.wait(timeout=900) == 0, (tmp_path / "snakemake.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    job, finished = cancelled
    assert finished < 432, f"stage 1 had finished ({finished} runs) before job {job} was cancelled"
    _assert_same_summaries(workdir, local_study)
    # Trained twice would mean two attempts from step 0 for one run.
    for attempts in (workdir / RESULTS).glob(f"*/runs/*/{ATTEMPTS}"):
        starts = [json.loads(line)["start_step"] for line in attempts.read_text().splitlines()]
        assert starts.count(0) == 1, f"{attempts.parent.name} started from scratch {starts.count(0)} times"
    history = history.read_text()
    assert history.count("worker 0 of 2 (pid") == 2, "the history keeps the cancelled attempt and the retry"
    assert "received SIGTERM, checkpointing and stopping" in history
