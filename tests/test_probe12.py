"""Issue 12, a fresh probing round (probe12) over the session's merged changes: each test
fails on main ec16ff5."""

import json

import pytest


def test_an_override_into_a_section_whose_keys_are_all_commented_out_is_applied(tmp_path):
    """Was (fix12d's override check): `performance:` with every key commented out reads as
    null; `--strategy standard` (performance.strategy_override) or `--output-dir` (under an
    empty `output:`) was refused with 'performance is a value (None), not a section' though
    the config itself validates (before that check, the override was dropped silently)."""
    from homodyne.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\nperformance:\n  # strategy_override: null\n"
                   "output:\n  # directory: x\n"
                   "initial_parameters: {values: [1.0e4, -0.5, 100.0]}\n")
    ok = load_config(cfg, require_data=False,
                     overrides={"performance.strategy_override": "standard",
                                "output.directory": str(tmp_path / "o")})
    assert ok.performance["strategy_override"] == "standard"
    assert ok.output["directory"] == str(tmp_path / "o")
    with pytest.raises(ConfigError, match=r"analysis_mode is a value \('static'\)"):
        load_config(cfg, require_data=False, overrides={"analysis_mode.x": 1})


def test_a_progress_bar_or_checkpoint_keeping_edit_does_not_mark_bins_as_other_settings(
        tmp_path):
    """Was (fix12d's settings digest): switching the progress bar off or keeping 5
    checkpoints instead of 3 changed the multi-q settings digest, so `--q X` marked every
    other bin settings_match False with a warning to refit them, though their fits are
    those the edited config gives. An edit that changes the fit still changes it."""
    from homodyne.config import load_config
    from homodyne.production.multiq import settings_digest

    def digest(**sections):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"analysis_mode": "static",
                                   "initial_parameters": {"values": [1e4, -0.5, 100.0]},
                                   **sections}))
        return settings_digest(load_config(cfg, require_data=False))

    base = digest()
    assert digest(performance={"enable_progress": False},
                  optimization={"streaming": {"keep_last_checkpoints": 5,
                                              "checkpoint_min_interval_s": 0.0,
                                              "resume_from_checkpoint": False,
                                              "checkpoint_dir": "elsewhere"}}) == base
    assert digest(optimization={"streaming": {"checkpoint_frequency": 3}}) != base
    assert digest(optimization={"max_iterations": 7}) != base


def test_a_float32_fit_records_its_precision_in_the_results(tmp_path):
    """Was: a fit with performance.dtype float32 (a float32 model) wrote parameters.json,
    fit.h5 and fit.log exactly like a float64 one: a result read later could not say it was
    fitted in reduced precision."""
    from helpers import small_two_time_file

    from homodyne.cli import main

    data = small_two_time_file(tmp_path / "b.h5", n_frames=20, n_phi=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "analysis_mode": "static", "experimental_data": {"file_path": str(data)},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "performance": {"dtype": "float32"},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    assert main(["--config", str(cfg), "--quiet"]) in (0, 4)
    assert json.loads((tmp_path / "out" / "parameters.json").read_text())["model_dtype"] \
        == "float32"
    assert "float32 model" in (tmp_path / "out" / "fit.log").read_text()
    import h5py

    with h5py.File(tmp_path / "out" / "fit.h5", "r") as h5:
        assert h5.attrs["model_dtype"] == "float32"


@pytest.mark.parametrize("how", [{"fixed": ["b"]}, {"bounds": ([0.0, 0.7], [10.0, 0.7])}])
def test_the_nlsq_backend_names_a_held_parameter_instead_of_nlsqs_bound_error(how):
    """Was: NLSQWrapper(backend='nlsq').fit(..., fixed=['b']) (or a point bound) passed
    lb == ub to nlsq, which raised 'Each lower bound must be strictly less than each upper
    bound', naming neither the parameter nor the fix; the homodyne engine fits it."""
    import numpy as np

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 5.0, 20)

    def model(x, a, b):
        return a * np.exp(-b * x)

    kw = {"bounds": ([0.0, 0.0], [10.0, 10.0]), **how}
    with pytest.raises(ValueError, match=r"^b: held fixed .* needs the homodyne engine "
                                         r"\(backend='homodyne'\)"):
        NLSQWrapper(backend="nlsq").fit(model, x, 2 * np.exp(-0.7 * x), [1.0, 0.7],
                                        parameter_names=["a", "b"], **kw)


def test_a_stop_while_the_multi_q_plots_are_drawn_leaves_no_plot_of_other_results(
        tmp_path, monkeypatch):
    """Was: a multi-q run stopped (SIGTERM, exit 143) after summary.csv was rewritten with
    the refitted bins but before the parameter-vs-q/-vs-file plots were redrawn left the
    previous run's plots beside the new table (seen with a 3-bin --overwrite run stopped
    2.0 s in)."""
    import homodyne.production.multiq_plots as plots
    from homodyne.production.multiq import write_summary

    for name in ("parameters_vs_q.png", "parameters_vs_file.png"):
        (tmp_path / name).write_bytes(b"old run's plot")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_parameters_vs_q", stopped)
    rows = [{"file": "a", "age_s": 0.0, "q_index": 0, "q": 0.005, "n_points": 10,
             "D0": 1.0, "D0_se": 0.1}]
    with pytest.raises(KeyboardInterrupt):
        write_summary(rows, tmp_path)
    assert "0.005" in (tmp_path / "summary.csv").read_text()
    assert not (tmp_path / "parameters_vs_q.png").exists()
    assert not (tmp_path / "parameters_vs_file.png").exists()
