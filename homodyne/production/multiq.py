"""Every q bin of every file: one normal fit per (file, q bin), each in its own folder, and
the gathered table ``summary.csv`` with plots of each parameter against q and file/age.

The workflow scatters these jobs (rule ``fit_q_bin``) and gathers them (rule
``gather_q_fits``); ``homodyne --config ... --q all`` runs the same jobs in one process.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from homodyne.config import ConfigError, HomodyneConfig
from homodyne.data.twotime import DEFAULT_Q_TOLERANCE, SYNTHETIC_ATTRS, q_bins
from homodyne.output import (
    MARKER,
    MAX_MARKER_BYTES,
    MAX_RECORD_BYTES,
    MULTI_Q_TABLE,
    RESULT_FILES,
    OutputDirError,
    OutputExistsError,
    file_sha256,
    read_json_file,
)

log = logging.getLogger("homodyne")
JOB_FILE = "job.json"
SUMMARY_FILE = MULTI_Q_TABLE


@dataclass(frozen=True)
class QFitJob:
    """One fit of the scatter: a file, one of its q bins, and the folder for its outputs."""

    file: str
    file_id: str
    q_index: int
    q: float
    output_dir: Path


def data_files(cfg: HomodyneConfig) -> list[str]:
    """The configured files (``experimental_data.files``), else the one ``file_path``."""
    d = cfg.experimental_data
    return list(d["files"]) if d["files"] is not None else [d["file_path"]]


def file_ids(files) -> list[str]:
    """A folder name per file (its stem); two files with one stem are refused."""
    ids = [Path(f).stem for f in files]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError("experimental_data.files", f"several files are named {dup[0]!r} "
                          "(outputs go to one folder per file name); rename or split the run")
    return ids


def selected_bins(q_setting, bins: list[float], path: str, tolerance=None) -> list[int]:
    """Indices of the bins a ``q`` setting selects: 'all', one value or a list (nearest bin
    within the tolerance, default 10% of q; a value far from every bin is refused)."""
    if q_setting == "all" or (q_setting is None and len(bins) == 1):
        return list(range(len(bins)))
    if q_setting is None:
        raise ConfigError("experimental_data.q", f"{path} holds {len(bins)} q bins "
                          f"({_fmt(bins)}); choose one, a list, or 'all'")
    wanted = q_setting if isinstance(q_setting, list) else [q_setting]
    out = []
    for q in wanted:
        i = min(range(len(bins)), key=lambda j: abs(bins[j] - q))
        tol = DEFAULT_Q_TOLERANCE * q if tolerance is None else tolerance
        if abs(bins[i] - q) > tol:
            raise ConfigError("experimental_data.q", f"no q bin of {path} within {tol:.3g} of "
                              f"{q:.6g} (bins: {_fmt(bins)}); use one of them or 'all', or widen "
                              "experimental_data.q_tolerance")
        if i not in out:
            out.append(i)
    return out


def _fmt(values) -> str:
    return ", ".join(f"{v:.6g}" for v in values)


def plan_jobs(cfg: HomodyneConfig, out_root=None) -> list[QFitJob]:
    """Every (file, q bin) the config selects, with its output folder
    ``<out_root>/<file stem>/q<NN>`` (NN = the bin's index in the file, sorted by q)."""
    root = Path(out_root or cfg.output["directory"])
    files = data_files(cfg)
    d = cfg.experimental_data
    jobs = []
    lacking: dict[float, list[ConfigError]] = {}  # a q value -> the files without its bin
    for path, fid in zip(files, file_ids(files), strict=True):
        bins = q_bins(path)
        for i in _bins_of_file(d["q"], bins, path, d["q_tolerance"], len(files), lacking):
            jobs.append(QFitJob(path, fid, i, bins[i], root / fid / f"q{i:02d}"))
    for q, errors in lacking.items():
        if len(errors) == len(files):  # no file has such a bin: a wrong value
            raise errors[0]
        log.warning("%d of %d files %s no q bin at q = %.6g and %s not fitted there: %s",
                    len(errors), len(files), "has" if len(errors) == 1 else "have", q,
                    "is" if len(errors) == 1 else "are",
                    "; ".join(e.problem.partition("; use one")[0] for e in errors))
    return jobs


def _bins_of_file(q_setting, bins: list[float], path: str, tolerance, n_files: int,
                  lacking: dict) -> list[int]:
    """``selected_bins`` of one of ``n_files`` files; with several files a q value this
    file has no bin for is noted in ``lacking`` (value -> its ConfigError) instead of
    refusing the run: the files that have that bin are fitted (refreshed with --q)."""
    if n_files == 1 or q_setting in ("all", None):
        return selected_bins(q_setting, bins, path, tolerance)
    out: list[int] = []
    for q in q_setting if isinstance(q_setting, list) else [q_setting]:
        try:
            out += [i for i in selected_bins(q, bins, path, tolerance) if i not in out]
        except ConfigError as exc:
            lacking.setdefault(q, []).append(exc)
    return out


def job_config(cfg: HomodyneConfig, job: QFitJob) -> HomodyneConfig:
    """The single-fit config of one job: its file, its bin's exact q, its own output folder
    and its own checkpoint folder ``<checkpoint_dir>/<file stem>/q<NN>`` (fits sharing one
    folder could not save: each newer file of another fit is kept, and the folder is locked)."""
    data = copy.deepcopy(cfg.experimental_data)
    data.update(file_path=job.file, files=None, q=job.q, q_tolerance=None)
    output = {**cfg.output, "directory": str(job.output_dir)}
    optimization = copy.deepcopy(cfg.optimization)
    stream = optimization["streaming"]
    if stream.get("checkpoint_dir"):
        stream["checkpoint_dir"] = str(Path(stream["checkpoint_dir"]) / job.file_id
                                       / job.output_dir.name)
    return dataclasses.replace(cfg, experimental_data=data, output=output,
                               optimization=optimization)


def check_job(cfg: HomodyneConfig, job: QFitJob) -> str:
    """Open one job's data and set up its fit exactly as the run will (a DataFileError or
    ConfigError names what is wrong); a line of what it will fit."""
    from homodyne.pipeline import model_spec, open_data, start_and_bounds

    single = job_config(cfg, job)
    with open_data(single) as src:
        spec = model_spec(single, src)
        start_and_bounds(single, spec, src)
    return f"{spec.shape_text}, {spec.n_points:,} points"


def settings_digest(cfg: HomodyneConfig) -> str:
    """The fingerprint of a multi-q config's fit settings: everything but which data is
    fitted (files, q selection) and where outputs and checkpoints go, so every job of one
    config shares it and an edit that changes the fits changes it (job.json keeps it)."""
    from homodyne.optimization.driver import fingerprint

    settings = dataclasses.asdict(cfg)
    for key in ("output", "source", "raw", "config_warnings"):
        settings.pop(key, None)
    for key in ("file_path", "files", "q", "q_tolerance"):
        settings["experimental_data"].pop(key, None)
    for section, keys in _NOT_FIT_SETTINGS.items():
        node = settings
        for name in section.split("."):
            node = node.get(name) or {}
        for key in keys:
            node.pop(key, None)
    return fingerprint(settings)


# where checkpoints go and how many are kept, how a run shows its progress: not what it fits
# (a progress bar switched off must not mark every other bin as fitted with other settings)
_NOT_FIT_SETTINGS = {
    "optimization.streaming": ("checkpoint_dir", "keep_last_checkpoints",
                               "checkpoint_min_interval_s", "resume_from_checkpoint"),
    "performance": ("enable_progress",),
}


def fit_job(cfg: HomodyneConfig, job: QFitJob, *, overwrite: bool | None = None,
            digests: dict | None = None) -> dict:
    """Run one job as a normal fit (all its usual outputs), then record which job it was,
    the digest of the settings it was fitted with and the data file as it was before the
    fit (``data_stamp``; ``digests``: a run's cache, one file's q bins share it), and so
    every other file its fit reads (``sources``: the virtual sources of its matrices)."""
    from homodyne.output import write_json
    from homodyne.pipeline import run_from_config

    stamp = data_stamp(job.file, digests)
    sources = {f: data_stamp(f, digests) for f in files_read(cfg, job)}
    run_from_config(job_config(cfg, job), overwrite=overwrite)
    settings = settings_digest(cfg)
    identity = {"file": job.file, "file_id": job.file_id, "q_index": job.q_index, "q": job.q,
                "age_s": file_age(job.file), "settings": settings, "data": stamp,
                "sources": sources}
    write_json(job.output_dir / JOB_FILE, identity)
    return summary_row(job.output_dir, settings)


_STAMP_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")


def files_read(cfg: HomodyneConfig, job: QFitJob) -> list[str]:
    """The files other than its data file that a job's fit reads: the virtual sources (at
    any depth) of the matrices its selection reads, as absolute paths."""
    from homodyne.pipeline import open_data

    with open_data(job_config(cfg, job)) as source:
        return [f.path for f in source.source_files]


def data_stamp(path, digests: dict | None = None) -> dict:
    """What job.json keeps of a data file to tell later whether it changed: size, mtime_ns,
    ctime_ns (no user sets it: data rewritten with an old mtime, cp -p, still change it),
    inode, and the SHA-256 of its bytes, which decides once the others differ (a file
    copied elsewhere and back is the same data). ``digests`` caches the digest per stamp."""
    st = os.stat(path)
    stamp = dict(zip(_STAMP_FIELDS, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
                     strict=True))
    key = (os.path.abspath(path), *stamp.values())
    if digests is None or key not in digests:
        digest = file_sha256(path)
        if digests is None:
            return {**stamp, "sha256": digest}
        digests[key] = digest
    return {**stamp, "sha256": digests[key]}


def _data_changed(recorded, path) -> bool | None:
    """Whether ``path`` differs from the stamp a job.json ``recorded`` (data_stamp); None
    where it recorded none we can read (written before stamps were kept, or edited)."""
    if not (isinstance(recorded, dict) and isinstance(recorded.get("sha256"), str)
            and all(type(recorded.get(k)) is int for k in _STAMP_FIELDS)):
        return None
    st = os.stat(path)
    if [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] == \
            [recorded[k] for k in _STAMP_FIELDS]:
        return False
    return st.st_size != recorded["size"] or \
        data_stamp(path)["sha256"] != recorded["sha256"]


def file_age(path) -> float | None:
    """The sample age a file records (synthetic aging series: ``age_s``), else None; an age
    that is not one finite number only labels nothing (a warning), it never stops the run."""
    if str(path).endswith(".npy"):
        return None
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as h5:
            if SYNTHETIC_ATTRS not in h5 or "age_s" not in h5[SYNTHETIC_ATTRS].attrs:
                return None
            raw = h5[SYNTHETIC_ATTRS].attrs["age_s"]
        age = float(np.asarray(raw, dtype=float).item())
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s: sample age %s/age_s unreadable (%s); the file is shown without age",
                    path, SYNTHETIC_ATTRS, exc)
        return None
    if not math.isfinite(age):
        log.warning("%s: sample age %s/age_s = %s is not finite; the file is shown without age",
                    path, SYNTHETIC_ATTRS, age)
        return None
    return age


