"""Build the stage-2 and stage-3 manifests from the previous stage's summary (docs/study.md §5–6).

Where the previous stage swept settings (its runs differ in them: its axes),
what it ranks are (design, settings) pairs. The stage's `axes` key says what
the next stage does with them: `carry` keeps each selected pair's own values,
`best` gives every selected design the values of the best run. Either replaces
the stage block's own value of those settings, unless the block lists several.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pandas as pd

from rnnsweep import config
from rnnsweep.design import Design
from rnnsweep.grid import EnginePick, Run, Unit, make_runs, stage1_designs
from rnnsweep.ranking import DEFAULT, ranked_runs
from rnnsweep.sweeps import swept_keys

#: What a later stage does with the previous stage's axes when its profile does not say.
AXES: str = config.default("stage2", "axes")


def _units(rows: pd.DataFrame, summary: pd.DataFrame, axes: str) -> list[Unit]:
    """The designs of ranked rows, each with its own values of the previous axes (`carry`) or the first row's (`best`)."""
    keys = swept_keys(summary)

    def values(row: pd.Series) -> dict[str, object]:
        return {key: config.setting_value(key, str(row[key])) for key in keys}

    best = values(rows.iloc[0]) if len(rows) else {}
    return _unique([(Design.from_mapping(row), values(row) if axes == "carry" else best) for _, row in rows.iterrows()])


def _unique(units: list[Unit]) -> list[Unit]:
    return list({(design, tuple(kept.items())): (design, kept) for design, kept in units}.values())


def stage2_units(
    summary: pd.DataFrame, keep_fraction: float, wide_state_size: int, deep_layers: int, deep_state_sizes: list[int],
    rank_by: str = DEFAULT, axes: str = AXES,
) -> list[Unit]:
    """The best floor(fraction·N) runs of N by `rank_by`, each design with its wider and deeper variants.

    N counts every stage-1 run, diverged ones included, as in the published study
    (43 of 432). A variant that coincides with another is kept once.
    """
    units = []
    for design, kept in _units(ranked_runs(summary, rank_by).head(kept_runs(len(summary), keep_fraction)), summary, axes):
        units += [(design, kept), (design.replace(state_size=wide_state_size), kept)]
        if design.n_layers < deep_layers:
            units += [(design.replace(n_layers=deep_layers, state_size=s), kept) for s in deep_state_sizes]
    return _unique(units)


def kept_runs(runs: int, keep_fraction: float) -> int:
    """floor(fraction × runs), exactly: 0.29 × 100 is 29, not 28."""
    return math.floor(Fraction(str(keep_fraction)) * runs)


def stage3_units(summary: pd.DataFrame, top_k: int, rank_by: str = DEFAULT, axes: str = AXES) -> list[Unit]:
    """The best `top_k` stage-2 (design, settings) pairs by `rank_by`, to be repeated with several seeds."""
    return _units(ranked_runs(summary, rank_by), summary, axes)[:top_k]


def stage2_runs(summary: pd.DataFrame, cfg: dict) -> list[Run]:
    """Stage 2's runs from stage 1's summary; with `batch_designs` and `device` in `cfg`, each on the path the cost model picks."""
    units = stage2_units(summary, cfg["keep_fraction"], cfg["wide_state_size"], cfg["deep_layers"], cfg["deep_state_sizes"],
                         cfg.get("rank_by", DEFAULT), cfg.get("axes") or AXES)
    return make_runs(units, cfg, base_seed=cfg["seed"], engine=_engine_paths(units, cfg, 1))


def stage3_runs(summary: pd.DataFrame, cfg: dict) -> list[Run]:
    """Stage 3's runs from stage 2's summary: its best pairs, each `replicates` times."""
    units = stage3_units(summary, cfg["top_k"], cfg.get("rank_by", DEFAULT), cfg.get("axes") or AXES)
    paths = _engine_paths(units, cfg, cfg["replicates"])
    return make_runs(units, cfg, replicates=cfg["replicates"], base_seed=cfg["seed"], engine=paths)


def _engine_paths(units: list[Unit], cfg: dict, copies: int) -> EnginePick | None:
    """Each run's engine path, by the cost model for `copies` runs of its design; None (all `design`) without `batch_designs`."""
    if "batch_designs" not in cfg:
        return None  # every design on the design path
    from rnnsweep.policy import engine_paths  # torch, only to write a manifest that may use the superset path

    return engine_paths(list(dict.fromkeys(design for design, _ in units)), cfg, copies)


def planned_runs(profile: dict) -> dict[str, int]:
    """The most runs each stage can have: stage 1's exactly; a later stage's if every run it keeps brings every
    variant, times the combinations of its own axes."""
    first, second, third = (profile[stage] for stage in config.STAGES)
    runs = {"stage1": len(stage1_designs(first["n_layers"], first["state_sizes"])) * len(config.points(first))}
    variants = 2 + len(second["deep_state_sizes"])
    runs["stage2"] = kept_runs(runs["stage1"], second["keep_fraction"]) * variants * len(config.points(second))
    runs["stage3"] = min(third["top_k"], runs["stage2"]) * third["replicates"] * len(config.points(third))
    return runs


def size_problems(profile: dict) -> list[str]:
    """A line for each stage that may have more runs than `max_stage_runs`, naming its axes."""
    cap, lines = profile.get("max_stage_runs", config.default("max_stage_runs")), []
    for stage, runs in planned_runs(profile).items():
        if runs > cap:
            swept = ", ".join(f"{stage}.{key}" for key in config.axes(profile[stage])) or stage
            lines.append(f"{swept}: up to {runs} runs, more than max_stage_runs ({cap}); raise max_stage_runs to run them")
    return lines


#: The manifest of a stage from the previous stage's summary and the stage's profile block (with `seed`).
SELECTIONS = {"stage2": stage2_runs, "stage3": stage3_runs}
