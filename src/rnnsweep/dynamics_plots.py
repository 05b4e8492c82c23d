"""Figures of a stage's dynamics (rnnsweep.dynamics_stage): one function per PNG (rnnsweep.figures lists them).

Each takes the stage's summary, its dynamics tables by file name and `rank_by`,
and draws from the tables alone: no figure loads a model.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rnnsweep import dynamics
from rnnsweep.design import SWITCHES
from rnnsweep.dynamics_stage import ORBIT_UNITS
from rnnsweep.layout import ATTRACTORS, DYNAMICS, DYNAMICS_CURVES, DYNAMICS_LOSS, ORBITS, TRAJECTORY
from rnnsweep.plots import DESIGN_KEY, DPI, _save
from rnnsweep.ranking import ranked_runs
from rnnsweep.stats import design_label

Tables = dict[str, pd.DataFrame]
ON_OFF = {True: "#c0392b", False: "#7f8c8d"}


def _best(summary: pd.DataFrame, tables: Tables, rank_by: str) -> pd.DataFrame:
    """The runs the attractor search took (the stage's best by rank_by), best first, with their labels."""
    ids = list(dict.fromkeys(tables[ATTRACTORS]["id"]))
    best = ranked_runs(summary, rank_by).set_index("id").loc[ids].reset_index()
    best["label"] = [f"{design_label(row)} ({row[rank_by]:.3f})" for _, row in best.iterrows()]
    return best


def _curve(tables: Tables, run_id: str, measure: str) -> pd.DataFrame:
    curves = tables[DYNAMICS_CURVES]
    return curves[(curves["id"] == run_id) & (curves["measure"] == measure)].sort_values("x")


def memory(summary: pd.DataFrame, tables: Tables, out: Path, rank_by: str) -> None:
    """Left: bpb against the bytes read for the best runs (substituted past solid, zero state dashed) and the byte
    n-grams; right: every run's memory gain against its loss."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=DPI, layout="constrained",
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    best = _best(summary, tables, rank_by)
    history = int(summary["history_size"].iloc[0])
    for i, run in best.iterrows():
        color = f"C{i}"
        for variant, style in (("substituted", "-"), ("zero", "--")):
            curve = _curve(tables, run["id"], f"memory_{variant}")
            left.plot(curve["x"] + 1, curve["value"], style, color=color, marker="o", markersize=3,
                      label=run["label"] if variant == "substituted" else None)
    ngram = _curve(tables, "", "ngram")
    left.plot(ngram["x"][ngram["x"] > 0], ngram["value"][ngram["x"] > 0], "k:s", label="byte n-gram of order k (reads k bytes)")
    left.axhline(ngram["value"].iloc[0], color="k", linestyle=":", linewidth=0.8)
    left.annotate("order 0", (1, ngram["value"].iloc[0]), textcoords="offset points", xytext=(2, 3), fontsize=8)
    left.set_xscale("log", base=2)
    ticks = [2**i for i in range(int(np.log2(history)) + 1)] + [history]
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.minorticks_off()
    left.set_xlabel(f"bytes read: the current byte and k before it (last point: the whole window of {history})")
    left.set_ylabel("held-out bits per byte")
    left.set_title("Memory by context length (solid: past substituted; dashed: state reset to zero)")
    left.legend(fontsize=7, loc="upper right")
    _gain_scatter(right, summary, tables, rank_by)
    _design_key(fig)
    _save(fig, out)


def _design_key(fig: plt.Figure) -> None:
    """What the design labels mean, in a strip kept clear below the axes."""
    fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))
    fig.text(0.01, 0.01, DESIGN_KEY, fontsize=7)


def _gain_scatter(ax: plt.Axes, summary: pd.DataFrame, tables: Tables, rank_by: str) -> None:
    runs = summary.merge(tables[DYNAMICS], on="id")
    ax.scatter(runs["memory_gain_bits"], runs[rank_by], s=6, alpha=0.6, color="C0")
    ax.set_xlabel("memory gain (bits per byte the past is worth)")
    ax.set_ylabel(rank_by)
    row = tables[DYNAMICS_LOSS].set_index("measure").loc["memory_gain_bits"]
    ax.set_title(f"Every run: Spearman rho over {row['designs']} designs {row['spearman']:.2f} "
                 f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]", fontsize=10)


def sensitivity(summary: pd.DataFrame, tables: Tables, out: Path, rank_by: str) -> None:
    """Gradient norm of log p(byte) with respect to the input k bytes back, relative to lag 0, for the best runs."""
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=DPI, layout="constrained")
    runs = tables[DYNAMICS].set_index("id")
    for i, run in _best(summary, tables, rank_by).iterrows():
        curve = _curve(tables, run["id"], "sensitivity")
        values = curve["value"].to_numpy() / max(curve["value"].iloc[0], 1e-300)
        tau = runs.loc[run["id"], "tau_bytes"]
        ax.plot(curve["x"], np.where(values > 0, values, np.nan), color=f"C{i}",
                label=f"{run['label']}: tau {tau:.1f} bytes")
    ax.axhline(dynamics.FLOOR, color="k", linestyle=":", linewidth=0.8)
    ax.annotate("1 % of lag 0", (1, dynamics.FLOOR), xycoords=("axes fraction", "data"), textcoords="offset points",
                xytext=(-60, 3), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("lag k (bytes back)")
    ax.set_ylabel("sensitivity relative to lag 0")
    ax.set_title("How far back the prediction of a byte reaches (backpropagation through the window)")
    ax.legend(fontsize=7)
    _save(fig, out)


def lyapunov(summary: pd.DataFrame, tables: Tables, out: Path, rank_by: str) -> None:
    """The largest Lyapunov exponent of every run against its loss, once per switch, coloured on/off."""
    runs = summary.merge(tables[DYNAMICS], on="id")
    runs = runs[np.isfinite(runs["lyapunov_1"]) & np.isfinite(runs[rank_by])]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.6), dpi=DPI, layout="constrained", sharex=True, sharey=True)
    for ax, switch in zip(axes.flat, SWITCHES):
        for on in (False, True):
            part = runs[runs[switch].astype(bool) == on]
            ax.scatter(part["lyapunov_1"], part[rank_by], s=5, alpha=0.6, color=ON_OFF[on], label="on" if on else "off")
        ax.axvline(0, color="k", linewidth=0.6)
        ax.set_title(switch.removeprefix("use_").replace("_", " "), fontsize=10)
    axes.flat[0].legend(fontsize=8)
    row = tables[DYNAMICS_LOSS].set_index("measure").loc["lyapunov_1"]
    last = axes.flat[-1]
    last.axis("off")
    last.text(0, 0.5, f"Spearman rho, lyapunov_1 and {rank_by}\nover {row['designs']} designs: {row['spearman']:.2f}\n"
              f"95 % [{row['ci_low']:.2f}, {row['ci_high']:.2f}]\n\nbelow 0: the state map contracts\n"
              "(the cell forgets where it started)", fontsize=9, transform=last.transAxes)
    fig.supxlabel("largest Lyapunov exponent of the state map driven by held-out text (nats per byte)")
    fig.supylabel(rank_by)
    _save(fig, out)


def attractors(summary: pd.DataFrame, tables: Tables, out: Path, rank_by: str) -> None:
    """Orbit diagram and state trajectory of the best run; where the best runs' orbits end on a constant input."""
    fig, (orbit_ax, path_ax, end_ax) = plt.subplots(1, 3, figsize=(16, 5.2), dpi=DPI, layout="constrained")
    best = _best(summary, tables, rank_by)
    orbits = tables[ORBITS]
    for unit in range(ORBIT_UNITS):
        part = orbits[orbits["unit"] == unit]
        orbit_ax.scatter(part["input"], part["value"], s=0.5, alpha=0.5, color=f"C{unit}", label=f"unit {unit}")
    orbit_ax.set_xlabel("input byte, held constant")
    orbit_ax.set_ylabel("last-layer state (last steps of each orbit)")
    orbit_ax.set_title(f"Orbit diagram: {best['label'].iloc[0]}", fontsize=10)
    orbit_ax.legend(fontsize=7, markerscale=8)
    path = tables[TRAJECTORY]
    classes = _byte_classes(path["byte"].to_numpy())
    for (name, color), chosen in zip(BYTE_CLASSES.items(), classes):
        path_ax.scatter(path["pc1"][chosen], path["pc2"][chosen], s=5, color=color, label=f"after {name}")
    path_ax.set_xlabel(f"PC 1 ({path['share1'].iloc[0]:.0%} of the variance)")
    path_ax.set_ylabel(f"PC 2 ({path['share2'].iloc[0]:.0%})")
    path_ax.set_title(f"Its state after each of {len(path)} bytes of held-out text", fontsize=10)
    path_ax.legend(fontsize=7, markerscale=2)
    _endings(end_ax, tables[ATTRACTORS], best)
    _design_key(fig)
    _save(fig, out)


#: How the trajectory's points are coloured: by the byte just read.
BYTE_CLASSES = {"a letter": "#2980b9", "a space or newline": "#c0392b", "another byte": "#7f8c8d"}


def _byte_classes(byte: np.ndarray) -> list[np.ndarray]:
    letter = ((byte >= 65) & (byte <= 90)) | ((byte >= 97) & (byte <= 122)) | (byte >= 128)
    space = (byte == 32) | (byte == 10)
    return [letter, space, ~letter & ~space]


def _endings(ax: plt.Axes, table: pd.DataFrame, best: pd.DataFrame) -> None:
    shares = pd.crosstab(table["id"], table["ending"], normalize="index").reindex(columns=dynamics.ENDINGS, fill_value=0)
    shares = shares.loc[best["id"]]
    left = np.zeros(len(shares))
    for ending, color in zip(dynamics.ENDINGS, ("#27ae60", "#f39c12", "#8e44ad")):
        ax.barh(range(len(shares)), shares[ending], left=left, color=color, label=ending)
        left += shares[ending].to_numpy()
    ax.set_yticks(range(len(shares)), best["label"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of (random start, input byte) pairs")
    inputs = ", ".join(map(str, sorted(table["input"].unique())))
    ax.set_title(f"Where orbits end on constant input (bytes {inputs})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
