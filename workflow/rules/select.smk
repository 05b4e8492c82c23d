# Stage 2 refines the best stage-1 designs (spec §5); stage 3 repeats the best of stage 2 with seeds (§6).


rule select_stage2:
    input:
        "results/stage1/summary.csv",
    output:
        "results/stage2/manifest.csv",
    params:
        rule=flags(config["stage2"], ["keep_fraction", "wide_state_size", "deep_layers", "deep_state_sizes"]),
        settings=flags(config["stage2"], SETTINGS),
        seed=config["seed"],
    conda:
        ENV
    log:
        "logs/stage2/select.log",
    shell:
        "python -m rnnsweep select --stage stage2 --results results {params.rule} {params.settings} --seed {params.seed} 2> {log}"


rule select_stage3:
    input:
        "results/stage2/summary.csv",
    output:
        "results/stage3/manifest.csv",
    params:
        rule=flags(config["stage3"], ["top_k", "replicates"]),
        settings=flags(config["stage3"], SETTINGS),
        seed=config["seed"],
    conda:
        ENV
    log:
        "logs/stage3/select.log",
    shell:
        "python -m rnnsweep select --stage stage3 --results results {params.rule} {params.settings} --seed {params.seed} 2> {log}"
