"""Config -> data source -> model -> engine -> result -> writers and plots, in one call."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from homodyne import __version__
from homodyne.config import HomodyneConfig
from homodyne.data.twotime import TwoTimeSource, open_two_time
from homodyne.model import ModelSpec, c2_on_frames
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.fixed import fix_parameters
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.result import FitResult
from homodyne.output import OutputExistsError, check_output_dir, write_fit_h5, write_json

log = logging.getLogger("homodyne")
MAX_PLOT_FRAMES = 600


class FitInterrupted(Exception):
    """The fit stopped on SIGINT/SIGTERM; the best result so far was written."""

    def __init__(self, result: FitResult):
        super().__init__(result.stop_reason)
        self.result = result


@dataclass
class FitRun:
    """What one run produced: the result, where it went, and what it was fitted to."""

    result: FitResult
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    spec: ModelSpec | None = None


def open_data(cfg: HomodyneConfig) -> TwoTimeSource:
    d = cfg.experimental_data
    return open_two_time(d["file_path"], q=d["q"], q_tolerance=d["q_tolerance"],
                         phi_ranges=d["phi_ranges"], start_frame=d["start_frame"],
                         end_frame=d["end_frame"])


def model_spec(cfg: HomodyneConfig, source: TwoTimeSource) -> ModelSpec:
    d = cfg.experimental_data
    return source.model_spec(mode=cfg.analysis_mode, dt=d["dt"], gap_h=d["gap_h"],
                             scaling=cfg.per_angle_scaling, dtype=cfg.performance["dtype"])


def estimate_scaling(source: TwoTimeSource, angle: int) -> tuple[float, float]:
    """Contrast and offset from the first row: short lags minus the long-lag baseline."""
    row = source._read_rows(angle, 0, 1)[0, 1:]
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
                            coarse_points=opt["coarse_points"])
    return NLSQWrapper(
        enable_recovery=stream["enable_fault_tolerance"], fast_mode=perf["fast_mode"],
        enable_numerical_validation=stream["validate_numerics"],
        strategy_override=perf["strategy_override"], memory_limit_gb=perf["memory_limit_gb"],
        options=options, enable_progress=perf["enable_progress"], batch_size=perf["batch_size"],
        min_success_rate=stream["min_success_rate"],
        max_retries_per_batch=stream["max_retries_per_batch"],
        checkpoint_config={k: stream[k] for k in (
            "enable_checkpoints", "checkpoint_dir", "checkpoint_frequency",
            "checkpoint_min_interval_s", "resume_from_checkpoint", "keep_last_checkpoints")})


def run_from_config(cfg: HomodyneConfig, *, output_dir=None, overwrite: bool | None = None
                    ) -> FitRun:
    """Fit the configured data and write parameters, model, residuals, figures and a log."""
    out = Path(output_dir or cfg.output["directory"])
    with OutputLock(out):
        out = check_output_dir(out, cfg.output["overwrite"] if overwrite is None else overwrite)
        return _logged_run(cfg, out)


class OutputLock:
    """One run per output folder: a second run pointed at it is refused, not interleaved."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".homodyne.lock"
        self.fh = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another run"
            self.fh.close()
            raise OutputExistsError(f"{self.path.parent} is in use by {holder}; wait for it to "
                                    "finish or choose another --output-dir") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def _logged_run(cfg: HomodyneConfig, out: Path) -> FitRun:
    handler = logging.FileHandler(out / "fit.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    previous = log.level
    log.setLevel(logging.INFO)  # the file log is complete whatever the console shows
    log.addHandler(handler)
    try:
        return _run(cfg, out)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()


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


def _run(cfg: HomodyneConfig, out: Path) -> FitRun:
    import jax

    with jax.default_device(jax_device(cfg.performance["device"])):
        return _run_on_device(cfg, out)


def _run_on_device(cfg: HomodyneConfig, out: Path) -> FitRun:
    t0 = time.perf_counter()
    with open_data(cfg) as source:
        spec = model_spec(cfg, source)
        p0, lb, ub = start_and_bounds(cfg, spec, source)
        log.info("homodyne %s: %s, %s mode, %d angles x %d frames = %s points, q = %.6g "
                 "(requested %s, off by %.3g)", __version__, source.path, spec.mode,
                 spec.n_phi, spec.n_frames, f"{spec.n_points:,}", spec.q,
                 cfg.experimental_data["q"], source.q_tolerance)
        wrapper = make_wrapper(cfg)
        result = wrapper.fit_two_time(source, spec, p0, (lb, ub))
        log.info("tier %s, batch %d, %d full passes + %d coarse passes, %.2f s, peak RSS "
                 "%.0f MB", result.strategy, result.batch_size, result.passes,
                 result.coarse_passes, result.wall_time_s, result.peak_rss_mb or -1)
        for line in result.summary().splitlines():
            log.info(line)
        if result.interrupted_by:
            # best so far, under a name that does not block the resuming run
            write_json(out / "parameters.interrupted.json", {
                "data_file": source.path, "interrupted_by": result.interrupted_by,
                **result.as_dict()})
            log.warning("%s", result.stop_reason)
            raise FitInterrupted(result)
        files = {"parameters": write_json(out / "parameters.json", {
            "homodyne_version": __version__, "data_file": source.path,
            "analysis_mode": spec.mode, "q": spec.q, "dt": spec.dt, "phi_deg": spec.phi_deg,
            "frames": [source.first_frame, source.last_frame], "initial": p0, "lower": lb,
            "upper": ub, "truth": _truth(source, spec), **result.as_dict()})}
        files.update(write_two_time_outputs(out, source, spec, result,
                                            plots=cfg.output["plots"]))
    log.info("done in %.2f s; outputs in %s", time.perf_counter() - t0, out)
    return FitRun(result, out, files, spec)


def _truth(source, spec):
    attrs = source.attrs
    if "true_parameters" not in attrs:
        return None
    names = [str(n) for n in attrs["parameter_names"]]
    return dict(zip(names, np.asarray(attrs["true_parameters"]).tolist(), strict=True))


def write_two_time_outputs(out, source, spec, result, *, plots: bool = True, title=None
                           ) -> dict:
    """fit.h5 (data, model, residuals; decimated past MAX_PLOT_FRAMES), heat maps, cuts."""
    n = spec.n_frames
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_PLOT_FRAMES)).astype(int))
    data = np.stack([source.read_on_frames(a, idx) for a in range(spec.n_phi)])
    model = c2_on_frames(result.parameters, spec, idx)
    files = {"fit": write_fit_h5(out / "fit.h5", phi_deg=spec.phi_deg,
                                 frames=source.first_frame + idx, data=data, model=model,
                                 attrs={"decimated": idx.size < n, "n_frames": n,
                                        "parameters": result.parameters})}
    if plots:
        from homodyne.plots import plot_cuts, plot_heatmaps

        times = (source.first_frame + idx) * spec.dt
        files["heatmaps"] = plot_heatmaps(out / "c2_heatmaps.png", times=times,
                                          phi_deg=spec.phi_deg, data=data, model=model,
                                          title=title or f"{source.path} ({spec.mode})")
        files["cuts"] = plot_cuts(out / "c2_cuts.png", times=times, phi_deg=spec.phi_deg,
                                  data=data, model=model)
    return files
