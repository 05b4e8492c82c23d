"""`rnnsweep status`: runs by state from results, heartbeats of real worker processes, and it only reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import wait_for, worker_args
from rnnsweep.data import SPLITS, load_split, prepare_corpus
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import DATA_DIR, PROGRESS_DIR, corpus_study, run_dir
from rnnsweep.progress import Heartbeat, read_heartbeats
from rnnsweep.status import render, stage_status, studies
from rnnsweep.tokens import Text
from rnnsweep.train import train_run

TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=16)

#: A worker process that claims a run and is killed outright: it leaves its heartbeat behind.
DEAD_WORKER = """
import os, signal, sys
from rnnsweep.progress import Heartbeat, read_heartbeats
beat = Heartbeat(sys.argv[1], 1, 2).start()
beat.claim([sys.argv[2]], 20)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _study(tmp_path: Path, n_runs: int, **settings: object) -> tuple[Path, Path, list]:
    """A study folder with its own generated splits and a stage-1 manifest of `n_runs` tiny runs."""
    study = tmp_path / "results" / "mine"
    prepare_corpus("generated", study / DATA_DIR, cache_dir=tmp_path / "cache", generated_bytes=20_000, seed=0)
    runs = make_runs(stage1_designs([1, 2], [4])[:n_runs], {**TINY, **settings})
    write_manifest(study / "stage1" / "manifest.csv", runs)
    return study, study / "stage1", runs


def _files(folder: Path, skip: str = PROGRESS_DIR) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (but `skip`) with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*") if p.is_file() and skip not in p.relative_to(folder).parts
    }


def test_a_stage_with_runs_done_held_failed_and_waiting(tmp_path, one_thread):
    study, stage_dir, runs = _study(tmp_path, 6)
    splits = [load_split(study / DATA_DIR, split) for split in SPLITS]
    losses = {}
    for run in runs[:2]:
        losses[run.id] = train_run(run, Text.of_bytes(*splits), run_dir(stage_dir, run.id), torch.device("cpu"))["min_loss"]
    dead = subprocess.run([sys.executable, "-c", DEAD_WORKER, str(stage_dir), runs[3].id], capture_output=True, text=True)
    assert dead.returncode == -9, dead.stderr
    held = Heartbeat(stage_dir, 0, 2, every_s=0.05).start()
    try:
        held.claim([runs[2].id], 20)
        held.update(7, 2.5, 100.0)
        wait_for(lambda: any(beat.get("step") == 7 for beat in read_heartbeats(stage_dir)), "the live heartbeat's step")
        beats = {beat["pid"]: beat["updated"] for beat in read_heartbeats(stage_dir)}
        live_at = beats.pop(os.getpid())
        [dead_at] = beats.values()
        assert live_at > dead_at  # the live heartbeat started after the dead worker was killed
        # A clock between them, 1 s on: the dead one's last beat is older than 1 s, the live one's newer.
        now = dead_at + 1.0 + (live_at - dead_at) / 2
        before = _files(study)
        status = stage_status(stage_dir, study / DATA_DIR, now=now, stale_s=1.0)
        text = render(tmp_path / "results")
        assert _files(study) == before, "status must not write, move or lock anything"
    finally:
        held.close()
    assert (status.total, status.done, status.diverged, status.failed, status.waiting) == (6, 2, 0, 1, 2)
    [holder] = status.running
    assert holder.runs == [runs[2].id] and holder.step == 7 and f":{os.getpid()} " in holder.name
    assert [h.runs for h in status.stale] == [[runs[3].id]]
    assert [result["id"] for result, _ in status.best] == sorted(losses, key=losses.get)
    assert status.left == 4 * TINY["steps"] - 7 and status.rate > 0 and status.eta_s > 0
    # Within the default staleness (60 s) a killed worker cannot be told from a slow one: both count as running.
    assert "stage1: 6 runs: 2 done, 2 running, 2 waiting, 0 diverged, 0 failed" in text
    assert f"{runs[2].id} at step 7/20" in text and "best 2 so far" in text


def test_stale_is_reported_as_failed_with_its_holder(tmp_path):
    study, stage_dir, runs = _study(tmp_path, 2)
    dead = subprocess.run([sys.executable, "-c", DEAD_WORKER, str(stage_dir), runs[0].id], capture_output=True, text=True)
    assert dead.returncode == -9, dead.stderr
    text = render(tmp_path / "results", now=time.time() + 3600)
    assert "0 done, 0 running, 1 waiting, 0 diverged, 1 failed" in text
    assert f"failed   {json.loads(next((stage_dir / PROGRESS_DIR).glob('*.json')).read_text())['host']}:" in text
    assert "the next free worker resumes them" in text


def test_a_real_worker_beats_while_training_and_clears_its_heartbeat(tmp_path):
    study, stage_dir, runs = _study(tmp_path, 2, steps=3000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rnnsweep", *worker_args(stage_dir, study / DATA_DIR)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = None
        deadline = time.monotonic() + 60
        while seen is None and proc.poll() is None and time.monotonic() < deadline:
            for path in (stage_dir / PROGRESS_DIR).glob("*.json"):
                beat = json.loads(path.read_text())
                if beat["runs"]:
                    seen = beat
            time.sleep(0.01)
        assert seen is not None, "no heartbeat with a claimed run appeared"
        assert seen["pid"] == proc.pid and set(seen["runs"]) <= {run.id for run in runs}
        assert f"{proc.pid} (worker 0 of 1)" in render(study)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((stage_dir / PROGRESS_DIR).glob("*")) == [], "a worker that exits cleanly leaves no heartbeat"
    assert "2 done, 0 running, 0 waiting, 0 diverged, 0 failed (finished)" in render(study)


def test_an_empty_or_missing_folder_is_not_an_error(tmp_path):
    for folder in (tmp_path, tmp_path / "nothing"):
        done = subprocess.run([sys.executable, "-m", "rnnsweep", "status", "--results", str(folder)],
                              capture_output=True, text=True)
        assert done.returncode == 0 and "no study here yet" in done.stdout, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_corpora_of_a_study_of_several_are_studies_of_their_own(tmp_path):
    for name in ("prose", "code"):
        study = tmp_path / "results" / corpus_study("two", name)
        write_manifest(study / "stage1" / "manifest.csv", make_runs(stage1_designs([1], [4])[:2], TINY))
    (tmp_path / "results" / "two" / "logs").mkdir()
    assert studies(tmp_path / "results") == [tmp_path / "results" / "two" / name for name in ("code", "prose")]
    assert studies(tmp_path / "results" / "two") == studies(tmp_path / "results")
    assert "2 waiting" in render(tmp_path / "results" / "two" / "prose")
