"""Tests for rnnsweep.stats and rnnsweep.plots on synthetic but realistic sweep results."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from rnnsweep import figures, plots, stats
from rnnsweep.layout import STAGE_FIGURES
from rnnsweep.stats import FACTORS, SWITCHES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGE3_FIGURES = set(STAGE_FIGURES["stage3"])
LOG_EVERY = 50
N_POINTS = 40


def _valid_switches() -> list[dict[str, bool]]:
    """The 96 switch combinations that keep some state path (new or old state)."""
    combos = [dict(zip(SWITCHES, bits)) for bits in itertools.product([False, True], repeat=7)]
    return [c for c in combos if c["use_new_state"] or c["use_old_state"]]


def _planted_loss(design: dict[str, object], rng: np.random.Generator) -> float:
    """min_loss with known effects: the forget gate and depth help, noise on top."""
    log_loss = (np.log(2.6) - 0.25 * design["use_forget_gate"] - 0.06 * design["use_residual"]
                - 0.05 * design["n_layers"] - 0.06 * (design["state_size"] > 8)
                + 0.1 * (not design["use_forget_gate"] and not design["use_new_state"])
                + rng.normal(0, 0.05))
    return float(np.exp(log_loss))


def _run_row(run_id: str, config_id: str, design: dict[str, object], replicate: int,
             loss: float) -> dict[str, object]:
    """One summary row following the data contract."""
    return {
        "id": run_id, "config_id": config_id, **design, "replicate": replicate,
        "seed": 1000 + replicate, "steps": LOG_EVERY * N_POINTS, "batch_size": 32,
        "history_size": 64, "log_every": LOG_EVERY, "lr": 3e-3, "status": "ok",
        "min_loss": loss, "final_loss": loss + 0.01, "valid_bpb": loss / np.log(2) + 0.02, "test_bpb": loss / np.log(2) + 0.03,
        "params": 1000 * design["state_size"] * design["n_layers"], "wall_s": 60.0,
        "steps_per_s": 33.3, "device": "cpu",
    }


def _curve(run_id: str, min_loss: float, rng: np.random.Generator) -> pd.DataFrame:
    """An EMA curve decaying from the uniform loss to min_loss at a run-specific speed, noisy."""
    steps = LOG_EVERY * np.arange(1, N_POINTS + 1)
    decay = np.exp(-steps / (rng.uniform(0.08, 0.2) * steps[-1]))
    loss = min_loss + (np.log(256) - min_loss) * decay + np.abs(rng.normal(0, 0.015, N_POINTS))
    return pd.DataFrame({"id": run_id, "step": steps, "ema_loss": np.maximum(loss, min_loss)})


def _diverge(summary: pd.DataFrame, curves: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Mark runs diverged: NaN metrics in the summary, curves cut short ending in NaN and inf."""
    rows = summary["id"].isin(ids)
    summary.loc[rows, "status"] = "diverged"
    summary.loc[rows, ["min_loss", "final_loss", "valid_bpb", "test_bpb"]] = np.nan
    short = curves["id"].isin(ids) & (curves["step"] > 10 * LOG_EVERY)
    tail = curves["id"].isin(ids) & curves["step"].isin([9 * LOG_EVERY, 10 * LOG_EVERY])
    curves.loc[tail, "ema_loss"] = [np.nan, np.inf] * len(ids)
    return curves.loc[~short].reset_index(drop=True)


