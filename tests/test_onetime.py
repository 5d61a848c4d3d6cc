"""One-time g2 fits (issue 15) and honest outcomes: against SciPy, truth and exact JSON."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import aging_series
from scipy.optimize import curve_fit

from homodyne.cli import EXIT_NOT_CONVERGED, EXIT_UNDETERMINED, main
from homodyne.data.errors import DataFileError
from homodyne.onetime.data import read_one_time
from homodyne.onetime.fit import OneTimeOptions, fit_one_time, start_and_bounds
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.result import FitResult
from homodyne.output import write_json

AGING = "aps_8idi_llps_aging"
MEASURED = "Average_B0147_S3_7_300C10p_att00_Rq0_01251_01313_results.hdf"
Q = np.array([0.004, 0.006, 0.009])
J_TRUE = 2.0e5  # Gamma = J q²


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _scipy_fit(qfit, free_beta):
    """Independent reference: scipy's curve_fit with the same model, weights, bounds."""
    p0, lb, ub = start_and_bounds(qfit.tau, qfit.g2, free_beta, qfit.sigma)

    def f(t, o, c, g, b=1.0):
        return o + c * np.exp(-2 * (g * t) ** b)

    p, cov = curve_fit(f, qfit.tau, qfit.g2, p0=p0, bounds=(lb, ub), sigma=qfit.sigma,
                       absolute_sigma=False, method="trf", x_scale="jac", xtol=1e-15,
                       ftol=1e-15, gtol=1e-15, max_nfev=20000)
    return p, np.sqrt(np.diag(cov))


def _assert_matches_scipy(qfit, free_beta):
    p, se = _scipy_fit(qfit, free_beta)
    r = qfit.result
    # same optimum to well within the engine's stopping rule (step < 1e-4 SE)
    np.testing.assert_array_less(np.abs(r.parameters - p), 2e-3 * se)
    np.testing.assert_allclose(r.uncertainties, se, rtol=2e-3)


def write_table(tmp_path, *, beta=1.0, noise=0.002, flat=False, seed=0):
    """CSV and NPZ tables of g2 at three q with known rates J q² and measured sigma."""
    rng = np.random.default_rng(seed)
    tau = np.geomspace(1e-5, 1.0, 70)
    gamma = J_TRUE * Q**2
    clean = 1.0 + 0.25 * np.exp(-2 * (gamma[None, :] * tau[:, None]) ** beta)
    if flat:
        clean = np.ones_like(clean)
    sigma = np.full_like(clean, noise)
    g2 = clean + rng.normal(0, noise, clean.shape)
    cols = [tau]
    names = ["tau"]
    for i, q in enumerate(Q):
        cols += [g2[:, i], sigma[:, i]]
        names += [f"g2(q={q})", f"sigma(q={q})"]
    csv = tmp_path / "g2.csv"
    np.savetxt(csv, np.column_stack(cols), delimiter=",", header=",".join(names),
               comments="")
    npz = tmp_path / "g2.npz"
    np.savez(npz, tau=tau, q=Q, g2=g2, sigma=sigma)
    return csv, npz, gamma


def test_measured_multitau_fit_agrees_with_scipy(real_data):
    d = read_one_time(real_data / AGING / MEASURED)
    r = fit_one_time(d, OneTimeOptions(beta="fixed", errors="scatter", min_tau_s=1e-3,
                                       q_range=(0.0035, 0.011)))
    # the real g2 is not one exponential everywhere: with the scatter's errors a bin whose
    # chi2 no correct model reaches (p < 1e-6; q = 0.0038, reduced chi2 3.1) is poor_fit
    poor = any(f.result.chi2_p_value < 1e-6 for f in r.fits)
    assert r.status == ("poor_fit" if poor else "converged") and len(r.fits) == 7 \
        and len(r.resolved) == 7, r.summary()
    for f in r.fits:
        _assert_matches_scipy(f, free_beta=False)
        assert f.error_scale >= 1.0


