"""Faults found by a sixth round of adversarial probing (issue 12, probe8): "determined" meant
only a finite variance (D_offset = 4971 +/- 19100 counted), config keys that contradict each
other reaching the fit as a traceback, public Python API arguments of the wrong kind (big-endian
or masked arrays, NaN q, a path for a config) met as foreign errors or silently wrong fits,
results that could not be compared, and a workflow typo met as a Snakemake KeyError."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from helpers import REPO, truth_for

from homodyne.config import ConfigError, load_config
from homodyne.data import generate_synthetic, open_two_time
from homodyne.model import ModelSpec
from homodyne.optimization.result import FitResult

STATIC = {"analysis_mode": "static", "initial_parameters": {"values": [8000.0, -0.4, 80.0]}}


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """2 angles x 60 frames (3,540 points) of the static model, seed 3."""
    path = tmp_path_factory.mktemp("p8") / "s.h5"
    spec = ModelSpec(mode="static", n_frames=60, phi_deg=(0.0, 45.0))
    generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=3)
    return path


def _result(values, ses, names=("contrast", "offset", "D0", "alpha", "D_offset"), **kw):
    p = len(names)
    return FitResult(parameter_names=tuple(names), parameters=np.array(values, float),
                     uncertainties=np.array(ses, float), covariance=np.diag(np.square(ses)),
                     cost=1.0, n_points=1000, reduced_chi_squared=1.0, converged=True,
                     stop_reason="test", strategy="STANDARD", iterations=1, passes=1,
                     normal_matrix=np.eye(p), **kw)


def test_a_parameter_whose_standard_error_exceeds_its_value_is_not_determined():
    """Was: "determined" meant a finite variance only. Now: an infinite SE, or an SE above the
    power law's level |amplitude| + |offset| (amplitudes, offsets), above 1 (exponents), above
    90 deg (phi0): not determined; fixed parameters (SE 0) never are."""
    r = _result([0.3, 1.0, 0.001, 0.1, 4971.0], [0.01, 0.01, 1.9e4, 1.8e6, 1.91e4],
                at_bounds=["D0", "alpha"])
    assert r.undetermined == ["D0", "alpha", "D_offset"]
    assert r.status == "undetermined"
    assert r.summary().splitlines()[0].startswith("converged but NOT DETERMINED")
    assert "(NOT DETERMINED by the data: standard error above |D0| + |D_offset|)" in r.summary()
    d = json.loads(json.dumps(r.as_dict()))
    assert d["parameters_by_name"]["D_offset"] == {"value": 4971.0, "uncertainty": 1.91e4,
                                                   "determined": False}
    assert d["status"] == "undetermined"
    # an offset small against the power law's level (288 +/- 404 beside D0 = 1e4) is measured
    kept = _result([0.3, 1.0, 1e4, -0.5, 287.7], [0.01, 0.01, 450.0, 0.03, 404.0])
    assert kept.undetermined == [] and kept.status == "converged"
    # zero is an ordinary value of an exponent or an offset (normal diffusion, constant shear)
    lam = ("D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0")
    zero = _result([1e4, 0.003, 0.0, 1e-3, 0.0, -2e-6, 0.2],
                   [80, 0.02, 30.0, 1e-5, 0.01, 1e-5, 1.4], names=lam)
    assert zero.undetermined == [] and zero.status == "converged"
    slope = _result([1e4, 0.003, 0.0, 1e-3, 0.0, -2e-6, 0.2],
                    [80, 1.2, 30.0, 1e-5, 0.01, 2e-3, 1.4], names=lam)
    assert slope.undetermined == ["alpha", "gamma_dot_t_offset"]
    assert "alpha" in slope.summary() and "standard error above 1)" in slope.summary()
    fixed = _result([0.3, 1.0, 1e4, 0.0, 0.0], [0.01, 0.01, 450.0, 0.0, 0.0],
                    fixed=["alpha", "D_offset"])
    assert fixed.undetermined == []
    angle = _result([1e4, -0.5, 100, 1e-5, 0.2, 1e-6, 0.2], [80, 0.01, 80, 1e-7, 0.01, 1e-7, 1.4],
                    names=lam)
    assert angle.undetermined == []  # phi0 = 0.2 +/- 1.4 deg is determined
    lost = _result([1e4, -0.5, 100, 1e-5, 0.2, 1e-6, 5.0], [80, 0.01, 80, 1e-7, 0.01, 1e-8, 95],
                   names=lam)
    assert lost.undetermined == ["phi0"]
    assert "(NOT DETERMINED by the data: standard error above 90 deg)" in lost.summary()


def test_strict_exits_5_when_bounds_leave_only_a_vague_offset(tmp_path, small_file, capsys):
    """Was: alpha bounded to [0.1, 0.5] (the data's alpha is -0.5): D0 and alpha on their bounds,
    D_offset = 4971 +/- 19,100 counted as determined -> status converged, --strict exit 0."""
    from homodyne.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(small_file), "q": 0.0054},
        "initial_parameters": {"values": [8000.0, 0.2, 80.0]},
        "parameter_space": {"bounds": [{"name": "alpha", "min": 0.1, "max": 0.5}]},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    assert main(["--config", str(cfg), "--strict", "--quiet"]) == 5
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("converged but NOT DETERMINED")
    p = json.loads((tmp_path / "out" / "parameters.json").read_text())
    assert p["status"] == "undetermined"
    assert p["undetermined"] == ["D0", "alpha", "D_offset"]
    d_offset = p["parameters_by_name"]["D_offset"]
    assert d_offset["determined"] is False and d_offset["uncertainty"] > abs(d_offset["value"])


def test_results_compare_field_by_field():
    """Was: ``r0 == r1`` raised "The truth value of an array ... is ambiguous"."""
    a = _result([0.3, 1.0, 1e4, -0.5, 100.0], [0.01, 0.01, 450.0, 0.03, 40.0])
    b = _result([0.3, 1.0, 1e4, -0.5, 100.0], [0.01, 0.01, 450.0, 0.03, 40.0])
    assert a == b and not (a != b)
    b.parameters[2] += 1e-9
    assert a != b
    c = _result([0.3, 1.0, 1e4, 0.0, np.nan], [0.01, 0.01, np.inf, np.inf, np.inf])
    d = _result([0.3, 1.0, 1e4, 0.0, np.nan], [0.01, 0.01, np.inf, np.inf, np.inf])
    assert c == d  # NaN covariance entries of undetermined parameters compare equal
    assert a != "a result"


def test_the_api_takes_big_endian_and_masked_arrays():
    """Was: big-endian arrays (as h5py returns them) -> JAX TypeError "Dtype >f8 is not a valid
    JAX array type"; a masked ydata -> the mask dropped and the hidden values fitted."""
    import jax.numpy as jnp

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    def model(x, a, b):
        return a * jnp.exp(-b * x)

    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 5.0, 400)
    y = 2.0 * np.exp(-1.3 * x) + 0.01 * rng.standard_normal(x.size)
    fit = NLSQWrapper().fit
    kw = {"p0": [1.0, 1.0], "bounds": ([0.0, 0.0], [10.0, 10.0])}
    ref = fit(model, x, y, **kw)
    big = fit(model, x.astype(">f8"), y.astype(">f8"), sigma=np.full(x.size, 0.01, ">f4"), **kw)
    np.testing.assert_allclose(big.parameters, ref.parameters, rtol=1e-7)
    hidden = y.copy()
    hidden[:200] = 1e6
    masked = np.ma.masked_array(hidden, mask=np.arange(x.size) < 200)
    got = fit(model, x, masked, **kw)
    nan_marked = fit(model, x, np.where(np.arange(x.size) < 200, np.nan, y), **kw)
    np.testing.assert_array_equal(got.parameters, nan_marked.parameters)
    assert got.n_points == 200
    with pytest.raises(ValueError, match="xdata is a masked array with 1 masked value"):
        fit(model, np.ma.masked_array(x, mask=x == x[3]), y, **kw)


