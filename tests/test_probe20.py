"""probe20 (issue 12, a fresh round on int7): multi-q refreshes, one-time outcomes, the
workflow's glue. Each test failed on int7 9cf0158."""

import json

import numpy as np
import pytest
import yaml

from homodyne.cli import EXIT_UNDETERMINED, exit_status, main
from homodyne.onetime.data import read_one_time
from homodyne.onetime.fit import OneTimeOptions, fit_one_time


def _one_time_csv(path, sigma_factor: float):
    """Two q bins of g2 = 1 + 0.2 exp(-2 Gamma tau) with noise 0.002, sigma given as
    ``sigma_factor`` x 0.002."""
    rng = np.random.default_rng(0)
    tau = np.logspace(-5, 0, 60)
    cols, header = [tau], ["tau"]
    for q, rate in ((0.005, 50.0), (0.008, 130.0)):
        cols += [1 + 0.2 * np.exp(-2 * rate * tau) + rng.normal(0, 0.002, tau.size),
                 np.full(tau.size, 0.002 * sigma_factor)]
        header += [f"g2(q={q})", f"sigma(q={q})"]
    np.savetxt(path, np.column_stack(cols), delimiter=",", header=",".join(header),
               comments="")
    return path


def test_one_time_sigma_overstated_is_said_in_the_first_line_and_parameters_json(
        tmp_path, capsys):
    """B3: sigma 100x too large gave per-q sigma_overstated but a plain 'converged' run
    (no warning, no flag in parameters.json); now the two-time note is made."""
    csv = _one_time_csv(tmp_path / "big.csv", 100.0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"analysis_mode": "one_time",
                                   "experimental_data": {"file_path": str(csv)},
                                   "output": {"directory": str(tmp_path / "o"),
                                              "plots": False}}))
    assert main(["--config", str(cfg), "--quiet", "--strict"]) == 0
    err = capsys.readouterr().err
    assert "WARNING converged, but the data's sigma look overstated: 2 q bins fitted" in err
    assert "at q = 0.005, 0.008 (sigma about" in err
    p = json.loads((tmp_path / "o" / "parameters.json").read_text())
    assert p["status"] == "converged" and p["sigma_overstated"] is True
    assert p["summary"].startswith("converged, but the data's sigma look overstated")


def test_one_time_with_the_right_sigma_makes_no_note(tmp_path):
    r = fit_one_time(read_one_time(_one_time_csv(tmp_path / "ok.csv", 1.0)), OneTimeOptions())
    assert r.status == "converged" and not r.sigma_overstated
    assert r.summary().splitlines()[0] == "converged: 2 q bins fitted, 2 with a resolved rate"


@pytest.mark.parametrize("j_status", ["undetermined", "poor_fit"])
def test_a_series_whose_j_model_determines_nothing_is_the_runs_outcome(tmp_path, j_status):
    """B2: per-q fits converged (errors: scatter on the APS series) but the J-model ended
    undetermined and unphysical: status 'converged', first line 'converged', --strict 0."""
    r = fit_one_time(read_one_time(_one_time_csv(tmp_path / "ok.csv", 1.0)), OneTimeOptions())
    r.j_model = {"status": j_status, "ages_s": [624.5, 1715.5], "D0": 0.0, "alpha": -0.35,
                 "D_offset": -140.0, "reduced_chi_squared": 1.8e5,
                 "J_negative_in_window": True}
    assert r.status == j_status
    first = r.summary().splitlines()[0]
    head = {"undetermined": "converged but NOT DETERMINED", "poor_fit": "converged, but the "
            "fit is poor"}[j_status]
    assert first.startswith(head)
    assert "the J-model across ages; 2 q bins fitted, 2 with a resolved rate" in first
    assert exit_status(r.status, strict=True) == EXIT_UNDETERMINED