def fit_status(p: dict) -> str:
    """'ok', or what a reader must know first: not converged, parameters on a bound or not
    determined by the data (all that apply, in that order)."""
    flags = [] if p["converged"] else ["not converged"]
    if p.get("at_bounds"):
        flags.append(f"at bound: {', '.join(p['at_bounds'])}")
    if p.get("undetermined"):
        flags.append(f"undetermined: {', '.join(p['undetermined'])}")
    if not flags and p.get("status") in ("undetermined", "too_few_points"):
        flags.append(p["status"].replace("_", " ") + ": no physical parameter determined "
                     f"(fixed: {', '.join(p.get('fixed') or []) or 'none'})")
    return "; ".join(flags) or "ok"


class ResultFileError(OutputDirError):
    """A job folder's ``job.json`` / ``parameters.json`` that is not a result this run wrote
    (hand-edited, truncated, another model's); the file is named, nothing is gathered."""


_JOB_FIELDS = {"file_id": (str,), "q_index": (int,), "q": (int, float),
               "age_s": (int, float, type(None))}
_RESULT_FIELDS = {"n_points": (int,), "parameters_by_name": (dict,), "converged": (bool,),
                  "reduced_chi_squared": (int, float, str, type(None)), "strategy": (str,),
                  "passes": (int,), "wall_time_s": (int, float)}


