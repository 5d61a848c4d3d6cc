"""Config -> data source -> model -> engine -> result -> writers and plots, in one call."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path

import numpy as np

from homodyne import __version__
from homodyne.config import ConfigError, HomodyneConfig, load_config
from homodyne.data.twotime import DEFAULT_Q_TOLERANCE, TwoTimeSource, open_two_time
from homodyne.fitrun import FitRun, log_summary
from homodyne.model import ModelSpec, c2_on_frames
from homodyne.optimization.checkpoint_manager import hold_checkpoint_dir
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.fixed import fix_parameters
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.result import STATUS_TEXT, FitResult
from homodyne.optimization.settings import CheckpointSettings
from homodyne.output import (
    OutputDirError,
    OutputLock,
    ResultSet,
    StoppedAfterCommit,
    check_inputs_outside_results,
    check_output_dir,
    create_new,
    data_file_fields,
    ensure_writable_dir,
    file_size_limit_fix,
    write_fit_h5,
    write_json,
)

log = logging.getLogger("homodyne")
MAX_PLOT_FRAMES = 600
MIN_POINTS_PER_PARAMETER = 20  # fewer finite points than this per parameter: refused
WARN_FRACTION_KEPT = 0.5  # warn when less than this share of the selection is finite
FILE_KEYS = {"parameters.json": "parameters", "fit.h5": "fit", "c2_heatmaps.png": "heatmaps",
             "c2_cuts.png": "cuts", "fit.log": "log", "scaling_per_angle.png": "scaling",
             "residual_histogram.png": "residuals", "per_q.csv": "per_q", "g2_fits.png": "g2_fits",
             "rates_vs_q.png": "rates"}


class FitInterrupted(Exception):
    """The fit stopped on SIGINT/SIGTERM/SIGHUP; the best result so far was written."""

    def __init__(self, result: FitResult):
        super().__init__(result.stop_reason)
        self.result = result



def open_data(cfg: HomodyneConfig) -> TwoTimeSource:
    d = cfg.experimental_data
    if cfg.is_multi:
        from homodyne.config import ConfigError

        raise ConfigError("experimental_data", "this config selects several fits (files, a "
                          "q list or q: all); run them with homodyne.production.multiq.run_all "
                          "or the command line, which fit each (file, q bin) in turn")
    return open_two_time(d["file_path"], q=d["q"], q_tolerance=d["q_tolerance"],
                         phi_ranges=d["phi_ranges"], start_frame=d["start_frame"],
                         end_frame=d["end_frame"])


def model_spec(cfg: HomodyneConfig, source: TwoTimeSource) -> ModelSpec:
    d = cfg.experimental_data
    k = d["exclude_diagonal_frames"]
    if k >= source.n_frames:
        raise ConfigError("experimental_data.exclude_diagonal_frames",
                          f"{k} leaves no point of the {source.n_frames} selected frames; "
                          f"use a value below {source.n_frames}")
    spec = source.model_spec(mode=cfg.analysis_mode, dt=d["dt"], gap_h=d["gap_h"],
                             scaling=cfg.per_angle_scaling, dtype=cfg.performance["dtype"],
                             exclude_diagonal_frames=k)
    needed = MIN_POINTS_PER_PARAMETER * spec.n_params
    if k > 1 and spec.n_kept_points < needed:  # refused before the fit, naming the key
        raise ConfigError("experimental_data.exclude_diagonal_frames",
                          f"{k} keeps {spec.n_kept_points:,} of the {spec.n_points:,} selected "
                          f"points; a fit of {spec.n_params} parameters needs at least "
                          f"{needed:,}: use a smaller value")
    return spec


DT_DIFFERENCE_WARN = 0.01  # a config dt further than this from the file's frame time: WARNING


def dt_settings(cfg: HomodyneConfig, source: TwoTimeSource, spec: ModelSpec) -> dict:
    """Where the fit's dt came from (``"config"`` or ``"file"``) and the file's own frame
    time, for parameters.json; a config dt that overrides the file's frame time is logged
    with both values (a WARNING when they differ by more than 1%: D0 and D_offset scale
    with dt, so a mistyped dt changes them without another sign)."""
    in_file = source.frame_time if isinstance(source.frame_time, float) else None
    from_config = cfg.experimental_data["dt"] is not None
    if from_config and in_file is not None:
        differ = abs(spec.dt - in_file) > DT_DIFFERENCE_WARN * in_file
        log.log(logging.WARNING if differ else logging.INFO,
                "experimental_data.dt = %g s overrides the frame time %g s in %s%s", spec.dt,
                in_file, source.path, f" ({spec.dt / in_file:.4g}x it: D0 and D_offset scale "
                "with dt; remove dt from the config to use the file's)" if differ else "")
    return {"dt_source": "config" if from_config else "file", "frame_time_in_file": in_file}


def model_settings(cfg: HomodyneConfig, source: TwoTimeSource, spec: ModelSpec) -> dict:
    """Every setting that made the model and n_points, for parameters.json: with the data
    file and its fingerprint, a result says what it is the fit of."""
    d = cfg.experimental_data
    tol = d["q_tolerance"]
    if tol is None and d["q"] is not None:
        tol = DEFAULT_Q_TOLERANCE * abs(d["q"])
    return {"q_requested": d["q"], "q_tolerance": tol,
            "exclude_diagonal_frames": spec.exclude_diagonal_frames,
            "per_angle_scaling": spec.scaling,
            "gap_h": spec.gap_h if spec.mode == "laminar_flow" else None,
            "start_frame": d["start_frame"], "end_frame": d["end_frame"],
            "phi_ranges": d["phi_ranges"]}


def estimate_scaling(source: TwoTimeSource, angle: int) -> tuple[float, float]:
    """Contrast and offset from the first row: short lags minus the long-lag baseline."""
    row = source.read_rows(angle, 0, 1)[0, 1:]
    row = row[np.isfinite(row)]
    if row.size < 4:
        return 0.2, 1.0
    tail = row[-max(2, row.size // 10) :]
    offset = float(np.median(tail))
    contrast = float(np.mean(row[: max(1, min(3, row.size // 10))]) - offset)
    return contrast, offset


def start_and_bounds(cfg: HomodyneConfig, spec: ModelSpec, source: TwoTimeSource):
    """Initial vector (scaling from config or estimated from the data) and bounds."""
    k = spec.n_scaling_sets
    c_lo, c_hi = cfg.bound("contrast")
    o_lo, o_hi = cfg.bound("offset")
    contrast, offset = np.empty(k), np.empty(k)
    for s in range(k):
        c, o = estimate_scaling(source, s)
        contrast[s] = cfg.initial_parameters["contrast"] if \
            cfg.initial_parameters["contrast"] is not None else c
        offset[s] = cfg.initial_parameters["offset"] if \
            cfg.initial_parameters["offset"] is not None else o
    span_c, span_o = c_hi - c_lo, o_hi - o_lo
    contrast = np.clip(contrast, c_lo + 0.01 * span_c, c_hi - 0.01 * span_c)
    offset = np.clip(offset, o_lo + 0.01 * span_o, o_hi - 0.01 * span_o)
    p0 = spec.pack(contrast, offset, cfg.physical_initial())
    lb = spec.pack(c_lo, o_lo, [cfg.bound(n)[0] for n in spec.physical_names])
    ub = spec.pack(c_hi, o_hi, [cfg.bound(n)[1] for n in spec.physical_names])
    lb, ub = fix_parameters(p0, lb, ub, cfg.fixed, spec.parameter_names)
    return p0, lb, ub


def make_wrapper(cfg: HomodyneConfig) -> NLSQWrapper:
    opt, perf, stream = cfg.optimization, cfg.performance, cfg.streaming
    options = EngineOptions(max_iterations=opt["max_iterations"], step_tol_se=opt["step_tol_se"],
                            gtol=opt["gtol"], coarse=opt["coarse"],
                            coarse_points=opt["coarse_points"],
                            geodesic_acceleration=opt["geodesic_acceleration"],
                            start_estimate=opt["start_estimate"])
    return NLSQWrapper(
        enable_recovery=stream["enable_fault_tolerance"], fast_mode=perf["fast_mode"],
        enable_numerical_validation=stream["validate_numerics"],
        strategy_override=perf["strategy_override"], memory_limit_gb=perf["memory_limit_gb"],
        options=options, enable_progress=perf["enable_progress"], batch_size=perf["batch_size"],
        max_batch_size=perf["max_batch_size"], restarts=opt["restarts"],
        min_success_rate=stream["min_success_rate"],
        max_retries_per_batch=stream["max_retries_per_batch"],
        checkpoint_config={f.name: stream[f.name] for f in fields(CheckpointSettings)
                           if f.name in stream})


def run_from_config(cfg: HomodyneConfig, *, output_dir=None, overwrite: bool | None = None
                    ) -> FitRun:
    """Fit the configured data and write parameters, model, residuals, figures and a log.
    ``cfg``: a HomodyneConfig, or the path of a YAML config (read with load_config)."""
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(cfg)
    if not isinstance(cfg, HomodyneConfig):
        raise TypeError(f"run_from_config takes a HomodyneConfig (load_config(path)) or the "
                        f"path of a YAML config, got {type(cfg).__name__}")
    if overwrite is not None and not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True, False or None (the config's "
                        f"output.overwrite), got {overwrite!r}")
    out = Path(output_dir or cfg.output["directory"])
    ensure_writable_dir(out, "output folder", "--output-dir")
    run = None
    try:  # (a run refused by the output folder's lock creates no checkpoint folder)
        with OutputLock(out), ExitStack() as held:
            checkpoint_lock = None
            if cfg.streaming["enable_checkpoints"]:  # held by another run: refused before
                ensure_writable_dir(cfg.streaming["checkpoint_dir"], "checkpoint folder",
                                    "optimization.streaming.checkpoint_dir")  # the data;
                checkpoint_lock = hold_checkpoint_dir(cfg.streaming["checkpoint_dir"])
                held.callback(checkpoint_lock.release)  # else held until the run ends
            out = check_output_dir(out, cfg.output["overwrite"] if overwrite is None
                                   else overwrite)
            check_inputs_outside_results(out, [cfg.experimental_data["file_path"],
                                               *cfg.one_time["series"], cfg.source])
            run = _logged_run(cfg, out, checkpoint_lock)
    except KeyboardInterrupt as stop:  # while the lock was released: the set is in place
        if run is not None and not isinstance(stop, StoppedAfterCommit):
            raise StoppedAfterCommit(out) from stop
        raise
    return run


def _logged_run(cfg: HomodyneConfig, out: Path, checkpoint_lock=None) -> FitRun:
    """The run, logged to a staged fit.log committed with its results (or kept as
    fit.incomplete.log when there are none, so fit.log stays the log of what is there)."""
    results = ResultSet(out)
    # UTF-8 whatever the locale (LC_ALL=C: ASCII), a name that is not text escaped
    stream = os.fdopen(create_new(results.stage("fit.log")), "w", encoding="utf-8",
                       errors="backslashreplace")
    handler = FileLogHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    previous = log.level
    log.setLevel(logging.INFO)  # the file log is complete whatever the console shows
    log.addHandler(handler)
    for message in cfg.config_warnings:  # said on the console before this log opened
        handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0,
                                      "(reading the config) %s", (message,), None))
    committed = False
    try:
        run = _run(cfg, out, results, checkpoint_lock)
        log.removeHandler(handler)
        handler.close()
        handler.close_stream()  # (a StreamHandler leaves its stream open)
        try:
            run.files = {FILE_KEYS.get(n, n): p for n, p in results.commit().items()}
        except OSError as exc:
            raise _write_error(out, exc) from None
        committed = True
        return run
    except KeyboardInterrupt as stop:  # (after the renames: the new set is complete)
        if (committed or results.in_place) and not isinstance(stop, StoppedAfterCommit):
            raise StoppedAfterCommit(out) from stop
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()
        handler.close_stream()
        if not (committed or results.in_place):
            results.discard()


class FileLogHandler(logging.StreamHandler):
    """fit.log: a write that fails (disk full) stops the file log after one warning on
    the console, instead of a logging traceback for every later line; the results'
    own writes then report the full disk."""

    def handleError(self, record) -> None:
        self._incomplete(sys.exc_info()[1])

    def _incomplete(self, exc) -> None:
        if self.level > logging.CRITICAL:
            return
        self.setLevel(logging.CRITICAL + 1)
        print(f"homodyne: warning: fit.log is incomplete: {exc}", file=sys.stderr)

    def close_stream(self) -> None:
        """Close fit.log; what is still buffered may fail to go out (disk full, a file size
        limit): that costs the log's tail and one warning, never the results."""
        try:
            self.stream.close()
        except OSError as exc:
            self._incomplete(exc)


