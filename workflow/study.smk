# The study of one corpus: every stage, table and figure (docs/study.md). The Snakefile includes it for a
# profile with one corpus, and makes one module of it per corpus for a profile with several.


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/grid.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/select.smk"
include: "rules/plots.smk"
include: "rules/samples.smk"
include: "rules/baselines.smk"
include: "rules/tokenizers.smk"
include: "rules/findings.smk"
include: "rules/dynamics.smk"
include: "rules/costs.smk"


# Everything this corpus's study makes: the target of `all`, or of `<corpus>_study` among several corpora.
rule study:
    input:
        all_targets(),
        rules.costs.output,
    localrule: True