@pytest.mark.parametrize("beta", ["fixed", "free"])
def test_table_fits_agree_with_scipy_and_truth(tmp_path, beta):
    csv, npz, gamma = write_table(tmp_path, beta=1.0)
    a, b = read_one_time(csv), read_one_time(npz)
    np.testing.assert_allclose(a.q, Q)
    np.testing.assert_allclose(a.g2, b.g2, rtol=1e-15)
    r = fit_one_time(a, OneTimeOptions(beta=beta))
    assert r.status == "converged" and len(r.resolved) == 3, r.summary()
    for f, g in zip(r.fits, gamma, strict=True):
        _assert_matches_scipy(f, free_beta=beta == "free")
        assert abs(f.value("gamma") - g) < 4 * f.error("gamma")
        assert abs(f.value("contrast") - 0.25) < 4 * f.error("contrast")
    pl = r.power_law
    assert abs(pl["exponent"] - 2.0) < 4 * pl["exponent_err"] and pl["exponent_err"] < 0.05


def test_table_errors_name_the_layout(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("tau,g2,sigma\n1e-3,1.2,0.01\n2e-3,1.1,0.01\n")
    with pytest.raises(DataFileError, match=r"names no q value; write it as g2\(q="):
        read_one_time(p)
    p.write_text("tau,g2(q=0.1)\n1,2\n")
    with pytest.raises(DataFileError, match="a g2 and a sigma column per q"):
        read_one_time(p)


def test_cli_detects_one_time_table_and_writes_the_result_set(tmp_path, monkeypatch, capsys):
    csv, _, gamma = write_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"experimental_data": {"file_path": str(csv)}, "one_time": {"beta": "fixed"}}))
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 0
    assert capsys.readouterr().out.startswith("converged: 3 q bins fitted, 3 with a resolved")
    out = tmp_path / "out"
    for f in ("per_q.csv", "g2_fits.png", "rates_vs_q.png", "fit.log"):
        assert (out / f).stat().st_size > 100, f
    params = _strict_json(out / "parameters.json")
    assert params["analysis_mode"] == "one_time" and params["status"] == "converged"
    got = [row["gamma"] for row in params["per_q"]]
    np.testing.assert_allclose(got, gamma, rtol=0.05)
    per_q = pd.read_csv(out / "per_q.csv")
    np.testing.assert_allclose(per_q["gamma"], got, rtol=1e-12)
    assert list(per_q["status"]) == ["converged"] * 3
    # the same folder again is refused unless --overwrite (the two-time discipline)
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 2
    capsys.readouterr()
    assert main(["validate", "--config", "c.yaml"]) == 0
    assert "one-time g2, 70 delays" in capsys.readouterr().out


