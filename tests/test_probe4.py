"""probe4 (issue 12): Python API misuse is one ValueError naming the argument, never a
key that does nothing or a NumPy/JAX error from deep inside the fit."""

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
    from homodyne.config import validate_config

    for name in ("a.hdf", "b.hdf"):
        (tmp_path / name).write_bytes(b"")
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
