"""Where a study keeps its files, and which tables and figures each stage has: the one place that names them.

The workflow's rules, the commands, the tools and the tests all take file
names from here. A study folder holds the corpus splits beside one folder per
stage; a stage folder holds its manifest, its tables and one folder per run.
"""

from __future__ import annotations

from pathlib import Path

from rnnsweep import figures
from rnnsweep.config import STAGES

DATA_DIR = "data"  # results/<study>/data/: the corpus splits beside the stages
CORPUS_META = "corpus.json"  # written last by `rnnsweep data`: the splits are ready
TOKENIZER = "tokenizer.json"  # data/tokenizer.json: the BPE vocabulary learnt from the training split
TOKENS_META = "tokens.json"  # written last by `rnnsweep tokenize`: the id files (data/<split>.ids) are ready
IDS_SUFFIX = ".ids"  # data/<split>.ids: a split as BPE token ids, little-endian uint16

# ---------------------------------------------------------------- a stage's files
MANIFEST = "manifest.csv"  # one row per run: design, replicate, seed, settings, path
SUMMARY = "summary.csv"  # one row per run: the manifest row and its result
CURVES = "curves.csv"  # every run's curve, long form
WORKERS_DIR = "workers"  # workers/<i>.done: worker i saw the stage finished
PROGRESS_DIR = "progress"  # progress/<host>-<pid>.json: a live worker's heartbeat (rnnsweep.progress)
LOGS_DIR = "logs"  # results/<study>/logs/<stage>/: one log per job
BENCHMARKS_DIR = "benchmarks"  # results/<study>/benchmarks/<rule>/<job>.tsv: each job's time and memory
COSTS = "costs.csv"  # results/<study>/costs.csv: the benchmarks summed by rule (rnnsweep.costs)

#: Analysis tables: stage -> names; table <name> of a stage is <stage>/<name>.csv, written by
#: `rnnsweep table <name>` (rnnsweep.tables.TABLES).
STAGE_TABLES: dict[str, tuple[str, ...]] = {
    "stage1": ("regression", "marginals", "effects", "anova", "ranks"),
    "stage2": ("marginals", "effects", "anova", "ranks"),
    "stage3": ("groups", "ranks"),
}
TABLE_SUFFIX = ".csv"
#: Figures: stage -> names (rnnsweep.figures lists them); figure <name> of a stage is
#: figures/<study>/<stage>/<name>.png.
STAGE_FIGURES: dict[str, tuple[str, ...]] = {stage: figures.of_stage(figures.STAGE_FIGURES, stage) for stage in STAGES}
FIGURE_SUFFIX = ".png"
#: What a stage whose runs differ in a training setting (an axis) also has: how the ranking of its designs
#: agrees between the setting's values (rnnsweep.sweeps), as a table and figures.
SWEEP_TABLES = ("sweep",)
SWEEP_FIGURES = tuple(figure.name for figure in figures.SWEEP_FIGURES)
#: The tables and figures that rank runs or designs, and so take the profile's `rank_by` (rnnsweep.ranking).
RANKED_TABLES = ("groups", "sweep")
RANKED_FIGURES = tuple(figure.name for figure in figures.STAGE_FIGURES + figures.SWEEP_FIGURES if figure.ranked)
#: A stage's dynamics (rnnsweep.dynamics_stage): per run,
#: curves by context and lag (with the n-gram baselines on the same bytes), the switches' effects on them and their
#: correlation with the loss, and the best runs' attractors, orbit diagram and state trajectory.
DYNAMICS = "dynamics.csv"
DYNAMICS_CURVES = "dynamics_curves.csv"
DYNAMICS_EFFECTS = "dynamics_effects.csv"
DYNAMICS_LOSS = "dynamics_loss.csv"
ATTRACTORS = "attractors.csv"
ORBITS = "orbits.csv"
TRAJECTORY = "trajectory.csv"
DYNAMICS_MEASURED = (DYNAMICS, DYNAMICS_CURVES, DYNAMICS_EFFECTS)  # `rnnsweep dynamics --stage`: every run measured
DYNAMICS_RANKED = (DYNAMICS_LOSS, ATTRACTORS, ORBITS, TRAJECTORY)  # `rnnsweep dynamics-ranked`: depends on rank_by
DYNAMICS_TABLES = DYNAMICS_MEASURED + DYNAMICS_RANKED
DYNAMICS_REPORTED = (DYNAMICS, DYNAMICS_EFFECTS, DYNAMICS_LOSS)  # in the HTML report; the rest is the figures' data
#: Figures of a stage's dynamics, figures/<study>/<stage>/<name>.png (rnnsweep.figures.DYNAMICS_FIGURES).
DYNAMICS_FIGURES = tuple(figure.name for figure in figures.DYNAMICS_FIGURES)
FINDINGS = "findings.md"  # results/<study>/findings.md: the published claims tested on stage 1 (rnnsweep.findings)
HEADLINE = "headline.csv"  # results/<study>/headline.csv: each stage's runs and best design (rnnsweep.report)
SAMPLES = "samples.md"  # <last stage>/samples.md: text from the best run of each stage
#: results/<study>/baselines.csv: n-gram models and compressors on the test slice (rnnsweep.baselines);
#: figures/<study>/baselines.png sets them beside the best run of each stage.
BASELINES = "baselines.csv"
#: results/<study>/tokenizers.csv and figures/<study>/tokenizers.png: the last stage's designs under the
#: study's tokenizer and, trained again in the folder `retrained_stage`, under the other (stats.tokenizer_table,
#: plots.tokenizers).
TOKENIZERS = "tokenizers.csv"
TOKENIZERS_FIGURE = "tokenizers"
BASELINES_FIGURE = "baselines"
#: A study of several corpora also has, in its own folders, how the corpora's studies agree (rnnsweep.corpora):
#: results/<study>/corpora.csv (the design rankings), results/<study>/corpus_effects.csv (each switch's marginal
#: on every corpus) and figures/<study>/corpora.png (each design's rank on each corpus).
CORPORA_TABLE = "corpora.csv"
CORPUS_EFFECTS = "corpus_effects.csv"
CORPORA_FIGURE = "corpora"
#: Figures that also draw the best baseline, as a line (`rnnsweep plot --baselines`).
WITH_BASELINES = tuple(figure.name for figure in figures.STAGE_FIGURES if figure.baselines)