@pytest.mark.parametrize("kw, message", [
    ({"q": float("nan")}, "q must be a finite number > 0, got nan"),
    ({"q": [0.0054]}, "q must be a number, got [0.0054]"),
    ({"q": "0.0054"}, "q must be a number, got '0.0054'"),
    ({"q": 0.0054, "q_tolerance": float("nan")}, "q_tolerance must be a finite number > 0"),
    ({"q": 0.0054, "q_tolerance": -1}, "q_tolerance must be a finite number > 0, got -1.0"),
    ({"phi_ranges": (0, 10)}, "phi_ranges must be a list of (min_deg, max_deg) pairs"),
    ({"start_frame": 2.5}, "start_frame must be a whole number, got 2.5"),
    ({"start_frame": "3"}, "start_frame must be a whole number, got '3'"),
])
def test_open_two_time_names_selection_arguments_of_the_wrong_kind(small_file, kw, message):
    """Was: q=NaN silently selected a bin, q_tolerance=NaN switched the check off, a list or
    text q met numpy's TypeError, a flat pair of angles "cannot unpack non-iterable int", a
    fractional start_frame was truncated."""
    with pytest.raises(ValueError) as err:
        open_two_time(small_file, **kw)
    assert str(err.value).startswith(message)


def test_open_two_time_and_model_spec_take_numpy_values(small_file):
    src = open_two_time(small_file, q=np.float32(0.0054), phi_ranges=np.array([[40, 50]]),
                        start_frame=np.int64(3))
    assert src.n_points == 58 * 57 // 2
    assert ModelSpec(phi_deg=np.array([0.0, 45.0])) == ModelSpec(phi_deg=(0.0, 45.0))
    for kw, message in [({"phi_deg": 45.0}, "phi_deg must be a sequence of angles"),
                        ({"n_frames": 10.5}, "n_frames must be a whole number, got 10.5")]:
        with pytest.raises(ValueError, match=message):
            ModelSpec(**kw)