def make_stage1(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """432 stage-1 runs: small state sizes only with the residual path, two of them diverged."""
    rng = np.random.default_rng(seed)
    rows, curves = [], []
    for switches in _valid_switches():
        for n_layers, state_size in itertools.product([1, 2, 3], [8, 32]):
            if state_size < 32 and not switches["use_residual"]:
                continue
            design = {**switches, "n_layers": n_layers, "state_size": state_size}
            run_id = f"s1-{len(rows):04d}"
            loss = _planted_loss(design, rng)
            rows.append(_run_row(run_id, run_id, design, 0, loss))
            curves.append(_curve(run_id, loss, rng))
    summary = pd.DataFrame(rows)
    curves_df = _diverge(summary, pd.concat(curves, ignore_index=True), ["s1-0007", "s1-0100"])
    return summary, curves_df


def make_stage3(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """10 designs x 10 replicates with distinct but overlapping replicate distributions."""
    rng = np.random.default_rng(seed)
    designs = rng.choice(_valid_switches(), size=10, replace=False)
    rows, curves = [], []
    for g, switches in enumerate(designs):
        design = {**switches, "n_layers": 3, "state_size": [256, 512][g % 2]}
        for rep in range(10):
            run_id = f"g{g:02d}-r{rep}"
            loss = 1.45 + 0.008 * g + rng.normal(0, 0.01)
            rows.append(_run_row(run_id, f"g{g:02d}", design, rep, loss))
            curves.append(_curve(run_id, loss, rng))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


@pytest.fixture(scope="module")
def stage1() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_stage1()


@pytest.fixture(scope="module")
def stage3() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_stage3()


def _assert_png(path: Path) -> None:
    """A complete PNG that matplotlib reads back as a non-empty image, with no temp leftovers."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = plt.imread(path)
    assert image.shape[0] > 0 and image.shape[1] > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_stage1_fixture_shape(stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary, curves = stage1
    assert len(summary) == 432
    assert (summary["status"] == "diverged").sum() == 2
    assert set(curves["id"]) == set(summary["id"])


def test_regression_recovers_planted_effects(stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    table = stats.regression(stage1[0]).set_index("term")
    assert list(table.index) == [*FACTORS, "R2"]
    assert table.loc["use_forget_gate", "coef"] < -0.5
    assert abs(table.loc["use_input_gate", "coef"]) < 0.1
    assert 0 < table.loc["R2", "coef"] <= 1
    assert (table["n"] == 430).all()


def test_regression_constant_factor_is_nan(stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary = stage1[0].assign(n_layers=3)
    table = stats.regression(summary).set_index("term")
    assert np.isnan(table.loc["n_layers", "coef"])
    assert table.drop(index="n_layers")["coef"].notna().all()


def test_group_table_matches_pandas(stage3: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary = stage3[0]
    table = stats.group_table(summary)
    expected = summary.groupby("config_id")["min_loss"].agg(["mean", "std", "min", "max", "count"])
    got = table.set_index("config_id").loc[expected.index]
    np.testing.assert_allclose(got["mean"], expected["mean"])
    np.testing.assert_allclose(got["std"], expected["std"])
    np.testing.assert_array_equal(got["n"], expected["count"])
    assert list(table["rank"]) == list(range(1, 11))
    assert table["mean"].is_monotonic_increasing
    assert set(FACTORS) <= set(table.columns)


def test_group_table_skips_diverged_replicates(stage3: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary = stage3[0].copy()
    summary.loc[summary["id"] == "g03-r0", "status"] = "diverged"
    row = stats.group_table(summary).set_index("config_id").loc["g03"]
    kept = summary.loc[(summary["config_id"] == "g03") & (summary["status"] == "ok"), "min_loss"]
    assert row["n"] == 9
    assert row["mean"] == pytest.approx(kept.mean())


def test_design_labels_are_short_and_distinct(stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    labels = [stats.design_label(row) for _, row in stage1[0].iterrows()]
    assert max(map(len, labels)) < 40
    assert len(set(labels)) == len(labels)
    assert stats.design_label({**dict.fromkeys(SWITCHES, False), "use_forget_gate": True,
                               "use_state_gate": True, "use_residual": True,
                               "use_new_state": True, "n_layers": 2, "state_size": 256}) \
        == "L2 S256 F+SG+res new"


@pytest.mark.parametrize("figure", figures.STAGE_FIGURES, ids=lambda figure: figure.name)
def test_every_figure_writes_png(figure: figures.Figure, tmp_path: Path,
                                 stage1: tuple[pd.DataFrame, pd.DataFrame],
                                 stage3: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary, curves = stage3 if figure.name in STAGE3_FIGURES else stage1
    out = tmp_path / "nested" / f"{figure.name}.png"
    figure.drawer()(summary, curves, out, threshold=1.9, best_curves=5, smooth=10)
    _assert_png(out)


def test_swarm_below_without_any_run_below(tmp_path: Path,
                                           stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    out = tmp_path / "below.png"
    plots.swarm_below(*stage1, out, threshold=0.5)
    _assert_png(out)


def test_smoothing_follows_a_trend_to_both_ends_without_a_jump() -> None:
    trend = np.linspace(5.0, 2.0, 40)
    np.testing.assert_allclose(plots._smooth(trend, 10), trend)
    noisy = trend + 0.1 * (-1.0) ** np.arange(40)  # the raw last point sits 0.1 off the trend
    smoothed = plots._smooth(noisy, 10)
    assert abs(smoothed[-1] - trend[-1]) < 0.03 and abs(smoothed[0] - trend[0]) < 0.03
    assert np.abs(np.diff(smoothed)).max() < 0.2  # no step anywhere, ends included


def _baselines(bpb: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"method": [f"order-{k} n-gram" for k in range(len(bpb))], "kind": "n-gram",
                         "order": range(len(bpb)), "bytes": 1000, "bpb": bpb,
                         "nats": np.array(bpb) * np.log(2), "data": "d"})


def test_the_swarm_scale_holds_the_best_baseline_far_below_the_runs(
        tmp_path: Path, stage1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    runs = stats.usable_runs(stage1[0])
    low, high = plots._swarm_ylim(runs, plots._best_baseline(_baselines([3.0, 0.5, 1.0])))
    assert low < 0.5 * np.log(2) < runs["min_loss"].min() and high > runs["min_loss"].max()
    assert plots._swarm_ylim(runs, None) is None
    plots.swarm_all(*stage1, tmp_path / "swarm.png", threshold=1.9, baselines=_baselines([3.0, 0.5]))
    _assert_png(tmp_path / "swarm.png")


def test_the_comparison_takes_each_stages_run_chosen_on_validation(
        tmp_path: Path, stage1: tuple[pd.DataFrame, pd.DataFrame], stage3: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary = stage1[0].copy()
    summary["test_bytes"] = 1000
    summary.loc[summary["id"] == "s1-0005", ["valid_bpb", "test_bpb"]] = [0.1, 9.0]  # best on valid, worst on test
    summary.loc[summary["id"] == "s1-0006", ["valid_bpb", "test_bpb"]] = [9.0, 0.1]
    assert plots._best_by_validation(summary)["id"] == "s1-0005"
    out = tmp_path / "baselines.png"
    plots.compare(_baselines([4.0, 3.0]), {"stage1": summary, "stage3": stage3[0].assign(test_bytes=900)}, out)
    _assert_png(out)
