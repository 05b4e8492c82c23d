"""The cost of a stage's dynamics against the stage's training, on one profile (CPU).

Each round, in a fresh folder: the corpus, the stage-1 grid, `--workers`
real `rnnsweep worker` processes (one thread each, as the profile runs them;
timed), aggregation, then the stage's two dynamics jobs with the profile's
`dynamics` block (timed): `rnnsweep dynamics --stage` with as many threads as
there were workers (the workflow gives it the cores the workers had), and
`rnnsweep dynamics-ranked`. Reported: both
wall times per round and their ratio, and the median over rounds.

    python benchmarks/dynamics.py --profile configs/quick.yaml --corpus ../shared/data/nietzsche.txt --rounds 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batched import ROOT, train_stage  # benchmarks/batched.py, beside this script


def dynamics_s(args: argparse.Namespace, folder: Path) -> float:
    """Wall seconds of the stage's two dynamics jobs (`rnnsweep dynamics --stage`, `dynamics-ranked`) on the trained
    stage 1 in `folder`, with the profile's settings, as the workflow runs them."""
    from rnnsweep import config
    from rnnsweep.options import command_args

    cfg = config.load(ROOT / "configs" / "default.yaml", args.profile)
    common = ["--stage", str(folder / "stage1"), "--data", str(folder / "data")]
    measured = [
        "dynamics", *common, "--eval-bytes", str(cfg["dynamics"]["eval_bytes"]["stage1"]), "--threads", str(args.workers),
        *command_args(cfg, "dynamics"),
    ]
    ranked = ["dynamics-ranked", *common, *command_args(cfg, "dynamics-ranked")]
    start = time.perf_counter()
    for command in (measured, ranked):
        subprocess.run([sys.executable, "-m", "rnnsweep", *command], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=ROOT / "configs" / "quick.yaml")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            folder = Path(tmp) / f"round-{round_}"
            train, _, _ = train_stage(args, "auto", folder)
            measure = dynamics_s(args, folder)
            ratios.append(measure / train)
            shutil.rmtree(folder)
            print(f"round {round_ + 1}: stage-1 training {train:.1f} s, dynamics {measure:.1f} s, "
                  f"dynamics / training {measure / train:.3f}", flush=True)
    print(f"dynamics / training: median {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    main()
