"""Figures of the sweep: one function per PNG, collected in FIGURES.

Every figure function has the signature ``(summary, curves, out, **options) -> None``, the
options being the profile's `plots` block, so the workflow drives all of them the same way;
options a figure does not use are ignored.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from rnnsweep.fsutil import atomic_open  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from rnnsweep import effects, ranking, stats, sweeps  # noqa: E402
from rnnsweep.stats import FACTORS, design_label, usable_runs  # noqa: E402

DPI = 120
#: What the design labels in legends and ticks mean.
DESIGN_KEY = ("Designs: L layers, S state size; gates I input, F forget, O output, SG state (nogate: none); "
              "res residual path; new / old: the output reads the new and/or the old state")
UNIFORM_LOSS = math.log(256)  # nats/byte of a uniform guess over bytes: the untrained baseline
SWARM_SIZE = 2.5  # marker size for hundreds of runs
SPARSE_SWARM_SIZE = 5.0  # for a few points per column: larger than the mean bar is thick
SPARSE_SWARM_POINTS = 40
MIN_SWARM_SIZE = 0.6
# seaborn's message when a swarm is too dense; we shrink markers instead of printing it.
_SWARM_WARNING = r".*points cannot be placed"
_TAIL_FRACTION = 0.25  # stage-3 plots focus y on the last 75 % of training, where designs differ
_EMPTY_YLIM = (0.0, UNIFORM_LOSS)  # when no finite loss exists, still render a labelled, empty plot


# ---------------------------------------------------------------------------- helpers


def _save(fig: Figure, out: Path) -> None:
    """Write atomically so a killed job never leaves a half-written PNG; always close the figure."""
    try:
        with warnings.catch_warnings(), atomic_open(Path(out), "wb") as handle:
            warnings.filterwarnings("ignore", message=_SWARM_WARNING, category=UserWarning)
            fig.savefig(handle, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _message_figure(out: Path, title: str, message: str) -> None:
    """Render a placeholder so the workflow still gets its PNG when there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(7, 3), dpi=DPI, layout="constrained")
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_title(title)
    _save(fig, out)


