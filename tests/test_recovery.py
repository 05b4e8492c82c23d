"""Snakemake itself killed with SIGKILL in the middle of stage 1, then the usual recovery.

Recovery is `snakemake --unlock` followed by `snakemake --rerun-incomplete`
with the same profile. The runs finished before the kill must be kept as they
are (same inode, same mtime: neither lost nor trained again) and the rerun
must finish the whole study. The killed Snakemake's worker jobs are not
killed with it: they go on as orphans, as they would on a real machine, and
share the stage with the new workers through the run locks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from rnnsweep.config import STAGES
from rnnsweep.layout import FIGURE_SUFFIX, STAGE_FIGURES, STAGE_TABLES, TABLE_SUFFIX, curves_path, summary_path

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml"]
STUDY = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/smoke.yaml").read_text())["study"]
KILL_AFTER = 100  # stage-1 results on disk before Snakemake is killed (of 432)


def _processes_in(workdir: Path) -> list[int]:
    """Pids of processes (other than this one) whose working directory is inside workdir."""
    inside = str(workdir)
    found = []
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        for proc in psutil.process_iter():
            try:
                cwd = proc.cwd()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if proc.pid != os.getpid() and (cwd == inside or cwd.startswith(inside + os.sep)):
                found.append(proc.pid)
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == inside or cwd.startswith(inside + os.sep):
            found.append(int(entry.name))
    return found


def _kill_leftovers(workdir: Path) -> list[int]:
    """SIGKILL every process still working in workdir (orphaned workers); return their pids."""
    pids = _processes_in(workdir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _processes_in(workdir):
        time.sleep(0.1)  # orphans are reaped by init; wait until they are gone
    return pids


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def test_snakemake_killed_then_unlock_and_rerun_incomplete(tmp_path, copy_checkout):
    workdir = (tmp_path / "study").resolve()
    workdir.mkdir()
    copy_checkout(workdir)
    runs_dir = workdir / "results" / STUDY / "stage1/runs"
    first_log = tmp_path / "first-snakemake.log"
    times: dict[str, float] = {}
    start = time.monotonic()
    with first_log.open("w") as log:
        first = subprocess.Popen(SNAKEMAKE, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        # ---- let stage 1 get well under way, then kill Snakemake alone (kill -9 <pid>)
        deadline = start + 400
        while len(list(runs_dir.glob("*/result.json"))) < KILL_AFTER:
            assert first.poll() is None, f"snakemake ended (rc {first.returncode}) before the kill:\n{_tail(first_log)}"
            assert time.monotonic() < deadline, f"fewer than {KILL_AFTER} stage-1 results after 400 s:\n{_tail(first_log)}"
            time.sleep(0.2)
        recorded = {}
        for path in runs_dir.glob("*/result.json"):
            st = path.stat()
            recorded[path] = (st.st_ino, st.st_mtime_ns)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        times["until kill"] = time.monotonic() - start
        orphans = _processes_in(workdir)
        print(f"\nkilled snakemake (pid {first.pid}) with {len(recorded)} stage-1 results on disk; "
              f"{len(orphans)} orphaned job processes still running")
        assert first.returncode == -signal.SIGKILL
        assert not (workdir / "results" / STUDY / "stage1/summary.csv").exists(), "stage 1 finished before the kill"

        # ---- the recovery: unlock, then rerun what was incomplete
        t = time.monotonic()
        unlock = subprocess.run([*SNAKEMAKE, "--unlock"], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert unlock.returncode == 0, unlock.stdout[-3000:] + unlock.stderr[-3000:]
        times["unlock"] = time.monotonic() - t
        t = time.monotonic()
        rerun = subprocess.run([*SNAKEMAKE, "--rerun-incomplete"], cwd=workdir, capture_output=True, text=True, timeout=600)
        times["rerun-incomplete"] = time.monotonic() - t
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        leftovers = _kill_leftovers(workdir)
        times["total"] = time.monotonic() - start
        print("elapsed: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
        print(f"leftover processes killed at the end: {leftovers}")
    assert not _processes_in(workdir), "processes of the test are still running"

    # ---- everything is finished
    results = workdir / "results" / STUDY
    for stage in STAGES:
        assert summary_path(results / stage).exists(), stage
        assert curves_path(results / stage).exists(), stage
    for stage, names in STAGE_TABLES.items():
        for name in names:
            assert (results / stage / f"{name}{TABLE_SUFFIX}").exists()
    for stage, names in STAGE_FIGURES.items():
        for name in names:
            png = workdir / "figures" / STUDY / stage / f"{name}{FIGURE_SUFFIX}"
            assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # ---- the runs finished before the kill were neither lost nor trained again
    changed = []
    for path, (ino, mtime) in recorded.items():
        if not path.exists():
            changed.append(f"{path.parent.name}: lost")
            continue
        st = path.stat()
        if (st.st_ino, st.st_mtime_ns) != (ino, mtime):
            changed.append(f"{path.parent.name}: rewritten")
    assert not changed, f"{len(changed)} of {len(recorded)} finished runs changed: {changed[:10]}"
    assert not list(results.glob("*/runs/*/result.json.corrupt-*")), "a result record was damaged"

    # ---- stage 1 is the whole grid, each run once
    summary = pd.read_csv(results / "stage1/summary.csv")
    manifest = pd.read_csv(results / "stage1/manifest.csv")
    assert len(summary) == 432
    assert summary["id"].is_unique
    assert summary["id"].tolist() == manifest["id"].tolist()
    assert set(summary["status"]) <= {"ok", "diverged"}
    assert len(list(runs_dir.glob("*/result.json"))) == 432
    assert {p.parent.name for p in recorded} <= set(summary["id"])
