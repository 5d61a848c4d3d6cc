"""Helpers of the multi-q rules: the runs, their files and the planned jobs (parse time,
without importing homodyne)."""

import glob as _glob
import os as _os
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


def _config_relative(pattern, base):
    """Paths (a glob expanded) as `homodyne --config` reads them: from the working folder,
    else from the fit config's folder (homodyne.config._resolve and _resolve_files)."""
    pattern = _os.path.expanduser(pattern)
    found = sorted(_glob.glob(pattern)) if _glob.has_magic(pattern) else [pattern]
    if _os.path.isabs(pattern) or any(_os.path.exists(f) for f in found):
        return found
    alt = str(_Path(base) / pattern)
    found_alt = sorted(_glob.glob(alt)) if _glob.has_magic(alt) else [alt]
    return found_alt if any(_os.path.exists(f) for f in found_alt) else found


def _config_file_names(run, path):
    """experimental_data.files (or file_path) of a run's fit config as a list of names; a
    config that is no mapping, or names that are no text, is one clear error, not a
    traceback from the DAG (homodyne's own checks run only when the jobs do)."""
    with open(path) as fh:
        try:
            raw = _yaml.safe_load(fh)
        except _yaml.YAMLError as exc:
            raise ValueError(
                f"multiq run {run}: {path} is not valid YAML: {exc}"
            ) from None
    data = (raw or {}).get("experimental_data") if isinstance(raw, dict) else None
    data = data or {}
    names = (
        data.get("files") or [data.get("file_path")] if isinstance(data, dict) else None
    )
    names = [names] if isinstance(names, str) else names
    if not isinstance(raw or {}, dict) or not (
        isinstance(names, list) and all(n is None or isinstance(n, str) for n in names)
    ):
        raise ValueError(
            f"multiq run {run}: {path} needs experimental_data.files (a path, a glob or a "
            "list of them) or experimental_data.file_path, as in config/fits/"
            "synthetic_aging.yaml"
        )
    return names


def run_files(run):
    """File id (stem) -> path of a run: the synthetic series, or the files its fit config
    names (experimental_data.files: list or glob, or file_path; relative to the working
    folder or, as the command line reads them, to the fit config's folder)."""
    spec = multiq_runs()[run]
    if spec.get("synthetic"):
        files = series_files()
    else:
        names = _config_file_names(run, spec["config"])
        base = _Path(spec["config"]).parent
        files = [f for name in names if name for f in _config_relative(name, base)]
        if not files:
            raise ValueError(
                f"multiq run {run}: experimental_data.files/file_path of {spec['config']} "
                f"({names}) matches no file (paths are read from the working folder, then "
                "from the config's folder)"
            )
    ids = [_Path(f).stem for f in files]
    if len(set(ids)) != len(ids):
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
    """job.json of every (file, q bin) job the checkpoint planned for a run."""
    with open(checkpoints.plan_q_fits.get(run=wildcards.run).output[0]) as fh:
        jobs = _json.load(fh)
    return [
        f"results/fits/{wildcards.run}/{j['file_id']}/q{j['q_index']:02d}/job.json"
        for j in jobs
    ]


def check_multiq_runs():
    """Every run's fit config exists, and a synthetic run's series is described (the schema
    checks the run names): either would only fail, with a traceback, when its jobs run.
    """
    for run, spec in multiq_runs().items():
        if not _Path(spec["config"]).is_file():
            raise ValueError(
                f"multiq.runs.{run}.config: {spec['config']!r} is not a file; name the fit "
                "config of this run (e.g. config/fits/synthetic_aging.yaml)"
            )
        if spec.get("synthetic") and not config["multiq"].get("synthetic"):
            raise ValueError(
                f"multiq.runs.{run}.synthetic: true fits the synthetic series, but the "
                "config has no multiq.synthetic (q, ages_s, frames, angles); add it (as in "
                "config/test.yaml) or set synthetic: false"
            )


def check_synthetic_series():
    """The synthetic series' q bins are distinct, and so are its angles modulo 360 (within
    1e-4 deg, homodyne.model.SAME_ANGLE_TOL_DEG): the files were written and every fit then
    refused them ('the file lists one (q, phi) bin twice ... fix the file'); and its ages
    (a one-time series refuses one start time twice too)."""
    series = config.get("multiq", {}).get("synthetic") or {}
    q = series.get("q") or []
    for i, a in enumerate(q):
        for b in q[:i]:
            if abs(a - b) <= 1e-9 * max(abs(a), abs(b)):
                raise ValueError(
                    f"multiq.synthetic.q lists {b} twice; give each q bin once"
                )
    angles = series.get("angles") or []
    for i, a in enumerate(angles):
        for b in angles[:i]:
            apart = abs(a - b) % 360.0
            if min(apart, 360.0 - apart) <= 1e-4:
                raise ValueError(
                    f"multiq.synthetic.angles: {b} and {a} are one angle (modulo 360); "
                    "give each angle once"
                )
    ages = series.get("ages_s") or []
    for i, a in enumerate(ages):
        if a in ages[:i]:  # two files of one sample age: the J-model's ages must differ
            raise ValueError(
                f"multiq.synthetic.ages_s lists {a} twice (two files of one sample "
                "age); give each age once"
            )


check_multiq_runs()
check_synthetic_series()
RUN_NAMES = "|".join(_re.escape(r) for r in multiq_runs()) or "no_multiq_run"