def _finite_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Drop NaN/inf points: diverged runs end in them and they break limits and log axes."""
    loss = pd.to_numeric(curves["ema_loss"], errors="coerce")
    return curves.loc[np.isfinite(loss)].sort_values(["id", "step"])


def _robust_ylim(loss: pd.Series, quantile: float = 0.99) -> tuple[float, float]:
    """Y range from the best loss up to a high quantile, capped at uniform, to hide blow-ups."""
    if loss.empty:
        return _EMPTY_YLIM
    low = float(loss.min())
    high = min(float(loss.quantile(quantile)), UNIFORM_LOSS)
    high = max(high, low + 0.05)
    pad = 0.03 * (high - low)
    return low - pad, high + pad


def _full_ylim(loss: pd.Series) -> tuple[float, float]:
    """Y range that shows every finite point of every curve."""
    if loss.empty:
        return _EMPTY_YLIM
    low, high = float(loss.min()), float(loss.max())
    pad = max(0.03 * (high - low), 0.01)
    return low - pad, high + pad


def _tail_ylim(curves: pd.DataFrame) -> tuple[float, float]:
    """Y range covering the late part of training, where the good designs actually differ."""
    tail = curves.loc[curves["step"] >= _TAIL_FRACTION * curves["step"].max(), "ema_loss"]
    if tail.empty:
        return _EMPTY_YLIM
    low, high = float(tail.min()), float(tail.quantile(0.99))
    pad = max(0.08 * (high - low), 0.005)
    return low - pad, high + pad


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Local linear fit over `window` points, centred where it can be and shifted inward at the ends.

    A trailing mean lags; a centred mean is biased on the steep start of training, and one that
    narrows at the ends shows the last raw, noisy point as a jump. A line fitted to a full
    window follows a trend to the very ends without either.
    """
    n, width = len(values), min(max(window, 2), len(values))
    smoothed = np.empty(n)
    for i in range(n):
        first = min(max(i - width // 2, 0), n - width)
        x = np.arange(first, first + width)
        slope, intercept = np.polyfit(x, values[first:first + width], 1) if width > 1 else (0.0, values[i])
        smoothed[i] = slope * i + intercept
    return smoothed


def _compact_step(value: float, _position: object = None) -> str:
    """Tick text like 500, 20k, 1.5M: full step counts overlap in narrow panels."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _step_axis(ax: Axes, log: bool = False) -> None:
    """Step x-axis with compact labels; a log axis gets 1-2-5 ticks, not just powers of ten."""
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(_compact_step))


def _mean_curve(curves: pd.DataFrame) -> pd.DataFrame:
    """Average curve over replicates, step by step (replicates share the logging grid)."""
    return curves.groupby("step", as_index=False)["ema_loss"].mean()


def _level_name(value: object) -> str:
    """Readable x tick for a factor level: on/off for switches, the number otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    return str(value)


def _short_factor(factor: str) -> str:
    """Subplot title without the redundant 'use_' prefix."""
    return factor.removeprefix("use_").replace("_", " ")


def _is_swarm_warning(caught: warnings.WarningMessage) -> bool:
    """True for seaborn's 'points cannot be placed' warning."""
    return issubclass(caught.category, UserWarning) and bool(
        re.match(_SWARM_WARNING, str(caught.message))
    )


@contextmanager
def _only_visible(ax: Axes) -> Iterator[None]:
    """Hide the figure's other axes for a moment.

    seaborn redraws the whole figure on every swarmplot call, recomputing every earlier
    swarm; drawing only the new axes keeps a 3x3 grid linear rather than quadratic in cost.
    """
    others = [a for a in ax.figure.axes if a is not ax and a.get_visible()]
    for other in others:
        other.set_visible(False)
    try:
        yield
    finally:
        for other in others:
            other.set_visible(True)


def _start_size(points_per_column: int) -> float:
    """Marker size to try first: big for sparse swarms so no point hides under its mean bar."""
    return SPARSE_SWARM_SIZE if points_per_column <= SPARSE_SWARM_POINTS else SWARM_SIZE


def _draw_swarm(ax: Axes, data: pd.DataFrame, x: str, order: list[str],
                size: float, ylim: tuple[float, float] | None = None) -> float:
    """Swarm of min_loss by x, shrinking markers until seaborn can place every point.

    Points that cannot be placed are stacked on the swarm's edge and misrepresent the
    distribution, so smaller markers are the better trade; other warnings pass through.
    Given `ylim`, the swarm is laid out on that scale (seaborn places points for the
    axes as they are when it draws). Returns the marker size used, so sibling panels
    can start there instead of retrying.
    """
    while True:
        with warnings.catch_warnings(record=True) as caught, _only_visible(ax):
            warnings.simplefilter("always")
            if ylim is not None:
                ax.set_ylim(ylim)
            sns.swarmplot(data=data, x=x, y="min_loss", order=order, size=size, ax=ax,
                          color="tab:blue", alpha=0.8, linewidth=0)
        crowded = any(_is_swarm_warning(w) for w in caught)
        if not crowded or size <= MIN_SWARM_SIZE:
            break
        ax.cla()
        size = max(size * 0.7, MIN_SWARM_SIZE)
    for w in caught:
        if not _is_swarm_warning(w):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return size


def _mark_means(ax: Axes, means: Iterable[float], half_width: float = 0.35) -> None:
    """Black bar at each category's mean, drawn above the points so it stays visible."""
    for i, mean in enumerate(means):
        if np.isfinite(mean):
            ax.hlines(mean, i - half_width, i + half_width, color="black", lw=2.2, zorder=10)


def _factor_swarm(ax: Axes, runs: pd.DataFrame, factor: str, levels: list[object],
                  size: float, ylim: tuple[float, float] | None) -> float:
    """One factor's swarm; levels come from all runs so filtered figures show empty levels too.

    Returns the marker size used (see _draw_swarm).
    """
    names = [_level_name(v) for v in levels]
    data = pd.DataFrame({
        "level": runs[factor].map(dict(zip(levels, names))).to_numpy(),
        "min_loss": runs["min_loss"].to_numpy(dtype=float),
    })
    size = _draw_swarm(ax, data, "level", names, size, ylim)
    per_level = data.groupby("level")["min_loss"].agg(["mean", "count"]).reindex(names)
    _mark_means(ax, per_level["mean"])
    ticks = [f"{name}\nmean {m:.3f}\nn={int(k)}" if k > 0 else f"{name}\n(none)"
             for name, m, k in zip(names, per_level["mean"], per_level["count"].fillna(0))]
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("")
    ax.set_title(_short_factor(factor), fontsize=10)
    return size


def _best_baseline(baselines: pd.DataFrame | None) -> pd.Series | None:
    """The baseline with the fewest bits per byte, if there are baselines."""
    return None if baselines is None else baselines.loc[baselines["bpb"].idxmin()]


def _swarm_ylim(runs: pd.DataFrame, baseline: pd.Series | None) -> tuple[float, float] | None:
    """The runs' min_loss range, widened to hold the baseline line; None leaves it to seaborn."""
    if baseline is None:
        return None
    values = np.append(runs["min_loss"].to_numpy(dtype=float), baseline["nats"])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.05 * (high - low) or 0.05
    return low - pad, high + pad


def _swarm_grid(runs: pd.DataFrame, reference: pd.DataFrame, out: Path, threshold: float,
                title: str, baselines: pd.DataFrame | None = None) -> None:
    """3x3 grid of per-factor swarms; shared by every swarm figure so stages look alike."""
    if runs.empty:
        _message_figure(out, title, "No run to show.")
        return
    fig, axes = plt.subplots(3, 3, figsize=(12, 11), dpi=DPI, sharey=True, layout="constrained")
    size = _start_size(len(runs))
    unit = _unit(runs)
    # The baselines are per byte: they share an axis with a training loss per byte only.
    baseline = _best_baseline(baselines) if unit == "byte" else None
    ylim = _swarm_ylim(runs, baseline)
    for ax, factor in zip(axes.flat, FACTORS):
        size = _factor_swarm(ax, runs, factor, sorted(reference[factor].unique()), size, ylim)
        # Keep the swarm's y range: a far-off threshold would squash the swarm seaborn laid out.
        limits = ax.get_ylim()
        ax.axhline(threshold, ls="--", lw=0.9, color="tab:red", zorder=5)
        if baseline is not None:
            ax.axhline(baseline["nats"], ls=":", lw=1.2, color="tab:purple", zorder=5)
        ax.set_ylim(limits)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"min_loss (nats/{unit})")
    for ax in axes[:, -1]:
        _bits_axis(ax, "y", unit)
    low, high = axes[0, 0].get_ylim()
    off_scale = "" if low <= threshold <= high else " (outside the y range)"
    lines = f"black bar = level mean, dashed red = threshold {threshold:g}{off_scale}"
    if baseline is not None:
        lines += (f"\ndotted purple = best baseline on the test slice: {baseline['method']}, "
                  f"{baseline['nats']:.3f} nats ({baseline['bpb']:.3f} bits) per byte")
    fig.suptitle(f"{title}\n{lines}")
    _save(fig, out)


def _curve_ids_by_loss(summary: pd.DataFrame, top: int, rank_by: str = ranking.DEFAULT) -> list[str]:
    """Ids of the `top` usable runs first by `rank_by`, best first."""
    return ranking.ranked_runs(summary, rank_by).head(top)["id"].tolist()


def _stacked_label(label: str) -> str:
    """Design label broken after size and gates so ten of them fit side by side on an x-axis."""
    layers, size, *rest = label.split(" ")
    return "\n".join([f"{layers} {size}", *rest])


def _number(value: float, digits: int) -> str:
    """Fixed-point text, or a dash where a statistic is undefined (all replicates diverged)."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "–"


def _spread_text(row: Any, sep: str) -> str:
    """'mean ± std, n' of a group_table row; std is undefined with one replicate, mean with none."""
    if row.n == 0:
        return "all diverged"
    std = f"{row.std:.3f}" if np.isfinite(row.std) else "n/a"
    return f"{row.mean:.3f} ± {std}{sep}n={row.n}"


def _held_out_text(run: Any) -> str:
    """A run's held-out scores, in bits per byte."""
    return f"valid {_number(run['valid_bpb'], 3)}, test {_number(run['test_bpb'], 3)} bits/byte"


def _grid_shape(k: int) -> tuple[int, int]:
    """Rows and columns for k panels, at most five per row to keep titles readable."""
    ncols = min(k, 5)
    return math.ceil(k / ncols), ncols


def _group_curves(summary: pd.DataFrame, curves: pd.DataFrame, config_id: str) -> pd.DataFrame:
    """Finite curve points of every replicate of one design."""
    ids = summary.loc[summary["config_id"] == config_id, "id"]
    return curves.loc[curves["id"].isin(ids)]


# ---------------------------------------------------------------------------- figures


def loss_curves(
    summary: pd.DataFrame, curves: pd.DataFrame, out: Path, rank_by: str = ranking.DEFAULT, **_: object
) -> None:
    """All training curves at once, to show the spread of the sweep and where the best run lies."""
    finite = _finite_curves(curves)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=DPI, layout="constrained")
    segments = [g[["step", "ema_loss"]].to_numpy(dtype=float) for _, g in finite.groupby("id")]
    ax.add_collection(LineCollection(segments, colors="0.45", linewidths=0.4, alpha=0.25,
                                     label="all runs"))
    best_ids = _curve_ids_by_loss(summary, 1, rank_by)
    if best_ids:
        best = summary.set_index("id").loc[best_ids[0]]
        line = finite.loc[finite["id"] == best_ids[0]]
        ax.plot(line["step"], line["ema_loss"], color="tab:red", lw=2,
                label=f"best: {design_label(best)} (min_loss {best['min_loss']:.3f}; {_held_out_text(best)})")
    low, high = _full_ylim(finite["ema_loss"])
    unit = _unit(summary)
    if high >= UNIFORM_LOSS and unit == "byte":
        ax.axhline(UNIFORM_LOSS, ls=":", color="black", lw=1, label="uniform guess (ln 256)")
    ax.autoscale_view()
    ax.set_ylim(low, high)
    _step_axis(ax)
    n_div = int((summary["status"] != "ok").sum())
    ax.set(xlabel="step", ylabel=f"EMA training loss (nats/{unit})",
           title=f"Training loss of all {len(summary)} runs ({n_div} diverged)")
    _bits_axis(ax, "y", unit)
    _design_key(fig)
    ax.legend(loc="upper right")
    ax.grid(lw=0.4, alpha=0.5)
    _save(fig, out)


