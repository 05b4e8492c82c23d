"""Does the ranking of designs survive another value of a swept setting?

A stage that sweeps a training setting (an axis: several values of `lr`,
`batch_size`, ... in its block, rnnsweep.grid) trains each design at each
value. For each axis and each pair of its values, with every other axis held at
one combination, `sweep` compares the ranking of the designs trained at both:
Spearman's rho between their `rank_by` (means over seeds) with its 95 %
interval (Fisher z, Bonett–Wright variance, as rnnsweep.ranking), how many of
the top 10 % at one value stay in the top 10 % at the other, and the best
design at each. A rho near 1 says the value does not matter to which design is
best; a low one says a conclusion drawn at one value may not hold at another.
"""

from __future__ import annotations

import math
from itertools import combinations

import pandas as pd
from scipy import stats as scipy_stats

from rnnsweep import config
from rnnsweep.ranking import DEFAULT, TOP_FRACTION, check, rho_interval
from rnnsweep.stats import usable_runs

COLUMNS = ["axis", "value_a", "value_b", "others", "designs", "spearman", "ci_low", "ci_high", "top", "top_shared",
           "best_a", "best_b", "mean_a", "mean_b"]


#: A column that names each run's corpus where the studies of several corpora are read as one table
#: (rnnsweep.corpora): an axis like a training setting, before them.
CORPUS = "corpus"


def swept_keys(summary: pd.DataFrame) -> list[str]:
    """What a stage's runs differ in: their corpus, where several are read together, then the training settings
    (the stage's axes, and those carried from the stage before) in schema order."""
    keys = (CORPUS, *config.training_keys())
    return [key for key in keys if key in summary and summary[key].nunique(dropna=False) > 1]


def design_means(summary: pd.DataFrame, rank_by: str = DEFAULT) -> pd.DataFrame:
    """One row per design and combination of swept settings: the design's id and the mean `rank_by` over its seeds."""
    check(summary, rank_by)
    runs = usable_runs(summary)
    runs = runs.assign(design=runs["config_id"].str.partition("@")[0], value=pd.to_numeric(runs[rank_by], errors="coerce"))
    keys = swept_keys(summary)
    return runs.groupby(["design", *keys], sort=True)["value"].mean().dropna().reset_index()


def sweep(summary: pd.DataFrame, rank_by: str = DEFAULT) -> pd.DataFrame:
    """For each axis, pair of its values and combination of the other axes: how far the design rankings agree."""
    means, keys = design_means(summary, rank_by), swept_keys(summary)
    rows = []
    for key in keys:
        others = [k for k in keys if k != key]
        for held, part in (means.groupby(others, sort=True) if others else [((), means)]):
            held = held if isinstance(held, tuple) else (held,)
            table = part.pivot(index="design", columns=key, values="value")
            for a, b in combinations(sorted(table.columns), 2):
                rows.append({"axis": key, "value_a": a, "value_b": b,
                             "others": " ".join(f"{k}={v}" for k, v in zip(others, held)),
                             **_agreement(table[[a, b]].dropna(), a, b)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _agreement(pair: pd.DataFrame, a: object, b: object) -> dict[str, object]:
    """Spearman's rho of two columns of design means with its interval, the shared top and each column's best."""
    n, top = len(pair), max(1, math.floor(TOP_FRACTION * len(pair)))
    rho = float(scipy_stats.spearmanr(pair[a], pair[b]).statistic) if n >= 3 else math.nan
    low, high = rho_interval(rho, n)
    shared = len(set(pair[a].nsmallest(top).index) & set(pair[b].nsmallest(top).index)) if n else 0
    return {"designs": n, "spearman": rho, "ci_low": low, "ci_high": high, "top": top, "top_shared": shared,
            "best_a": pair[a].idxmin() if n else "", "best_b": pair[b].idxmin() if n else "",
            "mean_a": pair[a].mean() if n else math.nan, "mean_b": pair[b].mean() if n else math.nan}
