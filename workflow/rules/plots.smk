# Every figure of rnnsweep.figures.STAGE_FIGURES, one job each, so that
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
    benchmark:
        f"{BENCHMARKS}/plot/{{stage}}-{{figure}}.tsv"
    localrule: True
    conda:
        ENV
    params:
        options=shell_words(profile_args(config, PLOTS)),
        baselines=baselines_option,
        caption=lambda wildcards: STAGE_FIGURE[wildcards.figure].caption_of(
            wildcards.stage
        ),
        rank=lambda wildcards: RANKING if wildcards.figure in RANKED_FIGURES else "",
    shell:
        "rnnsweep plot {wildcards.figure} --summary {input.summary} --curves {input.curves}"
        " --out {output} {params.options} {params.baselines} {params.rank} 2> {log}"