def swarm_all(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, *,
              threshold: float, baselines: pd.DataFrame | None = None, **_: object) -> None:
    """Per-factor distribution of min_loss over every converged run (stage 2's `swarm` too, to compare with stage 1).

    Given the baselines, the best of them is drawn as a line, to show which designs beat a simple model.
    """
    runs = usable_runs(summary)
    _swarm_grid(runs, runs, out, threshold, f"min_loss by factor ({len(runs)} converged runs)", baselines)


def swarm_below(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, *,
                threshold: float, **_: object) -> None:
    """Per-factor swarms of the good runs only, to see which settings the winners share."""
    runs = usable_runs(summary)
    below = runs.loc[runs["min_loss"] < threshold]
    title = f"min_loss < {threshold:g} ({len(below)} of {len(summary)} runs)"
    _swarm_grid(below, runs, out, threshold, title)


def regression_bars(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, **_: object) -> None:
    """Bar chart of standardised effects: which factors move log(min_loss), and which way."""
    table = stats.regression(summary)
    r2 = float(table.loc[table["term"] == "R2", "coef"].iloc[0])
    n = int(table["n"].iloc[0])
    terms = table.loc[table["term"] != "R2"]
    fitted = terms.dropna(subset=["coef"]).sort_values("coef", ascending=False)
    constant = terms.loc[terms["coef"].isna(), "term"].tolist()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=DPI, layout="constrained")
    # Coloured by the value shown: a coefficient that rounds to 0.00 is neither a gain nor a loss.
    colors = ["tab:green" if round(c, 2) < 0 else "tab:red" if round(c, 2) > 0 else "0.6" for c in fitted["coef"]]
    bars = ax.barh(fitted["term"].map(_short_factor), fitted["coef"], color=colors)
    ax.bar_label(bars, fmt="%+.2f", padding=3, fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.margins(x=0.15)
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    ax.set_xlabel("standardised coefficient on log(min_loss)  (negative = lower loss)")
    title = f"Regression of log(min_loss) on factors: R² = {r2:.3f}, n = {n} runs"
    if constant:
        title += "\nconstant, not estimated: " + ", ".join(map(_short_factor, constant))
    ax.set_title(title)
    _save(fig, out)


def best_curves(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, *, best_curves: int,
                smooth: int, rank_by: str = ranking.DEFAULT, **_: object) -> None:
    """Smoothed curves of the best runs on log steps, to compare how fast the winners learn."""
    finite = _finite_curves(curves)
    finite = finite.loc[finite["step"] > 0]
    by_id = summary.set_index("id")
    best_ids = _curve_ids_by_loss(summary, best_curves, rank_by)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=DPI, layout="constrained")
    for run_id in best_ids:
        line = finite.loc[finite["id"] == run_id]
        smoothed = _smooth(line["ema_loss"].to_numpy(dtype=float), smooth)
        run = by_id.loc[run_id]
        ax.plot(line["step"], smoothed, lw=1.5,
                label=f"{design_label(run)}  ({run['min_loss']:.3f}; {_held_out_text(run)})")
    _step_axis(ax, log=True)
    # Only good runs here, so show their whole descent (up to uniform) rather than a quantile.
    ax.set_ylim(*_robust_ylim(finite.loc[finite["id"].isin(best_ids), "ema_loss"], quantile=1.0))
    unit = _unit(summary)
    _bits_axis(ax, "y", unit)
    _design_key(fig)
    ax.set(xlabel="step (log scale)", ylabel=f"EMA training loss (nats/{unit})",
           title=f"Best {best_curves} runs by {rank_by} (local linear fit over {smooth} logged points)")
    if best_ids:
        ax.legend(title=f"design (min_loss, nats/{unit}; held-out bits/byte)", loc="upper right", fontsize=9)
    ax.grid(which="both", lw=0.4, alpha=0.4)
    _save(fig, out)


