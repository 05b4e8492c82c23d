"""Analysis tables of a stage's summary: which runs count, factor regression, stage-3 group statistics, design labels."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from rnnsweep.aggregate import SummaryError
from rnnsweep.design import SWITCHES

log = logging.getLogger(__name__)

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


def usable_runs(summary: pd.DataFrame, loss: str = "min_loss") -> pd.DataFrame:
    """The runs a selection or a statistic may use: finished ok with a positive, finite `loss`.

    Diverged runs carry no meaningful loss, and log() needs a positive one. A table of runs without a
    `status` column (one made elsewhere, for `rnnsweep findings`) is judged by its loss alone.
    """
    values = pd.to_numeric(summary[loss], errors="coerce")
    keep = np.isfinite(values) & (values > 0)
    if "status" in summary.columns:
        keep &= summary["status"] == "ok"
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


#: Bootstrap resamples of each design's seeds behind `p_best`, and their fixed seed (the table is reproducible).
BOOTSTRAP, BOOTSTRAP_SEED = 4000, 0


def group_table(summary: pd.DataFrame, rank_by: str = "min_loss") -> pd.DataFrame:
    """Per-design statistics over replicates, ranked by the mean of `rank_by`, with intervals and the best, honestly.

    Diverged replicates are excluded from the statistics (their loss is undefined), so
    `n` counts the replicates that contributed and `seeds` those the stage asked for. For
    min_loss (nats, and in bits per byte) and test_bpb: the mean's 95 % t-interval, the
    difference from the first design's mean, and the Welch test of that difference,
    Holm-corrected over the designs compared. Which design is best is itself uncertain:
    `in_best_set` marks the designs of a 95 % confidence set of the best (`best_set`), and
    `p_best` is each design's bootstrap probability of having the lowest mean, both of `rank_by`. A design
    that is not in the set is worse than the best at the 95 % level; one that is in it is
    not shown to be equal to anything.
    """
    usable = summary.index.isin(usable_runs(summary).index)
    by_design = summary["min_loss"].where(usable).groupby(summary["config_id"])
    ranker = pd.to_numeric(summary[rank_by], errors="coerce").where(usable).groupby(summary["config_id"])
    stats = by_design.agg(mean="mean", std="std", min="min", max="max", n="count")
    config = summary.groupby("config_id")[list(FACTORS)].first()
    table = config.join(stats).join(ranker.mean().rename("rank_mean"))
    table = table.sort_values(["rank_mean", "mean"], na_position="last", kind="stable").drop(columns="rank_mean")
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
    losses = [ranker.get_group(c).dropna().to_numpy(float) for c in table["config_id"]]
    table.insert(table.columns.get_loc("n") + 1, "seeds", summary.groupby("config_id").size()[table["config_id"]].to_numpy())
    table["in_best_set"] = best_set(losses)
    table["p_best"] = p_best(losses)
    table["rank_by"] = rank_by
    table["warning"] = _group_warnings(table)
    return table


def best_set(samples: list[np.ndarray]) -> np.ndarray:
    """Which designs belong to a 95 % confidence set of the one with the lowest mean.

    Design i stays unless some other design j is shown better: a one-sided Welch test of
    mean_i > mean_j at level (1 - LEVEL) / (k - 1), Bonferroni over the k - 1 rivals, rejects.
    The true best is excluded only if one of its k - 1 one-sided tests rejects wrongly, so the
    set covers it with probability at least LEVEL (a conservative form of Hsu's multiple
    comparisons with the best, for unequal variances). A design with fewer than two values
    cannot be shown worse and stays.
    """
    k = len(samples)
    alpha = (1 - LEVEL) / max(k - 1, 1)
    keep = np.ones(k, dtype=bool)
    for i, mine in enumerate(samples):
        for j, other in enumerate(samples):
            if i != j and len(mine) >= 2 and len(other) >= 2 and _shown_worse(mine, other, alpha):
                keep[i] = False
                break
    return keep


def _shown_worse(a: np.ndarray, b: np.ndarray, alpha: float) -> bool:
    """Whether a one-sided Welch test at `alpha` says mean(a) > mean(b)."""
    if a.std() == 0 and b.std() == 0:
        return bool(a.mean() > b.mean())
    return float(scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue) < alpha


def p_best(samples: list[np.ndarray]) -> np.ndarray:
    """Each design's bootstrap probability of the lowest mean: its seeds resampled with replacement, BOOTSTRAP times."""
    usable = [i for i, values in enumerate(samples) if len(values)]
    result = np.zeros(len(samples))
    if not usable:
        return result
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.column_stack([
        samples[i][rng.integers(0, len(samples[i]), size=(BOOTSTRAP, len(samples[i])))].mean(axis=1) for i in usable
    ])
    wins = np.bincount(means.argmin(axis=1), minlength=len(usable))
    result[usable] = wins / BOOTSTRAP
    return result


def _group_warnings(table: pd.DataFrame) -> list[str]:
    """Each design's warning, also logged: the same design under several ids, or fewer usable seeds than asked.

    The same design at other settings (a swept stage: `abc` and `abc@lr=0.003`) is two groups by right.
    """
    same = table.assign(settings=table["config_id"].str.partition("@")[2]).duplicated(subset=[*FACTORS, "settings"], keep=False)
    if same.any():
        log.warning("stage 3 holds the same design under several ids (%s): their seeds are compared as if they were "
                    "different designs", ", ".join(table.loc[same, "config_id"]))
    notes = []
    for row, duplicate in zip(table.itertuples(), same):
        note = ["the same design as another id here"] if duplicate else []
        if row.n < row.seeds:
            log.warning("design %s has %d usable seeds of the %d asked for: its interval is wider, and its rank less sure",
                        row.config_id, row.n, row.seeds)
            note.append(f"{row.n} usable seeds of {row.seeds}")
        notes.append("; ".join(note))
    return notes


def _add_comparison(table: pd.DataFrame, response: str, values: list[np.ndarray]) -> None:
    """Columns <response>_mean, _ci_low, _ci_high, _diff (from the first design), _p_holm."""
    means = [v.mean() if len(v) else np.nan for v in values]
    intervals = [_t_interval(v) for v in values]
    best = values[0] if values else np.array([])
    p = [np.nan] + [_welch_p(best, v) for v in values[1:]]
    table[f"{response}_mean"] = means
    table[f"{response}_ci_low"] = [low for low, _ in intervals]
    table[f"{response}_ci_high"] = [high for _, high in intervals]
    table[f"{response}_diff"] = [m - means[0] for m in means] if values else []
    table[f"{response}_p_holm"] = holm(p)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p values (family-wise error over the finite ones; NaN stays NaN): the i-th smallest of m is
    multiplied by m - i + 1, made non-decreasing, capped at 1. (statsmodels' multipletests gives the same, but
    collects garbage on every call: 0.13 s each in a process that holds torch.)"""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * np.arange(len(order), 0, -1)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


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
    """Compact design name ('L2 S256 F+SG+res new') that fits in legends and table cells; a run of a swept stage
    adds the settings its id names ('L2 S256 F+SG+res new @lr=0.003')."""
    gates = "+".join(abbrev for name, abbrev in _GATE_ABBREV if bool(row[name])) or "nogate"
    sources = "+".join(abbrev for name, abbrev in _SOURCE_ABBREV if bool(row[name])) or "nostate"
    settings = str(row.get("config_id", "")).partition("@")[2]
    return f"L{int(row['n_layers'])} S{int(row['state_size'])} {gates} {sources}" + (" @" + settings.replace("@", " @") if settings else "")



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
