"""What each part of the cell does to the loss, with 95 % intervals: marginal contrasts and a linear model.

Two views, because the grid is not a full factorial (no cell lacks both new
and old state; narrow cells only with the residual), so no one number per
switch is "its effect":

* `marginals`: the mean response of the runs with a part against the runs
  without it, as the published write-up computed it, with the difference's
  Welch 95 % interval; and where the regression finds an interaction of two
  switches (Holm p < 0.05), each one's on − off difference within each level
  of the other. These are averages over the designs the grid holds, weighted
  as the grid holds them.
* `effects`: a linear model with every switch's main effect, every two-way
  interaction of switches the stage's designs can tell apart, and depth and
  width as categories; where the stage sweeps a training setting (an axis,
  rnnsweep.sweeps), that setting as a category too, with its interaction with
  every switch: does a part help more at one learning rate than at another? Switches are coded -1/2 (off) and +1/2 (on), so a
  switch's coefficient is its on − off change where every other switch sits
  at its coded midpoint and depth and width at their first level: a
  contrast *conditional* on the model, which in this incomplete grid
  compares particular cells, not an average over the runs. Standard errors
  are heteroskedasticity-robust (HC3), since loss residuals are skewed and
  of unequal spread, and every p value has a Holm-adjusted twin over the
  terms of its response.

`anova` gives each term's Type II sum of squares with its robust F and p, and
its partial eta squared, SS_term / (SS_term + SS_residual): how much of what
the rest of the model leaves unexplained the term explains. These do not add
up to 1 (Type II sums of squares of an unbalanced design do not add up to
the total), and they are not shares of the variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations, product

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.anova import anova_lm

from rnnsweep.design import SWITCHES
from rnnsweep.stats import holm, usable_runs
from rnnsweep.sweeps import swept_keys

#: Responses modelled, with the factor that turns them into bits per byte.
RESPONSES: dict[str, float] = {"min_loss": 1 / math.log(2), "valid_bpb": 1.0}
LEVEL = 0.95
#: The covariance of the coefficients: heteroskedasticity-robust, for residuals of unequal spread.
COVARIANCE = "HC3"


def _short(switch: str) -> str:
    return switch.removeprefix("use_")


def _frame(summary: pd.DataFrame, response: str) -> pd.DataFrame:
    """The usable runs with a finite response: switches coded ±1/2 under their short names, depth and width."""
    runs = usable_runs(summary)
    runs = runs.loc[np.isfinite(pd.to_numeric(runs[response], errors="coerce"))]
    frame = pd.DataFrame({_short(s): runs[s].astype(float).to_numpy() - 0.5 for s in SWITCHES})
    frame["n_layers"] = runs["n_layers"].astype(int).to_numpy()
    frame["state_size"] = runs["state_size"].astype(int).to_numpy()
    for key in swept_keys(summary):
        frame[key] = runs[key].to_numpy()
    frame["y"] = runs[response].astype(float).to_numpy()
    return frame


def _terms(frame: pd.DataFrame) -> list[str]:
    """Formula terms in order, each kept only if it adds a dimension the data can estimate."""
    candidates = [_short(s) for s in SWITCHES if frame[_short(s)].nunique() > 1]
    candidates += [f"C({f})" for f in ("n_layers", "state_size") if frame[f].nunique() > 1]
    switches = [c for c in candidates if not c.startswith("C(")]
    swept = [f"C({key})" for key in frame.columns.intersection(swept_keys(frame))]
    candidates += swept
    candidates += [f"{a}:{b}" for a, b in combinations(switches, 2)]
    candidates += [f"{axis}:{switch}" for axis in swept for switch in switches]
    kept: list[str] = []
    columns = [np.ones(len(frame))]  # independent by construction: a term joins only if all its columns add rank
    for term in candidates:
        added = _columns(frame, term)
        if np.linalg.matrix_rank(np.column_stack(columns + added)) == len(columns) + len(added):
            kept.append(term)
            columns += added
    return kept


def _columns(frame: pd.DataFrame, term: str) -> list[np.ndarray]:
    """The design-matrix columns of one term: a category's levels but its first, a product's every combination."""
    parts = [_part_columns(frame, part) for part in term.split(":")]
    return [np.prod(combination, axis=0) for combination in product(*parts)]


def _part_columns(frame: pd.DataFrame, part: str) -> list[np.ndarray]:
    if part.startswith("C("):
        values = frame[part[2:-1]]
        return [(values == level).to_numpy(float) for level in sorted(values.unique())[1:]]
    return [frame[part].to_numpy(float)]


def _fit(summary: pd.DataFrame, response: str):
    """The fitted model of one response, or None where the runs cannot support one (absent, too few, or constant)."""
    if response not in summary.columns:
        return None
    frame = _frame(summary, response)
    terms = _terms(frame)
    if not terms or len(frame) <= len(terms) + 2 or frame["y"].std() == 0:
        return None
    return smf.ols("y ~ " + " + ".join(terms), data=frame).fit(cov_type=COVARIANCE)


def effects(summary: pd.DataFrame, responses: Mapping[str, float] = RESPONSES) -> pd.DataFrame:
    """Each term's estimate with its 95 % interval and p value, per response, in its unit and in bits per byte
    (`responses` maps each modelled column to its factor to bits per byte; NaN where it is no loss)."""
    rows = []
    for response, to_bpb in responses.items():
        fit = _fit(summary, response)
        if fit is None:
            continue
        low, high = fit.conf_int(alpha=1 - LEVEL).T.to_numpy()
        for i, term in enumerate(fit.params.index):
            if term == "Intercept":
                continue
            estimate = fit.params.iloc[i]
            rows.append({
                "response": response, "term": term, "estimate": estimate, "ci_low": low[i], "ci_high": high[i],
                "p_value": fit.pvalues.iloc[i], "estimate_bpb": estimate * to_bpb, "ci_low_bpb": low[i] * to_bpb,
                "ci_high_bpb": high[i] * to_bpb, "n": int(fit.nobs),
            })
    columns = ["response", "term", "estimate", "ci_low", "ci_high", "p_value", "estimate_bpb", "ci_low_bpb", "ci_high_bpb", "n"]
    table = pd.DataFrame(rows, columns=columns)
    table.insert(6, "p_holm", table.groupby("response")["p_value"].transform(holm) if len(table) else [])
    return table


def anova(summary: pd.DataFrame) -> pd.DataFrame:
    """Each term's Type II sum of squares, robust F and p, and partial eta squared, per response."""
    rows = []
    for response in RESPONSES:
        fit = _fit(summary, response)
        if fit is None:
            continue
        table = anova_lm(fit, typ=2, robust=COVARIANCE.lower())
        residual = float(table.loc["Residual", "sum_sq"])
        for term, row in table.iterrows():
            eta = np.nan if term == "Residual" else row["sum_sq"] / (row["sum_sq"] + residual)
            rows.append({
                "response": response, "term": term, "df": row["df"], "sum_sq": row["sum_sq"],
                "partial_eta_sq": eta, "F": row["F"], "p_value": row["PR(>F)"],
            })
    frame = pd.DataFrame(rows, columns=["response", "term", "df", "sum_sq", "partial_eta_sq", "F", "p_value"])
    order = ["response", "partial_eta_sq"]
    return frame.sort_values(order, ascending=[True, False], kind="stable", na_position="last").reset_index(drop=True)