def group_swarm(
    summary: pd.DataFrame, curves: pd.DataFrame, out: Path, rank_by: str = ranking.DEFAULT, **_: object
) -> None:
    """Replicate spread per stage-3 design, ranked by mean, to judge whether ranks are real."""
    table = stats.group_table(summary, rank_by)
    runs = usable_runs(summary)
    title = f"Stage 3: min_loss of {len(table)} designs × replicates"
    if runs.empty:
        _message_figure(out, title, "Every stage-3 run diverged.")
        return
    names = [f"#{r.rank}\n{_stacked_label(r.label)}" for r in table.itertuples()]
    data = pd.DataFrame({
        "group": runs["config_id"].map(dict(zip(table["config_id"], names))).to_numpy(),
        "min_loss": runs["min_loss"].to_numpy(dtype=float),
    })
    fig, ax = plt.subplots(figsize=(max(8, 1.25 * len(names)), 6.5), dpi=DPI,
                           layout="constrained")
    _draw_swarm(ax, data, "group", names, _start_size(data["group"].value_counts().max()))
    _mark_means(ax, table["mean"])
    top = data["min_loss"].max()
    for i, row in enumerate(table.itertuples()):
        ax.annotate(_spread_text(row, "\n"), (i, top), xytext=(0, 6),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.margins(y=0.18)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.grid(axis="y", lw=0.4, alpha=0.5)
    _bits_axis(ax, "y", _unit(summary))
    _design_key(fig)
    ax.set(xlabel="", ylabel=f"min_loss (nats/{_unit(summary)})",
           title=f"{title}\nblack bar = mean; text = mean ± std, n replicates")
    _save(fig, out)


def group_curves(
    summary: pd.DataFrame, curves: pd.DataFrame, out: Path, rank_by: str = ranking.DEFAULT, **_: object
) -> None:
    """Per-design panels of replicate curves around their mean, to show seed-to-seed variation."""
    table = stats.group_table(summary, rank_by)
    finite = _finite_curves(curves)
    nrows, ncols = _grid_shape(len(table))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.4 * ncols, 8), 2.9 * nrows + 0.5),
                             dpi=DPI,
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for ax, row in zip(axes.flat, table.itertuples()):
        group = _group_curves(summary, finite, row.config_id)
        for _, rep in group.groupby("id"):
            ax.plot(rep["step"], rep["ema_loss"], color="tab:blue", lw=0.7, alpha=0.35)
        mean = _mean_curve(group)
        ax.plot(mean["step"], mean["ema_loss"], color="black", lw=1.8)
        ax.set_title(f"#{row.rank} {row.label}\n{_spread_text(row, ', ')}; "
                     f"test {_number(row.test_bpb_mean, 3)} bits/byte", fontsize=9)
        ax.grid(which="both", lw=0.3, alpha=0.4)
    for ax in axes.flat[len(table):]:
        ax.set_visible(False)
    axes[0, 0].set_ylim(*_tail_ylim(finite))
    _step_axis(axes[0, 0])
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.supylabel(f"EMA training loss (nats/{_unit(summary)})")
    for ax in axes[:, -1]:
        _bits_axis(ax, "y", _unit(summary))
    _design_key(fig)
    fig.suptitle("Stage 3: replicate curves (blue) and their mean (black) per design\n"
                 "y zoomed on late training")
    _save(fig, out)


