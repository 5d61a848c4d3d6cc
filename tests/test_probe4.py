"""probe4 (issue 12): Python API misuse is one ValueError naming the argument, never a
key that does nothing or a NumPy/JAX error from deep inside the fit."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from homodyne.optimization.nlsq_wrapper import NLSQWrapper

X = np.linspace(0.0, 5.0, 50)
Y = 2.0 * np.exp(-0.7 * X)


def model(x, a, b):
    import jax.numpy as jnp

    return a * jnp.exp(-b * x)


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "bogus"}, "backend must be one of ('homodyne', 'nlsq'), got 'bogus'"),
    ({"checkpoint_config": {"enable_checkpoint": True}},
     "checkpoint_config: unknown key(s) ['enable_checkpoint']"),
    ({"batch_size": -5}, "batch_size must be a whole number >= 1 (None: automatic), got -5"),
    ({"min_success_rate": 2.0}, "min_success_rate must lie in [0, 1], got 2.0"),
    ({"min_success_rate": float("nan")}, "min_success_rate must lie in [0, 1], got nan"),
    ({"max_retries_per_batch": -1}, "max_retries_per_batch must be a whole number >= 0, got -1"),
    ({"memory_limit_gb": float("nan")}, "memory_limit_gb must be a finite number > 0"),
])
def test_wrapper_settings_that_would_be_ignored_or_crash_later_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper(**kwargs)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("xdata, ydata, sigma, message", [
    (X, Y + 0j, None, "ydata must hold real numbers, got dtype complex128"),
    (X, np.array(list(Y), dtype=object), None, "ydata must hold real numbers, got dtype object"),
    (3.0, Y, None, "xdata must have at least one axis whose last length matches ydata"),
    (X, Y, np.ones(3), "sigma must be one value or one per point of ydata (50), got shape (3,)"),
    (X, Y, np.eye(50),
     "sigma must be one value or one per point of ydata (50), got shape (50, 50)"),
])
def test_fit_data_of_the_wrong_kind_is_named(xdata, ydata, sigma, message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper().fit(model, xdata, ydata, [1.0, 1.0], sigma=sigma)
    assert str(err.value) == message


def test_a_single_sigma_and_the_keep_last_n_alias_still_fit():
    w = NLSQWrapper(checkpoint_config={"keep_last_n": 2})
    res = w.fit(model, X, Y, [1.0, 1.0], sigma=0.1, bounds=([0, 0], [10, 10]))
    np.testing.assert_allclose(res.x, [2.0, 0.7], rtol=1e-6)


def _one_time(tmp_path, series, ages=None):
    import h5py

    from homodyne.config import validate_config

    for name in ("a.hdf", "b.hdf"):  # HDF5 files (a series of tables is refused)
        h5py.File(tmp_path / name, "w").close()
    ot = {"series": [str(tmp_path / s) for s in series]}
    if ages is not None:
        ot["ages_s"] = ages
    return validate_config({"analysis_mode": "one_time", "one_time": ot,
                            "experimental_data": {"file_path": str(tmp_path / "a.hdf")}})


@pytest.mark.parametrize("series, ages, message", [
    (["a.hdf"], None, "one_time.series[0]: {d}/a.hdf is already experimental_data.file_path; "
                      "list each file of the aging series once"),
    (["b.hdf", "b.hdf"], None, "one_time.series[1]: {d}/b.hdf is already one_time.series[0]; "
                               "list each file of the aging series once"),
    (["b.hdf"], [-5.0, 5.0], "one_time.ages_s[0]: must be > 0 (seconds since the sample was "
                             "prepared), got -5.0"),
])
def test_an_aging_series_with_a_file_twice_or_an_age_not_positive_is_a_config_error(
        tmp_path, series, ages, message):
    """Was: the same file twice -> exit 3 "fit failed: Non-finite model values" (two equal
    ages); a negative age -> a ValueError traceback from the aging fit, exit 1."""
    from homodyne.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _one_time(tmp_path, series, ages)
    assert str(err.value) == message.format(d=tmp_path)
    assert _one_time(tmp_path, ["b.hdf"], [1.0, 5.0]).one_time["ages_s"] == [1.0, 5.0]


@pytest.mark.skipif(not (Path(sys.executable).with_name("snakemake")).exists(),
                    reason="snakemake not installed")
def test_a_measured_data_folder_that_does_not_exist_stops_the_workflow_plan(tmp_path):
    """Was: `fits.aps_aging.folder` with a typo planned fit_aps_aging over no file at all
    (dry run exit 0); now the plan stops naming the key and the folders there are."""
    import yaml
    from helpers import REPO

    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["fits"]["aps_aging"]["folder"] = "aps_8idi_llps_agin"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-n", "--nolock",
                           "fit", "--configfile", str(tmp_path / "c.yaml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("fits.aps_aging.folder: 'aps_8idi_llps_agin' is no folder of the measured data; "
            "choose one of ['aps_8idi_llps_aging', 'chx_two_time']") in proc.stdout + proc.stderr


def test_a_one_time_table_given_to_a_two_time_fit_is_named_not_called_corrupt(tmp_path):
    """Was: "not a readable HDF5 file (truncated or corrupt?)" for a good CSV / NPZ table."""
    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    (tmp_path / "g2.csv").write_text("tau,g2(q=0.004)\n1e-5,1.2\n1e-4,1.1\n")
    np.savez(tmp_path / "g2.npz", tau=np.ones(3), q=np.ones(1), g2=np.ones((3, 1)))
    (tmp_path / "bad.h5").write_text("tau,g2\n")
    for name in ("g2.csv", "g2.npz"):
        with pytest.raises(DataFileError) as err:
            open_two_time(str(tmp_path / name), q=0.004)
        assert str(err.value).endswith(f"{name}: is a one-time g2 table, not two-time HDF5 "
                                       "data; set analysis_mode: one_time to fit it")
    with pytest.raises(DataFileError, match="not a readable HDF5 file"):
        open_two_time(str(tmp_path / "bad.h5"), q=0.004)


def test_the_angles_available_are_listed_as_plain_numbers(tmp_path):
    """Was: "(available: [np.float64(0.0), np.float64(45.0), ...])"."""
    from homodyne.cli import main
    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    path = tmp_path / "l.h5"
    assert main(["generate", "--output", str(path), "--frames", "12", "--angles", "0,45,90",
                 "--mode", "laminar_flow"]) == 0
    with pytest.raises(DataFileError) as err:
        open_two_time(str(path), q=0.0054, phi_ranges=[[10, 20]])
    assert str(err.value).endswith("no angle in phi ranges [(10.0, 20.0)] at q=0.0054 "
                                   "(available: [0.0, 45.0, 90.0]); ranges are compared "
                                   "with the file's angles as stored, without wrapping modulo 360")


def test_fit_two_time_refuses_values_that_are_not_this_specs_points():
    """Was: y 5 points short fitted to a 'converged' wrong result; y complex fitted its real
    part; y 2-D blamed on NaN/Inf; no source and no y -> AttributeError on None."""
    from helpers import bounds_for, make_spec, noisy_data, start_for, truth_for

    spec = make_spec("static", n_frames=20, n_phi=2)
    y = noisy_data(spec, truth_for(spec), seed=0)
    p0, bounds = start_for(spec, truth_for(spec)), bounds_for(spec)
    n = f"{spec.n_points:,}"
    for values, message in [
            (y[:-5], f"y must be the {n} packed points of this spec (one axis), got shape "
                     f"({spec.n_points - 5},)"),
            (y.reshape(2, -1), f"y must be the {n} packed points of this spec (one axis), got "
                               f"shape (2, {spec.n_points // 2})"),
            (y + 0j, "y must hold real numbers, got dtype complex128"),
            (None, "fit_two_time needs a TwoTimeSource or the packed values y")]:
        with pytest.raises(ValueError) as err:
            NLSQWrapper().fit_two_time(None, spec, p0, bounds, y=values)
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"^p0 has 6 values; the model has 7 parameters"):
        NLSQWrapper().fit_two_time(None, spec, p0[:-1], bounds, y=y)
