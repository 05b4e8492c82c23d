"""What ranks runs (`rank_by`, rnnsweep.ranking) and how far the rankings agree, recomputed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from rnnsweep import ranking
from rnnsweep.aggregate import SummaryError, tail_loss
from rnnsweep.grid import make_runs, stage1_designs
from rnnsweep.report import headline
from rnnsweep.select import stage2_units, stage3_units
from rnnsweep.stats import group_table

SETTINGS = dict(steps=50, batch_size=8, history_size=16, log_every=5, lr=1e-3, eval_bytes=32)


def _summary(seed: int = 0, replicates: int = 1) -> pd.DataFrame:
    """Designs of the grid whose three metrics disagree: valid_bpb is min_loss plus noise of its own."""
    rng = np.random.default_rng(seed)
    runs = make_runs(stage1_designs([1, 2], [8]), SETTINGS, replicates=replicates)
    frame = pd.DataFrame([run.row() for run in runs])
    frame["status"] = "ok"
    frame["min_loss"] = rng.uniform(1.5, 2.5, len(frame))
    frame["valid_bpb"] = frame["min_loss"] / math.log(2) + rng.normal(0, 0.3, len(frame))
    frame["tail_loss"] = frame["min_loss"] + rng.uniform(0, 0.2, len(frame))
    frame["test_bpb"] = frame["valid_bpb"] + 0.01
    return frame


def test_tail_loss_is_the_mean_of_the_curves_last_tenth():
    assert tail_loss(list(range(1, 21))) == pytest.approx((19 + 20) / 2)
    assert tail_loss([3.0, 2.0, 1.0]) == 1.0  # at least one point
    assert math.isnan(tail_loss([]))


@pytest.mark.parametrize("rank_by", ranking.METRICS)
def test_selection_follows_rank_by(rank_by):
    summary = _summary()
    by_hand = summary.sort_values([rank_by, "id"])
    keep = math.floor(0.1 * len(summary))
    chosen = [d.id for d, _ in stage2_units(summary, 0.1, 64, 3, [64], rank_by)]
    assert chosen[0] == by_hand["config_id"].iloc[0]
    assert set(by_hand["config_id"].head(keep)) <= set(chosen)
    assert not set(by_hand["config_id"].iloc[keep:]) & set(chosen)  # no design of width 8 ranked below the cut
    assert [d.id for d, _ in stage3_units(summary, 5, rank_by)] == by_hand["config_id"].head(5).tolist()


def test_the_metrics_choose_different_designs_here():
    summary = _summary()
    chosen = {rank_by: tuple(d.id for d, _ in stage3_units(summary, 5, rank_by)) for rank_by in ranking.METRICS}
    assert len(set(chosen.values())) == 3


def test_a_metric_the_summary_lacks_is_refused():
    with pytest.raises(SummaryError, match="tail_loss"):
        ranking.ranked_runs(_summary().drop(columns="tail_loss"), "tail_loss")


def test_headline_and_group_table_rank_by_the_metric():
    summary = _summary(replicates=3)
    means = summary.groupby("config_id")["valid_bpb"].mean().sort_values()
    assert headline({"stage3": summary}, "valid_bpb").loc[0, "best_config_id"] == means.index[0]
    table = group_table(summary, "valid_bpb")
    assert table["config_id"].tolist() == means.index.tolist() and (table["rank_by"] == "valid_bpb").all()


def test_agreement_is_spearman_with_its_interval_and_the_top_tenth_that_changes():
    summary = _summary()
    table = ranking.agreement(summary).set_index(["metric_a", "metric_b"])
    assert list(table.index) == [("min_loss", "valid_bpb"), ("min_loss", "tail_loss"), ("valid_bpb", "tail_loss")]
    row = table.loc[("min_loss", "valid_bpb")]
    rho = scipy_stats.spearmanr(summary["min_loss"], summary["valid_bpb"]).statistic
    n = len(summary)
    half = 1.959963984540054 * math.sqrt((1 + rho**2 / 2) / (n - 3))
    assert row["spearman"] == pytest.approx(rho)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)))
    top = math.floor(0.1 * n)
    best_a = set(summary.nsmallest(top, "min_loss")["config_id"])
    best_b = set(summary.nsmallest(top, "valid_bpb")["config_id"])
    assert row["top"] == top and row["top_changed"] == len(best_a - best_b) > 0