def _ci_text(low: float, high: float) -> str:
    return f"[{_number(low, 3)}, {_number(high, 3)}]"


def group_means(
    summary: pd.DataFrame, curves: pd.DataFrame, out: Path, rank_by: str = ranking.DEFAULT, **_: object
) -> None:
    """All designs' mean curves on one scale, and each design's mean min_loss and test_bpb with 95 % intervals.

    A filled marker is a design in the 95 % confidence set of the best (stats.best_set); a hollow one is shown worse.
    """
    table = stats.group_table(summary, rank_by)
    finite = _finite_curves(curves)
    fig, (ax, *right) = plt.subplots(1, 3, figsize=(18, 6.5), dpi=DPI, layout="constrained",
                                     gridspec_kw={"width_ratios": [3, 1.5, 1.5]})
    colors = plt.get_cmap("tab10" if len(table) <= 10 else "tab20").colors
    colors = colors * (len(table) // len(colors) + 1)
    means = []
    for row, color in zip(table.itertuples(), colors):
        mean = _mean_curve(_group_curves(summary, finite, row.config_id))
        means.append(mean)
        same = f" P(best) {row.p_best:.2f}" + (" in best set" if row.in_best_set else "")
        ax.plot(mean["step"], mean["ema_loss"], color=color, lw=1.6,
                label=f"#{row.rank} {row.label} {_number(row.mean, 3)} {_ci_text(row.min_loss_ci_low, row.min_loss_ci_high)}{same}")
    ax.set_ylim(*_tail_ylim(pd.concat(means)))
    _step_axis(ax)
    unit = _unit(summary)
    ax.set(xlabel="step", ylabel=f"mean EMA training loss (nats/{unit})",
           title="mean training curve per design (y focused on late training)")
    _bits_axis(ax, "y", unit)
    ax.legend(title="rank, design, mean min_loss [95 % CI]", loc="upper center",
              bbox_to_anchor=(0.5, -0.12), fontsize=8, ncol=2)
    ax.grid(which="both", lw=0.4, alpha=0.4)
    _interval_panel(right[0], table, colors, "min_loss", f"mean min_loss (nats/{unit})")
    _interval_panel(right[1], table, colors, "test_bpb", "mean test_bpb (bits/byte)")
    right[1].set_yticklabels([])
    fig.suptitle(f"Stage 3: {len(table)} designs over their seeds; intervals are 95 % t-intervals of the mean\n"
                 f"filled: in the 95 % confidence set of the best design (by {rank_by}); hollow: shown worse than another")
    _design_key(fig)
    _save(fig, out)


def _mean_column(response: str) -> str:
    """group_table's column of a response's mean: min_loss, the ranking's key, has it as `mean`."""
    return "mean" if response == "min_loss" else f"{response}_mean"


def _interval_panel(ax: Axes, table: pd.DataFrame, colors: list, response: str, label: str) -> None:
    """Each design's mean `response` with its 95 % interval, #1 at the top, hollow where it is outside the best set."""
    y = np.arange(len(table))[::-1]
    for yi, row, color in zip(y, table.itertuples(), colors):
        low, high = getattr(row, f"{response}_ci_low"), getattr(row, f"{response}_ci_high")
        if np.isfinite(low):
            ax.hlines(yi, low, high, color=color, lw=2)
        ax.plot(getattr(row, _mean_column(response)), yi, "o", ms=7, color=color, mfc=color if row.in_best_set else "white", mew=1.6)
    if len(table):
        ax.axvline(table[_mean_column(response)].iloc[0], ls="--", lw=0.9, color="0.3")
    ax.set_yticks(y, [f"#{r.rank} {r.label}" for r in table.itertuples()], fontsize=8)
    ax.set_xlabel(label)
    (_bits_axis if response == "min_loss" else _nats_axis)(ax, "x")
    ax.grid(axis="x", lw=0.4, alpha=0.5)


def _design_key(fig: Figure) -> None:
    """The key to design labels, at the foot of a figure that uses them, in a strip the layout leaves free."""
    fig.get_layout_engine().set(rect=(0, 0.035, 1, 0.965))
    fig.text(0.5, 0.005, DESIGN_KEY, ha="center", va="bottom", fontsize=7.5, color="0.3")


def _unit(summary: pd.DataFrame) -> str:
    """What a stage's training loss is per: a byte, or (tokenizer bpe) a token of the runs' vocabulary."""
    return "token" if "tokenizer" in summary and (summary["tokenizer"] != "bytes").any() else "byte"


def _bits_axis(ax: Axes, which: str, unit: str = "byte") -> None:
    """A second axis in bits per byte (or per token) beside one in nats."""
    _twin_axis(ax, which, (lambda v: v / math.log(2), lambda v: v * math.log(2)), f"bits per {unit}")


def _nats_axis(ax: Axes, which: str) -> None:
    """A second axis in nats per byte beside one in bits."""
    _twin_axis(ax, which, (lambda v: v * math.log(2), lambda v: v / math.log(2)), "nats per byte")


def _twin_axis(ax: Axes, which: str, functions: tuple[Callable, Callable], label: str) -> None:
    if which == "x":
        ax.secondary_xaxis("top", functions=functions).set_xlabel(label, fontsize=8)
    else:
        ax.secondary_yaxis("right", functions=functions).set_ylabel(label, fontsize=8)


def effects_bars(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, **_: object) -> None:
    """Each switch's effect, its interactions and depth and width, with 95 % intervals: on training and held-out loss."""
    table = effects.effects(summary)
    if table.empty:
        _message_figure(out, "Effects", "Too few usable runs for the model.")
        return
    order = table.loc[table["response"] == "min_loss"].sort_values("estimate")["term"].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(13, max(5.0, 0.24 * len(order) + 1.8)), dpi=DPI, sharey=True,
                             layout="constrained")
    per = _unit(summary)
    for ax, (response, unit) in zip(axes, (("min_loss", f"min_loss (nats/{per})"), ("valid_bpb", "valid_bpb (bits/byte)"))):
        rows = table.loc[table["response"] == response].set_index("term").reindex(order)
        y = np.arange(len(order))
        colors = ["tab:green" if h < 0 else "tab:red" if lo > 0 else "0.55"
                  for lo, h in zip(rows["ci_low"], rows["ci_high"])]
        ax.hlines(y, rows["ci_low"], rows["ci_high"], colors=colors, lw=2)
        ax.scatter(rows["estimate"], y, color=colors, zorder=3, s=18)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"effect on {unit}")
        ax.grid(axis="x", lw=0.4, alpha=0.5)
        if response == "min_loss":
            _bits_axis(ax, "x", per)
    axes[0].set_yticks(np.arange(len(order)), [_term_name(t) for t in order], fontsize=8)
    n = int(table["n"].iloc[0])
    fig.suptitle(f"Effects with 95 % intervals, linear model of {n} runs (switches and their two-way interactions; "
                 "depth and width against the smallest)\ngreen: lowers the loss, red: raises it, grey: interval spans 0",
                 fontsize=10)
    _save(fig, out)


def _term_name(term: str) -> str:
    """'forget_gate:residual' -> 'forget gate × residual'; 'C(n_layers)[T.2]' -> 'n_layers = 2'."""
    if term.startswith("C("):
        factor, level = term[2:].split(")[T.")
        return f"{factor} = {level.rstrip(']')}"
    return " × ".join(part.replace("_", " ") for part in term.split(":"))


def group_table(
    summary: pd.DataFrame, curves: pd.DataFrame, out: Path, rank_by: str = ranking.DEFAULT, **_: object
) -> None:
    """The stage-3 ranking as a picture, for reports that embed figures only."""
    table = stats.group_table(summary, rank_by)
    cells = [[str(r.rank), r.label, _number(r.mean, 4), _number(r.mean_bpb, 4),
              _ci_text(r.min_loss_ci_low, r.min_loss_ci_high), _number(r.std, 4),
              _number(r.test_bpb_mean, 4), str(r.n), f"{'yes' if r.in_best_set else 'no'} ({r.p_best:.2f})"]
             for r in table.itertuples()]
    header = ["rank", "configuration", "min_loss", "in bits", "95 % CI", "std", "test_bpb", "n", "best set (P)"]
    # At least 3 inches tall: a 3-design smoke study would otherwise give a thumbnail strip.
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.6 + 0.3 * (len(cells) + 1))), dpi=DPI,
                           layout="constrained")
    ax.axis("off")
    shown = ax.table(cellText=cells or [[""] * len(header)], colLabels=header, loc="upper center",
                     colWidths=[0.06, 0.27, 0.09, 0.08, 0.15, 0.07, 0.09, 0.05, 0.12], cellLoc="center")
    shown.auto_set_font_size(False)
    shown.set_fontsize(10)
    shown.scale(1, 1.4)
    for (row, _col), cell in shown.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("0.88")
    ax.set_title(f"Stage 3: {len(table)} designs ranked by mean {rank_by} over replicates; min_loss in nats/{_unit(summary)};\n"
                 "best set: in the 95 % confidence set of the best design; P: bootstrap probability of being best")
    _design_key(fig)
    _save(fig, out)


def _best_by_validation(summary: pd.DataFrame) -> pd.Series | None:
    """A stage's run with the lowest valid_bpb: chosen on the validation split, so its test_bpb is unbiased."""
    runs = usable_runs(summary).dropna(subset=["valid_bpb", "test_bpb"])
    return None if runs.empty else runs.sort_values(["valid_bpb", "id"]).iloc[0]


