"""Where a study's time went: the benchmark Snakemake records of every job, summed by rule.

Each rule names a `benchmark:` file, results/<study>/benchmarks/<rule>/<job>.tsv,
which Snakemake writes when the job ends: its wall time, CPU time and peak
resident memory (the job's last attempt). A job that ended too quickly to be
sampled has "-" for what was not measured; it counts towards the jobs and wall
time, not the CPU time or memory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Columns of costs.csv: one row per rule, the most expensive first, then the whole study.
COLUMNS = ("rule", "jobs", "wall_s", "cpu_s", "peak_rss_mib")
TOTAL = "(study)"
#: What is read of a record: the wall time, the CPU time and the peak resident memory (MiB).
MEASURES = ("s", "cpu_time", "max_rss")


class BenchmarkError(ValueError):
    """A benchmark file that is not what Snakemake writes; the message names it."""


def read_benchmarks(folder: Path) -> pd.DataFrame:
    """Every job's benchmark record under `folder`, with its rule (the file's folder): rule, s, cpu_time, max_rss."""
    frames = [_record(path).assign(rule=path.parent.name) for path in sorted(Path(folder).glob("*/*.tsv"))]
    columns = ["rule", *MEASURES]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _record(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t", na_values="-")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"{path}: not a benchmark record ({err})") from None
    missing = [c for c in MEASURES if c not in frame.columns]
    wrong = [c for c in MEASURES if c not in missing and not pd.api.types.is_numeric_dtype(frame[c])]
    if missing or wrong or frame.empty:
        raise BenchmarkError(f"{path}: not a benchmark record (columns missing: {missing or 'none'}, "
                             f"not numbers: {wrong or 'none'}, rows: {len(frame)})")
    return frame


def costs(records: pd.DataFrame) -> pd.DataFrame:
    """Jobs, wall time, CPU time (summed over jobs) and peak memory (the largest job's) per rule, and in all."""
    by_rule = records.groupby("rule").agg(jobs=("s", "size"), wall_s=("s", "sum"), cpu_s=("cpu_time", "sum"),
                                          peak_rss_mib=("max_rss", "max"))
    table = by_rule.sort_values("wall_s", ascending=False).reset_index()
    total = {"rule": TOTAL, "jobs": len(records), "wall_s": records["s"].sum(), "cpu_s": records["cpu_time"].sum(),
             "peak_rss_mib": records["max_rss"].max()}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table[list(COLUMNS)].round({"wall_s": 1, "cpu_s": 1, "peak_rss_mib": 1})
