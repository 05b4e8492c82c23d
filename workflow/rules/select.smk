# Stage 2 refines the best stage-1 designs (spec §5); stage 3 repeats the best of stage 2 with seeds (§6).


rule select_stage2:
    input:
        f"{RESULTS}/stage1/summary.csv",
    output:
        f"{RESULTS}/stage2/manifest.csv",
    params:
        results=lambda wildcards, output: results_of(output[0]),
        rule=flags(config["stage2"], ["keep_fraction", "wide_state_size", "deep_layers", "deep_state_sizes"]),
        settings=manifest_flags("stage2"),
        seed=config["seed"],
    conda:
        ENV
    log:
        f"{LOGS}/stage2/select.log",
    shell:
        "python -m rnnsweep select --stage stage2 --results {params.results} {params.rule} {params.settings} --seed {params.seed} 2> {log}"


rule select_stage3:
    input:
        f"{RESULTS}/stage2/summary.csv",
    output:
        f"{RESULTS}/stage3/manifest.csv",
    params:
        results=lambda wildcards, output: results_of(output[0]),
        rule=flags(config["stage3"], ["top_k", "replicates"]),
        settings=manifest_flags("stage3"),
        seed=config["seed"],
    conda:
        ENV
    log:
        f"{LOGS}/stage3/select.log",
    shell:
        "python -m rnnsweep select --stage stage3 --results {params.results} {params.rule} {params.settings} --seed {params.seed} 2> {log}"