# ---------------------------------------------------------------- a run's files
RESULT = "result.json"  # written last, atomically: its presence marks a run finished (rnnsweep.results.Result)
CURVE = "curve.csv"
CURVE_COLUMNS = ("step", "ema_loss")  # a run's curve: the EMA loss every log_every steps
WEIGHTS = "weights.pt"
RUN_CONFIG = "config.json"
#: A finished run's files, moved together when the run's settings or data change.
FINISHED_FILES = (RESULT, CURVE, WEIGHTS, RUN_CONFIG)
SUPERSEDED = "superseded"  # runs/<id>/superseded/<fingerprint>/: results of the run under other settings or data
CHECKPOINT = "checkpoint.pt"
ATTEMPTS = "attempts.jsonl"  # one line per claim: who trained the run, from which step, when


def study_dir(study: str) -> str:
    """A study's results folder: results/<study>/."""
    return f"results/{study}"


def figures_dir(study: str) -> str:
    """A study's figures folder: figures/<study>/."""
    return f"figures/{study}"


def corpus_study(study: str, corpus: str) -> str:
    """The study of one corpus in a study of several (`corpus` a list): its folders are results/<study>/<corpus>/
    and figures/<study>/<corpus>/, each a whole study of its own."""
    return f"{study}/{corpus}"


def manifest_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / MANIFEST


def summary_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / SUMMARY


def curves_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / CURVES


def stage_of(manifest: Path) -> Path:
    """The stage folder a manifest describes: the folder that holds it."""
    return Path(manifest).parent


def retrained_stage(last_stage: str, tokenizer: str) -> str:
    """The folder of the last stage's runs trained again on another tokenizer's ids: `stage3-bpe`."""
    return f"{last_stage}-{tokenizer}"


def data_dir_of(stage_dir: Path) -> Path:
    """The corpus splits a stage trains on when none are named: beside the stage folders."""
    return Path(stage_dir).parent / DATA_DIR


def run_dir(stage_dir: Path, run_id: str) -> Path:
    return Path(stage_dir) / "runs" / run_id


def progress_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / PROGRESS_DIR


def lock_path(stage_dir: Path, run_id: str) -> Path:
    return Path(stage_dir) / "locks" / f"{run_id}.lock"