def compare(baselines: pd.DataFrame, summaries: dict[str, pd.DataFrame], out: Path) -> None:
    """Bits per byte on the test slice: the n-gram models, the compressors and the best run of each stage, on one axis."""
    n_bytes = int(baselines["bytes"].min())
    rows = [(f"{r.method}", r.bpb, "tab:blue" if r.kind == "n-gram" else "0.55") for r in baselines.itertuples()]
    for stage, summary in summaries.items():
        best = _best_by_validation(summary)
        if best is None:
            continue
        other = "" if int(best["test_bytes"]) == n_bytes else f", {int(best['test_bytes'])} bytes"
        rows.append((f"{stage}: {design_label(best)}{other}", float(best["test_bpb"]), "tab:red"))
    rows.sort(key=lambda row: row[1])
    names, bpb, colors = zip(*rows)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.36 * len(rows)), dpi=DPI, layout="constrained")
    y = np.arange(len(rows))[::-1]
    bars = ax.barh(y, bpb, color=colors)
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(0, max(bpb) * 1.12)
    ax.set_xlabel(f"bits per byte on the test slice ({n_bytes} bytes)")
    _nats_axis(ax, "x")
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:red", "tab:blue", "0.55")]
    ax.legend(handles, ["best RNN of a stage (lowest valid_bpb)", "n-gram model (Witten-Bell)", "compressor"],
              loc="upper right", fontsize=8)
    ax.set_title("Bits per byte on the same bytes, lower is better\n"
                 "RNNs and n-grams learn from the training split and are scored on bytes they have not seen;\n"
                 "a compressor starts from nothing and learns as it reads the slice", fontsize=10)
    _design_key(fig)
    _save(fig, out)


def _tokenizer_name(row: Any) -> str:
    if row["tokenizer"] == "bytes":
        return "bytes (256 ids)"
    return f"{row['tokenizer']} ({int(row['vocab_size'])} ids, {row['bytes_per_token']:.2f} bytes/token)"


def tokenizers(table: pd.DataFrame, summaries: list[pd.DataFrame], out: Path) -> None:
    """The last stage's designs under two tokenizers: test bits per byte over seeds, steps per second, wall time."""
    if table.empty:
        _message_figure(out, "Tokenizers", "no design finished under both tokenizers")
        return
    designs = list(dict.fromkeys(table["config_id"]))
    kinds = list(dict.fromkeys(table["tokenizer"]))
    colors = dict(zip(kinds, ("tab:blue", "tab:orange")))
    y = {config_id: len(designs) - 1 - i for i, config_id in enumerate(designs)}
    offset = dict(zip(kinds, (0.15, -0.15)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 2.2 + 0.5 * len(designs)), dpi=DPI, layout="constrained",
                             sharey=True, gridspec_kw={"width_ratios": (3, 1.2, 1.2)})
    runs = pd.concat(summaries, ignore_index=True)
    runs = runs[runs["id"].isin(usable_runs(runs)["id"])]
    for kind in kinds:
        rows = table[table["tokenizer"] == kind]
        at = np.array([y[c] for c in rows["config_id"]]) + offset[kind]
        seeds = runs[(runs["tokenizer"] == kind) & runs["config_id"].isin(designs)]
        axes[0].scatter(seeds["test_bpb"], [y[c] + offset[kind] for c in seeds["config_id"]], s=9, alpha=0.35,
                        color=colors[kind], lw=0)
        error = np.vstack([rows["test_bpb_mean"] - rows["test_bpb_ci_low"], rows["test_bpb_ci_high"] - rows["test_bpb_mean"]])
        axes[0].errorbar(rows["test_bpb_mean"], at, xerr=np.nan_to_num(error), fmt="o", ms=5, capsize=3,
                         color=colors[kind], label=_tokenizer_name(rows.iloc[0]))
        for ax, column in zip(axes[1:], ("steps_per_s", "wall_s")):
            bars = ax.barh(at, rows[column], height=0.3, color=colors[kind])
            ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=7)
    labels = table.drop_duplicates("config_id").set_index("config_id")["label"]
    axes[0].set_yticks([y[c] for c in designs], [labels[c] for c in designs], fontsize=8)
    axes[0].set_xlabel("test_bpb: bits per byte on the test slice (mean, 95 % interval over seeds, each seed)")
    axes[0].legend(loc="best", fontsize=8)
    axes[0].grid(axis="x", lw=0.4, alpha=0.5)
    axes[1].set_xlabel("steps per second (a step: one token\nof every window of the batch)")
    axes[2].set_xlabel("wall time of a run (s)")
    for ax in axes[1:]:
        ax.margins(x=0.2)
    fig.suptitle("The same designs, seeds and settings read as bytes and as BPE tokens, scored in bits per byte;\n"
                 "a window holds history_size tokens, so a BPE window spans several times more bytes", fontsize=10)
    _design_key(fig)
    _save(fig, out)


