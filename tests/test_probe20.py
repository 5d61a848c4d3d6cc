"""probe20 (issue 12, a fresh round on int7): multi-q refreshes, one-time outcomes, the
workflow's glue. Each test failed on int7 9cf0158."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import STATIC_PHYS, multi_q_cli_config

from homodyne.cli import EXIT_UNDETERMINED, exit_status, main
from homodyne.model import ModelSpec
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


@pytest.fixture(scope="module")
def fitted_bins(tmp_path_factory):
    """A one-angle file with bins at q = 0.0054 and 0.007, both fitted (q: all)."""
    folder = tmp_path_factory.mktemp("bins")
    cfg = multi_q_cli_config(folder, more_q=(0.007,))
    assert main(["--config", str(cfg), "--quiet"]) == 0
    return folder


def _copy_run(fitted_bins, tmp_path):
    """The fitted folder copied with its times kept (the data older than the results)."""
    shutil.copytree(fitted_bins, tmp_path / "run", copy_function=shutil.copy2)
    cfg = tmp_path / "run" / "c.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["experimental_data"]["file_path"] = str(tmp_path / "run" / "d.h5")
    raw["output"]["directory"] = str(tmp_path / "run" / "out")
    cfg.write_text(yaml.safe_dump(raw))
    return cfg, tmp_path / "run" / "out"


def _rows(out):
    return pd.read_csv(out / "summary.csv")


def test_a_refresh_leaves_out_bins_of_another_model_instead_of_failing_after_the_fit(
        fitted_bins, tmp_path, caplog):
    """B1: analysis_mode changed and one bin refitted (--q): the table was refused ('results
    of different models cannot share one summary', exit 2) after the fit, and the old
    summary.csv kept describing that bin's previous result, settings_match True."""
    cfg, out = _copy_run(fitted_bins, tmp_path)
    bin1 = out / "d" / "q01"  # fitted with another model (laminar_flow) and other settings
    p = json.loads((bin1 / "parameters.json").read_text())
    p["parameters_by_name"]["gamma_dot_t0"] = {"value": 1e-5, "uncertainty": 1e-6}
    (bin1 / "parameters.json").write_text(json.dumps(p))
    job = json.loads((bin1 / "job.json").read_text())
    (bin1 / "job.json").write_text(json.dumps({**job, "settings": "x"}))
    assert main(["--config", str(cfg), "--q", "0.0054", "--overwrite", "--quiet"]) == 0
    table = _rows(out)
    assert table["q_index"].tolist() == [0] and table["settings_match"].tolist() == [True]
    assert "1 bins hold results of another model, fitted with other settings, and are left " \
           "out of the table: d q bin 1; refit them" in caplog.text


def test_a_refresh_leaves_out_bins_fitted_before_the_file_changed(fitted_bins, tmp_path,
                                                                    caplog):
    """B6: the file rewritten with its bin 1 at q = 0.006 (0.007 before), then --q 0.0054:
    the refreshed table listed d/q01 at q = 0.007, a fit of the old file, settings_match
    True. A result older than its file is left out too."""
    from homodyne.config import load_config
    from homodyne.data.synthetic import generate_synthetic
    cfg, out = _copy_run(fitted_bins, tmp_path)
    data = tmp_path / "run" / "d.h5"
    spec = ModelSpec(mode="static", n_frames=20, phi_deg=(0.0,))
    generate_synthetic(data, spec, spec.pack(0.3, 1.0, STATIC_PHYS), more_q=(0.006,),
                       overwrite=True, seed=5)
    assert main(["--config", str(cfg), "--q", "0.0054", "--overwrite", "--quiet"]) == 0
    table = _rows(out)
    assert table["q_index"].tolist() == [0] and table["q"].tolist() == [0.0054]
    assert ("1 bins hold fits of data that have changed since and are left out of the table: "
            "d q bin 1 (fitted at q = 0.007, the bin is now at q = 0.006); refit them"
            in caplog.text)
    from homodyne.production.multiq import _of_this_data, plan_jobs

    q00 = out / "d" / "q00"
    jobs = plan_jobs(load_config(cfg))
    later = (q00 / "parameters.json").stat().st_mtime_ns + 10**9
    os.utime(data, ns=(later, later))  # only touched: the same data (fix12j: by content)
    assert _of_this_data(jobs, [q00]) == [q00]
    generate_synthetic(data, spec, spec.pack(0.3, 1.0, STATIC_PHYS), more_q=(0.006,),
                       overwrite=True, seed=6)  # the data changed after q00's fit
    assert _of_this_data(jobs, [q00]) == []
    assert f"d q bin 0 ({data} changed after the fit)" in caplog.text


def test_the_workflows_fit_rule_ends_with_one_line_not_a_traceback(tmp_path, capsys):
    """B4: a bin's fit refused by homodyne (here a folder where fit.log goes) left a Python
    traceback (OutputDirError) in the rule's log, exit 1; now the CLI's line and status."""
    import runpy
    import types

    from helpers import REPO, gather_rule_job

    rule = gather_rule_job(tmp_path, [], tmp_path / "run" / "summary.csv")
    (tmp_path / "run" / "gather_data" / "q00" / "fit.log").mkdir(parents=True)
    job = types.SimpleNamespace(
        wildcards=types.SimpleNamespace(file="gather_data", qi="00"), log=[],
        input=types.SimpleNamespace(data=str(tmp_path / "gather_data.h5")),
        output=types.SimpleNamespace(
            job=str(tmp_path / "run" / "gather_data" / "q00" / "job.json")),
        params=types.SimpleNamespace(config=rule.params.config,
                                     overrides={"output.directory": str(tmp_path / "run")}))
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "fit_q_bin.py"),
                       init_globals={"snakemake": job})
    assert stop.value.code == 2
    assert capsys.readouterr().err == (  # the log holds both streams
        f"fit_q_bin: error: {tmp_path / 'run' / 'gather_data' / 'q00' / 'fit.log'} is a folder "
        "where the result file fit.log goes; move it away or choose another --output-dir\n")


