# One CSV row per run and a long-form CSV of every loss curve, plus the analysis tables.


# A run found without a valid result (damaged, or made under other settings or data) is
# trained by this job before it aggregates, so the same command heals the stage.
rule aggregate:
    input:
        flags=worker_flags,
        corpus=f"{DATA}/corpus.json",
    output:
        summary=f"{RESULTS}/{{stage}}/summary.csv",
        curves=f"{RESULTS}/{{stage}}/curves.csv",
    params:
        results=lambda wildcards, output: results_of(output.summary),
        data=lambda wildcards, input: folder_of(input.corpus),
        training=TRAINING,
        engine=ENGINE,  # a new engine version reruns training, and every result is checked anew
    threads: config["threads_per_worker"]
    conda:
        ENV
    log:
        f"{LOGS}/{{stage}}/aggregate.log",
    shell:
        "python -m rnnsweep aggregate --stage {wildcards.stage} --results {params.results} --data {params.data} {params.training}"
        " --threads {threads} 2> {log}"


rule regression_table:
    input:
        f"{RESULTS}/stage1/summary.csv",
    output:
        f"{RESULTS}/stage1/regression.csv",
    params:
        results=lambda wildcards, input: results_of(input[0]),
    conda:
        ENV
    log:
        f"{LOGS}/stage1/regression.log",
    shell:
        "python -m rnnsweep table regression --stage stage1 --results {params.results} --out {output} 2> {log}"


rule group_table:
    input:
        f"{RESULTS}/stage3/summary.csv",
    output:
        f"{RESULTS}/stage3/groups.csv",
    params:
        results=lambda wildcards, input: results_of(input[0]),
    conda:
        ENV
    log:
        f"{LOGS}/stage3/groups.log",
    shell:
        "python -m rnnsweep table groups --stage stage3 --results {params.results} --out {output} 2> {log}"
