"""Damage one file of a finished study at a time, heal it the documented way, and check nothing changed.

Runs the smoke study with Snakemake in a copy of the checkout (or takes a
finished one with --study), keeps its tables as the reference, then `--edits`
times: picks one file (in turn a run's file, a stage table, a corpus file; the
file at random), edits it (a JSON field set to a wrong value, or one byte
flipped), cuts it short or deletes it, and runs the command docs/usage.md gives
for a study one no longer trusts:

* a run's file or a stage table: `snakemake -R aggregate <that stage's summary>`,
  which checks every result against its own files and run and retrains what fails;
* a corpus file (a split, corpus.json): `snakemake -R corpus <last stage's summary>`.

Then every stage's summary (its deterministic columns) and curves must equal
the reference, and the damaged run, if one was, must have been trained again.

    python tools/damage_injection.py --edits 50          # the audit in benchmarks/README.md
    python tools/damage_injection.py --edits 3 --seed 1  # a quick one
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from rnnsweep.config import STAGES
from rnnsweep.data import SPLITS, split_path
from rnnsweep.layout import ATTEMPTS, CORPUS_META, CURVE, CURVES, DATA_DIR, RESULT, SUMMARY, WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = ("Snakefile", "workflow", "configs", "profiles", "envs", "src")
PROFILE = "configs/smoke.yaml"
#: Summary columns that a run's training determines; wall time, speed and device do not.
DETERMINISTIC = ["id", "status", "min_loss", "final_loss", "valid_bpb", "test_bpb", "params", "steps_done", "seed", "fingerprint"]
RUN_FILES, TABLES = (RESULT, CURVE, WEIGHTS), (SUMMARY, CURVES)
#: Wrong values a hand edit could give a record: each is one the record's own files or run contradict.
RECORD_EDITS = {"min_loss": [0.0001, math.nan], "valid_bpb": [-3.0, math.inf], "status": ["diverged"],
                "final_loss": [1.0], "steps": [1], "params": [7]}


def snakemake(study: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", PROFILE, "-q", *args]
    return subprocess.run(cmd, cwd=study, capture_output=True, text=True, timeout=1800)


def finished_study(folder: Path) -> Path:
    """The smoke study, run to the end in a copy of the checkout."""
    for name in CHECKOUT:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    done = snakemake(folder)
    if done.returncode:
        raise SystemExit(f"the smoke study failed:\n{done.stderr[-3000:]}")
    return folder


def tables(results: Path) -> dict[str, pd.DataFrame]:
    """Every stage's summary (its deterministic columns) and curves."""
    out = {}
    for stage in STAGES:
        out[f"{stage}/{SUMMARY}"] = pd.read_csv(results / stage / SUMMARY)[DETERMINISTIC]
        out[f"{stage}/{CURVES}"] = pd.read_csv(results / stage / CURVES)
    return out


def candidates(results: Path, kind: str) -> list[Path]:
    if kind == "run":
        return sorted(p for stage in STAGES for name in RUN_FILES for p in (results / stage / "runs").glob(f"*/{name}"))
    if kind == "table":
        return [results / stage / name for stage in STAGES for name in TABLES]
    return [results / DATA_DIR / CORPUS_META, *(split_path(results / DATA_DIR, split) for split in SPLITS)]


def damage(path: Path, rng: random.Random) -> str:
    """Edit, cut or delete `path`; say what was done."""
    how = rng.choice(["edit", "cut", "delete"])
    if how == "delete":
        path.unlink()
        return "deleted"
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: rng.randrange(len(data))])
        return f"cut to {path.stat().st_size} of {len(data)} bytes"
    if path.name == RESULT:
        field = rng.choice(sorted(RECORD_EDITS))
        value = rng.choice(RECORD_EDITS[field])
        path.write_text(json.dumps(json.loads(data) | {field: value}))
        return f"{field} set to {value}"
    at = rng.randrange(len(data))
    path.write_bytes(data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1:])
    return f"byte {at} flipped"


def heal(study: Path, results: Path, path: Path) -> subprocess.CompletedProcess:
    """The command of docs/usage.md for a study one no longer trusts, aimed at the stage the file belongs to."""
    relative = path.relative_to(results)
    if relative.parts[0] == DATA_DIR:
        return snakemake(study, "-R", "corpus", "--", str(results.relative_to(study) / STAGES[-1] / SUMMARY))
    return snakemake(study, "-R", "aggregate", "--", str(results.relative_to(study) / relative.parts[0] / SUMMARY))


def attempts(path: Path) -> int:
    """Times the run a file belongs to was trained (0 for a file of no run)."""
    log = path.parent / ATTEMPTS
    return log.read_text().count("\n") if path.parent.parent.name == "runs" and log.exists() else 0


def differing(now: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame]) -> list[str]:
    return [name for name, frame in reference.items() if not frame.fillna(-1).equals(now[name].fillna(-1))]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", type=Path, help="a folder with a finished smoke study and the checkout (default: run one)")
    parser.add_argument("--dir", type=Path, help="where to run the study (default: a temporary folder)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    study = args.study or finished_study(args.dir or Path(tempfile.mkdtemp(prefix="rnnsweep-damage-")))
    results = study / "results" / "smoke"
    reference = tables(results)
    rows = []
    for i in range(args.edits):
        kind = ("run", "table", "corpus")[i % 3]
        path = rng.choice(candidates(results, kind))
        trained = attempts(path)
        what = damage(path, rng)
        started = time.monotonic()
        done = heal(study, results, path)
        now = tables(results) if done.returncode == 0 else {}
        rows.append({
            "file": str(path.relative_to(results)), "damage": what, "rc": done.returncode,
            "retrained": attempts(path) - trained, "differs": " ".join(differing(now, reference)) if now else "(failed)",
            "heal_s": round(time.monotonic() - started, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    report = pd.DataFrame(rows)
    runs = report["file"].str.contains("/runs/")
    print(f"{len(report)} edits: {int((report['rc'] != 0).sum())} heals failed, "
          f"{int((report['differs'] != '').sum())} left a table different from the untouched study, "
          f"{int((report.loc[runs, 'retrained'] < 1).sum())} of {int(runs.sum())} damaged runs not trained again; "
          f"median heal {report['heal_s'].median():.1f} s; study in {study}")
    return report


if __name__ == "__main__":
    main()
