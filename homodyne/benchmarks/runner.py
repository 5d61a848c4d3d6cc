"""One benchmark run per call, written as a JSON record; used by the workflow's rules.

Every record carries: what ran (engine tier/device/settings or a peer), wall time,
residuals/s per pass, end-to-end points/s, passes, peak RSS sampled inside the
process, RSS spread across batches, the parameters with uncertainties, and the
distance from the truth (in standard errors). Distances from the reference optimum
are filled in by ``summary`` once every run of a dataset is in.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path

import numpy as np

from homodyne import __version__
from homodyne.data import open_two_time
from homodyne.data.errors import DataFileError
from homodyne.memory import RSSSampler, peak_rss_mb
from homodyne.output import write_json


def _truth(src):
    a = src.attrs
    return np.asarray(a["true_parameters"], float) if "true_parameters" in a else None


def _problem_setup(src):
    """Spec, start 20% off the truth on the physical parameters, and bounds."""
    a = src.attrs
    if "mode" not in a or "scaling" not in a:  # variable-length labels are not read
        raise DataFileError(src.path, "has no readable mode/scaling labels in "
                                      "/homodyne/synthetic (an older homodyne generate "
                                      "wrote them as variable-length strings); generate "
                                      "the file again")
    spec = src.model_spec(mode=str(a.get("mode", "static")), scaling=str(a.get("scaling",
                          "shared")), gap_h=float(a.get("gap_h", 2e6)))
    truth = _truth(src)
    k = spec.n_scaling_sets
    p0 = truth.copy()
    factors = np.array([1.2, 0.8, 1.2, 1.2, 0.8, 1.2, 1.2])[: spec.n_physical]
    p0[2 * k :] = truth[2 * k :] * factors
    p0[:k] *= 0.9
    lo = [1.0, -2.0, -1000.0, 1e-8, -2.0, -1e-3, -30.0][: spec.n_physical]
    hi = [1e5, 0.5, 1000.0, 1e-2, 2.0, 1e-3, 30.0][: spec.n_physical]
    return spec, p0, (spec.pack(0.0, 0.5, lo), spec.pack(1.0, 1.5, hi)), truth


def _record(kind, name, src, spec, t_wall, rss, params, se, truth, extra) -> dict:
    rec = {
        "kind": kind, "name": name, "dataset": Path(src.path).stem, "n_points": spec.n_points,
        "mode": spec.mode, "n_params": spec.n_params, "wall_s": t_wall,
        "points_per_s": spec.n_points / t_wall if t_wall > 0 else float("nan"),
        "peak_rss_mb": rss.peak_mb, "rss_batch_cv": rss.batch_cv,
        "peak_rss_hwm_mb": _hwm_mb(),
        "parameters": np.asarray(params).tolist(), "uncertainties": np.asarray(se).tolist(),
        "parameter_names": list(spec.parameter_names),
        "max_abs_error_se": _error_se(params, se, truth),
        "homodyne_version": __version__, "host": platform.node(),
        "machine": platform.machine(), "timestamp": time.time(),
    }
    rec.update(extra)
    return rec


def _error_se(params, se, truth) -> float | None:
    """The largest |fit - truth| in standard errors over the parameters the fit determines
    (finite SE > 0); None without a truth or with none determined (an infinite SE made an
    undetermined fit read as a perfect recovery, 0.0)."""
    if truth is None:
        return None
    se = np.asarray(se, dtype=float)
    ok = np.isfinite(se) & (se > 0)
    if not ok.any():
        return None
    return float(np.max(np.abs((np.asarray(params, dtype=float) - truth)[ok] / se[ok])))


def _hwm_mb():
    """The process's exact resident high-water mark (catches spikes the sampler misses)."""
    return peak_rss_mb()


def peer_max_points(peers: dict, method: str) -> int:
    """The largest dataset a peer is run on: ``max_points[method]``, else the scipy or
    nlsq default of the config's ``peers`` section."""
    if method in peers.get("max_points", {}):
        return int(peers["max_points"][method])
    if method == "scipy-trf":
        return int(peers.get("scipy_max_points", 10_000_000))
    return int(peers.get("nlsq_max_points", 1_000_000))


def bench_engine(data_path, out_json, *, tier="standard", device="cpu") -> dict:
    """Fit a dataset with this engine (default settings: full fault tolerance, no
    checkpoints; their overheads are ``overhead.bench_overheads``) and record speed,
    memory and accuracy. ``tier="auto"`` lets the dataset's size pick the tier."""
    import jax

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    if device == "gpu" and not any(d.platform == "gpu" for d in jax.devices()):
        return _unavailable(out_json, "engine", f"{tier}-gpu", data_path,
                            "no GPU visible to JAX on this machine")
    target = next(d for d in jax.devices() if d.platform == "gpu") if device == "gpu" \
        else jax.devices("cpu")[0]
    src = open_two_time(data_path)
    spec, p0, bounds, truth = _problem_setup(src)
    with jax.default_device(target), RSSSampler() as rss:
        def cb(batch_idx, params, loss, success):
            rss.mark()
            return True

        w = NLSQWrapper(strategy_override=None if tier == "auto" else tier, callback=cb)
        t0 = time.perf_counter()
        r = w.fit_two_time(src, spec, p0, bounds)
        wall = time.perf_counter() - t0
    src.close()
    d = r.streaming_diagnostics or {}
    rec = _record("engine", f"{tier}-{device}", src, spec, wall, rss, r.parameters,
                  r.uncertainties, truth, {
                      "tier": r.strategy, "device": r.device, "passes": r.passes,
                      "auto_selected": tier == "auto",
                      "coarse_passes": r.coarse_passes, "coarse_points": r.coarse_points,
                      "batch_size": r.batch_size, "pass_seconds": r.pass_seconds,
                      "residuals_per_s_per_pass": r.residuals_per_second,
                      "converged": r.converged, "stop_reason": r.stop_reason,
                      "reduced_chi_squared": r.reduced_chi_squared,
                      "batch_success_rate": d.get("batch_success_rate"),
                  })
    write_json(out_json, rec)
    return rec


