"""Do the conclusions survive another text? The studies of several corpora, side by side.

A profile whose `corpus` is a list runs one whole study per corpus, in
results/<study>/<corpus>/: its own splits, baselines, held-out scores, stages,
selection and findings (docs/usage.md, "Several corpora"). Each corpus's later
stages select from its own earlier stage, so its finalists are the ones its own
text chose, and adding a corpus changes nothing in another's study. This module
reads the studies together:

* `agreement`: for each stage, each pair of corpora and each combination of the
  stage's other axes, how far the rankings of the designs trained on both agree:
  Spearman's rho with its 95 % interval, the shared top 10 % and the best design
  on each (rnnsweep.sweeps, with the corpus as the axis). Stage 1 trains the same
  designs on every corpus; a later stage compares only the designs both chose.
* `switch_effects`: each switch's marginal on − off difference on every corpus
  (stage 1's marginals table, with its interval and Holm p), and whether every
  corpus finds it pointing the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from rnnsweep.aggregate import read_summary
from rnnsweep.config import STAGES
from rnnsweep.effects import LEVEL
from rnnsweep.layout import TABLE_SUFFIX, summary_path
from rnnsweep.ranking import DEFAULT
from rnnsweep.sweeps import COLUMNS, CORPUS, sweep

AGREEMENT_COLUMNS = ["stage", *COLUMNS]
#: The stage whose switch effects are compared: the first, where every corpus trains every design.
EFFECTS_STAGE = STAGES[0]
MARGINALS = f"marginals{TABLE_SUFFIX}"


def stage_summaries(studies: Mapping[str, Path], stage: str) -> pd.DataFrame:
    """One stage's runs of every corpus's study as one table, each row naming its corpus."""
    return pd.concat([read_summary(summary_path(Path(folder) / stage)).assign(**{CORPUS: name})
                      for name, folder in studies.items()], ignore_index=True)


def agreement(summaries: Mapping[str, pd.DataFrame], rank_by: str = DEFAULT) -> pd.DataFrame:
    """Stage -> every corpus's runs (`stage_summaries`) in, the rank agreement between each pair of corpora out."""
    parts = []
    for stage, summary in summaries.items():
        table = sweep(summary, rank_by)
        parts.append(table[table["axis"] == CORPUS].assign(stage=stage))
    return pd.concat(parts, ignore_index=True)[AGREEMENT_COLUMNS] if parts else pd.DataFrame(columns=AGREEMENT_COLUMNS)


def switch_effects(marginals: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Corpus -> its marginals table in; one row per response and switch out, with each corpus's on − off
    difference, interval and Holm p side by side, and whether every corpus's difference has the same sign
    (`same_sign`) and every one is found (Holm p below 1 − LEVEL: `all_found`)."""
    wide = None
    for name, table in marginals.items():
        main = table[table["within"].fillna("") == ""].set_index(["response", "switch"])
        part = main[["diff", "ci_low", "ci_high", "p_holm"]].add_suffix(f"_{name}")
        wide = part if wide is None else wide.join(part, how="outer")
    if wide is None:
        return pd.DataFrame(columns=["response", "switch", "same_sign", "all_found"])
    signs = np.sign(wide[[f"diff_{name}" for name in marginals]])
    wide["same_sign"] = signs.nunique(axis=1).eq(1) & signs.ne(0).all(axis=1)
    wide["all_found"] = wide[[f"p_holm_{name}" for name in marginals]].lt(1 - LEVEL).all(axis=1)
    return wide.reset_index()
