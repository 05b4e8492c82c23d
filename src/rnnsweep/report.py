"""What the HTML report's front page shows (`snakemake --report`): the headline numbers of each stage and the corpus.

The headline table is a tracked result (`rnnsweep headline`), so it is rebuilt
whenever a summary changes. Snakemake renders the front page
(workflow/report/workflow.rst) with Jinja and hands it nothing but the config,
so the workflow reads this table and the corpus record into the config when it
starts (`front_page`); the page then states the numbers and the corpus it was
made from.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd

from rnnsweep.stats import design_label, usable_runs

HEADLINE_COLUMNS = (
    "stage", "runs", "diverged", "best_design", "best_config_id", "seeds",
    "min_loss", "min_loss_bits", "valid_bpb", "test_bpb",
)


def headline(summaries: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per stage: how many runs and diverged, and its best design by mean min_loss over its seeds.

    Mean over seeds, so that stage 3 (replicates) names the design the group table ranks first;
    in stages 1 and 2 each design has one run and the mean is that run's loss.
    """
    rows = []
    for stage, summary in summaries.items():
        usable = usable_runs(summary)
        row = {"stage": stage, "runs": len(summary), "diverged": int((summary["status"] == "diverged").sum())}
        if len(usable):
            means = usable.groupby("config_id")[["min_loss", "valid_bpb", "test_bpb"]].mean()
            best = means.sort_values("min_loss", kind="stable").index[0]
            seeds = usable[usable["config_id"] == best]
            row.update(best_design=design_label(seeds.iloc[0]), best_config_id=best, seeds=len(seeds),
                       min_loss=means.loc[best, "min_loss"], min_loss_bits=means.loc[best, "min_loss"] / math.log(2),
                       valid_bpb=means.loc[best, "valid_bpb"], test_bpb=means.loc[best, "test_bpb"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def front_page(headline_csv: Path, corpus_meta: Path) -> dict[str, object]:
    """The facts the front page states, from the files a finished study has; empty where one is missing."""
    facts: dict[str, object] = {"stages": [], "corpus_sha256": None, "corpus_bytes": None}
    try:
        with open(headline_csv, newline="") as handle:
            facts["stages"] = list(csv.DictReader(handle))
    except OSError:
        pass
    try:
        meta = json.loads(Path(corpus_meta).read_text())
        facts.update(corpus_sha256=meta.get("sha256"), corpus_bytes=meta.get("total_bytes"))
    except (OSError, ValueError, AttributeError):
        pass
    return facts
