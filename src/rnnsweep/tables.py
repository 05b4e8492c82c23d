"""The analysis tables by name: what `rnnsweep table <name>` writes (rnnsweep.layout.STAGE_TABLES says where)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from rnnsweep import effects, ranking, stats, sweeps

TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "regression": stats.regression,
    "marginals": effects.marginals,
    "effects": effects.effects,
    "anova": effects.anova,
    "groups": stats.group_table,
    "ranks": ranking.agreement,
    "sweep": sweeps.sweep,
}
