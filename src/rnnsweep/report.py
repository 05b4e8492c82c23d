"""What the HTML report's front page shows (`snakemake --report`): the headline numbers of each stage and the corpus.

The headline table is a tracked result (`rnnsweep headline`), so it is rebuilt
whenever a summary changes. Snakemake renders the front page
(workflow/report/workflow.rst) with Jinja and hands it nothing but the config,
so the workflow puts a `FrontPage` into the config, which reads the study's own
record (`front_page`) the first time the page asks for a fact: this table, the
corpus record and each stage's manifest. Nothing is read while the workflow is
parsed or run, only when the report is rendered. The page states those, not the command line's values, and says at its top, line by
line, where the current configuration or corpus differs from them or a table
is older than what it is made from.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from rnnsweep import config, provenance, ranking
from rnnsweep.config import STAGES
from rnnsweep.data import NAMED_CORPORA, SPLITS
from rnnsweep.grid import ManifestError, Run, read_manifest, run_seed
from rnnsweep.layout import CORPUS_META, DATA_DIR, HEADLINE, manifest_path, summary_path
from rnnsweep.stats import design_label

HEADLINE_COLUMNS = (
    "stage", "runs", "diverged", "rank_by", "best_design", "best_config_id", "seeds",
    "min_loss", "min_loss_bits", "valid_bpb", "test_bpb",
)


def headline(summaries: dict[str, pd.DataFrame], rank_by: str = ranking.DEFAULT) -> pd.DataFrame:
    """One row per stage: how many runs and diverged, and its best design by the mean of `rank_by` over its seeds.

    Mean over seeds, so that stage 3 (replicates) names the design the group table ranks first;
    in stages 1 and 2 each design has one run and the mean is that run's value.
    """
    rows = []
    for stage, summary in summaries.items():
        usable = ranking.ranked_runs(summary, rank_by)
        row = {"stage": stage, "runs": len(summary), "diverged": int((summary["status"] == "diverged").sum()), "rank_by": rank_by}
        if len(usable):
            means = usable.groupby("config_id")[list(dict.fromkeys(["min_loss", "valid_bpb", "test_bpb", rank_by]))].mean()
            best = means.sort_values(rank_by, kind="stable").index[0]
            seeds = usable[usable["config_id"] == best]
            row.update(best_design=design_label(seeds.iloc[0]), best_config_id=best, seeds=len(seeds),
                       min_loss=means.loc[best, "min_loss"], min_loss_bits=means.loc[best, "min_loss"] / math.log(2),
                       valid_bpb=means.loc[best, "valid_bpb"], test_bpb=means.loc[best, "test_bpb"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def front_page(study: Path, profile: Mapping, corpus_sha256: str | None) -> dict[str, object]:
    """The facts the front page states, all read from the study's files, and what makes them out of date.

    The page describes what is on disk, never the command that asks for it: the corpus from corpus.json,
    each stage's settings from its manifest, the best designs from headline.csv. `profile` (the current
    configuration) and `corpus_sha256` (the current local corpus file's hash, None for a named corpus)
    are only compared with them: every difference, and every table older than what it is made from
    (what `snakemake` would make again), is a line of `stale`, which the page shows at its top.
    """
    study = Path(study)
    corpus, stages = _read_json(study / DATA_DIR / CORPUS_META), {}
    stale: list[str] = []
    carried: set[str] = set()  # the axes of the stage before, which a later stage's runs keep
    for stage in STAGES:
        try:
            runs = read_manifest(manifest_path(study / stage))
        except ManifestError:
            continue
        stages[stage] = recorded_settings(runs)
        stale += _stage_staleness(study, stage, stages[stage], profile[stage], corpus, carried)
        carried = {key for key in config.training_keys() if isinstance(stages[stage][key], list)}
        if any(run.seed != run_seed(run.design.id, run.replicate, profile["seed"]) for run in runs):
            stale.append(f"{stage}: its runs' seeds derive from another base seed than the configuration's ({profile['seed']})")
    if corpus is not None:
        stale += _corpus_staleness(corpus, profile["corpus"], corpus_sha256)
    stale += _older_than_inputs(study, list(stages))
    return {"stages": _headline_rows(study / HEADLINE), "corpus": corpus, "settings": stages, "stale": stale}


class FrontPage(dict):
    """The front page's facts (`front_page`), read the first time the page looks one up.

    Snakemake renders workflow/report/workflow.rst with the config alone, so the workflow puts one of
    these there. It stays empty while the workflow is parsed and its jobs run (Snakemake's own copy of
    the config sees an empty mapping), and reads the results only when `snakemake --report` renders
    the page; `corpus_sha256` is called then too.
    """

    def __init__(self, study: Path, profile: Mapping, corpus_sha256: Callable[[], str | None]) -> None:
        super().__init__()
        self._sources = (Path(study), profile, corpus_sha256)
        self._read = False

    def __missing__(self, key: str) -> object:
        if self._read:
            raise KeyError(key)
        study, profile, corpus_sha256 = self._sources
        self.update(front_page(study, profile, corpus_sha256()))
        self._read = True
        return self[key]


def _recorded_form(value: object) -> object:
    """A profile's value as recorded_settings states it: one value, or an axis's values in order."""
    if not isinstance(value, list):
        return value
    values = sorted(set(value))
    return values[0] if len(values) == 1 else values


def recorded_settings(runs: list[Run]) -> dict[str, object]:
    """What a stage's manifest says its runs are: their count, designs, seeds and training settings."""
    values = {key: sorted({run.settings[key] for run in runs}) for key in config.training_keys()}
    return {
        "runs": len(runs), "designs": len({run.config_id for run in runs}),
        "replicates": max(run.replicate for run in runs) + 1 if runs else 0,
        "n_layers": sorted({run.design.n_layers for run in runs}),
        "state_sizes": sorted({run.design.state_size for run in runs}),
        **{key: vals[0] if len(vals) == 1 else vals for key, vals in values.items()},
    }


def _stage_staleness(study: Path, stage: str, recorded: dict, block: Mapping, corpus: dict | None, carried: set[str]) -> list[str]:
    """How a stage's recorded runs differ from the profile's settings (but for those it `carried` from the stage
    before) and from the corpus record."""
    lines = [
        f"{stage}.{key}: the results have {recorded[key]}, the configuration asks for {block[key]}"
        for key in config.training_keys() if key in block and key not in carried and recorded[key] != _recorded_form(block[key])
    ]
    for key in ("n_layers", "state_sizes") if stage == STAGES[0] else ():
        if recorded[key] != sorted(set(block[key])):
            lines.append(f"{stage}.{key}: the results have {recorded[key]}, the configuration asks for {block[key]}")
    try:
        data = set(pd.read_csv(summary_path(study / stage), usecols=["data"])["data"])
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return lines
    if corpus is not None and data != {_data_id(corpus)}:
        lines.append(f"{stage}: its summary holds runs of other corpus bytes than {DATA_DIR}/{CORPUS_META} records")
    return lines


def _corpus_staleness(corpus: dict, asked: str, asked_sha256: str | None) -> list[str]:
    source = asked if asked in NAMED_CORPORA else str(Path(asked).expanduser().resolve())
    if corpus.get("source") != source:
        return [f"corpus: the results are of {corpus.get('source')}, the configuration asks for {asked}"]
    if asked_sha256 is not None and corpus.get("sha256") != asked_sha256:
        return [f"corpus: {asked} has changed since its splits were made (its SHA-256 differs)"]
    return []


def _older_than_inputs(study: Path, stages: list[str]) -> list[str]:
    """Tables older than a file they are made from (the workflow's own edges): what Snakemake would make again."""
    corpus, headline_csv = study / DATA_DIR / CORPUS_META, study / HEADLINE
    edges = []
    for i, stage in enumerate(stages):
        summary = summary_path(study / stage)
        edges += [(corpus, summary), (manifest_path(study / stage), summary), (summary, headline_csv)]
        if i + 1 < len(stages):
            edges.append((summary, manifest_path(study / stages[i + 1])))
    return [
        f"{made.relative_to(study)} is older than {source.relative_to(study)}: run the study again to bring it up to date"
        for source, made in edges
        if source.exists() and made.exists() and made.stat().st_mtime_ns < source.stat().st_mtime_ns
    ]


def _data_id(corpus: dict) -> str | None:
    shas = corpus.get("split_sha256")
    return provenance.digest_of({split: shas[split] for split in SPLITS}) if isinstance(shas, dict) else None


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _headline_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []
