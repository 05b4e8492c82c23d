# The corpus: enwik8 (downloaded and checked), a local byte file, or a generated one; split 90/5/5.


rule corpus:
    input:
        corpus_input,
    output:
        meta=f"{DATA}/corpus.json",
        splits=expand(f"{DATA}/{{split}}.bin", split=["train", "valid", "test"]),
    params:
        out=lambda wildcards, output: folder_of(output.meta),
        source=config["corpus"],
        cache=config["cache_dir"],
        url=config["enwik8_url"],
        sha=f"--sha256 {config['enwik8_sha256']}" if config["enwik8_sha256"] else "",
        generated=config["generated_bytes"],
        seed=config["seed"],
        # Every split must hold one window of the longest history of any stage.
        min_bytes=max(config[s]["history_size"] for s in STAGES),
    conda:
        ENV
    log:
        f"{LOGS}/corpus.log",
    shell:
        "python -m rnnsweep data --corpus {params.source:q} --out {params.out} --cache-dir {params.cache:q}"
        " --url {params.url:q} {params.sha} --generated-bytes {params.generated}"
        " --seed {params.seed} --min-bytes {params.min_bytes} 2> {log}"
