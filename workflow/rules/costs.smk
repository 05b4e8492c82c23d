# Where the study's time went: every job's benchmark record, summed by rule, once everything else is done.


rule costs:
    input:
        all_targets(),
    output:
        in_report(f"{RESULTS}/{COSTS}", "costs", STUDY_CATEGORY),
    log:
        f"{LOGS}/costs.log",
    benchmark:
        f"{BENCHMARKS}/costs/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        benchmarks=BENCHMARKS,
    shell:
        "rnnsweep costs --benchmarks {params.benchmarks} --out {output} 2> {log}"
