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
from rnnsweep.grid import SWITCHES, stage1_designs
from rnnsweep.stats import group_table

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


def test_anova_ranks_the_planted_terms_first():
    table = effects.anova(_planted())
    shares = table.loc[table["response"] == "min_loss"].set_index("term")["share"]
    assert shares.index[0] == "forget_gate"
    assert set(shares.index[1:4]) == {"C(state_size)", "residual", "forget_gate:residual"}
    assert shares.sum() == pytest.approx(1.0)
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
    assert list(table["same_as_best"]) == [True, True, False, False]
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
    assert row["same_as_best"]
