# Text from the best run of each stage, continuing the start of the test split.


rule samples:
    input:
        summaries=[stage_file(stage, SUMMARY) for stage in STAGES],
        corpus=f"{DATA}/{CORPUS_META}",
    output:
        in_report(stage_file(STAGES[-1], SAMPLES), "samples", STUDY_CATEGORY),
    log:
        f"{LOGS}/{STAGES[-1]}/samples.log",
    benchmark:
        f"{BENCHMARKS}/samples/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        data=lambda wildcards, input: folder_of(input.corpus),
        options=arguments("samples"),
    shell:
        "rnnsweep samples --summary {input.summaries} --data {params.data} --out {output} {params.options}"
        " 2> {log}"


# The front page's numbers (workflow/report/workflow.rst): each stage's runs, diverged runs and best design.


rule headline:
    input:
        [stage_file(stage, SUMMARY) for stage in STAGES],
    output:
        in_report(f"{RESULTS}/{HEADLINE}", "headline", STUDY_CATEGORY),
    log:
        f"{LOGS}/headline.log",
    benchmark:
        f"{BENCHMARKS}/headline/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        options=arguments("headline"),
    shell:
        "rnnsweep headline --summary {input} --out {output} {params.options} 2> {log}"
