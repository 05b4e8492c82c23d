"""Kill workers at random and check that nothing is lost, repeated or changed.

Trains one stage with more workers than cores, SIGKILLs a random worker at a
random moment (and starts a replacement) `--kills` times, then reruns workers
until every run is finished. The same manifest is trained undisturbed in a
second folder. Then it checks, and prints as a table:

* every run has exactly one complete result (all files parse, weights load);
* no temp file of a killed writer is left behind;
* no run was trained by two live workers at once ("duplicates": from each
  run's attempts.jsonl and the moments this harness killed each worker);
* every resume started from a checkpoint at or after the previous attempt's
  start (never back to zero once a checkpoint existed);
* summary and curves equal those of the undisturbed run, bit for bit.

    python tools/fault_injection.py --workers 6 --kills 25          # the full audit
    python tools/fault_injection.py --runs 40 --kills 6             # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rnnsweep import config, data
from rnnsweep.aggregate import collect
from rnnsweep.cli import worker_command
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, CURVE, RESULT, WEIGHTS, manifest_path, run_dir
from rnnsweep.policy import engine_paths

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = ["id", "status", "min_loss", "final_loss", "valid_bpb", "params", "steps_done", "seed"]


def setup(folder: Path, profile: dict, runs: int | None) -> None:
    """A stage1 manifest (the smoke grid, optionally cut to `runs`) and a generated corpus."""
    s1 = profile["stage1"]
    designs = stage1_designs(s1["n_layers"], s1["state_sizes"])
    paths = engine_paths(designs, {**s1, "batch_designs": profile["batch_designs"], "device": "cpu"})
    manifest = make_runs(designs, s1, base_seed=profile["seed"], engine=paths)
    write_manifest(manifest_path(folder / "stage1"), manifest[:runs])
    data.prepare_corpus("generated", folder / "data", cache_dir=folder, generated_bytes=profile["generated_bytes"], seed=profile["seed"])


class Fleet:
    """Worker processes of one stage, with the moments each one started and ended."""

    def __init__(self, folder: Path, profile: dict) -> None:
        self.folder, self.profile = folder, profile
        self.live: dict[int, subprocess.Popen] = {}
        self.ended: dict[int, float] = {}  # pid -> when it was killed or exited
        self.started = self.kills = 0

    def start(self, index: int, count: int) -> None:
        cmd = worker_command(manifest_path(self.folder / "stage1"), self.folder / "data", self.profile, index, count)
        log = open(self.folder / f"worker-{self.started}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        self.live[proc.pid] = proc
        self.started += 1

    def reap(self) -> None:
        for pid, proc in list(self.live.items()):
            if proc.poll() is not None:
                self.ended[pid] = time.time()
                del self.live[pid]

    def kill(self, pid: int) -> None:
        self.live[pid].send_signal(signal.SIGKILL)
        self.live[pid].wait()
        self.ended[pid] = time.time()
        del self.live[pid]
        self.kills += 1

    def wait_all(self) -> None:
        while self.live:
            time.sleep(0.2)
            self.reap()


def unfinished(folder: Path) -> int:
    manifest = pd.read_csv(manifest_path(folder / "stage1"))
    return sum(not (run_dir(folder / "stage1", i) / RESULT).exists() for i in manifest["id"])


def training_pids(folder: Path) -> set[int]:
    """Pids that last claimed a still-unfinished run: the workers that are mid-run right now."""
    pids = set()
    for attempts in (folder / "stage1" / "runs").glob(f"*/{ATTEMPTS}"):
        if not (attempts.parent / RESULT).exists():
            last = attempts.read_text().splitlines()[-1:]
            pids.update(json.loads(line)["pid"] for line in last)
    return pids


def disturb(folder: Path, workers: int, kills: int, profile: dict, rng: random.Random, gap_s: float = 0.3) -> Fleet:
    """SIGKILL a random mid-run worker `kills` times and start a replacement each time.

    Before each kill the harness waits a random 0-`gap_s` seconds and then for a
    worker that is mid-run, so the kills land at random moments inside runs. A
    killed worker's runs stay unfinished until a live worker resumes them, so
    every kill finds a run to interrupt, however fast the others finish theirs
    (groups of designs that train together also finish together).
    """
    fleet = Fleet(folder, profile)
    for i in range(workers):
        fleet.start(i, workers)
    for _ in range(kills):
        time.sleep(rng.uniform(0.0, gap_s))
        busy = _wait_for_busy(folder, fleet)
        if not busy:
            break  # the stage ended (or every worker did)
        fleet.kill(rng.choice(busy))
        fleet.start(rng.randrange(workers), workers)
    fleet.wait_all()
    while unfinished(folder):  # rerun until done
        fleet.start(0, 1)
        fleet.wait_all()
    return fleet


def _wait_for_busy(folder: Path, fleet: Fleet) -> list[int]:
    """Live workers that are mid-run, waiting while runs remain but none is claimed yet."""
    while True:
        fleet.reap()
        busy = sorted(training_pids(folder) & set(fleet.live))
        if busy or not fleet.live or not unfinished(folder):
            return busy
        time.sleep(0.05)


def audit(folder: Path, fleet: Fleet) -> dict:
    stage = folder / "stage1"
    ids = pd.read_csv(manifest_path(stage))["id"]
    counts = {"runs": len(ids), "attempts": 0, "resumed": 0, "duplicates": 0, "backwards": 0, "temps_left": 0, "checkpoints_left": 0}
    for run_id in ids:
        folder_r = run_dir(stage, run_id)
        json.loads((folder_r / RESULT).read_text())
        pd.read_csv(folder_r / CURVE)
        torch.load(folder_r / WEIGHTS, weights_only=True)
        counts["temps_left"] += len(list(folder_r.glob(".*.tmp")))
        counts["checkpoints_left"] += (folder_r / CHECKPOINT).exists()
        attempts = [json.loads(line) for line in (folder_r / ATTEMPTS).read_text().splitlines()]
        counts["attempts"] += len(attempts)
        counts["resumed"] += sum(a["start_step"] > 0 for a in attempts)
        for before, after in zip(attempts, attempts[1:]):
            # The earlier holder must have been dead when the next one claimed the run.
            ended = fleet.ended.get(before["pid"], float("inf"))
            counts["duplicates"] += ended > after["time"]
            counts["backwards"] += after["start_step"] < before["start_step"]
    return counts


def compare(disturbed: Path, reference: Path) -> int:
    """Number of runs whose deterministic results or curves differ from the undisturbed ones."""
    s1, c1 = collect(disturbed / "stage1", disturbed / "data")
    s2, c2 = collect(reference / "stage1", reference / "data")
    bad = set(s1["id"][~(s1[DETERMINISTIC].fillna(-1) == s2[DETERMINISTIC].fillna(-1)).all(axis=1)])
    merged = c1.merge(c2, on=["id", "step"], how="outer", suffixes=("", "_ref"))
    bad |= set(merged["id"][merged["ema_loss"] != merged["ema_loss_ref"]])
    return len(bad)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="+", default=[str(ROOT / "configs/default.yaml"), str(ROOT / "configs/smoke.yaml")])
    parser.add_argument("--runs", type=int, default=None, help="train only the first N runs of the grid")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the profile's)")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    # Workers train on the CPU with one thread each, checkpointing often enough for kills to land between checkpoints.
    overrides = {"device": "cpu", "threads_per_worker": 1, "checkpoint_every": args.checkpoint_every}
    profile = config.load(*args.profile, overrides={**overrides, **({"stage1": {"steps": args.steps}} if args.steps else {})})
    base = args.dir or Path(tempfile.mkdtemp(prefix="rnnsweep-faults-"))
    disturbed, reference = base / "disturbed", base / "reference"
    for folder in (disturbed, reference):
        setup(folder, profile, args.runs)
    started = time.time()
    fleet = disturb(disturbed, args.workers, args.kills, profile, random.Random(args.seed))
    wall = time.time() - started
    calm = Fleet(reference, profile)
    calm.start(0, 1)
    calm.wait_all()
    report = {"kills": fleet.kills, "worker_starts": fleet.started, **audit(disturbed, fleet),
              "mismatches": compare(disturbed, reference), "wall_s": round(wall, 1), "folder": str(base)}
    print(pd.Series(report).to_string())
    return report


if __name__ == "__main__":
    main()