def _read_record(path: Path, fields: dict, max_bytes: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object holding ``fields`` with the expected types, or a ResultFileError
    naming the file and what is wrong with it (never a traceback from a file we read)."""
    def bad(what: str) -> ResultFileError:
        return ResultFileError(f"{path}: {what}; it is not a result of this run (edited or "
                               "copied in?): rerun that job (delete the file) or remove the folder")

    try:
        data = read_json_file(path, max_bytes)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise bad(f"holds a JSON {type(data).__name__}, not an object")
    for key, types in fields.items():
        if key not in data:
            raise bad(f"has no {key!r}")
        v = data[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise bad(f"{key!r} is {v!r}, not {' or '.join(t.__name__ for t in types)}")
    return data


def _parameters(path: Path, by_name: dict) -> dict[str, tuple[float, float]]:
    """(value, standard error) per parameter of a parameters.json (checked numbers)."""
    out = {}
    for name, v in by_name.items():
        value = v.get("value") if isinstance(v, dict) else None
        se = v.get("uncertainty") if isinstance(v, dict) else None
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not (se is None or (isinstance(se, (int, float)) and not isinstance(se, bool)))):
            raise ResultFileError(f"{path}: parameter {name!r} is {v!r}, not a value and an "
                                  "uncertainty; rerun that job (delete the file)")
        out[name] = (float(value), _number(se))
    return out


def summary_row(job_dir, settings: str | None = None) -> dict:
    """One row of summary.csv from a finished job's ``job.json`` and ``parameters.json``
    (a file that is not such a result: ResultFileError naming it); with ``settings`` (the
    current config's settings_digest) a column ``settings_match`` says whether the job was
    fitted with them (False too for a job.json that recorded none)."""
    job_dir = Path(job_dir)
    job = _read_record(job_dir / JOB_FILE, _JOB_FIELDS)
    p = _read_record(job_dir / "parameters.json", _RESULT_FIELDS, MAX_MARKER_BYTES)
    _same_job(job_dir, job, p)
    if not p["parameters_by_name"]:  # a row of blank cells would read as a fit that is ok
        raise ResultFileError(f"{job_dir / 'parameters.json'}: 'parameters_by_name' is empty: "
                              "no fitted parameter to list; rerun that job (delete the file)")
    row = {"file": job["file_id"], "age_s": job["age_s"], "q_index": job["q_index"],
           "q": job["q"], "n_points": p["n_points"]}
    if settings is not None:
        row["settings_match"] = job.get("settings") == settings
    for name, (value, se) in _parameters(job_dir / "parameters.json",
                                         p["parameters_by_name"]).items():
        row[name] = value
        row[f"{name}_se"] = se
    for key in ("at_bounds", "undetermined", "fixed"):
        listed = p.get(key) or []
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ResultFileError(f"{job_dir / 'parameters.json'}: {key!r} is {listed!r}, not "
                                  "a list of names; rerun that job (delete the file)")
    if not isinstance(p.get("status", ""), str):
        raise ResultFileError(f"{job_dir / 'parameters.json'}: 'status' is {p['status']!r}, "
                              "not a word; rerun that job (delete the file)")
    row.update(reduced_chi2=_number(p["reduced_chi_squared"]), status=fit_status(p),
               tier=p["strategy"], passes=p["passes"], time_s=p["wall_time_s"],
               output_dir=str(job_dir))
    row[OUTCOME] = p.get("status", "")
    return row


def _same_job(job_dir: Path, job: dict, p: dict) -> None:
    """A bin folder's job.json must name this folder's bin, and its parameters.json that
    bin's file and q: a folder or file copied from another bin would put one fit in two
    rows, or one bin's parameters under another's name."""
    where = f"{job['file_id']}/q{job['q_index']:02d}"
    if f"{job_dir.parent.name}/{job_dir.name}" != where:
        raise ResultFileError(f"{job_dir / JOB_FILE}: names the bin {where}, not this folder's "
                              f"({job_dir.parent.name}/{job_dir.name}): copied from another "
                              "bin? rerun that job (delete the folder)")
    same_file = p.get("data_file") in (None, job.get("file")) or "file" not in job
    q = p.get("q")
    same_q = not isinstance(q, int | float) or math.isclose(q, job["q"], rel_tol=1e-6)
    if not (same_file and same_q):
        raise ResultFileError(f"{job_dir / 'parameters.json'}: a fit of {p.get('data_file')} "
                              f"at q = {q}, but the folder's job.json names {job.get('file')} "
                              f"at q = {job['q']}: copied from another bin? rerun that job "
                              "(delete the file)")


def same_model(rows: list[dict]) -> None:
    """Refuse rows of different models in one table (a laminar result in a static run's
    folder would fill columns no other row has): the odd file is named. The per-angle
    scaling is no part of the model: files of 2 and 3 angles share one table (their
    contrast[2] cells are blank where a file has no third angle)."""
    names = _model_names
    fitted = [r for r in rows if any(k.endswith("_se") for k in r)]
    if not fitted:
        return
    kinds: dict[tuple, list[dict]] = {}
    for r in fitted:
        kinds.setdefault(names(r), []).append(r)
    if len(kinds) == 1:
        return
    usual = max(kinds, key=lambda k: len(kinds[k]))
    odd = next(r for r in fitted if names(r) != usual)
    raise ResultFileError(
        f"{Path(odd['output_dir']) / 'parameters.json'} holds parameters {list(names(odd))}, "
        f"the other results of this run {list(usual)}: results of different models cannot "
        "share one summary; remove the folder that does not belong or rerun that job")


def _model_names(row: dict) -> tuple:
    """The physical parameters of a summary row (its model), per-angle scaling aside."""
    return tuple(k[:-3] for k in row if k.endswith("_se")
                 and not re.fullmatch(r"(contrast|offset)\[\d+\]", k[:-3]))


def _other_model_left_out(rows: list[dict]) -> list[dict]:
    """Rows fitted with the current settings (settings_match True) define the model; rows
    of another model fitted with other settings (the config's analysis_mode was changed
    and only some bins refitted) are left out of the table, named in a warning: they
    cannot share it, and refusing the table after the fits left the old table describing
    results no longer on disk."""
    current = {_model_names(r) for r in rows if r.get("settings_match") is True}
    if len(current) != 1:
        return rows
    (model,) = current
    odd = [r for r in rows if r.get("settings_match") is False and _model_names(r) != model]
    if odd:
        log.warning("%d bins hold results of another model, fitted with other settings, and "
                    "are left out of the table: %s; refit them (homodyne --config ... --q all "
                    "--overwrite) or remove those folders", len(odd),
                    ", ".join(f"{r['file']} q bin {r['q_index']}" for r in odd))
    return [r for r in rows if r not in odd]


def _number(v) -> float:
    """JSON writes inf/nan as strings or null; back to floats (any other text: nan)."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except ValueError:
        return math.nan


_TAIL_COLUMNS = ("reduced_chi2", "status", "tier", "passes", "time_s", "output_dir")
# a row's key, not a column: the fit's own status word (FitResult.status) as read with the
# row, for the exit status (parameters.json is not read again once the folder's lock is
# released: a concurrent run may be replacing it)
OUTCOME = "outcome"


def table_columns(rows: list[dict]) -> list[str]:
    """summary.csv's columns for ``rows``: the bin's fields, then each parameter beside its
    kin (contrast[0], contrast[1], contrast[2], then offset[...], then the physical ones,
    each followed by its _se) whatever files of how many angles the rows come from, then
    the fit's outcome; a file with more angles adds its contrast[2] after contrast[1], not
    after output_dir."""
    seen = list(dict.fromkeys(k for row in rows for k in row))
    names = [k for k in seen if f"{k}_se" in seen]
    bases = list(dict.fromkeys(n.partition("[")[0] for n in names))

    def order(name: str):
        base, _, index = name.partition("[")
        return bases.index(base), int(index.rstrip("]") or -1) if index else -1

    head = [k for k in seen if k not in _TAIL_COLUMNS and k not in names and k != OUTCOME
            and not (k.endswith("_se") and k[:-3] in names)]
    params = [c for n in sorted(names, key=order) for c in (n, f"{n}_se")]
    return head + params + [k for k in _TAIL_COLUMNS if k in seen]


def write_summary(rows: list[dict], out_dir) -> Path:
    """summary.csv (one row per file x q, sorted) and the parameter-vs-q/-vs-file plots."""
    import pandas as pd

    from homodyne.production.multiq_plots import plot_parameters_vs_file, plot_parameters_vs_q

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    same_model(rows)
    table = pd.DataFrame(rows, columns=table_columns(rows)).sort_values(["file", "q_index"],
                                                                       kind="stable")
    for column in ("n_points", "passes"):  # counts stay integers beside a failed row's blank
        if column in table:
            table[column] = table[column].astype("Int64")
    from homodyne.output import atomic_path

    plots = (("parameters_vs_q.png", plot_parameters_vs_q),
             ("parameters_vs_file.png", plot_parameters_vs_file))
    for name, _ in plots:  # the old plots go first: a stop before the new ones are drawn
        (out / name).unlink(missing_ok=True)  # must not leave them beside the new table
    with atomic_path(out / SUMMARY_FILE) as tmp:
        table.to_csv(tmp, index=False)
    names = [c[:-3] for c in table.columns if c.endswith("_se")]
    for name, plot in plots:
        with atomic_path(out / name) as tmp:  # renamed into place: never through a symlink
            plot(tmp, table, names)
    return out / SUMMARY_FILE


def gather(job_dirs, out_dir, settings: str | None = None) -> Path:
    """The gather step: a summary row from every job folder, then table and plots, with
    the run's folder locked (as a run of every job in one process locks it); with
    ``settings`` (the run's settings_digest) the column settings_match, as the command
    line's table has."""
    with root_lock(out_dir):
        return _gather(job_dirs, out_dir, settings)


def _gather(job_dirs, out_dir, settings: str | None = None) -> Path:
    """The table of ``job_dirs``; with ``settings`` (the current config's digest) the rows
    fitted with other settings are marked (settings_match False) and named in a warning."""
    rows = _other_model_left_out([summary_row(d, settings) for d in job_dirs])
    stale = [r for r in rows if r.get("settings_match") is False]
    if stale:
        log.warning("%d of %d bins in %s were fitted with other settings than the current "
                    "config's, or before job.json recorded them (settings_match False): %s; "
                    "refit them (homodyne --config ... --q all --overwrite) before comparing "
                    "them with the others", len(stale),
                    len(rows), Path(out_dir) / SUMMARY_FILE,
                    ", ".join(f"{r['file']} q bin {r['q_index']}" for r in stale))
    return write_summary(rows, out_dir)


def root_lock(out_dir):
    """The lock of a multi-q run's folder (summary.csv, plots): one run at a time, and the
    temporary files a killed one left there are removed; a single fit's results there
    are refused (two kinds of results in one folder)."""
    from homodyne.pipeline import OutputLock

    if Path(out_dir, MARKER).exists():
        raise OutputDirError(
            f"{out_dir} holds a single fit ({MARKER}): a multi-q run there would mix two kinds "
            "of results; choose another output.directory (--output-dir) for the multi-q run")
    return OutputLock(Path(out_dir))


def run_all(cfg: HomodyneConfig, *, overwrite: bool | None = None,
            table_of: HomodyneConfig | None = None) -> tuple[list[dict], Path]:
    """Every job in this process, one after the other (a small set; the workflow runs them
    as parallel jobs), then the summary. A job that fails is a row with its error. With
    ``table_of`` (the whole multi-q config of which ``cfg`` selects one q: ``--q``), the
    summary is refreshed from every complete job folder of that config."""
    from homodyne.data.errors import DataFileError
    from homodyne.optimization.exceptions import NLSQOptimizationError

    root = cfg.output["directory"]
    jobs = plan_jobs(cfg)
    rows: list[dict] = []
    digests: dict = {}  # one digest of a file for all its q bins
    replaces = cfg.output["overwrite"] if overwrite is None else overwrite
    with root_lock(root), _bins_named_on_stop(rows, root, replaces):
        refuse_held_bins(jobs, replaces)
        try:
            for k, job in enumerate(jobs, 1):
                log.info("fit %d/%d: %s, q bin %d (q = %.6g)", k, len(jobs), job.file,
                         job.q_index, job.q)
                try:
                    rows.append(fit_job(cfg, job, overwrite=overwrite, digests=digests))
                except (DataFileError, NLSQOptimizationError) as exc:
                    log.error("%s q bin %d failed: %s", job.file, job.q_index, exc)
                    rows.append({"file": job.file_id, "age_s": None, "q_index": job.q_index,
                                 "q": job.q, "status": f"failed: {exc}",
                                 "output_dir": str(job.output_dir)})
        except BaseException:
            if rows:  # interrupted or refused midway: the table must describe the folders
                _summary_from_disk(jobs, root, settings_digest(cfg))  # as they are
            raise
        if table_of is not None:
            table = plan_jobs(table_of)
            table += [j for j in jobs if j.output_dir not in {t.output_dir for t in table}]
            try:
                return rows, _gather(_of_this_data(table, _complete(table)), root,
                                     settings_digest(table_of))
            except ResultFileError as exc:  # another bin's file: the old table would still
                _drop_table(root)  # describe the bins just refitted as they were
                raise ResultFileError(f"{exc}; {len(rows)} bins were fitted and are kept, "
                                      f"{Path(root) / SUMMARY_FILE} is removed (it described "
                                      "their previous results): fix that folder and rerun "
                                      "to refresh it") from None
        return rows, write_summary(rows, root)


def refuse_held_bins(jobs: list[QFitJob], overwrite: bool) -> None:
    """Without overwrite, refuse before the first fit when any bin's folder holds results
    (the run fitted and replaced the bins before such a folder, then stopped at it)."""
    held = [j.output_dir for j in jobs
            if any(os.path.lexists(j.output_dir / f) for f in RESULT_FILES)]
    if held and not overwrite:
        names = ", ".join(map(str, held[:3])) + (f" and {len(held) - 3} more"
                                                 if len(held) > 3 else "")
        raise OutputExistsError(
            f"{names} already hold{'s' if len(held) == 1 else ''} results ({len(held)} of "
            f"{len(jobs)} bins; nothing was fitted); choose another --output-dir or pass "
            "--overwrite (output.overwrite: true) to replace them")


@contextmanager
def _bins_named_on_stop(rows: list[dict], root, overwrite: bool = False):
    """A stop (or error) raised inside, once some of ``rows`` hold new results, carries
    ``bins_kept``: the command line's one line then names those bins instead of calling
    the whole output folder untouched; without ``overwrite`` also ``rerun``, how to resume
    (the same command is refused: those bins hold results now)."""
    try:
        yield
    except BaseException as stop:
        fitted = [r for r in rows if not r["status"].startswith("failed")]
        written = getattr(stop, "folder", None)  # a bin stopped once committed: its set is
        if written is not None and str(written) not in {str(r["output_dir"]) for r in fitted}:
            fitted.append({"output_dir": str(written)})  # in place (StoppedAfterCommit)
        if fitted:
            stop.bins_kept = bins_kept_line(fitted, root)
            if not overwrite:
                stop.rerun = RERUN_WITH_OVERWRITE
        raise


# how a multi-q run stopped after some bins, without --overwrite, is resumed
RERUN_WITH_OVERWRITE = "run the same command with --overwrite to resume"


def bins_kept_line(fitted: list[dict], root) -> str:
    """What a multi-q run stopped midway leaves: the bins it fitted (their folders under
    ``root``) hold its new results, every other result is as it was."""
    folders = ", ".join(str(Path(r["output_dir"]).relative_to(root))
                        if Path(r["output_dir"]).is_relative_to(root) else str(r["output_dir"])
                        for r in fitted)
    return (f"bins fitted before the stop are kept: {folders}; the other bins' results are "
            "untouched")


def _complete(jobs: list[QFitJob]) -> list[Path]:
    """The folders of ``jobs`` that hold a complete result (this run's or an earlier one's);
    a bin whose result files are there but not regular files (a folder, a pipe), or whose
    job.json is missing, is named in a warning, not left out of the table without a word."""
    odd = [f for j in jobs for f in (j.output_dir / "parameters.json", j.output_dir / JOB_FILE)
           if os.path.lexists(f) and not f.is_file()]
    if odd:
        log.warning("left out of %s: %s %s not a regular file (a folder, a pipe or a link to "
                    "one); remove %s and rerun %s", SUMMARY_FILE, ", ".join(map(str, odd)),
                    "is" if len(odd) == 1 else "are", "it" if len(odd) == 1 else "them",
                    "that bin" if len({f.parent for f in odd}) == 1 else "those bins")
    unnamed = [j.output_dir for j in jobs if (j.output_dir / "parameters.json").is_file()
               and not os.path.lexists(j.output_dir / JOB_FILE)]
    if unnamed:  # its record of file, bin and settings is gone: not silently dropped
        log.warning("left out of %s: %s %s a parameters.json but no %s (the record of the "
                    "file, q bin and settings it fits); rerun %s with --overwrite to restore "
                    "it", SUMMARY_FILE, ", ".join(map(str, unnamed)),
                    "holds" if len(unnamed) == 1 else "hold", JOB_FILE,
                    "that bin" if len(unnamed) == 1 else "those bins")
    return [j.output_dir for j in jobs
            if (j.output_dir / "parameters.json").is_file() and (j.output_dir / JOB_FILE).is_file()]


def _of_this_data(jobs: list[QFitJob], done: list[Path]) -> list[Path]:
    """The folders of ``done`` whose result is a fit of its job's data as it is now: a
    folder whose job.json records another q than the file's bin has now, or whose data
    file changed since (``_changed_since``), is left out of the table with a warning (a
    refreshed table listed c/q01 at q = 0.007, settings_match True, after c.h5 was
    rewritten with its bin 1 at q = 0.006)."""
    by_dir = {j.output_dir: j for j in jobs}
    keep, stale = [], []
    for folder in done:
        job = by_dir[folder]
        rec = _read_record(folder / JOB_FILE, _JOB_FIELDS)
        if not math.isclose(rec["q"], job.q, rel_tol=1e-6):
            stale.append(f"{job.file_id} q bin {job.q_index} (fitted at q = {rec['q']:.6g}, "
                         f"the bin is now at q = {job.q:.6g})")
        elif (changed := _changed_since(rec, job.file, folder)) is not None:
            stale.append(f"{job.file_id} q bin {job.q_index} ({changed} changed after the fit)")
        else:
            keep.append(folder)
    if stale:
        log.warning("%d bins hold fits of data that have changed since and are left out of "
                    "the table: %s; refit them (homodyne --config ... --q all --overwrite)",
                    len(stale), "; ".join(stale))
    return keep


def _changed_since(rec: dict, path, folder: Path) -> str | None:
    """What changed since the fit in ``folder``: the data file, by the stamp its job.json
    recorded, else (an older job.json) by mtime (a folder copied without -p looks newer),
    or a file the fit read through it (``sources``: gone, or its stamp and digest differ;
    a record that lists none in a form we can read counts as changed); None if nothing."""
    changed = _data_changed(rec.get("data"), path)
    if changed is None:
        changed = os.stat(path).st_mtime_ns > (folder / "parameters.json").stat().st_mtime_ns
    if changed:
        return str(path)
    sources = rec.get("sources", {})
    if not isinstance(sources, dict):
        return f"{path}'s virtual sources ({JOB_FILE} lists them as {type(sources).__name__})"
    for src, stamp in sources.items():
        if not os.path.isfile(src) or _data_changed(stamp, src) is not False:
            return f"{src} (read through {path})"
    return None


def _drop_table(out_dir) -> None:
    """summary.csv and its plots removed (a table of results no longer there)."""
    for name in (SUMMARY_FILE, "parameters_vs_q.png", "parameters_vs_file.png"):
        Path(out_dir, name).unlink(missing_ok=True)


def _summary_from_disk(jobs: list[QFitJob], out_dir, settings: str | None = None) -> None:
    """summary.csv and plots of the job folders that hold a complete result (this run's or
    an earlier one's), so a run stopped midway leaves no table of results no longer there."""
    done = _complete(jobs)
    try:
        if done:
            _gather(done, out_dir, settings)
        else:
            _drop_table(out_dir)
    except Exception as exc:  # the stop itself is what the user must see
        log.warning("summary of %s not refreshed after the stop (%s); it may describe an "
                    "earlier run", out_dir, exc)
