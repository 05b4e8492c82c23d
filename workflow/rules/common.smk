# File names and input functions shared by every rule of one corpus's study (corpora_common.smk checked
# the profile). File and figure names come from rnnsweep.layout, command-line options from rnnsweep.cli:
# the rules spell neither.

import functools
import os
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from rnnsweep import config as study_config
from rnnsweep import figures
from rnnsweep.options import (
    PLOTS,
    RANK,
    TRAINING,
    command_args,
    manifest_args,
    profile_args,
    reading_args,
    shell_words,
)
from rnnsweep.data import NAMED_CORPORA, SPLITS, file_sha256, split_path
from rnnsweep.grid import TOKENIZERS
from rnnsweep.layout import (
    BASELINES,
    BASELINES_FIGURE,
    BENCHMARKS_DIR,
    COSTS,
    CORPUS_META,
    CURVES,
    DATA_DIR,
    DYNAMICS_FIGURES,
    DYNAMICS_MEASURED,
    DYNAMICS_RANKED,
    DYNAMICS_REPORTED,
    DYNAMICS_TABLES,
    FIGURE_SUFFIX,
    FINDINGS,
    LOGS_DIR,
    MANIFEST,
    RANKED_FIGURES,
    RANKED_TABLES,
    HEADLINE,
    SAMPLES,
    STAGE_FIGURES,
    STAGE_TABLES,
    SUMMARY,
    SWEEP_FIGURES,
    SWEEP_TABLES,
    TABLE_SUFFIX,
    TOKENIZER,
    TOKENIZERS as TOKENIZERS_TABLE,
    TOKENIZERS_FIGURE,
    TOKENS_META,
    WITH_BASELINES,
    WORKERS_DIR,
    figures_dir,
    retrained_stage,
    study_dir,
)
from rnnsweep.provenance import ENGINE
from rnnsweep.report import FrontPage
from rnnsweep.select import AXES
from rnnsweep.tokens import ids_path, recipe

# A job's `rnnsweep` is a shell function: this checkout's src/ on PYTHONPATH, with the Python that runs
# Snakemake (even if its virtual environment was not activated), or under a conda deployment the Python of
# the rule's environment. The commands carry their own environment; Snakemake's stays as it was.
_PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else shlex.quote(sys.executable)
)
_SRC = shlex.quote(str(Path(workflow.basedir) / "src"))


shell.prefix(
    f'set -euo pipefail; rnnsweep() {{{{ PYTHONPATH={_SRC} {_PYTHON} -m rnnsweep "$@"; }}}}; '
)
ENV = "../../envs/rnnsweep.yaml"

# Each configuration (`study`) has its own folders, so no profile ever reads, deletes or
# overwrites another's files.
RESULTS = study_dir(config["study"])
FIGURES_DIR = figures_dir(config["study"])
LOGS = f"{RESULTS}/{LOGS_DIR}"
BENCHMARKS = f"{RESULTS}/{BENCHMARKS_DIR}"
DATA = f"{RESULTS}/{DATA_DIR}"
STAGES = study_config.STAGES
# With compare_tokenizers, the last stage's runs are trained again reading the other tokenizer, in
# their own stage folder (stage3-bpe for a byte study).
OTHER_TOKENIZER = next(t for t in TOKENIZERS if t != config["tokenizer"])
RETRAINED = retrained_stage(STAGES[-1], OTHER_TOKENIZER)
WORKERS = list(range(config["workers"]))
# How runs are trained: by the workers, and by aggregation for a run it finds without a valid
# result. Threads are the rule's `threads`, which Snakemake may lower to fit --cores.
TRAINING_ARGS = shell_words(profile_args(config, TRAINING))
# What ranks runs, for the tables and figures that rank (other commands take it with their arguments).
RANKING = shell_words(profile_args(config, RANK))
# Figures by name, for their captions in the report (workflow/report/figure.rst shows a job's).
STAGE_FIGURE = figures.by_name(figures.STAGE_FIGURES + figures.SWEEP_FIGURES)
DYNAMICS_FIGURE = figures.by_name(figures.DYNAMICS_FIGURES)
STUDY_CATEGORY = "study"  # the report's category for what belongs to no one stage
DYNAMICS_CATEGORY = "dynamics"  # the report's category for the dynamics of every stage


wildcard_constraints:
    stage="|".join([*STAGES, RETRAINED]),
    worker=r"\d+",
    figure="|".join(
        sorted({name for names in STAGE_FIGURES.values() for name in names})
        + list(SWEEP_FIGURES)
    ),
    table="|".join(
        sorted({name for names in STAGE_TABLES.values() for name in names})
        + list(SWEEP_TABLES)
    ),
    dynamics_figure="|".join(DYNAMICS_FIGURES),


