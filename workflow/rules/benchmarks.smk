"""The benchmark grid: engine per tier and device, overheads, peers, and the summary."""


rule bench_engine:
    input:
        "results/datasets/{dataset}.h5",
    output:
        "results/benchmark/runs/{dataset}/engine_{tier}_{device}.json",
    log:
        "results/logs/bench/{dataset}/engine_{tier}_{device}.log",
    benchmark:
        "results/logs/bench/{dataset}/engine_{tier}_{device}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=bench_mem_mb,
        runtime=bench_runtime,
        bench_slot=1,
        gpu=bench_gpus,
    script:
        "../scripts/bench_engine.py"


rule bench_overhead:
    input:
        "results/datasets/{dataset}.h5",
    output:
        "results/benchmark/runs/{dataset}/overhead_{tier}.json",
    log:
        "results/logs/bench/{dataset}/overhead_{tier}.log",
    benchmark:
        "results/logs/bench/{dataset}/overhead_{tier}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=lambda w: bench_mem_mb(w) + 500,
        runtime=lambda w: 3 * bench_runtime(w),
        bench_slot=1,
    params:
        rounds=config["benchmark"].get("overhead_rounds", 16),
        checkpoint_frequencies=config["benchmark"].get("checkpoint_frequencies", [10]),
        fault_modes=config["benchmark"].get(
            "fault_modes", ["validation", "full", "fast"]
        ),
    script:
        "../scripts/bench_overhead.py"


rule bench_peer:
    input:
        "results/datasets/{dataset}.h5",
    output:
        "results/benchmark/runs/{dataset}/peer_{method}.json",
    log:
        "results/logs/bench/{dataset}/peer_{method}.log",
    benchmark:
        "results/logs/bench/{dataset}/peer_{method}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=lambda w: int(2000 + 200 * dataset_points(w.dataset) / 2**20),
        runtime=60,
        bench_slot=1,
    params:
        peers=config["benchmark"].get("peers", {}),
    script:
        "../scripts/bench_peer.py"


rule bench_seeded:
    output:
        jsonl="results/benchmark/seeded.jsonl",
        md="results/benchmark/seeded_summary.md",
    log:
        "results/logs/bench/seeded.log",
    benchmark:
        "results/logs/bench/seeded.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    threads: config["benchmark"].get("seeded", {}).get("jobs", 2)
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        seeds=config["benchmark"].get("seeded", {}).get("seeds", "2000-2050"),
        work_dir="results/benchmark/seeded_work",
    script:
        "../scripts/bench_seeded.py"


rule benchmark_summary:
    input:
        runs=all_runs(),
        seeded=seeded_outputs()[:1],
    output:
        csv=report(
            "results/benchmark/summary.csv",
            caption="../report/benchmark_summary.rst",
            category="Benchmark",
        ),
        md="results/benchmark/summary.md",
        runs="results/benchmark/runs.csv",
        plots=report(
            expand(
                "results/benchmark/{plot}.png",
                plot=["memory_vs_points", "throughput_vs_points", "ours_vs_peers"],
            ),
            caption="../report/benchmark_plots.rst",
            category="Benchmark",
        ),
    log:
        "results/logs/bench/summary.log",
    benchmark:
        "results/logs/bench/summary.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/summarize_benchmarks.py"
