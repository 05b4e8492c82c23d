# The published write-up's conclusions, each tested on stage 1 with the study's own evidence and a verdict.


rule findings:
    input:
        summary=stage_file(STAGES[0], SUMMARY),
        baselines=f"{RESULTS}/{BASELINES}",
    output:
        in_report(f"{RESULTS}/{FINDINGS}", "findings", "findings"),
    log:
        f"{LOGS}/findings.log",
    benchmark:
        f"{BENCHMARKS}/findings/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        threshold=config["plots"]["threshold"],
    shell:
        "rnnsweep findings --summary {input.summary} --baselines {input.baselines}"
        " --threshold {params.threshold} --out {output} 2> {log}"
