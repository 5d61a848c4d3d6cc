"""Regressions for issue 12's leftovers of the probing rounds (probe7 W3, probe9 W3-W5)."""

import warnings

import h5py
import numpy as np

from homodyne.output import write_fit_h5


def test_fit_h5_keeps_values_beyond_float32_without_a_warning(tmp_path):
    """probe9 W3: a c2 of 1e39 overflowed the float32 cast with a numpy warning on the console."""
    data = np.ones((1, 3, 3))
    data[0, 1, 2] = 1e39
    model = np.full_like(data, 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_fit_h5(tmp_path / "fit.h5", phi_deg=[0.0], frames=[1, 2, 3],
                            data=data, model=model, attrs={})
    with h5py.File(path) as h5:
        assert h5["data"].dtype == np.float64 and h5["residuals"].dtype == np.float64
        assert h5["data"][0, 1, 2] == 1e39
        np.testing.assert_array_equal(h5["residuals"][()], data - model)
        assert h5["model"].dtype == np.float32  # values that fit stay compact
        np.testing.assert_array_equal(h5["model"][()], model)
