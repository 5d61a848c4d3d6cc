"""A laminar-flow fit of a synthetic dataset in the real APS-U layout (no measured shear
data is public), run through the same config -> CLI pipeline a user runs.

The set (the CLI run's folder fit/ and parameters.json) is committed all or nothing; the
data it was fitted to is named by its settings, so a refit with other settings that
fails leaves the previous set beside the very data it was fitted to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from homodyne.config import ConfigError, validate_config
from homodyne.data.synthetic import generate_synthetic
from homodyne.model import ModelSpec, angle_problem, same_angle_pair
from homodyne.output import MARKER, committed_set, write_json
from homodyne.pipeline import run_from_config

TRUTH = [1.0e4, -0.5, 100.0, 1.0e-5, 0.2, 1.0e-6, 5.0]
START = [8000.0, -0.4, 80.0, 1.2e-5, 0.25, 0.0, 4.0]
LAMINAR_FOLDERS = ("fit",)  # the CLI run's own result set, staged as one folder
LAMINAR_FILES = (*LAMINAR_FOLDERS, MARKER)
DATA_PREFIX = "laminar_synthetic"


def data_name(frames: int, angles, seed: int) -> str:
    """The synthetic data file of these settings (one file per settings)."""
    return f"{DATA_PREFIX}_{frames}f_{'_'.join(f'{a:g}' for a in angles)}deg_seed{seed}.h5"


def fit_laminar_synthetic(out_dir, *, frames=400, angles=(0, 20, 45, 70, 90), seed=11) -> dict:
    """Generate (or regenerate, identically) the data and fit them; the result set goes
    into ``out_dir`` all or nothing."""
    out = Path(out_dir)
    if angle_problem(angles):  # (else ModelSpec's ValueError, not naming the key)
        raise ConfigError("fits.laminar_synthetic.angles", angle_problem(angles))
    spec = ModelSpec(mode="laminar_flow", n_frames=frames, phi_deg=tuple(angles))
    same = same_angle_pair(spec.phi_deg)
    if same:  # (else a file the fit refuses, its message saying 'fix the file')
        raise ConfigError("fits.laminar_synthetic.angles", f"{spec.phi_deg[same[0]]:g} and "
                          f"{spec.phi_deg[same[1]]:g} are one angle (equal modulo 360 "
                          "degrees); list each once")
    with committed_set(out, LAMINAR_FILES, LAMINAR_FOLDERS) as results:
        data = out / data_name(frames, angles, seed)
        made = not data.exists()  # (else the previous set's data, regenerated identically)
        try:
            generate_synthetic(data, spec, spec.pack(0.3, 1.0, TRUTH), noise_sigma=0.01,
                               seed=seed, overwrite=True)  # (atomic)
            r = _fit(spec, data, results.stage)
        except BaseException:
            if made:  # the data of a set that was not committed
                data.unlink(missing_ok=True)
            raise
    for old in out.glob(f"{DATA_PREFIX}*.h5"):  # the data of sets no longer there
        if old != data:
            old.unlink(missing_ok=True)
    return {**r, "files": results.committed}


def _fit(spec, data: Path, stage) -> dict:
    cfg = validate_config({
        "analysis_mode": "laminar_flow",
        "experimental_data": {"file_path": str(data), "q": 0.0054, "gap_h": 2.0e6},
        "initial_parameters": {"parameter_names": list(spec.physical_names), "values": START},
        "parameter_space": {"bounds": [
            {"name": "D0", "min": 1.0, "max": 1e5}, {"name": "alpha", "min": -2.0, "max": 0.5},
            {"name": "D_offset", "min": -1000.0, "max": 1000.0},
            {"name": "gamma_dot_t0", "min": 1e-8, "max": 1e-2},
            {"name": "beta", "min": -2.0, "max": 2.0},
            {"name": "gamma_dot_t_offset", "min": -1e-3, "max": 1e-3},
            {"name": "phi0", "min": -30.0, "max": 30.0}]},
        "output": {"directory": str(stage("fit")), "overwrite": True},
        "performance": {"enable_progress": False},
    })
    run = run_from_config(cfg)
    r = run.result
    k = spec.n_scaling_sets
    truth = spec.pack(0.3, 1.0, TRUTH)
    z = (r.parameters - truth) / r.uncertainties
    rows = [{"name": n, "truth": float(t), "fit": float(v), "se": float(u), "z": float(zz)}
            for n, t, v, u, zz in zip(r.parameter_names, truth, r.parameters, r.uncertainties, z,
                                      strict=True)][2 * k :]
    summary = {"data": str(data), "truth_vs_fit": rows, "max_abs_z": float(np.max(np.abs(z))),
               **r.as_dict()}
    write_json(stage(MARKER), summary)
    return {"result": r, "summary": summary}
