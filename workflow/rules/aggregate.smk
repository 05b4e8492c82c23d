# One CSV row per run and a long-form CSV of every loss curve, plus the analysis tables.


# A run found without a valid result (damaged, or made under other settings or data) is
# trained by this job before it aggregates, so the same command heals the stage.
rule aggregate:
    input:
        flags=worker_flags,
        manifest=stage_file("{stage}", MANIFEST),
        corpus=f"{DATA}/{CORPUS_META}",
        tokens=tokens_input,
    output:
        summary=in_report(stage_file("{stage}", SUMMARY), "summary"),
        curves=in_report(stage_file("{stage}", CURVES), "curves"),
    log:
        f"{LOGS}/{{stage}}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate/{{stage}}.tsv"
    localrule: True
    conda:
        ENV
    threads: config["threads_per_worker"]
    params:
        data=lambda wildcards, input: folder_of(input.corpus),
        training=TRAINING_ARGS,
        engine=ENGINE,  # a new engine version reruns training, and every result is checked anew
    shell:
        "rnnsweep aggregate --manifest {input.manifest} --data {params.data} --summary {output.summary}"
        " --curves {output.curves} {params.training} --threads-per-worker {threads} 2> {log}"


rule table:
    input:
        stage_file("{stage}", SUMMARY),
    output:
        in_report(stage_file("{stage}", f"{{table}}{TABLE_SUFFIX}"), "table"),
    log:
        f"{LOGS}/{{stage}}/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/table/{{stage}}-{{table}}.tsv"
    localrule: True
    conda:
        ENV
    params:
        rank=lambda wildcards: RANKING if wildcards.table in RANKED_TABLES else "",
    shell:
        "rnnsweep table {wildcards.table} --summary {input} --out {output} {params.rank} 2> {log}"