def arguments(command):
    """What `rnnsweep <command>` takes from the profile, as its options (rnnsweep.options.COMMANDS)."""
    return shell_words(command_args(config, command))


def in_report(path, caption, category="{stage}", subcategory=None):
    """Mark an output for `snakemake --report`: its caption is workflow/report/<caption>.rst, its category its stage."""
    return report(
        path,
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
    )


def dynamics_output(name):
    """A table of a stage's dynamics; the ones a reader reads (not the figures' raw data) go into the report."""
    path = stage_file("{stage}", name)
    if name in DYNAMICS_REPORTED:
        return in_report(path, "dynamics_table", DYNAMICS_CATEGORY, "{stage}")
    return path


def stage_file(stage, name):
    """A file of a stage's folder; `stage` may be the wildcard "{stage}"."""
    return f"{RESULTS}/{stage}/{name}"


def figure_file(stage, name):
    return f"{FIGURES_DIR}/{stage}/{name}{FIGURE_SUFFIX}"


def folder_of(path):
    return str(Path(path).parent)


def corpus_input(wildcards):
    """A local corpus file is an input, so editing it retrains; a named corpus is not a file yet."""
    corpus = config["corpus"]
    return [] if corpus in NAMED_CORPORA else [os.path.expanduser(corpus)]


@functools.cache
def corpus_content():
    """The SHA-256 of a local corpus file (None for a named corpus): a params value, so that a change of its
    bytes reruns the corpus step even where the file's modification time was kept or set back.
    """
    corpus = config["corpus"]
    return None if corpus in NAMED_CORPORA else file_sha256(Path(corpus).expanduser())


def stage_tokenizer(stage):
    """What a stage's runs read: the study's tokenizer, or for the retrained last stage the other one."""
    return OTHER_TOKENIZER if stage == RETRAINED else config["tokenizer"]


def tokens_input(wildcards):
    """The BPE token files, for a stage whose runs read them: a new vocabulary retrains them."""
    return (
        [f"{DATA}/{TOKENS_META}"] if stage_tokenizer(wildcards.stage) == "bpe" else []
    )


def worker_flags(wildcards):
    return expand(
        stage_file(wildcards.stage, f"{WORKERS_DIR}/{{worker}}.done"), worker=WORKERS
    )


def previous_summary(wildcards):
    """The summary a stage's selection reads: the previous stage's."""
    return stage_file(STAGES[STAGES.index(wildcards.stage) - 1], SUMMARY)


def plot_baselines(wildcards):
    """The baselines table, for the figures that draw the best baseline as a line."""
    return [f"{RESULTS}/{BASELINES}"] if wildcards.figure in WITH_BASELINES else []


def baselines_option(wildcards, input):
    return shell_words(["--baselines", *input.baselines]) if input.baselines else ""


def swept(stage):
    """Whether a stage's runs differ in a training setting: its own axes, or the previous stage's carried."""
    if study_config.axes(config[stage]):
        return True
    index = STAGES.index(stage)
    carry = config[stage].get("axes", AXES) == "carry"
    return index > 0 and carry and swept(STAGES[index - 1])


def all_targets():
    targets = [stage_file(stage, SUMMARY) for stage in STAGES]
    targets += [
        stage_file(stage, f"{name}{TABLE_SUFFIX}")
        for stage, names in STAGE_TABLES.items()
        for name in names
    ]
    targets.append(stage_file(STAGES[-1], SAMPLES))
    targets.append(f"{RESULTS}/{HEADLINE}")
    targets.append(f"{RESULTS}/{FINDINGS}")
    targets += [
        f"{RESULTS}/{BASELINES}",
        f"{FIGURES_DIR}/{BASELINES_FIGURE}{FIGURE_SUFFIX}",
    ]
    targets += [
        figure_file(stage, name)
        for stage, names in STAGE_FIGURES.items()
        for name in names
    ]
    for stage in filter(swept, STAGES):
        targets += [stage_file(stage, f"{name}{TABLE_SUFFIX}") for name in SWEEP_TABLES]
        targets += [figure_file(stage, name) for name in SWEEP_FIGURES]
    for stage in config["dynamics"]["stages"]:
        targets += [stage_file(stage, name) for name in DYNAMICS_TABLES]
        targets += [figure_file(stage, name) for name in DYNAMICS_FIGURES]
    if config["compare_tokenizers"]:
        targets += [
            f"{RESULTS}/{TOKENIZERS_TABLE}",
            f"{FIGURES_DIR}/{TOKENIZERS_FIGURE}{FIGURE_SUFFIX}",
        ]
    return targets


# The report's front page (workflow/report/workflow.rst) is rendered with nothing but the config. This
# entry reads the study's own record (headline table, corpus record, manifests), and where the current
# configuration or corpus differs from it, only when the report asks: parsing the workflow reads no result.
config["front_page"] = FrontPage(Path(RESULTS), config, corpus_content)
