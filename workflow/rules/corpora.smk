# How the studies of several corpora agree (rnnsweep.corpora): the design rankings between each pair of
# corpora, each switch's effect on every corpus, and a figure. Each corpus's later stages select from its
# own earlier stage (docs/usage.md, "Several corpora").

from rnnsweep.config import STAGES
from rnnsweep.corpora import EFFECTS_STAGE, MARGINALS
from rnnsweep.layout import (
    BENCHMARKS_DIR,
    CORPORA_FIGURE,
    CORPORA_TABLE,
    CORPUS_EFFECTS,
    FIGURE_SUFFIX,
    LOGS_DIR,
    SUMMARY,
    figures_dir,
    study_dir,
)
from rnnsweep.options import command_args, shell_words

STUDY = study_dir(config["study"])


rule corpora:
    input:
        summaries=[
            corpus_file(name, stage, SUMMARY) for name in CORPORA for stage in STAGES
        ],
        marginals=[corpus_file(name, EFFECTS_STAGE, MARGINALS) for name in CORPORA],
    output:
        table=report(
            f"{STUDY}/{CORPORA_TABLE}",
            caption="../report/corpora_table.rst",
            category="corpora",
        ),
        effects=report(
            f"{STUDY}/{CORPUS_EFFECTS}",
            caption="../report/corpus_effects.rst",
            category="corpora",
        ),
        figure=report(
            f"{figures_dir(config['study'])}/{CORPORA_FIGURE}{FIGURE_SUFFIX}",
            caption="../report/corpora_figure.rst",
            category="corpora",
        ),
    log:
        f"{STUDY}/{LOGS_DIR}/corpora.log",
    benchmark:
        f"{STUDY}/{BENCHMARKS_DIR}/corpora/study.tsv"
    localrule: True
    conda:
        "../../envs/rnnsweep.yaml"
    params:
        studies=shell_words(
            [
                word
                for name in CORPORA
                for word in ("--study", name, CORPUS_STUDIES[name])
            ]
        ),
        options=shell_words(command_args(config, "corpora")),
    shell:
        "rnnsweep corpora {params.studies} --out {output.table} --effects {output.effects}"
        " --figure {output.figure} {params.options} 2> {log}"
