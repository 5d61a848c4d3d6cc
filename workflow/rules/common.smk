"""Helpers shared by the rules: the benchmark grid, resource estimates, and the production
fits' files the report shows."""

import math
import os
from pathlib import Path


def refuse_non_finite(tree, key=""):
    """Every number in the config is finite: JSON Schema's number admits YAML's .nan and
    .inf, which the jobs would refuse only when they run."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            refuse_non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            refuse_non_finite(v, f"{key}[{i}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ValueError(
            f"config {key}: must be a finite number, got {tree}; fix the config"
        )


refuse_non_finite(config)


def dataset_points(name):
    d = config["datasets"][name]
    return len(d["angles"]) * d["frames"] * (d["frames"] - 1) // 2


def known_dataset(name, key):
    """``name`` when it is a dataset under ``datasets:``; a typo stops the plan naming the
    key (else the DAG fails later with a KeyError in generate_dataset)."""
    if name not in config["datasets"]:
        raise ValueError(
            f"{key}: {name!r} is not a dataset under datasets:; "
            f"choose one of {sorted(config['datasets'])} or add it there"
        )
    return name


def engine_runs():
    """Every engine run of the grid: (dataset, run name)."""
    b = config["benchmark"]
    runs = []
    for ds, tiers in b["tiers"].items():
        known_dataset(ds, "benchmark.tiers")
        for tier in tiers:
            for dev in b.get("devices", ["cpu"]):
                runs.append((ds, f"engine_{tier}_{dev}"))
    ds, tier = b.get("overhead_dataset"), b.get("overhead_tier", "streaming")
    if ds:
        runs.append(
            (known_dataset(ds, "benchmark.overhead_dataset"), f"overhead_{tier}")
        )
    return runs


def peer_runs():
    p = config["benchmark"].get("peers", {})
    return [
        (known_dataset(ds, "benchmark.peers.datasets"), f"peer_{m}")
        for ds in p.get("datasets", [])
        for m in p.get("methods", [])
    ]


def all_runs():
    return [
        f"results/benchmark/runs/{ds}/{name}.json"
        for ds, name in engine_runs() + peer_runs()
    ]


def seeded_outputs():
    """The seeded comparison's record and summary, where ``benchmark.seeded`` is set."""
    if "seeded" not in config["benchmark"]:
        return []
    return ["results/benchmark/seeded.jsonl", "results/benchmark/seeded_summary.md"]


def bench_mem_mb(wildcards):
    """Streaming holds a bounded working set; in-memory tiers hold the data (8 B/point)."""
    n = dataset_points(wildcards.dataset)
    tier = wildcards.tier
    if tier == "auto":
        tier = "streaming" if n > 100_000_000 else "in memory"
    if tier == "streaming":
        return 2000
    return int(1500 + 24 * n / 2**20)


def bench_gpus(wildcards):
    """GPUs an engine run requests: one for device gpu, none for cpu."""
    return int(wildcards.device == "gpu")


def bench_runtime(wildcards):
    return int(10 + dataset_points(wildcards.dataset) / 2e6)


def real_data_files(folder):
    """Measured files of ``folder`` listed in the package's checksum list, read as text so
    that building the DAG imports nothing from homodyne (the list homodyne.realdata.registry
    reads)."""
    listing = Path(workflow.basedir, "homodyne", "realdata_sha256.txt").read_text()
    rels = [
        line.split(maxsplit=1)[1].strip()
        for line in listing.splitlines()
        if line.strip()
    ]
    files = sorted(r for r in rels if r.startswith(f"{folder}/"))
    if not files:  # a typo would plan a fit of no file
        folders = sorted({r.split("/", 1)[0] for r in rels})
        raise ValueError(
            f"fits.aps_aging.folder: {folder!r} is no folder of the measured data; "
            f"choose one of {folders}"
        )
    return files


def chx_alpha_window():
    """fits.chx.alpha_window (default [0.85, 1.15]); a reversed window, which would select no
    age, stops the plan."""
    window = config["fits"]["chx"].get("alpha_window", [0.85, 1.15])
    if not window[0] < window[1]:
        raise ValueError(
            f"fits.chx.alpha_window: {window} is not [low, high] with low < high; "
            "give e.g. [0.85, 1.15]"
        )
    return window


def data_mirror():
    return os.environ.get("HOMODYNE_DATA_MIRROR", config.get("data_mirror", ""))


# the committed files the report shows, per fit (relative to results/fits/<fit>/)
FIT_REPORTS = {
    "chx": ["comparison.csv", "rate_vs_age.png", "c2_heatmaps.png", "c2_cuts.png"],
    "aging": [
        "per_age.csv",
        "q2_scaling.png",
        "g2_fits_and_residuals.png",
        "aging_law.png",
    ],
    "laminar": ["fit/c2_heatmaps.png", "fit/c2_cuts.png"],
    "one_time": ["per_q.csv", "g2_fits.png", "rates_vs_q.png"],
}


def report_copies(fit):
    """The report's copies of a fit's committed files (FIT_REPORTS)."""
    return [f"results/report/fits/{fit}/{name}" for name in FIT_REPORTS[fit]]


FIT_REPORT_FILES = [path for fit in FIT_REPORTS for path in report_copies(fit)]
