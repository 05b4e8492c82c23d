"""What ranks runs and designs (`rank_by`), and how far the possible rankings agree.

The published study ranks by `min_loss`, the lowest point of a run's training
curve (an exponential moving average of the loss). That is a minimum of a noisy
sequence, biased low, and in short runs often an early point. `rank_by` may
instead name `valid_bpb`, the held-out score, or `tail_loss`, the mean of the
last tenth of the curve's logged points. One metric ranks everything that
ranks: selection into stages 2 and 3, the headline, the stage-3 group table and
its figures, the best curves and the samples. `agreement` measures how much the
choice matters: the Spearman correlation between metrics across designs, with
a 95 % interval, and how many of the top 10 % change.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from rnnsweep import config
from rnnsweep.aggregate import SummaryError
from rnnsweep.stats import usable_runs

#: The metrics `rank_by` may name, each a summary column (lower is better), and the published one, from the schema.
METRICS: tuple[str, ...] = tuple(config.schema()["properties"]["rank_by"]["enum"])
DEFAULT: str = config.default("rank_by")
#: The share of designs whose membership in the top `agreement` compares.
TOP_FRACTION = 0.1
LEVEL = 0.95


def check(summary: pd.DataFrame, rank_by: str) -> None:
    if rank_by not in METRICS:
        raise SummaryError(f"rank_by {rank_by!r} is not one of {', '.join(METRICS)}")
    if rank_by not in summary.columns:
        raise SummaryError(f"the summary has no column {rank_by!r} to rank by; rerun the stage's aggregation")


def ranked_runs(summary: pd.DataFrame, rank_by: str = DEFAULT) -> pd.DataFrame:
    """Usable runs with a finite `rank_by`, best first; ties broken by id so the order never depends on file order."""
    check(summary, rank_by)
    runs = usable_runs(summary)
    runs = runs[np.isfinite(pd.to_numeric(runs[rank_by], errors="coerce"))]
    return runs.sort_values([rank_by, "id"], kind="stable")


def agreement(summary: pd.DataFrame) -> pd.DataFrame:
    """For each pair of metrics present: Spearman's rho between designs' means with its 95 % interval (Fisher z with
    the Bonett–Wright variance), and how many designs of the top 10 % by the first are not in the top 10 % by the second."""
    present = [m for m in METRICS if m in summary.columns]
    designs = usable_runs(summary).groupby("config_id")[present].mean().dropna()
    n, top = len(designs), max(1, math.floor(TOP_FRACTION * len(designs)))
    rows = []
    for a, b in combinations(present, 2):
        rho = float(scipy_stats.spearmanr(designs[a], designs[b]).statistic) if n >= 3 else math.nan
        low, high = rho_interval(rho, n)
        best_a, best_b = set(designs[a].nsmallest(top).index), set(designs[b].nsmallest(top).index)
        rows.append({"metric_a": a, "metric_b": b, "designs": n, "spearman": rho, "ci_low": low, "ci_high": high,
                     "top": top, "top_changed": len(best_a - best_b)})
    return pd.DataFrame(rows, columns=["metric_a", "metric_b", "designs", "spearman", "ci_low", "ci_high", "top", "top_changed"])


def rho_interval(rho: float, n: int) -> tuple[float, float]:
    """The 95 % interval of Spearman's rho over n pairs: Fisher z with the Bonett–Wright variance."""
    if n < 4 or not np.isfinite(rho) or abs(rho) >= 1:
        return (rho, rho) if abs(rho) == 1 else (math.nan, math.nan)
    half = scipy_stats.norm.ppf((1 + LEVEL) / 2) * math.sqrt((1 + rho**2 / 2) / (n - 3))
    z = math.atanh(rho)
    return math.tanh(z - half), math.tanh(z + half)
