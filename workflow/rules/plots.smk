# Every figure of rnnsweep.layout.STAGE_FIGURES, one job each, so that
# `snakemake -f figures/<study>/<stage>/<name>.png` re-renders just that one.


rule plot:
    input:
        summary=stage_file("{stage}", SUMMARY),
        curves=stage_file("{stage}", CURVES),
        baselines=plot_baselines,
    output:
        in_report(figure_file("{stage}", "{figure}"), "figure"),
    log:
        f"{LOGS}/{{stage}}/plot_{{figure}}.log",
    localrule: True
    conda:
        ENV
    params:
        options=shell_words(profile_options(config["plots"], PLOT_KEYS)),
        baselines=baselines_option,
        rank=lambda wildcards: RANKING if wildcards.figure in RANKED_FIGURES else "",
    shell:
        "python -m rnnsweep plot {wildcards.figure} --summary {input.summary} --curves {input.curves}"
        " --out {output} {params.options} {params.baselines} {params.rank} 2> {log}"
