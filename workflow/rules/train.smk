# Training: `workers` jobs per stage race for runs through file locks (rnnsweep.claims).
# Each job ends only when every run of the stage has a result, so a run dropped by a
# killed worker is finished by a live one; the flag file just tells Snakemake it is over.


rule train:
    input:
        manifest="results/{stage}/manifest.csv",
        corpus=f"{DATA}/corpus.json",
    output:
        touch("results/{stage}/workers/{worker}.done"),
    params:
        workers=len(WORKERS),
        device=config["device"],
        precision=config["precision"],
        lock=config["lock"],
        lease_s=config["lock_lease_s"],
        checkpoint_every=config["checkpoint_every"],
    threads: config["threads_per_worker"]
    resources:
        # On SLURM: profiles/slurm sets runtime, memory and GPUs of this rule.
        worker_slots=1,
    conda:
        ENV
    log:
        "logs/{stage}/worker-{worker}.log",
    shell:
        "python -m rnnsweep worker --stage {wildcards.stage} --results results --data results/data"
        " --index {wildcards.worker} --count {params.workers} --device {params.device}"
        " --precision {params.precision}"
        " --threads {threads} --lock {params.lock} --lease-s {params.lease_s} --checkpoint-every {params.checkpoint_every}"
        " 2> {log}"