def test_undetermined_fit_is_said_first_and_strict_exits_nonzero(tmp_path, monkeypatch, capsys):
    csv, _, _ = write_table(tmp_path, flat=True)  # no decay: no rate can be determined
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"analysis_mode": "one_time", "experimental_data": {"file_path": str(csv)},
         "one_time": {"beta": "fixed"}, "output": {"plots": False}}))
    assert main(["--config", "c.yaml", "--output-dir", "a"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("converged but NOT DETERMINED"), first
    assert _strict_json(tmp_path / "a/parameters.json")["status"] == "undetermined"
    assert main(["--strict", "--config", "c.yaml", "--output-dir", "b"]) == EXIT_UNDETERMINED


def _result(**kw):
    base = dict(parameter_names=("contrast", "offset", "D0"), parameters=np.ones(3),
                uncertainties=np.ones(3), covariance=np.eye(3), cost=1.0, n_points=100,
                reduced_chi_squared=1.0, converged=True, stop_reason="step small",
                strategy="STANDARD", iterations=3, passes=4)
    return FitResult(**{**base, **kw})


def test_status_rules_and_the_first_summary_line():
    assert _result().status == "converged"
    assert _result(at_bounds=["D0"]).status == "undetermined"
    assert _result(at_bounds=["contrast"]).status == "converged"
    assert _result(n_points=3).status == "too_few_points"
    assert _result(converged=False).status == "not_converged"
    assert _result(converged=False).summary().startswith("NOT converged: step small")
    assert _result(n_points=2).summary().startswith("NOT DETERMINED: fewer points than")


def test_undetermined_covariance_is_consistent_and_json_is_standard(tmp_path):
    x = np.linspace(0, 1, 50)
    y = 1.0 + 2.0 * x + np.random.default_rng(1).normal(0, 0.01, x.size)
    r = NLSQWrapper().fit(lambda t, a, b, c: a + b * t + 0.0 * c, x, y, [0.5, 1.0, 3.0],
                          parameter_names=["a", "b", "c"])
    assert r.undetermined == ["c"]
    assert np.isinf(r.covariance[2, 2])
    assert np.all(np.isnan(r.covariance[2, :2])) and np.all(np.isnan(r.covariance[:2, 2]))
    assert np.all(np.isfinite(r.covariance[:2, :2]))
    write_json(tmp_path / "p.json", r.as_dict())
    text = (tmp_path / "p.json").read_text()
    assert '"inf"' not in text and '"nan"' not in text
    d = _strict_json(tmp_path / "p.json")
    assert d["parameters_by_name"]["c"] == {"value": 3.0, "uncertainty": None,
                                           "determined": False}
    assert d["parameters_by_name"]["a"]["determined"] is True
    assert d["covariance"][2][2] is None and d["undetermined"] == ["c"]


def test_not_converged_warns_even_when_quiet_and_exits_4(tmp_path):
    """A fresh process, as a user runs it: --quiet shows the failure and nothing else."""
    csv, _, _ = write_table(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"experimental_data": {"file_path": str(csv)}, "one_time": {"max_iterations": 1},
         "output": {"plots": False}}))
    proc = subprocess.run([sys.executable, "-m", "homodyne.cli", "--quiet", "--config",
                           str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": ""})
    assert proc.returncode == EXIT_NOT_CONVERGED, proc.stderr[-2000:]
    err = proc.stderr.splitlines()
    assert err and err[0].startswith("WARNING NOT converged"), proc.stderr
    assert not [line for line in err if line.startswith("INFO")], proc.stderr
    assert "Unable to initialize backend" not in proc.stderr
    assert proc.stdout.startswith("NOT converged")
    assert _strict_json(tmp_path / "o/parameters.json")["status"] == "not_converged"


def test_not_converged_is_logged_as_a_warning(caplog):
    from homodyne.pipeline import log_summary

    with caplog.at_level(logging.INFO, logger="homodyne"):
        log_summary(_result(converged=False))
        log_summary(_result())
    first = [r for r in caplog.records if "converged: step small" in r.getMessage()]
    assert [r.levelno for r in first] == [logging.WARNING, logging.INFO]


def test_heatmaps_title_names_the_file_and_scales_ignore_the_diagonal(tmp_path, monkeypatch):
    import matplotlib.axes

    from homodyne import plots

    seen = []
    real = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda self, img, **kw: seen.append(kw) or real(self, img, **kw))
    n = 30
    rng = np.random.default_rng(0)
    data = 1.0 + rng.normal(0, 0.01, (1, n, n))
    model = np.ones((1, n, n))
    data[0][np.diag_indices(n)] = 50.0  # the unfitted diagonal: far off the scale
    plots.plot_heatmaps(tmp_path / "h.png", times=np.arange(n) * 0.1, phi_deg=[0.0],
                        data=data, model=model, title="x.h5")
    data_kw, fit_kw, res_kw = seen
    assert data_kw["vmax"] < 1.1 and fit_kw["vmax"] == data_kw["vmax"]
    assert 0.01 < res_kw["vmax"] < 0.1  # the noise, not the diagonal's 49
    calls = {}
    monkeypatch.setattr(plots, "plot_heatmaps", lambda path, **kw: calls.update(kw))
    monkeypatch.setattr(plots, "plot_cuts", lambda path, **kw: None)
    from homodyne.pipeline import write_two_time_outputs

    class Src:
        path = str(tmp_path / "deep" / "folder" / "sample.h5")
        first_frame = 1

        def read_on_frames(self, a, idx):
            return np.ones((idx.size, idx.size))

    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=10, phi_deg=(0.0,))
    p = spec.pack(0.2, 1.0, [1e4, -0.5, 100.0])
    write_two_time_outputs(tmp_path, Src(), spec, _result(parameters=p), plots=True)
    assert calls["title"] == "sample.h5 (static)"


