"""Analysis tables of a stage's summary: which runs count, factor regression, stage-3 group statistics, design labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rnnsweep.grid import SWITCHES

FACTORS: tuple[str, ...] = SWITCHES + ("n_layers", "state_size")

# Short names for switches that are on; order fixes the order inside a label.
_GATE_ABBREV: tuple[tuple[str, str], ...] = (
    ("use_input_gate", "I"),
    ("use_forget_gate", "F"),
    ("use_output_gate", "O"),
    ("use_state_gate", "SG"),
    ("use_residual", "res"),
)
_SOURCE_ABBREV: tuple[tuple[str, str], ...] = (("use_new_state", "new"), ("use_old_state", "old"))


def usable_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs a selection or a statistic may use: finished ok with a positive, finite min_loss.

    Diverged runs carry no meaningful loss, and log() needs a positive one.
    """
    loss = pd.to_numeric(summary["min_loss"], errors="coerce")
    keep = (summary["status"] == "ok") & np.isfinite(loss) & (loss > 0)
    return summary.loc[keep]


def regression(summary: pd.DataFrame) -> pd.DataFrame:
    """Standardised least-squares coefficients of log(min_loss) on FACTORS, plus R².

    Standardising both sides makes coefficients comparable across boolean and numeric
    factors; log() because loss improvements are multiplicative rather than additive.
    Constant factors (e.g. n_layers in stage 2) cannot be estimated, so they get NaN.
    """
    runs = usable_runs(summary)
    y = np.log(runs["min_loss"].to_numpy(dtype=float))
    x = runs[list(FACTORS)].to_numpy(dtype=float)
    coef = np.full(len(FACTORS), np.nan)
    r2 = np.nan
    scale = x.std(axis=0) if len(y) else np.zeros(len(FACTORS))
    varying = scale > 0
    if len(y) > varying.sum() + 1 and y.std() > 0:
        z = (x[:, varying] - x[:, varying].mean(axis=0)) / scale[varying]
        target = (y - y.mean()) / y.std()
        beta, *_ = np.linalg.lstsq(z, target, rcond=None)
        coef[varying] = beta
        residual = target - z @ beta
        r2 = 1.0 - float(residual @ residual) / float(target @ target)
    return pd.DataFrame({"term": [*FACTORS, "R2"], "coef": [*coef, r2], "n": len(y)})


def group_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-design statistics over replicates, ranked by mean min_loss.

    Diverged replicates are excluded from the statistics (their loss is undefined), so
    `n` counts the replicates that actually contributed.
    """
    loss = summary["min_loss"].where(summary.index.isin(usable_runs(summary).index))
    stats = loss.groupby(summary["config_id"]).agg(
        mean="mean", std="std", min="min", max="max", n="count"
    )
    config = summary.groupby("config_id")[list(FACTORS)].first()
    table = config.join(stats).sort_values("mean", na_position="last", kind="stable")
    table = table.reset_index()
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.insert(2, "label", [design_label(row) for _, row in table.iterrows()])
    return table


def design_label(row: Mapping[str, Any] | pd.Series) -> str:
    """Compact design name ('L2 S256 F+SG+res new') that fits in legends and table cells."""
    gates = "+".join(abbrev for name, abbrev in _GATE_ABBREV if bool(row[name])) or "nogate"
    sources = "+".join(abbrev for name, abbrev in _SOURCE_ABBREV if bool(row[name])) or "nostate"
    return f"L{int(row['n_layers'])} S{int(row['state_size'])} {gates} {sources}"


#: Analysis tables by name (rnnsweep.layout.STAGE_TABLES says which stage has which): summary -> table.
TABLES = {"regression": regression, "groups": group_table}
