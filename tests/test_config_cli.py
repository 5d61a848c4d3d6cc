"""Config validation, the CLI end to end, and the written outputs."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from homodyne.cli import main
from homodyne.config import ConfigError, load_config, validate_config

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "homodyne" / "examples"


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--output", "data/static_example.h5", "--frames", "160",
                 "--angles", "0,45", "--seed", "1"]) == 0
    assert main(["generate", "--output", "data/laminar_example.h5", "--mode", "laminar_flow",
                 "--frames", "150", "--angles", "0,20,45,70,90", "--seed", "2"]) == 0
    return tmp_path


def guide_minimal(path):
    return {
        "experimental_data": {"file_path": str(path)},
        "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                               "values": [1000.0, -1.2, 0.0]},
        "parameter_space": {"bounds": [{"name": "D0", "min": 1.0, "max": 100000.0},
                                       {"name": "alpha", "min": -2.0, "max": 0.5},
                                       {"name": "D_offset", "min": -1000.0, "max": 1000.0}]},
    }


def test_guide_minimal_config_fills_defaults(workdir):
    cfg = validate_config(guide_minimal(workdir / "data/static_example.h5"))
    assert cfg.analysis_mode == "static" and cfg.per_angle_scaling == "individual"
    assert cfg.streaming["enable_checkpoints"] is False
    assert cfg.streaming["checkpoint_frequency"] == 10
    assert cfg.performance["strategy_override"] is None
    assert cfg.bound("D0") == (1.0, 100000.0)


@pytest.mark.parametrize("mutate,key,message", [
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d["performance"].update(stratgy_override="x"), "performance.stratgy_override",
     "did you mean 'performance.strategy_override'"),
    (lambda d: d["initial_parameters"].update(values=[1.0, "a", 0.0]),
     "initial_parameters.values[1]", "expected a number"),
    (lambda d: d["parameter_space"]["bounds"][0].update(min=5.0, max=1.0),
     "parameter_space.bounds[0]", "min 5.0 must be <= max 1.0"),
    (lambda d: d["initial_parameters"].update(values=[1e6, -1.2, 0.0]),
     "initial_parameters.values", "D0 = 1000000.0 lies outside its bounds"),
    (lambda d: d["experimental_data"].update(file_path="missing.h5"),
     "experimental_data.file_path", "file not found"),
    (lambda d: d["experimental_data"].update(file_path="."),
     "experimental_data.file_path", "is a directory"),
    (lambda d: d.update(optimization={"streaming": {"checkpoint_frequency": "ten"}}),
     "optimization.streaming.checkpoint_frequency", "expected an integer"),
    (lambda d: d.update(optimization={"streaming": {"min_success_rate": 1.5}}),
     "optimization.streaming.min_success_rate", "between 0 and 1"),
    (lambda d: d.update(performance={"memory_limit_gb": float("nan")}),
     "performance.memory_limit_gb", "finite"),
    (lambda d: d.update(analysis_mode="laminar_flow"),
     "initial_parameters.parameter_names", "laminar_flow mode needs"),
])
def test_bad_configs_name_the_key(workdir, mutate, key, message):
    raw = guide_minimal("data/static_example.h5")
    raw.setdefault("performance", {})
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert err.value.key == key and message in str(err.value)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("experimental_data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_cli_fits_static_example_and_writes_outputs(workdir, capsys):
    (workdir / "static.yaml").write_text((EXAMPLES / "static.yaml").read_text())
    assert main(["--config", "static.yaml", "--output-dir", "out"]) == 0
    params = json.loads((workdir / "out/parameters.json").read_text())
    truth = params["truth"]
    for name in ("D0", "alpha", "D_offset"):
        p = params["parameters_by_name"][name]
        assert abs(p["value"] - truth[name]) < 4 * p["uncertainty"], (name, p, truth[name])
    assert params["converged"] is True and params["strategy"] == "STANDARD"
    with h5py.File(workdir / "out/fit.h5") as h5:
        res = h5["residuals"][()]
        off = ~np.eye(res.shape[1], dtype=bool)
        assert abs(np.nanstd(res[:, off]) - 0.01) < 0.002  # residuals are the noise
    for f in ("c2_heatmaps.png", "c2_cuts.png", "scaling_per_angle.png",
              "residual_histogram.png", "fit.log"):
        assert (workdir / "out" / f).stat().st_size > 0
    assert "STANDARD" in (workdir / "out/fit.log").read_text()
    # a second run refuses to overwrite, and says how to proceed
    assert main(["--config", "static.yaml", "--output-dir", "out"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_noise_free_data_fit_converges_to_the_truth(tmp_path, monkeypatch):
    # float64 data without noise: chi2_red ~ 1e-33, the residuals are rounding errors and
    # so are the standard errors; the stall there is the optimum, exit 0 (not 4)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--output", "data/static_example.h5", "--frames", "100",
                 "--angles", "0,45", "--seed", "1", "--noise", "0", "--dtype", "float64"]) == 0
    (tmp_path / "static.yaml").write_text((EXAMPLES / "static.yaml").read_text())
    assert main(["--config", "static.yaml", "--output-dir", "out"]) == 0
    params = json.loads((tmp_path / "out/parameters.json").read_text())
    assert params["converged"] is True and params["reduced_chi_squared"] < 1e-25
    assert "residuals vanished at working precision" in params["stop_reason"]
    for name, value in params["truth"].items():
        got = params["parameters_by_name"][name]["value"]
        assert got == pytest.approx(value, rel=1e-8), name


def test_cli_fits_laminar_example_with_streaming(workdir):
    (workdir / "lam.yaml").write_text((EXAMPLES / "laminar_flow.yaml").read_text())
    assert main(["--config", "lam.yaml", "--output-dir", "lam", "--strategy", "streaming"]) == 0
    params = json.loads((workdir / "lam/parameters.json").read_text())
    assert params["strategy"] == "STREAMING"
    for name in ("gamma_dot_t0", "beta", "phi0", "D0"):
        p = params["parameters_by_name"][name]
        assert abs(p["value"] - params["truth"][name]) < 4 * p["uncertainty"], name


def test_data_file_override_and_clear_errors(workdir, capsys):
    cfg = guide_minimal("data/static_example.h5")
    (workdir / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", "c.yaml", "--data-file", "data/nothing.h5"]) == 2
    err = capsys.readouterr().err
    assert "homodyne: error: --data-file: file not found: data/nothing.h5" in err
    assert "Traceback" not in err
    assert main(["validate", "--config", "c.yaml"]) == 0
    assert "239" not in capsys.readouterr().err


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "homodyne.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("homodyne ")