#: Columns of the marginal contrasts: a part on against off, over all runs or within one level of another part.
MARGINAL_COLUMNS = ["response", "switch", "within", "mean_on", "mean_off", "n_on", "n_off", "diff", "ci_low", "ci_high",
                    "p_value", "p_holm"]


def contrast(on: np.ndarray, off: np.ndarray) -> dict[str, float]:
    """Mean of `on` minus mean of `off`, with the Welch 95 % interval and two-sided p (NaN with fewer than 2 each)."""
    row = {"mean_on": on.mean() if len(on) else np.nan, "mean_off": off.mean() if len(off) else np.nan,
           "n_on": len(on), "n_off": len(off)}
    row["diff"] = row["mean_on"] - row["mean_off"]
    if len(on) < 2 or len(off) < 2 or (on.std() == 0 and off.std() == 0):
        return row | {"ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    test = scipy_stats.ttest_ind(on, off, equal_var=False)
    interval = test.confidence_interval(LEVEL)
    return row | {"ci_low": float(interval.low), "ci_high": float(interval.high), "p_value": float(test.pvalue)}


def _switch_contrasts(frame: pd.DataFrame, response: str, switch: str, within: str = "") -> dict:
    on, off = frame.loc[frame[switch] > 0, "y"].to_numpy(), frame.loc[frame[switch] < 0, "y"].to_numpy()
    return {"response": response, "switch": switch, "within": within, **contrast(on, off)}


def marginals(summary: pd.DataFrame, effects_table: pd.DataFrame | None = None,
              responses: Mapping[str, float] = RESPONSES) -> pd.DataFrame:
    """Each switch's marginal on − off difference of the mean response, and, for every interaction the model
    finds (Holm p < 1 − LEVEL), each partner's on − off difference within each level of the other."""
    table = effects(summary, responses) if effects_table is None else effects_table
    rows = []
    for response in (r for r in responses if r in summary.columns):
        frame = _frame(summary, response)
        switches = [_short(s) for s in SWITCHES if frame[_short(s)].nunique() > 1]
        main = [_switch_contrasts(frame, response, s) for s in switches]
        for row, adjusted in zip(main, holm([r["p_value"] for r in main])):
            row["p_holm"] = adjusted
        rows += main
        pairs = table["term"].map(lambda term: ":" in term and set(term.split(":")) <= set(switches))  # not a setting's
        found = table[(table["response"] == response) & pairs & (table["p_holm"] < 1 - LEVEL)]
        for term in found["term"]:
            pair = term.split(":")
            within = []
            for switch, partner in (pair, pair[::-1]):
                for level, name in ((-0.5, "off"), (0.5, "on")):
                    within.append(_switch_contrasts(frame[frame[partner] == level], response, switch, f"{partner}={name}"))
            for row, adjusted in zip(within, holm([r["p_value"] for r in within])):
                row["p_holm"] = adjusted
            rows += within
    return pd.DataFrame(rows, columns=MARGINAL_COLUMNS)
