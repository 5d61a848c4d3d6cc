"""Issue 12, items probe10 left weak (W4, W6, W7): a result on disk must belong to this data
and these settings, and what the config reading says must reach the run's log."""

import json

from homodyne.cli import main


def test_a_refreshed_summary_marks_bins_fitted_with_other_settings(tmp_path, caplog):
    """Was (probe10 W4): after a config edit, `--q X` refitted one bin and refreshed
    summary.csv from every job folder, mixing the old settings' rows with the new one's
    without a word (job.json recorded the file and q only)."""
    import pandas as pd

    from homodyne.production.multiq_data import AgingSeries, write_series_file

    data = write_series_file(tmp_path, AgingSeries(q=(0.004, 0.006), ages_s=(0.0,), frames=16,
                                                   angles=(0.0,)), 0)
    cfg = tmp_path / "c.yaml"
    raw = {"experimental_data": {"files": [str(data)], "q": "all"},
           "initial_parameters": {"values": [1e4, -0.5, 100.0]},
           "output": {"directory": str(tmp_path / "out"), "plots": False}}
    cfg.write_text(json.dumps(raw))
    assert main(["--config", str(cfg), "--quiet"]) == 0
    before = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert before["settings_match"].tolist() == [True, True]
    raw["initial_parameters"]["values"] = [2e4, -0.5, 100.0]  # other settings: bin 0 is stale
    cfg.write_text(json.dumps(raw))
    caplog.clear()
    main(["--config", str(cfg), "--q", "0.006", "--overwrite", "--quiet"])
    after = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert after["q_index"].tolist() == [0, 1]
    assert after["settings_match"].tolist() == [False, True]
    assert after["D0"][0] == before["D0"][0]  # left as it was, marked
    assert "1 of 2 bins" in caplog.text and "q bin 0; refit them" in caplog.text


def test_an_override_below_a_value_is_an_error_naming_the_key(tmp_path):
    """Was (probe10 W6): a dotted override below a scalar ('analysis_mode.x') was dropped
    without a word; the run went on without the setting the caller asked for."""
    import pytest

    from homodyne.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\noptimization: {max_iterations: 50}\n"
                   "initial_parameters: {values: [1.0e4, -0.5, 100.0]}\n")
    with pytest.raises(ConfigError, match=r"analysis_mode\.x: analysis_mode is a value "
                                          r"\('static'\), not a section") as err:
        load_config(cfg, require_data=False, overrides={"analysis_mode.x": 1})
    assert err.value.key == "analysis_mode.x"
    with pytest.raises(ConfigError, match=r"optimization\.max_iterations is a value"):
        load_config(cfg, require_data=False, overrides={"optimization.max_iterations.a.b": 1})
    ok = load_config(cfg, require_data=False, overrides={"optimization.max_iterations": 7})
    assert ok.optimization["max_iterations"] == 7


def test_the_ambiguous_data_path_warning_reaches_fit_log(tmp_path, monkeypatch):
    """Was (probe10 W7): the warning that a relative data path names another file beside
    the config (B12) went to the console only: fit.log opens after the config is read."""
    import shutil

    from homodyne.production.multiq_data import AgingSeries, write_series_file

    (tmp_path / "cfg").mkdir()
    (tmp_path / "run").mkdir()
    data = write_series_file(tmp_path / "cfg", AgingSeries(q=(0.005,), ages_s=(0.0,), frames=16,
                                                           angles=(0.0,)), 0)
    shutil.copy(data, tmp_path / "run" / data.name)
    cfg = tmp_path / "cfg" / "c.yaml"
    cfg.write_text(json.dumps({
        "experimental_data": {"file_path": data.name},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    monkeypatch.chdir(tmp_path / "run")
    assert main(["--config", str(cfg), "--quiet"]) == 0
    text = (tmp_path / "out" / "fit.log").read_text()
    assert f"WARNING (reading the config) {data.name} is read from the working folder" in text
    assert str(data) in text
