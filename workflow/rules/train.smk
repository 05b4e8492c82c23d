# Training: `workers` jobs per stage race for runs through file locks (rnnsweep.claims).
# Each job ends only when every run of the stage has a result, so a run dropped by a
# killed worker is finished by a live one; the flag file just tells Snakemake it is over.
# Snakemake empties a job's log when it retries the job; the history keeps every attempt's records.


rule train:
    input:
        manifest=stage_file("{stage}", MANIFEST),
        corpus=f"{DATA}/{CORPUS_META}",
        tokens=tokens_input,
    output:
        touch(stage_file("{stage}", f"{WORKERS_DIR}/{{worker}}.done")),
    log:
        f"{LOGS}/{{stage}}/worker-{{worker}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{stage}}-{{worker}}.tsv"
    # A worker stopped by the scheduler (time limit, preemption) checkpoints its runs and
    # exits non-zero; the retry resumes them from their checkpoints.
    retries: 2
    conda:
        ENV
    threads: config["threads_per_worker"]
    params:
        data=lambda wildcards, input: folder_of(input.corpus),
        workers=len(WORKERS),
        training=TRAINING_ARGS,
        history=lambda wildcards: f"{LOGS}/{wildcards.stage}/worker-{wildcards.worker}.history.log",
        engine=ENGINE,  # a new engine version reruns training, and every result is checked anew
    shell:
        "rnnsweep worker --manifest {input.manifest} --data {params.data} --index {wildcards.worker}"
        " --count {params.workers} {params.training} --threads-per-worker {threads} --history {params.history} 2> {log}"
