"""Effects with intervals (rnnsweep.effects) and the stage-3 comparison with the best (rnnsweep.stats.group_table).

Summaries are made here with effects planted in them, so the model must find what was put in,
and the intervals and tests are recomputed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from rnnsweep import effects
from rnnsweep.design import SWITCHES
from rnnsweep.grid import stage1_designs
from rnnsweep.stats import best_set, group_table

FORGET, RESIDUAL, FORGET_X_RESIDUAL, WIDE = -0.20, -0.05, 0.08, -0.10


def _planted(seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    """A stage-1 summary of the whole grid, min_loss built from planted effects (switches coded ±1/2)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in stage1_designs([1, 2], [8, 32]):
        f, r = d.use_forget_gate - 0.5, d.use_residual - 0.5
        loss = 2.0 + FORGET * f + RESIDUAL * r + FORGET_X_RESIDUAL * f * r + WIDE * (d.state_size == 32) + rng.normal(0, noise)
        row = {s: getattr(d, s) for s in SWITCHES} | {"n_layers": d.n_layers, "state_size": d.state_size}
        rows.append(row | {"id": d.id, "config_id": d.id, "status": "ok", "min_loss": loss, "valid_bpb": loss / math.log(2)})
    return pd.DataFrame(rows)


def test_the_model_finds_the_planted_effects_inside_their_intervals():
    table = effects.effects(_planted()).set_index(["response", "term"])
    for term, planted in (("forget_gate", FORGET), ("residual", RESIDUAL), ("forget_gate:residual", FORGET_X_RESIDUAL),
                          ("C(state_size)[T.32]", WIDE)):
        row = table.loc[("min_loss", term)]
        assert row["ci_low"] < planted < row["ci_high"], term
        assert row["ci_high"] < 0 or row["ci_low"] > 0, term  # clearly not zero
        assert row["estimate_bpb"] == pytest.approx(row["estimate"] / math.log(2))
        assert table.loc[("valid_bpb", term), "estimate"] == pytest.approx(row["estimate"] / math.log(2), rel=1e-9)
    unplanted = table.loc[("min_loss", "input_gate")]
    assert unplanted["ci_low"] < 0 < unplanted["ci_high"]
    assert ("min_loss", "new_state:old_state") not in table.index  # a cell never lacks both: not estimable


def test_anova_ranks_the_planted_terms_first_by_partial_eta_squared():
    table = effects.anova(_planted())
    mine = table.loc[table["response"] == "min_loss"].set_index("term")
    eta = mine["partial_eta_sq"]
    assert eta.index[0] == "forget_gate" and eta.index[-1] == "Residual" and math.isnan(eta["Residual"])
    assert set(eta.index[1:4]) == {"C(state_size)", "residual", "forget_gate:residual"}
    terms = mine.drop("Residual")
    np.testing.assert_allclose(terms["partial_eta_sq"], terms["sum_sq"] / (terms["sum_sq"] + mine.loc["Residual", "sum_sq"]))
    assert (table["p_value"].dropna() <= 1).all()


def test_too_few_runs_give_no_model():
    assert effects.effects(_planted().head(10)).empty and effects.anova(_planted().head(10)).empty