def rank_agreement(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, **_: object) -> None:
    """Each design's rank by one metric against its rank by another, for every pair: does the ranking depend on it?"""
    table = ranking.agreement(summary)
    present = [m for m in ranking.METRICS if m in summary.columns]
    designs = usable_runs(summary).groupby("config_id")[present].mean().dropna().rank(method="first")
    fig, axes = plt.subplots(1, max(len(table), 1), figsize=(5.5 * max(len(table), 1), 5.5), dpi=DPI,
                             layout="constrained", squeeze=False)
    for ax, row in zip(axes[0], table.itertuples()):
        top = designs[row.metric_a] <= row.top
        ax.scatter(designs[row.metric_a], designs[row.metric_b], s=10, c=np.where(top, "tab:red", "tab:blue"), alpha=0.7)
        ax.plot([1, len(designs)], [1, len(designs)], ls="--", lw=0.8, color="0.4")
        ax.set(xlabel=f"rank by {row.metric_a} (1 = best)", ylabel=f"rank by {row.metric_b}",
               title=f"Spearman {_number(row.spearman, 3)} {_ci_text(row.ci_low, row.ci_high)}\n"
                     f"{row.top_changed} of the top {row.top} by {row.metric_a} (red) leave the top {row.top}")
        ax.grid(lw=0.4, alpha=0.5)
    fig.suptitle(f"How the ranking of {len(designs)} designs depends on what ranks them (means over seeds)")
    _save(fig, out)


def bump(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, *, rank_by: str = ranking.DEFAULT, **_: object) -> None:
    """Each design's rank at each value of each swept setting, the others at their first values (a bump chart)."""
    _bump(summary, sweeps.swept_keys(summary), out, rank_by, "at each value")


def corpora(summary: pd.DataFrame, out: Path, *, rank_by: str = ranking.DEFAULT) -> None:
    """Each design's rank on each corpus (rnnsweep.corpora): a bump chart of one stage's runs of every corpus."""
    _bump(summary, [sweeps.CORPUS], out, rank_by, "on each corpus")


def _bump(summary: pd.DataFrame, panels: list[str], out: Path, rank_by: str, where: str) -> None:
    """One bump chart panel for each key of `panels`, every other swept key held at its first value."""
    means, table = sweeps.design_means(summary, rank_by), sweeps.sweep(summary, rank_by)
    keys = sweeps.swept_keys(summary)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1), 7), dpi=DPI,
                             layout="constrained", squeeze=False)
    labels = {row.config_id.partition("@")[0]: design_label(row._asdict() | {"config_id": ""}) for row in summary.itertuples()}
    for ax, key in zip(axes[0], panels):
        held = means
        for other in (k for k in keys if k != key):
            held = held[held[other] == held[other].iloc[0]] if len(held) else held
        ranks = held.pivot(index="design", columns=key, values="value").dropna().rank(method="first")
        _bump_panel(ax, ranks, labels, key, rank_by)
        ax.set_title(_bump_title(table[table["axis"] == key], ranks.columns), fontsize=9)
    if not panels:
        axes[0][0].text(0.5, 0.5, "this stage sweeps no setting", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.suptitle(f"Each design's rank by {rank_by} {where}\n(1 = best; means over seeds)")
    _save(fig, out)


#: Designs drawn in colour and named in a bump chart: the best this many at any value.
BUMP_NAMED = 3


def _bump_panel(ax: Axes, ranks: pd.DataFrame, labels: dict[str, str], key: str, rank_by: str) -> None:
    x = np.arange(len(ranks.columns))
    named = ranks.index[(ranks <= BUMP_NAMED).any(axis=1)]
    for design, row in ranks.drop(named).iterrows():
        ax.plot(x, row.to_numpy(), color="0.6", lw=0.5, alpha=0.25)
    ends = _spread(ranks.loc[named].iloc[:, -1].to_numpy(float), gap=len(ranks) / 40)
    for colour, (design, row), end in zip(sns.color_palette("tab20", len(named)), ranks.loc[named].iterrows(), ends):
        ax.plot(x, row.to_numpy(), color=colour, lw=2, marker="o")
        ax.annotate(labels.get(design, design), (x[-1], row.iloc[-1]), xytext=(x[-1] + 0.08, end), textcoords="data",
                    va="center", fontsize=7, color=colour, arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5})
    ax.set_xticks(x, [str(v) for v in ranks.columns])
    ax.set_xlim(-0.2, len(x) - 0.2 + 0.6)
    ax.invert_yaxis()
    ax.set(xlabel=key, ylabel=f"rank by {rank_by} among {len(ranks)} designs")
    ax.grid(lw=0.4, alpha=0.5)


def _spread(values: np.ndarray, gap: float) -> np.ndarray:
    """Label heights near `values`, in the same order, at least `gap` apart (labels that would overlap move down)."""
    order = np.argsort(values, kind="stable")
    placed = values.copy()
    for before, i in zip(order, order[1:]):
        placed[i] = max(placed[i], placed[before] + gap)
    return placed


def _bump_title(rows: pd.DataFrame, values: Iterable[object]) -> str:
    """Spearman's rho with its interval between each value and the next, and how much of the top 10 % stays."""
    values, lines = list(values), []
    for a, b in zip(values, values[1:]):
        row = rows[(rows["value_a"] == a) & (rows["value_b"] == b)].head(1)
        for r in row.itertuples():
            lines.append(f"{a} → {b}: Spearman {_number(r.spearman, 2)} {_ci_text(r.ci_low, r.ci_high)}, "
                         f"top {r.top}: {r.top_shared} stay")
    return "\n".join(lines)
