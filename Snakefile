# rnnsweep: the whole study of ../shared/study-spec.md as one DAG.
#   snakemake --cores all                               # the published study (enwik8)
#   snakemake --cores 2 --configfile configs/quick.yaml # a 20-minute version
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


rule all:
    input:
        all_targets(),
    default_target: True
