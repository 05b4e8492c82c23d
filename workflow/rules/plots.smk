# One rule per figure, so `snakemake -f figures/<stage>/<name>.png` re-renders just that one.

for _stage, _names in FIGURES.items():
    for _name in _names:

        rule:
            name:
                f"plot_{_stage}_{_name}"
            input:
                summary=f"{RESULTS}/{_stage}/summary.csv",
                curves=f"{RESULTS}/{_stage}/curves.csv",
            output:
                f"{FIGURES_DIR}/{_stage}/{_name}.png",
            params:
                results=lambda wildcards, input: results_of(input.summary),
                figure=_name,
                stage=_stage,
                options=flags(config["plots"], ["threshold"])
                + f" --top {config['plots']['best_curves']} --smooth {config['plots']['smooth']}",
            conda:
                ENV
            log:
                f"{LOGS}/{_stage}/plot_{_name}.log",
            shell:
                "python -m rnnsweep plot {params.figure} --stage {params.stage} --results {params.results}"
                " --out {output} {params.options} 2> {log}"
