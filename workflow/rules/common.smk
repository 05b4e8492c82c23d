# Configuration checks, paths and input functions shared by every rule.

import os
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from rnnsweep import config as study_config
from rnnsweep.layout import DATA_DIR
from rnnsweep.provenance import ENGINE
from rnnsweep.grid import SETTINGS

try:
    study_config.validate(study_config.coerce(config))
except study_config.ConfigError as err:
    raise ValueError(str(err)) from None

# Jobs run `python -m rnnsweep`, with this checkout's src/ on PYTHONPATH. Without
# a conda deployment `python` is the one running Snakemake, even if its virtual
# environment was not activated; with `--sw-deployment-method conda` it is the
# env's own.
_prefix = f"export PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'src'))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "  # braces doubled twice: f-string, then Snakemake
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _prefix += f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; '
shell.prefix(_prefix)
ENV = "../../envs/rnnsweep.yaml"

# Each configuration (`study`) has its own folders, so no profile ever reads, deletes or
# overwrites another's files.
RESULTS = f"results/{config['study']}"
FIGURES_DIR = f"figures/{config['study']}"
LOGS = f"{RESULTS}/logs"
DATA = f"{RESULTS}/{DATA_DIR}"
STAGES = study_config.STAGES
WORKERS = list(range(config["workers"]))

# Figures of each stage (names are rnnsweep.plots.FIGURES keys).
FIGURES = {
    "stage1": ["loss_curves", "swarm_all", "swarm_below", "regression"],
    "stage2": ["best_curves", "swarm"],
    "stage3": ["group_swarm", "group_curves", "group_means", "group_table"],
}
TABLES = {"stage1": "regression", "stage3": "groups"}


wildcard_constraints:
    stage="stage[123]",
    worker=r"\d+",


def flags(block, keys):
    """Command-line flags for the given keys of a config block (lists become several values)."""
    parts = []
    for key in keys:
        value = block[key]
        values = value if isinstance(value, list) else [value]
        parts.append(f"--{key.replace('_', '-')} " + " ".join(shlex.quote(str(v)) for v in values))
    return " ".join(parts)


def corpus_input(wildcards):
    """A local corpus file is an input, so editing it retrains; enwik8 and generated are not files yet."""
    corpus = config["corpus"]
    return [] if corpus in ("enwik8", "generated") else [os.path.expanduser(corpus)]


if config["corpus"] not in ("enwik8", "generated") and not os.path.isfile(os.path.expanduser(config["corpus"])):
    raise ValueError(f"corpus: {config['corpus']} is not a file; give 'enwik8', 'generated' or the path of a byte file")


def worker_flags(wildcards):
    return expand(f"{RESULTS}/{{stage}}/workers/{{worker}}.done", stage=wildcards.stage, worker=WORKERS)


def all_targets():
    targets = [f"{RESULTS}/{stage}/summary.csv" for stage in STAGES]
    targets += [f"{RESULTS}/{stage}/{table}.csv" for stage, table in TABLES.items()]
    targets += [f"{FIGURES_DIR}/{stage}/{name}.png" for stage, names in FIGURES.items() for name in names]
    return targets


# How a run is trained: by the workers, and by aggregation for a run it finds without a valid result.
TRAINING = (
    f"--device {config['device']} --lock {config['lock']} --lease-s {config['lock_lease_s']}"
    f" --checkpoint-every {config['checkpoint_every']}"
)


def manifest_flags(stage):
    """What a manifest row records beside the design: the stage's training settings, precision and path policy."""
    policy = {key: config[key] for key in ("precision", "batch_designs", "device")}
    return f"{flags(config[stage], SETTINGS)} {flags(policy, policy)}"


def results_of(path):
    """The study folder that holds a stage file: results/<study>/<stage>/<file> gives results/<study>."""
    return str(Path(path).parent.parent)


def folder_of(path):
    return str(Path(path).parent)
