"""fix12b (issue 12): the findings earlier probe rounds recorded but left - each bad input
is one ValueError naming the argument (API) or one line and exit 2 (CLI), before any fit."""

import warnings

import numpy as np
import pytest

from homodyne.optimization.nlsq_wrapper import NLSQWrapper

X = np.linspace(0.0, 5.0, 50)
Y = 2.0 * np.exp(-0.7 * X)


def model(x, a, b):
    import jax.numpy as jnp

    return a * jnp.exp(-b * x)


def _with(a, i, v):
    a = np.array(a, float)
    a[i] = v
    return a


# --- Python API (probe4 L1-L3, probe2 W9) ---------------------------------------------

@pytest.mark.parametrize("xdata, ydata, sigma, message", [
    (_with(X, 7, np.nan), Y, None,
     "xdata holds 1 NaN/Inf value(s) (first at index 7: nan): the model cannot be evaluated"),
    (_with(X, 3, np.inf), Y, None, "xdata holds 1 NaN/Inf value(s) (first at index 3: inf)"),
    (X, Y, _with(np.ones(50), 4, 1e-300),
     "sigma is too small for float64 weights: sigma[4] = 1e-300"),
    (X, Y > 1.0, None, "ydata must hold measured numbers, got booleans (dtype bool)"),
    (X, Y, np.ones(50, bool), "sigma must hold real numbers, got dtype bool"),
])
def test_bad_data_is_named_before_the_fit_not_blamed_on_the_model(xdata, ydata, sigma,
                                                                   message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper().fit(model, xdata, ydata, [1.0, 1.0], sigma=sigma)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("kwargs, message", [
    ({"callback": 5}, "callback must be callable (called as callback(batch_idx, params, loss, "
                      "success) after each batch) or None, got 5"),
    ({"parallel_batches": 0}, "parallel_batches must be a whole number >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number >= 1 (None: automatic), got 2.5"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1 (None: automatic), got 0"),
    ({"adaptive_batching": True, "max_batch_size": 0},
     "max_batch_size must be a whole number >= 1, got 0"),
    ({"adaptive_batching": True, "initial_batch_size": 0.5},
     "initial_batch_size must be a whole number >= 1 (None: automatic), got 0.5"),
])
def test_constructor_values_that_fail_later_or_do_nothing_are_refused_up_front(kwargs,
                                                                              message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper(**kwargs)
    assert str(err.value) == message


def test_fixed_booleans_are_a_full_mask_or_refused():
    w = NLSQWrapper()
    with pytest.raises(ValueError) as err:
        w.fit(model, X, Y, [1.0, 1.0], fixed=[True])
    assert str(err.value).startswith("fixed: booleans are only accepted as a mask of one per "
                                     "parameter (2: ['p0', 'p1']), got [True]")
    # a full mask holds exactly the True ones: a at its p0 = 2.0, b fitted to the truth;
    # one name as a string is that name (it was read letter by letter: "unknown 'p'")
    for fixed in ([True, False], np.array([True, False]), "p0"):
        res = w.fit(model, X, Y, [2.0, 1.0], fixed=fixed)
        np.testing.assert_allclose(res.x, [2.0, 0.7], rtol=1e-6)
        assert res.x[0] == 2.0


@pytest.mark.parametrize("p0, names, message", [
    ([1.0, 1.0, 1.0], None, "p0 has 3 values but model_func takes 2 parameters after xdata "
                            "['a', 'b']: give one start value per parameter"),
    ([1.0], None, "p0 has 1 values but model_func takes 2 parameters after xdata"),
    ([1.0, 1.0], ["a"], "p0 has 2 values but parameter_names names 1: ['a']"),
])
def test_p0_of_the_wrong_length_is_named_before_the_model_is_called(p0, names, message):
    def numpy_model(x, a, b):  # not traceable by JAX: the case that fell to a TypeError
        return a * np.exp(-b * np.asarray(x))

    with warnings.catch_warnings(record=True) as record, pytest.raises(ValueError) as err:
        warnings.simplefilter("always")
        NLSQWrapper().fit(numpy_model, X, Y, p0, parameter_names=names)
    assert str(err.value).startswith(message)
    assert record == []  # named before the model is traced (no NumPy-fallback warning)


# --- configs, validate and the command line (probe4 L4-L6, L9, probe2 W5, W8, probe3 L6) --

AGING = "aps_8idi_llps_aging"


def _static_file(tmp_path, n_frames=30, **attrs):
    """A small static two-time file; ``attrs`` replace datasets (HDF5 path -> value)."""
    import h5py

    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=n_frames, phi_deg=(0.0, 45.0))
    path = tmp_path / "d.h5"
    generate_synthetic(path, spec, spec.pack(0.3, 1.0, [1e4, -0.5, 100.0]), seed=1)
    with h5py.File(path, "r+") as h5:
        for name, value in attrs.items():
            del h5[name]
            h5[name] = value
    return path


def _cli(capsys, *argv):
    """(exit status, stderr lines) of one homodyne command."""
    from homodyne.cli import main

    code = main(list(argv))
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _yaml(tmp_path, cfg, name="c.yaml"):
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _static_cfg(data, **experimental):
    return {"analysis_mode": "static",
            "experimental_data": {"file_path": str(data), **experimental},
            "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
            "performance": {"enable_progress": False}}


def _multitau(tmp_path, real_data, name, index=0, start_time=None, **datasets):
    """A copy of one measured multi-tau file with datasets replaced."""
    import shutil

    import h5py

    src = sorted((real_data / AGING).glob("*.hdf"))[index]
    path = tmp_path / name
    shutil.copyfile(src, path)
    if start_time is not None:
        datasets["/entry/start_time"] = start_time.encode()
    with h5py.File(path, "r+") as h5:
        for key, value in datasets.items():
            del h5[key]
            h5[key] = value
    return str(path)


def test_a_gap_h_in_a_static_config_and_an_empty_phi_ranges_are_refused(tmp_path):
    from homodyne.config import ConfigError, validate_config

    data = _static_file(tmp_path)
    for experimental, message in (
            ({"gap_h": 1e6}, "experimental_data.gap_h: applies to laminar_flow fits only (the "
                             "static model has no shear term); remove it"),
            ({"phi_ranges": []}, "experimental_data.phi_ranges: an empty list selects no angle; "
                                 "give [min_deg, max_deg] pairs, or remove the key to fit every "
                                 "angle of the file"),
            ({"dt": 1e-300}, "experimental_data.dt: must be a frame time between 1e-12 s and "
                             "1e+06 s, got 1e-300")):
        with pytest.raises(ConfigError) as err:
            validate_config(_static_cfg(data, **experimental))
        assert str(err.value) == message
    laminar = _static_cfg(data, gap_h=1e6)  # where the model uses it, it is accepted
    laminar["analysis_mode"] = "laminar_flow"
    laminar["initial_parameters"]["values"] = [8000.0, -0.4, 80.0, 1e-5, 0.2, 1e-6, 5.0]
    assert validate_config(laminar).experimental_data["gap_h"] == 1e6


@pytest.mark.parametrize("datasets, message", [
    ({"/entry/instrument/detector_1/frame_time": np.array([0.1, 0.2])},
     "/entry/instrument/detector_1/frame_time holds 2 different frame times (0.1 to 0.2 s); "
     "a fit needs one; fix the file or set 'dt' in the config"),
    ({"/entry/instrument/detector_1/frame_time": np.array([1e-300])},
     "/entry/instrument/detector_1/frame_time = 1e-300 s is not a detector frame time (it "
     "must lie between 1e-12 s and 1e+06 s); fix the file or set 'dt' in the config"),
    ({"/xpcs/twotime/processed_bins": np.array([1.5, 2.0])},
     "/xpcs/twotime/processed_bins must hold whole bin numbers, got [1.5, 2.0]; fix the file"),
])
def test_a_frame_time_array_an_absurd_frame_time_and_fractional_bins_are_named(
        tmp_path, capsys, datasets, message):
    import warnings

    data = _static_file(tmp_path, **datasets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow lines either
        code, err = _cli(capsys, "validate", "--config", _yaml(tmp_path, _static_cfg(data)))
    assert (code, err) == (2, [f"homodyne: error: {data}: {message}"])


def test_an_array_of_equal_frame_times_is_one_frame_time(tmp_path, capsys):
    data = _static_file(tmp_path, **{"/entry/instrument/detector_1/frame_time":
                                     np.array([0.25, 0.25, 0.25])})
    from homodyne.data.twotime import open_two_time

    assert open_two_time(data).model_spec().dt == 0.25


def test_options_are_named_not_the_config_key_they_override(tmp_path, capsys, real_data):
    data = _static_file(tmp_path)
    static = _yaml(tmp_path, _static_cfg(data))
    one_time = _yaml(tmp_path, {"analysis_mode": "one_time", "experimental_data": {
        "file_path": _multitau(tmp_path, real_data, "a.hdf")}}, "o.yaml")
    for argv, line in (
            (["--config", static, "--q", "nan"], "--q: must be a finite number, got nan"),
            (["validate", "--config", static, "--q", "-1"], "--q: must be > 0, got -1.0"),
            (["--config", static, "--restarts", "-2"], "--restarts: must be between 0 and "
             "10,000 (starts in all; 0 or 1: the given start only), got -2"),
            (["--config", one_time, "--restarts", "3"], "--restarts: applies to two-time fits "
             "only; a one-time fit takes its start values from the data and its settings from "
             "one_time.*: remove it"),
            (["--config", one_time, "--q", "0.01"], "--q: applies to two-time data only; a "
             "one-time fit (multi-tau g2) fits every q of its file; use one_time.q_range"),
            (["--config", str(tmp_path)], f"--config: {tmp_path} is a directory; give the YAML "
             "config file in it"),
            (["validate", "--config", ""], "--config: empty path; give the YAML config file")):
        assert _cli(capsys, *argv) == (2, [f"homodyne: error: {line}"]), argv


def test_validate_refuses_what_the_one_time_run_refuses(tmp_path, capsys, real_data):
    first = _multitau(tmp_path, real_data, "a.hdf")
    for one_time, line in (
            ({"min_tau_s": 10.0}, "0 delays of the file lie in [10, 1.64] s (the file's "
             "delays: 2e-05 to 1.64 s); fix one_time.min_tau_s/max_tau_s"),
            ({"q_range": [1.0, 2.0]}, "one_time.q_range [1, 2] selects no q bin (the file has "
             "27 bins, q = 0.003764 to 0.03307); widen it")):
        cfg = _yaml(tmp_path, {"analysis_mode": "one_time", "one_time": one_time,
                               "experimental_data": {"file_path": first}})
        for argv in (["validate", "--config", cfg], ["--config", cfg, "--quiet"]):
            assert _cli(capsys, *argv) == (2, [f"homodyne: error: {first}: {line}"]), argv
    for series, line in (([""], "one_time.series[0]: empty path; give a multi-tau file of the "
                                "aging series or remove the entry"),
                         ([str(tmp_path)], f"one_time.series[0]: {tmp_path} is a directory; "
                                           "point it at a data file")):
        cfg = _yaml(tmp_path, {"analysis_mode": "one_time", "one_time": {"series": series},
                               "experimental_data": {"file_path": first}})
        assert _cli(capsys, "validate", "--config", cfg) == (2, [f"homodyne: error: {cfg}: "
                                                                 f"{line}"])


def test_validate_refuses_a_two_time_selection_the_run_refuses(tmp_path, capsys):
    data = _static_file(tmp_path)
    cfg = _yaml(tmp_path, _static_cfg(data, end_frame=3, phi_ranges=[[0.0, 1.0]]))
    line = (f"homodyne: error: {data}: the selection holds only 3 points (1 angle x 3 "
            "frames); a fit of 5 parameters needs at least 100: widen the frame or angle "
            "selection")
    assert _cli(capsys, "validate", "--config", cfg) == (2, [line])
    assert _cli(capsys, "--config", cfg, "--quiet") == (2, [line])


@pytest.mark.parametrize("start, line", [
    ("2999-03-06 21:57:04", "/entry/start_time = '2999-03-06 21:57:04' lies in the future; fix "
                            "the file's start time, or give one_time.ages_s"),
    ("1999-03-06 21:57:04", "/entry/start_time = 1999-03-06 21:57:04 is 8401 days from the "
                            "series' median start (3 files); an aging series spans at most 30 "
                            "days: fix that file's start time, or give one_time.ages_s"),
])
def test_an_aging_series_file_with_a_wrong_start_time_is_named(tmp_path, capsys, real_data,
                                                              start, line):
    files = [_multitau(tmp_path, real_data, f"{i}.hdf", i) for i in range(2)]
    odd = _multitau(tmp_path, real_data, "odd.hdf", 2, start_time=start)
    cfg = _yaml(tmp_path, {"analysis_mode": "one_time", "one_time": {"series": [files[1], odd]},
                           "experimental_data": {"file_path": files[0]}})
    assert _cli(capsys, "validate", "--config", cfg) == (2, [f"homodyne: error: {odd}: {line}"])


def test_bad_multitau_values_give_one_error_line_and_no_warnings(tmp_path, capsys, real_data):
    import warnings

    import h5py

    first = _multitau(tmp_path, real_data, "a.hdf")
    with h5py.File(first) as h5:
        delays = h5["/xpcs/multitau/delay_list"][()].astype(float)
        err = h5["/xpcs/multitau/normalized_g2_err"][()]
    delays[3] = np.nan
    nan_delay = _multitau(tmp_path, real_data, "d.hdf", **{"/xpcs/multitau/delay_list": delays})
    tiny_frame = _multitau(tmp_path, real_data, "f.hdf", **{
        "/entry/instrument/detector_1/frame_time": np.array([1e-300])})
    negative = _multitau(tmp_path, real_data, "e.hdf",
                         **{"/xpcs/multitau/normalized_g2_err": -np.abs(err) - 1e-3})
    for path, quiet, line in (
            (nan_delay, "--quiet", "tau must hold at least two finite delays > 0 (seconds)"),
            (tiny_frame, "--quiet", "/entry/instrument/detector_1/frame_time = 1e-300 s is not a "
                                    "detector frame time (it must lie between 1e-12 s and 1e+06 "
                                    "s)"),
            (negative, "--quiet", "no q bin has two usable points (finite g2, finite sigma > 0, "
                                  "delay in [2e-05, 1.64] s); check the errors column and "
                                  "one_time.min_tau_s/max_tau_s/q_range"),
            (negative, "--overwrite", "no q bin has two usable points")):
        cfg = _yaml(tmp_path, {"analysis_mode": "one_time", "experimental_data": {
            "file_path": path}, "output": {"directory": str(tmp_path / "out")}})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            code, lines = _cli(capsys, "--config", cfg, quiet)
        problems = [x for x in lines if not x.startswith("INFO")]
        assert code == 2 and len(problems) == 1, lines
        assert problems[0].startswith(f"homodyne: error: {path}: {line}")


def test_some_unusable_q_bins_are_one_warning_line(tmp_path, caplog, real_data):
    import logging

    import h5py

    from homodyne.onetime.data import read_one_time
    from homodyne.onetime.fit import OneTimeOptions, usable_bins

    first = _multitau(tmp_path, real_data, "a.hdf")
    with h5py.File(first) as h5:
        err = h5["/xpcs/multitau/normalized_g2_err"][()]
    err[:, :3] = -1.0
    path = _multitau(tmp_path, real_data, "e.hdf", **{"/xpcs/multitau/normalized_g2_err": err})
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        _, _, usable = usable_bins(read_one_time(path), OneTimeOptions())
    assert [i for i, _ in usable] == list(range(3, 27))
    # the skipped bins are one line (the points with sigma = 0 that the measured file holds
    # in 15 of the other bins are counted on a line of their own)
    assert [r.getMessage()[:44] for r in caplog.records
            if "q bins skipped" in r.getMessage()] == [
        "3 of 27 q bins skipped (fewer than two usabl"]


# --- outputs (probe2 W14, W20) ------------------------------------------------------------

def test_a_first_run_keeps_a_strange_file_and_its_truth_lists_the_selected_angles(
        tmp_path, capsys):
    import json

    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    spec = ModelSpec(mode="static", n_frames=40, phi_deg=(0.0, 45.0))
    data = tmp_path / "d.h5"
    generate_synthetic(data, spec, spec.pack([0.3, 0.2], [1.0, 1.1], [1e4, -0.5, 100.0]),
                       seed=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "c2_heatmaps.png").write_bytes(b"the user's own figure")
    cfg = _static_cfg(data, phi_ranges=[[40.0, 50.0]])
    cfg["output"] = {"directory": str(out), "plots": False}
    code, _ = _cli(capsys, "--config", _yaml(tmp_path, cfg))
    assert code == 0
    assert (out / "c2_heatmaps.png").read_bytes() == b"the user's own figure"
    result = json.loads((out / "parameters.json").read_text())
    assert result["phi_deg"] == [45.0]
    assert result["truth"] == {"contrast[0]": 0.2, "offset[0]": 1.1, "D0": 1e4,
                               "alpha": -0.5, "D_offset": 100.0}
    assert set(result["truth"]) == set(result["parameter_names"])
    assert result["result_files"] == ["fit.h5", "fit.log", "parameters.json"]
    # a rerun replaces exactly the set that was there: the user's figure (same name as one
    # of ours, but not of that set) stays
    assert _cli(capsys, "--config", _yaml(tmp_path, cfg), "--overwrite")[0] == 0
    assert (out / "c2_heatmaps.png").read_bytes() == b"the user's own figure"


def test_an_older_set_without_its_list_and_an_odd_marker_are_replaced_by_name(tmp_path):
    import json
    import os

    from homodyne.output import SET_FILES, previous_set_files

    assert previous_set_files(tmp_path) == ()  # no set: nothing here is ours
    (tmp_path / "parameters.json").write_text(json.dumps({"status": "converged"}))
    assert previous_set_files(tmp_path) == SET_FILES  # a set from before the list
    (tmp_path / "parameters.json").write_text(json.dumps({"result_files": ["../x", "a"]}))
    assert previous_set_files(tmp_path) == SET_FILES  # a list of foreign names is not used
    (tmp_path / "parameters.json").unlink()
    os.mkfifo(tmp_path / "parameters.json")  # never blocks on a pipe
    assert previous_set_files(tmp_path) == SET_FILES
