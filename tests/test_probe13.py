"""Issue 12, a fresh probing round (probe13) over main a417fd7: each test fails there."""

import pytest


@pytest.mark.parametrize("listed", ['[["fit.h5"]]', '[{"a": 1}]', "[1, 2]",
                                    "[" * 50_000 + "]" * 50_000])
def test_an_edited_result_list_in_the_marker_means_every_result_name(tmp_path, listed):
    """Was: parameters.json whose result_files held lists, objects or numbers (or was nested
    50,000 deep) -> TypeError 'unhashable type' / RecursionError from previous_set_files
    while an --overwrite run committed its results: a traceback, exit 1."""
    from homodyne.output import SET_FILES, previous_set_files

    (tmp_path / "fit.h5").write_bytes(b"x")
    (tmp_path / "parameters.json").write_text('{"result_files": ' + listed + "}")
    assert previous_set_files(tmp_path) == SET_FILES


@pytest.mark.parametrize("text, message", [
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("initial_parameters: {values: [" + "9" * 400 + ", -0.5, 100.0]}\n",
     r"initial_parameters.values\[0\]: must be a finite number, got an integer of 400 digits"),
])
def test_a_config_nested_too_deeply_or_with_a_huge_integer_is_a_config_error(tmp_path, text,
                                                                              message):
    """Was: RecursionError from the YAML composer, OverflowError ('int too large to convert
    to float') from the number check: tracebacks, exit 1."""
    from homodyne.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, require_data=False)


def test_a_callback_stop_in_the_first_pass_is_not_reported_as_too_few_points():
    """Was: a callback returning False at the first batch gave status 'too_few_points' and
    the summary 'NOT DETERMINED: fewer points than parameters' for 3,000 points: no pass had
    finished, so n_points was 0. It is a stop: NOT converged, 'stopped by callback'."""
    import jax.numpy as jnp
    import numpy as np

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.01, 5, 3000)
    y = 0.1 + np.exp(-2.0 * x)
    r = NLSQWrapper(callback=lambda *a: False).fit(
        lambda x, a, b, c: c + a * jnp.exp(-b * x), x, y, [0.5, 1.0, 0.1],
        ([0, 0, -1], [10, 10, 1]), strategy="streaming")
    assert r.status == "not_converged"
    assert r.summary().splitlines()[0] == "NOT converged: stopped by callback at batch 0"


@pytest.mark.parametrize("q", [0.0, -0.0054])
def test_a_two_time_file_whose_q_map_holds_zero_or_negative_q_is_a_data_error(tmp_path, q):
    """Was: q = 0 in /xpcs/qmap/dynamic_v_list_dim0 (an int 0, a placeholder) passed the
    file checks; ModelSpec then raised 'q, dt and gap_h must be finite numbers > 0': a
    traceback from a file we read, exit 1."""
    import h5py
    from helpers import small_two_time_file

    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    path = small_two_time_file(tmp_path / "d.h5")
    with h5py.File(path, "a") as h5:
        h5["xpcs/qmap/dynamic_v_list_dim0"][...] = q
    with pytest.raises(DataFileError, match=r"dynamic_v_list_dim0 holds q values <= 0"):
        open_two_time(path)
