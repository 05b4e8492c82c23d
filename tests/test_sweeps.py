"""How the ranking of designs agrees across the values of a swept setting, and the setting as a factor of the
effects (rnnsweep.sweeps, rnnsweep.effects). Expectations are recomputed here with scipy and plain sets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from rnnsweep import effects, findings, stats
from rnnsweep.grid import make_runs, stage1_designs
from rnnsweep.sweeps import swept_keys, sweep

SETTINGS = dict(steps=30, batch_size=8, history_size=16, log_every=5, lr=[0.001, 0.003, 0.01], eval_bytes=32)
LRS = SETTINGS["lr"]


def _summary(settings: dict, seed: int = 0, forget_at: dict | None = None) -> pd.DataFrame:
    """Every stage-1 design of one shape at each swept value; its loss a design quality, the rate's effect and noise
    (plus `forget_at[lr]` where the forget gate is on)."""
    rng = np.random.default_rng(seed)
    runs = make_runs(stage1_designs([1], [4]), settings)
    quality = {design: rng.normal(2.0, 0.1) for design in {run.design for run in runs}}
    frame = pd.DataFrame([run.row() for run in runs])
    frame["status"] = "ok"
    loss = [quality[run.design] - 20 * run.settings.lr + rng.normal(0, 0.03) for run in runs]
    if forget_at:
        loss = [y + forget_at[run.settings.lr] * run.design.use_forget_gate for y, run in zip(loss, runs)]
    frame["min_loss"] = loss
    return frame


def test_each_pair_of_values_gives_spearman_its_interval_and_the_shared_top():
    summary = _summary(SETTINGS)
    table = sweep(summary)
    assert swept_keys(summary) == ["lr"] and len(table) == 3
    by_lr = {}
    for lr in LRS:
        part = summary[summary["lr"] == lr]
        by_lr[lr] = part.set_index(part["config_id"].str[:10])["min_loss"]
    for row in table.itertuples():
        a, b = by_lr[row.value_a], by_lr[row.value_b].loc[by_lr[row.value_a].index]
        assert row.designs == 96 and row.spearman == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
        z, half = math.atanh(row.spearman), 1.959963984540054 * math.sqrt((1 + row.spearman**2 / 2) / 93)
        assert (row.ci_low, row.ci_high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), abs=1e-12)
        top = 9  # floor(0.1 × 96)
        assert row.top == top and row.top_shared == len(set(a.nsmallest(top).index) & set(b.nsmallest(top).index))
        assert (row.best_a, row.best_b) == (a.idxmin(), b.idxmin())


def test_with_two_axes_each_pair_is_compared_with_the_other_held():
    summary = _summary({**SETTINGS, "lr": [0.001, 0.003], "batch_size": [8, 16]})
    table = sweep(summary)
    assert sorted(zip(table["axis"], table["others"])) == [
        ("batch_size", "lr=0.001"), ("batch_size", "lr=0.003"), ("lr", "batch_size=16"), ("lr", "batch_size=8")]
    assert (table["designs"] == 96).all()


def test_a_stage_without_axes_has_no_rows():
    assert sweep(_summary({**SETTINGS, "lr": 0.001})).empty


def test_the_swept_setting_and_its_interaction_with_a_switch_are_terms_of_the_effects():
    """The forget gate lowers the loss by 0.2 at lr 0.001 and not at all at 0.01: the model must say so."""
    summary = _summary(SETTINGS, forget_at={0.001: -0.2, 0.003: -0.1, 0.01: 0.0})
    table = effects.effects(summary).set_index(["response", "term"]).loc["min_loss"]
    assert {"C(lr)[T.0.003]", "C(lr)[T.0.01]"} <= set(table.index)
    low, high = table.loc["C(lr)[T.0.01]:forget_gate", ["ci_low", "ci_high"]]
    assert low < 0.2 < high and low > 0.1  # the forget gate's effect at 0.01 minus at 0.001
    assert table.loc["C(lr)[T.0.003]:forget_gate", "estimate"] == pytest.approx(0.1, abs=0.05)
    assert table.loc["forget_gate", "ci_high"] < -0.1  # its effect at the first rate, 0.001
    within = effects.marginals(summary)["within"]  # an interaction with a setting is no pair of switches to split by
    assert not within.str.contains("lr").any()


def test_a_swept_stage_is_judged_at_each_value_apart():
    summary = _summary(SETTINGS, forget_at={0.001: -0.2, 0.003: -0.1, 0.01: 0.0})
    judged = findings.findings(summary)
    alone = findings.findings(summary[summary["lr"] == 0.003])
    at = [item for item in judged if item.statement.endswith("(at lr=0.003)")]
    assert len(judged) == 3 * len(alone) and [item.statement for item in at] == [f"{a.statement} (at lr=0.003)" for a in alone]
    assert [(item.verdict, item.evidence) for item in at] == [(a.verdict, a.evidence) for a in alone]


def test_stage3_compares_a_finalist_at_each_rate_as_groups_of_their_own():
    """A finalist trained at two rates (a stage 3 that lists lr) is two groups, named by their rate, and no warning."""
    runs = make_runs(stage1_designs([1], [4])[:2], {**SETTINGS, "lr": [0.001, 0.003]}, replicates=3)
    frame = pd.DataFrame([run.row() for run in runs])
    frame["status"], frame["min_loss"] = "ok", [2.0 - run.settings.lr * 100 + run.replicate / 100 for run in runs]
    frame["test_bpb"] = frame["min_loss"] / math.log(2)
    table = stats.group_table(frame)
    assert len(table) == 4 and (table["warning"] == "").all()
    assert table["label"].iloc[0].endswith(" @lr=0.003") and table["label"].nunique() == 4


def test_the_bump_chart_draws_a_swept_stage_and_says_so_of_one_without(tmp_path):
    from rnnsweep import plots  # matplotlib: slow to import

    plots.bump(_summary(SETTINGS), pd.DataFrame(), tmp_path / "swept.png")
    plots.bump(_summary({**SETTINGS, "lr": 0.001}), pd.DataFrame(), tmp_path / "plain.png")
    assert (tmp_path / "swept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "plain.png").stat().st_size