def _stage3(means: list[float], n: int = 6, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    designs = stage1_designs([1], [8])[: len(means)]
    rows = []
    for d, mean in zip(designs, means):
        for rep in range(n):
            loss = mean + rng.normal(0, 0.02)
            row = {s: getattr(d, s) for s in SWITCHES} | {"n_layers": 1, "state_size": 8, "config_id": d.id}
            rows.append(row | {"id": f"{d.id}-r{rep}", "status": "ok", "min_loss": loss, "test_bpb": loss / math.log(2) + 0.1})
    return pd.DataFrame(rows)


def test_group_intervals_and_holm_welch_comparisons_with_the_best():
    summary = _stage3([2.00, 2.005, 2.30, 2.50])
    table = group_table(summary)
    assert list(table["in_best_set"]) == [True, True, False, False]
    assert table["p_best"].sum() == pytest.approx(1.0) and table["p_best"].iloc[2:].max() == 0
    samples = [summary.loc[summary["config_id"] == c, "min_loss"].to_numpy() for c in table["config_id"]]
    for row, values in zip(table.itertuples(), samples):
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        assert row.min_loss_ci_low == pytest.approx(values.mean() - half)
        assert row.min_loss_ci_high == pytest.approx(values.mean() + half)
        assert row.min_loss_diff == pytest.approx(values.mean() - samples[0].mean())
    # Welch's p by hand, then Holm: the i-th smallest of m is multiplied by m - i, kept monotone, capped at 1.
    raw = []
    for values in samples[1:]:
        a, b = samples[0], values
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        raw.append(2 * scipy_stats.t.sf(abs(a.mean() - b.mean()) / math.sqrt(va + vb), dof))
    order = np.argsort(raw)
    holm, running = np.empty(len(raw)), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(raw) - i) * raw[k]))
        holm[k] = running
    assert math.isnan(table["min_loss_p_holm"].iloc[0])
    np.testing.assert_allclose(table["min_loss_p_holm"].iloc[1:], holm, rtol=1e-9)
    assert table["test_bpb_mean"].tolist() == pytest.approx([v.mean() / math.log(2) + 0.1 for v in samples])
    assert table["mean_bpb"].tolist() == pytest.approx([v.mean() / math.log(2) for v in samples])


def test_a_design_with_one_usable_replicate_has_no_interval_and_stays_a_contender():
    summary = _stage3([2.0, 2.3], n=3)
    second = summary["config_id"] == summary["config_id"].iloc[-1]
    summary.loc[second & (summary.index < len(summary) - 1), "status"] = "diverged"
    row = group_table(summary).iloc[1]
    assert row["n"] == 1 and math.isnan(row["min_loss_ci_low"]) and math.isnan(row["min_loss_p_holm"])
    assert row["in_best_set"] and row["seeds"] == 3


# --------------------------------------------------------------------------- robust errors, marginal and conditional contrasts

#: Planted on the study's incomplete grid (no cell without new and old state; narrow cells only with the residual):
#: a residual × new-state interaction as large as the main effects, and noise whose spread depends on the design.
NEW, NEW_X_RESIDUAL = -0.15, 0.20


