"""Analysis tables of a stage's summary: which runs count, factor regression, stage-3 group statistics, design labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from rnnsweep.aggregate import SummaryError
from rnnsweep.grid import SWITCHES

FACTORS: tuple[str, ...] = SWITCHES + ("n_layers", "state_size")

# Short names for switches that are on; order fixes the order inside a label.
_GATE_ABBREV: tuple[tuple[str, str], ...] = (
    ("use_input_gate", "I"),
    ("use_forget_gate", "F"),
    ("use_output_gate", "O"),
    ("use_state_gate", "SG"),
    ("use_residual", "res"),
)
_SOURCE_ABBREV: tuple[tuple[str, str], ...] = (("use_new_state", "new"), ("use_old_state", "old"))


def usable_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs a selection or a statistic may use: finished ok with a positive, finite min_loss.

    Diverged runs carry no meaningful loss, and log() needs a positive one.
    """
    loss = pd.to_numeric(summary["min_loss"], errors="coerce")
    keep = (summary["status"] == "ok") & np.isfinite(loss) & (loss > 0)
    return summary.loc[keep]


def regression(summary: pd.DataFrame) -> pd.DataFrame:
    """Standardised least-squares coefficients of log(min_loss) on FACTORS, plus R².

    Standardising both sides makes coefficients comparable across boolean and numeric
    factors; log() because loss improvements are multiplicative rather than additive.
    Constant factors (e.g. n_layers in stage 2) cannot be estimated, so they get NaN.
    """
    runs = usable_runs(summary)
    y = np.log(runs["min_loss"].to_numpy(dtype=float))
    x = runs[list(FACTORS)].to_numpy(dtype=float)
    coef = np.full(len(FACTORS), np.nan)
    r2 = np.nan
    scale = x.std(axis=0) if len(y) else np.zeros(len(FACTORS))
    varying = scale > 0
    if len(y) > varying.sum() + 1 and y.std() > 0:
        z = (x[:, varying] - x[:, varying].mean(axis=0)) / scale[varying]
        target = (y - y.mean()) / y.std()
        beta, *_ = np.linalg.lstsq(z, target, rcond=None)
        coef[varying] = beta
        residual = target - z @ beta
        r2 = 1.0 - float(residual @ residual) / float(target @ target)
    return pd.DataFrame({"term": [*FACTORS, "R2"], "coef": [*coef, r2], "n": len(y)})


#: Confidence level of every interval, and the family-wise error rate of the comparisons with the best.
LEVEL = 0.95


