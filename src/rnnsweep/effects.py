"""What each part of the cell does to the loss, with 95 % intervals: a linear model of the switches.

The model has every switch's main effect, every two-way interaction of the
switches that the stage's designs can tell apart, and depth and width as
categories. Switches are coded -1/2 (off) and +1/2 (on), so a switch's
coefficient is its effect averaged over the other switches: the change in the
response when it is switched on. Two-way interactions that the grid cannot
estimate (new state × old state: a cell never lacks both) are left out, as is
any term that is constant in the stage.

`effects` gives each coefficient with its 95 % confidence interval and p
value; `anova` gives each term's share of the variance with F and p (Type II
sums of squares), the importance measure of large RNN studies.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from rnnsweep.grid import SWITCHES
from rnnsweep.stats import usable_runs

#: Responses modelled, with the factor that turns them into bits per byte.
RESPONSES: dict[str, float] = {"min_loss": 1 / math.log(2), "valid_bpb": 1.0}
LEVEL = 0.95


def _short(switch: str) -> str:
    return switch.removeprefix("use_")


def _frame(summary: pd.DataFrame, response: str) -> pd.DataFrame:
    """The usable runs with a finite response: switches coded ±1/2 under their short names, depth and width."""
    runs = usable_runs(summary)
    runs = runs.loc[np.isfinite(pd.to_numeric(runs[response], errors="coerce"))]
    frame = pd.DataFrame({_short(s): runs[s].astype(float).to_numpy() - 0.5 for s in SWITCHES})
    frame["n_layers"] = runs["n_layers"].astype(int).to_numpy()
    frame["state_size"] = runs["state_size"].astype(int).to_numpy()
    frame["y"] = runs[response].astype(float).to_numpy()
    return frame


def _terms(frame: pd.DataFrame) -> list[str]:
    """Formula terms in order, each kept only if it adds a dimension the data can estimate."""
    candidates = [_short(s) for s in SWITCHES if frame[_short(s)].nunique() > 1]
    candidates += [f"C({f})" for f in ("n_layers", "state_size") if frame[f].nunique() > 1]
    switches = [c for c in candidates if not c.startswith("C(")]
    candidates += [f"{a}:{b}" for a, b in combinations(switches, 2)]
    kept: list[str] = []
    columns = [np.ones(len(frame))]  # independent by construction: a term joins only if all its columns add rank
    for term in candidates:
        added = _columns(frame, term)
        if np.linalg.matrix_rank(np.column_stack(columns + added)) == len(columns) + len(added):
            kept.append(term)
            columns += added
    return kept


def _columns(frame: pd.DataFrame, term: str) -> list[np.ndarray]:
    """The design-matrix columns of one term (treatment coding for a category)."""
    if term.startswith("C("):
        values = frame[term[2:-1]]
        return [(values == level).to_numpy(float) for level in sorted(values.unique())[1:]]
    return [np.prod([frame[name].to_numpy() for name in term.split(":")], axis=0)]


def _fit(summary: pd.DataFrame, response: str):
    """The fitted model of one response, or None where the runs cannot support one (too few, or constant)."""
    frame = _frame(summary, response)
    terms = _terms(frame)
    if not terms or len(frame) <= len(terms) + 2 or frame["y"].std() == 0:
        return None
    return smf.ols("y ~ " + " + ".join(terms), data=frame).fit()


def effects(summary: pd.DataFrame) -> pd.DataFrame:
    """Each term's estimate with its 95 % interval and p value, per response, in its unit and in bits per byte."""
    rows = []
    for response, to_bpb in RESPONSES.items():
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
    return pd.DataFrame(rows, columns=columns)


def anova(summary: pd.DataFrame) -> pd.DataFrame:
    """Each term's share of the response's variance (Type II sums of squares), with its F and p, per response."""
    rows = []
    for response in RESPONSES:
        fit = _fit(summary, response)
        if fit is None:
            continue
        table = anova_lm(fit, typ=2)
        total = float(table["sum_sq"].sum())
        for term, row in table.iterrows():
            rows.append({
                "response": response, "term": term, "df": row["df"], "sum_sq": row["sum_sq"],
                "share": row["sum_sq"] / total, "F": row["F"], "p_value": row["PR(>F)"],
            })
    frame = pd.DataFrame(rows, columns=["response", "term", "df", "sum_sq", "share", "F", "p_value"])
    return frame.sort_values(["response", "share"], ascending=[True, False], kind="stable").reset_index(drop=True)
