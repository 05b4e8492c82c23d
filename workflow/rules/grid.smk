# Stage 1: every sensible design (docs/study.md §4), one manifest row per run.


rule grid:
    output:
        stage_file(STAGES[0], MANIFEST),
    log:
        f"{LOGS}/{STAGES[0]}/grid.log",
    benchmark:
        f"{BENCHMARKS}/grid/{STAGES[0]}.tsv"
    localrule: True
    conda:
        ENV
    params:
        options=shell_words(manifest_args(config, STAGES[0])),
    shell:
        "rnnsweep grid --out {output} {params.options} 2> {log}"
