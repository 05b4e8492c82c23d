# rnnsweep: the whole study (docs/study.md) as one DAG.
#   snakemake --cores all                               # the published study (enwik8)
#   snakemake --cores 2 --configfile configs/quick.yaml # a shorter version
# Each stage lives in its own file under workflow/rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/default.yaml"


# `snakemake --report report.html`: this front page, then every figure and table with its caption.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/grid.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/samples.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/tokenizers.smk"
include: "workflow/rules/findings.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/costs.smk"


# Every rule but `train` and `dynamics` is a `localrule`: small, or (aggregation healing a damaged
# run, the baselines) rare or short, it runs where Snakemake runs; only those two go to a cluster.


rule all:
    default_target: True
    input:
        all_targets(),
        rules.costs.output,
    localrule: True
