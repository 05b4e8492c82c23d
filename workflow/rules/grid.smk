# Stage 1: every sensible design of spec §4, one manifest row per run.


rule grid:
    output:
        "results/stage1/manifest.csv",
    params:
        grid=flags(config["stage1"], ["n_layers", "state_sizes"]),
        settings=flags(config["stage1"], SETTINGS),
        seed=config["seed"],
    conda:
        ENV
    log:
        "logs/stage1/grid.log",
    shell:
        "python -m rnnsweep grid --results results {params.grid} {params.settings} --seed {params.seed} 2> {log}"
