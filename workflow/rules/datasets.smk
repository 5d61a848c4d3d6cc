"""Synthetic datasets in the APS-U layout, written block by block (bounded memory)."""


rule generate_dataset:
    output:
        "results/datasets/{dataset}.h5",
    log:
        "results/logs/generate/{dataset}.log",
    benchmark:
        "results/logs/generate/{dataset}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=2000,
        runtime=lambda w: int(5 + dataset_points(w.dataset) / 1e8),
        bench_slot=1,
    params:
        spec=lambda w: config["datasets"][w.dataset],
        physics=config["physics"],
    script:
        "../scripts/generate_dataset.py"
