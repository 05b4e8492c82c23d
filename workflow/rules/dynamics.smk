# What the trained cells do with time (docs/study.md): every finished run of a stage measured
# after its aggregation; then what depends on rank_by, so that another ranking measures no run
# again; then one job per figure.


rule dynamics:
    input:
        summary=stage_file("{stage}", SUMMARY),
        corpus=f"{DATA}/{CORPUS_META}",
    output:
        [dynamics_output(name) for name in DYNAMICS_MEASURED],
    log:
        f"{LOGS}/{{stage}}/dynamics.log",
    benchmark:
        f"{BENCHMARKS}/dynamics/{{stage}}.tsv"
    conda:
        ENV
    threads: config["workers"] * config["threads_per_worker"]
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        data=lambda wildcards, input: folder_of(input.corpus),
        eval_bytes=lambda wildcards: config["dynamics"]["eval_bytes"][wildcards.stage],
        options=arguments("dynamics"),
        seed=config["seed"],
    shell:
        "rnnsweep dynamics --stage {params.stage} --data {params.data} --eval-bytes {params.eval_bytes}"
        " {params.options} --seed {params.seed} --threads {threads} 2> {log}"


rule dynamics_ranked:
    input:
        measured=[stage_file("{stage}", name) for name in DYNAMICS_MEASURED],
        summary=stage_file("{stage}", SUMMARY),
        corpus=f"{DATA}/{CORPUS_META}",
    output:
        [dynamics_output(name) for name in DYNAMICS_RANKED],
    log:
        f"{LOGS}/{{stage}}/dynamics_ranked.log",
    benchmark:
        f"{BENCHMARKS}/dynamics_ranked/{{stage}}.tsv"
    localrule: True
    conda:
        ENV
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        data=lambda wildcards, input: folder_of(input.corpus),
        options=arguments("dynamics-ranked"),
        seed=config["seed"],
    shell:
        "rnnsweep dynamics-ranked --stage {params.stage} --data {params.data} {params.options}"
        " --seed {params.seed} 2> {log}"


rule plot_dynamics:
    input:
        summary=stage_file("{stage}", SUMMARY),
        tables=[stage_file("{stage}", name) for name in DYNAMICS_TABLES],
    output:
        in_report(
            figure_file("{stage}", "{dynamics_figure}"),
            "figure",
            DYNAMICS_CATEGORY,
            "{stage}",
        ),
    log:
        f"{LOGS}/{{stage}}/plot_{{dynamics_figure}}.log",
    benchmark:
        f"{BENCHMARKS}/plot_dynamics/{{stage}}-{{dynamics_figure}}.tsv"
    localrule: True
    conda:
        ENV
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        options=arguments("plot-dynamics"),
        caption=lambda wildcards: DYNAMICS_FIGURE[
            wildcards.dynamics_figure
        ].caption_of(wildcards.stage),
    shell:
        "rnnsweep plot-dynamics {wildcards.dynamics_figure} --stage {params.stage} --out {output}"
        " {params.options} 2> {log}"
