"""Build the stage-2 and stage-3 manifests from the previous stage's summary (docs/study.md §5–6)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import pandas as pd

from rnnsweep.design import Design
from rnnsweep.grid import Run, make_runs
from rnnsweep.ranking import DEFAULT, ranked_runs


def _designs(rows: pd.DataFrame) -> list[Design]:
    return [Design.from_mapping(row) for _, row in rows.iterrows()]


def _unique(designs: list[Design]) -> list[Design]:
    return list(dict.fromkeys(designs))


def stage2_designs(
    summary: pd.DataFrame, keep_fraction: float, wide_state_size: int, deep_layers: int, deep_state_sizes: list[int],
    rank_by: str = DEFAULT,
) -> list[Design]:
    """The best floor(fraction·N) designs of N by `rank_by`, each with its wider and deeper variants.

    N counts every stage-1 run, diverged ones included, as in the published study
    (43 of 432). A variant that coincides with another design is kept once.
    """
    keep = math.floor(Fraction(str(keep_fraction)) * len(summary))  # exact: 0.29 × 100 is 29, not 28
    designs = []
    for design in _designs(ranked_runs(summary, rank_by).head(keep)):
        designs += [design, design.replace(state_size=wide_state_size)]
        if design.n_layers < deep_layers:
            designs += [design.replace(n_layers=deep_layers, state_size=s) for s in deep_state_sizes]
    return _unique(designs)


def stage3_designs(summary: pd.DataFrame, top_k: int, rank_by: str = DEFAULT) -> list[Design]:
    """The best `top_k` stage-2 designs by `rank_by`, to be repeated with several seeds."""
    return _unique(_designs(ranked_runs(summary, rank_by)))[:top_k]


def stage2_runs(summary: pd.DataFrame, cfg: dict) -> list[Run]:
    """Stage 2's runs from stage 1's summary; with `batch_designs` and `device` in `cfg`, each on the path the cost model picks."""
    designs = stage2_designs(summary, cfg["keep_fraction"], cfg["wide_state_size"], cfg["deep_layers"], cfg["deep_state_sizes"],
                             cfg.get("rank_by", DEFAULT))
    return make_runs(designs, cfg, base_seed=cfg["seed"], engine=_engine_paths(designs, cfg, 1))


def stage3_runs(summary: pd.DataFrame, cfg: dict) -> list[Run]:
    """Stage 3's runs from stage 2's summary: its best designs, each `replicates` times."""
    designs = stage3_designs(summary, cfg["top_k"], cfg.get("rank_by", DEFAULT))
    paths = _engine_paths(designs, cfg, cfg["replicates"])
    return make_runs(designs, cfg, replicates=cfg["replicates"], base_seed=cfg["seed"], engine=paths)


def _engine_paths(designs: list[Design], cfg: dict, copies: int) -> Callable[[Design], str] | None:
    """Each design's engine path, by the cost model for `copies` runs of it; None (all `design`) without `batch_designs`."""
    if "batch_designs" not in cfg:
        return None  # every design on the design path
    from rnnsweep.policy import engine_paths  # torch, only to write a manifest that may use the superset path

    return engine_paths(designs, cfg, copies)


#: The manifest of a stage from the previous stage's summary and the stage's profile block (with `seed`).
SELECTIONS: dict[str, Callable[[pd.DataFrame, dict], list[Run]]] = {"stage2": stage2_runs, "stage3": stage3_runs}
