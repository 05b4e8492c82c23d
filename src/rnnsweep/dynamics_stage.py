"""The dynamics of one stage: every finished byte run measured (rnnsweep.dynamics), and what the switches do to it.

`stage_dynamics` measures every run; runs of one shape and window load into one
model, many at a time (the group's size bounded by memory, not by results:
replicates never mix); over the stage's runs, the switches' marginal on − off
effects on each measure (rnnsweep.effects). `ranked_dynamics` holds what
depends on `rank_by`, so another ranking measures nothing again: each
measure's Spearman correlation with the loss across designs, with its 95 %
interval (rnnsweep.ranking.rho_interval), and the attractors of the stage's
best runs; the very best gets an orbit diagram (the last states of a few
units against a constant input byte) and its state trajectory along real text
in its first two principal components.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from rnnsweep import dynamics
from rnnsweep.aggregate import SummaryError
from rnnsweep.baselines import NGramModel
from rnnsweep.data import DataError, held_out_windows
from rnnsweep.design import BYTE_VOCAB
from rnnsweep.effects import marginals
from rnnsweep.layout import (
    ATTRACTORS, DYNAMICS, DYNAMICS_CURVES, DYNAMICS_EFFECTS, DYNAMICS_LOSS, ORBITS, TRAJECTORY, run_dir, summary_path,
)
from rnnsweep.model import ByteModel
from rnnsweep.ranking import ranked_runs, rho_interval
from rnnsweep.sample import load_runs
from rnnsweep.stats import usable_runs
from rnnsweep.tokens import load_text

#: The per-run measures the switches' effects and the loss correlation are computed for (none is a loss).
RESPONSES: dict[str, float] = {"memory_gain_bits": math.nan, "memory_horizon": math.nan, "tau_bytes": math.nan,
                               "lyapunov_1": math.nan}
SHAPE = ["n_layers", "state_size", "history_size"]  # runs that share these load into one model
MEMORY_BUDGET = 256 * 2**20  # bytes of activations one group may hold at once
ORBIT_UNITS = 4  # units of the last layer drawn in the orbit diagram
ORBIT_STARTS = 2  # starting states per input byte of the orbit diagram
TRAJECTORY_BYTES = 600


@dataclass(frozen=True)
class Measures:
    """What is measured of every run (the profile's `dynamics` block, its eval_bytes for this stage)."""

    eval_bytes: int
    contexts: tuple[int, ...] | None
    lyapunov_bytes: int
    exponents: int
    max_order: int  # the byte n-grams drawn beside the memory curves
    seed: int = 0


@dataclass(frozen=True)
class Attractors:
    """How the stage's `best` runs by `rank_by` are searched for attractors."""

    best: int
    inputs: tuple[int, ...]
    starts: int
    steps: int
    seed: int = 0


def _stage_runs(stage_dir: Path) -> pd.DataFrame:
    """The stage's finished byte runs, from its summary: the stage must have been aggregated."""
    path = summary_path(stage_dir)
    if not path.is_file():
        raise SummaryError(f"{stage_dir} has no {path.name}: aggregate the stage before measuring its dynamics")
    summary = pd.read_csv(path)
    runs = usable_runs(summary)
    if "tokenizer" in runs.columns:
        runs = runs[runs["tokenizer"].fillna("bytes") == "bytes"]
    if runs.empty:
        raise SummaryError(f"{path} lists no finished byte run to measure")
    return runs


def _splits(data_dir: Path, runs: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """The corpus splits, checked against corpus.json and against the bytes every run was trained and scored on."""
    text = load_text(data_dir)
    if "data" in runs.columns and set(runs["data"]) != {text.data_id}:
        raise DataError(f"the stage's runs were trained on other bytes than {data_dir} holds now; train them again")
    return text.splits


def _groups(runs: pd.DataFrame, windows: int, workers: int = 1) -> Iterator[pd.DataFrame]:
    """Runs of one shape and window, in chunks whose memory curves fit MEMORY_BUDGET; with several workers, also
    no chunk above 1 / (2 · workers) of the whole cost, so that the workers finish together."""
    shapes = runs.groupby(SHAPE, sort=True)
    share = sum(_cost(group) for _, group in shapes) // (2 * workers)
    for (layers, width, history), group in shapes:
        rows = max(1, (history - 2) * windows)
        size = max(1, MEMORY_BUDGET // (rows * (BYTE_VOCAB + 2 * layers * width) * 4))
        if workers > 1:
            size = min(size, max(1, share // _cost(group.iloc[:1])))
        for first in range(0, len(group), size):
            yield group.iloc[first:first + size]


def _cost(group: pd.DataFrame) -> int:
    """What measuring a group costs, roughly: the weights its steps read (runs · layers · width²)."""
    return len(group) * int(group["n_layers"].iloc[0]) * int(group["state_size"].iloc[0]) ** 2


def _windows(split: np.ndarray, eval_bytes: int, history: int) -> np.ndarray:
    windows = held_out_windows(split, eval_bytes, history)
    if len(windows) < 2:
        raise DataError(f"dynamics eval_bytes {eval_bytes} hold {len(windows)} window of {history} bytes; the "
                        "substituted memory needs two: raise it")
    return windows


def _contexts(settings: Measures, history: int) -> list[int]:
    ks = list(settings.contexts) if settings.contexts is not None else dynamics.context_lengths(history)
    dynamics.check_contexts(ks, history)
    return ks


def _model(stage_dir: Path, ids: Sequence[str]) -> ByteModel:
    return load_runs([run_dir(stage_dir, run_id) for run_id in ids])


def measure_runs(stage_dir: Path, runs: pd.DataFrame, split: np.ndarray, settings: Measures, workers: int = 1
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, the curves in long form: id, measure, x, value) of every run listed, `workers` groups
    at a time in processes of one torch thread each: a group's steps are too small to keep two threads busy, two
    groups side by side are not (benchmarks/README.md). A group's numbers do not depend on what runs beside it."""
    groups = list(_groups(runs, max(2, settings.eval_bytes // int(runs["history_size"].max())), workers))
    largest_first = sorted(range(len(groups)), key=lambda g: -_cost(groups[g]))
    jobs = [(stage_dir, groups[g]["id"].tolist(), int(groups[g]["history_size"].iloc[0]), split, settings)
            for g in largest_first]
    if workers == 1:
        found = dict(zip(largest_first, (measure_group(*job) for job in jobs)))
    else:
        with ProcessPoolExecutor(workers, mp_context=_PROCESSES, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            found = dict(zip(largest_first, pool.map(measure_group, *zip(*jobs))))
    rows, curves = [], []
    for g, group in enumerate(groups):
        rows += [{"id": run_id, **row} for run_id, row in zip(group["id"], found[g].rows())]
        curves += _curve_rows(group["id"].tolist(), found[g])
    return pd.DataFrame(rows), pd.DataFrame(curves, columns=["id", "measure", "x", "value"])


#: How worker processes start: forked on Linux (nothing to import again), spawned where forking a process that
#: holds torch is unsafe (macOS) or unavailable.
_PROCESSES = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def measure_group(stage_dir: Path, ids: Sequence[str], history: int, split: np.ndarray, settings: Measures
                  ) -> dynamics.Measured:
    """The measures of runs of one shape and window (history bytes), loaded together."""
    return dynamics.measure(_model(stage_dir, ids), _windows(split, settings.eval_bytes, history),
                            _contexts(settings, history), split[:settings.lyapunov_bytes], settings.exponents,
                            settings.seed)


def _curve_rows(ids: list[str], found: dynamics.Measured) -> list[dict]:
    out = []
    for r, run_id in enumerate(ids):
        for variant, curve in found.memory.items():
            out += [{"id": run_id, "measure": f"memory_{variant}", "x": k, "value": v} for k, v in zip(found.ks, curve[r])]
        out += [{"id": run_id, "measure": "sensitivity", "x": lag, "value": v} for lag, v in enumerate(found.sensitivity[r])]
    return out


def ngram_rows(train: np.ndarray, windows: np.ndarray, max_order: int) -> list[dict]:
    """Byte n-gram bpb of order 0..max_order on the same windows (x: the bytes an order-k model reads, k)."""
    return [{"id": "", "measure": "ngram", "x": k, "value": float(-np.log2(p).mean())}
            for k, p in enumerate(NGramModel(train, max_order).probabilities(windows))]


def attractor_rows(stage_dir: Path, best: pd.DataFrame, settings: Attractors) -> pd.DataFrame:
    """Where each (input byte, random start) of each best run ends: period 1 (fixed), p > 1 (cycle), 0 (irregular)."""
    rows = []
    for _, run in best.iterrows():
        model = _model(stage_dir, [run["id"]])
        byte = torch.tensor(settings.inputs).repeat_interleave(settings.starts)
        tail = dynamics.orbit(model, byte, settings.steps, dynamics.MAX_PERIOD + 1, settings.seed)
        for (b, p) in zip(byte.tolist(), dynamics.period(tail)[0].tolist()):
            rows.append({"id": run["id"], "input": b, "period": p, "ending": dynamics.ending(p)})
    return pd.DataFrame(rows, columns=["id", "input", "period", "ending"])


def orbit_rows(stage_dir: Path, run_id: str, settings: Attractors) -> pd.DataFrame:
    """The orbit diagram of one run: the last states of the first units of its last layer, for every input byte."""
    model = _model(stage_dir, [run_id])
    byte = torch.arange(BYTE_VOCAB).repeat_interleave(ORBIT_STARTS)
    tail = dynamics.orbit(model, byte, settings.steps, dynamics.MAX_PERIOD + 1, settings.seed)[0]
    last = model.layout.state_size * (model.layout.n_layers - 1)
    units = tail[..., last:last + ORBIT_UNITS]  # (bytes · starts, steps, units)
    b, t, u = np.meshgrid(byte.numpy(), np.arange(units.shape[1]), np.arange(units.shape[2]), indexing="ij")
    return pd.DataFrame({"id": run_id, "input": b.ravel(), "unit": u.ravel(), "value": units.numpy().ravel()})


def trajectory_rows(stage_dir: Path, run_id: str, split: np.ndarray) -> pd.DataFrame:
    """One run's state along real text (from a zero state) in its first two principal components."""
    model = _model(stage_dir, [run_id])
    states = dynamics.trajectory(model, split[:TRAJECTORY_BYTES])  # (T, L·n)
    centred = states - states.mean(0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    shares = singular**2 / max((singular**2).sum(), 1e-300)
    pcs = centred @ basis[:2].T
    return pd.DataFrame({"id": run_id, "t": np.arange(len(states)), "byte": split[1:len(states) + 1],
                         "pc1": pcs[:, 0], "pc2": pcs[:, 1] if pcs.shape[1] > 1 else 0.0,
                         "share1": shares[0], "share2": shares[1] if len(shares) > 1 else 0.0})


def loss_correlation(merged: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """Each measure's Spearman rho with the loss across designs (design means), with its 95 % interval."""
    rows = []
    for measure in RESPONSES:
        frame = merged[["config_id", measure, rank_by]].replace([np.inf, -np.inf], np.nan).dropna()
        designs = frame.groupby("config_id")[[measure, rank_by]].mean()
        n = len(designs)
        rho = float(scipy_stats.spearmanr(designs[measure], designs[rank_by]).statistic) if n >= 3 else math.nan
        low, high = rho_interval(rho, n)
        rows.append({"measure": measure, "loss": rank_by, "designs": n, "spearman": rho, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["measure", "loss", "designs", "spearman", "ci_low", "ci_high"])


def stage_dynamics(stage_dir: Path, data_dir: Path, settings: Measures, workers: int = 1) -> dict[str, pd.DataFrame]:
    """The measures of every run of a stage (`workers` groups at a time), and the switches' effects on them, by file
    name (rnnsweep.layout)."""
    runs = _stage_runs(stage_dir)
    train, split, _ = _splits(data_dir, runs)
    per_run, curves = measure_runs(stage_dir, runs, split, settings, workers)
    windows = _windows(split, settings.eval_bytes, int(runs["history_size"].iloc[0]))
    curves = pd.concat([curves, pd.DataFrame(ngram_rows(train, windows, settings.max_order))], ignore_index=True)
    return {
        DYNAMICS: per_run,
        DYNAMICS_CURVES: curves,
        DYNAMICS_EFFECTS: marginals(runs.merge(per_run, on="id"), responses=RESPONSES),
    }


def ranked_dynamics(stage_dir: Path, data_dir: Path, settings: Attractors, rank_by: str) -> dict[str, pd.DataFrame]:
    """What depends on the ranking: the measures' correlation with `rank_by`, and the best runs' attractors, orbit
    diagram and state trajectory, by file name. Reads the stage's measures (`stage_dynamics`), which must be of its
    runs as they are now."""
    runs = _stage_runs(stage_dir)
    try:
        per_run = pd.read_csv(Path(stage_dir) / DYNAMICS)
    except (OSError, ValueError) as err:
        raise SummaryError(f"{stage_dir} has no readable {DYNAMICS} ({err}); measure the stage's dynamics first") from None
    if sorted(per_run["id"]) != sorted(runs["id"]):
        raise SummaryError(f"{Path(stage_dir) / DYNAMICS} measures other runs than the stage's summary lists; "
                           "measure the stage's dynamics again")
    _, split, _ = _splits(data_dir, runs)
    best = ranked_runs(runs, rank_by).head(settings.best)
    return {
        DYNAMICS_LOSS: loss_correlation(runs.merge(per_run, on="id"), rank_by),
        ATTRACTORS: attractor_rows(stage_dir, best, settings),
        ORBITS: orbit_rows(stage_dir, best["id"].iloc[0], settings),
        TRAJECTORY: trajectory_rows(stage_dir, best["id"].iloc[0], split),
    }
