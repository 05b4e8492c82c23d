# Training: `workers` jobs per stage race for runs through file locks (rnnsweep.claims).
# Each job ends only when every run of the stage has a result, so a run dropped by a
# killed worker is finished by a live one; the flag file just tells Snakemake it is over.


rule train:
    input:
        manifest=f"{RESULTS}/{{stage}}/manifest.csv",
        corpus=f"{DATA}/corpus.json",
    output:
        touch(f"{RESULTS}/{{stage}}/workers/{{worker}}.done"),
    params:
        results=lambda wildcards, input: results_of(input.manifest),
        data=lambda wildcards, input: folder_of(input.corpus),
        workers=len(WORKERS),
        training=TRAINING,
        engine=ENGINE,  # a new engine version reruns training, and every result is checked anew
    threads: config["threads_per_worker"]
    resources:
        # On SLURM: profiles/slurm sets runtime, memory and GPUs of this rule.
        worker_slots=1,
    conda:
        ENV
    log:
        f"{LOGS}/{{stage}}/worker-{{worker}}.log",
    shell:
        "python -m rnnsweep worker --stage {wildcards.stage} --results {params.results} --data {params.data} {params.training}"
        " --index {wildcards.worker} --count {params.workers} --threads {threads} 2> {log}"
