# What n-gram models and compressors get on the bytes the runs are scored on, and the best run of
# each stage beside them.


rule baselines:
    input:
        corpus=f"{DATA}/{CORPUS_META}",
    output:
        in_report(f"{RESULTS}/{BASELINES}", "baselines_table", STUDY_CATEGORY),
    log:
        f"{LOGS}/baselines.log",
    benchmark:
        f"{BENCHMARKS}/baselines/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        data=lambda wildcards, input: folder_of(input.corpus),
        options=arguments("baselines"),
    shell:
        "rnnsweep baselines --data {params.data} --out {output} {params.options} 2> {log}"


rule compare:
    input:
        baselines=rules.baselines.output[0],
        summaries=[stage_file(stage, SUMMARY) for stage in STAGES],
    output:
        in_report(
            f"{FIGURES_DIR}/{BASELINES_FIGURE}{FIGURE_SUFFIX}",
            "baselines_figure",
            STUDY_CATEGORY,
        ),
    log:
        f"{LOGS}/compare.log",
    benchmark:
        f"{BENCHMARKS}/compare/study.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "rnnsweep compare --baselines {input.baselines} --summary {input.summaries} --out {output} 2> {log}"