def bench_scipy(data_path, out_json, *, max_points: int) -> dict:
    """scipy.optimize.least_squares (TRF) with a JAX Jacobian, data in memory."""
    from scipy.optimize import least_squares

    from homodyne.jaxconf import jax, jnp
    from homodyne.model import c2_points

    src = open_two_time(data_path)
    spec, p0, (lb, ub), truth = _problem_setup(src)
    if spec.n_points > max_points:
        return _unavailable(out_json, "peer", "scipy-trf", data_path,
                            f"skipped: {spec.n_points:,} points > peers.scipy_max_points "
                            f"{max_points:,}")
    with RSSSampler() as rss:
        t0 = time.perf_counter()
        y = src.read_packed()
        g = jnp.arange(spec.n_points)
        fun = jax.jit(lambda p: c2_points(p, g, spec) - y)
        jac = jax.jit(jax.jacfwd(lambda p: c2_points(p, g, spec)))
        res = least_squares(lambda p: np.asarray(fun(p)), p0, jac=lambda p: np.asarray(jac(p)),
                            bounds=(lb, ub), method="trf", x_scale="jac", ftol=1e-12,
                            xtol=1e-12, gtol=1e-12)
        J = np.asarray(jac(res.x))
        wall = time.perf_counter() - t0
    chi2r = 2 * res.cost / (spec.n_points - p0.size)
    # scaled inversion (columns span 1e4 .. 1e-5): a plain pinv truncates and lies
    from homodyne.optimization.covariance import covariance_from_normal

    se = np.sqrt(np.abs(np.diag(covariance_from_normal(J.T @ J, chi2r))))
    rec = _record("peer", "scipy-trf", src, spec, wall, rss, res.x, se, truth, {
        "passes": int(res.nfev), "converged": bool(res.success), "stop_reason": res.message,
        "residuals_per_s_per_pass": float("nan"), "reduced_chi_squared": chi2r})
    write_json(out_json, rec)
    return rec


def run_peer_with_timeout(data_path, out_json, *, method: str, max_points: int,
                          timeout_s: int | None) -> dict:
    """Run an nlsq peer in a child process that is killed after ``timeout_s`` (a signal
    cannot interrupt a long compiled JAX loop); a timeout is recorded as a result."""
    import subprocess
    import sys

    code = ("import sys; from homodyne.benchmarks.runner import bench_nlsq; "
            "bench_nlsq(sys.argv[1], sys.argv[2], method=sys.argv[3], "
            "max_points=int(sys.argv[4]))")
    try:
        subprocess.run([sys.executable, "-c", code, str(data_path), str(out_json), method,
                        str(max_points)], check=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return _unavailable(out_json, "peer", f"nlsq-{method}", data_path,
                            f"timed out: did not finish within {timeout_s} s")
    except subprocess.CalledProcessError as exc:
        return _unavailable(out_json, "peer", f"nlsq-{method}", data_path,
                            f"failed: exit status {exc.returncode}")
    return json.loads(Path(out_json).read_text())


def bench_nlsq(data_path, out_json, *, method: str, max_points: int) -> dict:
    """nlsq's curve_fit / curve_fit_large / hybrid streaming on the same data."""
    from homodyne.optimization.nlsq_backend import fit_with_nlsq, nlsq_available

    name = f"nlsq-{method}"
    if not nlsq_available():
        return _unavailable(out_json, "peer", name, data_path,
                            "nlsq not installed (pip install -e '.[peers]')")
    src = open_two_time(data_path)
    spec, p0, (lb, ub), truth = _problem_setup(src)
    if spec.n_points > max_points:
        return _unavailable(out_json, "peer", name, data_path,
                            f"skipped: {spec.n_points:,} points > the peer limit "
                            f"{max_points:,}")
    from homodyne.jaxconf import jnp
    from homodyne.model import c2_points

    def model(x, *p):
        return c2_points(jnp.stack(p), x, spec)

    with RSSSampler() as rss:
        t0 = time.perf_counter()
        y = src.read_packed()
        x = np.arange(spec.n_points, dtype=np.float64)
        try:
            r = fit_with_nlsq(model, x, y, p0, lb, ub, method=method)
            error = None
        except Exception as exc:  # noqa: BLE001 - a peer's failure is a result, recorded
            error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        wall = time.perf_counter() - t0
    if error:
        return _unavailable(out_json, "peer", name, data_path, f"failed: {error}")
    rec = _record("peer", name, src, spec, wall, rss, r.parameters, r.uncertainties, truth, {
        "passes": -1, "converged": None, "stop_reason": r.stop_reason,
        "residuals_per_s_per_pass": float("nan"),
        "reduced_chi_squared": r.reduced_chi_squared})
    write_json(out_json, rec)
    return rec


def _unavailable(out_json, kind, name, data_path, reason) -> dict:
    rec = {"kind": kind, "name": name, "dataset": Path(data_path).stem, "unavailable": reason}
    write_json(out_json, rec)
    return rec


def load_records(paths) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]
