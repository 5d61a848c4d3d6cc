"""Helpers of the multi-q rules: the runs, their files and the planned jobs (parse time,
without importing homodyne)."""

import glob as _glob
import json as _json
import re as _re
from pathlib import Path as _Path

import yaml as _yaml

SERIES_DIR = "results/datasets/aging_series"


def multiq_runs():
    return config.get("multiq", {}).get("runs", {})


def series_files():
    ages = config["multiq"]["synthetic"]["ages_s"]
    return [f"{SERIES_DIR}/age_{k:02d}.h5" for k in range(len(ages))]


def run_files(run):
    """File id (stem) -> path of a run: the synthetic series, or the files its fit config
    names (experimental_data.files: list or glob, or file_path)."""
    spec = multiq_runs()[run]
    if spec.get("synthetic"):
        files = series_files()
    else:
        with open(spec["config"]) as fh:
            data = (_yaml.safe_load(fh) or {}).get("experimental_data") or {}
        files = data.get("files") or [data["file_path"]]
        if isinstance(files, str):
            files = sorted(_glob.glob(files)) if _glob.has_magic(files) else [files]
    ids = [_Path(f).stem for f in files]
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(
            f"multiq run {run}: needs files with distinct names, got {files}"
        )
    return dict(zip(ids, files))


def run_overrides(wildcards):
    """What the workflow sets in a run's fit config: its files and its output folder."""
    return {
        "experimental_data.files": list(run_files(wildcards.run).values()),
        "experimental_data.file_path": None,
        "output.directory": f"results/fits/{wildcards.run}",
    }


def q_fit_jobs(wildcards):
    """parameters.json of every (file, q bin) job the checkpoint planned for a run."""
    with open(checkpoints.plan_q_fits.get(run=wildcards.run).output[0]) as fh:
        jobs = _json.load(fh)
    return [
        f"results/fits/{wildcards.run}/{j['file_id']}/q{j['q_index']:02d}/parameters.json"
        for j in jobs
    ]


def check_multiq_runs():
    """Every run's fit config exists (the schema checks the run names): a missing one would
    only fail when its jobs run."""
    for run, spec in multiq_runs().items():
        if not _Path(spec["config"]).is_file():
            raise ValueError(
                f"multiq.runs.{run}.config: {spec['config']!r} is not a file; name the fit "
                "config of this run (e.g. config/fits/synthetic_aging.yaml)"
            )


check_multiq_runs()
RUN_NAMES = "|".join(_re.escape(r) for r in multiq_runs()) or "no_multiq_run"
