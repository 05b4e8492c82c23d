# Stage 1: every sensible design (docs/study.md §4), one manifest row per run.


rule grid:
    output:
        stage_file("stage1", MANIFEST),
    log:
        f"{LOGS}/stage1/grid.log",
    localrule: True
    conda:
        ENV
    params:
        options=shell_words(manifest_options(config, "stage1")),
    shell:
        "python -m rnnsweep grid --out {output} {params.options} 2> {log}"