def test_run_from_config_takes_a_path_and_names_other_arguments(tmp_path, small_file):
    """Was: run_from_config("c.yaml") -> AttributeError "'str' object has no attribute
    'output'"; overwrite="no" (truthy) replaced results; overrides=[...] -> AttributeError."""
    from homodyne import run_from_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**STATIC, "experimental_data": {
        "file_path": str(small_file), "q": 0.0054},
        "output": {"directory": str(tmp_path / "out"), "plots": False}}))
    with pytest.raises(TypeError, match="run_from_config takes a HomodyneConfig"):
        run_from_config({"output": {}})
    with pytest.raises(TypeError, match="overwrite must be True, False or None"):
        run_from_config(cfg, overwrite="no")
    with pytest.raises(TypeError, match="overrides must be a dict of dotted keys"):
        load_config(cfg, overrides=["experimental_data.q"])
    run = run_from_config(str(cfg))
    assert run.result.status == "converged"
    assert (tmp_path / "out" / "parameters.json").exists()


def test_geodesic_acceleration_with_checkpoints_is_a_config_error(tmp_path, small_file, capsys):
    """Was: both keys true -> ValueError traceback from driver.run_fit after the data were read,
    exit 1."""
    from homodyne.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**STATIC, "experimental_data": {"file_path": str(small_file)},
                                   "optimization": {"geodesic_acceleration": True, "streaming": {
                                       "enable_checkpoints": True,
                                       "checkpoint_dir": str(tmp_path / "ck")}}}))
    with pytest.raises(ConfigError, match="optimization.geodesic_acceleration: cannot be "
                                          "combined with optimization.streaming.enable_"):
        load_config(cfg)
    assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("ages", [[1e300, 1.1e300], [100.0, 2e10]])
def test_ages_beyond_any_sample_are_a_config_error(tmp_path, ages):
    """Was: one_time.ages_s of 1e300 s -> ValueError traceback from the J-model's bounds."""
    series = tmp_path / "b.csv"
    first = tmp_path / "a.csv"
    for p in (first, series):
        p.write_text("tau,g2(q=0.004),sigma(q=0.004)\n0.001,1.2,0.01\n0.01,1.1,0.01\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"analysis_mode": "one_time",
                                   "experimental_data": {"file_path": str(first)},
                                   "one_time": {"series": [str(series)], "ages_s": ages}}))
    bad = 0 if ages[0] > 1e10 else 1
    with pytest.raises(ConfigError, match=rf"one_time.ages_s\[{bad}\]: .* s is older than any "
                                          r"sample \(at most 1e\+10 s\): give the ages in seconds"):
        load_config(cfg)


def test_a_benchmark_naming_no_dataset_stops_the_plan_naming_the_key(tmp_path):
    """Was: benchmark.tiers.<typo> -> Snakemake InputFunctionException "KeyError: 'typo'"."""
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["benchmark"]["tiers"]["static_13k"] = ["auto"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "benchmark", "--configfile",
                           str(path)], cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("benchmark.tiers: 'static_13k' is not a dataset under datasets:; choose one of "
            "['laminar_130k', 'static_130k', 'static_1M'] or add it there") in out
    assert "KeyError" not in out
