# One CSV row per run and a long-form CSV of every loss curve, plus the analysis tables.


rule aggregate:
    input:
        worker_flags,
    output:
        summary="results/{stage}/summary.csv",
        curves="results/{stage}/curves.csv",
    conda:
        ENV
    log:
        "logs/{stage}/aggregate.log",
    shell:
        "python -m rnnsweep aggregate --stage {wildcards.stage} --results results 2> {log}"


rule regression_table:
    input:
        "results/stage1/summary.csv",
    output:
        "results/stage1/regression.csv",
    conda:
        ENV
    log:
        "logs/stage1/regression.log",
    shell:
        "python -m rnnsweep table regression --stage stage1 --results results --out {output} 2> {log}"


rule group_table:
    input:
        "results/stage3/summary.csv",
    output:
        "results/stage3/groups.csv",
    conda:
        ENV
    log:
        "logs/stage3/groups.log",
    shell:
        "python -m rnnsweep table groups --stage stage3 --results results --out {output} 2> {log}"