def group_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-design statistics over replicates, ranked by mean min_loss, with intervals and comparisons with the best.

    Diverged replicates are excluded from the statistics (their loss is undefined), so
    `n` counts the replicates that actually contributed. For min_loss (nats, and in
    bits per byte) and test_bpb: the mean's 95 % t-interval, the difference from the
    best design's mean, and the Welch test of that difference, Holm-corrected over
    the designs compared; `same_as_best` marks a design the test cannot tell apart
    from the best at the 5 % level.
    """
    usable = summary.index.isin(usable_runs(summary).index)
    by_design = summary["min_loss"].where(usable).groupby(summary["config_id"])
    stats = by_design.agg(mean="mean", std="std", min="min", max="max", n="count")
    config = summary.groupby("config_id")[list(FACTORS)].first()
    table = config.join(stats).sort_values("mean", na_position="last", kind="stable")
    table = table.reset_index()
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.insert(2, "label", [design_label(row) for _, row in table.iterrows()])
    samples = {
        "min_loss": by_design,
        "test_bpb": summary["test_bpb"].where(usable).groupby(summary["config_id"]),
    }
    for response, groups in samples.items():
        values = [groups.get_group(c).dropna().to_numpy(float) if c in groups.groups else np.array([]) for c in table["config_id"]]
        _add_comparison(table, response, values)
    table = table.drop(columns="min_loss_mean")  # it is `mean`
    table["mean_bpb"] = table["mean"] / math.log(2)
    table["same_as_best"] = same_as_best(table["rank"], table["min_loss_p_holm"])
    return table


def same_as_best(rank: Any, p_holm: Any) -> Any:
    """Whether a design (a number or a column of them) cannot be told from #1: it is #1, or the
    Holm-corrected p of its difference is missing or not below 1 - LEVEL."""
    return np.logical_or(rank == 1, np.logical_not(p_holm < 1 - LEVEL))


def _add_comparison(table: pd.DataFrame, response: str, values: list[np.ndarray]) -> None:
    """Columns <response>_mean, _ci_low, _ci_high, _diff (from the first design), _p_holm."""
    means = [v.mean() if len(v) else np.nan for v in values]
    intervals = [_t_interval(v) for v in values]
    best = values[0] if values else np.array([])
    p = [np.nan] + [_welch_p(best, v) for v in values[1:]]
    tested = [i for i, value in enumerate(p) if np.isfinite(value)]
    holm = np.full(len(values), np.nan)
    if tested:
        holm[tested] = multipletests([p[i] for i in tested], alpha=1 - LEVEL, method="holm")[1]
    table[f"{response}_mean"] = means
    table[f"{response}_ci_low"] = [low for low, _ in intervals]
    table[f"{response}_ci_high"] = [high for _, high in intervals]
    table[f"{response}_diff"] = [m - means[0] for m in means] if values else []
    table[f"{response}_p_holm"] = holm


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    """The mean's 95 % t-interval; undefined with fewer than two values."""
    if len(values) < 2:
        return np.nan, np.nan
    half = scipy_stats.t.ppf((1 + LEVEL) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of Welch's t-test of equal means; undefined with fewer than two values in either."""
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return np.nan
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def design_label(row: Mapping[str, Any] | pd.Series) -> str:
    """Compact design name ('L2 S256 F+SG+res new') that fits in legends and table cells."""
    gates = "+".join(abbrev for name, abbrev in _GATE_ABBREV if bool(row[name])) or "nogate"
    sources = "+".join(abbrev for name, abbrev in _SOURCE_ABBREV if bool(row[name])) or "nostate"
    return f"L{int(row['n_layers'])} S{int(row['state_size'])} {gates} {sources}"



#: Columns of the tokenizer comparison that are means over a design's seeds: its cost and what it predicted.
_COST_COLUMNS = ("steps_per_s", "wall_s", "test_tokens", "test_bytes", "min_loss")


def tokenizer_table(base: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The same runs (design and seed) under two tokenizers: per design and tokenizer, test_bpb with its 95 %
    t-interval over seeds, and what training cost; on the rows of `other`, the paired difference from `base`.

    Designs come in `base`'s ranking by mean test_bpb. A seed counts where its run finished ok under both
    tokenizers, so the difference is paired seed by seed; `n` is how many did. `min_loss` is in nats per
    token of its own tokenizer; `bytes_per_token` says how many bytes one token covers on the test slice.
    """
    same = ["id", "seed", "steps", "batch_size", "history_size", "lr", "eval_bytes"]
    if not base[same].sort_values("id", ignore_index=True).equals(other[same].sort_values("id", ignore_index=True)) \
            or set(base["tokenizer"]) & set(other["tokenizer"]):
        raise SummaryError("the tokenizer comparison needs the same runs (ids, seeds, settings) read with two different tokenizers")
    both = set(usable_runs(base)["id"]) & set(usable_runs(other)["id"])
    runs = {name: frame[frame["id"].isin(both)].set_index("id") for name, frame in (("base", base), ("other", other))}
    order = runs["base"].groupby("config_id")["test_bpb"].mean().sort_values(kind="stable").index
    rows = []
    for config_id in order:
        for name, frame in runs.items():
            mine = frame[frame["config_id"] == config_id]
            values = mine["test_bpb"].to_numpy(float)
            low, high = _t_interval(values)
            row = {"config_id": config_id, "label": design_label(mine.iloc[0]), "tokenizer": mine["tokenizer"].iloc[0],
                   "vocab_size": int(mine["vocab_size"].iloc[0]), "n": len(values), "test_bpb_mean": values.mean(),
                   "test_bpb_ci_low": low, "test_bpb_ci_high": high, "params": int(mine["params"].iloc[0]),
                   **{column: mine[column].mean() for column in _COST_COLUMNS}}
            row["bytes_per_token"] = row["test_bytes"] / row["test_tokens"]
            diff = values - runs["base"].loc[mine.index, "test_bpb"].to_numpy(float)
            low, high = _t_interval(diff) if name == "other" else (np.nan, np.nan)
            row.update(diff_mean=diff.mean() if name == "other" else np.nan, diff_ci_low=low, diff_ci_high=high)
            rows.append(row)
    return pd.DataFrame(rows)
