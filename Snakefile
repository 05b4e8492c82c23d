# rnnsweep: the whole study (docs/study.md) as one DAG.
#   snakemake --cores all                               # the published study (enwik8)
#   snakemake --cores 2 --configfile configs/quick.yaml # a shorter version
# Each stage lives in its own file under workflow/rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/default.yaml"


# `snakemake --report report.html`: this front page, then every figure and table with its caption.
report: "workflow/report/workflow.rst"


# One corpus or several (rnnsweep.data.corpora): with several, each gets a whole study of its own, the
# module workflow/study.smk under the corpus's name (rules `<corpus>_train`, ...; files under
# results/<study>/<corpus>/), and the rule `corpora` compares them.
include: "workflow/rules/corpora_common.smk"


if len(CORPORA) == 1:

    include: "workflow/study.smk"

else:
    for MODULE in CORPUS_MODULES:

        module:
            name: MODULE
            snakefile:
                "workflow/study.smk"
            config:
                CORPUS_MODULES[MODULE]

        use rule * from MODULE as MODULE*

    include: "workflow/rules/corpora.smk"

    # The report's front page describes the first corpus's study; its category `corpora` compares them all.
    config["front_page"] = next(iter(CORPUS_MODULES.values()))["front_page"]


# Every rule but `train` and `dynamics` is a `localrule`: small, or (aggregation healing a damaged
# run, the baselines) rare or short, it runs where Snakemake runs; only those two go to a cluster.


rule all:
    default_target: True
    input:
        study_targets(),
    localrule: True
