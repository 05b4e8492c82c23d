# The corpus: enwik8 (downloaded and checked), a local byte file, or a generated one; split 90/5/5.


rule corpus:
    input:
        corpus_input,
    output:
        meta=in_report(f"{DATA}/{CORPUS_META}", "corpus", STUDY_CATEGORY),
        splits=[str(split_path(Path(DATA), split)) for split in SPLITS],
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCHMARKS}/corpus/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        out=lambda wildcards, output: folder_of(output.meta),
        options=arguments("data"),
        # Every split must hold one window of the longest history of any stage.
        min_bytes=max(config[stage]["history_size"] for stage in STAGES),
        content=lambda wildcards: corpus_content(),  # bytes changed in place, mtime kept: still a new corpus
    shell:
        "rnnsweep data --out {params.out} {params.options} --min-bytes {params.min_bytes} 2> {log}"


# A byte-pair vocabulary learnt from the training split, and each split as its token ids; only
# for studies or comparisons that read BPE tokens. A new vocab_size makes a new vocabulary, and
# the runs that read it train again.
rule tokenize:
    input:
        f"{DATA}/{CORPUS_META}",
    output:
        tokenizer=in_report(f"{DATA}/{TOKENIZER}", "tokenizer", STUDY_CATEGORY),
        ids=[str(ids_path(Path(DATA), split)) for split in SPLITS],
        meta=f"{DATA}/{TOKENS_META}",
    log:
        f"{LOGS}/tokenize.log",
    benchmark:
        f"{BENCHMARKS}/tokenize/study.tsv"
    localrule: True
    conda:
        ENV
    params:
        data=lambda wildcards, input: folder_of(input[0]),
        options=arguments("tokenize"),
        recipe=recipe(),  # a new cut, threshold or library version learns the vocabulary again
    shell:
        "rnnsweep tokenize --data {params.data} {params.options} 2> {log}"