def _heteroskedastic(seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A stage-1 summary with planted effects and noise 5x larger where the residual is off; and the noiseless losses."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for d in stage1_designs([1, 2], [8, 32]):
        f, r, n = d.use_forget_gate - 0.5, d.use_residual - 0.5, d.use_new_state - 0.5
        mean = 2.0 + FORGET * f + RESIDUAL * r + NEW * n + NEW_X_RESIDUAL * n * r + WIDE * (d.state_size == 32)
        loss = mean + rng.normal(0, 0.01 if d.use_residual else 0.05)
        row = {s: getattr(d, s) for s in SWITCHES} | {"n_layers": d.n_layers, "state_size": d.state_size}
        rows.append(row | {"id": d.id, "config_id": d.id, "status": "ok", "min_loss": loss, "valid_bpb": loss / math.log(2)})
        truth.append(mean)
    return pd.DataFrame(rows), np.array(truth)


def test_effects_have_hc3_intervals_and_holm_p_recomputed_by_hand():
    summary, _ = _heteroskedastic(3)
    table = effects.effects(summary).set_index(["response", "term"]).loc["min_loss"]
    fit = effects._fit(summary, "min_loss")
    x, e = fit.model.exog, fit.resid.to_numpy()
    bread = np.linalg.inv(x.T @ x)
    leverage = np.einsum("ij,jk,ik->i", x, bread, x)
    cov = bread @ (x.T * (e / (1 - leverage)) ** 2) @ x @ bread
    se = np.sqrt(np.diag(cov))[1:]  # without the intercept
    z = scipy_stats.norm.ppf(0.975)
    np.testing.assert_allclose(table["ci_high"] - table["estimate"], z * se, rtol=1e-9)
    np.testing.assert_allclose(table["p_value"], 2 * scipy_stats.norm.sf(np.abs(table["estimate"] / se)), rtol=1e-9)
    from statsmodels.stats.multitest import multipletests
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p_value"], method="holm")[1], rtol=1e-12)
    ols_se = np.sqrt(np.diag(fit.model.fit().cov_params()))[1:]
    assert not np.allclose(se, ols_se, rtol=0.05)  # the noise is heteroskedastic: robust errors differ


def test_marginal_and_conditional_contrasts_recover_what_was_planted():
    summary, truth = _heteroskedastic(4)
    table = effects.marginals(summary)
    mine = table[table["response"] == "min_loss"].set_index(["switch", "within"])
    for switch, column in (("forget_gate", "use_forget_gate"), ("new_state", "use_new_state"), ("residual", "use_residual")):
        on = summary[column].astype(bool)
        row = mine.loc[(switch, "")]
        assert row["diff"] == pytest.approx(summary.loc[on, "min_loss"].mean() - summary.loc[~on, "min_loss"].mean())
        planted = truth[on.to_numpy()].mean() - truth[~on.to_numpy()].mean()  # over the grid as it is, holes and all
        assert row["ci_low"] < planted < row["ci_high"], switch
    # The model finds the interaction, so the table gives each partner's effect within each level of the other.
    for level, planted in (("off", NEW - NEW_X_RESIDUAL / 2), ("on", NEW + NEW_X_RESIDUAL / 2)):
        row = mine.loc[("new_state", f"residual={level}")]
        assert row["ci_low"] < planted < row["ci_high"], level
    unplanted = mine.loc[("input_gate", "")]
    assert unplanted["ci_low"] < 0 < unplanted["ci_high"] and unplanted["p_holm"] >= unplanted["p_value"]


def test_welch_intervals_of_a_contrast_cover_at_their_nominal_rate():
    """Over 400 draws of unequal groups with unequal spread, the 95 % interval covers the true difference ~95 % of
    the time (the Monte Carlo standard error is 1.1 points)."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(400):
        row = effects.contrast(rng.normal(1.0, 0.3, 12), rng.normal(1.2, 0.05, 40))
        covered += row["ci_low"] < -0.2 < row["ci_high"]
    assert 0.92 <= covered / 400 <= 0.98


def test_the_best_set_covers_the_true_best_at_its_nominal_rate():
    """10 finalists 0.01 nats apart with seed spread 0.02 (as published), 6 seeds each: over 300 draws the set holds
    the truly best design at least 95 % of the time, and it leaves out the clearly worse ones."""
    rng = np.random.default_rng(11)
    means = 2.0 + 0.01 * np.arange(10)
    means[-1] = 2.3  # one clearly worse
    covered = excluded = 0
    for _ in range(300):
        samples = [rng.normal(m, 0.02 + 0.01 * (i % 3), 6) for i, m in enumerate(means)]
        keep = best_set(samples)
        covered += keep[0]
        excluded += not keep[-1]
    assert covered / 300 >= 0.95
    assert excluded == 300


def test_group_table_warns_of_one_design_under_two_ids_and_missing_seeds(caplog):
    summary = _stage3([2.0, 2.1, 2.2], n=4)
    third = summary["config_id"] == summary["config_id"].iloc[-1]
    summary.loc[third, SWITCHES] = summary.loc[summary.index[0], list(SWITCHES)].to_numpy()  # the first design again
    summary.loc[summary.index[1], "status"] = "diverged"
    with caplog.at_level("WARNING"):
        table = group_table(summary)
    assert "same design under several ids" in caplog.text and "3 usable seeds of the 4 asked" in caplog.text
    assert sorted(table["seeds"]) == [4, 4, 4] and sorted(table["n"]) == [3, 4, 4]
    assert sorted(table["warning"]) == ["", "the same design as another id here",
                                        "the same design as another id here; 3 usable seeds of 4"]


def test_holm_equals_statsmodels_with_ties_caps_and_nan_left_out():
    from statsmodels.stats.multitest import multipletests

    from rnnsweep.stats import holm

    rng = np.random.default_rng(4)
    for size in (1, 2, 7, 40):
        p = rng.choice([*rng.uniform(0, 0.2, size), 0.01, 0.5], size)  # ties, and sums above 1
        p[rng.random(size) < 0.2] = np.nan
        finite = np.isfinite(p)
        adjusted = holm(p)
        assert np.array_equal(np.isnan(adjusted), ~finite)
        if finite.any():
            np.testing.assert_allclose(adjusted[finite], multipletests(p[finite], method="holm")[1], rtol=1e-12)
