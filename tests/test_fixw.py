"""Regressions for issue 12's leftovers of the probing rounds (probe7 W3, probe9 W3-W5)."""

import warnings

import h5py
import numpy as np
import pytest

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


def test_a_reversed_phi_range_is_named_and_ranges_do_not_wrap(tmp_path, capsys):
    """probe9 W4: [[10, 0]] through the API said only "no angle in phi ranges"; [[350, 370]]
    selected nothing from angles 0..90 without saying that ranges do not wrap modulo 360."""
    import yaml

    from homodyne.cli import main
    from homodyne.data.errors import DataFileError
    from homodyne.data.twotime import open_two_time

    path = tmp_path / "l.h5"
    assert main(["generate", "--output", str(path), "--frames", "12", "--angles", "0,45,90",
                 "--mode", "laminar_flow"]) == 0
    with pytest.raises(ValueError) as err:
        open_two_time(str(path), q=0.0054, phi_ranges=[[0, 50], [10, 0]])
    assert str(err.value) == ("phi_ranges[1] is reversed: min 10.0 > max 0.0; swap them (a range "
                              "is [min_deg, max_deg] and does not wrap modulo 360)")
    with pytest.raises(DataFileError) as err:
        open_two_time(str(path), q=0.0054, phi_ranges=[[350, 370]])
    assert str(err.value).endswith("(available: [0.0, 45.0, 90.0]); ranges are compared with "
                                   "the file's angles as stored, without wrapping modulo 360")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static", "initial_parameters": {"values": [8000.0, -0.4, 80.0]},
        "experimental_data": {"file_path": str(path), "phi_ranges": [[10, 0]]}}))
    capsys.readouterr()
    assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    err_text = capsys.readouterr().err
    assert ("experimental_data.phi_ranges[0]: reversed range: min 10.0 > max 0.0; swap them "
            "(ranges do not wrap modulo 360)") in err_text
    assert not (tmp_path / "out").exists()


def test_points_with_infinite_sigma_are_skipped_and_not_counted():
    """probe9 W5: a point with sigma = inf (weight 0) counted in n_points and in the reduced
    chi2's degrees of freedom; it carries no information, so it is skipped like a NaN point."""

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    x = np.linspace(0.0, 1.0, 200)
    y = 2.0 * x + 1.0 + 0.01 * np.random.default_rng(0).standard_normal(200)
    sigma = np.full(200, 0.01)
    sigma[:50] = np.inf

    def line(x, a, b):
        return a * x + b

    fit = NLSQWrapper().fit(line, x, y, [1.0, 0.0], sigma=sigma)
    kept = NLSQWrapper().fit(line, x[50:], y[50:], [1.0, 0.0], sigma=sigma[50:])
    assert fit.n_points == kept.n_points == 150
    assert fit.reduced_chi_squared == pytest.approx(kept.reduced_chi_squared, rel=1e-9)
    np.testing.assert_allclose(fit.parameters, kept.parameters, rtol=1e-9)
    with pytest.raises(ValueError) as err:
        NLSQWrapper().fit(line, x, y, [1.0, 0.0], sigma=np.inf)
    assert str(err.value) == ("no point is left to fit: every point's ydata is NaN or its sigma "
                              "is infinite or NaN (an infinite sigma carries no information, so "
                              "that point is skipped)")


def test_a_multitau_g2_linked_to_a_missing_file_is_named_as_such(tmp_path):
    """probe7 W3: it was called "damaged HDF5 file (metadata unreadable: can't open file)"."""

    from homodyne.data.errors import DataFileError
    from homodyne.data.multitau import (
        DELAYS,
        FRAME_TIME,
        G2,
        G2_ERR,
        Q_LIST,
        START_TIME,
        read_multitau,
    )

    def write(name, g2):
        with h5py.File(tmp_path / name, "w") as h5:
            h5[G2] = g2
            h5[G2_ERR] = np.full((5, 2), 0.01)
            h5[DELAYS] = np.arange(1.0, 6.0)
            h5[FRAME_TIME] = [0.1]
            h5[START_TIME] = b"2024-01-01T00:00:00"
            h5[Q_LIST] = [0.01, 0.02]
        return str(tmp_path / name)

    g2 = 1.0 + 0.2 * np.exp(-np.arange(1.0, 6.0))[:, None] * np.ones(2)
    np.testing.assert_array_equal(read_multitau(write("good.h5", g2)).g2, g2)
    with pytest.raises(DataFileError) as err:
        read_multitau(write("linked.h5", h5py.ExternalLink("gone.h5", "/g2")))
    assert str(err.value).endswith(
        "linked.h5: /xpcs/multitau/normalized_g2 is an external link to gone.h5, which cannot "
        "be opened (missing or unreadable): copy the data into the file, or put that file where "
        "the link points")