# what only a write meets (not a data file that cannot be read): a full disk or quota, a
# file-size limit, a read-only file system
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def write_failure(exc: OSError) -> str:
    """A write refused by the file system (``WRITE_FAILURES``), said with its fix, where no
    fit's output folder is at hand (a production fit's set, a workflow rule's file)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.EFBIG:
        fix = file_size_limit_fix()
    elif exc.errno == errno.EROFS:
        fix = "the file system is read-only: choose another folder"
    else:
        fix = "free space or choose another folder"
    return f"could not write the results{where}: {exc.strerror or exc}; {fix}"


def _write_error(out: Path, exc: BaseException) -> OutputDirError:
    """The one error of results that could not be written, with the fix for its cause."""
    reason = getattr(exc, "strerror", None) or str(exc)
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable"
    elif code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        fix = "keep the folder in place while the fit runs"  # removed, moved or replaced
    elif code == errno.EFBIG:  # not the disk: ulimit -f (another folder would not help)
        return OutputDirError(f"could not write the results to {out} ({reason}); "
                              f"{file_size_limit_fix()}; the previous results are untouched")
    else:  # ENOSPC, EDQUOT, and what h5py reports without a number
        fix = "free space"
    return OutputDirError(f"could not write the results to {out} ({reason}); {fix} or "
                          "choose another --output-dir; the previous results are untouched")


def jax_device(name: str):
    """The JAX device for performance.device ("cpu" or "gpu"), or a clear error."""
    import jax

    from homodyne.config import ConfigError

    if name == "gpu":
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            raise ConfigError("performance.device", "'gpu' requested but JAX sees no GPU; "
                              "install the CUDA build (pip install -e '.[gpu]') or use 'cpu'")
        return gpus[0]
    return jax.devices("cpu")[0]


def _run(cfg: HomodyneConfig, out: Path, results: ResultSet, checkpoint_lock=None
         ) -> FitRun:
    import jax

    if cfg.analysis_mode == "one_time":
        from homodyne.onetime.run import run_one_time

        try:
            return run_one_time(cfg, out, results.stage)
        except OSError as exc:  # its files and plots, staged: one line as for two-time
            if exc.errno in WRITE_FAILURES:  # (a traceback and exit 1 before)
                raise _write_error(out, exc) from None
            raise
    with jax.default_device(jax_device(cfg.performance["device"])):
        return _run_on_device(cfg, out, results, checkpoint_lock)


def _run_on_device(cfg: HomodyneConfig, out: Path, results: ResultSet,
                   checkpoint_lock=None) -> FitRun:
    t0 = time.perf_counter()
    with open_data(cfg) as source:
        spec = model_spec(cfg, source)
        p0, lb, ub = start_and_bounds(cfg, spec, source)
        log.info("homodyne %s: %s, %s mode, %s = %s points, q = %.6g "
                 "(requested %s, off by %.3g)", __version__, source.path, spec.mode,
                 spec.shape_text, f"{spec.n_points:,}", spec.q,
                 cfg.experimental_data["q"], source.q_tolerance)
        check_points_kept(source, spec, spec.n_points)
        settings = {**dt_settings(cfg, source, spec), **model_settings(cfg, source, spec)}
        wrapper = make_wrapper(cfg)
        wrapper.checkpoint_lock = checkpoint_lock  # held since before the data were read
        result = wrapper.fit_two_time(source, spec, p0, (lb, ub))
        log.info("tier %s, batch %d, %d full passes + %d coarse passes, %.2f s, peak RSS "
                 "%.0f MB, %s model", result.strategy, result.batch_size, result.passes,
                 result.coarse_passes, result.wall_time_s, result.peak_rss_mb or -1, spec.dtype)
        log_summary(result)
        if not result.interrupted_by:
            check_points_kept(source, spec, result.n_points)
            warn_infinite_points(source, spec, result.n_points)
            source.check_unchanged()  # results only for the file that is still there
        if result.interrupted_by:
            # best so far, under a name that does not block the resuming run; a folder
            # that cannot take it (made read-only, removed) costs that file, not the stop
            try:
                write_json(out / "parameters.interrupted.json", {
                    **data_file_fields(source.path), "interrupted_by": result.interrupted_by,
                    **result.as_dict()})
            except OSError as exc:
                log.warning("best parameters so far not written to %s (%s)", out,
                            exc.strerror or exc)
            raise FitInterrupted(result)  # its reason is the stop's one line (the CLI's last)
        try:
            write_json(results.stage("parameters.json"), {
                "homodyne_version": __version__, **data_file_fields(source.path),
                "analysis_mode": spec.mode, "q": spec.q, "dt": spec.dt,
                "model_dtype": spec.dtype, "phi_deg": spec.phi_deg,
                "frames": [source.first_frame, source.last_frame], **settings,
                "initial": p0, "lower": lb, "upper": ub, "truth": _truth(source, spec),
                **result.as_dict()})
            write_two_time_outputs(out, source, spec, result, plots=cfg.output["plots"],
                                   stage=results.stage)
        except (OSError, RuntimeError) as exc:  # h5py reports a full disk as either
            raise _write_error(out, exc) from None
    log.info("done in %.2f s; writing the results to %s", time.perf_counter() - t0, out)
    return FitRun(result, out, {}, spec)


def check_points_kept(source, spec: ModelSpec, n_used: int) -> None:
    """Warn when most of the selection is not finite (NaN/Inf, skipped by the fit), with
    the fraction kept; refuse a fit resting on fewer than MIN_POINTS_PER_PARAMETER finite
    points per parameter."""
    from homodyne.data.errors import DataFileError

    share = n_used / max(spec.n_points, 1)
    needed = MIN_POINTS_PER_PARAMETER * spec.n_params
    if spec.n_points < needed:  # checked before the fit too: no fit of a hopeless selection
        raise DataFileError(source.path, f"the selection holds only {spec.n_points:,} points "
                            f"({spec.shape_text}); a fit of "
                            f"{spec.n_params} parameters needs at least {needed:,}: widen the "
                            "frame or angle selection")
    if n_used < needed:
        raise DataFileError(source.path, f"only {n_used:,} of the {spec.n_points:,} selected "
                            f"points are finite ({share:.2%}); a fit of {spec.n_params} "
                            f"parameters needs at least {needed:,}: widen the frame or angle "
                            "selection or choose data without NaN")
    if share < WARN_FRACTION_KEPT:
        log.warning("only %.2f%% of the selected points are finite (%s of %s); the rest "
                    "(NaN/Inf) were skipped", 100 * share, f"{n_used:,}", f"{spec.n_points:,}")


def infinite_points(source, spec: ModelSpec) -> np.ndarray:
    """Number of +/-inf values among the fitted points of each angle (one read of the
    selection, made only when the fit left points out)."""
    counts = np.zeros(spec.n_phi, np.int64)
    n, k = spec.n_frames, spec.exclude_diagonal_frames
    for blk in source.iter_row_blocks():
        if k > 1:  # the near-diagonal band is no part of the fit: its points are not counted
            lags = np.concatenate([np.arange(1, n - r) for r in range(blk.row_start,
                                                                       blk.row_stop)])
            counts[blk.angle] += np.count_nonzero(np.isinf(blk.values[lags >= k]))
        else:
            counts[blk.angle] += np.count_nonzero(np.isinf(blk.values))
    return counts


def warn_infinite_points(source, spec: ModelSpec, n_used: int) -> None:
    """One warning naming how many points were left out for being infinite, per angle:
    a NaN is a missing point and is skipped quietly, an inf is no measurement at all
    (an overflow or a division by zero in the reduction) and says the data are damaged."""
    if n_used >= spec.n_kept_points:
        return
    counts = infinite_points(source, spec)
    if not counts.any():
        return
    where = ", ".join(f"{c:,} at phi = {phi:g} deg"
                      for c, phi in zip(counts, spec.phi_deg, strict=True) if c)
    log.warning("%s of the %s fitted points are +/-inf (%s) and were left out like missing "
                "(NaN) points; an inf is no missing value but a damaged one (an overflow or "
                "a division by zero where the file was made): check the file",
                f"{int(counts.sum()):,}", f"{spec.n_kept_points:,}", where)


def _truth(source, spec):
    """The synthetic file's true parameters, for the angles this fit selected: a
    per-angle entry (contrast[k]) of the file's angle k is named after that angle's
    index in the fit, the angles left out are not listed. Attributes that do not hold
    such a table (another writer's, an edit) are named in a warning and not listed: they
    only label the results, and a fit must not be lost to them."""
    attrs = source.attrs
    if "true_parameters" not in attrs:
        return None
    if "parameter_names" not in attrs:  # variable-length strings are left unread
        log.warning("%s: the synthetic truth's parameter names are not readable (a file of "
                    "an older homodyne generate stores them as variable-length strings, "
                    "which are not read); the truth is not listed in parameters.json - "
                    "generate the file again to list it", source.path)
        return None
    try:
        return _truth_table(attrs, source.phi_deg)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        log.warning("%s: the synthetic truth in %s is not a table of names and numbers "
                    "(%s: %s); it is not listed in parameters.json", source.path,
                    "/homodyne/synthetic", type(exc).__name__, exc)
        return None


def _truth_table(attrs, phi_deg) -> dict:
    names = [str(n) for n in np.atleast_1d(attrs["parameter_names"])]
    values = np.atleast_1d(attrs["true_parameters"])
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise TypeError(f"true_parameters of shape {values.shape} and type {values.dtype}")
    truth = dict(zip(names, values.astype(float).tolist(), strict=True))
    file_phi = np.asarray(attrs.get("phi_deg", ()), float).ravel()
    index = {}  # file angle -> this fit's angle
    for j, phi in enumerate(phi_deg):
        hits = np.flatnonzero(np.isclose(file_phi, phi))
        if hits.size:
            index[int(hits[0])] = j
    out = {}
    for name, value in truth.items():
        base, _, k = name.partition("[")
        if not k:
            out[name] = value
        elif int(k.rstrip("]")) in index:
            out[f"{base}[{index[int(k.rstrip(']'))]}]"] = value
    return out


def write_two_time_outputs(out, source, spec, result, *, plots: bool = True, title=None,
                           stage=None) -> dict:
    """fit.h5 (data, model, residuals; decimated past MAX_PLOT_FRAMES), heat maps, cuts.

    ``stage(name)`` gives the path to write ``name`` to (a ResultSet's temporary one);
    by default the files go straight into ``out``."""
    stage = stage or (lambda name: Path(out) / name)
    n = spec.n_frames
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_PLOT_FRAMES)).astype(int))
    data = np.stack([source.read_on_frames(a, idx) for a in range(spec.n_phi)])
    model = c2_on_frames(result.parameters, spec, idx)
    # the outcome in every file of the set: a figure or fit.h5 read on its own must not
    # pass for a converged fit
    files = {"fit": write_fit_h5(stage("fit.h5"), phi_deg=spec.phi_deg,
                                 frames=source.first_frame + idx, data=data, model=model,
                                 attrs={"decimated": idx.size < n, "n_frames": n,
                                        "parameters": result.parameters,
                                        "parameter_names": list(result.parameter_names),
                                        "status": result.status,
                                        **data_file_fields(source.path),
                                        "model_dtype": spec.dtype})}
    if plots:
        from homodyne.plots import (
            plot_cuts,
            plot_heatmaps,
            plot_residual_histogram,
            plot_scaling,
        )

        times = (source.first_frame + idx) * spec.dt
        title = title or f"{Path(source.path).name} ({spec.mode})"
        if result.status != "converged":  # "NOT converged", "converged but NOT DETERMINED"
            title += f": {STATUS_TEXT[result.status].split(' (')[0]}"
        files["heatmaps"] = plot_heatmaps(stage("c2_heatmaps.png"), times=times,
                                          phi_deg=spec.phi_deg, data=data, model=model,
                                          title=title)
        files["cuts"] = plot_cuts(stage("c2_cuts.png"), times=times, phi_deg=spec.phi_deg,
                                  data=data, model=model)
        (c, o, _), (c_se, o_se, _) = spec.split(result.parameters), \
            spec.split(result.uncertainties)
        files["scaling"] = plot_scaling(stage("scaling_per_angle.png"), phi_deg=spec.phi_deg,
                                        contrast=c, contrast_se=c_se, offset=o, offset_se=o_se)
        files["residuals"] = plot_residual_histogram(
            stage("residual_histogram.png"), data=data, model=model,
            reduced_chi2=result.reduced_chi_squared)
    return files