@pytest.mark.parametrize(("series", "message"), [
    ({"q": [0.003, 0.003]}, "multiq.synthetic.q lists 0.003 twice; give each q bin once"),
    ({"angles": [0, 360.00001]}, "multiq.synthetic.angles: 0 and 360.00001 are one angle "
                                 "(modulo 360); give each angle once")])
def test_the_workflows_synthetic_series_refuses_one_bin_twice_when_planned(series, message):
    """B5: multiq.synthetic q [0.003, 0.003] or angles [0, 360] planned, the files were
    written, and every fit then failed 'the file lists one (q, phi) bin twice ... fix the
    file' (exit 3): the config is refused when the workflow is parsed."""
    from helpers import REPO

    text = (REPO / "workflow" / "rules" / "multiq_common.smk").read_text()
    config = {"multiq": {"runs": {}, "synthetic": {"q": [0.003, 0.004], "angles": [0, 90],
                                                   **series}}}
    with pytest.raises(ValueError) as err:
        exec(compile(text, "multiq_common.smk", "exec"), {"config": config})
    assert str(err.value) == message
    exec(compile(text, "multiq_common.smk", "exec"),  # the shipped series plans
         {"config": {"multiq": {"runs": {}, "synthetic": {"q": [0.003, 0.004],
                                                          "angles": [0, 90, 180]}}}})


def test_a_refresh_whose_table_is_refused_does_not_leave_the_old_table(fitted_bins, tmp_path,
                                                                      capsys):
    """B7: another bin's job.json damaged, --q 0.0054 refitted bin 0, then the table was
    refused (exit 2) and the old summary.csv stayed, describing bin 0's previous result;
    the line did not say that bin 0 was refitted."""
    cfg, out = _copy_run(fitted_bins, tmp_path)
    (out / "d" / "q01" / "job.json").write_text("{")
    assert main(["--config", str(cfg), "--q", "0.0054", "--overwrite", "--quiet"]) == 2
    assert not (out / "summary.csv").exists()
    assert capsys.readouterr().err.rstrip().endswith(
        f"rerun that job (delete the file) or remove the folder; 1 bins were fitted and are "
        f"kept, {out / 'summary.csv'} is removed (it described their previous results): fix "
        "that folder and rerun to refresh it")
