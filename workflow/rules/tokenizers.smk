# Bytes against BPE tokens (compare_tokenizers): the last stage's runs trained again, reading the
# other tokenizer, with the same steps, seeds and settings; then both, side by side in bits per byte.


rule retokenize:
    input:
        stage_file(STAGES[-1], MANIFEST),
    output:
        stage_file(RETRAINED, MANIFEST),
    log:
        f"{LOGS}/{RETRAINED}/retokenize.log",
    benchmark:
        f"{BENCHMARKS}/retokenize/{RETRAINED}.tsv"
    localrule: True
    conda:
        ENV
    params:
        options=shell_words(reading_args(config, OTHER_TOKENIZER)),
    shell:
        "rnnsweep retokenize --manifest {input} --out {output} {params.options} 2> {log}"


rule tokenizers:
    input:
        stage_file(STAGES[-1], SUMMARY),
        stage_file(RETRAINED, SUMMARY),
    output:
        table=in_report(
            f"{RESULTS}/{TOKENIZERS_TABLE}", "tokenizers_table", STUDY_CATEGORY
        ),
        figure=in_report(
            f"{FIGURES_DIR}/{TOKENIZERS_FIGURE}{FIGURE_SUFFIX}",
            "tokenizers_figure",
            STUDY_CATEGORY,
        ),
    log:
        f"{LOGS}/tokenizers.log",
    benchmark:
        f"{BENCHMARKS}/tokenizers/study.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "rnnsweep tokenizers --summary {input} --out {output.table} --figure {output.figure} 2> {log}"
