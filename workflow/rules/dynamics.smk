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
    conda:
        ENV
    threads: config["workers"] * config["threads_per_worker"]
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        data=lambda wildcards, input: folder_of(input.corpus),
        eval_bytes=lambda wildcards: config["dynamics"]["eval_bytes"][wildcards.stage],
        options=DYNAMICS_OPTIONS,
        seed=config["seed"],
    shell:
        "python -m rnnsweep dynamics --stage {params.stage} --data {params.data} --eval-bytes {params.eval_bytes}"
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
    localrule: True
    conda:
        ENV
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        data=lambda wildcards, input: folder_of(input.corpus),
        options=ATTRACTOR_OPTIONS,
        rank=RANKING,
        seed=config["seed"],
    shell:
        "python -m rnnsweep dynamics-ranked --stage {params.stage} --data {params.data} {params.options}"
        " {params.rank} --seed {params.seed} 2> {log}"


rule plot_dynamics:
    input:
        summary=stage_file("{stage}", SUMMARY),
        tables=[stage_file("{stage}", name) for name in DYNAMICS_TABLES],
    output:
        in_report(
            figure_file("{stage}", "{dynamics_figure}"),
            "dynamics_figure",
            DYNAMICS_CATEGORY,
            "{stage}",
        ),
    log:
        f"{LOGS}/{{stage}}/plot_{{dynamics_figure}}.log",
    localrule: True
    conda:
        ENV
    params:
        stage=lambda wildcards, input: folder_of(input.summary),
        rank=RANKING,
    shell:
        "python -m rnnsweep plot-dynamics {wildcards.dynamics_figure} --stage {params.stage} --out {output}"
        " {params.rank} 2> {log}"
