"""The CLI's one-time run: read the file, fit every q, write the result set.

parameters.json (standard JSON, with the overall ``status``), per_q.csv, g2_fits.png
and rates_vs_q.png go through homodyne.output's writers, parameters.json last.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from homodyne import __version__
from homodyne.fitrun import FitRun, log_summary
from homodyne.onetime.data import read_one_time
from homodyne.onetime.fit import OneTimeOptions, OneTimeResult, fit_one_time
from homodyne.output import atomic_path, data_file_fields, write_json

log = logging.getLogger("homodyne")


def options_from_config(cfg) -> OneTimeOptions:
    ot = cfg.one_time
    return OneTimeOptions(beta=ot["beta"], errors=ot["errors"], min_tau_s=ot["min_tau_s"],
                          max_tau_s=ot["max_tau_s"], max_iterations=ot["max_iterations"],
                          q_range=tuple(ot["q_range"]) if ot["q_range"] else None)


def run_one_time(cfg, out: Path, stage=None):
    """Fit the configured one-time file and write its result set into ``out`` (through
    ``stage(name)``, a ResultSet's temporary path, when given)."""
    t0 = time.perf_counter()
    data = read_one_time(cfg.experimental_data["file_path"])
    result = fit_one_time(data, options_from_config(cfg))
    if cfg.one_time["series"]:  # staged like every file of the set: committed with it
        result.j_model = fit_j_model(cfg, Path(stage("j_model")) if stage else out / "j_model")
    log_summary(result)
    files = write_one_time_outputs(out, result, plots=cfg.output["plots"], stage=stage)
    log.info("done in %.2f s; writing the results to %s", time.perf_counter() - t0, out)
    return FitRun(result, out, files)


def fit_j_model(cfg, folder: Path) -> dict:
    """The aging J-model over file_path and one_time.series (multi-tau files), jointly
    over q and ages (from the files' start times or one_time.ages_s); its own files go
    into ``folder``, the key numbers into parameters.json, with every file of the series
    as given (``files``) and by its absolute path (``files_abs``: data_file_abs names the
    first one only)."""
    from homodyne.production.aging import fit_aging

    ot = cfg.one_time
    paths = [cfg.experimental_data["file_path"], *ot["series"]]
    given = (cfg.raw.get("one_time") or {}) if isinstance(cfg.raw, dict) else {}
    # one_time.max_iterations as written caps both fits; unset, the joint fit gets 500
    max_iterations = ot["max_iterations"] if given.get("max_iterations") is not None else 500
    folder.mkdir(parents=True, exist_ok=True)
    r = fit_aging(paths, folder, min_tau_s=ot["min_tau_s"] or 0.0, max_tau_s=ot["max_tau_s"],
                  error_model=ot["errors"], max_iterations=max_iterations,
                  ages_s=ot["ages_s"], nonnegative_J=ot["nonnegative_J"],
                  plots=cfg.output["plots"], stage=lambda name: folder / name)
    res, s = r["result"], r["summary"]
    by = dict(zip(res.parameter_names, res.parameters.tolist(), strict=True))
    se = dict(zip(res.parameter_names, res.uncertainties.tolist(), strict=True))
    return {"status": res.status, "stop_reason": res.stop_reason, "folder": "j_model",
            "files": s["files"], "files_abs": [str(Path(f).resolve()) for f in s["files"]],
            "ages_s": s["ages_s"], "D0": by["D0"], "alpha": by["alpha"],
            "D_offset": by["D_offset"], "offset": by["offset"],
            "uncertainties": {k: se[k] for k in ("D0", "alpha", "D_offset", "offset")},
            "reduced_chi_squared": res.reduced_chi_squared,
            "J_negative_in_window": s["J_negative_in_window"],
            "J_min_in_window": s["J_min_in_window"], "undetermined": res.undetermined,
            "at_bounds": res.at_bounds}


def write_one_time_outputs(out, result: OneTimeResult, *, plots: bool = True,
                           stage=None) -> dict:
    """per_q.csv, figures, then parameters.json (the marker of a complete set);
    ``stage(name)`` gives the path to write ``name`` to (default: straight into ``out``,
    each file atomically)."""
    out = Path(out)
    stage = stage or (lambda name: out / name)
    files = {}
    rows = pd.DataFrame([f.row() for f in result.fits])
    with atomic_path(stage("per_q.csv")) as tmp:
        rows.to_csv(tmp, index=False)
    files["per_q"] = out / "per_q.csv"
    if plots:
        from homodyne.onetime.plots import plot_g2_fits, plot_rates

        name = Path(result.data_file).name
        with atomic_path(stage("g2_fits.png")) as tmp:
            plot_g2_fits(tmp, result.fits, title=f"{name}: one-time g2")
        with atomic_path(stage("rates_vs_q.png")) as tmp:
            plot_rates(tmp, result.fits, result.resolved, result.power_law, title=name)
        files["g2_fits"], files["rates"] = out / "g2_fits.png", out / "rates_vs_q.png"
    write_json(stage("parameters.json"), parameters_payload(result))
    files["parameters"] = out / "parameters.json"
    return files


def parameters_payload(result: OneTimeResult) -> dict:
    o = result.options
    return {
        "homodyne_version": __version__, **data_file_fields(result.data_file),
        "analysis_mode": "one_time", "status": result.status,
        "sigma_overstated": result.sigma_overstated,
        "summary": result.summary().splitlines()[0], "n_points": result.n_points,
        "options": {"beta": o.beta, "errors": o.errors, "min_tau_s": o.min_tau_s,
                    "max_tau_s": o.max_tau_s, "q_range": o.q_range,
                    "max_iterations": o.max_iterations},
        "model": "g2 = offset + contrast * exp(-2 (gamma tau)^beta)",
        "rate_power_law": result.power_law, "j_model": result.j_model,
        "per_q": [{**f.row(), "fit": f.result.as_dict()} for f in result.fits],
    }