def test_aging_fit_takes_ages_and_window_from_the_data_or_says_them(tmp_path, caplog):
    from homodyne.production.aging import fit_aging, load_series

    # J(t) = D0 t^alpha + Doff turns negative near t = 3100 s, inside the last window
    paths = aging_series(tmp_path, D0=3.0e6, alpha=-0.6, Doff=-2.5e4, offset=1.3)
    with pytest.raises(ValueError, match=r"single file.*pass ages_s="):
        load_series(paths[:1])
    with caplog.at_level(logging.INFO, logger="homodyne"):
        _, ages = load_series(paths[:1], ages_s=[1234.0])
    assert ages.tolist() == [1234.0] and "age 1234 s for f0.hdf, given (ages_s)" in caplog.text
    r = fit_aging(paths, tmp_path / "free", min_tau_s=1e-4, error_model="measured")
    s = r["summary"]
    assert s["max_tau_s"] == pytest.approx(2e-5 * 1e5)  # the longest delay in the files
    res = r["result"]
    off = res.parameters[res.parameter_names.index("offset")]
    assert abs(off - 1.3) < 4 * res.uncertainties[res.parameter_names.index("offset")]
    assert s["J_negative_in_window"] is True and s["J_min_in_window"] < 0
    assert "unphysical: J(t) < 0" in caplog.text
    r2 = fit_aging(paths, tmp_path / "nonneg", min_tau_s=1e-4, error_model="measured",
                   nonnegative_J=True)
    assert r2["summary"]["J_negative_in_window"] is False
    assert r2["result"].parameters[-1] >= 0.0


def test_console_shows_homodyne_info_but_not_jax_chatter(capsys):
    from homodyne.cli import configure_console_logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        configure_console_logging(quiet=False)
        logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
        logging.getLogger("homodyne").info("fitting")
        logging.getLogger("jax").warning("a real JAX warning")
        err = capsys.readouterr().err
    finally:
        root.handlers[:], _ = before[0], root.setLevel(before[1])
    assert "INFO fitting" in err and "WARNING a real JAX warning" in err
    assert "Unable to initialize backend" not in err


def test_cli_one_time_series_fits_the_j_model_across_q_and_ages(tmp_path, monkeypatch, capsys):
    truth = {"D0": 3.0e6, "alpha": -0.6, "D_offset": 2.0e3, "offset": 1.0}
    paths = aging_series(tmp_path, D0=truth["D0"], alpha=truth["alpha"],
                          Doff=truth["D_offset"], offset=truth["offset"])
    monkeypatch.chdir(tmp_path)
    raw = {"analysis_mode": "one_time", "experimental_data": {"file_path": str(paths[0])},
           "one_time": {"series": [str(p) for p in paths[1:]], "errors": "measured",
                        "min_tau_s": 1e-4, "beta": "fixed"}, "output": {"plots": False}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {**raw, "one_time": {**raw["one_time"], "ages_s": [1.0, 2.0]}}))
    assert main(["--config", "bad.yaml", "--output-dir", "x"]) == 2
    assert "one_time.ages_s: 2 ages for 4 files" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", "c.yaml", "--output-dir", "out"]) == 0
    assert "J-model across 4 ages and q" in capsys.readouterr().out
    jm = _strict_json(tmp_path / "out/parameters.json")["j_model"]
    assert jm["status"] == "converged" and jm["J_negative_in_window"] is False
    np.testing.assert_allclose(jm["ages_s"], [500.0, 1500.0, 2500.0, 3500.0])
    assert jm["files_abs"] == [str(p.resolve()) for p in paths]  # (data_file_abs: the first)
    for name, value in truth.items():
        assert abs(jm[name] - value) < 4 * jm["uncertainties"][name], name
    assert not list((tmp_path / "out/j_model").glob("*.png"))  # output.plots: false


def test_noise_free_g2_table_is_fitted_exactly_and_called_converged(tmp_path):
    """Noise-free data fitted to rounding (chi2 ~ 1e-27) stalls at working precision:
    that is the optimum, not a failure (the CLI said NOT converged, exit 4)."""
    tau = np.geomspace(1e-5, 10.0, 120)
    g2 = 1.02 + 0.25 * np.exp(-2.0 * 50.0 * tau)
    table = tmp_path / "exact.csv"
    np.savetxt(table, np.c_[tau, g2, np.full(tau.size, 1e-3)], delimiter=",",
               header="tau,g2(q=0.005),sigma(q=0.005)", comments="")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"analysis_mode": "one_time", "output": {"plots": False},
                                   "experimental_data": {"file_path": str(table)}}))
    assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out/parameters.json").read_text())
    assert saved["status"] == "converged"
    (row,) = pd.read_csv(tmp_path / "out/per_q.csv").to_dict("records")
    assert row["status"] == "converged" and abs(row["gamma"] / 50.0 - 1) < 1e-8
