# Stage 2 refines the best stage-1 designs (docs/study.md §5); stage 3 repeats the best of
# stage 2 with seeds (§6). Each reads the previous stage's summary.


rule select:
    input:
        previous_summary,
    output:
        stage_file("{stage}", MANIFEST),
    log:
        f"{LOGS}/{{stage}}/select.log",
    benchmark:
        f"{BENCHMARKS}/select/{{stage}}.tsv"
    wildcard_constraints:
        stage="|".join(STAGES[1:]),
    localrule: True
    conda:
        ENV
    params:
        options=lambda wildcards: shell_words(manifest_args(config, wildcards.stage)),
    shell:
        "rnnsweep select --stage {wildcards.stage} --summary {input} --out {output} {params.options} 2> {log}"
