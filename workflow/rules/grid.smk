# Stage 1: every sensible design of spec §4, one manifest row per run.


rule grid:
    output:
        f"{RESULTS}/stage1/manifest.csv",
    params:
        results=lambda wildcards, output: results_of(output[0]),
        grid=flags(config["stage1"], ["n_layers", "state_sizes"]),
        settings=manifest_flags("stage1"),
        seed=config["seed"],
    conda:
        ENV
    log:
        f"{LOGS}/stage1/grid.log",
    shell:
        "python -m rnnsweep grid --results {params.results} {params.grid} {params.settings} --seed {params.seed} 2> {log}"
