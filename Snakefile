# rnnsweep: the whole study (docs/study.md) as one DAG.
#   snakemake --cores all                               # the published study (enwik8)
#   snakemake --cores 2 --configfile configs/quick.yaml # a shorter version
# Each stage lives in its own file under workflow/rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/grid.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/samples.smk"
include: "workflow/rules/baselines.smk"


# Small jobs run where Snakemake runs, never as cluster jobs; only training and
# aggregation (which may train) are submitted.
localrules:
    all,
    corpus,
    grid,
    select,
    table,
    plot,
    samples,
    compare,


rule all:
    default_target: True
    input:
        all_targets(),
